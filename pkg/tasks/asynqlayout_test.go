package tasks

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// TestAsynqLayout pins what fast crash recovery reads and writes of asynq's
// Redis layout (asynqlayout.go) against a real asynq server holding a task.
// If it fails after an asynq upgrade, recovery.go must be re-read against
// asynq's internal/base/base.go, internal/rdb/rdb.go and heartbeat.go
// before anything else: it would otherwise move tasks it misunderstands.
func TestAsynqLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(8 * time.Second), Count: 1})
	e.start(nil)
	id := e.enqueue(text("slow", "held for 8s"))
	e.waitState(id, asynq.TaskStateActive, 10*time.Second)
	now := time.Now()
	layout := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("asynq's Redis layout changed (re-read recovery.go against asynq's source): "+format, args...)
	}

	if ids, err := e.rdb.LRange(ctx, activeKey(e.queue), 0, -1).Result(); err != nil || !slices.Contains(ids, id) {
		layout("active list %s = %v (%v), want it to hold %s", activeKey(e.queue), ids, err, id)
	}
	score, err := e.rdb.ZScore(ctx, leaseKey(e.queue), id).Result()
	if d := time.Duration(score-float64(now.Unix())) * time.Second; err != nil || d < asynqLeaseDuration-3*time.Second || d > asynqLeaseDuration+time.Second {
		layout("lease zset %s scores %s at now+%v (%v), want now+%v in Unix seconds", leaseKey(e.queue), id, d, err, asynqLeaseDuration)
	}
	if st, err := e.rdb.HGet(ctx, taskKey(e.queue, id), "state").Result(); err != nil || st != "active" {
		layout("task hash %s state = %q (%v), want active", taskKey(e.queue, id), st, err)
	}

	// The server holding it: its key, in asynq:servers, and its worker list,
	// in asynq:workers, which names the task from the next heartbeat on.
	var holder string
	waitFor(t, asynqHeartbeat+2*time.Second, "a worker list naming the task", func() bool {
		members, _ := e.rdb.ZRange(ctx, asynqWorkers, 0, -1).Result()
		for _, m := range members {
			if srv := serverOf(m); srv != "" && e.rdb.HExists(ctx, m, id).Val() {
				holder = srv
				return true
			}
		}
		return false
	})
	sid, ok := parseServerID(holder)
	if host, _ := os.Hostname(); !ok || sid.Host != host || sid.PID != os.Getpid() {
		layout("worker list key names %q, want host:pid:sid of this process", holder)
	}
	if z, err := e.rdb.ZScore(ctx, asynqServers, serverKey(holder)).Result(); err != nil || z < float64(time.Now().Unix()) {
		layout("asynq:servers lacks %s or its expiry is past (%v, %v)", serverKey(holder), z, err)
	}
	if ttl := e.rdb.TTL(ctx, serverKey(holder)).Val(); ttl <= 0 || ttl > asynqServerStateTTL {
		layout("server key %s has TTL %v, want at most %v", serverKey(holder), ttl, asynqServerStateTTL)
	}
	if ttl := e.rdb.TTL(ctx, "asynq:workers:{"+holder+"}").Val(); ttl <= 0 || ttl > asynqServerStateTTL {
		layout("worker list has TTL %v, want at most %v", ttl, asynqServerStateTTL)
	}
	servers, err := e.inspector.Servers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(servers, func(s *asynq.ServerInfo) bool { return s.ID == sid.ID && s.Host == sid.Host && s.PID == sid.PID }) {
		layout("the Inspector's servers do not include %s (recovery finds its own server there)", holder)
	}

	// A heartbeat moves the lease while the task runs.
	waitFor(t, asynqHeartbeat+2*time.Second, "the heartbeat to move the lease", func() bool {
		return e.rdb.ZScore(ctx, leaseKey(e.queue), id).Val() != score
	})
	e.waitState(id, asynq.TaskStateCompleted, 15*time.Second)
}

// TestAsynqRequeueLayout pins what the takeover writes: a task RPUSHed to
// pending with state "pending" is asynq's next task, and asynq delivers it.
func TestAsynqRequeueLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	first := e.enqueue(text("r", "first"))
	second := e.enqueue(text("r", "second"))
	dead := fakeDeadHolder(t, e.rdb, e.queue, second)
	r := newTestRecovery(t, e.rdb, e.queue)
	v, err := r.look(ctx, map[string]float64{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.dead[dead]; !ok {
		t.Fatalf("dead server %s not listed: %+v", dead, v.dead)
	}
	if !r.takeOver(ctx, taskRef{e.queue, second}, sighting{score: v.leases[taskRef{e.queue, second}], since: time.Now()}, "", []string{dead}, time.Now()) {
		t.Fatal("not moved")
	}
	info, err := e.inspector.GetTaskInfo(e.queue, second)
	if err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("asynq sees %+v (%v), want pending", info, err)
	}
	e.start(func(c *WorkerConfig) { c.Concurrency = 1 })
	e.waitState(first, asynq.TaskStateCompleted, 10*time.Second)
	e.waitState(second, asynq.TaskStateCompleted, 10*time.Second)
	msgs := e.sim.Messages("r")
	if len(msgs) != 2 || msgs[0].Text != "second" {
		t.Fatalf("delivered %+v, want the moved task first (head of the queue)", msgs)
	}
	if info, _ := e.inspector.GetTaskInfo(e.queue, second); info.Retried != 0 {
		t.Fatalf("a takeover used a redelivery: retried = %d", info.Retried)
	}
}

// fakeDeadHolder makes a pending task look held by a server that died just
// now, as asynq's dequeue script and heartbeat leave it (the layout the test
// above pins), and counts the run as the handler's begin does. It returns
// the dead server's host:pid:sid.
func fakeDeadHolder(t *testing.T, rdb redis.UniversalClient, queue, id string) string {
	return fakeDeadHolderSince(t, rdb, queue, id, 0)
}

// fakeDeadHolderSince is fakeDeadHolder for a server whose last heartbeat,
// which set the task's lease, was ago.
func fakeDeadHolderSince(t *testing.T, rdb redis.UniversalClient, queue, id string, ago time.Duration) string {
	t.Helper()
	ctx := context.Background()
	srv := "deadhost:4242:" + queue + "-" + id
	now := time.Now().Add(-ago)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error { // not a transaction: a Cluster keeps asynq:servers apart
		p.LRem(ctx, pendingKey(queue), 0, id)
		p.LPush(ctx, activeKey(queue), id)
		p.ZAdd(ctx, leaseKey(queue), redis.Z{Score: float64(now.Add(asynqLeaseDuration).Unix()), Member: id})
		p.HSet(ctx, taskKey(queue, id), "state", "active", fieldRuns, 1)
		p.HDel(ctx, taskKey(queue, id), "pending_since")
		p.ZAdd(ctx, asynqServers, redis.Z{Score: float64(now.Add(asynqServerStateTTL).Unix()), Member: serverKey(srv)}) // its key is gone
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rdb.ZRem(context.Background(), asynqServers, serverKey(srv))
	})
	return srv
}
