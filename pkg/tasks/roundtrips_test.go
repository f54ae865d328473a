package tasks

import (
	"context"
	"crypto/sha1"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// roundTrips is a go-redis hook that records courier's own round trips per
// task: the commands sent with a handler's context (it carries asynq's task
// id; asynq's own fetch and completion do not). A pipeline is one round
// trip.
type roundTrips struct {
	mu    sync.Mutex
	trips map[string][]string // task id → one entry per round trip: its commands
}

func (r *roundTrips) add(ctx context.Context, cmds ...redis.Cmder) {
	id, ok := asynq.GetTaskID(ctx)
	if !ok {
		return
	}
	names := make([]string, 0, len(cmds))
	for _, c := range cmds {
		if !connectionSetup[c.Name()] {
			names = append(names, cmdName(c))
		}
	}
	if len(names) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trips[id] = append(r.trips[id], strings.Join(names, "+"))
}

// connectionSetup are the commands go-redis sends on a connection it has
// just dialled, with the context of the command that needed it: the pool's
// cost, once per connection, not a message's (a delivery that found every
// pooled connection busy, in CI, counted "hello" and "client+client").
var connectionSetup = map[string]bool{"hello": true, "auth": true, "select": true, "client": true}

func (r *roundTrips) of(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.trips[id]...)
}

// cmdName names a command, a script by what it is.
func cmdName(c redis.Cmder) string {
	name := c.Name()
	if name != "evalsha" && name != "eval" {
		return name
	}
	a := c.Args()
	if len(a) < 2 {
		return name
	}
	hash := fmt.Sprint(a[1])
	if name == "eval" {
		hash = fmt.Sprintf("%x", sha1.Sum([]byte(hash)))
	}
	for s, n := range courierScripts() {
		if hash == s.Hash() {
			return name + "(" + n + ")"
		}
	}
	return name
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.add(ctx, cmd)
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.add(ctx, cmds...)
		return next(ctx, cmds)
	}
}

// courierScripts names the scripts a delivery may run.
func courierScripts() map[*redis.Script]string {
	return map[*redis.Script]string{beginScript: "begin", acquireScript: "gate", markScript: "record", claimScript: "claim", releaseScript: "release"}
}

// The round-trip budget: a single-part, unordered message delivered on the
// common path (nothing delivered before, no failure, no rate limit, the
// breaker closed) costs at most two courier round trips beyond asynq's own
// fetch and completion, with the worker set up as cmd/worker sets it up
// (crash-recovery fence, isolation of suspects, the shared gate): one read
// before the post, one write after Webex accepts. Beyond those: one gate
// read per bot per GateConfig.StateCache (default 1s) in each worker when no
// rate limit is configured (one per batch of permits when one is), which
// refills the worker's view of the gate; roundTripEnv sets StateCache to a
// minute to keep it out of the count. A change that adds one fails here.
func TestRoundTripBudget(t *testing.T) {
	t.Parallel()
	const budget = 2
	e, rt, _ := roundTripEnv(t)
	report, most := deliverCounted(t, e, rt, 5)
	if most > budget {
		t.Fatalf("over the budget of %d courier round trips per message:\n%s", budget, strings.Join(report, "\n"))
	}
	t.Logf("per message:\n%s", strings.Join(report, "\n"))
}

// A worker whose liveness writes fail could be taken over while it runs on
// a claim Redis confirmed a moment ago: it then asks the fence before each
// post, and before handing the outcome back, instead of trusting the claim.
func TestRoundTripsWithoutLivenessCheckTheFence(t *testing.T) {
	t.Parallel()
	e, rt, r := roundTripEnv(t)
	faults := &redisfault.Hook{}
	e.workerRdb.AddHook(faults)
	faults.Add(&redisfault.Rule{Match: redisfault.Match{Name: "set", Args: []string{aliveKey(r.id)}}, Count: -1})
	waitFor(t, 10*time.Second, "the worker's liveness to age", func() bool { return !r.live(time.Now()) })
	report, _ := deliverCounted(t, e, rt, 2)
	for _, line := range report {
		if strings.Count(line, "hmget") < 2 {
			t.Fatalf("a delivery trusted its claim while its worker's liveness could lapse:\n%s", strings.Join(report, "\n"))
		}
	}
}

// roundTripEnv starts a worker as cmd/worker runs it (one client, the
// recovery as its fence, isolation on) whose courier commands rt counts,
// once its liveness is written and its gate subscribed.
func roundTripEnv(t *testing.T) (*env, *roundTrips, *testRecovery) {
	t.Helper()
	e := newEnv(t, webextest.Options{})
	rt := &roundTrips{trips: map[string][]string{}}
	e.workerRdb = redis.NewClient(e.rdb.Options())
	t.Cleanup(func() { _ = e.workerRdb.Close() })
	e.workerRdb.AddHook(rt)
	r := newTestRecovery(t, e.workerRdb, e.queue) // as cmd/worker: one client
	r.run(t)                                      // its liveness writes let a fresh claim stand (epochFence.live)
	waitFor(t, 10*time.Second, "the worker's liveness", func() bool { return r.Holder() != "" })
	w := e.start(func(c *WorkerConfig) {
		c.Gate.StateCache = time.Minute // one gate read per bot per StateCache, not per message: keep it out of the count
		c.Fence = r
		c.Isolate = func(ctx context.Context) *exec.Cmd { return exec.CommandContext(ctx, "false") }
	})
	waitFor(t, 10*time.Second, "the gate's subscription", func() bool { _, live := w.handler.gate.views.snapshot(); return live })
	// The first delivery loads the scripts and reads the gate into its view.
	e.waitState(e.enqueue(text("r", "warm-up")), asynq.TaskStateCompleted, 20*time.Second)
	return e, rt, r
}

// deliverCounted delivers n messages one at a time and reports each one's
// courier round trips, and the most any took.
func deliverCounted(t *testing.T, e *env, rt *roundTrips, n int, opts ...Option) (report []string, most int) {
	t.Helper()
	_, before := e.sim.Counts("r")
	for i := range n {
		id := e.enqueue(text("r", fmt.Sprintf("message %d", i)), opts...)
		e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
		trips := rt.of(id)
		report = append(report, fmt.Sprintf("%d round trips: %s", len(trips), strings.Join(trips, ", ")))
		most = max(most, len(trips))
	}
	if _, acc := e.sim.Counts("r"); acc != before+n {
		t.Fatalf("accepted %d messages, want %d", acc-before, n)
	}
	return report, most
}
