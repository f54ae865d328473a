package tasks

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// testRecovery is a detector with the shortest window, its log and its count.
type testRecovery struct {
	*Recovery
	logs      *syncBuffer
	recovered atomic.Int32
	halts     atomic.Int32
}

func newTestRecovery(t *testing.T, rdb redis.UniversalClient, queue string) *testRecovery {
	t.Helper()
	tr := &testRecovery{logs: &syncBuffer{}}
	r, err := NewRecovery(rdb, RecoveryConfig{After: MinRecoveryAfter, Interval: 200 * time.Millisecond, Queues: []string{queue},
		settle:    500 * time.Millisecond,
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

// waitRecovered waits until the detector has moved n tasks back and said
// so: the move is in Redis a moment before its log record and its count,
// so a test that saw the task pending waits for these too.
func (tr *testRecovery) waitRecovered(t *testing.T, n int32) {
	t.Helper()
	waitFor(t, 10*time.Second, "the takeover logged and counted", func() bool { return tr.recovered.Load() >= n })
}

// takeoverWait bounds a wait for a dead asynq server's task to be moved.
// It is long because the detector shares asynq:servers with the tests
// running beside it: a parallel test's live server whose heartbeat looks
// late (TestRecoveryLateHeartbeatNotTakenForAnotherDeath,
// TestRecoveryOneMissedHeartbeatIsNoDeath), whose expiry fits this task's
// lease as well, rightly holds the takeover back until that test ends and
// removes it (under 25 s).
const takeoverWait = 60 * time.Second

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
// for the window, with its epoch moved on and a warn record naming the
// dead server; the death counts for the poison guard; no redelivery is used.
func TestRecoveryMovesADeadWorkersTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "orphan"))
	dead := fakeDeadHolder(t, e.rdb, e.queue, id)
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	waitFor(t, takeoverWait, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	took := time.Since(start)
	r.waitRecovered(t, 1)
	if took < MinRecoveryAfter {
		t.Fatalf("moved after %v, before the lease stood still for the window (%v)", took, MinRecoveryAfter)
	}
	if epoch, err := e.rdb.HGet(ctx, taskKey(e.queue, id), fieldEpoch).Result(); err != nil || epoch != "1" {
		t.Fatalf("epoch after the takeover: %q %v, want 1", epoch, err)
	}
	if got := r.recovered.Load(); got != 1 {
		t.Fatalf("recovered %d, want 1", got)
	}
	log := r.logs.String()
	for _, want := range []string{"level=WARN msg=\"task of a dead worker moved back to pending\"", "task_id=" + id, dead} {
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
	waitFor(t, takeoverWait, "the dead worker's task back in pending", func() bool { return e.taskState(orphan) == asynq.TaskStatePending })
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
	waitFor(t, takeoverWait, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
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

// A delivery whose task is taken over while its request is under way (the
// task's epoch moves on) writes nothing more into the task's hash: not its
// dedup record, not the end of its run (the new owner's run marker stays),
// and it halts. Two workers on one host with the same pid (sibling
// containers) cannot mistake each other: the fence is the task's.
func TestTakenOverDeliveryWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	var once sync.Once
	takeOver := func(c Claim) { // right after the check before the post: the request goes out
		once.Do(func() {
			e.rdb.HIncrBy(ctx, taskKey(c.Queue, c.ID), fieldEpoch, 1) // the takeover, and the new owner's run
			e.rdb.HSet(ctx, taskKey(c.Queue, c.ID), fieldRuns, 7)
		})
	}
	e.start(func(c *WorkerConfig) { c.Fence = afterCheck{r, takeOver} })
	id := e.enqueue(text("r", "taken over mid-request"))
	key := taskKey(e.queue, id)
	waitFor(t, 10*time.Second, "the halt", func() bool { return r.halts.Load() > 0 })
	waitFor(t, 10*time.Second, "the interrupted delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "task_id="+id)
	})
	if runs, _ := e.rdb.HGet(ctx, key, fieldRuns).Result(); runs != "7" {
		t.Fatalf("the new owner's run marker is %q, want 7 (the stale delivery ended it)", runs)
	}
	if res, _ := e.rdb.HGet(ctx, key, fieldResult).Result(); res != "" {
		t.Fatalf("the stale delivery wrote its record %s into the new owner's task", res)
	}
	if n := r.halts.Load(); n != 1 {
		t.Fatalf("halted %d times, want once", n)
	}
	if n, acc := e.sim.Counts("r"); n != 1 || acc != 1 {
		t.Fatalf("%d requests, %d accepted; want the one that went out before the takeover", n, acc)
	}
	if !strings.Contains(r.logs.String(), "took over its task") {
		t.Fatalf("no log of the takeover:\n%s", r.logs.String())
	}
}

// afterCheck runs then after each check that passes.
type afterCheck struct {
	Fence
	then func(Claim)
}

func (f afterCheck) Check(ctx context.Context, c Claim) error {
	err := f.Fence.Check(ctx, c)
	if err == nil {
		f.then(c)
	}
	return err
}

// The detector's scans fence the deliveries under way: a held task taken
// over halts the worker, and Run says so.
func TestRecoveryScanFencesHeldTasks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "held"))
	r := newTestRecovery(t, e.rdb, e.queue)
	c := Claim{Queue: e.queue, ID: id}
	defer r.Hold(c)()
	if err := r.Check(ctx, c); err != nil {
		t.Fatalf("check before any takeover: %v", err)
	}
	done := r.run(t)
	e.rdb.HIncrBy(ctx, taskKey(e.queue, id), fieldEpoch, 1)
	select {
	case err := <-done:
		if !errors.Is(err, ErrTakenOver) {
			t.Fatalf("run: %v, want ErrTakenOver", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not find the held task taken over")
	}
	if err := r.Check(ctx, c); !errors.Is(err, ErrTakenOver) {
		t.Fatalf("check: %v, want ErrTakenOver", err)
	}
	if n := r.halts.Load(); n != 1 {
		t.Fatalf("halted %d times, want once", n)
	}
}

// A fence that cannot reach Redis fails closed: once the delivery's
// context ended (its lease: here a second), it halts the worker within
// FenceTimeout, and the handler posts nothing.
func TestFenceFailsClosedWithoutRedis(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = down.Close() })
	tr := &testRecovery{logs: &syncBuffer{}}
	r, err := NewRecovery(down, RecoveryConfig{After: MinRecoveryAfter, Queues: []string{"q"}, Halt: func() { tr.halts.Add(1) },
		Logger: slog.New(slog.NewTextHandler(tr.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx, Claim{Queue: "q", ID: "x"}); !errors.Is(err, ErrFenceUnknown) {
		t.Fatalf("check without Redis: %v, want ErrFenceUnknown", err)
	}
	if n := tr.halts.Load(); n != 1 {
		t.Fatalf("halted %d times, want once", n)
	}
}

// One missed heartbeat (the server's key lapses for a few seconds, then
// comes back) while the lease stands still is no death: neither for a task
// the server was seen listing nor for one it fetched since its last beat.
func TestRecoveryOneMissedHeartbeatIsNoDeath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	unlisted, listed := e.enqueue(text("r", "fetched since the last beat")), e.enqueue(text("r", "listed"))
	srv := fakeDeadHolder(t, e.rdb, e.queue, unlisted)
	e.rdb.ZRem(ctx, asynqServers, serverKey(fakeDeadHolder(t, e.rdb, e.queue, listed))) // active, held by srv alone
	workers := asynqWorkersPrefix + srv + "}"
	beat := func() { // the server's key and its task list, as a heartbeat writes them
		e.rdb.Set(ctx, serverKey(srv), "x", time.Minute)
		e.rdb.HSet(ctx, workers, listed, "x")
		e.rdb.Expire(ctx, workers, time.Minute)
		e.rdb.ZAdd(ctx, asynqWorkers, redis.Z{Score: float64(time.Now().Add(time.Minute).Unix()), Member: workers})
	}
	beat()
	t.Cleanup(func() {
		e.rdb.Del(context.Background(), serverKey(srv), workers)
		e.rdb.ZRem(context.Background(), asynqWorkers, workers)
	})
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	up := max(MinRecoveryAfter, leaseStill) + time.Second // the leases have stood still for the window, and the detector is up
	waitFor(t, 2*up, "the window", func() bool { return time.Since(start) > up })
	e.rdb.Del(ctx, serverKey(srv), workers) // one heartbeat missed: both lapse
	lapse := time.Now()
	e.staysActive(t, lapse.Add(goneFor-time.Second), "a live worker's task was taken over after one missed heartbeat", unlisted, listed)
	beat()
	if n := r.recovered.Load(); n != 0 {
		t.Fatalf("recovered %d of a live worker's tasks", n)
	}
}

// A task fetched by a live server since its last heartbeat, whose next
// heartbeat is late (its key still there, the task not listed yet, the
// lease still), is not taken for the task of another server that died at
// the same moment (its expiry fits the lease as well). Before the fix only
// lapsed and dead servers were weighed: the other's death took the live
// worker's task over (and parallel tests' fake dead servers made
// TestRecoveryOneMissedHeartbeatIsNoDeath flaky).
func TestRecoveryLateHeartbeatNotTakenForAnotherDeath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	late := e.enqueue(text("r", "fetched by a server whose heartbeat is late"))
	srv := fakeDeadHolder(t, e.rdb, e.queue, late)
	e.rdb.Set(ctx, serverKey(srv), "x", time.Minute) // alive
	other := serverKey("deadhost:4243:" + e.queue + "-other")
	e.rdb.ZAdd(ctx, asynqServers, redis.Z{Score: float64(time.Now().Add(asynqServerStateTTL).Unix()), Member: other}) // died just now
	t.Cleanup(func() {
		e.rdb.Del(context.Background(), serverKey(srv))
		e.rdb.ZRem(context.Background(), asynqServers, other)
	})
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	e.staysActive(t, start.Add(max(MinRecoveryAfter, leaseStill)+goneFor+2*time.Second), "a live server's task was taken for another's death", late)
	if n := r.recovered.Load(); n != 0 {
		t.Fatalf("recovered %d", n)
	}
}

// A lease already expired by Redis's clock is asynq's recoverer's: the
// detector leaves it (the recoverer lists it, then moves it in a second
// step that would land on a new owner's entries).
func TestRecoveryLeavesExpiredLeasesToAsynq(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "expired"))
	fakeDeadHolderSince(t, e.rdb, e.queue, id, asynqLeaseDuration+time.Second)
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	up := MinRecoveryAfter + goneFor + 2*time.Second
	e.staysActive(t, start.Add(up), "a task with an expired lease was moved", id)
	if n := r.recovered.Load(); n != 0 {
		t.Fatalf("recovered %d", n)
	}
}

// A task is moved at most once for one lease: fetched again under a lease
// with the same score (whole seconds, a clock behind), it is not moved again.
func TestRecoveryMovesATaskOncePerLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "once"))
	dead := fakeDeadHolder(t, e.rdb, e.queue, id)
	r := newTestRecovery(t, e.rdb, e.queue)
	score := e.rdb.ZScore(ctx, leaseKey(e.queue), id).Val()
	ref, sg := taskRef{e.queue, id}, sighting{score: score, since: time.Now()}
	if !r.takeOver(ctx, ref, sg, "", []string{dead}, time.Now()) {
		t.Fatal("not moved")
	}
	e.rdb.LRem(ctx, pendingKey(e.queue), 0, id) // a new owner fetches it, its lease has the same score
	e.rdb.LPush(ctx, activeKey(e.queue), id)
	e.rdb.ZAdd(ctx, leaseKey(e.queue), redis.Z{Score: score, Member: id})
	e.rdb.HSet(ctx, taskKey(e.queue, id), "state", "active")
	if r.takeOver(ctx, ref, sg, "", []string{dead}, time.Now()) {
		t.Fatal("moved twice for the same lease")
	}
	if st := e.taskState(id); st != asynq.TaskStateActive {
		t.Fatalf("the new owner's task is %v", st)
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
	waitFor(t, takeoverWait, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	r.waitRecovered(t, 1)
	if !strings.Contains(r.logs.String(), dead) {
		t.Fatalf("log does not name %s:\n%s", dead, r.logs.String())
	}
}

// fakeSilentHolder records a delivery of a task (active, its lease set now)
// whose holder's liveness key is gone, while the asynq server that fetched
// it still looks alive (its key is there): only courier's own liveness can
// tell the holder died. It returns the holder's name.
func fakeSilentHolder(t *testing.T, rdb *redis.Client, queue, id string) string {
	t.Helper()
	ctx := context.Background()
	srv := fakeDeadHolder(t, rdb, queue, id)
	rdb.Set(ctx, serverKey(srv), "x", time.Minute) // asynq's liveness: alive for a minute more
	// and its expiry in asynq:servers as its key's, as a heartbeat writes
	// them: a stale one would make it a live server whose heartbeat is
	// late, which holds back parallel tests' takeovers whose lease it fits.
	rdb.ZAdd(ctx, asynqServers, redis.Z{Score: float64(time.Now().Add(time.Minute).Unix()), Member: serverKey(srv)})
	t.Cleanup(func() {
		rdb.Del(context.Background(), serverKey(srv))
		rdb.ZRem(context.Background(), asynqServers, serverKey(srv))
	})
	holder := "silenthost:4343:" + id
	rdb.HSet(ctx, taskKey(queue, id), fieldHolder, holder)
	return holder
}

// A task whose delivery's holder stopped refreshing its liveness is moved
// back once its lease stood still for a heartbeat and a margin, long before
// asynq's server key of that worker would lapse; the holder is named in the
// log, its record is removed, the epoch moves on.
func TestRecoveryTakesOverASilentHoldersTask(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "orphan"))
	holder := fakeSilentHolder(t, e.rdb, e.queue, id)
	r := newTestRecovery(t, e.rdb, e.queue)
	start := time.Now()
	r.run(t)
	waitFor(t, takeoverWait, "the task back in pending", func() bool { return e.taskState(id) == asynq.TaskStatePending })
	took := time.Since(start)
	r.waitRecovered(t, 1)
	if took < leaseStill {
		t.Fatalf("moved after %v, before its lease stood still for %v", took, leaseStill)
	}
	v, err := e.rdb.HMGet(ctx, taskKey(e.queue, id), fieldEpoch, fieldHolder).Result()
	if err != nil || v[0] != "1" || v[1] != nil {
		t.Fatalf("epoch and holder after the takeover: %v %v, want 1 and none", v, err)
	}
	for _, want := range []string{"task of a dead worker moved back to pending", "dead_worker=" + holder, "dead_pid=4343"} {
		if !strings.Contains(r.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, r.logs.String())
		}
	}
}

// A holder that keeps its liveness keeps its task, however long its lease
// stands still (a failed heartbeat); a task whose lease moves (its asynq
// server beats: fetched again a moment ago, its delivery not begun) is kept
// though the holder recorded earlier is silent.
func TestRecoveryLeavesTasksOfLiveHolders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	alive, moving, orphan := e.enqueue(text("r", "alive")), e.enqueue(text("r", "moving")), e.enqueue(text("r", "orphan"))
	live := fakeSilentHolder(t, e.rdb, e.queue, alive)
	fakeSilentHolder(t, e.rdb, e.queue, moving)
	fakeSilentHolder(t, e.rdb, e.queue, orphan)
	stop, beat := make(chan struct{}), make(chan struct{})
	go func() { // the live holder's liveness, and the moving task's heartbeat
		defer close(beat)
		for i := 1; ; i++ {
			e.rdb.Set(ctx, aliveKey(live), 1, 2*time.Second)
			e.rdb.ZAddXX(ctx, leaseKey(e.queue), redis.Z{Score: float64(time.Now().Add(asynqLeaseDuration).Unix() + int64(i)), Member: moving})
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-beat; e.rdb.Del(context.Background(), aliveKey(live)) })
	r := newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	waitFor(t, 20*time.Second, "the silent holder's task back in pending", func() bool { return e.taskState(orphan) == asynq.TaskStatePending })
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if a, m := e.taskState(alive), e.taskState(moving); a != asynq.TaskStateActive || m != asynq.TaskStateActive {
			t.Fatalf("a live worker's task was taken over: alive %v, moving %v", a, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := r.recovered.Load(); got != 1 {
		t.Fatalf("recovered %d, want 1", got)
	}
}

// A delivery records its worker as the task's holder while it runs, once
// the worker's liveness is written, and removes it when its run ends.
func TestDeliveryRecordsItsHolder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	waitFor(t, 5*time.Second, "the liveness key", func() bool { return r.Holder() != "" })
	if n, _ := e.rdb.Exists(ctx, aliveKey(r.Holder())).Result(); n != 1 {
		t.Fatal("no liveness key")
	}
	var during string
	var once sync.Once // the check before the post (the last one, after the run ended, finds none)
	e.start(func(c *WorkerConfig) {
		c.Fence = afterCheck{r, func(c Claim) {
			once.Do(func() { during, _ = e.rdb.HGet(ctx, taskKey(c.Queue, c.ID), fieldHolder).Result() })
		}}
	})
	id := e.enqueue(text("r", "held"))
	e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	if during != r.Holder() {
		t.Fatalf("holder during the delivery %q, want %q", during, r.Holder())
	}
	if n, _ := e.rdb.HExists(ctx, taskKey(e.queue, id), fieldHolder).Result(); n {
		t.Fatal("holder left after the run ended")
	}
}

// The same takeover with *Recovery as the fence, as cmd/worker runs it: the
// post goes out on a claim confirmed moments ago (no check of its own), and
// the record's script, which checks the epoch where it writes, refuses the
// write; the worker halts, and nothing of the stale delivery lands in the
// new owner's task.
func TestTakenOverDuringPostRecordRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	var once sync.Once
	e.start(func(c *WorkerConfig) {
		c.Fence = r
		c.Bots = map[string]Sender{"": takeOverDuring{Sender: e.client(token), then: func(id string) {
			once.Do(func() {
				e.rdb.HIncrBy(ctx, taskKey(e.queue, id), fieldEpoch, 1)
				e.rdb.HSet(ctx, taskKey(e.queue, id), fieldRuns, 7)
			})
		}}}
	})
	id := e.enqueue(text("r", "taken over mid-request"))
	waitFor(t, 10*time.Second, "the halt", func() bool { return r.halts.Load() > 0 })
	waitFor(t, 10*time.Second, "the interrupted delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "task_id="+id)
	})
	key := taskKey(e.queue, id)
	if runs, _ := e.rdb.HGet(ctx, key, fieldRuns).Result(); runs != "7" {
		t.Fatalf("the new owner's run marker is %q, want 7", runs)
	}
	if res, _ := e.rdb.HGet(ctx, key, fieldResult).Result(); res != "" {
		t.Fatalf("the stale delivery wrote its record %s into the new owner's task", res)
	}
	if n, acc := e.sim.Counts("r"); n != 1 || acc != 1 || r.halts.Load() != 1 {
		t.Fatalf("%d requests, %d accepted, %d halts; want 1 1 1", n, acc, r.halts.Load())
	}
}

// takeOverDuring runs then (with the task's id) while the post is under way.
type takeOverDuring struct {
	Sender
	then func(id string)
}

func (s takeOverDuring) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	id, _ := asynq.GetTaskID(ctx)
	s.then(id)
	return s.Sender.CreateMessage(ctx, m)
}

// A delivery by a worker that records no holder (its liveness not written
// yet) removes a holder an earlier run left behind (its end failed): the
// task then goes by the asynq liveness of the worker delivering it, not by
// the liveness of a worker that no longer runs it, whose silence would let
// a detector take a live worker's task over.
func TestDeliveryWithoutHolderClearsAStaleOne(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue) // not run: no liveness, no holder
	id := e.enqueue(text("r", "stale holder"))
	e.rdb.HSet(ctx, taskKey(e.queue, id), fieldHolder, "gonehost:99:stale") // left by an earlier run
	var during []any
	var once sync.Once
	e.start(func(c *WorkerConfig) {
		c.Fence = afterCheck{r, func(c Claim) {
			once.Do(func() { during, _ = e.rdb.HMGet(ctx, taskKey(c.Queue, c.ID), fieldHolder).Result() })
		}}
	})
	e.waitState(id, asynq.TaskStateCompleted, 10*time.Second)
	if len(during) != 1 || during[0] != nil {
		t.Fatalf("holder during a delivery that records none: %v, want none", during)
	}
}

// A worker frozen (SIGSTOP, a stalled VM) between asynq's fetch and the
// start of its delivery is taken over by asynq's liveness (its server's
// key gone, the task's lease still); the new owner fetches the task; the
// frozen worker resumes. Its start finds the takeover later than its own
// handler's entry: it begins nothing, posts nothing and halts, and the
// epoch (the new owner's) is left alone. Simulated by a 4 s freeze just
// before the start-of-delivery script (in the Holder it records), ending with the takeover's own
// writes (before the fix its start read the new epoch as its own claim:
// both posted).
func TestTakenOverBeforeBeginPostsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	waitFor(t, 5*time.Second, "the liveness key", func() bool { return r.Holder() != "" })
	id := e.enqueue(text("r", "taken over before begin"))
	key := taskKey(e.queue, id)
	frozen := &beforeHolder{Recovery: r.Recovery, do: func() {
		time.Sleep(4 * time.Second) // the freeze (the fault, not a synchronisation)
		takeOverWrites(t, e.rdb, key)
	}}
	e.start(func(c *WorkerConfig) { c.Fence = frozen })
	waitFor(t, 30*time.Second, "the halt or a post", func() bool { n, _ := e.sim.Counts("r"); return r.halts.Load() > 0 || n > 0 })
	if n, _ := e.sim.Counts("r"); n != 0 {
		t.Fatalf("the frozen worker posted %d", n)
	}
	v := e.rdb.HMGet(ctx, key, fieldEpoch, fieldRuns, fieldHolder).Val()
	if v[0] != "1" || v[1] != nil || v[2] != nil {
		t.Fatalf("epoch, runs, holder after the frozen worker resumed: %v; want 1 and none written", v)
	}
}

// beforeHolder is the Recovery, whose Holder, asked for by a delivery just
// before its start-of-delivery script, runs do the first time.
type beforeHolder struct {
	*Recovery
	do   func()
	once sync.Once
}

func (b *beforeHolder) Holder() string {
	b.once.Do(b.do)
	return b.Recovery.Holder()
}

// takeOverWrites makes, on the task's hash, the writes of a takeover
// (takeOverScript) that a delivery's start reads: the epoch moved on and
// the time of the move by Redis's clock.
func takeOverWrites(t *testing.T, rdb redis.UniversalClient, key string) {
	t.Helper()
	ctx := context.Background()
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Error(err)
		return
	}
	rdb.HSet(ctx, key, "courier_moved_at", now.UnixMilli())
	rdb.HIncrBy(ctx, key, fieldEpoch, 1)
}

// The new owner of a task taken over, which fetched it after the takeover,
// delivers it: a takeover just before a delivery's fetch is no reason to
// halt (no false positive for the legitimate owner).
func TestTakenOverJustBeforeFetchIsDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	r := newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	waitFor(t, 5*time.Second, "the liveness key", func() bool { return r.Holder() != "" })
	id := e.enqueue(text("r", "taken over just before its fetch"))
	takeOverWrites(t, e.rdb, taskKey(e.queue, id))
	e.start(func(c *WorkerConfig) { c.Fence = r })
	e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if n, acc := e.sim.Counts("r"); n != 1 || acc != 1 || r.halts.Load() != 0 {
		t.Fatalf("%d requests, %d accepted, %d halts; want 1 1 0", n, acc, r.halts.Load())
	}
}

// A live worker whose liveness writes fail (that command only) while a
// 12 s Webex call is under way is not taken over by another worker's
// detector: its asynq server keeps moving the task's lease. The message is
// posted once and the worker does not halt.
func TestLivenessWritesFailingOnALiveWorker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Delay: webextest.Duration(12 * time.Second), Count: 1})
	faults := e.faults()
	r, other := newTestRecovery(t, e.rdb, e.queue), newTestRecovery(t, e.rdb, e.queue)
	r.run(t)
	other.run(t)
	waitFor(t, 5*time.Second, "the liveness key", func() bool { return r.Holder() != "" })
	faults.Add(&redisfault.Rule{Match: redisfault.Match{Name: "set", Args: []string{aliveKey(r.Holder())}}, Count: -1})
	e.start(func(c *WorkerConfig) { c.Fence = r })
	id := e.enqueue(text("r", "slow, on a worker whose liveness lapses"))
	waitFor(t, 10*time.Second, "the liveness key to lapse", func() bool { return e.rdb.Exists(ctx, aliveKey(r.Holder())).Val() == 0 })
	e.waitState(id, asynq.TaskStateCompleted, 40*time.Second)
	if n, acc := e.sim.Counts("r"); n != 1 || acc != 1 || r.halts.Load() != 0 || other.recovered.Load() != 0 {
		t.Fatalf("%d requests, %d accepted, %d halts, %d taken over; want 1 1 0 0", n, acc, r.halts.Load(), other.recovered.Load())
	}
}

// After a failover (Redis is another server: a promoted replica, with its
// own long uptime), the detector watches again from scratch, as after a
// failed read: a worker cut off by the failover, whose liveness key lapses
// on the new primary, keeps its task until its lease has stood still there
// for the window again. Simulated by two private servers holding the same
// state, the client redialling to the second between two scans without an
// error (as go-redis's failover client does); before the fix the task was
// taken over as soon as the key lapsed, about a second after the switch.
func TestFailoverRestartsTheWatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := redistest.Start(t, false), redistest.Start(t, false)
	var addr atomic.Value
	addr.Store(a.Addr)
	rdb := redis.NewClient(&redis.Options{ConnMaxLifetime: 50 * time.Millisecond,
		Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr.Load().(string))
		}})
	t.Cleanup(func() { rdb.Close() })
	queue, id, holder := redistest.Name(t), "failover-task", "cutoff:1:worker"
	lease := float64(time.Now().Add(10 * time.Minute).Unix())
	for _, s := range []*redistest.Server{a, b} { // the replica holds what the primary held
		c := redis.NewClient(s.Options())
		c.RPush(ctx, activeKey(queue), id)
		c.ZAdd(ctx, leaseKey(queue), redis.Z{Score: lease, Member: id})
		c.HSet(ctx, taskKey(queue, id), "state", "active", fieldHolder, holder)
		c.Set(ctx, aliveKey(holder), 1, time.Minute)
		c.Close()
	}
	r := newTestRecovery(t, rdb, queue)
	r.run(t)
	// The holder is alive on the primary: its task stays, however still.
	deadline := time.Now().Add(leaseStill + 2*time.Second)
	for time.Now().Before(deadline) {
		if r.recovered.Load() != 0 {
			t.Fatal("a live holder's task taken over")
		}
		time.Sleep(100 * time.Millisecond)
	}
	addr.Store(b.Addr) // the failover; the holder, cut off, no longer refreshes its key there
	bc := redis.NewClient(b.Options())
	t.Cleanup(func() { bc.Close() })
	bc.PExpire(ctx, aliveKey(holder), 500*time.Millisecond)
	switched := time.Now()
	for time.Since(switched) < leaseStill-time.Second {
		if r.recovered.Load() != 0 {
			t.Fatalf("taken over %v after the failover, before its lease stood still there for %v", time.Since(switched).Round(time.Millisecond), leaseStill)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, "the takeover on the new primary", func() bool { return r.recovered.Load() == 1 })
	if n := bc.LLen(ctx, pendingKey(queue)).Val(); n != 1 {
		t.Fatalf("%d pending on the new primary, want 1", n)
	}
}

// staysActive fails the test if any of ids leaves the active state before
// until (no detector may move them meanwhile); it looks every 100 ms.
func (e *env) staysActive(t *testing.T, until time.Time, what string, ids ...string) {
	t.Helper()
	for time.Now().Before(until) {
		for _, id := range ids {
			if st := e.taskState(id); st != asynq.TaskStateActive {
				t.Fatalf("%s: %s is %v", what, id, st)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}
