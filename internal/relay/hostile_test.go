package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/pkg/tasks"
)

// refused asserts a Webex-shaped error with the status and text.
func (e *env) refused(name string, wantCode int, want string, code int, body []byte) {
	e.t.Helper()
	var werr struct{ Message string }
	if code != wantCode || json.Unmarshal(body, &werr) != nil || !strings.Contains(werr.Message+string(body), want) {
		e.t.Errorf("%s: %d %s, want %d with %q", name, code, body, wantCode, want)
	}
}

func (e *env) nothingQueued() {
	e.t.Helper()
	if q, err := e.insp.GetQueueInfo(e.queue); err == nil && q.Size != 0 {
		e.t.Fatalf("%d refused messages queued", q.Size)
	}
}

// Text that is not UTF-8 is refused, never delivered with U+FFFD: the same
// request with the same Idempotency-Key gets the same answer.
func TestRelayRefusesNonUTF8(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	latin1 := multipart(jsBound, [][2]string{{"roomId", "r"}, {"text", "caf\xe9"}}, "", "", "")
	key := map[string]string{"Idempotency-Key": "latin-1"}
	for range 2 {
		code, _, body := e.do("POST", "/v1/messages", relayToken, "multipart/form-data; boundary="+jsBound, latin1, key)
		e.refused("multipart latin-1", 400, "text: is not UTF-8", code, body)
	}
	code, _, body := e.do("POST", "/v1/messages", relayToken, "application/json", []byte("{\"roomId\":\"r\",\"markdown\":\"caf\xe9\"}"), key)
	e.refused("json latin-1", 400, "markdown: is not UTF-8", code, body)
	code, _, body = e.do("POST", "/v1/messages", relayToken, "application/json; charset=iso-8859-1", []byte(`{"roomId":"r","text":"cafe"}`), key)
	e.refused("declared latin-1", 415, `charset is "iso-8859-1": send UTF-8`, code, body)
	e.nothingQueued()
	// UTF-8 declared in any spelling is fine, and a repeat is the same message.
	for _, ct := range []string{"application/json; charset=UTF-8", "application/json;charset=utf8"} {
		if code, _, body := e.do("POST", "/v1/messages", relayToken, ct, []byte(`{"roomId":"r","text":"café \ufffd"}`), key); code != 200 {
			t.Errorf("%s: %d %s", ct, code, body)
		}
	}
}

// A local path or another scheme's URL given where a file belongs gets
// Webex's 400, never a text file holding the path.
func TestRelayRefusesPathsAsFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	for _, v := range []string{"/tmp/report.png", "ftp://x/a", "HTTPS://example.com/a b.png"} {
		body := multipart(jsBound, [][2]string{{"roomId", "r1"}, {"files", v}}, "", "", "")
		code, _, b := e.do("POST", "/v1/messages", relayToken, "multipart/form-data; boundary="+jsBound, body, nil)
		if v == "HTTPS://example.com/a b.png" { // two words: a text file, as Webex takes it
			if code != 200 {
				t.Errorf("%q: %d %s", v, code, b)
			}
			continue
		}
		e.refused(v, 400, "is a local path or a URL that is not http(s)", code, b)
	}
	code, _, b := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","files":["https://example.com/a b.png"]}`), nil)
	e.refused("json url with a space", 400, "is not an http(s) URL", code, b)
	code, _, b = e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","files":["HTTPS://example.com/a.png"]}`), nil)
	if code != 200 {
		t.Errorf("upper-case scheme: %d %s", code, b)
	}
}

// Many tiny parts, control characters, and an over-long Idempotency-Key
// are refused with the field and the limit.
func TestRelayRefusesHostileInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	var parts [][2]string
	for i := range 5000 {
		parts = append(parts, [2]string{fmt.Sprint("x", i), ""})
	}
	code, _, b := e.do("POST", "/v1/messages", relayToken, "multipart/form-data; boundary="+jsBound, multipart(jsBound, parts, "", "", ""), nil)
	e.refused("5000 parts", 400, "more than 100 parts", code, b)
	code, _, b = e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"a\u0000b"}`), nil)
	e.refused("NUL in text", 400, `text: contains the control character '\x00' at byte 1`, code, b)
	code, _, b = e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","markdown":"a\u001bb"}`), nil)
	e.refused("ESC in markdown", 400, "markdown: contains the control character", code, b)
	long := map[string]string{"Idempotency-Key": strings.Repeat("k", relay.MaxIdempotencyKeyBytes+1)}
	code, _, b = e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"x"}`), long)
	e.refused("long key", 400, fmt.Sprintf("Idempotency-Key: header is %d bytes, the limit is %d", relay.MaxIdempotencyKeyBytes+1, relay.MaxIdempotencyKeyBytes), code, b)
	e.nothingQueued()
	ok := map[string]string{"Idempotency-Key": strings.Repeat("k", relay.MaxIdempotencyKeyBytes)}
	if code, _, b := e.do("POST", "/v1/messages", relayToken, "application/json", []byte("{\"roomId\":\"r\",\"text\":\"tab\\there\\r\\nline\"}"), ok); code != 200 {
		t.Errorf("longest key, tab and CR LF: %d %s", code, b)
	}
}

// GET reads only the relay's queue: a task of the caller's own source in
// another queue (queued by any producer under a guessable key) is not its.
func TestRelayStatusOnlyInItsQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	other := redistest.Name(t)
	t.Cleanup(func() { _ = e.insp.DeleteQueue(other, true) })
	src := "relay/" + relay.TokenID(relayToken)
	msg := tasks.Message{}
	msg.RoomID, msg.Text = "r", "elsewhere"
	res, err := e.prod.Enqueue(context.Background(), msg, tasks.Queue(other), tasks.Source(src), tasks.Key("k1"))
	if err != nil {
		t.Fatal(err)
	}
	code, _, b := e.do("GET", "/v1/messages/"+relay.RelayID(other, res.TaskID), relayToken, "", nil, nil)
	if code != 404 {
		t.Fatalf("a task in queue %s: %d %s, want 404", other, code, b)
	}
}
