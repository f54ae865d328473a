package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/webex"
)

func newGate(t *testing.T, rdb redis.UniversalClient, cfg GateConfig) (*gate, *syncBuffer) {
	logs := &syncBuffer{}
	if cfg.Namespace == "" {
		cfg.Namespace = "courier:{" + redistest.Name(t) + "}"
	}
	return &gate{cfg: cfg.WithDefaults(), rdb: rdb, log: slog.New(slog.NewTextHandler(logs, nil)), obs: nopObserver{}}, logs
}

func TestGateRateLimit(t *testing.T) {
	t.Parallel()
	for name, rdb := range map[string]redis.UniversalClient{"redis": redistest.Client(t), "miniredis": miniClient(t)} {
		t.Run(name, func(t *testing.T) {
			g, logs := newGate(t, rdb, GateConfig{Rate: 10, Burst: 2})
			ctx := context.Background()
			for i := range 2 {
				if d := g.acquire(ctx, "bot"); d.kind != gateOpen {
					t.Fatalf("request %d within the burst held: %+v", i+1, d)
				}
			}
			d := g.acquire(ctx, "bot")
			if d.kind != GateRateLimit || d.wait <= 0 || d.wait > 100*time.Millisecond {
				t.Fatalf("over the burst: %+v, want a wait of at most 100ms", d)
			}
			if d := g.acquire(ctx, "other-bot"); d.kind != gateOpen {
				t.Fatal("bots must not share a limit")
			}
			if logs.String() != "" {
				t.Fatalf("unexpected log:\n%s", logs.String())
			}
		})
	}
}

func TestGateCooldownOnlyExtends(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	g, _ := newGate(t, rdb, GateConfig{})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	ctx := context.Background()
	g.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: 3 * time.Second}, false)
	g.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: time.Second}, false)
	if d := g.acquire(ctx, "bot"); d.kind != GateCooldown || d.wait < 2500*time.Millisecond {
		t.Fatalf("%+v, want the longer cool-down", d)
	}
	if _, err := g.wait(ctx, "bot"); err == nil || !strings.Contains(err.Error(), "shared cool-down after a 429") {
		t.Fatalf("a cool-down beyond MaxWait must hand the task back: %v", err)
	}
}

func TestGateBreaker(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	g, logs := newGate(t, rdb, GateConfig{BreakerFailures: 3, ProbeInterval: time.Hour})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	ctx := context.Background()
	fail := &webex.APIError{StatusCode: 503}
	for range 3 {
		g.result(ctx, "bot", fail, false)
	}
	if d := g.acquire(ctx, "bot"); d.kind != gateOpen || !d.probe {
		t.Fatalf("first send after opening must be the probe: %+v", d)
	}
	if d := g.acquire(ctx, "bot"); d.kind != GateCircuitOpen {
		t.Fatalf("second send while open: %+v", d)
	}
	g.result(ctx, "bot", nil, true) // the probe got through
	if d := g.acquire(ctx, "bot"); d.kind != gateOpen {
		t.Fatalf("after a good probe: %+v", d)
	}
	for _, want := range []string{"circuit open", "circuit closed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q transition logged:\n%s", want, logs.String())
		}
	}
}

// Redis silent or gone: sends go on, with one warning, not one per send.
func TestGateFailsOpen(t *testing.T) {
	t.Parallel()
	port, _ := redistest.FreePort()
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1})
	defer rdb.Close()
	g, logs := newGate(t, rdb, GateConfig{Rate: 1, Timeout: 100 * time.Millisecond})
	start := time.Now()
	for range 5 {
		if _, err := g.wait(context.Background(), "bot"); err != nil {
			t.Fatal(err)
		}
		g.result(context.Background(), "bot", &webex.APIError{StatusCode: 503}, false)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failing open took %v", took)
	}
	if n := strings.Count(logs.String(), "delivering without shared rate limit"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, logs.String())
	}
}

func miniClient(t *testing.T) *redis.Client {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// A busy bot with scattered failures never opens the breaker: any success
// ends the run of failures.
func TestGateBreakerNeedsARun(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	g, _ := newGate(t, rdb, GateConfig{BreakerFailures: 3})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	ctx := context.Background()
	for range 5 {
		g.result(ctx, "bot", &webex.APIError{StatusCode: 503}, false)
		g.result(ctx, "bot", &webex.APIError{StatusCode: 502}, false)
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error { g.succeeded(ctx, "bot")(p); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if d := g.acquire(ctx, "bot"); d.kind != gateOpen {
		t.Fatalf("scattered failures opened the breaker: %+v", d)
	}
}

// Item 8 of issue 14: a custom Sender's Retry-After of 0 or of days is
// capped, not an error of the gate's script.
func TestGateCooldownCapped(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	g, logs := newGate(t, rdb, GateConfig{})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	ctx := context.Background()
	g.result(ctx, "zero", &webex.APIError{StatusCode: 429}, false)
	g.result(ctx, "days", &webex.APIError{StatusCode: 429, RetryAfter: 1000 * time.Hour}, false)
	if d := g.acquire(ctx, "days"); d.kind != GateCooldown || d.wait > time.Hour {
		t.Fatalf("%+v, want a cool-down of at most 1h", d)
	}
	if logs.String() != "" {
		t.Fatalf("the gate failed:\n%s", logs.String())
	}
}

// Item 8 of issue 14: short holds that keep coming (other workers' 429s)
// hand the task back after MaxWait in all, not only per hold.
func TestGateWaitBoundedInTotal(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	g, _ := newGate(t, rdb, GateConfig{MaxWait: time.Second})
	redistest.DeleteKeys(t, rdb, g.cfg.Namespace+":*")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	held429 := &webex.APIError{StatusCode: 429, RetryAfter: 300 * time.Millisecond}
	g.result(ctx, "bot", held429, false)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a 429 elsewhere every 200ms, each asking for 300ms
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			g.result(ctx, "bot", held429, false)
		}
	}()
	_, err := g.wait(ctx, "bot")
	close(stop)
	<-done
	var held *GateError
	if !errors.As(err, &held) || held.Kind != GateCooldown {
		t.Fatalf("wait = %v, want a *GateError (cool-down) before the context ends", err)
	}
}

// watchedGate is newGate with its subscription live, stopped at cleanup.
func watchedGate(t *testing.T, rdb redis.UniversalClient, cfg GateConfig) (*gate, *syncBuffer) {
	t.Helper()
	g, logs := newGate(t, rdb, cfg)
	stop, done := g.watch()
	t.Cleanup(func() { stop(); <-done })
	waitFor(t, 10*time.Second, "the gate's subscription", func() bool { _, live := g.views.snapshot(); return live })
	return g, logs
}

// A worker answers from its view of an open gate without asking Redis, and
// a cool-down or a breaker opened by another worker reaches it through
// pub/sub: its next send is held, well before the view would have expired.
func TestGateViewDroppedOnChange(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	ns := "courier:{" + redistest.Name(t) + "}"
	redistest.DeleteKeys(t, rdb, ns+":*")
	cfg := GateConfig{Namespace: ns, StateCache: time.Hour, BreakerFailures: 2, ProbeInterval: time.Hour}
	counted := redis.NewClient(rdb.Options())
	t.Cleanup(func() { _ = counted.Close() })
	calls := &countScripts{}
	counted.AddHook(calls)
	a, _ := watchedGate(t, counted, cfg)
	b, _ := watchedGate(t, rdb, cfg)
	ctx := context.Background()
	for range 10 {
		if d := a.acquire(ctx, "bot"); d.kind != gateOpen {
			t.Fatalf("open gate held a send: %+v", d)
		}
	}
	if n := calls.n.Load(); n != 1 {
		t.Fatalf("10 sends asked Redis %d times, want once (then the view)", n)
	}
	b.result(ctx, "bot", &webex.APIError{StatusCode: 429, RetryAfter: 30 * time.Second}, false)
	waitFor(t, 5*time.Second, "the cool-down to reach the other worker", func() bool { return a.acquire(ctx, "bot").kind == GateCooldown })

	for range 2 { // the breaker, on another bot
		b.result(ctx, "other", &webex.APIError{StatusCode: 503}, false)
	}
	waitFor(t, 5*time.Second, "the open breaker to reach the other worker", func() bool {
		d := a.acquire(ctx, "other")
		return d.kind == GateCircuitOpen || d.probe
	})
}

// countScripts counts the gate scripts a client sends.
type countScripts struct{ n atomic.Int64 }

func (c *countScripts) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && a[1] == acquireScript.Hash() {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *countScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// Without a live subscription (a message may have been lost) a worker keeps
// no view: it asks Redis before every send, as if views did not exist.
func TestGateViewNeedsTheSubscription(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, false)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	g, _ := watchedGate(t, rdb, GateConfig{StateCache: time.Hour})
	ctx := context.Background()
	g.acquire(ctx, "bot")
	if d := g.views.decide("bot", time.Now()); d == nil {
		t.Fatal("no view kept while subscribed")
	}
	if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the lost subscription to drop the views", func() bool { return g.views.decide("bot", time.Now()) == nil })
	waitFor(t, 10*time.Second, "the subscription back", func() bool { _, live := g.views.snapshot(); return live })
}

// With a shared rate limit taken in batches by several workers, the
// cluster never exceeds the limit by more than the batch: in every window,
// sends ≤ rate × window + burst + batch (plus what one round trip's
// latency lets slip, measured).
func TestGateBatchedPermitsBound(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	ns := "courier:{" + redistest.Name(t) + "}"
	redistest.DeleteKeys(t, rdb, ns+":*")
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) { batchedPermits(t, rdb, ns+fmt.Sprint(workers), workers) })
	}
}

func batchedPermits(t *testing.T, rdb *redis.Client, ns string, workers int) {
	const rate, burst, batch, senders = 40.0, 2, 5, 4
	cfg := GateConfig{Namespace: ns, Rate: rate, Burst: burst, Batch: batch, MaxWait: time.Second, StateCache: time.Minute}
	var mu sync.Mutex
	var sends []time.Time
	var slowest time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	counted := redis.NewClient(rdb.Options())
	t.Cleanup(func() { _ = counted.Close() })
	calls := &countScripts{}
	counted.AddHook(calls)
	var wg sync.WaitGroup
	for range workers {
		g, _ := watchedGate(t, counted, cfg)
		for range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					start := time.Now()
					if _, err := g.wait(ctx, "bot"); err != nil {
						continue
					}
					now := time.Now()
					mu.Lock()
					sends = append(sends, now)
					slowest = max(slowest, now.Sub(start))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	slices.SortFunc(sends, func(a, b time.Time) int { return a.Compare(b) })
	slack := min(slowest, time.Second).Seconds() * rate // a reply held up that long shifts its permits as late
	worst := 0.0
	for i := range sends {
		for j := i; j < len(sends); j++ {
			over := float64(j-i+1) - (rate*sends[j].Sub(sends[i]).Seconds() + burst)
			worst = max(worst, over)
		}
	}
	if worst > batch+slack {
		t.Fatalf("%d sends in 3s: a window exceeded the limit by %.1f, want at most the batch %d (+%.1f for a slow reply)", len(sends), worst, batch, slack)
	}
	if min := int(rate * 2); len(sends) < min { // the limit is used, not starved
		t.Fatalf("%d sends in 3s at %v/s", len(sends), rate)
	}
	if n := calls.n.Load(); n >= int64(len(sends)) || workers == 1 && n > int64(len(sends)/batch*2) {
		t.Fatalf("%d round trips for %d sends: permits not batched", n, len(sends))
	}
	t.Logf("%d sends in 3s at %v/s, %d gate round trips, worst window %.1f over rate×window+burst (batch %d)", len(sends), rate, calls.n.Load(), worst, batch)
}
