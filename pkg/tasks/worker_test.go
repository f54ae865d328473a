package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func result(t *testing.T, info *asynq.TaskInfo) TaskResult {
	t.Helper()
	var r TaskResult
	if err := json.Unmarshal(info.Result, &r); err != nil {
		t.Fatalf("result %q: %v", info.Result, err)
	}
	return r
}

// 1. delivered once; the result holds the message id.
func TestDeliveredOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.start(nil)
	id := e.enqueue(text("room-1", "hello"))
	info := e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	msgs := e.sim.Messages("room-1")
	if len(msgs) != 1 || msgs[0].Text != "hello" {
		t.Fatalf("simulator holds %+v", msgs)
	}
	if r := result(t, info); len(r.MessageIDs) != 1 || r.MessageIDs[0] != msgs[0].ID {
		t.Fatalf("result %+v, want the message id %s", r, msgs[0].ID)
	}
	if !strings.Contains(e.logs.String(), "msg=delivered") {
		t.Fatalf("no delivered record in the log")
	}
}

// 2. 503 twice then success: delivered within the in-process attempts.
func TestTransientInProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 2})
	e.start(nil)
	id := e.enqueue(text("r", "x"))
	info := e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	if req, acc := e.sim.Counts("r"); req != 3 || acc != 1 || info.Retried != 0 {
		t.Fatalf("requests %d accepted %d retried %d, want 3 1 0", req, acc, info.Retried)
	}
}

// 3. An outage longer than the in-process attempts: redelivered by asynq.
func TestOutageRedelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 5})
	e.start(nil)
	id := e.enqueue(text("r", "x"))
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if req, acc := e.sim.Counts("r"); req != 6 || acc != 1 || info.Retried != 1 {
		t.Fatalf("requests %d accepted %d retried %d, want 6 1 1", req, acc, info.Retried)
	}
	if !strings.Contains(e.logs.String(), "redelivery 1/30") {
		t.Fatalf("log lacks the redelivery record:\n%s", e.logs.String())
	}
}

// 4. 429 with a Retry-After beyond the budget: handed back, the next attempt
// no earlier than the Retry-After, no redelivery used, and not archived even
// when no redelivery is left.
func TestRateLimitedNotCounted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 429, RetryAfter: webextest.Duration(2 * time.Second), Count: 1})
	e.start(nil)
	id := e.enqueue(text("r", "x"), MaxRedeliveries(0))
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	reqs := e.sim.Requests("r")
	if len(reqs) != 2 || reqs[0].Status != 429 || reqs[1].Outcome != webextest.Accepted {
		t.Fatalf("requests %+v", reqs)
	}
	if gap := reqs[1].Start.Sub(reqs[0].Time); gap < 2*time.Second {
		t.Fatalf("retried %v after a 429 asking for 2s", gap)
	}
	if info.Retried != 0 {
		t.Fatalf("a rate limit used a redelivery: retried = %d", info.Retried)
	}
}

// 4b. A 429 within the budget is waited out in-process.
func TestRateLimitedInProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 429, RetryAfter: webextest.Duration(time.Second), Count: 1})
	e.start(func(c *WorkerConfig) { c.Budget = 3 * time.Second })
	id := e.enqueue(text("r", "x"))
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	reqs := e.sim.Requests("r")
	if len(reqs) != 2 || reqs[1].Start.Sub(reqs[0].Time) < time.Second || info.Retried != 0 {
		t.Fatalf("requests %+v retried %d", reqs, info.Retried)
	}
}

// 5. 400 and 404: archived at once after one request, the reason readable.
func TestPermanentArchived(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{Rooms: []string{"known"}})
	e.sim.AddFault(webextest.Fault{Room: "known", Status: 400})
	e.start(nil)
	for _, tc := range []struct{ room, want string }{
		{"known", "permanent: create message: webex: 400 Bad Request"},
		{"unknown", "permanent: create message: webex: 404 Not Found: Could not find a room with provided ID. (tracking id SIM_"},
	} {
		id := e.enqueue(text(tc.room, "x"))
		info := e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
		if !strings.Contains(info.LastErr, tc.want) {
			t.Errorf("%s: LastErr %q, want %q", tc.room, info.LastErr, tc.want)
		}
		if req, _ := e.sim.Counts(tc.room); req != 1 {
			t.Errorf("%s: %d requests, want 1", tc.room, req)
		}
	}
	if !strings.Contains(e.logs.String(), "permanent error, dead-lettered") {
		t.Fatalf("no dead-letter record:\n%s", e.logs.String())
	}
}

// 6. Always failing: archived after the max redeliveries.
func TestExhaustedArchived(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503})
	e.start(nil)
	id := e.enqueue(text("r", "x"), MaxRedeliveries(1))
	info := e.waitState(id, asynq.TaskStateArchived, 20*time.Second)
	if req, _ := e.sim.Counts("r"); req != 6 {
		t.Fatalf("%d requests, want 3 attempts × 2 deliveries", req)
	}
	if !strings.Contains(info.LastErr, "exhausted") || !strings.Contains(info.LastErr, "failed after 1 redeliveries") {
		t.Fatalf("LastErr %q", info.LastErr)
	}
}

// 7. The same key twice, and again after delivery: duplicate, one delivery.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	ctx := context.Background()
	first, err := e.producer.Enqueue(ctx, text("r", "x"), Key("report-2026-11-28"))
	if err != nil || first.TaskID != "report-2026-11-28" {
		t.Fatalf("first = %+v, %v", first, err)
	}
	_, err = e.producer.Enqueue(ctx, text("r", "x"), Key("report-2026-11-28"))
	var dup *DuplicateError
	if !errors.Is(err, ErrDuplicate) || !errors.As(err, &dup) || dup.State != StatePending || errors.Is(err, ErrDeadLettered) {
		t.Fatalf("second enqueue: %v", err)
	}
	e.start(nil)
	e.waitState(first.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	_, err = e.producer.Enqueue(ctx, text("r", "x"), Key("report-2026-11-28"))
	if !errors.As(err, &dup) || dup.State != StateCompleted {
		t.Fatalf("after delivery: %v", err)
	}
	if _, acc := e.sim.Counts("r"); acc != 1 {
		t.Fatalf("%d deliveries", acc)
	}
}

// 7b. A key whose task was dead-lettered is reported as such.
func TestKeyDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 403})
	e.start(nil)
	id := e.enqueue(text("r", "x"), Key("k1"))
	e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
	_, err := e.producer.Enqueue(context.Background(), text("r", "x"), Key("k1"))
	if !errors.Is(err, ErrDeadLettered) || !strings.Contains(err.Error(), "dead-lettered earlier") {
		t.Fatalf("err = %v", err)
	}
}

// 8. A redelivery after the dedup record was written posts nothing.
func TestDedupRecordPreventsRepost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	w := e.start(nil)
	failed := false
	w.handler.afterRecord = func(string, int) error {
		if !failed {
			failed = true
			return errors.New("injected crash after the record")
		}
		return nil
	}
	id := e.enqueue(text("r", "x"))
	e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if req, acc := e.sim.Counts("r"); req != 1 || acc != 1 {
		t.Fatalf("requests %d accepted %d, want exactly one post", req, acc)
	}
	if !strings.Contains(e.logs.String(), "already delivered, not posting again") {
		t.Fatal("the redelivery did not go through the dedup path")
	}
}

// 8b. A connection dropped after Webex accepted: the one duplicate courier
// cannot prevent (docs/SEMANTICS.md).
func TestDroppedAfterAcceptDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Drop: "after", Count: 1})
	e.start(nil)
	id := e.enqueue(text("r", "x"))
	e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	if req, acc := e.sim.Counts("r"); req != 2 || acc != 2 {
		t.Fatalf("requests %d accepted %d, want the one documented duplicate", req, acc)
	}
}

// 9. Three files: three messages in order; a failure on the second resumes
// at the second.
func TestFilesInOrderResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	w := e.start(nil)
	w.handler.afterRecord = func(_ string, part int) error {
		if part == 0 {
			e.sim.AddFault(webextest.Fault{Room: "r", Status: 502, Count: 3}) // the second part's three attempts
		}
		return nil
	}
	m := Message{Message: webex.Message{RoomID: "r", Markdown: "Your charts"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")},
		{Name: "b.png", ContentType: "image/png", Data: []byte("B")},
		{Name: "c.pdf", ContentType: "application/pdf", Data: []byte("C")},
	}}
	id := e.enqueue(m)
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	msgs := e.sim.Messages("r")
	if len(msgs) != 3 {
		t.Fatalf("%d messages", len(msgs))
	}
	for i, want := range []string{"a.png", "b.png", "c.pdf"} {
		if msgs[i].FileName != want || (i == 0) != (msgs[i].Markdown == "Your charts") {
			t.Errorf("message %d = %s %q", i, msgs[i].FileName, msgs[i].Markdown)
		}
	}
	if info.Retried != 1 || len(result(t, info).MessageIDs) != 3 {
		t.Fatalf("retried %d result %s", info.Retried, info.Result)
	}
	if !strings.Contains(info.LastErr, "message 2 of 3") {
		t.Fatalf("LastErr %q does not locate the part", info.LastErr)
	}
}

// 10. A corrupt payload is archived with the reason and the worker goes on;
// a newer payload version is handed back, not archived.
func TestCorruptAndNewerPayloads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.start(nil)
	client := asynq.NewClientFromRedisClient(e.rdb)
	corrupt, err := client.Enqueue(asynq.NewTask(TypeSend, []byte("{not json")), asynq.Queue(e.queue))
	if err != nil {
		t.Fatal(err)
	}
	newer, err := client.Enqueue(asynq.NewTask(TypeSend, []byte(`{"v":99,"message":{"roomId":"r","text":"x"}}`)), asynq.Queue(e.queue), asynq.MaxRetry(1))
	if err != nil {
		t.Fatal(err)
	}
	info := e.waitState(corrupt.ID, asynq.TaskStateArchived, 10*time.Second)
	if !strings.Contains(info.LastErr, "corrupt: corrupt payload") {
		t.Fatalf("LastErr %q", info.LastErr)
	}
	info = e.waitState(newer.ID, asynq.TaskStateRetry, 10*time.Second)
	if !strings.Contains(info.LastErr, "deferred") || info.Retried != 0 {
		t.Fatalf("newer payload: %q retried %d", info.LastErr, info.Retried)
	}
	id := e.enqueue(text("r", "after the bad ones"))
	e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
}

// 11. A 401: nothing archived, not ready; the token fixed: delivered.
func TestUnauthorizedHoldsBacklog(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{Tokens: map[string]string{"other": "x"}})
	w := e.start(nil)
	var ids []string
	for range 5 {
		ids = append(ids, e.enqueue(text("r", "x"), MaxRedeliveries(0)))
	}
	waitFor(t, 10*time.Second, "the worker to report the rejected token", func() bool { return w.Ready() != nil })
	if !strings.Contains(w.Ready().Error(), "default") {
		t.Fatalf("Ready() = %v, want it to name the bot", w.Ready())
	}
	q, err := e.inspector.GetQueueInfo(e.queue)
	if err != nil || q.Archived != 0 {
		t.Fatalf("archived %d (%v)", q.Archived, err)
	}
	e.sim.SetTokens(map[string]string{token: "bot"})
	for _, id := range ids {
		e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	}
	if w.Ready() != nil {
		t.Fatalf("still not ready: %v", w.Ready())
	}
	if req, _ := e.sim.Counts("r"); req > 5+2*5 {
		t.Fatalf("%d requests: a rejected token must not be hammered", req)
	}
}

// 12. An expired message is archived as expired, never posted.
func TestExpired(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	past, _ := NewProducer(e.rdb, ProducerConfig{Queue: e.queue, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	r, err := past.Enqueue(context.Background(), text("r", "stale"), ExpiresIn(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	e.start(nil)
	info := e.waitState(r.TaskID, asynq.TaskStateArchived, 10*time.Second)
	if !strings.Contains(info.LastErr, "expired") {
		t.Fatalf("LastErr %q", info.LastErr)
	}
	if req, _ := e.sim.Counts(""); req != 0 {
		t.Fatalf("an expired message was posted")
	}
}

// 13. Two bots: each message posted with its bot's token.
func TestTwoBots(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{Tokens: map[string]string{token: "alerts", "tok-reports": "reports"}})
	e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": e.client(token), "reports": e.client("tok-reports")}
	})
	a := e.enqueue(text("r", "from default"))
	b := e.enqueue(text("r", "from reports"), Bot("reports"))
	u := e.enqueue(text("r", "from nobody"), Bot("nobody"))
	e.waitState(a, asynq.TaskStateCompleted, 10*time.Second)
	e.waitState(b, asynq.TaskStateCompleted, 10*time.Second)
	info := e.waitState(u, asynq.TaskStateArchived, 10*time.Second)
	if !strings.Contains(info.LastErr, `unknown bot "nobody"`) {
		t.Fatalf("LastErr %q", info.LastErr)
	}
	got := map[string]string{}
	for _, m := range e.sim.Messages("r") {
		got[m.Text] = m.Bot
	}
	if got["from default"] != "alerts" || got["from reports"] != "reports" || len(got) != 2 {
		t.Fatalf("posted as %v", got)
	}
}

// Poison: a task whose deliveries keep dying with their worker is archived.
func TestPoison(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"), Key("poison-1"))
	// Three earlier deliveries began and never finished.
	if err := e.rdb.HSet(context.Background(), taskKey(e.queue, id), fieldRuns, 3).Err(); err != nil {
		t.Fatal(err)
	}
	e.start(nil)
	info := e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
	if !strings.Contains(info.LastErr, "poison: 3 deliveries died with their worker") {
		t.Fatalf("LastErr %q", info.LastErr)
	}
	if req, _ := e.sim.Counts("r"); req != 0 {
		t.Fatal("a poison task was posted")
	}
}

// Dead letters are kept beyond asynq's archive and can be re-enqueued from
// the record once the archive has dropped them.
// In-process attempts are logged at debug only, once each; the outcome once
// by the error handler.
func TestAttemptsLoggedAtDebug(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 1})
	e.start(func(c *WorkerConfig) { c.AttemptLogger = c.Logger })
	id := e.enqueue(text("r", "x"))
	e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	logs := e.logs.String()
	if !strings.Contains(logs, `level=DEBUG msg="attempt failed, retrying" op=deliver attempt=1`) ||
		!strings.Contains(logs, `level=DEBUG msg="succeeded after retrying" op=deliver attempt=2`) || strings.Contains(logs, "level=WARN msg=\"attempt") {
		t.Fatalf("attempt records:\n%s", logs)
	}
}
