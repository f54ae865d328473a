package tasks

import (
	"cmp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// TestRedisFaultMatrix fails each Redis round trip of a delivery once, and
// cuts Redis for 3s at that point, and checks what a user sees: the
// two-part message delivered exactly once, no redelivery counted for a
// Redis fault, nothing dead-lettered, the right log record and outcome.
// The round trips: the start-of-delivery script, the send gate, each
// part's dedup record, the end of a run, asynq's completion; on
// the ordered path the claim of the sequence's turn and the release of the
// next message (which must then follow, in order); under fast crash
// recovery the fence before each post and before the outcome goes back to
// asynq, and a record (whose script checks the epoch) cut (a fence must
// wait out a cut, not halt).
//
// Four cells need asynq's recoverer (a lease of 30s, a sweep every minute:
// 60-120s): when asynq's own write after the handler fails (the completion,
// or the hand-back of begin/cut and ordered-claim/cut, which meets the
// cut), asynq v0.26 retries it with an already-cancelled context, so the
// task stays active until the recoverer moves it to retry (without calling
// the error handler); the redelivery then finds the dedup record. They run
// in parallel with the others, so the matrix takes about two minutes; with
// -short they are skipped.
func TestRedisFaultMatrix(t *testing.T) {
	t.Parallel()
	type cell struct {
		name  string
		match func(e *env, id string) redisfault.Match
		nth   int
		cut   bool
		long  bool
		// log is a record the cell must produce; outcome the metric's.
		log     string
		outcome Outcome
		// retried is the redeliveries the cell's own injected failure
		// (not Redis's) counts.
		retried int
		// fence runs the delivery under fast crash recovery's fence.
		fence bool
		// ordered makes the message the head of an ordered sequence, with a
		// text message "next" behind it.
		ordered bool
	}
	begin := func(e *env, id string) redisfault.Match { return e.beginCmd(id) }
	gateCmd := func(*env, string) redisfault.Match {
		return redisfault.Match{Name: "evalsha", Args: []string{acquireScript.Hash()}}
	}
	record := func(e *env, id string) redisfault.Match { return e.recordCmd(id) }
	// asynq's completion: the one script on the task's hash that also
	// names the active list (courier's begin and record scripts name only
	// the hash).
	done := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "evalsha", Args: []string{taskKey(e.queue, id), "asynq:{" + e.queue + "}:active"}}
	}
	// The end of a run: the last record's script ends it inside Redis; the
	// redelivery's end is its own round trip, the first HDEL sent.
	end := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "hdel", Args: []string{taskKey(e.queue, id), fieldRuns}}
	}
	// The fence reads the task's epoch before each post and before the
	// outcome goes back to asynq: 1 (part 1), 2 (part 2), 3 (the record's
	// own script checks it too, in the same round trip).
	fenceCmd := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "hmget", Args: []string{taskKey(e.queue, id), fieldEpoch}}
	}
	// An ordered head claims its turn before it begins and releases the
	// next message once delivered.
	claim := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "evalsha", Args: []string{claimScript.Hash(), id}}
	}
	release := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "evalsha", Args: []string{releaseScript.Hash(), id}}
	}
	cells := []cell{
		{name: "begin/fail", match: begin, nth: 1, log: "level=WARN msg=\"Redis failed during the delivery", outcome: RedisUnavailable},
		{name: "begin/cut", match: begin, nth: 1, cut: true, long: true, log: "level=WARN msg=\"Redis failed during the delivery", outcome: RedisUnavailable},
		{name: "gate/fail", match: gateCmd, nth: 1, log: "level=WARN msg=\"Redis did not answer the send gate", outcome: Delivered},
		{name: "gate/cut", match: gateCmd, nth: 1, cut: true, log: "level=WARN msg=\"Redis did not answer the send gate", outcome: Delivered},
		{name: "fence-before-post/fail", match: fenceCmd, nth: 1, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fence-before-post/cut", match: fenceCmd, nth: 1, cut: true, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fence-before-part2/fail", match: fenceCmd, nth: 2, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fence-before-part2/cut", match: fenceCmd, nth: 2, cut: true, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fence-before-outcome/fail", match: fenceCmd, nth: 3, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fence-before-outcome/cut", match: fenceCmd, nth: 3, cut: true, fence: true, log: "level=INFO msg=delivered", outcome: Delivered},
		{name: "fenced-record/cut", match: record, nth: 1, cut: true, fence: true, log: "level=WARN msg=\"delivery record not written", outcome: Delivered},
		{name: "ordered-claim/fail", match: claim, nth: 1, ordered: true, log: "level=WARN msg=\"Redis failed during the delivery", outcome: RedisUnavailable},
		{name: "ordered-claim/cut", match: claim, nth: 1, cut: true, long: true, ordered: true, log: "level=WARN msg=\"Redis failed during the delivery", outcome: RedisUnavailable},
		{name: "ordered-release/fail", match: release, nth: 1, ordered: true, log: "level=WARN msg=\"next message of the sequence not released: retrying", outcome: Delivered},
		{name: "ordered-release/cut", match: release, nth: 1, cut: true, ordered: true, log: "level=WARN msg=\"next message of the sequence not released: retrying", outcome: Delivered},
		{name: "part1-record/fail", match: record, nth: 1, log: "level=WARN msg=\"delivery record not written", outcome: Delivered},
		{name: "part1-record/cut", match: record, nth: 1, cut: true, log: "level=WARN msg=\"delivery record not written", outcome: Delivered},
		{name: "part2-record/fail", match: record, nth: 2, log: "level=WARN msg=\"delivery record not written", outcome: Delivered},
		{name: "part2-record/cut", match: record, nth: 2, cut: true, log: "level=WARN msg=\"delivery record not written", outcome: Delivered},
		{name: "end-of-run/fail", match: end, nth: 1, log: "level=WARN msg=\"delivery run not ended", outcome: Deduplicated, retried: 1},
		{name: "end-of-run/cut", match: end, nth: 1, cut: true, log: "level=WARN msg=\"delivery run not ended", outcome: Deduplicated, retried: 1},
		{name: "asynq-done/fail", match: done, nth: 1, long: true, log: "level=INFO msg=\"already delivered, not posting again", outcome: Deduplicated},
		{name: "asynq-done/cut", match: done, nth: 1, cut: true, long: true, log: "level=INFO msg=\"already delivered, not posting again", outcome: Deduplicated},
	}
	for _, c := range cells {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.long && testing.Short() {
				t.Skip("needs asynq's recoverer (up to ~2 minutes): long form only")
			}
			e := newEnv(t, webextest.Options{})
			proxy, hook := e.faultyWorkerRedis()
			obs := &outcomes{}

			opts := []Option{MaxRedeliveries(c.retried)} // no redelivery to spare beyond what the cell counts
			want := []string{"a.png", "b.png"}
			if c.ordered {
				opts = append(opts, Ordered())
				want = append(want, "next")
			}
			id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Markdown: "two parts"}, Uploads: []webex.File{
				{Name: "a.png", ContentType: "image/png", Data: []byte("A")}, {Name: "b.png", ContentType: "image/png", Data: []byte("B")},
			}}, opts...)
			next := id
			if c.ordered {
				next = e.enqueue(text("r", "next"), opts...)
			}
			rule := &redisfault.Rule{Match: c.match(e, id), Nth: c.nth}
			if c.cut {
				rule.Do = func() { proxy.Cut(3 * time.Second) }
			}
			hook.Add(rule)
			// The end of a run is only its own round trip on a redelivery
			// that finds the message delivered: lose the first completion.
			var fence *testRecovery
			if c.fence {
				fence = newTestRecovery(t, e.workerRdb, e.queue)
			}
			w := e.start(func(cfg *WorkerConfig) {
				cfg.Observer = obs
				if fence != nil {
					cfg.Fence = fence
				}
			})
			if c.retried > 0 {
				lost := false
				w.handler.afterRecord = func(_ string, part int) error {
					if part == 1 && !lost {
						lost = true
						return errInjected
					}
					return nil
				}
			}

			timeout := 30 * time.Second
			if c.long {
				timeout = 150 * time.Second
			}
			info := e.waitState(id, asynq.TaskStateCompleted, timeout)
			e.waitState(next, asynq.TaskStateCompleted, timeout)
			var got []string
			for _, m := range e.sim.Messages("r") {
				got = append(got, cmp.Or(m.FileName, m.Text))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("posted %q, want %q", got, want)
			}
			if info.Retried != c.retried || rule.Failed() != 1 {
				t.Fatalf("retried %d (want %d), rule fired %d times", info.Retried, c.retried, rule.Failed())
			}
			logs := e.logs.String()
			if !strings.Contains(logs, c.log) || strings.Contains(logs, ", dead-lettered") {
				t.Fatalf("log lacks %q (or dead-letters)", c.log)
			}
			if !obs.has(c.outcome) || (c.retried == 0 && obs.has(Transient)) {
				t.Fatalf("outcomes %v, want %v and no transient", obs.all(), c.outcome)
			}
			if fence != nil && fence.halts.Load() != 0 {
				t.Fatalf("the fence halted the worker %d times", fence.halts.Load())
			}
		})
	}
}

// faultyWorkerRedis gives the worker (started next) its own Redis client,
// through a proxy that can cut it and with a hook that fails its commands;
// the test's own client stays direct.
func (e *env) faultyWorkerRedis() (*redisfault.Proxy, *redisfault.Hook) {
	e.t.Helper()
	proxy, err := redisfault.NewProxy(e.rdb.Options().Addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = proxy.Close() })
	opt := *e.rdb.Options()
	opt.Addr = proxy.Addr
	e.workerRdb = redis.NewClient(&opt)
	e.t.Cleanup(func() { _ = e.workerRdb.Close() })
	hook := &redisfault.Hook{}
	e.workerRdb.AddHook(hook)
	return proxy, hook
}
