package relay_test

import (
	"encoding/json"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// The relay keeps a bot's messages to a room in the order it posted them,
// even when the first meets an outage, and a reply to a relayed message
// (its parentId a relay id) is sent in the thread of the delivered parent.
func TestRelayOrderAndThreads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	post := func(body string) string {
		code, _, b := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(body), nil)
		if code != 200 {
			t.Fatalf("%d %s", code, b)
		}
		return decodeAnswer(t, b).ID
	}
	opened := post(`{"roomId":"ops","text":"incident opened"}`)
	reply := post(`{"roomId":"ops","text":"on it","parentId":"` + opened + `"}`)
	post(`{"roomId":"ops","text":"incident resolved"}`)
	// Another token may not reply under this token's message.
	if code, _, b := e.do("POST", "/v1/messages", otherToken, "application/json", []byte(`{"roomId":"ops","text":"me too","parentId":"`+opened+`"}`), nil); code != 400 {
		t.Fatalf("another token's reply: %d %s", code, b)
	}
	var st relay.Status
	if c, _, b := e.do("GET", "/v1/messages/"+reply, relayToken, "", nil, nil); c != 200 || json.Unmarshal(b, &st) != nil || st.State != "queued" {
		t.Fatalf("status of a message behind another: %d %s", c, b)
	}

	sim := webextest.NewServer(t, webextest.Options{})
	sim.AddFault(webextest.Fault{Room: "ops", Status: 503, Count: 3}) // the first delivery of "incident opened"
	w, err := tasks.NewWorker(redistest.Client(t), tasks.WorkerConfig{Bots: map[string]tasks.Sender{"": sim.Client(t, webextest.DefaultToken)},
		Queues: map[string]int{e.queue: 1}, TaskCheckInterval: 10 * time.Millisecond, DelayedTaskCheckInterval: 100 * time.Millisecond,
		Schedule: retrypolicy.Schedule{Base: time.Millisecond, Cap: time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone, MaxRetryAfter: time.Hour},
		Policy:   retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone},
		Logger:   slog.New(slog.DiscardHandler), Gate: tasks.GateConfig{Namespace: "courier:{" + e.queue + "}"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	deadline := time.Now().Add(20 * time.Second)
	for len(sim.Messages("ops")) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("delivered %+v", sim.Messages("ops"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs := sim.Messages("ops")
	var got []string
	for _, m := range msgs {
		got = append(got, m.Text)
	}
	if !slices.Equal(got, []string{"incident opened", "on it", "incident resolved"}) || msgs[1].ParentID != msgs[0].ID || msgs[2].ParentID != "" {
		t.Fatalf("delivered %+v", msgs)
	}
}

// Each token's messages are a sequence of their own per destination: a
// token whose messages are held (its bot's token rejected, say) does not
// hold another token's messages to the same room, even of the same bot.
func TestRelayOrdersPerToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	for _, tok := range []string{relayToken, relayToken, otherToken, sameBotTok} {
		if code, _, b := e.do("POST", "/v1/messages", tok, "application/json", []byte(`{"roomId":"ops","text":"hi"}`), nil); code != 200 {
			t.Fatalf("%d %s", code, b)
		}
	}
	pending, err := e.insp.ListPendingTasks(e.queue)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 3 { // one head per token; relayToken's second message waits behind its first
		t.Fatalf("%d messages ready to deliver, want 3 (one per token)", len(pending))
	}
}
