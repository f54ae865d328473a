package relay

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

const fuzzBoundary = "--------------------------418239573650122876345902"

// FuzzRelayDecode: any request body, JSON or multipart, is either refused
// or turned into a message Webex would accept: one destination, file URLs
// that are http(s). (A relay id as parent is checked against Redis when the
// message is enqueued: ReplyTo, or refused.)
// go test -run '^$' -fuzz '^FuzzRelayDecode$' -fuzztime 5s ./internal/relay
func FuzzRelayDecode(f *testing.F) {
	f.Add(false, []byte(`{"roomId":"r","markdown":"**x**","parentId":"p"}`))
	f.Add(false, []byte(`{"roomId":"r","files":["/tmp/x"]}`))
	f.Add(false, []byte(`{"roomId":"r","text":"x","parentId":"`+RelayID("default", "k")+`"}`))
	f.Add(true, []byte("--"+fuzzBoundary+"\r\nContent-Disposition: form-data; name=\"roomId\"\r\n\r\nr\r\n--"+fuzzBoundary+
		"\r\nContent-Disposition: form-data; name=\"files\"\r\nContent-Type: application/octet-stream\r\n\r\nI\xff\x00\r\n--"+fuzzBoundary+"--\r\n"))
	f.Add(true, []byte("--"+fuzzBoundary+"\r\nContent-Disposition: form-data; name=\"toPersonEmail\"\r\n\r\na@b.c\r\n--"+fuzzBoundary+
		"\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nhttps://example.com/r.pdf\r\n--"+fuzzBoundary+"--\r\n"))
	f.Fuzz(func(t *testing.T, multipart bool, body []byte) {
		const limit = 1 << 12
		r := httptest.NewRequest("POST", "/v1/messages", strings.NewReader(string(body)))
		r.Header.Set("Content-Type", "application/json")
		if multipart {
			r.Header.Set("Content-Type", "multipart/form-data; boundary="+fuzzBoundary)
		}
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, limit)
		msg, err := decode(r, limit)
		if err != nil || validate(msg, tasks.DefaultMaxInlineBytes) != nil {
			return
		}
		if msg.Destination() == "" {
			t.Fatalf("accepted without a destination: %+v", msg)
		}
		for _, u := range msg.Files {
			if !webex.IsHTTPURL(u) {
				t.Fatalf("accepted file %q", u)
			}
		}
	})
}
