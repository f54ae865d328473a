package webex_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func simClient(t *testing.T) (*webextest.Server, *webex.Client) {
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{secret: "bot"}})
	return sim, sim.Client(t, secret)
}

func TestSendRetriesTransient(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	sim.AddFault(webextest.Fault{Status: 503, Count: 2})
	retries := 0
	s, err := c.Send(context.Background(), webex.Message{RoomID: "r", Text: "hello"}, webex.WithPolicy(fastPolicy),
		webex.WithRetryOptions(retrypolicy.OnRetry(func(int, error, time.Duration) { retries++ })))
	if err != nil || s.ID == "" {
		t.Fatalf("Send = %+v, %v", s, err)
	}
	if req, acc := sim.Counts("r"); req != 3 || acc != 1 || retries != 2 {
		t.Fatalf("requests %d accepted %d retries %d, want 3 1 2", req, acc, retries)
	}
}

func TestSendHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	sim.AddFault(webextest.Fault{Status: 429, RetryAfter: webextest.Duration(time.Second), Count: 1})
	if _, err := c.Send(context.Background(), webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(fastPolicy)); err != nil {
		t.Fatal(err)
	}
	reqs := sim.Requests("r")
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if gap := reqs[1].Start.Sub(reqs[0].Time); gap < time.Second {
		t.Fatalf("second attempt %v after the 429, want at least its Retry-After of 1s", gap)
	}
}

func TestSendPermanentNotRetried(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	sim.AddFault(webextest.Fault{Status: 400})
	_, err := c.Send(context.Background(), webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(fastPolicy))
	var ae *webex.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 400 {
		t.Fatalf("err = %v", err)
	}
	if req, _ := sim.Counts("r"); req != 1 {
		t.Fatalf("%d requests for a permanent error, want 1", req)
	}
}

func TestSendFilesInOrder(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	files := []webex.File{{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.pdf", Data: []byte("B")}, {Name: "c.txt", Data: []byte("C")}}
	sim.AddFault(webextest.Fault{Status: 502, Count: 1}) // the first part needs a retry
	sent, err := c.SendFiles(context.Background(), webex.Message{RoomID: "r", Markdown: "See attached"}, files, webex.WithPolicy(fastPolicy))
	if err != nil || len(sent) != 3 {
		t.Fatalf("SendFiles = %d, %v", len(sent), err)
	}
	msgs := sim.Messages("r")
	if len(msgs) != 3 {
		t.Fatalf("%d messages", len(msgs))
	}
	for i, m := range msgs {
		if m.FileName != files[i].Name || string(m.FileData) != string(files[i].Data) || (i == 0) != (m.Markdown == "See attached") {
			t.Errorf("message %d = %s %q %q", i, m.FileName, m.FileData, m.Markdown)
		}
	}
}

func TestSendFilesStopsAtFailure(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	files := []webex.File{{Name: "a", Data: []byte("A")}, {Name: "b", Data: []byte("B")}}
	sim.AddFault(webextest.Fault{Status: 403})
	sent, err := c.SendFiles(context.Background(), webex.Message{RoomID: "r", Text: "x"}, files, webex.WithPolicy(fastPolicy))
	if err == nil || len(sent) != 0 || !strings.Contains(err.Error(), "message 1 of 2") {
		t.Fatalf("sent %d, err %v", len(sent), err)
	}
}

// SendFiles' wait budget is for the whole call, not per message: each part's
// first POST gets a 503 and a 10ms wait; a 15ms budget covers the first
// part's wait but not the second's.
func TestSendFilesOneBudget(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			t.Errorf("not multipart: %v", err)
			return
		}
		name := r.MultipartForm.File["files"][0].Filename
		mu.Lock()
		first := !seen[name]
		seen[name] = true
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"id":"`+name+`"}`)
	}))
	t.Cleanup(srv.Close)
	p := retrypolicy.Policy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond, MaxDelay: 10 * time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}
	files := []webex.File{{Name: "a", Data: []byte("a")}, {Name: "b", Data: []byte("b")}, {Name: "c", Data: []byte("c")}}
	sent, err := newClient(t, srv.URL, nil).SendFiles(context.Background(), webex.Message{RoomID: "r", Text: "x"}, files,
		webex.WithPolicy(p), webex.WithRetryOptions(retrypolicy.WithMaxWait(15*time.Millisecond)))
	var be *retrypolicy.BudgetError
	if !errors.As(err, &be) || !strings.Contains(err.Error(), "message 2 of 3") || len(sent) != 1 || sent[0].ID != "a" {
		t.Fatalf("sent %d, err %v; want message a sent, then a BudgetError on message 2", len(sent), err)
	}
}

func TestSendCard(t *testing.T) {
	t.Parallel()
	sim, c := simClient(t)
	card := map[string]any{"type": "AdaptiveCard", "version": "1.3", "body": []any{map[string]any{"type": "TextBlock", "text": "Hi"}}}
	if _, err := c.SendCard(context.Background(), webex.Message{RoomID: "r", Text: "Card fallback"}, card); err != nil {
		t.Fatal(err)
	}
	msgs := sim.Messages("r")
	if len(msgs) != 1 || len(msgs[0].Attachments) != 1 || msgs[0].Attachments[0].ContentType != webex.CardContentType ||
		!strings.Contains(string(msgs[0].Attachments[0].Content), `"TextBlock"`) {
		t.Fatalf("messages = %+v", msgs)
	}
	if _, err := c.SendCard(context.Background(), webex.Message{RoomID: "r"}, card); err == nil {
		t.Fatal("a card without fallback must be refused")
	}
}

func TestSafeSend(t *testing.T) {
	t.Parallel()
	sim, _ := simClient(t)
	var logs bytes.Buffer
	c, _ := webex.New(webex.Config{BaseURL: sim.URL, Token: secret, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !c.SafeSend(context.Background(), webex.Message{RoomID: "r", Text: "ok"}, webex.WithPolicy(fastPolicy)) {
		t.Fatal("SafeSend to a live server reported failure")
	}
	sim.Close()
	if c.SafeSend(context.Background(), webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(fastPolicy)) {
		t.Fatal("SafeSend to a dead server reported success")
	}
	if !strings.Contains(logs.String(), "safe send failed") || strings.Contains(logs.String(), secret) {
		t.Fatalf("log:\n%s", logs.String())
	}
	var nilClient *webex.Client
	if nilClient.SafeSend(context.Background(), webex.Message{RoomID: "r", Text: "x"}) {
		t.Fatal("nil client reported success")
	}
}
