package webex_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
)

// unreadable2xx is a server that accepts every POST with 200 and then fails
// to deliver a readable body naming the message, in one of several ways; it
// counts the POSTs.
func unreadable2xx(t *testing.T, how string) (*httptest.Server, *atomic.Int32) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("TrackingID", "TID-ACCEPTED")
		switch how {
		case "cut off": // promises 200 bytes, sends 9, hangs up
			w.Header().Set("Content-Length", "200")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"id":"m1`))
		case "slow": // headers at once, the body never (until the client gives up)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "oversize": // valid JSON, longer than the client reads
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush() // the status first, as a loaded machine may be slow to build the body
			_, _ = w.Write([]byte(`{"id":"m1","text":"` + strings.Repeat("x", 2<<20) + `"}`))
		case "empty": // no body at all
			w.WriteHeader(http.StatusOK)
		case "no id": // valid JSON naming no message
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{}`))
		case "null":
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`null`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &posts
}

// unreadableClient gives up on an answer after two seconds: long enough for
// the status line to arrive on a loaded machine (a timeout before it would
// rightly be retried), short enough for the "slow" body to time out.
func unreadableClient(t *testing.T, base string, logger *slog.Logger) *webex.Client {
	t.Helper()
	c, err := webex.New(webex.Config{BaseURL: base, Token: secret, Logger: logger, HTTPClient: &http.Client{Timeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantUnconfirmed(t *testing.T, err error) {
	t.Helper()
	var ue *webex.UnconfirmedError
	if !errors.As(err, &ue) || ue.StatusCode != 200 || ue.TrackingID != "TID-ACCEPTED" {
		t.Fatalf("err = %v, want an *UnconfirmedError for a 200 with tracking id TID-ACCEPTED", err)
	}
	if d := retrypolicy.Classify(err, nil); d.Class != retrypolicy.Permanent {
		t.Fatalf("unconfirmed answer classified %v", d.Class)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("token in error %q", err)
	}
}

// Webex accepted the message (2xx) but its answer cannot be read: the
// message exists, so every entry point posts it exactly once and says so.
func TestAcceptedButUnreadablePostedOnce(t *testing.T) {
	t.Parallel()
	msg := webex.Message{RoomID: "r", Text: "hello"}
	for _, how := range []string{"cut off", "slow", "oversize", "empty", "no id", "null"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			t.Run("CreateMessage", func(t *testing.T) {
				t.Parallel()
				srv, posts := unreadable2xx(t, how)
				_, err := unreadableClient(t, srv.URL, nil).CreateMessage(context.Background(), msg)
				wantUnconfirmed(t, err)
				if n := posts.Load(); n != 1 {
					t.Fatalf("%d POSTs, want 1", n)
				}
			})
			t.Run("Send", func(t *testing.T) {
				t.Parallel()
				srv, posts := unreadable2xx(t, how)
				s, err := unreadableClient(t, srv.URL, nil).Send(context.Background(), msg, webex.WithPolicy(fastPolicy))
				wantUnconfirmed(t, err)
				if n := posts.Load(); n != 1 || s != nil {
					t.Fatalf("%d POSTs (want 1), Sent %+v", n, s)
				}
			})
			t.Run("SendCard", func(t *testing.T) {
				t.Parallel()
				srv, posts := unreadable2xx(t, how)
				_, err := unreadableClient(t, srv.URL, nil).SendCard(context.Background(), msg, map[string]any{"type": "AdaptiveCard"}, webex.WithPolicy(fastPolicy))
				wantUnconfirmed(t, err)
				if n := posts.Load(); n != 1 {
					t.Fatalf("%d POSTs, want 1", n)
				}
			})
			t.Run("SafeSend", func(t *testing.T) {
				t.Parallel()
				srv, posts := unreadable2xx(t, how)
				var logs bytes.Buffer
				c := unreadableClient(t, srv.URL, slog.New(slog.NewTextHandler(&logs, nil)))
				if !c.SafeSend(context.Background(), msg, webex.WithPolicy(fastPolicy)) {
					t.Fatal("SafeSend reported an accepted message as not delivered")
				}
				if n := posts.Load(); n != 1 {
					t.Fatalf("%d POSTs, want 1", n)
				}
				if !strings.Contains(logs.String(), `level=WARN msg="safe send delivered, answer unreadable"`) ||
					!strings.Contains(logs.String(), "tracking_id=TID-ACCEPTED") {
					t.Fatalf("log:\n%s", logs.String())
				}
			})
			t.Run("SendFiles", func(t *testing.T) {
				t.Parallel()
				srv, posts := unreadable2xx(t, how)
				files := []webex.File{{Name: "a.txt", Data: []byte("A")}, {Name: "b.txt", Data: []byte("B")}}
				sent, err := unreadableClient(t, srv.URL, nil).SendFiles(context.Background(), msg, files, webex.WithPolicy(fastPolicy))
				wantUnconfirmed(t, err)
				// Both parts were accepted once each; neither was posted again.
				if n := posts.Load(); n != 2 || len(sent) != 2 || sent[0].ID != "" || sent[1].Response.TrackingID != "TID-ACCEPTED" {
					t.Fatalf("%d POSTs (want 2), sent %d", n, len(sent))
				}
			})
		})
	}
}

// A GET whose answer is unreadable is not an UnconfirmedError: nothing was
// created, and reading again is harmless.
func TestUnreadableGetIsNotUnconfirmed(t *testing.T) {
	t.Parallel()
	srv, _ := unreadable2xx(t, "cut off")
	_, err := unreadableClient(t, srv.URL, nil).GetMessage(context.Background(), "m1")
	var ue *webex.UnconfirmedError
	if err == nil || errors.As(err, &ue) || retrypolicy.Classify(err, nil).Class != retrypolicy.Transient {
		t.Fatalf("err = %v", err)
	}
}

// The synchronous helpers never wait longer than DefaultWaitBudget: a 429
// asking for an hour ends the call at once with a BudgetError.
func TestSendWaitBudget(t *testing.T) {
	t.Parallel()
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(webex.DefaultWaitBudget/time.Second)+1))
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := time.AfterFunc(10*time.Second, cancel) // a helper without a budget would wait
	defer stop.Stop()
	// A policy whose MaxDelay allows the wait: only the budget stops it.
	p := retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: time.Hour, Multiplier: 2, Jitter: retrypolicy.JitterNone}
	c := newClient(t, srv.URL, nil)
	_, err := c.Send(ctx, webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(p))
	var be *retrypolicy.BudgetError
	if !errors.As(err, &be) || !errors.Is(err, retrypolicy.ErrBudgetExhausted) || be.Wait <= webex.DefaultWaitBudget || posts.Load() != 1 {
		t.Fatalf("err = %v after %d requests, want a BudgetError after 1", err, posts.Load())
	}
	var ae *webex.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 429 {
		t.Fatalf("the BudgetError lost the 429: %v", err)
	}
	if c.SafeSend(ctx, webex.Message{RoomID: "r", Text: "x"}, webex.WithPolicy(p)) || posts.Load() != 2 || ctx.Err() != nil {
		t.Fatalf("SafeSend: %d requests, ctx %v", posts.Load(), ctx.Err())
	}
}
