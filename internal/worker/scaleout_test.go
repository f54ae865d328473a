package worker_test

import (
	"context"
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

const (
	scaleWorkers     = 3
	scaleConcurrency = 4
)

func (s *setup) enqueueN(t *testing.T, room string, n int) {
	t.Helper()
	reqs := make([]tasks.Request, n)
	for i := range reqs {
		reqs[i] = tasks.Request{Message: tasks.Message{Message: webex.Message{RoomID: room, Text: fmt.Sprintf("m%04d", i)}}}
	}
	for _, r := range s.producer.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
}

func (s *setup) startWorkers(t *testing.T, extra ...string) {
	for range scaleWorkers {
		startWorker(t, s.env("good", append([]string{fmt.Sprintf("COURIER_CONCURRENCY=%d", scaleConcurrency)}, extra...)...)...)
	}
}

// exactlyOnce waits until room has n messages and checks none is doubled.
func (s *setup) exactlyOnce(t *testing.T, room string, n int, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d deliveries", n), func() bool { _, acc := s.sim.Counts(room); return acc >= n })
	seen := map[string]int{}
	for _, m := range s.sim.Messages(room) {
		seen[m.Text]++
	}
	for text, c := range seen {
		if c != 1 {
			t.Errorf("%s delivered %d times", text, c)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages, want %d", len(seen), n)
	}
}

// (a) A shared limit below Webex's: three workers, no 429 at all.
func TestSharedRateLimit(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.SetRateLimit(20, 7, time.Second) // Webex: 20/s, burst 7
	s.enqueueN(t, "r", 300)
	s.startWorkers(t, "COURIER_RATE=15", "COURIER_BURST=5")
	s.exactlyOnce(t, "r", 300, 60*time.Second)
	for _, r := range s.sim.Requests("r") {
		if r.Status == 429 {
			t.Fatalf("a 429 at %v: the shared limit let a burst through", r.Time)
		}
	}
}

// (b) A 429 with Retry-After 3s: every worker holds back until it passes.
func TestSharedCooldown(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Status: 429, RetryAfter: webextest.Duration(3 * time.Second), Count: 1000})
	s.enqueueN(t, "r", 100)
	s.startWorkers(t)
	var first webextest.Request
	waitFor(t, 20*time.Second, "the first 429", func() bool {
		for _, r := range s.sim.Requests("r") {
			if r.Status == 429 {
				first = r
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the cool-down to pass", func() bool { return time.Since(first.Time) > 1500*time.Millisecond })
	s.sim.ClearFaults() // Webex recovers while the workers are still cooling down
	s.exactlyOnce(t, "r", 100, 60*time.Second)
	quietFrom, quietTo := first.Time.Add(200*time.Millisecond), first.Time.Add(3*time.Second)
	tooMany := 0
	for _, r := range s.sim.Requests("r") {
		if r.Start.After(quietFrom) && r.Start.Before(quietTo) {
			t.Errorf("a request started %v after the first 429, inside the 3s cool-down", r.Start.Sub(first.Time))
		}
		if r.Status == 429 {
			tooMany++
		}
	}
	if tooMany > scaleWorkers*scaleConcurrency {
		t.Errorf("%d 429s received, want at most workers × concurrency = %d", tooMany, scaleWorkers*scaleConcurrency)
	}
}

// (c) Webex down for 20s: once the breaker opens, requests are bounded by
// the probe schedule, and everything is delivered once after recovery.
func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	const (
		failures = 5
		probe    = 2 * time.Second
		outage   = 20 * time.Second
	)
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Status: 503})
	start := time.Now()
	s.enqueueN(t, "r", 60)
	s.startWorkers(t, fmt.Sprintf("COURIER_BREAKER_FAILURES=%d", failures), "COURIER_BREAKER_WINDOW=10s",
		fmt.Sprintf("COURIER_PROBE_INTERVAL=%s", probe), "COURIER_REDELIVERY_CAP=2s")
	waitFor(t, outage+10*time.Second, "the end of the outage", func() bool { return time.Since(start) > outage })
	s.sim.ClearFaults()
	end := time.Now()
	s.exactlyOnce(t, "r", 60, 60*time.Second)

	// The breaker opens when the failures-th failed answer is recorded.
	var failedAt []time.Time
	for _, r := range s.sim.Requests("r") {
		if r.Status == 503 {
			failedAt = append(failedAt, r.Time)
		}
	}
	sort.Slice(failedAt, func(i, j int) bool { return failedAt[i].Before(failedAt[j]) })
	if len(failedAt) < failures {
		t.Fatalf("only %d failures", len(failedAt))
	}
	opened := failedAt[failures-1].Add(200 * time.Millisecond) // requests already let through may still start
	during := 0
	for _, r := range s.sim.Requests("r") {
		if r.Start.After(opened) && r.Start.Before(end) {
			during++
		}
	}
	// While open, one probe per interval across all workers: ceil((end - opened) / probe) + 1.
	bound := int(math.Ceil(float64(end.Sub(opened))/float64(probe))) + 1
	if during > bound {
		t.Fatalf("%d requests while the circuit was open (%v), want at most %d", during, end.Sub(opened).Round(time.Second), bound)
	}
	t.Logf("requests during the open circuit: %d (bound %d); total requests %d", during, bound, len(s.sim.Requests("r")))
}
