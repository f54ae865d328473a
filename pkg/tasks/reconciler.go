package tasks

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
)

// DefaultReconcileInterval is how often a Reconciler checks the heads of
// the ordered sequences.
const DefaultReconcileInterval = 30 * time.Second

// ReconcilerConfig configures a Reconciler. Zero fields take the defaults.
type ReconcilerConfig struct {
	// Queues are the queues whose sequences are checked. At least one.
	Queues []string
	// Interval is the time between checks. Default 30s.
	Interval time.Duration
	// Logger receives a record per repaired sequence. Default slog.Default().
	Logger *slog.Logger
	// Observer, when it implements OrderingObserver, counts the successors
	// released.
	Observer Observer
	// Now reads the clock. Default time.Now.
	Now func() time.Time
}

// Reconciler keeps ordered sequences moving when their head left asynq
// without courier knowing: deleted in asynqmon, archived by asynq's
// recoverer (a lease that expired on its last redelivery), completed or
// dead-lettered while Redis failed the release. It is not a fetch loop:
// every Interval it reads each live sequence's head once, and releases the
// next message where the head is gone, completed or archived. Workers run
// one each; they do not get in each other's way (each repair is one
// script, which does nothing when another worker repaired it first).
type Reconciler struct {
	cfg   ReconcilerConfig
	rdb   redis.UniversalClient
	order *ordering
}

// NewReconciler returns a reconciler over a go-redis client.
func NewReconciler(rdb redis.UniversalClient, cfg ReconcilerConfig) *Reconciler {
	redisurl.FollowFailovers(rdb)
	cfg.Interval = cmp.Or(cfg.Interval, DefaultReconcileInterval)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{cfg: cfg, rdb: rdb, order: &ordering{rdb: rdb, log: cfg.Logger, obs: cfg.Observer, now: cfg.Now}}
}

// Run reconciles every Interval until ctx ends; it returns nil then. A pass
// that fails is logged and tried again at the next tick.
func (r *Reconciler) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.Reconcile(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.Warn("ordered sequences not reconciled; trying again", "error", err.Error(), "in", r.cfg.Interval)
		}
	}
}

// Reconcile checks every sequence once and returns how many it moved on.
// It also drops the dead marks (ordering.go) of tasks asynq has archived.
func (r *Reconciler) Reconcile(ctx context.Context) (int, error) {
	moved := 0
	for _, q := range r.cfg.Queues {
		if err := r.sweep(ctx, q); err != nil {
			return moved, fmt.Errorf("reconcile queue %s: %w", q, err)
		}
		var cursor uint64
		for {
			fields, next, err := r.rdb.HScan(ctx, headsKey(q), cursor, "", 200).Result()
			if err != nil {
				return moved, fmt.Errorf("reconcile queue %s: %w", q, err)
			}
			for i := 0; i+1 < len(fields); i += 2 {
				ok, err := r.repair(ctx, sequence{q, fields[i]})
				if err != nil {
					return moved, fmt.Errorf("reconcile queue %s: %w", q, err)
				}
				if ok {
					moved++
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	return moved, nil
}

// repair moves one sequence on if its head has left.
func (r *Reconciler) repair(ctx context.Context, s sequence) (bool, error) {
	v, err := reconcileScript.Run(ctx, r.rdb, []string{s.heads(), s.list(), s.msgs(), s.waiting()}, s.key, s.prefix(), r.cfg.Now().UnixNano()).Slice()
	if err != nil {
		return false, err
	}
	if len(v) != 7 {
		return false, nil // the head is alive
	}
	head, _ := v[0].(string)
	state, _ := v[1].(string)
	rel := parseReleased(v[2:])
	r.order.logDropped(s.queue, head, rel)
	if rel.active {
		r.order.watch(ctx, s, rel.next)
	}
	if !rel.done {
		return false, nil
	}
	switch {
	case state == "completed":
		r.cfg.Logger.Info("sequence moved on after a delivered head", "queue", s.queue, "task_id", head, "next_task_id", rel.next)
	case rel.next != "":
		r.order.successorReleased(s.queue, "reconciled", head, rel, "head_state", cmp.Or(state, "deleted"))
	}
	return true, nil
}

// sweepScript drops the dead marks (hash KEYS[1]) of the task ids ARGV[2..]
// whose task asynq archived, completed or no longer has (task key prefix
// ARGV[1]); a mark whose task is still live stays for its next delivery.
var sweepScript = redis.NewScript(`
local n = 0
for i = 2, #ARGV do
  local state = redis.call('HGET', ARGV[1] .. 't:' .. ARGV[i], 'state')
  if not state or state == 'archived' or state == 'completed' then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
`)

// sweep drops the dead marks of queue whose task left asynq's live states.
func (r *Reconciler) sweep(ctx context.Context, queue string) error {
	var cursor uint64
	for {
		fields, next, err := r.rdb.HScan(ctx, deadKey(queue), cursor, "", 200).Result()
		if err != nil {
			return err
		}
		args := []any{sequence{queue: queue}.prefix()}
		for i := 0; i < len(fields); i += 2 {
			args = append(args, fields[i])
		}
		if len(args) > 1 {
			if err := sweepScript.Run(ctx, r.rdb, []string{deadKey(queue)}, args...).Err(); err != nil {
				return err
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}
