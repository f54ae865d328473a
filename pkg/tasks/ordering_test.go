package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// texts lists the texts of messages, in the order Webex accepted them.
func texts(msgs []webextest.Stored) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Text
	}
	return out
}

// sequenceKeys lists the Redis keys of the test queue's sequences.
func (e *env) sequenceKeys() []string {
	keys, err := e.rdb.Keys(context.Background(), "courier:{"+e.queue+"}:seq*").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, k := range []string{headsKey(e.queue), waitingKey(e.queue), deadKey(e.queue)} {
		if n, _ := e.rdb.HLen(context.Background(), k).Result(); n > 0 {
			keys = append(keys, fmt.Sprintf("%s (%d fields)", k, n))
		}
	}
	return keys
}

// asynqEnqueue enqueues m through asynq's own client, for comparison.
func (e *env) asynqEnqueue(m Message, opts ...Option) string {
	e.t.Helper()
	task, o, err := e.producer.build(m, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := e.producer.client.EnqueueContext(context.Background(), task, o.asynq...)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.ID
}

// The head (and a keyed task) goes into asynq exactly as asynq's own
// enqueue would put it.
func TestOrderedHeadIsAnAsynqTask(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	plain := e.asynqEnqueue(text("r", "plain"), Key("plain"), MaxRedeliveries(4))
	keyed := e.enqueue(text("r", "keyed"), Key("keyed"), MaxRedeliveries(4)) // courier's own enqueue of a keyed task
	later := time.Now().Add(time.Hour)
	plainLater := e.asynqEnqueue(text("r", "plain"), Key("plain-later"), ProcessAt(later))
	keyedLater := e.enqueue(text("r", "keyed"), Key("keyed-later"), ProcessAt(later))
	for _, pair := range [][2]string{{plain, keyed}, {plainLater, keyedLater}} {
		want, _ := e.inspector.GetTaskInfo(e.queue, pair[0])
		got, err := e.inspector.GetTaskInfo(e.queue, pair[1])
		if err != nil || got.State != want.State || got.MaxRetry != want.MaxRetry || got.Timeout != want.Timeout || got.Retention != want.Retention ||
			got.Deadline != want.Deadline || got.NextProcessAt.Unix() != want.NextProcessAt.Unix() {
			t.Fatalf("keyed task %+v (%v)\nasynq's %+v", got, err, want)
		}
	}
	head := e.enqueue(text("r", "head"), Key("head"), MaxRedeliveries(4), Ordered())
	behind := e.enqueue(text("r", "behind"), Ordered())
	want, err := e.inspector.GetTaskInfo(e.queue, plain)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.inspector.GetTaskInfo(e.queue, head)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != asynq.TaskStatePending || got.Type != TypeSend || got.MaxRetry != want.MaxRetry || got.Timeout != want.Timeout ||
		got.Retention != want.Retention || got.Deadline != want.Deadline || got.Queue != e.queue {
		t.Fatalf("ordered head %+v\nplain task %+v", got, want)
	}
	p, err := DecodePayload(got.Payload)
	if err != nil || p.Message.Text != "head" || p.OrderingKey != "r" || p.Key != "head" {
		t.Fatalf("payload %+v, %v", p, err)
	}
	// The message behind the head is not in asynq yet; Waiting reads it.
	if _, err := e.inspector.GetTaskInfo(e.queue, behind); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Fatalf("message behind the head: %v", err)
	}
	if w, err := e.producer.Waiting(context.Background(), e.queue, behind); err != nil || w.Message.Text != "behind" || w.OrderingKey != "r" {
		t.Fatalf("waiting %+v, %v", w, err)
	}
	if _, err := e.producer.Waiting(context.Background(), e.queue, head); !errors.Is(err, ErrNotWaiting) {
		t.Fatalf("the head is not waiting: %v", err)
	}
	// Keys are duplicates whether the task is the head or behind it.
	if _, err := e.producer.Enqueue(context.Background(), text("r", "again"), Key("head"), Ordered()); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate head: %v", err)
	}
	e.enqueue(text("r", "keyed behind"), Key("kb"), Ordered())
	var dup *DuplicateError
	if _, err := e.producer.Enqueue(context.Background(), text("r", "again"), Key("kb"), Ordered()); !errors.As(err, &dup) || dup.State != StateWaiting {
		t.Fatalf("duplicate behind the head: %v", err)
	}
}

func TestOrderedRejectsInvalid(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	for name, opts := range map[string][]Option{
		"ordered":      {Ordered(), ProcessIn(time.Minute)},
		"ordering_key": {OrderingKey(strings.Repeat("k", MaxKeyBytes+1))},
	} {
		_, err := e.producer.Enqueue(context.Background(), text("r", "x"), opts...)
		var ve *webex.ValidationError
		if !errors.As(err, &ve) || ve.Field != name {
			t.Errorf("%s: error %v, want a validation error on %s", name, err, name)
		}
	}
	if keys := e.sequenceKeys(); len(keys) > 0 {
		t.Fatalf("invalid messages left %v", keys)
	}
}

// A first message that meets an outage is redelivered seconds later; the
// ordered messages behind it wait for it (unordered ones would overtake
// it), and a drained sequence leaves no key behind.
func TestOrderedWaitsForRedeliveredHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 4}) // the first delivery's 3 attempts, and one more
	e.start(nil)
	var want []string
	var ids []string
	for i := range 12 {
		want = append(want, fmt.Sprintf("m%02d", i))
		ids = append(ids, e.enqueue(text("r", want[i]), Ordered()))
	}
	e.enqueue(text("other", "unordered"))
	waitFor(t, 20*time.Second, "every ordered message", func() bool { return len(e.sim.Messages("r")) >= len(want) })
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, want) {
		t.Fatalf("room got %v, want %v", got, want)
	}
	if info := e.waitState(ids[0], asynq.TaskStateCompleted, 5*time.Second); info.Retried != 1 {
		t.Fatalf("the head was redelivered %d times, want 1", info.Retried)
	}
	e.waitKeysGone()
}

// A dead-lettered head releases the next message, visibly: a log line, a
// metric, and the dead letter names what was behind it.
func TestOrderedDeadLetterReleasesNext(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "gone", Status: 404})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	obs := &releaseCounter{}
	head := e.enqueue(text("gone", "first"), OrderingKey("incident-7"))
	var behind []string
	for i := range 3 {
		behind = append(behind, e.enqueue(text("r", fmt.Sprintf("next-%d", i)), OrderingKey("incident-7")))
	}
	e.start(func(c *WorkerConfig) { c.DeadLetters, c.Observer = dls, obs })
	e.waitState(head, asynq.TaskStateArchived, 10*time.Second)
	waitFor(t, 10*time.Second, "the messages behind the dead letter", func() bool { return len(e.sim.Messages("r")) == 3 })
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"next-0", "next-1", "next-2"}) {
		t.Fatalf("delivered %v", got)
	}
	list, err := dls.List(context.Background(), 10)
	if err != nil || len(list) != 1 || list[0].TaskID != head || !slices.Equal(list[0].Behind, behind) {
		t.Fatalf("dead letters %+v, %v; want %s with %v behind", list, err, head, behind)
	}
	if n := obs.count("dead_letter"); n != 1 {
		t.Fatalf("successors released counted %d, want 1", n)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "sequence moves on past a message that was not delivered") || !strings.Contains(logs, "next_task_id="+behind[0]) {
		t.Fatalf("no log line for the released successor:\n%s", logs)
	}
}

// A head deleted in asynqmon, or archived by asynq's recoverer, leaves
// without courier knowing: the reconciler moves its sequence on.
func TestReconcilerRepairsLostHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	a := e.enqueue(text("r", "a"), Ordered())
	b := e.enqueue(text("r", "b"), Ordered())
	c := e.enqueue(text("r", "c"), Ordered())
	obs := &releaseCounter{}
	rec := NewReconciler(e.rdb, ReconcilerConfig{Queues: []string{e.queue}, Observer: obs, Logger: e.logger()})
	ctx := context.Background()
	if n, err := rec.Reconcile(ctx); n != 0 || err != nil {
		t.Fatalf("reconcile with a live head moved %d, %v", n, err)
	}
	if err := e.inspector.DeleteTask(e.queue, a); err != nil {
		t.Fatal(err)
	}
	if n, err := rec.Reconcile(ctx); n != 1 || err != nil {
		t.Fatalf("reconcile after a deleted head moved %d, %v", n, err)
	}
	e.waitState(b, asynq.TaskStatePending, time.Second)
	if err := e.inspector.ArchiveTask(e.queue, b); err != nil {
		t.Fatal(err)
	}
	if n, err := rec.Reconcile(ctx); n != 1 || err != nil {
		t.Fatalf("reconcile after an archived head moved %d, %v", n, err)
	}
	e.waitState(c, asynq.TaskStatePending, time.Second)
	if err := e.inspector.DeleteTask(e.queue, c); err != nil {
		t.Fatal(err)
	}
	if n, err := rec.Reconcile(ctx); n != 1 || err != nil {
		t.Fatalf("reconcile of the last head moved %d, %v", n, err)
	}
	if keys := e.sequenceKeys(); len(keys) > 0 {
		t.Fatalf("a drained sequence left %v", keys)
	}
	if n := obs.count("reconciled"); n != 2 {
		t.Fatalf("successors released counted %d, want 2", n)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "head_state=deleted") || !strings.Contains(logs, "head_state=archived") {
		t.Fatalf("reconciler logs:\n%s", logs)
	}
}

// A dead letter re-run from asynqmon while its sequence has moved on joins
// the end of the sequence: it is handed back until the messages ahead of
// it are delivered, then pulled forward.
func TestRerunDeadLetterReentersAtEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "gone", Status: 404, Count: 1})
	e.sim.AddFault(webextest.Fault{Room: "slow", Status: 503, Count: 6}) // two deliveries fail: seconds
	a := e.enqueue(text("gone", "a"), OrderingKey("k"))
	b := e.enqueue(text("slow", "b"), OrderingKey("k"))
	e.start(nil)
	e.waitState(a, asynq.TaskStateArchived, 10*time.Second)
	if info, err := e.inspector.GetTaskInfo(e.queue, b); err != nil || info.State == asynq.TaskStateCompleted {
		t.Fatalf("b already %+v, %v: the test needs it still waiting", info, err)
	}
	if err := e.inspector.RunTask(e.queue, a); err != nil {
		t.Fatal(err)
	}
	e.waitState(a, asynq.TaskStateCompleted, 20*time.Second)
	bInfo := e.waitState(b, asynq.TaskStateCompleted, time.Second)
	if got := texts(e.sim.Messages("")); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("delivered %v, want b then the re-run a", got)
	}
	if bInfo.Retried < 1 || !strings.Contains(e.logs.String(), "outcome=behind_head") {
		t.Fatalf("b retried %d; logs:\n%s", bInfo.Retried, e.logs.String())
	}
	e.waitKeysGone()
}

// EnqueueMany keeps the order of ordered messages with the same key, while
// enqueueing concurrently.
func TestEnqueueManyKeepsOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	var reqs []Request
	for i := range 60 {
		reqs = append(reqs, Request{Message: text(fmt.Sprintf("room-%d", i%3), fmt.Sprintf("m%02d", i)), Options: []Option{Ordered()}})
	}
	for _, r := range e.producer.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	e.start(nil)
	for room := range 3 {
		var want []string
		for i := room; i < 60; i += 3 {
			want = append(want, fmt.Sprintf("m%02d", i))
		}
		dest := fmt.Sprintf("room-%d", room)
		waitFor(t, 20*time.Second, "every message of "+dest, func() bool { return len(e.sim.Messages(dest)) >= len(want) })
		if got := texts(e.sim.Messages(dest)); !slices.Equal(got, want) {
			t.Fatalf("%s got %v, want %v", dest, got, want)
		}
	}
}

// releaseCounter counts released successors by reason.
type releaseCounter struct {
	nopObserver
	mu         sync.Mutex
	n          map[string]int
	unthreaded int
}

func (r *releaseCounter) ReplyUnthreaded(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unthreaded++
}

var _ OrderingObserver = (*releaseCounter)(nil)

func (r *releaseCounter) SuccessorReleased(_, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *releaseCounter) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// logger writes to the test's log buffer.
func (e *env) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitKeysGone waits until no sequence of the test's queue holds a key.
func (e *env) waitKeysGone() {
	e.t.Helper()
	var keys []string
	deadline := time.Now().Add(5 * time.Second)
	for keys = e.sequenceKeys(); len(keys) > 0; keys = e.sequenceKeys() {
		if time.Now().After(deadline) {
			e.t.Fatalf("a drained sequence left %v", keys)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A multi-file ordered message delivers all its parts, in order, before the
// next ordered message starts, also when a part meets an outage.
func TestOrderedMultiPart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	w := e.start(nil)
	var once sync.Once
	w.handler.afterRecord = func(_ string, part int) error {
		if part == 0 {
			once.Do(func() { e.sim.AddFault(webextest.Fault{Room: "r", Status: 502, Count: 3}) }) // the second part's attempts
		}
		return nil
	}
	m := Message{Message: webex.Message{RoomID: "r", Markdown: "charts"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")},
		{Name: "b.png", ContentType: "image/png", Data: []byte("B")},
	}}
	e.enqueue(m, Ordered())
	e.enqueue(text("r", "after the charts"), Ordered())
	waitFor(t, 20*time.Second, "three messages", func() bool { return len(e.sim.Messages("r")) >= 3 })
	var got []string
	for _, s := range e.sim.Messages("r") {
		got = append(got, s.FileName+s.Text)
	}
	if !slices.Equal(got, []string{"a.png", "b.png", "after the charts"}) {
		t.Fatalf("delivered %v", got)
	}
}

// An expired head is dead-lettered and the sequence moves on; requeued from
// the durable record, it re-enters at the end of its sequence.
func TestOrderedExpiredAndRequeued(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	hourAgo, err := NewProducer(e.rdb, ProducerConfig{Queue: e.queue, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	r, err := hourAgo.Enqueue(context.Background(), text("r", "late"), Ordered(), ExpiresIn(time.Minute)) // expired 59 minutes ago
	if err != nil {
		t.Fatal(err)
	}
	late := r.TaskID
	e.enqueue(text("r", "on time"), Ordered())
	e.start(func(c *WorkerConfig) { c.DeadLetters = dls })
	e.waitState(late, asynq.TaskStateArchived, 10*time.Second)
	waitFor(t, 10*time.Second, "the message behind the expired one", func() bool { return len(e.sim.Messages("r")) == 1 })
	list, err := dls.List(context.Background(), 10)
	if err != nil || len(list) != 1 || list[0].Outcome != string(Expired) {
		t.Fatalf("dead letters %+v, %v", list, err)
	}
	e.enqueue(text("r", "enqueued before the requeue"), Ordered())
	r, err = dls.Requeue(context.Background(), list[0].ID, e.producer)
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(r.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"on time", "enqueued before the requeue", "late"}) {
		t.Fatalf("delivered %v", got)
	}
	// The expired head's dead mark lives until a reconciler pass sees it archived.
	if _, err := NewReconciler(e.rdb, ReconcilerConfig{Queues: []string{e.queue}, Logger: e.logger()}).Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.waitKeysGone()
}

// commandLog records the commands a Redis client sends.
type commandLog struct {
	mu   sync.Mutex
	cmds []string
}

func (l *commandLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *commandLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		l.add(cmd)
		return next(ctx, cmd)
	}
}

func (l *commandLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			l.add(c)
		}
		return next(ctx, cmds)
	}
}

func (l *commandLog) add(cmd redis.Cmder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cmds = append(l.cmds, fmt.Sprint(cmd.Args()...))
}

// Unordered messages cost nothing extra: neither enqueueing nor delivering
// one runs an ordering script or touches a sequence's keys.
func TestUnorderedTouchesNoSequence(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	log := &commandLog{}
	rdb := redis.NewClient(e.rdb.Options())
	rdb.AddHook(log)
	t.Cleanup(func() { _ = rdb.Close() })
	p, err := NewProducer(rdb, ProducerConfig{Queue: e.queue})
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Enqueue(context.Background(), text("r", "unordered"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWorker(rdb, WorkerConfig{Bots: map[string]Sender{"": e.client(token)}, Queues: map[string]int{e.queue: 1},
		TaskCheckInterval: 10 * time.Millisecond, Logger: e.logger(), Gate: GateConfig{Namespace: "courier:{" + e.queue + "}"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitState(r.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	w.Shutdown()
	ordering := []string{enqueueOrderedScript.Hash(), claimScript.Hash(), releaseScript.Hash(), deadLetterScript.Hash(), parentScript.Hash(), ":seq", ":heads", ":waiting", ":dead"}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, c := range log.cmds {
		for _, o := range ordering {
			if strings.Contains(c, o) && !strings.Contains(c, "hscan") { // the reconciler's periodic scan is not on the message's path
				t.Errorf("an unordered message's path ran %q", c)
			}
		}
	}
}

// panicOnce panics on the first message with a given text.
type panicOnce struct {
	Sender
	text string
	done sync.Once
}

func (p *panicOnce) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	if m.Text == p.text {
		p.done.Do(func() { panic("sender bug") })
	}
	return p.Sender.CreateMessage(ctx, m)
}

// A head whose delivery panics is not released: the message behind it
// waits for its redelivery.
func TestOrderedPanicKeepsHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.enqueue(text("r", "boom"), Ordered())
	e.enqueue(text("r", "after"), Ordered())
	e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": &panicOnce{Sender: e.client(token), text: "boom"}}
	})
	waitFor(t, 20*time.Second, "both messages", func() bool { return len(e.sim.Messages("r")) >= 2 })
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"boom", "after"}) {
		t.Fatalf("delivered %v", got)
	}
}

// An idempotency key is one key whether the message is ordered or not: an
// unordered enqueue with the key of an ordered message waiting in its
// sequence is a duplicate, and the waiting message is delivered in its turn.
func TestUnorderedKeyOfWaitingMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.enqueue(text("r", "head"), Ordered())
	e.enqueue(text("r", "first"), Ordered(), Key("k"))
	_, err := e.producer.Enqueue(context.Background(), text("r", "second"), Key("k"))
	var dup *DuplicateError
	if !errors.As(err, &dup) || dup.State != "waiting" {
		t.Fatalf("unordered enqueue with the key of a waiting message: %v (want a duplicate, waiting)", err)
	}
	e.enqueue(text("r", "third"), Ordered())
	e.start(nil)
	e.waitState("k", asynq.TaskStateCompleted, 20*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && len(e.sim.Messages("r")) < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.Join(texts(e.sim.Messages("r")), ","); got != "head,first,third" {
		t.Fatalf("delivered %s, want head,first,third", got)
	}
}

// A waiting message whose id an asynq task took behind courier's back is
// dropped loudly when its turn comes, never silently.
func TestReleaseLogsDroppedWaitingMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.enqueue(text("r", "head"), Ordered())
	e.enqueue(text("r", "waiting"), Ordered(), Key("k"))
	e.asynqEnqueue(text("r", "other"), Key("k")) // asynq's client does not look at the waiting hash
	e.start(nil)
	e.waitState("k", asynq.TaskStateCompleted, 20*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(e.logs.String(), "waiting message dropped") {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(e.logs.String(), `msg="waiting message dropped`) || !strings.Contains(e.logs.String(), "task_id=k") {
		t.Fatalf("drop not logged:\n%s", e.logs.String())
	}
}

// A worker whose task was taken over once its delivery was recorded (its
// fence says so at the very end, where the release would follow) does not
// release the next message: the new owner may still be posting the head.
// Every earlier fence check passes, so the delivery reaches the release
// point; only the final fence keeps the sequence where it is.
func TestFencedWorkerDoesNotRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	head := e.enqueue(text("r", "head"), Ordered())
	next := e.enqueue(text("r", "next"), Ordered())
	recorded := func() bool { // the head's delivery record names every part
		var r TaskResult
		b, err := e.rdb.HGet(context.Background(), taskKey(e.queue, head), fieldResult).Bytes()
		return err == nil && json.Unmarshal(b, &r) == nil && len(r.sent()) == 1 && delivered(r.sent()) == 1
	}
	var fenced atomic.Int32
	e.start(func(c *WorkerConfig) {
		c.ReconcileInterval = time.Hour
		c.Fence = countingFence{check: func(cl Claim) error {
			if cl.ID == head && recorded() { // declared dead right after recording: the release point
				fenced.Add(1)
				return ErrTakenOver
			}
			return nil
		}}
	})
	// The head was posted and recorded, then its delivery came back fenced
	// (handed back): its sequence must not have moved on.
	waitFor(t, 10*time.Second, "the head posted, recorded and handed back", func() bool {
		info, err := e.inspector.GetTaskInfo(e.queue, head)
		return recorded() && err == nil && info.State != asynq.TaskStateActive
	})
	if _, err := e.producer.Waiting(context.Background(), e.queue, next); err != nil {
		t.Fatalf("the next message was released by a fenced worker: %v; delivered %v", err, texts(e.sim.Messages("r")))
	}
	if fenced.Load() == 0 || len(e.sim.Messages("r")) != 1 {
		t.Fatalf("fenced %d times, delivered %v: the fence must fail at the release point, after the post", fenced.Load(), texts(e.sim.Messages("r")))
	}
}

// countingFence is a Fence whose verdict a test decides.
type countingFence struct{ check func(Claim) error }

func (f countingFence) Hold(Claim) func()                      { return func() {} }
func (f countingFence) Check(_ context.Context, c Claim) error { return f.check(c) }
func (f countingFence) Holder() string                         { return "" }

var _ Fence = countingFence{}

// A dead-lettered head releases its successor before asynq archives it;
// when asynq then skips the archive (here the task was moved to retry just
// as the archive ran, as after an expired lease), the head comes
// back although its sequence moved on. It is dead-lettered again, never
// delivered after its successors, and its dead letter is recorded once. A
// reconciler pass then clears its dead mark.
func TestDeadLetterSkippedArchiveNotDeliveredLate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 404, Count: 1}) // the head's first delivery only
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	head := e.enqueue(text("r", "first"), Ordered())
	e.enqueue(text("r", "second"), Ordered())
	e.enqueue(text("r", "third"), Ordered())
	moved := e.faults().Add(&redisfault.Rule{ // asynq's archive of the head finds it moved
		Match: redisfault.Match{Name: "evalsha", Args: []string{taskKey(e.queue, head), "asynq:{" + e.queue + "}:archived"}},
		Do: func() { // as asynq's recoverer retries a task whose lease expired: due in a second
			ctx := context.Background()
			prefix := "asynq:{" + e.queue + "}:"
			e.rdb.LRem(ctx, prefix+"active", 0, head)
			e.rdb.ZRem(ctx, prefix+"lease", head)
			e.rdb.HSet(ctx, taskKey(e.queue, head), "state", "retry")
			e.rdb.ZAdd(ctx, prefix+"retry", redis.Z{Score: float64(time.Now().Unix() + 1), Member: head})
		},
	})
	e.start(func(c *WorkerConfig) { c.DeadLetters, c.ReconcileInterval = dls, time.Hour })
	var info *asynq.TaskInfo
	waitFor(t, 20*time.Second, "the successors, and the head's end", func() bool {
		var err error
		info, err = e.inspector.GetTaskInfo(e.queue, head)
		return err == nil && len(e.sim.Messages("r")) >= 2 &&
			(info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted)
	})
	if moved.Seen() == 0 {
		t.Fatal("asynq's archive of the head never ran")
	}
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"second", "third"}) || info.State != asynq.TaskStateArchived {
		t.Fatalf("delivered %v, head %v: the passed-over head came back and was delivered out of order", got, info.State)
	}
	if !strings.Contains(info.LastErr, string(PassedOver)) || !strings.Contains(e.logs.String(), "outcome=passed_over") {
		t.Fatalf("head archived with %q; logs:\n%s", info.LastErr, e.logs.String())
	}
	if list, err := dls.List(context.Background(), 10); err != nil || len(list) != 1 {
		t.Fatalf("dead letters %+v, %v: want the head's, once", list, err)
	}
	rec := NewReconciler(e.rdb, ReconcilerConfig{Queues: []string{e.queue}, Logger: e.logger()})
	if _, err := rec.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, err := e.rdb.HLen(context.Background(), deadKey(e.queue)).Result(); err != nil || n != 0 {
		t.Fatalf("%d dead marks left after the archive (%v)", n, err)
	}
}

// heldSender holds the post of one text until release is closed.
type heldSender struct {
	Sender
	text    string
	release chan struct{}
}

func (h *heldSender) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	if m.Text == h.text {
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Sender.CreateMessage(ctx, m)
}

// An ordered task that reaches a worker behind its head (as a re-run dead
// letter does) is handed back for DeferDelay. When the head's release makes
// it the head while its hand-back is still under way (its claim just said
// wait), it goes as soon as the hand-back lands, not after DeferDelay (an
// hour here).
func TestHandedBackHeadGoesPromptly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	held := &heldSender{Sender: e.client(token), text: "head", release: make(chan struct{})}
	w := e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": held}
		c.DeferDelay, c.ReconcileInterval = time.Hour, time.Hour
	})
	var x string
	var once sync.Once
	var madeHead atomic.Bool
	w.handler.order.afterClaim = func(id string, head bool) {
		if id != x || head {
			return
		}
		once.Do(func() {
			close(held.release) // the head posts and releases x ...
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) { // ... before x's hand-back lands
				if e.rdb.HGet(context.Background(), headsKey(e.queue), "r").Val() == x {
					madeHead.Store(true)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	x = "x-" + e.queue // an ordered task in asynq behind the head, as a re-run is
	e.enqueue(text("r", "head"), Ordered())
	e.asynqEnqueue(text("r", "x"), Ordered(), Key(x))
	e.waitState(x, asynq.TaskStateCompleted, 20*time.Second)
	if !madeHead.Load() {
		t.Fatal("the release did not make x the head while x was handed back: the test missed the race it is for")
	}
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"head", "x"}) {
		t.Fatalf("delivered %v", got)
	}
	e.waitKeysGone()
}

// An ordered head delivered in isolation whose claim the worker could not
// read (Redis failed it) has no fence to release under: it is handed back,
// and its redelivery finds it delivered and releases the next message,
// rather than completing (and, unretained, vanishing) with its sequence
// stuck until the reconciler takes it for a deleted head.
func TestIsolatedHeadReleasesAfterUnreadClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	head := e.enqueue(text("r", "head"), Ordered(), Retention(-1))
	e.enqueue(text("r", "next"), Ordered(), Retention(-1))
	e.died(head, 2) // a suspect: delivered in a process of its own
	unread := e.faults().FailNth(redisfault.Match{Name: "hmget", Args: []string{taskKey(e.queue, head), fieldEpoch}}, 1)
	e.startIsolating()
	waitFor(t, 30*time.Second, "both messages", func() bool { return len(e.sim.Messages("r")) >= 2 })
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"head", "next"}) || unread.Failed() != 1 {
		t.Fatalf("delivered %v (claim read failed %d times)", got, unread.Failed())
	}
}

// An ordered message costs exactly two courier round trips more than an
// unordered one (the worker set up as cmd/worker sets it up): the claim
// before the post and the release after it, one each; an unordered message
// runs neither.
func TestOrderedRoundTrips(t *testing.T) {
	t.Parallel()
	e, rt, _ := roundTripEnv(t)
	unordered, _ := deliverCounted(t, e, rt, 3)
	ordered, _ := deliverCounted(t, e, rt, 3, Ordered())
	for _, line := range unordered {
		if strings.Contains(line, "(claim)") || strings.Contains(line, "(release)") {
			t.Fatalf("an unordered delivery ran an ordering script:\n%s", strings.Join(unordered, "\n"))
		}
	}
	for _, line := range ordered {
		if strings.Count(line, "evalsha(claim)") != 1 || strings.Count(line, "evalsha(release)") != 1 {
			t.Fatalf("an ordered delivery without one claim and one release:\n%s", strings.Join(ordered, "\n"))
		}
	}
	t.Logf("per unordered message:\n%s\nper ordered message:\n%s", strings.Join(unordered, "\n"), strings.Join(ordered, "\n"))
}
