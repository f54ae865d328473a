package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// records keeps courier's per-task state inside asynq's own hash of the task
// (asynq:{queue}:t:<id>), beside asynq's fields, so that it lives exactly as
// long as the task: pending, retrying, archived, or retained after
// completion. Two fields:
//
//   - result: asynq's result field, the JSON of TaskResult, written right
//     after Webex accepts each part (as asynq's ResultWriter would, in the
//     same round trip as the rest). It is the dedup record: a redelivery
//     skips the parts it names, and completes at once when it names them all.
//   - courier_runs: deliveries begun and not finished. A delivery that finds
//     it above zero follows one that died with its worker (lease expiry); too
//     many make the task poison (with isolation, two make it a suspect).
//   - courier_killed: of those, isolated deliveries whose own process died
//     (isolate.go); with isolation, too many make the task poison.
//
// Reading the record, counting the run and spotting a suspect take one
// script at the start of a delivery; recording a part, ending the run and
// checking the crash-recovery fence take one script after Webex accepts it.
// Those are a delivery's two round trips on the common path (see
// docs/BENCHMARKS.md, "Round trips per message").
type records struct {
	rdb redis.UniversalClient
}

const (
	fieldResult = "result"
	fieldRuns   = "courier_runs"
	// fieldEpoch counts the takeovers of the task by fast crash recovery:
	// the fencing token a delivery begins under (see Recovery).
	fieldEpoch  = "courier_epoch"
	fieldKilled = "courier_killed" // deaths of isolated deliveries (isolate.go)
	// fieldHolder names the worker whose delivery is under way (its
	// Fence.Holder), from the delivery's begin to the end of its run: fast
	// recovery takes the task over once that worker's liveness lapses.
	fieldHolder = "courier_holder"
)

// taskKey is asynq's key of a task's hash (its base.TaskKey).
func taskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// unconfirmedID marks, in memory, a part Webex accepted whose id courier
// never learnt (a 2xx answer cut short). The record stores it as "" with the
// part's index in TaskResult.Unconfirmed.
const unconfirmedID = "\x00unconfirmed"

var beginScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0, 0, 0} end
if tonumber(ARGV[3]) > 0 then
  local at = redis.call('HGET', KEYS[1], 'courier_moved_at')
  if at then
    local t = redis.call('TIME')
    local since = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(at)
    if since + tonumber(ARGV[4]) < tonumber(ARGV[3]) then
      return {-2, '', 0, tonumber(redis.call('HGET', KEYS[1], 'courier_epoch') or '0'), 0}
    end
  end
end
local suspect = tonumber(ARGV[2])
if suspect > 0 then
  local runs = tonumber(redis.call('HGET', KEYS[1], 'courier_runs') or '0')
  if runs >= suspect then return {runs, '', 0, 0, 1} end
end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'courier_holder', ARGV[1]) else redis.call('HDEL', KEYS[1], 'courier_holder') end
local runs = redis.call('HINCRBY', KEYS[1], 'courier_runs', 1)
local result = redis.call('HGET', KEYS[1], 'result') or ''
local killed = tonumber(redis.call('HGET', KEYS[1], 'courier_killed') or '0')
local epoch = tonumber(redis.call('HGET', KEYS[1], 'courier_epoch') or '0')
return {runs, result, killed, epoch, 0}
`)

// begun is what the start of a delivery finds.
type begun struct {
	sent   []string // the parts already delivered ("" for one not yet)
	died   int      // earlier deliveries that never finished
	killed int      // of them, isolated ones whose process died (isolate.go)
	gone   bool     // the task's hash is missing
	epoch  int64    // the task's epoch (fieldEpoch) the delivery runs under
	// suspect: the task's deliveries died suspectAt times in a row; nothing
	// was begun (the isolated delivery begins it, isolate.go).
	suspect bool
	// overtaken: fast recovery took the task over after this delivery's
	// handler was entered (its worker was frozen before its begin), so the
	// epoch read is the new owner's; nothing was begun or written.
	overtaken bool
}

// overtakenMargin is how much sooner than the handler's entry a takeover
// must be by Redis's clock before begin takes the delivery for overtaken:
// it absorbs a step of Redis's wall clock between the takeover and the
// begin, and a rate difference between that clock and the worker's
// monotonic one. A takeover after the fetch comes 6 s after it at least
// (the lease's stand-still), so a margin under that misses none that the
// begin's request did not itself spend in transit.
const overtakenMargin = 2 * time.Second

// begin reads the parts already delivered and counts this delivery as
// running, under holder ("": none; a holder an earlier run left behind is
// removed, so that the task goes by the asynq liveness of the worker now
// running it), in one round trip. With suspectAt above
// 0, a task whose deliveries died that many times in a row is not begun: it
// is a suspect.
//
// With entered set (when the delivery's handler was entered, with its
// monotonic reading), a task that fast recovery took over (moved back to
// pending: courier_moved_at, Redis's clock in ms) less long ago than the
// time since entered, less overtakenMargin, is not begun: it is overtaken.
// The delivery was fetched before that takeover, by a worker that was then
// frozen, and the epoch is the new owner's. The new owner fetched the task
// after the takeover, so for it the takeover is always older than its
// handler's entry by more than the begin request's transit: no false
// positive but for Redis's clock stepping back by more than the margin.
func (r *records) begin(ctx context.Context, queue, id, holder string, suspectAt int, entered time.Time) (begun, error) {
	var since int64 // ms since entered, measured as the request leaves: a request held up in transit only shortens it
	if !entered.IsZero() {
		since = max(time.Since(entered).Milliseconds(), 1)
	}
	res, err := beginScript.Run(ctx, r.rdb, []string{taskKey(queue, id)}, holder, suspectAt, since, overtakenMargin.Milliseconds()).Slice()
	if err == nil && len(res) != 5 {
		err = fmt.Errorf("unexpected answer %v", res)
	}
	if err != nil {
		return begun{}, fmt.Errorf("read delivery record: %w", err)
	}
	runs, _ := res[0].(int64)
	if runs == -2 {
		epoch, _ := res[3].(int64)
		return begun{overtaken: true, epoch: epoch}, nil
	}
	if runs < 0 {
		return begun{gone: true}, nil
	}
	if s, _ := res[4].(int64); s == 1 {
		return begun{died: int(runs), suspect: true}, nil
	}
	killed, _ := res[2].(int64)
	epoch, _ := res[3].(int64)
	b := begun{died: int(runs) - 1, killed: int(killed), epoch: epoch}
	if s, _ := res[1].(string); s != "" {
		var tr TaskResult
		if json.Unmarshal([]byte(s), &tr) == nil {
			b.sent = tr.sent()
		}
	}
	return b, nil
}

// sent is the in-memory form of the result: unconfirmed parts marked.
func (tr TaskResult) sent() []string {
	sent := slices.Clone(tr.MessageIDs)
	for _, i := range tr.Unconfirmed {
		if i >= 0 && i < len(sent) && sent[i] == "" {
			sent[i] = unconfirmedID
		}
	}
	return sent
}

// newTaskResult is the stored form of sent.
func newTaskResult(sent []string) TaskResult {
	tr := TaskResult{MessageIDs: slices.Clone(sent)}
	for i, s := range sent {
		if s == unconfirmedID {
			tr.MessageIDs[i] = ""
			tr.Unconfirmed = append(tr.Unconfirmed, i)
		}
	}
	return tr
}

// markLua writes the result (the dedup record) and, with ARGV[2] = 1, ends
// the run; with an epoch in ARGV[3] only while the task's epoch is still
// that one (the crash-recovery fence, checked where the write happens). It
// returns 1, or 0 when the task was taken over (its epoch moved on or its
// hash is gone) and nothing was written.
const markLua = `
if ARGV[3] ~= '' then
  local v = redis.call('HMGET', KEYS[1], 'state', 'courier_epoch')
  if not v[1] or tonumber(v[2] or '0') ~= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], 'result', ARGV[1])
if ARGV[2] == '1' then redis.call('HDEL', KEYS[1], 'courier_runs', 'courier_killed', 'courier_holder') end
return 1
`

var markScript = redis.NewScript(markLua)

// errFenced is markSent's answer when the task's epoch moved on: nothing
// was written.
var errFenced = errors.New("the task's epoch moved on: not written")

// markSent writes the result (the dedup record) after a part was accepted;
// with finished it also ends the run. With fenced, it writes only while the
// task's epoch is still epoch (else errFenced). also, when set, adds
// commands to the same round trip (the gate's end of the breaker's run of
// failures).
func (r *records) markSent(ctx context.Context, queue, id string, sent []string, finished bool, fenced bool, epoch int64, also func(redis.Pipeliner)) error {
	b, err := json.Marshal(newTaskResult(sent))
	if err != nil {
		return err
	}
	fin, ep := "0", ""
	if finished {
		fin = "1"
	}
	if fenced {
		ep = strconv.FormatInt(epoch, 10)
	}
	keys, args := []string{taskKey(queue, id)}, []any{b, fin, ep}
	var n int64
	if also == nil {
		n, err = markScript.Run(ctx, r.rdb, keys, args...).Int64()
	} else {
		n, err = r.markPipelined(ctx, keys, args, also)
	}
	switch {
	case err != nil:
		return fmt.Errorf("write delivery record: %w", err)
	case n == 0:
		return errFenced
	}
	return nil
}

// markPipelined runs markScript with also's commands in one round trip. A
// pipeline cannot fall back from EVALSHA to EVAL by itself: when Redis does
// not know the script (a restart), it loads it and sends again.
func (r *records) markPipelined(ctx context.Context, keys []string, args []any, also func(redis.Pipeliner)) (int64, error) {
	for try := 0; ; try++ {
		var cmd *redis.Cmd
		_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			cmd = markScript.EvalSha(ctx, p, keys, args...)
			also(p)
			return nil
		})
		if err != nil && try == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if err := markScript.Load(ctx, r.rdb).Err(); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		return cmd.Int64()
	}
}

// end marks the run finished (the delivery returned, whatever its outcome).
func (r *records) end(ctx context.Context, queue, id string) error {
	if err := r.rdb.HDel(ctx, taskKey(queue, id), fieldRuns, fieldKilled, fieldHolder).Err(); err != nil {
		return fmt.Errorf("end delivery run: %w", err)
	}
	return nil
}

// delivered counts the parts sent holds (unconfirmed ones too).
func delivered(sent []string) int {
	n := 0
	for _, s := range sent {
		if s != "" {
			n++
		}
	}
	return n
}
