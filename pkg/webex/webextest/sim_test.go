package webextest_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

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
	if err := post(t, a, "r"); status(err) != 429 {
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
	if r := do("PUT", "/_sim/tokens", `{"tok-new":"alerts"}`); r.StatusCode != 204 {
		t.Fatal("tokens")
	}
	if _, err := a.Me(context.Background()); !errors.Is(err, webex.ErrUnauthorized) {
		t.Fatalf("revoked token still accepted: %v", err)
	}
	if r := do("PUT", "/_sim/ratelimit", `{"rps":1,"burst":1,"retryAfter":2}`); r.StatusCode != 204 {
		t.Fatal("ratelimit")
	}
	do("POST", "/_sim/reset", "")
	if len(s.Messages("")) != 0 || len(s.Requests("")) != 0 {
		t.Fatal("reset kept state")
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
