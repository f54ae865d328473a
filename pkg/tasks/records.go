package tasks

import (
	"context"
	"encoding/json"
	"fmt"

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
//     many make the task poison.
//
// Reading the record, counting the run and asking the send gate take one
// script at the start of a delivery; recording a part and ending the run
// take one pipeline after it.
type records struct {
	rdb  redis.UniversalClient
	gate *gate
}

const (
	fieldResult = "result"
	fieldRuns   = "courier_runs"
)

// taskKey is asynq's key of a task's hash (its base.TaskKey).
func taskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

var beginScript = redis.NewScript(gateLua + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0, 0, 0} end
local runs = redis.call('HINCRBY', KEYS[1], 'courier_runs', 1)
local result = redis.call('HGET', KEYS[1], 'result') or ''
local k, w, p = gate(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
return {runs, result, k, w, p}
`)

// begin reads the parts already delivered, counts this delivery as running
// and asks the gate whether bot may send now. died is the number of earlier
// deliveries that never finished; gone reports a task whose hash vanished
// (deleted by an operator while it ran).
func (r *records) begin(ctx context.Context, queue, id, bot string) (sent []string, died int, first *decision, gone bool, err error) {
	cooldown, open, probe, rate, _ := r.gate.keys(bot)
	res, err := beginScript.Run(ctx, r.rdb, []string{taskKey(queue, id), cooldown, open, probe, rate}, r.gate.args()...).Slice()
	if err != nil || len(res) != 5 {
		return nil, 0, nil, false, fmt.Errorf("read delivery record: %v", err)
	}
	runs, _ := res[0].(int64)
	if runs < 0 {
		return nil, 0, nil, true, nil
	}
	if s, _ := res[1].(string); s != "" {
		var tr TaskResult
		if json.Unmarshal([]byte(s), &tr) == nil {
			sent = tr.MessageIDs
		}
	}
	kind, _ := res[2].(int64)
	wait, _ := res[3].(int64)
	pr, _ := res[4].(int64)
	return sent, int(runs) - 1, newDecision(kind, wait, pr), false, nil
}

// markSent writes the result (the dedup record) after a part was accepted;
// with finished it also ends the run. also, when set, adds commands to the
// same round trip (the gate's end of the breaker's run of failures).
func (r *records) markSent(ctx context.Context, queue, id string, sent []string, finished bool, also func(redis.Pipeliner)) error {
	b, err := json.Marshal(TaskResult{MessageIDs: sent})
	if err != nil {
		return err
	}
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, taskKey(queue, id), fieldResult, b)
		if finished {
			p.HDel(ctx, taskKey(queue, id), fieldRuns)
		}
		if also != nil {
			also(p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write delivery record: %w", err)
	}
	return nil
}

// end marks the run finished (the delivery returned, whatever its outcome).
func (r *records) end(ctx context.Context, queue, id string) {
	_ = r.rdb.HDel(ctx, taskKey(queue, id), fieldRuns).Err()
}

// delivered counts the parts sent holds.
func delivered(sent []string) int {
	n := 0
	for _, s := range sent {
		if s != "" {
			n++
		}
	}
	return n
}
