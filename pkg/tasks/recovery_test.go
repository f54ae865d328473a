package tasks

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// testRecovery is a detector with the shortest window, its log and its count.
type testRecovery struct {
	*Recovery
	logs      *syncBuffer
	recovered atomic.Int32
	halts     atomic.Int32
}

func newTestRecovery(t *testing.T, rdb *redis.Client, queue string) *testRecovery {
	t.Helper()
	tr := &testRecovery{logs: &syncBuffer{}}
	r, err := NewRecovery(rdb, RecoveryConfig{After: MinRecoveryAfter, Interval: 200 * time.Millisecond, Queues: []string{queue},
		Host: "testhost", PID: 1, settle: 500 * time.Millisecond,
		Logger:    slog.New(slog.NewTextHandler(tr.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Recovered: func(string) { tr.recovered.Add(1) }, Halt: func() { tr.halts.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	tr.Recovery = r
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("recovery log:\n%s", tr.logs.String())
		}
	})
	return tr
}

// run runs the detector until the test ends; done reports its result.
func (tr *testRecovery) run(t *testing.T) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() { done <- tr.Run(ctx); close(finished) }()
	t.Cleanup(func() { cancel(); <-finished })
	return done
}

func (e *env) taskState(id string) asynq.TaskState {
	info, err := e.inspector.GetTaskInfo(e.queue, id)
	if err != nil {
		return 0
	}
	return info.State
}

// A task whose worker died goes back to pending once its lease stood still
// for the window, with a tombstone for the dead server and an info record
// naming it; the death counts for the poison guard; no redelivery is used.
func TestRecoveryMovesADeadWorkersTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "orphan"))
	dead := fakeDeadHolder(t, e.rdb, e.queue, id)
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	waitFor(t, 20*time.Second, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	if took := time.Since(start); took < MinRecoveryAfter {
		t.Fatalf("moved after %v, before the lease stood still for the window (%v)", took, MinRecoveryAfter)
	}
	if by, err := e.rdb.Get(ctx, tombstoneKey(dead)).Result(); err != nil || !strings.Contains(by, "testhost:1") {
		t.Fatalf("tombstone for %s: %q %v", dead, by, err)
	}
	if got := r.recovered.Load(); got != 1 {
		t.Fatalf("recovered %d, want 1", got)
	}
	log := r.logs.String()
	for _, want := range []string{"task of a dead worker moved back to pending", "task_id=" + id, dead} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	e.start(func(c *WorkerConfig) { c.PoisonLimit = 1 }) // the one death is enough to count
	info := e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
	if !strings.Contains(info.LastErr, "died with their worker") {
		t.Fatalf("archived with %q, want the poison guard to count the death", info.LastErr)
	}
	if n := len(e.sim.Messages("r")); n != 0 {
		t.Fatalf("posted %d", n)
	}
}

// A task a live worker lists, and one whose lease keeps moving, are never
// taken over, while a dead worker's task beside them is.
func TestRecoveryLeavesLiveWorkersTasks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	listed, moving, orphan := e.enqueue(text("r", "listed")), e.enqueue(text("r", "moving")), e.enqueue(text("r", "orphan"))
	fakeDeadHolder(t, e.rdb, e.queue, listed)
	fakeDeadHolder(t, e.rdb, e.queue, moving)
	fakeDeadHolder(t, e.rdb, e.queue, orphan)
	live := "livehost:7:" + e.queue
	e.rdb.Set(ctx, serverKey(live), "x", time.Minute)
	e.rdb.HSet(ctx, "asynq:workers:{"+live+"}", listed, "x")
	e.rdb.Expire(ctx, "asynq:workers:{"+live+"}", time.Minute)
	e.rdb.ZAdd(ctx, asynqWorkers, redis.Z{Score: float64(time.Now().Add(time.Minute).Unix()), Member: "asynq:workers:{" + live + "}"})
	t.Cleanup(func() {
		e.rdb.Del(context.Background(), serverKey(live), "asynq:workers:{"+live+"}")
		e.rdb.ZRem(context.Background(), asynqWorkers, "asynq:workers:{"+live+"}")
	})
	stop := make(chan struct{})
	beat := make(chan struct{})
	go func() { // a heartbeat for moving: its lease moves every second
		defer close(beat)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
				e.rdb.ZAddXX(ctx, leaseKey(e.queue), redis.Z{Score: float64(time.Now().Add(asynqLeaseDuration).Unix() + int64(i)), Member: moving})
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-beat })
	r := newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	waitFor(t, 20*time.Second, "the dead worker's task back in pending", func() bool { return e.taskState(orphan) == asynq.TaskStatePending })
	deadline := time.Now().Add(2 * time.Second) // two more windows of scans
	for time.Now().Before(deadline) {
		if e.taskState(listed) != asynq.TaskStateActive || e.taskState(moving) != asynq.TaskStateActive {
			t.Fatalf("a live worker's task was taken over: listed %v, moving %v", e.taskState(listed), e.taskState(moving))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := r.recovered.Load(); got != 1 {
		t.Fatalf("recovered %d, want 1", got)
	}
}

// Every worker runs a detector; only one moves each task.
func TestRecoveryOneMoverAmongMany(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "orphan"))
	fakeDeadHolder(t, e.rdb, e.queue, id)
	rs := []*testRecovery{newTestRecovery(t, e.rdb, e.queue), newTestRecovery(t, e.rdb, e.queue), newTestRecovery(t, e.rdb, e.queue)}
	for _, r := range rs {
		r.run(t)
	}
	waitFor(t, 20*time.Second, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	total := 0
	for _, r := range rs {
		total += int(r.recovered.Load())
	}
	pending, _ := e.rdb.LRange(ctx, pendingKey(e.queue), 0, -1).Result()
	if total != 1 || len(pending) != 1 {
		t.Fatalf("moved %d times, pending %v; want once", total, pending)
	}
}

// A worker that finds its own tombstone halts once; Fence and Run say so,
// and its handler posts nothing (the outcome is not the message's fault).
func TestTombstonedWorkerPostsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	self := ServerID{Host: "testhost", PID: 1, ID: e.queue}
	r.self.Store(&self)
	t.Cleanup(func() { e.rdb.Del(context.Background(), tombstoneKey(self.String())) })
	if err := r.Fence(ctx); err != nil {
		t.Fatalf("fence before any tombstone: %v", err)
	}
	e.rdb.Set(ctx, tombstoneKey(self.String()), "another worker", time.Minute)
	if err := r.Fence(ctx); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("fence: %v, want ErrTombstoned", err)
	}
	if err := <-r.run(t); !errors.Is(err, ErrTombstoned) {
		t.Fatalf("run: %v, want ErrTombstoned", err)
	}
	if n := r.halts.Load(); n != 1 {
		t.Fatalf("halted %d times, want once", n)
	}
	e.start(func(c *WorkerConfig) { c.Fence = r.Fence })
	id := e.enqueue(text("r", "not mine any more"))
	waitFor(t, 10*time.Second, "the interrupted delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "task_id="+id)
	})
	if n, _ := e.sim.Counts("r"); n != 0 {
		t.Fatalf("%d requests to Webex, want none", n)
	}
	if info, err := e.inspector.GetTaskInfo(e.queue, id); err != nil || info.Retried != 0 || info.State == asynq.TaskStateArchived {
		t.Fatalf("task %+v %v: want it back in the queue, no redelivery used", info, err)
	}
}

// asynq's Inspector (asynqmon, the metrics exporter) removes expired servers
// from asynq:servers; a dead server the detector saw is still found.
func TestRecoveryRemembersServersTheInspectorPrunes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "orphan"))
	dead := fakeDeadHolderSince(t, e.rdb, e.queue, id, asynqServerStateTTL) // its key expired just now
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	waitFor(t, 5*time.Second, "a few scans and the server's expiry to pass", func() bool { return time.Since(start) > 2*time.Second })
	if _, err := e.inspector.Servers(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.ZScore(ctx, asynqServers, serverKey(dead)).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("asynq's Inspector no longer prunes expired servers (%v): this test no longer covers what it should", err)
	}
	waitFor(t, 20*time.Second, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	if !strings.Contains(r.logs.String(), dead) {
		t.Fatalf("log does not name %s:\n%s", dead, r.logs.String())
	}
}
