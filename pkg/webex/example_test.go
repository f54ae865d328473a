package webex_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// simulator starts a Webex simulator for an example; the returned client
// talks to it (in real use: webex.New(webex.Config{Token: token})).
func simulator() (*webextest.Sim, *webex.Client, func()) {
	sim := webextest.New(webextest.Options{})
	srv := httptest.NewServer(sim)
	c, err := webex.New(webex.Config{BaseURL: srv.URL, Token: webextest.DefaultToken})
	if err != nil {
		panic(err)
	}
	return sim, c, srv.Close
}

// fast is a quick in-process policy, so that examples do not wait seconds.
var fast = retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}

func ExampleNew() {
	_, err := webex.New(webex.Config{}) // the token is required
	fmt.Println(err)
	c, _ := webex.New(webex.Config{Token: "…"})
	fmt.Println(c.BaseURL())
	// Output:
	// webex: Token is required
	// https://webexapis.com/v1
}

func ExampleClient_Me() {
	_, c, stop := simulator()
	defer stop()
	me, err := c.Me(context.Background())
	fmt.Println(me.DisplayName, err)
	// Output: bot <nil>
}

func ExampleClient_CreateMessage() {
	_, c, stop := simulator()
	defer stop()
	s, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "room-1", Markdown: "**Hello**"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(s.ID, s.Markdown, s.Response.StatusCode, s.Response.TrackingID != "")
	// Output: sim-msg-1 **Hello** 200 true
}

func ExampleClient_GetMessage() {
	_, c, stop := simulator()
	defer stop()
	ctx := context.Background()
	s, _ := c.CreateMessage(ctx, webex.Message{RoomID: "room-1", Text: "hi"})
	got, err := c.GetMessage(ctx, s.ID)
	fmt.Println(got.Text, err)
	// Output: hi <nil>
}

func ExampleClient_DeleteMessage() {
	_, c, stop := simulator()
	defer stop()
	ctx := context.Background()
	s, _ := c.CreateMessage(ctx, webex.Message{RoomID: "room-1", Text: "oops"})
	fmt.Println(c.DeleteMessage(ctx, s.ID))
	var ae *webex.APIError
	fmt.Println(errors.As(c.DeleteMessage(ctx, s.ID), &ae) && ae.StatusCode == 404)
	// Output:
	// <nil>
	// true
}

func ExampleClient_ListMessages() {
	_, c, stop := simulator()
	defer stop()
	ctx := context.Background()
	for _, text := range []string{"one", "two", "three"} {
		_, _ = c.CreateMessage(ctx, webex.Message{RoomID: "room-1", Text: text})
	}
	page, err := c.ListMessages(ctx, webex.ListQuery{RoomID: "room-1", Max: 2})
	for err == nil {
		for _, m := range page.Items { // newest first
			fmt.Println(m.Text)
		}
		if !page.HasNext() {
			break
		}
		page, err = c.NextMessages(ctx, page)
	}
	// Output:
	// three
	// two
	// one
}

func ExampleClient_Send() {
	sim, c, stop := simulator()
	defer stop()
	sim.AddFault(webextest.Fault{Status: 503, Count: 1}) // one blip: retried
	s, err := c.Send(context.Background(), webex.Message{RoomID: "room-1", Text: "report ready"}, webex.WithPolicy(fast))
	requests, accepted := sim.Counts("room-1")
	fmt.Println(s.Text, err, requests, accepted)
	// Output: report ready <nil> 2 1
}

// Webex accepted the message but its answer was cut off: Send reports it
// after one request, and the message must not be sent again.
func ExampleClient_Send_unconfirmed() {
	sim, c, stop := simulator()
	defer stop()
	sim.AddFault(webextest.Fault{Drop: "partial", Count: 1})
	_, err := c.Send(context.Background(), webex.Message{RoomID: "room-1", Text: "once"}, webex.WithPolicy(fast))
	var ue *webex.UnconfirmedError
	if errors.As(err, &ue) {
		fmt.Println("delivered, id unknown; status", ue.StatusCode)
	}
	fmt.Println(len(sim.Messages("room-1")))
	// Output:
	// delivered, id unknown; status 200
	// 1
}

func ExampleClient_SendFiles() {
	sim, c, stop := simulator()
	defer stop()
	files := []webex.File{
		{Name: "chart.png", ContentType: "image/png", Data: []byte("PNG…")},
		{Name: "data.csv", ContentType: "text/csv", Data: []byte("a,b\n1,2\n")},
	}
	sent, err := c.SendFiles(context.Background(), webex.Message{RoomID: "room-1", Markdown: "Weekly report"}, files)
	fmt.Println(len(sent), err)
	for _, m := range sim.Messages("room-1") {
		fmt.Printf("%q %s\n", m.Markdown, m.FileName)
	}
	// Output:
	// 2 <nil>
	// "Weekly report" chart.png
	// "" data.csv
}

func ExampleClient_SendCard() {
	sim, c, stop := simulator()
	defer stop()
	card := map[string]any{"type": "AdaptiveCard", "version": "1.3", "body": []any{map[string]any{"type": "TextBlock", "text": "Deploy done"}}}
	_, err := c.SendCard(context.Background(), webex.Message{RoomID: "room-1", Text: "Deploy done"}, card)
	m := sim.Messages("room-1")[0]
	fmt.Println(err, m.Attachments[0].ContentType)
	// Output: <nil> application/vnd.microsoft.card.adaptive
}

func ExampleClient_SafeSend() {
	sim, c, stop := simulator()
	defer stop()
	fmt.Println(c.SafeSend(context.Background(), webex.Message{RoomID: "room-1", Text: "job failed"}))
	sim.AddFault(webextest.Fault{Status: 403}) // never delivered: false, no error, no panic
	fmt.Println(c.SafeSend(context.Background(), webex.Message{RoomID: "room-1", Text: "job failed"}))
	// Output:
	// true
	// false
}

func ExampleMessage_Validate() {
	m := webex.Message{Text: strings.Repeat("x", 8000), Files: []string{"/tmp/chart.png"}}
	fmt.Println(m.Validate())
	// Output:
	// roomId: exactly one of roomId, toPersonId, toPersonEmail is required, got 0
	// text: is 8000 bytes, the limit is 7439
	// files: entry 1 has no scheme, must be an http or https URL
}

func ExampleOpenFile() {
	// A file streamed at upload time: Open is called for each attempt, and
	// Size is checked against MaxFileBytes before anything is sent.
	f := webex.File{Name: "big.iso", Size: webex.MaxFileBytes + 1,
		Open: func() (io.ReadCloser, error) { return nil, errors.New("not reached") }}
	m := webex.Message{RoomID: "room-1", File: &f}
	fmt.Println(m.Validate())
	// Output: files: "big.iso" is 104857601 bytes, the limit is 104857600
}

func ExampleSplitFiles() {
	parts := webex.SplitFiles(webex.Message{RoomID: "room-1", Text: "see attached"},
		[]webex.File{{Name: "a.pdf"}, {Name: "b.pdf"}})
	for _, p := range parts {
		fmt.Printf("%q %s\n", p.Text, p.File.Name)
	}
	// Output:
	// "see attached" a.pdf
	// "" b.pdf
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, v := range []string{"30", "Tue, 01 Dec 2026 10:02:00 GMT", "99999999999999999999", "soon"} {
		fmt.Println(webex.ParseRetryAfter(v, now))
	}
	// Output:
	// 30s
	// 2m0s
	// 1h0m0s
	// 0s
}

func ExampleAPIError() {
	sim, c, stop := simulator()
	defer stop()
	sim.AddFault(webextest.Fault{Status: 429, RetryAfter: webextest.Duration(5 * time.Second)})
	_, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "room-1", Text: "x"})
	var ae *webex.APIError
	if errors.As(err, &ae) {
		d := retrypolicy.Classify(err, nil)
		fmt.Println(ae.StatusCode, ae.RetryAfter, d.Class)
	}
	// Output: 429 5s rate_limited
}

func ExampleClient_NextMessages() {
	_, c, stop := simulator()
	defer stop()
	ctx := context.Background()
	for _, text := range []string{"one", "two", "three"} {
		_, _ = c.CreateMessage(ctx, webex.Message{RoomID: "room-1", Text: text})
	}
	first, _ := c.ListMessages(ctx, webex.ListQuery{RoomID: "room-1", Max: 2})
	second, err := c.NextMessages(ctx, first) // follows the Link header
	fmt.Println(len(first.Items), first.HasNext(), len(second.Items), second.HasNext(), err)
	fmt.Println(second.Items[0].Text)
	// Output:
	// 2 true 1 false <nil>
	// one
}

func ExampleReadFile() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "chart.png")
	_ = os.WriteFile(path, []byte("\x89PNG\r\n\x1a\n"), 0o600)
	f, err := webex.ReadFile(path) // in memory (Data), for small files; OpenFile streams
	fmt.Println(f.Name, f.ContentType, f.Len(), err)
	// Output: chart.png image/png 8 <nil>
}

func ExampleDefaultHTTPClient() {
	// Start from the default client to add a transport wrapper (metrics,
	// tracing) while keeping its timeouts and refusal of redirects.
	hc := webex.DefaultHTTPClient()
	hc.Transport = countingTransport{hc.Transport}
	c, err := webex.New(webex.Config{Token: "…", HTTPClient: hc})
	fmt.Println(c.BaseURL(), err, hc.Timeout)
	// Output: https://webexapis.com/v1 <nil> 0s
}

// countingTransport stands for a metrics wrapper around a transport.
type countingTransport struct{ next http.RoundTripper }

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.next.RoundTrip(r)
}
