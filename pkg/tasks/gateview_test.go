package tasks

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/webex"
)

// holdScript holds a gate script at one point, once armed: before it is
// sent (before) or after its answer came back (after, !before).
type holdScript struct {
	hash    string
	before  bool
	armed   atomic.Bool
	reached chan struct{} // closed when the script got there
	release chan struct{} // closed by the test to let it go on
}

func newHold(s *redis.Script, before bool) *holdScript {
	return &holdScript{hash: s.Hash(), before: before, reached: make(chan struct{}), release: make(chan struct{})}
}

func (h *holdScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		a := cmd.Args()
		ours := len(a) > 1 && (a[1] == h.hash || a[0] == "eval" && len(a) > 1 && redis.NewScript(a[1].(string)).Hash() == h.hash)
		if ours && h.before && h.armed.CompareAndSwap(true, false) {
			close(h.reached)
			<-h.release
		}
		err := next(ctx, cmd)
		if ours && !h.before && h.armed.CompareAndSwap(true, false) {
			close(h.reached)
			<-h.release
		}
		return err
	}
}
func (h *holdScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// gateWith is a gate on its own client with hook, its subscription live
// (heard, if set, is its subscription's hook), stopped at cleanup.
func gateWith(t *testing.T, ns string, hook redis.Hook, heard func(string)) *gate {
	t.Helper()
	rdb := redistest.Client(t)
	c := redis.NewClient(rdb.Options())
	t.Cleanup(func() { _ = c.Close() })
	if hook != nil {
		c.AddHook(hook)
	}
	g, _ := newGate(t, c, GateConfig{Namespace: ns, StateCache: time.Hour})
	g.heard = heard
	stop, done := g.watch()
	t.Cleanup(func() { stop(); <-done })
	waitFor(t, 10*time.Second, "the gate's subscription", func() bool { _, live := g.views.snapshot(); return live })
	return g
}

// A worker's read of an open road, answered by Redis just before another
// worker's 429 started the cool-down, and stored only after the 429's
// message was applied, keeps no view: the worker's next send is held by the
// cool-down, not let through by the stale read until StateCache ends.
func TestGateViewStaleReadAfterChange(t *testing.T) {
	t.Parallel()
	ns := "courier:{" + redistest.Name(t) + "}"
	redistest.DeleteKeys(t, redistest.Client(t), ns+":*")
	hold := newHold(acquireScript, false)
	a := gateWith(t, ns, hold, nil)
	b := gateWith(t, ns, nil, nil)
	ctx := context.Background()

	hold.armed.Store(true)
	first := make(chan *decision)
	go func() { first <- a.acquire(ctx, "bot") }()
	<-hold.reached // Redis answered "open road"
	gen, _ := a.views.snapshot()
	b.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: 30 * time.Second}, false)
	waitFor(t, 10*time.Second, "the 429's message applied", func() bool { g, _ := a.views.snapshot(); return g != gen })
	close(hold.release) // only now is the read stored
	if d := <-first; d.kind != gateOpen {
		t.Fatalf("the send that read before the 429 = %+v, want open", d)
	}
	if d := a.acquire(ctx, "bot"); d.kind != GateCooldown {
		t.Fatalf("next send after the 429 = %+v, want held by the cool-down", d)
	}
}

// A worker's own 429: a read another of its sends made between its first
// drop and the cool-down's script keeps no open road once the 429 is
// recorded, even while its subscription has not yet applied the 429's own
// message.
func TestGateViewOwn429NotRefilled(t *testing.T) {
	t.Parallel()
	a := readDuringOwnChange(t, cooldownScript, &webex.APIError{StatusCode: 429, RetryAfter: 30 * time.Second})
	if d := a.acquire(context.Background(), "bot"); d.kind != GateCooldown {
		t.Fatalf("next send after this worker's own 429 = %+v, want held by the cool-down", d)
	}
}

// The same for a worker's own transient failure, which starts a run: a read
// made between its first drop and the failure's script does not leave a
// view saying no run is open, so the next success still ends the run.
func TestGateViewOwnFailureNotRefilled(t *testing.T) {
	t.Parallel()
	a := readDuringOwnChange(t, failureScript, &webex.APIError{StatusCode: 503})
	if a.succeeded(context.Background(), "bot") == nil {
		t.Fatal("after this worker's own failure, a success would not end the run: its view says none is open")
	}
}

// readDuringOwnChange has a worker with an open view record err, whose
// script is held before it reaches Redis while another send of the worker
// reads the gate; the worker's subscription is held too (until the test
// ends): its own change's message is not applied.
func readDuringOwnChange(t *testing.T, script *redis.Script, err error) *gate {
	t.Helper()
	ns := "courier:{" + redistest.Name(t) + "}"
	redistest.DeleteKeys(t, redistest.Client(t), ns+":*")
	hold := newHold(script, true)
	heard := make(chan struct{})
	a := gateWith(t, ns, hold, func(string) { <-heard })
	t.Cleanup(func() { close(heard) }) // before the gate's cleanup stops its subscription
	ctx := context.Background()
	if d := a.acquire(ctx, "bot"); d.kind != gateOpen {
		t.Fatalf("open gate held a send: %+v", d)
	}
	hold.armed.Store(true)
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		a.result(ctx, "bot", err, false)
	}()
	<-hold.reached // the view is dropped, the change not yet made
	if d := a.acquire(ctx, "bot"); d.kind != gateOpen {
		t.Fatalf("a send before the change was made = %+v, want open", d)
	}
	close(hold.release)
	<-recorded
	return a
}
