package tasks

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// faults adds a fault-injecting hook to the test's Redis client (the
// producer's and the worker's).
func (e *env) faults() *redisfault.Hook {
	h := &redisfault.Hook{}
	e.rdb.AddHook(h)
	return h
}

// beginCmd matches the start-of-delivery script of task id.
func (e *env) beginCmd(id string) redisfault.Match {
	return redisfault.Match{Name: "evalsha", Args: []string{beginScript.Hash(), taskKey(e.queue, id)}}
}

// recordCmd matches the dedup-record write of task id.
func (e *env) recordCmd(id string) redisfault.Match {
	return redisfault.Match{Name: "evalsha", Args: []string{markScript.Hash(), taskKey(e.queue, id)}}
}

// panicky panics on its first call, then sends.
type panicky struct {
	Sender
	n atomic.Int32
}

func (p *panicky) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	if p.n.Add(1) == 1 {
		panic("injected panic in a sender")
	}
	return p.Sender.CreateMessage(ctx, m)
}

// Item 1: a failed start-of-delivery script is Redis's fault, not the
// message's: it uses no redelivery, so a 429 after it is not archived.
func TestRedisFaultDoesNotCount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault webextest.Fault
		token string
	}{
		{"rate_limited", webextest.Fault{Room: "r", Status: 429, RetryAfter: webextest.Duration(2 * time.Second), Count: 1}, token},
		{"unauthorized", webextest.Fault{}, "tok-other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, webextest.Options{Tokens: map[string]string{tc.token: "bot"}})
			if tc.fault.Status != 0 {
				e.sim.AddFault(tc.fault)
			}
			h := e.faults()
			id := e.enqueue(text("r", "x"), MaxRedeliveries(0))
			h.FailNth(e.beginCmd(id), 1)
			e.start(nil)
			waitFor(t, 20*time.Second, "Webex to refuse once", func() bool { return strings.Contains(e.logs.String(), "outcome="+tc.name) })
			e.sim.SetTokens(map[string]string{token: "bot", tc.token: "bot"})
			info := e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
			if info.Retried != 0 {
				t.Fatalf("a Redis fault used a redelivery: retried %d", info.Retried)
			}
			if logs := e.logs.String(); !strings.Contains(logs, "outcome=redis_unavailable") || strings.Contains(logs, ", dead-lettered") {
				t.Fatalf("log:\n%s", logs)
			}
		})
	}
}

// Item 1: a panic counts, through the same limit as every counted outcome:
// with no redelivery left it is a dead letter, logged as one.
func TestPanicAppliesTheLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 429, RetryAfter: webextest.Duration(2 * time.Second), Count: 1})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": &panicky{Sender: e.client(token)}}
		c.DeadLetters = dls
	})
	id := e.enqueue(text("r", "x"), MaxRedeliveries(0))
	info := e.waitState(id, asynq.TaskStateArchived, 20*time.Second)
	if !strings.Contains(info.LastErr, "exhausted") || !strings.Contains(info.LastErr, "injected panic") {
		t.Fatalf("LastErr %q, want exhausted after the panic", info.LastErr)
	}
	if !strings.Contains(e.logs.String(), "level=ERROR") {
		t.Fatalf("dead letter not logged at error:\n%s", e.logs.String())
	}
	waitFor(t, 5*time.Second, "the dead-letter record", func() bool { l, _ := dls.List(context.Background(), 10); return len(l) == 1 })
}

// Item 2: Redis refuses the dedup record for longer than a few tries after
// Webex accepted: the worker keeps trying while it holds the task, and the
// message is posted once.
func TestRecordOutlastsRedisBlip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	h := e.faults()
	id := e.enqueue(text("r", "x"))
	rule := h.Add(&redisfault.Rule{Match: e.recordCmd(id), Count: 12})
	e.start(nil)
	info := e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	if req, acc := e.sim.Counts("r"); req != 1 || acc != 1 || info.Retried != 0 || rule.Failed() != 12 {
		t.Fatalf("requests %d accepted %d retried %d failed writes %d, want 1 1 0 12", req, acc, info.Retried, rule.Failed())
	}
}

// Item 3: a message delivered whose completion was lost and that comes back
// after its expiry is deduplicated, not dead-lettered as "not delivered"; a
// message half sent when it expires says so.
func TestExpiryReadsTheRecordFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	var skew atomic.Int64
	w := e.start(func(c *WorkerConfig) { c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) } })
	w.handler.afterRecord = func(_ string, part int) error {
		skew.Store(int64(time.Hour)) // the redelivery comes after the expiry
		if part == 0 {
			e.sim.AddFault(webextest.Fault{Room: "two", Status: 502, Count: 3})
		}
		return errors.New("injected: completion lost")
	}
	one := e.enqueue(text("one", "x"), ExpiresIn(time.Minute))
	e.waitState(one, asynq.TaskStateCompleted, 20*time.Second)
	if req, _ := e.sim.Counts("one"); req != 1 || !strings.Contains(e.logs.String(), "already delivered") {
		t.Fatalf("%d requests; log:\n%s", req, e.logs.String())
	}

	skew.Store(0)
	w.handler.afterRecord = func(_ string, part int) error {
		if part == 0 {
			skew.Store(int64(time.Hour))
			e.sim.AddFault(webextest.Fault{Room: "two", Status: 502, Count: 3})
		}
		return nil
	}
	two := e.enqueue(Message{Message: webex.Message{RoomID: "two", Text: "files"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.png", ContentType: "image/png", Data: []byte("B")},
	}}, ExpiresIn(time.Minute))
	info := e.waitState(two, asynq.TaskStateArchived, 20*time.Second)
	if !strings.Contains(info.LastErr, "after 1 of 2 parts") {
		t.Fatalf("LastErr %q", info.LastErr)
	}
}

// Item 7: a task whose hash is gone when its delivery starts is an error of
// its own, logged at error and not counted; asynq rebuilds the hash and the
// message is delivered.
func TestMissingTaskHash(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"))
	e.rdb.AddHook(deleteBefore{match: e.beginCmd(id), rdb: redis.NewClient(e.rdb.Options()), key: taskKey(e.queue, id), once: &atomic.Bool{}})
	e.start(nil)
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if _, acc := e.sim.Counts("r"); acc != 1 || info.Retried != 0 {
		t.Fatalf("accepted %d retried %d, want 1 0", acc, info.Retried)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "outcome=task_missing") {
		t.Fatalf("log:\n%s", logs)
	}
}

// deleteBefore deletes key once, just before the first command matching.
type deleteBefore struct {
	match redisfault.Match
	rdb   *redis.Client
	key   string
	once  *atomic.Bool
}

func (d deleteBefore) DialHook(next redis.DialHook) redis.DialHook { return next }
func (d deleteBefore) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (d deleteBefore) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if d.match.Matches(cmd) && d.once.CompareAndSwap(false, true) {
			_ = d.rdb.Del(ctx, d.key).Err()
		}
		return next(ctx, cmd)
	}
}

// Item 7: courier reads asynq's key layout in a few places; an asynq upgrade
// that changes it must fail here, loudly.
func TestAsynqKeyLayout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"))
	ctx := context.Background()
	fields, err := e.rdb.HGetAll(ctx, taskKey(e.queue, id)).Result()
	if err != nil || fields["msg"] == "" || fields["state"] != "pending" {
		t.Fatalf("asynq's task hash %s: %v %v", taskKey(e.queue, id), fields, err)
	}
	rec := &records{rdb: e.rdb}
	if err := rec.markSent(ctx, e.queue, id, []string{"msg-1"}, false, false, 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.HSet(ctx, taskKey(e.queue, id), fieldRuns, 1).Err(); err != nil {
		t.Fatal(err)
	}
	info, err := e.inspector.GetTaskInfo(e.queue, id)
	if err != nil || string(info.Result) != `{"message_ids":["msg-1"]}` || info.State != asynq.TaskStatePending {
		t.Fatalf("asynq does not read courier's result field: %+v %v", info, err)
	}
	got, err := rec.begin(ctx, e.queue, id, "", 0, time.Time{})
	if err != nil || got.gone || len(got.sent) != 1 || got.sent[0] != "msg-1" || got.died != 1 {
		t.Fatalf("begin = %+v, %v", got, err)
	}
}

// Issue 15: Webex answered 2xx with a body cut short: the message exists.
// It is delivered with an unknown id, never posted again, logged at warn.
func TestUnconfirmedIsDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	cut := &atomic.Int32{}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, e.sim.URL+r.URL.Path, r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(http.ErrAbortHandler)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		w.Header().Set("Content-Type", "application/json")
		if resp.StatusCode != 200 || cut.Add(1) != 2 { // the second part's answer is cut
			w.WriteHeader(resp.StatusCode)
			_, _ = w.Write(body)
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		_, _ = w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(front.Close)
	client, err := webex.New(webex.Config{BaseURL: front.URL, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	e.start(func(c *WorkerConfig) { c.Bots = map[string]Sender{"": client} })
	id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Text: "files"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.png", ContentType: "image/png", Data: []byte("B")},
		{Name: "c.png", ContentType: "image/png", Data: []byte("C")},
	}})
	info := e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if req, acc := e.sim.Counts("r"); req != 3 || acc != 3 || info.Retried != 0 {
		t.Fatalf("requests %d accepted %d retried %d, want 3 3 0", req, acc, info.Retried)
	}
	r := result(t, info)
	if len(r.MessageIDs) != 3 || r.MessageIDs[0] == "" || r.MessageIDs[1] != "" || r.MessageIDs[2] == "" {
		t.Fatalf("result %s, want the second id empty", info.Result)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "outcome=delivered_unconfirmed") {
		t.Fatalf("log:\n%s", logs)
	}
}

// Item 4: a dead letter half delivered is re-run without the parts Webex
// already accepted.
func TestRequeueSkipsDeliveredParts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	w := e.start(func(c *WorkerConfig) { c.DeadLetters = dls })
	w.handler.afterRecord = func(_ string, part int) error {
		if part == 0 {
			e.sim.AddFault(webextest.Fault{Room: "r", Status: 400, Count: 1})
		}
		return nil
	}
	id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Markdown: "Your charts"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.png", ContentType: "image/png", Data: []byte("B")},
	}}, Key("two-files"))
	e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
	w.handler.afterRecord = nil
	var list []DeadLetter
	waitFor(t, 5*time.Second, "the dead-letter record", func() bool { list, _ = dls.List(context.Background(), 10); return len(list) == 1 })
	if r := list[0].Result; r == nil || len(r.MessageIDs) != 2 || r.MessageIDs[0] == "" || r.MessageIDs[1] != "" {
		t.Fatalf("record result %+v", r)
	}
	if err := e.inspector.DeleteTask(e.queue, id); err != nil {
		t.Fatal(err)
	}
	r, err := dls.Requeue(context.Background(), list[0].ID, e.producer)
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(r.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	var names []string
	for _, m := range e.sim.Messages("r") {
		names = append(names, m.FileName)
	}
	if strings.Join(names, " ") != "a.png b.png" {
		t.Fatalf("posted %v, want [a.png b.png]", names)
	}
}

// Item 5a: a failed end of run (Redis refused the write) is retried, not
// left open to be taken for a death: three ordinary failures later the task
// is delivered, not archived as poison.
func TestFailedEndOfRunIsNotADeath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 9}) // three deliveries of three attempts
	h := e.faults()
	id := e.enqueue(text("r", "x"))
	rule := h.Add(&redisfault.Rule{Match: redisfault.Match{Name: "hdel", Args: []string{taskKey(e.queue, id), fieldRuns}}, Count: 3})
	e.start(nil)
	info := e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	if _, acc := e.sim.Counts("r"); acc != 1 || info.Retried != 3 || rule.Failed() != 3 {
		t.Fatalf("accepted %d retried %d failed ends %d, want 1 3 3", acc, info.Retried, rule.Failed())
	}
}
