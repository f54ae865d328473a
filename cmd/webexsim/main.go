// Command webexsim serves the Webex Messages API simulator of
// pkg/webex/webextest, for the dev mode, docker compose and load tests.
//
//	webexsim -addr 127.0.0.1:3210 -tokens "dev-token=bot,reports-token=reports"
//
// Point a client at http://ADDR (or http://ADDR/v1). Faults, rate limits and
// the request log are under http://ADDR/_sim/ (see docs/SIMULATOR.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "webexsim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("webexsim", flag.ContinueOnError)
	addr := fs.String("addr", envOr("WEBEXSIM_ADDR", "127.0.0.1:3210"), "listen address (env WEBEXSIM_ADDR)")
	tokens := fs.String("tokens", envOr("WEBEXSIM_TOKENS", webextest.DefaultToken+"=bot"), "accepted tokens as token=bot,... (env WEBEXSIM_TOKENS)")
	rooms := fs.String("rooms", os.Getenv("WEBEXSIM_ROOMS"), "comma-separated rooms that exist; empty: every room (env WEBEXSIM_ROOMS)")
	rps := fs.Float64("rate", 0, "rate limit in requests/s for POST /messages; 0: none")
	burst := fs.Int("burst", 1, "rate limit burst")
	retryAfter := fs.Duration("retry-after", time.Second, "Retry-After sent with rate-limit 429s")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := webextest.Options{Tokens: map[string]string{}}
	for _, pair := range strings.Split(*tokens, ",") {
		tok, bot, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || tok == "" || bot == "" {
			return fmt.Errorf("-tokens: %q is not token=bot", pair)
		}
		opts.Tokens[tok] = bot
	}
	if *rooms != "" {
		opts.Rooms = strings.Split(*rooms, ",")
	}
	sim := webextest.New(opts)
	sim.SetRateLimit(*rps, *burst, *retryAfter)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	slog.Info("webex simulator listening", "url", "http://"+ln.Addr().String(), "bots", len(opts.Tokens))
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
