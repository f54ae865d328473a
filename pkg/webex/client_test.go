package webex_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
	"go.uber.org/goleak"
)

const secret = "s3cr3t-token-do-not-log"

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fastPolicy keeps helper retries in milliseconds.
var fastPolicy = retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}

func newClient(t *testing.T, base string, logger *slog.Logger) *webex.Client {
	t.Helper()
	c, err := webex.New(webex.Config{BaseURL: base, Token: secret, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// capture is an httptest server that records the last request.
type capture struct {
	req  *http.Request // a copy made in the handler
	body []byte
}

func captureServer(t *testing.T, status int, answer string) (*httptest.Server, *capture) {
	c := &capture{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.body, _ = io.ReadAll(r.Body)
		c.req = &http.Request{Method: r.Method, URL: r.URL, Header: r.Header.Clone(), Body: io.NopCloser(bytes.NewReader(c.body))}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv, c
}

func TestCreateMessageJSON(t *testing.T) {
	t.Parallel()
	srv, got := captureServer(t, 200, `{"id":"m1","roomId":"r1","created":"2026-11-28T10:00:00.000Z"}`)
	c := newClient(t, srv.URL+"/v1/", nil)
	card := json.RawMessage(`{"type":"AdaptiveCard"}`)
	s, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "r1", ParentID: "p1", Text: "t", Markdown: "**m**",
		Attachments: []webex.Attachment{{ContentType: webex.CardContentType, Content: card}}})
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "m1" || s.Created.IsZero() {
		t.Fatalf("answer = %+v", s)
	}
	if got.req.Method != "POST" || got.req.URL.Path != "/v1/messages" || got.req.Header.Get("Authorization") != "Bearer "+secret ||
		got.req.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("request = %s %s %v", got.req.Method, got.req.URL.Path, got.req.Header)
	}
	var body map[string]any
	if err := json.Unmarshal(got.body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"roomId": "r1", "parentId": "p1", "text": "t", "markdown": "**m**",
		"attachments": []any{map[string]any{"contentType": webex.CardContentType, "content": map[string]any{"type": "AdaptiveCard"}}}}
	if g, w := mustJSON(body), mustJSON(want); g != w {
		t.Fatalf("body = %s, want %s", g, w)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestCreateMessageMultipart(t *testing.T) {
	t.Parallel()
	srv, got := captureServer(t, 200, `{"id":"m2"}`)
	c := newClient(t, srv.URL, nil)
	data := []byte("\x89PNG\r\n\x1a\nfake-image-bytes")
	_, err := c.CreateMessage(context.Background(), webex.Message{ToPersonEmail: "a@example.com", Markdown: "chart",
		File: &webex.File{Name: "chart.png", ContentType: "image/png", Data: data}})
	if err != nil {
		t.Fatal(err)
	}
	if err := got.req.ParseMultipartForm(1 << 20); err != nil {
		t.Fatalf("not multipart: %v (Content-Type %q)", err, got.req.Header.Get("Content-Type"))
	}
	f := got.req.MultipartForm
	if f.Value["toPersonEmail"][0] != "a@example.com" || f.Value["markdown"][0] != "chart" || len(f.Value["roomId"]) != 0 {
		t.Fatalf("fields = %v", f.Value)
	}
	fh := f.File["files"]
	if len(fh) != 1 || fh[0].Filename != "chart.png" || fh[0].Header.Get("Content-Type") != "image/png" {
		t.Fatalf("file part = %+v", fh)
	}
	rd, _ := fh[0].Open()
	b, _ := io.ReadAll(rd)
	if !bytes.Equal(b, data) {
		t.Fatalf("file bytes = %q", b)
	}
}

func TestValidationBeforeRequest(t *testing.T) {
	t.Parallel()
	srv, got := captureServer(t, 200, `{}`)
	c := newClient(t, srv.URL, nil)
	_, err := c.CreateMessage(context.Background(), webex.Message{Text: "no destination"})
	var ve *webex.ValidationError
	if !errors.As(err, &ve) || ve.Field != "roomId" || got.req != nil {
		t.Fatalf("err = %v, request sent = %v", err, got.req != nil)
	}
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	webexBody := `{"message":"Boom","errors":[{"description":"Boom"},{"description":"detail"}],"trackingId":"TID-1"}`
	tests := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		class      retrypolicy.Class
		after      time.Duration
		contains   string
	}{
		{"429 with seconds", 429, "7", webexBody, retrypolicy.RateLimited, 7 * time.Second, "429 Too Many Requests: Boom; detail (retry after 7s) (tracking id TID-1)"},
		{"429 without", 429, "", webexBody, retrypolicy.RateLimited, webex.DefaultRetryAfter, "retry after 15s"},
		{"429 malformed", 429, "soon", webexBody, retrypolicy.RateLimited, webex.DefaultRetryAfter, "Boom"},
		{"429 huge", 429, "999999999999", webexBody, retrypolicy.RateLimited, webex.MaxRetryAfter, "Boom"},
		{"503 with retry after", 503, "3", webexBody, retrypolicy.Transient, 3 * time.Second, "503"},
		{"503 html", 503, "", "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", retrypolicy.Transient, 0, "503 Service Temporarily Unavailable"},
		{"502", 502, "", webexBody, retrypolicy.Transient, 0, "502"},
		{"504", 504, "", "", retrypolicy.Transient, 0, "504"},
		{"500", 500, "", webexBody, retrypolicy.Transient, 0, "500"},
		{"423", 423, "2", webexBody, retrypolicy.Transient, 2 * time.Second, "423"},
		{"408", 408, "", webexBody, retrypolicy.Transient, 0, "408"},
		{"501", 501, "", webexBody, retrypolicy.Transient, 0, "501"},
		{"505", 505, "", webexBody, retrypolicy.Transient, 0, "505"},
		{"520 cdn unknown", 520, "", "<html>origin error</html>", retrypolicy.Transient, 0, "520"},
		{"522 cdn timeout", 522, "", "", retrypolicy.Transient, 0, "522"},
		{"524 cdn timeout", 524, "", "", retrypolicy.Transient, 0, "524"},
		{"529 overloaded", 529, "30", webexBody, retrypolicy.Transient, 30 * time.Second, "529"},
		{"599", 599, "", "", retrypolicy.Transient, 0, "599"},
		{"400", 400, "", webexBody, retrypolicy.Permanent, 0, "400 Bad Request: Boom"},
		{"401", 401, "", webexBody, retrypolicy.Permanent, 0, "401"},
		{"403", 403, "", webexBody, retrypolicy.Permanent, 0, "403"},
		{"404", 404, "", webexBody, retrypolicy.Permanent, 0, "404"},
		{"409", 409, "", webexBody, retrypolicy.Permanent, 0, "409"},
		{"413", 413, "", webexBody, retrypolicy.Permanent, 0, "413"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.Header().Set("TrackingID", "TID-HEADER")
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			_, err := newClient(t, srv.URL, nil).CreateMessage(context.Background(), webex.Message{RoomID: "r", Text: "x"})
			var ae *webex.APIError
			if !errors.As(err, &ae) || ae.StatusCode != tt.status {
				t.Fatalf("err = %v", err)
			}
			d := retrypolicy.Classify(err, nil)
			if d.Class != tt.class || d.RetryAfter != tt.after {
				t.Fatalf("class %v after %v, want %v after %v", d.Class, d.RetryAfter, tt.class, tt.after)
			}
			if !strings.Contains(err.Error(), tt.contains) || strings.Contains(err.Error(), secret) {
				t.Fatalf("err = %q, want it to contain %q and not the token", err, tt.contains)
			}
			if ae.TrackingID == "" {
				t.Fatal("no tracking id")
			}
			if errors.Is(err, webex.ErrUnauthorized) != (tt.status == 401) {
				t.Fatalf("ErrUnauthorized match wrong for %d", tt.status)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"0", 0}, {"-3", 0}, {" 12 ", 12 * time.Second}, {"1.5", 0}, {"garbage", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), webex.MaxRetryAfter},
		{"999999999999", webex.MaxRetryAfter},
		{"99999999999999999999", webex.MaxRetryAfter}, // beyond int64: saturates
		{"-99999999999999999999", 0},
		{"Sat, 28 Nov 2026 10:02:00 GMT", 2 * time.Minute}, // the HTTP-date form
		{"Saturday, 28-Nov-26 10:00:30 GMT", 30 * time.Second},
	}
	for _, tt := range tests {
		if got := webex.ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// A non-JSON error page is cut to a short excerpt without splitting a
// character.
func TestErrorExcerptKeepsUTF8(t *testing.T) {
	t.Parallel()
	page := "<html><body><p>x" + strings.Repeat("é", 150) + "</p></body></html>"
	srv, _ := captureServer(t, 502, page)
	_, err := newClient(t, srv.URL, nil).CreateMessage(context.Background(), webex.Message{RoomID: "r", Text: "x"})
	var ae *webex.APIError
	if !errors.As(err, &ae) || !utf8.ValidString(ae.Message) || !strings.HasSuffix(ae.Message, "é…") || len(ae.Message) > 204 {
		t.Fatalf("excerpt %q (valid UTF-8: %v)", ae.Message, utf8.ValidString(ae.Message))
	}
}

func TestAgainstSimulator(t *testing.T) {
	t.Parallel()
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{secret: "alerts"}, Rooms: []string{"room-a"}})
	var logs bytes.Buffer
	c := newClient(t, sim.URL, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx := context.Background()

	me, err := c.Me(ctx)
	if err != nil || me.DisplayName != "alerts" {
		t.Fatalf("Me = %+v, %v", me, err)
	}
	s, err := c.CreateMessage(ctx, webex.Message{RoomID: "room-a", Markdown: "**hi**"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetMessage(ctx, s.ID)
	if err != nil || got.Markdown != "**hi**" {
		t.Fatalf("GetMessage = %+v, %v", got, err)
	}
	if msgs := sim.Messages("room-a"); len(msgs) != 1 || msgs[0].Bot != "alerts" {
		t.Fatalf("simulator holds %+v", msgs)
	}
	_, err = c.CreateMessage(ctx, webex.Message{RoomID: "room-unknown", Text: "x"})
	var ae *webex.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 404 || ae.TrackingID == "" {
		t.Fatalf("unknown room: %v", err)
	}
	revoked, _ := webex.New(webex.Config{BaseURL: sim.URL, Token: "revoked"})
	if _, err := revoked.Me(ctx); !errors.Is(err, webex.ErrUnauthorized) {
		t.Fatalf("revoked token: %v", err)
	}
	if strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), "webex request") {
		t.Fatalf("debug log leaks the token or logs nothing:\n%s", logs.String())
	}
}

// Text and markdown limits are in bytes, as Webex counts them: 7439 bytes of
// two-byte characters reach the simulator intact; 7440 bytes (3720
// characters, well under 7439) are refused before any request.
func TestTextLimitInBytesAgainstSimulator(t *testing.T) {
	t.Parallel()
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{secret: "alerts"}, Rooms: []string{"room-a"}})
	c := newClient(t, sim.URL, nil)
	exact := strings.Repeat("é", webex.MaxTextBytes/2) + "x" // 7439 bytes
	over := strings.Repeat("é", webex.MaxTextBytes/2+1)      // 7440 bytes, 3720 characters
	for _, m := range []webex.Message{{RoomID: "room-a", Text: exact}, {RoomID: "room-a", Markdown: exact}} {
		if _, err := c.CreateMessage(context.Background(), m); err != nil {
			t.Fatalf("7439 bytes refused: %v", err)
		}
	}
	for _, tt := range []struct {
		field string
		m     webex.Message
	}{{"text", webex.Message{RoomID: "room-a", Text: over}}, {"markdown", webex.Message{RoomID: "room-a", Markdown: over}}} {
		_, err := c.CreateMessage(context.Background(), tt.m)
		var ve *webex.ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.field+": is 7440 bytes, the limit is 7439") {
			t.Errorf("%s of 3720 characters: err = %v", tt.field, err)
		}
	}
	msgs := sim.Messages("room-a")
	if requests, _ := sim.Counts("room-a"); requests != 2 || len(msgs) != 2 || msgs[0].Text != exact || msgs[1].Markdown != exact {
		t.Fatalf("simulator saw %d requests, holds %d messages", requests, len(msgs))
	}
}

func TestTransportErrorsAreTransient(t *testing.T) {
	t.Parallel()
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{secret: "bot"}})
	sim.AddFault(webextest.Fault{Room: "drop", Drop: "before"})
	sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(2 * time.Second)})
	c, _ := webex.New(webex.Config{BaseURL: sim.URL, Token: secret, HTTPClient: &http.Client{Timeout: 200 * time.Millisecond}})
	for _, room := range []string{"drop", "slow"} {
		_, err := c.CreateMessage(context.Background(), webex.Message{RoomID: room, Text: "x"})
		if err == nil {
			t.Fatalf("%s: no error", room)
		}
		if d := retrypolicy.Classify(err, nil); d.Class != retrypolicy.Transient {
			t.Errorf("%s: %v classified %v (%s)", room, err, d.Class, d.Reason)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: token in error %q", room, err)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := webex.New(webex.Config{}); err == nil || !strings.Contains(err.Error(), "Token") {
		t.Errorf("missing token: %v", err)
	}
	if _, err := webex.New(webex.Config{Token: "x", BaseURL: "ftp://x"}); err == nil || !strings.Contains(err.Error(), "BaseURL") {
		t.Errorf("bad base: %v", err)
	}
}

// The id is one path segment, whatever it holds.
func TestGetMessageEscapesID(t *testing.T) {
	t.Parallel()
	srv, got := captureServer(t, 200, `{"id":"abc?x=1/../y"}`)
	s, err := newClient(t, srv.URL, nil).GetMessage(context.Background(), "abc?x=1/../y")
	if err != nil || s.ID != "abc?x=1/../y" {
		t.Fatalf("GetMessage = %+v, %v", s, err)
	}
	if got.req.URL.Path != "/messages/abc?x=1/../y" || got.req.URL.RawQuery != "" {
		t.Fatalf("requested path %q query %q", got.req.URL.EscapedPath(), got.req.URL.RawQuery)
	}
	if _, err := newClient(t, srv.URL, nil).GetMessage(context.Background(), ""); err == nil {
		t.Fatal("an empty id was requested")
	}
}

// A redirect is never followed: a 301 on a POST would silently become a GET
// to the new place. It comes back as a permanent *APIError.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var followed atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		_, _ = io.WriteString(w, `{"id":"m1"}`)
	}))
	t.Cleanup(target.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+r.URL.Path, http.StatusMovedPermanently)
	}))
	t.Cleanup(srv.Close)
	own := &http.Client{} // a caller's client without CheckRedirect
	for name, c := range map[string]*webex.Client{
		"default client": newClient(t, srv.URL, nil),
		"caller's client": func() *webex.Client {
			c, _ := webex.New(webex.Config{BaseURL: srv.URL, Token: secret, HTTPClient: own})
			return c
		}(),
	} {
		_, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "r", Text: "x"})
		var ae *webex.APIError
		if !errors.As(err, &ae) || ae.StatusCode != 301 || retrypolicy.Classify(err, nil).Class != retrypolicy.Permanent {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if followed.Load() != 0 || own.CheckRedirect != nil {
		t.Fatalf("redirect followed %d times; caller's client changed: %v", followed.Load(), own.CheckRedirect != nil)
	}
}

func TestUserAgentHasVersion(t *testing.T) {
	t.Parallel()
	srv, got := captureServer(t, 200, `{"id":"m1"}`)
	if _, err := newClient(t, srv.URL, nil).CreateMessage(context.Background(), webex.Message{RoomID: "r", Text: "x"}); err != nil {
		t.Fatal(err)
	}
	ua := got.req.Header.Get("User-Agent")
	if version, ok := strings.CutPrefix(ua, "courier/"); !ok || version == "" {
		t.Fatalf("User-Agent %q, want courier/<version>", ua)
	}
}

// A successful answer's tracking id and rate-limit headers reach the caller.
func TestSuccessResponseHeaders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("TrackingID", "TID-OK")
		w.Header().Set("X-RateLimit-Limit", "600")
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", "42")
		_, _ = io.WriteString(w, `{"id":"m1"}`)
	}))
	t.Cleanup(srv.Close)
	s, err := newClient(t, srv.URL, nil).CreateMessage(context.Background(), webex.Message{RoomID: "r", Text: "x"})
	want := webex.Response{StatusCode: 200, TrackingID: "TID-OK", RateLimit: webex.RateLimit{Known: true, Limit: 600, Remaining: 0, Reset: 42 * time.Second}}
	if err != nil || s.Response != want {
		t.Fatalf("Response = %+v, %v; want %+v", s.Response, err, want)
	}
}

// With a nil Config.Logger, SafeSend logs nothing, not even to slog's
// default logger. Not parallel: it replaces the default logger.
func TestSafeSendNilLoggerLogsNothing(t *testing.T) {
	var logs bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, nil)
	if c.SafeSend(context.Background(), webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(fastPolicy)) {
		t.Fatal("SafeSend reported a 403 as delivered")
	}
	var nilClient *webex.Client
	if nilClient.SafeSend(context.Background(), webex.Message{RoomID: "r", Text: "x"}) {
		t.Fatal("nil client reported success")
	}
	if logs.Len() != 0 {
		t.Fatalf("SafeSend logged to slog's default with a nil Logger:\n%s", logs.String())
	}
}

// A Link to another host is never followed: the token goes only to the base.
func TestNextMessagesStaysUnderBase(t *testing.T) {
	t.Parallel()
	var foreign atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { foreign.Add(1) }))
	t.Cleanup(other.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", `<`+other.URL+`/messages?roomId=r&beforeMessage=m1>; rel="next", <x>; rel="prev"`)
		_, _ = io.WriteString(w, `{"items":[{"id":"m1"}]}`)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, nil)
	page, err := c.ListMessages(context.Background(), webex.ListQuery{RoomID: "r"})
	if err != nil || len(page.Items) != 1 || !page.HasNext() {
		t.Fatalf("page = %+v, %v", page, err)
	}
	if _, err := c.NextMessages(context.Background(), page); err == nil || !strings.Contains(err.Error(), "not under the base URL") || foreign.Load() != 0 {
		t.Fatalf("err = %v, requests to the other host %d", err, foreign.Load())
	}
	if _, err := c.ListMessages(context.Background(), webex.ListQuery{}); err == nil || !strings.Contains(err.Error(), "RoomID is required") {
		t.Fatalf("no room: %v", err)
	}
}
