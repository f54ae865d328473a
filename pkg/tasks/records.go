package tasks

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// records keeps courier's own per-task state in Redis, beside asynq's keys:
//
//   - courier:{queue}:sent:<task id>, a hash of part index → Webex message id,
//     written right after Webex accepts each part: the dedup record. A
//     redelivery skips the parts it holds.
//   - courier:{queue}:run:<task id>, a counter of deliveries begun and not
//     finished. A delivery that finds it above zero follows one that died
//     with its worker (lease expiry); too many make the task poison.
type records struct {
	rdb redis.UniversalClient
	ttl time.Duration
}

func sentKey(queue, id string) string { return "courier:{" + queue + "}:sent:" + id }
func runKey(queue, id string) string  { return "courier:{" + queue + "}:run:" + id }

// begin reads the parts already delivered and counts this delivery as
// running; died is the number of earlier deliveries that never finished.
func (r *records) begin(ctx context.Context, queue, id string) (sent map[int]string, died int, err error) {
	var all *redis.MapStringStringCmd
	var runs *redis.IntCmd
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		all = p.HGetAll(ctx, sentKey(queue, id))
		runs = p.Incr(ctx, runKey(queue, id))
		p.Expire(ctx, runKey(queue, id), r.ttl)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read delivery record: %w", err)
	}
	sent = make(map[int]string, len(all.Val()))
	for k, v := range all.Val() {
		if i, err := strconv.Atoi(k); err == nil {
			sent[i] = v
		}
	}
	return sent, int(runs.Val()) - 1, nil
}

// markSent records that part was delivered as Webex message msgID; with
// finished, it also ends the run in the same round trip. also, when set,
// adds commands to that round trip (the gate's reset of the breaker's count).
func (r *records) markSent(ctx context.Context, queue, id string, part int, msgID string, finished bool, also func(redis.Pipeliner)) error {
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, sentKey(queue, id), strconv.Itoa(part), msgID)
		p.Expire(ctx, sentKey(queue, id), r.ttl)
		if finished {
			p.Del(ctx, runKey(queue, id))
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
	_ = r.rdb.Del(ctx, runKey(queue, id)).Err()
}
