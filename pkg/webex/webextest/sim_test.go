package webextest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func post(t *testing.T, c *webex.Client, room string) error {
	t.Helper()
	_, err := c.CreateMessage(context.Background(), webex.Message{RoomID: room, Text: "x"})
	return err
}

func status(err error) int {
	var ae *webex.APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}

func TestFaults(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c := s.Client(t, webextest.DefaultToken)
	s.AddFault(webextest.Fault{Room: "a", Status: 503, Count: 2, RetryAfter: webextest.Duration(2 * time.Second)})
	s.AddFault(webextest.Fault{Room: "b", Drop: "after", Count: 1})

	err := post(t, c, "a")
	if status(err) != 503 || retrypolicy.Classify(err, nil).RetryAfter != 2*time.Second {
		t.Fatalf("first: %v", err)
	}
	if status(post(t, c, "other")) != 0 {
		t.Fatal("fault for room a hit room other")
	}
	_ = post(t, c, "a")
	if err := post(t, c, "a"); err != nil {
		t.Fatalf("third request to a should pass: %v", err)
	}
	if err := post(t, c, "b"); err == nil || retrypolicy.Classify(err, nil).Class != retrypolicy.Transient {
		t.Fatalf("drop after accept: %v", err)
	}
	if req, acc := s.Counts("a"); req != 3 || acc != 1 {
		t.Fatalf("room a: %d requests %d accepted", req, acc)
	}
	if req, acc := s.Counts("b"); req != 1 || acc != 1 || len(s.Messages("b")) != 1 {
		t.Fatalf("room b: %d requests %d accepted (a dropped-after request is accepted)", req, acc)
	}
}

func TestProbabilityFault(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c := s.Client(t, webextest.DefaultToken)
	s.AddFault(webextest.Fault{Status: 500, Probability: 0.5})
	failed := 0
	for range 200 {
		if post(t, c, "r") != nil {
			failed++
		}
	}
	if failed < 60 || failed > 140 {
		t.Fatalf("%d of 200 failed with probability 0.5", failed)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c := s.Client(t, webextest.DefaultToken)
	s.SetRateLimit(1, 3, 4*time.Second)
	codes := map[int]int{}
	for range 6 {
		codes[status(post(t, c, "r"))]++
	}
	if codes[0] != 3 || codes[429] != 3 {
		t.Fatalf("statuses %v, want 3 accepted and 3 × 429 with burst 3", codes)
	}
	err := post(t, c, "r")
	if d := retrypolicy.Classify(err, nil); d.Class != retrypolicy.RateLimited || d.RetryAfter != 4*time.Second {
		t.Fatalf("429 decision %+v", d)
	}
}

func TestControlAPI(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{"tok-a": "alerts", "tok-b": "reports"}})
	do := func(method, path, body string) *http.Response {
		req, _ := http.NewRequest(method, s.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if r := do("POST", "/_sim/faults", `{"room":"r","status":429,"retryAfter":"3s","count":1}`); r.StatusCode != 204 {
		t.Fatalf("add fault: %d", r.StatusCode)
	}
	if r := do("POST", "/_sim/faults", `{"drop":"sideways"}`); r.StatusCode != 400 {
		t.Fatalf("bad fault accepted: %d", r.StatusCode)
	}
	a := s.Client(t, "tok-a")
	if err := post(t, a, "r"); status(err) != 429 || retrypolicy.Classify(err, nil).RetryAfter != 3*time.Second {
		t.Fatalf("fault over HTTP not applied: %v", err)
	}
	if err := post(t, s.Client(t, "tok-b"), "r"); err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Total webextest.Stats            `json:"total"`
		Rooms map[string]webextest.Stats `json:"rooms"`
	}
	_ = json.NewDecoder(do("GET", "/_sim/stats", "").Body).Decode(&stats)
	if stats.Total.Requests != 2 || stats.Rooms["r"].Accepted != 1 {
		t.Fatalf("stats = %+v", stats)
	}
	var msgs []webextest.Stored
	_ = json.NewDecoder(do("GET", "/_sim/messages?room=r", "").Body).Decode(&msgs)
	if len(msgs) != 1 || msgs[0].Bot != "reports" {
		t.Fatalf("messages = %+v", msgs)
	}
	var reqs []webextest.Request
	_ = json.NewDecoder(do("GET", "/_sim/requests?room=r", "").Body).Decode(&reqs)
	if len(reqs) != 2 || reqs[0].Status != 429 || reqs[1].Outcome != webextest.Accepted {
		t.Fatalf("requests = %+v", reqs)
	}

	// A fault until cleared, then DELETE /_sim/faults clears it.
	do("POST", "/_sim/faults", `{"status":503}`)
	if status(post(t, a, "r")) != 503 {
		t.Fatal("fault without count not applied")
	}
	if r := do("DELETE", "/_sim/faults", ""); r.StatusCode != 204 || post(t, a, "r") != nil {
		t.Fatal("DELETE /_sim/faults left the fault")
	}

	// The rate limit takes effect: burst 1, then 429 with its Retry-After.
	if r := do("PUT", "/_sim/ratelimit", `{"rps":0.001,"burst":1,"retryAfter":2}`); r.StatusCode != 204 {
		t.Fatal("ratelimit")
	}
	_ = post(t, a, "limited")
	if err := post(t, a, "limited"); status(err) != 429 || retrypolicy.Classify(err, nil).RetryAfter != 2*time.Second {
		t.Fatalf("rate limit over HTTP not applied: %v", err)
	}

	// Latency over HTTP: an answer held an hour times out; 0 turns it off.
	do("DELETE", "/_sim/faults", "") // and the rate limit
	if r := do("PUT", "/_sim/latency", `{"latency":"1h"}`); r.StatusCode != 204 {
		t.Fatalf("latency: %d", r.StatusCode)
	}
	if r := do("PUT", "/_sim/latency", `{"latency":"-1s"}`); r.StatusCode != 400 {
		t.Fatalf("negative latency accepted: %d", r.StatusCode)
	}
	held, _ := webex.New(webex.Config{BaseURL: s.URL, Token: "tok-a", Timeout: 200 * time.Millisecond})
	if err := post(t, held, "held"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("latency over HTTP not applied: %v", err)
	}
	do("PUT", "/_sim/latency", `{"latency":0}`)
	if err := post(t, held, "held"); err != nil {
		t.Fatalf("latency 0 left it on: %v", err)
	}

	// Reset clears every fault control, latency included, and the state.
	s.SetLatency(time.Hour)
	do("POST", "/_sim/faults", `{"status":500}`)
	if r := do("POST", "/_sim/reset", ""); r.StatusCode != 204 {
		t.Fatal("reset")
	}
	if len(s.Messages("")) != 0 || len(s.Requests("")) != 0 {
		t.Fatal("reset kept state")
	}
	if req, acc := s.Counts(""); req != 0 || acc != 0 {
		t.Fatalf("reset kept counts %d %d", req, acc)
	}
	quick, _ := webex.New(webex.Config{BaseURL: s.URL, Token: "tok-a", HTTPClient: &http.Client{Timeout: 5 * time.Second}})
	for range 3 { // neither the latency, the fault nor the rate limit is left
		if err := post(t, quick, "limited"); err != nil {
			t.Fatalf("after reset: %v", err)
		}
	}

	// Tokens replaced over HTTP: the old one is refused.
	if r := do("PUT", "/_sim/tokens", `{"tok-new":"alerts"}`); r.StatusCode != 204 {
		t.Fatal("tokens")
	}
	if _, err := a.Me(context.Background()); !errors.Is(err, webex.ErrUnauthorized) {
		t.Fatalf("revoked token still accepted: %v", err)
	}
}

func TestListAndV1Prefix(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c, _ := webex.New(webex.Config{BaseURL: s.URL + "/v1", Token: webextest.DefaultToken})
	for range 2 {
		if err := post(t, c, "room-1"); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequest("GET", s.URL+"/v1/messages?roomId=room-1", nil)
	req.Header.Set("Authorization", "Bearer "+webextest.DefaultToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct{ Items []webex.Sent }
	_ = json.NewDecoder(resp.Body).Decode(&list)
	if len(list.Items) != 2 || list.Items[0].ID == list.Items[1].ID {
		t.Fatalf("list = %+v", list)
	}
}

func TestValidationAnswer(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	req, _ := http.NewRequest("POST", s.URL+"/messages", strings.NewReader(`{"roomId":"r","text":"`+strings.Repeat("x", 8000)+`"}`))
	req.Header.Set("Authorization", "Bearer "+webextest.DefaultToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Message    string
		Errors     []struct{ Description string }
		TrackingID string
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 400 || !strings.Contains(body.Message, "text: is 8000 bytes, the limit is 7439") ||
		body.TrackingID == "" || resp.Header.Get("TrackingID") != body.TrackingID || len(body.Errors) == 0 {
		t.Fatalf("%d %+v", resp.StatusCode, body)
	}
}

// rawPost sends a create-message body as is, bypassing the client's own
// validation, and returns the status and the error descriptions, one a line.
func rawPost(t *testing.T, s *webextest.Server, contentType string, body io.Reader, length int64) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.URL+"/messages", body)
	req.ContentLength = length
	req.Header.Set("Authorization", "Bearer "+webextest.DefaultToken)
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		Errors []struct{ Description string }
	}
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	var descs []string
	for _, e := range answer.Errors {
		descs = append(descs, e.Description)
	}
	return resp.StatusCode, strings.Join(descs, "\n")
}

func jsonPost(t *testing.T, s *webextest.Server, body string) (int, string) {
	t.Helper()
	return rawPost(t, s, "application/json", strings.NewReader(body), int64(len(body)))
}

// multipartBody is a form with fields, then file parts of the given sizes
// (zeros, streamed), and its exact length.
func multipartBody(fields map[string]string, files ...int64) (string, io.Reader, int64) {
	var head bytes.Buffer
	w := multipart.NewWriter(&head)
	for k, v := range fields {
		_ = w.WriteField(k, v)
	}
	var readers []io.Reader
	var length int64
	for i, size := range files {
		_, _ = w.CreateFormFile("files", fmt.Sprintf("f%d.bin", i))
		part := bytes.Clone(head.Bytes())
		head.Reset()
		readers = append(readers, bytes.NewReader(part), io.LimitReader(zeroReader{}, size))
		length += int64(len(part)) + size
	}
	_ = w.Close()
	readers = append(readers, bytes.NewReader(bytes.Clone(head.Bytes())))
	length += int64(head.Len())
	return w.FormDataContentType(), io.MultiReader(readers...), length
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// The simulator checks Webex's rules itself: requests sent past the client's
// validation get the answer Webex would give.
func TestSimValidatesOnItsOwn(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{MaxUploadBytes: 1})
	exact := strings.Repeat("é", 3719) + "x" // 7439 bytes, 3720 characters
	tests := []struct {
		name   string
		body   string
		status int
		want   string
	}{
		{"text at the byte limit", `{"roomId":"r","text":"` + exact + `"}`, 200, ""},
		{"text a byte over, in characters under", `{"roomId":"r","text":"` + exact + `x"}`, 400, "text: is 7440 bytes, the limit is 7439"},
		{"markdown a byte over", `{"roomId":"r","markdown":"` + strings.Repeat("é", 3720) + `"}`, 400, "markdown: is 7440 bytes"},
		{"no destination", `{"text":"x"}`, 400, "roomId: exactly one of"},
		{"two destinations", `{"roomId":"r","toPersonEmail":"a@b.c","text":"x"}`, 400, "got 2"},
		{"nothing to send", `{"roomId":"r"}`, 400, "text: one of text, markdown or a file"},
		{"two file urls", `{"roomId":"r","files":["https://x/a","https://x/b"]}`, 400, "files: has 2 files"},
		{"file path", `{"roomId":"r","files":["/etc/passwd"]}`, 400, "files: entry 1 must be an http or https URL"},
		{"ftp url", `{"roomId":"r","files":["ftp://x/a"]}`, 400, "files: entry 1 must be an http or https URL"},
		{"https url", `{"roomId":"r","files":["https://x/a.png"]}`, 200, ""},
		{"two cards", `{"roomId":"r","text":"fb","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{}},{"contentType":"application/vnd.microsoft.card.adaptive","content":{}}]}`, 400, "attachments: has 2 cards"},
		{"card type", `{"roomId":"r","text":"fb","attachments":[{"contentType":"text/html","content":{}}]}`, 400, "attachments: contentType is"},
		{"card without fallback", `{"roomId":"r","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{}}]}`, 400, "text: a card needs a text or markdown fallback"},
		{"parent id shape", `{"roomId":"r","text":"x","parentId":"a b/../c"}`, 400, "parentId: is not a message id"},
		{"parent id", `{"roomId":"r","text":"x","parentId":"Y2lzY29zcGFyazovL3VzL01FU1NBR0UvMTIz"}`, 200, ""},
	}
	for _, tt := range tests {
		code, desc := jsonPost(t, s, tt.body)
		if code != tt.status || !strings.Contains(desc, tt.want) {
			t.Errorf("%s: %d %q, want %d %q", tt.name, code, desc, tt.status, tt.want)
		}
	}
	// Uploads: one file per message; up to 100 MiB taken (a 20 MiB one used
	// to get 413), beyond it 413.
	ct, body, n := multipartBody(map[string]string{"roomId": "r"}, 1, 1)
	if code, desc := rawPost(t, s, ct, body, n); code != 400 || !strings.Contains(desc, "files: has 2 files") {
		t.Errorf("two file parts: %d %q", code, desc)
	}
	ct, body, n = multipartBody(map[string]string{"roomId": "r", "files": "https://x/a"}, 1)
	if code, desc := rawPost(t, s, ct, body, n); code != 400 || !strings.Contains(desc, "files: has 2 files") {
		t.Errorf("a file part and a URL: %d %q", code, desc)
	}
	// A file part with an empty filename is an upload without a name, not
	// a URL value.
	var unnamed bytes.Buffer
	mw := multipart.NewWriter(&unnamed)
	_ = mw.WriteField("roomId", "r")
	fw, _ := mw.CreateFormFile("files", "")
	_, _ = fw.Write([]byte("data"))
	_ = mw.Close()
	if code, desc := rawPost(t, s, mw.FormDataContentType(), &unnamed, int64(unnamed.Len())); code != 400 || desc != "files: an uploaded file needs a name" {
		t.Errorf("upload with an empty filename: %d %q", code, desc)
	}
	ct, body, n = multipartBody(map[string]string{"roomId": "r"}, 20<<20)
	if code, desc := rawPost(t, s, ct, body, n); code != 200 {
		t.Errorf("20 MiB upload: %d %q", code, desc)
	}
	ct, body, n = multipartBody(map[string]string{"roomId": "r"}, 100<<20+1)
	if code, _ := rawPost(t, s, ct, body, n); code != 413 {
		t.Errorf("100 MiB + 1 upload: %d, want 413", code)
	}
	if msgs := s.Messages("r"); msgs[len(msgs)-1].FileSize != 20<<20 || msgs[len(msgs)-1].FileData != nil {
		t.Errorf("the 20 MiB upload: size %d, %d bytes held over a 1-byte bound", msgs[len(msgs)-1].FileSize, len(msgs[len(msgs)-1].FileData))
	}
}

// Stored messages, the request log and upload bytes stay within their
// bounds; counts still count everything.
func TestSimMemoryBounded(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{MaxMessages: 3, MaxRequests: 4, MaxUploadBytes: 10})
	c := s.Client(t, webextest.DefaultToken)
	var ids []string
	for i := range 5 {
		sent, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "r", File: &webex.File{Name: fmt.Sprint(i), Data: []byte("abcd")}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sent.ID)
	}
	msgs := s.Messages("r")
	if len(msgs) != 3 || msgs[0].ID != ids[2] || msgs[2].ID != ids[4] {
		t.Fatalf("kept %d messages, want the newest 3", len(msgs))
	}
	if msgs[0].FileData != nil || string(msgs[1].FileData) != "abcd" || string(msgs[2].FileData) != "abcd" || msgs[0].FileSize != 4 {
		t.Fatalf("file bytes held: %q %q %q (size %d), want only the newest 8 of a 10-byte bound", msgs[0].FileData, msgs[1].FileData, msgs[2].FileData, msgs[0].FileSize)
	}
	if n := len(s.Requests("")); n != 4 {
		t.Fatalf("request log holds %d entries, bound 4", n)
	}
	if req, acc := s.Counts("r"); req != 5 || acc != 5 {
		t.Fatalf("counts %d %d, want 5 5", req, acc)
	}
	if _, err := c.GetMessage(context.Background(), ids[0]); status(err) != 404 {
		t.Fatalf("an evicted message is still served: %v", err)
	}
}

// A "partial" drop: accepted, the answer cut off after its headers. The
// client reports an accepted but unconfirmed message, once.
func TestDropPartial(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c := s.Client(t, webextest.DefaultToken)
	s.AddFault(webextest.Fault{Room: "r", Drop: "partial", Count: 1})
	_, err := c.Send(context.Background(), webex.Message{RoomID: "r", Text: "x"})
	var ue *webex.UnconfirmedError
	if !errors.As(err, &ue) || ue.StatusCode != 200 || !strings.HasPrefix(ue.TrackingID, "SIM_") {
		t.Fatalf("err = %v", err)
	}
	reqs := s.Requests("r")
	if req, acc := s.Counts("r"); req != 1 || acc != 1 || len(s.Messages("r")) != 1 || reqs[0].Outcome != webextest.CutOff {
		t.Fatalf("%d requests %d accepted, log %+v", req, acc, reqs)
	}
}

// GET /messages filters by thread (parentId) and time (before), and keeps
// the filters in the next page's link.
func TestListFilters(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	c := s.Client(t, webextest.DefaultToken)
	ctx := context.Background()
	root, err := c.CreateMessage(ctx, webex.Message{RoomID: "r", Text: "root"})
	if err != nil {
		t.Fatal(err)
	}
	var replies []string
	for i := range 3 {
		sent, err := c.CreateMessage(ctx, webex.Message{RoomID: "r", ParentID: root.ID, Text: fmt.Sprint("reply ", i)})
		if err != nil {
			t.Fatal(err)
		}
		replies = append(replies, sent.ID)
		if _, err := c.CreateMessage(ctx, webex.Message{RoomID: "r", Text: "elsewhere"}); err != nil {
			t.Fatal(err)
		}
	}
	all := func(q webex.ListQuery) []string {
		t.Helper()
		var ids []string
		page, err := c.ListMessages(ctx, q)
		for err == nil {
			for _, m := range page.Items {
				ids = append(ids, m.ID)
			}
			if !page.HasNext() {
				return ids
			}
			page, err = c.NextMessages(ctx, page)
		}
		t.Fatalf("list %+v: %v", q, err)
		return nil
	}
	slices.Reverse(replies) // newest first
	if got := all(webex.ListQuery{RoomID: "r", ParentID: root.ID, Max: 1}); !slices.Equal(got, replies) {
		t.Fatalf("thread listed %v, want %v", got, replies)
	}
	stored := s.Messages("r") // oldest first
	if got := all(webex.ListQuery{RoomID: "r", Before: stored[2].Created, Max: 1}); !slices.Equal(got, []string{stored[1].ID, stored[0].ID}) {
		t.Fatalf("before the third message listed %v, want the first two", got)
	}
	if got := all(webex.ListQuery{RoomID: "r", ParentID: root.ID, Before: stored[3].Created}); !slices.Equal(got, []string{stored[1].ID}) {
		t.Fatalf("thread before the fourth message listed %v, want the first reply", got)
	}
	if _, err := c.ListMessages(ctx, webex.ListQuery{RoomID: "r", Max: webex.MaxListPage + 1}); err == nil || !strings.Contains(err.Error(), "Max is 1001") {
		t.Fatalf("Max over 1000: %v", err)
	}
}

func TestListPagesAndDelete(t *testing.T) {
	t.Parallel()
	s := webextest.NewServer(t, webextest.Options{})
	ctx := context.Background()
	for _, base := range []string{s.URL, s.URL + "/v1"} {
		c, _ := webex.New(webex.Config{BaseURL: base, Token: webextest.DefaultToken})
		room := "list-" + base[len(base)-2:]
		var ids []string
		for i := range 5 {
			sent, err := c.CreateMessage(ctx, webex.Message{RoomID: room, Text: fmt.Sprint(i)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, sent.ID)
		}
		var got []string
		page, err := c.ListMessages(ctx, webex.ListQuery{RoomID: room, Max: 2})
		for pages := 1; err == nil; pages++ {
			for _, m := range page.Items {
				got = append(got, m.ID)
			}
			if !page.HasNext() || pages > 5 {
				break
			}
			page, err = c.NextMessages(ctx, page)
		}
		slices.Reverse(ids) // newest first
		if err != nil || !slices.Equal(got, ids) {
			t.Fatalf("%s: listed %v, %v; want %v", base, got, err, ids)
		}
		if err := c.DeleteMessage(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetMessage(ctx, ids[0]); status(err) != 404 {
			t.Fatalf("deleted message still served: %v", err)
		}
		if err := c.DeleteMessage(ctx, ids[0]); status(err) != 404 {
			t.Fatalf("second delete: %v", err)
		}
		if page, err := c.ListMessages(ctx, webex.ListQuery{RoomID: room}); err != nil || len(page.Items) != 4 || page.HasNext() {
			t.Fatalf("after delete: %+v, %v", page, err)
		}
	}
}
