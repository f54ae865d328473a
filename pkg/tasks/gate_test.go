package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
