package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// WaitReplicas: an enqueue no replica acknowledges fails with
// ErrNotReplicated (the task is on the primary all the same); with a
// replica in sync it succeeds.
func TestWaitReplicas(t *testing.T) {
	t.Parallel()
	primary := redistest.Start(t, false)
	rdb := redis.NewClient(primary.Options())
	defer rdb.Close()
	queue := redistest.Name(t)
	p, err := NewProducer(rdb, ProducerConfig{Queue: queue, WaitReplicas: 1, ReplicaTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Enqueue(context.Background(), text("room-1", "no replica"), Key("k1"))
	var re *ReplicationError
	if !errors.Is(err, ErrNotReplicated) || !errors.As(err, &re) || re.Acked != 0 || re.TaskID != "k1" || re.Missing {
		t.Fatalf("no replica: %v (%+v)", err, re)
	}
	redistest.StartReplica(t, primary)
	if p, err = NewProducer(rdb, ProducerConfig{Queue: queue, WaitReplicas: 1, ReplicaTimeout: 2 * time.Second}); err != nil { // a loaded machine
		t.Fatal(err)
	}
	for _, opt := range [][]Option{{Key("k2")}, nil, {Key("k3"), OrderingKey("o")}, {Key("k4"), OrderingKey("o")}} {
		if _, err := p.Enqueue(context.Background(), text("room-1", "replicated"), opt...); err != nil {
			t.Errorf("with a replica %v: %v", opt, err)
		}
	}
	ring := redis.NewRing(&redis.RingOptions{})
	defer ring.Close()
	if _, err := NewProducer(ring, ProducerConfig{WaitReplicas: 1}); err == nil {
		t.Error("WaitReplicas over a Ring: no error")
	}
}

// failoverRun is what one Sentinel failover measured.
type failoverRun struct {
	acked, failed   int           // enqueues acknowledged, and that returned an error
	lost            []string      // acknowledged, never delivered, and not in the new primary
	stuck           int           // acknowledged, not yet delivered, in the new primary (asynq's recoverer's)
	duplicates      int           // keys delivered more than once
	errorWindow     time.Duration // from the kill to the last enqueue error
	recovered       time.Duration // from the kill to the first delivery of a message acknowledged after it
	ackedPerSecond  float64       // before the kill
	deliveredBefore int
	errs            map[string]int // enqueue errors by kind
	takenOver       int            // tasks fast crash recovery moved (no worker died)
	halts           int            // workers whose fence halted them
	haltedOnPresent []string       // tasks a worker halted for, though the new primary holds them
}

// A Sentinel failover under load: a primary, two replicas, three Sentinels,
// three workers and four producers of keyed messages; the primary is
// killed (SIGKILL) and Sentinel promotes a replica. It reports what the
// failover cost, and shows that with WaitReplicas no acknowledged enqueue
// is lost.
//
// Replication on loopback keeps up within a millisecond, so a kill rarely
// catches an enqueue the replicas lack. The CI form makes the replicas lag:
// they are paused (SIGSTOP) for a second before the kill and resumed after
// it, as a stalled replica host or a congested link would; without
// WaitReplicas the enqueues acknowledged in that second are lost.
// COURIER_FAILOVER_LONG=1 adds runs without the lag, and waits for the
// tasks left active in the new primary to be recovered by asynq (up to ~90
// s) and delivered.
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute: five redis-server processes, a failover")
	}
	testFailover(t, startSentinelSetup, false)
}

// A Cluster failover under the same load: three primaries with two
// replicas each; the primary of the queue's shard is killed (SIGKILL) and
// the cluster promotes one of its replicas (cluster-node-timeout 1 s). The
// same accounting, the same claims: with WaitReplicas no acknowledged
// enqueue is lost, and delivery resumes on the new primary. A third run
// hangs the primary (SIGSTOP, as a partition would) instead: its commands
// fail by timing out, not at once.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("about 50 s: nine redis-server processes, three failovers")
	}
	testFailover(t, startClusterSetup, true)
}

func testFailover(t *testing.T, startSetup func(*testing.T) failoverSetup, hung bool) {
	long := os.Getenv("COURIER_FAILOVER_LONG") != ""
	type run struct {
		lag  time.Duration
		wait int
		hang bool // the primary hangs (SIGSTOP) instead of dying
	}
	runs := []run{{time.Second, 0, false}, {time.Second, 1, false}}
	if long {
		runs = append(runs, run{0, 0, false}, run{0, 1, false})
	}
	if hung {
		runs = append(runs, run{time.Second, 1, true})
	}
	for _, tc := range runs {
		lag, wait := tc.lag, tc.wait
		name := fmt.Sprintf("lag=%v/WaitReplicas=%d", lag, wait)
		if tc.hang {
			name = "hung/" + name
		}
		t.Run(name, func(t *testing.T) {
			r := runFailover(t, startSetup, wait, lag, long, tc.hang)
			t.Logf("replicas lagging %v, WaitReplicas=%d, primary hung %v: acknowledged %d (%.0f/s before the kill), failed %d; lost %d; left active for asynq's recoverer %d; "+
				"delivered twice %d; producer errors until %v after the kill; first delivery of a new message %v after the kill; tasks moved by fast crash recovery %d",
				lag, wait, tc.hang, r.acked, r.ackedPerSecond, r.failed, len(r.lost), r.stuck, r.duplicates, r.errorWindow.Round(time.Millisecond), r.recovered.Round(time.Millisecond), r.takenOver)
			t.Logf("enqueue errors: %v", r.errs)
			if wait > 0 && len(r.lost) > 0 {
				t.Errorf("WaitReplicas=%d lost %d acknowledged enqueues: %v", wait, len(r.lost), r.lost)
			}
			if wait == 0 && lag > 0 && len(r.lost) == 0 {
				t.Log("no enqueue lost without WaitReplicas, though the replicas lagged")
			}
			if r.recovered <= 0 {
				t.Error("delivery did not recover after the failover")
			}
			// A detector that found its task gone stops writing its
			// worker's liveness (Run returns ErrTakenOver), and that
			// worker's tasks are then taken over, as after cmd/worker's
			// exit 3; this harness does not end the worker, so moves after
			// a halt are reported, not failed (seen in CI: 2 halts, 2
			// moves, 3 messages delivered twice).
			switch {
			case r.takenOver > 0 && r.halts == 0:
				t.Errorf("the failover was taken for a worker's death: %d tasks moved", r.takenOver)
			case r.takenOver > 0:
				t.Logf("%d tasks of the %d halted workers moved by fast crash recovery", r.takenOver, r.halts)
			}
			// A failover may lose a task a worker is delivering (enqueued
			// while the replicas lagged: acknowledged without WaitReplicas,
			// refused with it, fetched either way): its hash is gone from
			// the new primary, which the fence cannot tell from a task taken
			// over and completed elsewhere, so that worker halts (cmd/worker
			// exits 3 and is restarted) without posting it. A halt for a
			// task the new primary holds would be a failover taken for a
			// death.
			if len(r.haltedOnPresent) > 0 {
				t.Errorf("workers halted for tasks the new primary holds: %v", r.haltedOnPresent)
			} else if r.halts > 0 {
				t.Logf("%d workers halted: a task each was delivering was lost with the failover", r.halts)
			}
			// A failover takes about 2.5 s here; the first delivery follows
			// at once when the primary died, 10-15 s later when it hangs
			// (its commands fail only by timing out, 5 s each, after go-redis's
			// retries). A client that goes on sending to the old primary
			// until its periodic reload of the slot map (go-redis: 60 s)
			// took 58 s before redisurl.FollowFailovers.
			if within := map[bool]time.Duration{false: 20 * time.Second, true: 40 * time.Second}[tc.hang]; r.recovered > within {
				t.Errorf("first delivery of a new message %v after the kill, want within %v", r.recovered.Round(time.Millisecond), within)
			}
			if long && r.stuck > 0 {
				t.Errorf("%d acknowledged tasks were never delivered", r.stuck)
			}
		})
	}
}

// failoverSetup is a Redis set-up whose primary can fail over: its URL,
// and the primary that holds a queue's keys now, with its replicas.
type failoverSetup struct {
	url   string
	shard func(t *testing.T, queue string) (primary *redistest.Server, replicas []*redistest.Server)
}

// startSentinelSetup starts a primary with two replicas under three
// Sentinels (the primary judged down after 1 s). Two replicas: after the
// promotion of one, the other follows the new primary, so WaitReplicas=1
// can still be met.
func startSentinelSetup(t *testing.T) failoverSetup {
	s := redistest.StartSentinel(t, 2, time.Second)
	return failoverSetup{url: s.URL(), shard: func(*testing.T, string) (*redistest.Server, []*redistest.Server) {
		return s.Primary, s.Replicas
	}}
}

// startClusterSetup starts a Cluster of three primaries with two replicas
// each (a node judged failed after 1 s); a queue's keys share one slot,
// so one shard.
func startClusterSetup(t *testing.T) failoverSetup {
	c := redistest.StartClusterReplicas(t, 2, time.Second)
	return failoverSetup{url: c.URL(), shard: func(t *testing.T, queue string) (*redistest.Server, []*redistest.Server) {
		primary, replicas, err := c.Shard(context.Background(), "{"+queue+"}")
		if err != nil {
			t.Fatal(err)
		}
		if len(replicas) != 2 {
			t.Fatalf("the queue's shard has %d replicas, want 2", len(replicas))
		}
		return primary, replicas
	}}
}

func runFailover(t *testing.T, startSetup func(*testing.T) failoverSetup, waitReplicas int, lag time.Duration, long, hang bool) failoverRun {
	setup := startSetup(t)
	opt, err := redisurl.Parse(setup.url, redisurl.ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{token: "bot"}})
	queue, room := redistest.Name(t), "room-failover"
	primary, replicas := setup.shard(t, queue)
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	client := func() redis.UniversalClient {
		c := opt.NewClient()
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	var detectors []*testRecovery
	for range 3 {
		wc := client()
		r := newTestRecovery(t, wc, queue) // fast crash recovery, its shortest window
		r.run(t)
		detectors = append(detectors, r)
		w, err := NewWorker(wc, WorkerConfig{Fence: r,
			Bots: map[string]Sender{"": sim.Client(t, token)}, Queues: map[string]int{queue: 1}, Concurrency: 4,
			Policy: fastPolicy, Budget: 500 * time.Millisecond, Schedule: fastSchedule, ShutdownTimeout: 5 * time.Second,
			TaskCheckInterval: 10 * time.Millisecond, DelayedTaskCheckInterval: 100 * time.Millisecond, UnauthorizedDelay: time.Second,
			Gate:   GateConfig{Namespace: "courier:{" + queue + "}"},
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Shutdown)
	}
	prdb := client()
	p, err := NewProducer(prdb, ProducerConfig{Queue: queue, Source: t.Name(), WaitReplicas: waitReplicas})
	if err != nil {
		t.Fatal(err)
	}

	// Deliveries, by key, with when each was first seen.
	var mu sync.Mutex
	seen := map[string]time.Time{}
	count := map[string]int{}
	look := func() {
		now := time.Now()
		c := map[string]int{}
		for _, m := range sim.Messages(room) {
			c[m.Text]++
		}
		mu.Lock()
		defer mu.Unlock()
		for k, n := range c {
			if _, ok := seen[k]; !ok {
				seen[k] = now
			}
			count[k] = n
		}
	}

	// The load: four producers of keyed messages, paced.
	type ack struct {
		at time.Time
		ok bool
	}
	var (
		n      atomic.Int64
		amu    sync.Mutex
		acks   = map[string]ack{}
		kinds  = map[string]int{}
		errAt  time.Time
		okAt   time.Time
		stop   = make(chan struct{})
		loadWG sync.WaitGroup
	)
	start := time.Now()
	for range 4 {
		loadWG.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond): // pacing the load, not synchronisation
				}
				key := fmt.Sprintf("fo-%06d", n.Add(1))
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				_, err := p.Enqueue(ctx, text(room, key), Key(key))
				cancel()
				now := time.Now()
				amu.Lock()
				acks[key] = ack{now, err == nil}
				if err != nil {
					errAt = now
					kinds[errKind(err, now.Sub(start))]++
				} else {
					okAt = now
				}
				amu.Unlock()
			}
		})
	}
	stopLoad := sync.OnceFunc(func() { close(stop); loadWG.Wait() })
	defer stopLoad()

	// Warm up, then kill the primary.
	waitFor(t, 60*time.Second, "200 deliveries before the kill", func() bool {
		look()
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 200
	})
	r := failoverRun{}
	amu.Lock()
	for _, a := range acks {
		if a.ok {
			r.acked++
		}
	}
	r.ackedPerSecond = float64(r.acked) / time.Since(start).Seconds()
	amu.Unlock()
	mu.Lock()
	r.deliveredBefore = len(seen)
	mu.Unlock()
	if lag > 0 {
		for _, rs := range replicas {
			if err := rs.Pause(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(lag) // the replicas lag this long: the fault, not synchronisation
	}
	killed := time.Now()
	if hang {
		if err := primary.Pause(); err != nil {
			t.Fatal(err)
		}
	} else {
		primary.Kill()
	}
	for _, rs := range replicas {
		if err := rs.Resume(); err != nil {
			t.Fatal(err)
		}
	}

	// Load goes on until enqueues have succeeded again for 2 s.
	waitFor(t, 60*time.Second, "enqueues to succeed again for 2s after the failover", func() bool {
		look()
		amu.Lock()
		defer amu.Unlock()
		return time.Since(killed) > 3*time.Second && !errAt.Before(killed) && okAt.Sub(errAt) > 2*time.Second
	})
	stopLoad()
	amu.Lock()
	defer amu.Unlock()
	if !errAt.Before(killed) {
		r.errorWindow = errAt.Sub(killed)
	}

	// Settle: every acknowledged message delivered, or nothing left for
	// the workers but tasks asynq's recoverer must move (and, in the long
	// form, until those are delivered too).
	insp := asynq.NewInspectorFromRedisClient(prdb)
	undelivered := func() []string {
		look()
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for k, a := range acks {
			if _, ok := seen[k]; a.ok && !ok {
				out = append(out, k)
			}
		}
		sort.Strings(out)
		return out
	}
	settle := 60 * time.Second
	if long {
		settle = 4 * time.Minute
	}
	var last int
	var stable time.Time
	waitFor(t, settle, "the queue to settle after the failover", func() bool {
		u := undelivered()
		if len(u) == 0 {
			return true
		}
		info, err := insp.GetQueueInfo(queue)
		if err != nil || info.Pending+info.Retry+info.Scheduled > 0 || len(u) != last {
			last, stable = len(u), time.Now()
			return false
		}
		if long {
			return time.Since(stable) > 100*time.Second // asynq's recoverer: lease 30 s, every minute
		}
		return time.Since(stable) > 3*time.Second
	})
	ctx := context.Background()
	for _, k := range undelivered() {
		if prdb.Exists(ctx, taskKey(queue, k)).Val() == 1 {
			r.stuck++
		} else {
			r.lost = append(r.lost, k)
		}
	}
	r.acked, r.failed, r.errs = 0, 0, kinds
	for _, a := range acks {
		if a.ok {
			r.acked++
		} else {
			r.failed++
		}
	}
	for _, d := range detectors {
		r.takenOver += int(d.recovered.Load())
		r.halts += int(d.halts.Load())
		for _, line := range strings.Split(d.logs.String(), "\n") {
			if m := haltedTask.FindStringSubmatch(line); m != nil && prdb.Exists(ctx, taskKey(queue, m[1])).Val() == 1 {
				r.haltedOnPresent = append(r.haltedOnPresent, m[1])
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for k, c := range count {
		if c > 1 {
			r.duplicates++
		}
		if a, ok := acks[k]; ok && a.ok && a.at.After(killed) {
			if d := seen[k].Sub(killed); r.recovered == 0 || d < r.recovered {
				r.recovered = d
			}
		}
	}
	return r
}

// haltedTask reads the task a fence halted its worker for from the log.
var haltedTask = regexp.MustCompile(`took over its task.* task_id=(\S+)`)

// errKind names an enqueue error for the report, with the second of the
// run it came in.
func errKind(err error, at time.Duration) string {
	var re *ReplicationError
	if errors.As(err, &re) {
		return fmt.Sprintf("%ds: not replicated (acked %d, missing %v, err %v)", int(at.Seconds()), re.Acked, re.Missing, re.Err)
	}
	msg := err.Error()
	if len(msg) > 60 {
		msg = msg[:60]
	}
	return fmt.Sprintf("%ds: %s", int(at.Seconds()), msg)
}

// What WaitReplicas costs: keyed enqueues from 16 goroutines to a primary
// with one replica in sync, without and with the wait.
//
//	go test -run '^$' -bench EnqueueWaitReplicas -benchtime 3000x ./pkg/tasks
func BenchmarkEnqueueWaitReplicas(b *testing.B) {
	primary := redistest.Start(b, false)
	redistest.StartReplica(b, primary)
	rdb := redis.NewClient(&redis.Options{Addr: primary.Addr, PoolSize: 32})
	defer rdb.Close()
	for _, wait := range []int{0, 1} {
		b.Run(fmt.Sprintf("WaitReplicas=%d", wait), func(b *testing.B) {
			queue := redistest.Name(b)
			p, err := NewProducer(rdb, ProducerConfig{Queue: queue, WaitReplicas: wait})
			if err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			b.SetParallelism(16 / max(1, runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := fmt.Sprintf("b-%d", n.Add(1))
					if _, err := p.Enqueue(context.Background(), text("room-1", key), Key(key)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enqueues/s")
		})
	}
}

// A retry of an enqueue that failed with ErrNotReplicated, with the same
// key, is not "kept" (a duplicate) until the replicas have the task: it
// fails the same way while no replica acknowledges it, and reads as a
// duplicate once one has it.
func TestWaitReplicasDuplicateIsNotKeptUntilReplicated(t *testing.T) {
	t.Parallel()
	primary := redistest.Start(t, false)
	rdb := redis.NewClient(primary.Options())
	defer rdb.Close()
	queue := redistest.Name(t)
	p, err := NewProducer(rdb, ProducerConfig{Queue: queue, WaitReplicas: 1, ReplicaTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keyed := [][]Option{{Key("k1")}, {Key("k2"), OrderingKey("o")}, {Key("k3"), OrderingKey("o")}} // the second ordered one waits
	for i, opts := range keyed {
		for try := range 2 {
			_, err := p.Enqueue(ctx, text("room-1", "no replica"), opts...)
			if !errors.Is(err, ErrNotReplicated) || errors.Is(err, ErrDuplicate) {
				t.Errorf("k%d, try %d, no replica: %v, want ErrNotReplicated", i+1, try+1, err)
			}
		}
	}
	redistest.StartReplica(t, primary)
	if p, err = NewProducer(rdb, ProducerConfig{Queue: queue, WaitReplicas: 1, ReplicaTimeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for i, opts := range keyed {
		if _, err := p.Enqueue(ctx, text("room-1", "no replica"), opts...); !errors.Is(err, ErrDuplicate) {
			t.Errorf("k%d, with a replica: %v, want ErrDuplicate", i+1, err)
		}
	}
}

// WAIT counts whole milliseconds and 0 waits for ever: a ReplicaTimeout
// below 1ms is refused, naming the field.
func TestReplicaTimeoutBelowAMillisecond(t *testing.T) {
	t.Parallel()
	_, err := NewProducer(redistest.Client(t), ProducerConfig{WaitReplicas: 1, ReplicaTimeout: 500 * time.Microsecond})
	if err == nil || !strings.Contains(err.Error(), "ReplicaTimeout is 500µs: must be at least 1ms") {
		t.Errorf("ReplicaTimeout 500µs: %v", err)
	}
}

// A ReplicaTimeout the client's read timeout would cut short is refused,
// naming both.
func TestReplicaTimeoutBeyondReadTimeout(t *testing.T) {
	t.Parallel()
	opt := redistest.Options(t)
	opt.ReadTimeout = 500 * time.Millisecond
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	_, err := NewProducer(rdb, ProducerConfig{WaitReplicas: 1})
	if err == nil || !strings.Contains(err.Error(), "ReplicaTimeout is 1s: must be below the client's read timeout (500ms)") {
		t.Errorf("ReplicaTimeout 1s, read timeout 500ms: %v", err)
	}
	if _, err := NewProducer(rdb, ProducerConfig{WaitReplicas: 1, ReplicaTimeout: 400 * time.Millisecond}); err != nil {
		t.Errorf("ReplicaTimeout 400ms, read timeout 500ms: %v", err)
	}
}
