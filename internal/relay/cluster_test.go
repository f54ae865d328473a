package relay_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// The relay on a real Redis Cluster (three primaries): messages posted to
// it are delivered in order, and their status reads delivered.
func TestRelayOnCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	opt, err := redisurl.Parse(c.URL(), redisurl.ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	rdb := opt.NewClient()
	defer rdb.Close()
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, RelayKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(relay.New(relay.Config{Tokens: map[string]string{relayToken: ""}, Producer: p, Inspector: insp,
		Queue: queue, Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	e := &env{srv: srv, queue: queue, insp: insp, prod: p, t: t}

	sim := webextest.NewServer(t, webextest.Options{})
	w, err := tasks.NewWorker(rdb, tasks.WorkerConfig{Bots: map[string]tasks.Sender{"": sim.Client(t, webextest.DefaultToken)},
		Queues: map[string]int{queue: 1}, TaskCheckInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()

	var ids, want []string
	for i := range 5 {
		want = append(want, fmt.Sprint("relayed ", i))
		code, _, body := e.do("POST", "/v1/messages", relayToken, "application/json",
			[]byte(fmt.Sprintf(`{"roomId":"room-cluster","text":%q}`, want[i])), nil)
		if code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		ids = append(ids, decodeAnswer(t, body).ID)
	}
	for _, id := range ids {
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, _, b := e.do("GET", "/v1/messages/"+id, relayToken, "", nil, nil)
			var st relay.Status
			_ = json.Unmarshal(b, &st)
			if code == 200 && st.State == "delivered" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %s: %d %s", id, code, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The idempotency key: a repeat answers with the first message's id
	// (the keyed enqueue script and the waiting hash, in the queue's slot).
	h := map[string]string{"Idempotency-Key": "cluster-4711"}
	var first string
	for try := range 2 {
		code, _, body := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"room-cluster-key","text":"once"}`), h)
		if code != 200 {
			t.Fatalf("try %d: %d %s", try+1, code, body)
		}
		if id := decodeAnswer(t, body).ID; try == 0 {
			first = id
		} else if id != first {
			t.Errorf("repeat answered %s, want the first id %s", id, first)
		}
	}
	var got []string
	for _, m := range sim.Messages("room-cluster") {
		got = append(got, m.Text)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("delivered %q, want %q", got, want)
	}
}
