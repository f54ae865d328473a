# syntax=docker/dockerfile:1
# Static courier binaries (worker, monitor, enqueue, webexsim) on a distroless,
# non-root base. Build: docker build -t courier .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/monitor ./cmd/monitor \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/enqueue ./cmd/enqueue \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/webexsim ./cmd/webexsim

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/worker"]
