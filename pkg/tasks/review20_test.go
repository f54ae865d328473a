package tasks

import (
	"context"
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

// afterScript runs then once, after the first run of the courier script
// named script (see courierScripts) on a client: Redis answered, the caller
// has not yet taken the answer in.
type afterScript struct {
	script string
	once   sync.Once
	then   func(ctx context.Context)
}

func (h *afterScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *afterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err == nil && strings.HasSuffix(cmdName(cmd), "("+h.script+")") {
			h.once.Do(func() { h.then(ctx) })
		}
		return err
	}
}
func (h *afterScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if cmd.Err() == nil && strings.HasSuffix(cmdName(cmd), "("+h.script+")") {
				h.once.Do(func() { h.then(ctx) })
			}
		}
		return err
	}
}

// A worker stopped (SIGSTOP, a stalled VM) after Redis ran its
// start-of-delivery script but before it took the answer in is taken over
// meanwhile; it resumes with its liveness written again at once. The claim
// Redis confirmed is as old as the pause, not fresh: it is checked before
// the post, which never goes out.
func TestPausedAfterBeginIsNotFresh(t *testing.T) {
	t.Parallel()
	pausedAfter(t, "begin", text("r", "paused after begin"), 0)
}

// The same pause after the first part's record write: the second part is
// not posted.
func TestPausedAfterRecordIsNotFresh(t *testing.T) {
	t.Parallel()
	pausedAfter(t, "record", Message{Message: webex.Message{RoomID: "r", Markdown: "two parts"}, Uploads: []webex.File{
		{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.png", ContentType: "image/png", Data: []byte("B")},
	}}, 1)
}

// pausedAfter delivers m with the worker paused, and its task taken over,
// right after Redis ran the courier script named script; posts is how many
// posts went out before it.
func pausedAfter(t *testing.T, script string, m Message, posts int) {
	e := newEnv(t, webextest.Options{})
	e.workerRdb = redis.NewClient(e.rdb.Options())
	t.Cleanup(func() { _ = e.workerRdb.Close() })
	r := newTestRecovery(t, e.workerRdb, e.queue)
	// Not run: its scan of held claims, stopped with the worker, could
	// catch the takeover first on resume; its liveness is written by hand.
	r.beat(context.Background())
	e.workerRdb.AddHook(&afterScript{script: script, then: func(ctx context.Context) {
		id, _ := asynq.GetTaskID(ctx)
		e.rdb.HIncrBy(ctx, taskKey(e.queue, id), fieldEpoch, 1) // taken over while stopped
		time.Sleep(2 * fenceFresh)                              // the pause itself
		r.beat(ctx)                                             // on resume, the liveness is written first
	}})
	e.start(func(c *WorkerConfig) { c.Fence = r })
	id := e.enqueue(m)
	waitFor(t, 20*time.Second, "the interrupted delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "task_id="+id)
	})
	if n, _ := e.sim.Counts("r"); n != posts {
		t.Fatalf("%d posts, want %d: none after the takeover", n, posts)
	}
	if r.halts.Load() == 0 {
		t.Fatal("the worker did not halt")
	}
}

// slowGate holds each of the gate's scripts for d before sending it (a
// slow or loaded Redis).
type slowGate struct{ d time.Duration }

func (s slowGate) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s slowGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.HasSuffix(cmdName(cmd), "(gate)") {
			time.Sleep(s.d)
		}
		return next(ctx, cmd)
	}
}
func (s slowGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A stop (the wait's context ends) while deliveries wait for the gate's
// answer from Redis, one asking and the others waiting for it, during a
// cool-down: none of them is let through; each wait ends with the stop.
func TestGateWaitEndsWithTheStop(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	slow := redis.NewClient(rdb.Options())
	t.Cleanup(func() { _ = slow.Close() })
	slow.AddHook(slowGate{d: 300 * time.Millisecond})
	g, _ := watchedGate(t, slow, GateConfig{Timeout: 5 * time.Second, MaxWait: 10 * time.Second})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	g.result(context.Background(), "bot", &webex.APIError{StatusCode: 429, RetryAfter: 5 * time.Second}, false)
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	for range 3 {
		go func() { _, err := g.wait(ctx, "bot"); errs <- err }()
	}
	time.Sleep(100 * time.Millisecond) // not synchronisation: any moment during the first answer will do
	cancel()
	for range 3 {
		if err := <-errs; err == nil {
			t.Fatal("a wait cut short by the stop let its send through during a cool-down")
		}
	}
}

// Redis restarts (its scripts gone, its data kept) between Webex's answer
// and the record, which goes as a pipeline (the record script by its SHA and
// the end of the breaker's run): the pipeline loads the script and sends
// again; the message is posted once, recorded, and not redelivered.
func TestRecordPipelineAfterRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, true)
	rdb := redis.NewClient(srv.Options())
	t.Cleanup(func() { _ = rdb.Close() })
	e := newEnvOn(t, rdb, webextest.Options{})
	e.workerRdb = redis.NewClient(srv.Options())
	t.Cleanup(func() { _ = e.workerRdb.Close() })
	faults := &redisfault.Hook{}
	e.workerRdb.AddHook(faults)
	e.start(func(c *WorkerConfig) { c.Gate.StateCache = -1 })                              // no view: the record ends the run, in a pipeline
	e.waitState(e.enqueue(text("r", "warm-up")), asynq.TaskStateCompleted, 20*time.Second) // the scripts loaded
	restarted := faults.Add(&redisfault.Rule{Match: redisfault.Match{Name: "evalsha", Args: []string{markScript.Hash()}}, Do: func() {
		srv.Kill()
		if err := srv.Restart(); err != nil {
			t.Error(err)
		}
	}})
	id := e.enqueue(text("r", "restart before the record"))
	info := e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	if restarted.Seen() == 0 {
		t.Fatal("the record was never sent")
	}
	if n, acc := e.sim.Counts("r"); n != 2 || acc != 2 {
		t.Fatalf("%d requests, %d accepted; want 2 (warm-up and the message, once each)", n, acc)
	}
	if info.Retried != 0 || !strings.Contains(string(info.Result), `"message_ids"`) {
		t.Fatalf("retried %d, result %s: want recorded, not redelivered", info.Retried, info.Result)
	}
}

// Worker A starts a cool-down while worker B's subscription is lost (killed
// by Redis, or Redis restarted), so that A's message may never reach B: B
// keeps no view while it is down and drops every view when it is back, so
// its next send once subscribed again is held, even with views trusted for
// an hour.
func TestGateCooldownAcrossSubscriptionLoss(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"client kill", "restart"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t, true)
			rdb := redis.NewClient(srv.Options())
			t.Cleanup(func() { _ = rdb.Close() })
			cfg := GateConfig{Namespace: "courier:{gate}", StateCache: time.Hour}
			a, _ := watchedGate(t, rdb, cfg)
			rdbB := redis.NewClient(srv.Options())
			t.Cleanup(func() { _ = rdbB.Close() })
			b, _ := watchedGate(t, rdbB, cfg)
			ctx := context.Background()
			if d := b.acquire(ctx, "bot"); d.kind != gateOpen || b.views.decide("bot", time.Now()) == nil {
				t.Fatalf("open road not kept in the view: %+v", d)
			}
			genBefore, _ := b.views.snapshot()
			switch how {
			case "client kill":
				if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
					t.Fatal(err)
				}
			case "restart":
				srv.Kill()
				if err := srv.Restart(); err != nil {
					t.Fatal(err)
				}
			}
			cooldown, _, _, _, _ := a.keys("bot")
			waitFor(t, 10*time.Second, "A's cool-down in Redis", func() bool {
				a.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: time.Minute}, false)
				return rdb.Exists(ctx, cooldown).Val() == 1
			})
			waitFor(t, 10*time.Second, "B subscribed again", func() bool {
				gen, live := b.views.snapshot()
				return live && gen != genBefore
			})
			if d := b.acquire(ctx, "bot"); d.kind != GateCooldown {
				t.Fatalf("B, subscribed again, answers %+v during A's cool-down", d)
			}
		})
	}
}

// Worker B's subscription goes silent without a reset (a half-open TCP
// connection: a firewall or NAT dropped it) while its other connections
// work, and worker A starts a cool-down whose message never reaches B. B,
// trusting its views for an hour, finds the silent connection with an
// unanswered ping, drops its views and subscribes again: its sends are
// held within seconds, not after the hour.
func TestGateSilentSubscription(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, false)
	rdb := redis.NewClient(srv.Options())
	t.Cleanup(func() { _ = rdb.Close() })
	proxy, err := redisfault.NewProxy(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	var dials atomic.Int32
	opt := srv.Options()
	opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) == 1 { // the subscription's connection, the first one dialled
			addr = proxy.Addr
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rdbB := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdbB.Close() })
	cfg := GateConfig{Namespace: "courier:{gate}", StateCache: time.Hour}
	a, _ := watchedGate(t, rdb, cfg)
	b, _ := watchedGate(t, rdbB, cfg)
	ctx := context.Background()
	if d := b.acquire(ctx, "bot"); d.kind != gateOpen || b.views.decide("bot", time.Now()) == nil {
		t.Fatalf("open road not kept in the view: %+v", d)
	}
	// Pings answered keep the subscription and the views: quiet is not loss.
	gen, _ := b.views.snapshot()
	time.Sleep(2*subscriptionCheck + time.Second) // an observation window, not synchronisation
	if now, live := b.views.snapshot(); now != gen || !live || b.views.decide("bot", time.Now()) == nil {
		t.Fatal("a quiet subscription, its pings answered, was taken for lost")
	}
	proxy.Stall(time.Hour)
	a.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: time.Minute}, false)
	waitFor(t, 20*time.Second, "B to hold its sends during A's cool-down", func() bool { return b.acquire(ctx, "bot").kind == GateCooldown })
}

// inflightGate counts the gate's scripts under way at once (each held for
// d, a slow Redis), and the most at any time.
type inflightGate struct {
	d         time.Duration
	now, most atomic.Int32
}

func (s *inflightGate) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s *inflightGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.HasSuffix(cmdName(cmd), "(gate)") {
			n := s.now.Add(1)
			defer s.now.Add(-1)
			for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
			}
			time.Sleep(s.d)
		}
		return next(ctx, cmd)
	}
}
func (s *inflightGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A worker that keeps no views (StateCache negative, or its subscription
// lost) asks Redis before every send as before views existed: its
// deliveries of one bot ask at once, not one after another (a slow Redis
// would otherwise hold the n-th of them n answers long).
func TestGateWithoutViewsAsksInParallel(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	slow := redis.NewClient(rdb.Options())
	t.Cleanup(func() { _ = slow.Close() })
	counted := &inflightGate{d: 200 * time.Millisecond}
	slow.AddHook(counted)
	g, _ := newGate(t, slow, GateConfig{StateCache: -1, Timeout: 5 * time.Second})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := g.wait(context.Background(), "bot"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := counted.most.Load(); m < 2 {
		t.Fatalf("at most %d of 4 deliveries asked the gate at once: they queued behind each other", m)
	}
}

// The worker's liveness writes fail until its key lapses; a delivery begins
// meanwhile (its claim confirmed), the task is taken over, and the very next
// liveness write succeeds: all within fenceFresh. The key was gone after the
// claim was confirmed, so the claim is not fresh: it is checked before the
// post, which never goes out.
func TestLivenessLapseAfterTheClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	e.workerRdb = redis.NewClient(e.rdb.Options())
	t.Cleanup(func() { _ = e.workerRdb.Close() })
	faults := &redisfault.Hook{}
	e.workerRdb.AddHook(faults)
	r := newTestRecovery(t, e.workerRdb, e.queue)
	r.run(t)
	waitFor(t, 10*time.Second, "the worker's liveness", func() bool { return r.Holder() != "" })
	beats := faults.Add(&redisfault.Rule{Match: redisfault.Match{Name: "set", Args: []string{aliveKey(r.id)}}, Count: -1})
	waitFor(t, 10*time.Second, "the worker's liveness key to lapse", func() bool { return e.rdb.Exists(ctx, aliveKey(r.id)).Val() == 0 })
	e.workerRdb.AddHook(&afterScript{script: "begin", then: func(ctx context.Context) {
		id, _ := asynq.GetTaskID(ctx)
		e.rdb.HIncrBy(ctx, taskKey(e.queue, id), fieldEpoch, 1) // taken over: its holder's key is gone
		beats.Remove()
		waitFor(t, 10*time.Second, "the liveness written again", func() bool {
			return e.rdb.Exists(ctx, aliveKey(r.id)).Val() == 1 && r.live(time.Now())
		})
	}})
	e.start(func(c *WorkerConfig) { c.Fence = r })
	id := e.enqueue(text("r", "begun while the liveness lapsed"))
	waitFor(t, 20*time.Second, "the interrupted delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "task_id="+id)
	})
	if n, _ := e.sim.Counts("r"); n != 0 {
		t.Fatalf("%d posts after the takeover, want none", n)
	}
}
