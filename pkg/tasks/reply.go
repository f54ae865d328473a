package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// ReplyTo makes the message a reply in the thread of the message that task
// parentTask (in the same queue) delivers: the reply waits until its parent
// is delivered and is sent with the parent's Webex message id as parentId.
// A parent that was dead-lettered, is no longer retained, or whose Webex id
// is unknown leaves the reply unthreaded, with a warning and a metric.
func ReplyTo(parentTask string) Option { return func(o *enqueueOptions) { o.parentTask = parentTask } }

// parentScript reads the parent's asynq state and result, and whether it
// is still waiting behind the head of a sequence (not yet an asynq task).
var parentScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'state', 'result')
return {v[1], v[2], redis.call('HEXISTS', KEYS[2], ARGV[1])}
`)

// parentWait is how long a reply is handed back for while its parent is
// on its way: the parent's delivery does not pull the reply forward.
const parentWait = 5 * time.Second

// threadReply sets the reply's parentId to its parent's Webex message id,
// or clears it when the parent cannot give one. It hands the reply back
// while the parent is still on its way.
func (h *Handler) threadReply(ctx context.Context, queue, id string, p *Payload) *DeliveryError {
	v, err := parentScript.Run(ctx, h.order.rdb, []string{taskKey(queue, p.ParentTask), waitingKey(queue)}, p.ParentTask).Slice()
	if err != nil || len(v) != 3 { // Redis's fault, not the message's: not counted
		return &DeliveryError{Outcome: RedisUnavailable, Err: fmt.Errorf("read the parent message's delivery: %v", err), Delay: retrypolicy.QueueDelay(0)}
	}
	state, _ := v[0].(string)
	result, _ := v[1].(string)
	waiting, _ := v[2].(int64)
	var tr TaskResult
	_ = json.Unmarshal([]byte(result), &tr)
	sent := tr.sent()
	done := len(sent) > 0 && delivered(sent) == len(sent) // the dedup record: delivered, even if asynq has yet to mark it
	switch {
	case done && sent[0] != unconfirmedID:
		p.Message.ParentID = sent[0]
		return nil
	case !done && (waiting == 1 || state == "pending" || state == "active" || state == "retry" || state == "scheduled"):
		return &DeliveryError{Outcome: BehindHead, Err: errors.New("waiting for the parent message to be delivered"), Delay: retrypolicy.QueueDelay(parentWait)}
	}
	why := "the parent message was dead-lettered"
	switch {
	case done || state == "completed":
		why = "the parent message's Webex id is unknown"
	case state == "":
		why = "the parent message is no longer retained"
	}
	h.cfg.Logger.Warn("reply sent unthreaded: "+why, "task_id", id, "queue", queue, "parent_task_id", p.ParentTask)
	if obs, ok := h.cfg.Observer.(OrderingObserver); ok {
		obs.ReplyUnthreaded(queue)
	}
	p.Message.ParentID = ""
	return nil
}
