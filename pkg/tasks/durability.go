package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis replicates asynchronously: an enqueue the primary acknowledged can
// be lost when the primary dies before a replica has it and Sentinel (or a
// Cluster) promotes that replica. ProducerConfig.WaitReplicas closes that
// gap with Redis's WAIT, which blocks until replicas have every write made
// before it on the same connection. go-redis pools connections, so the
// enqueue and the WAIT may not share one: after the enqueue, one pipeline
// on one connection to the task's primary checks that the task is there,
// writes a marker and waits for the marker to reach the replicas. The
// replication stream is ordered, so a replica that has the marker has the
// task too; and a failover between the enqueue and the pipeline is caught,
// since the new primary either has the task or answers that it does not.

// DefaultReplicaTimeout is how long an enqueue waits for replicas by default.
const DefaultReplicaTimeout = time.Second

// ErrNotReplicated matches an enqueue that the primary took but not enough
// replicas acknowledged in time (a *ReplicationError): it may be lost in a
// failover. Enqueue it again with the same key (a duplicate then means it
// was kept).
var ErrNotReplicated = errors.New("not acknowledged by enough replicas")

// ReplicationError reports an enqueue not known to be on WaitReplicas
// replicas.
type ReplicationError struct {
	TaskID, Queue string
	// Acked is how many replicas acknowledged it in time; Want how many
	// the producer asks for. Missing is true when the primary that answered
	// does not have the task (a failover came in between).
	Acked, Want int
	Missing     bool
	Err         error // a Redis error, when the wait could not be made
}

func (e *ReplicationError) Error() string {
	switch {
	case e.Err != nil:
		return fmt.Sprintf("task %s in queue %q: enqueued, but could not wait for replicas: %v", e.TaskID, e.Queue, e.Err)
	case e.Missing:
		return fmt.Sprintf("task %s in queue %q: enqueued, but the primary now answering does not have it (a failover?)", e.TaskID, e.Queue)
	}
	return fmt.Sprintf("task %s in queue %q: enqueued, but %d of %d replicas acknowledged it in time: a failover may lose it", e.TaskID, e.Queue, e.Acked, e.Want)
}

// Is matches ErrNotReplicated.
func (e *ReplicationError) Is(target error) bool { return target == ErrNotReplicated }

func (e *ReplicationError) Unwrap() error { return e.Err }

// replicatedMarker is the key the pipeline writes: in the queue's hash
// slot, so that a Cluster sends it to the task's primary.
func replicatedMarker(queue string) string { return "courier:{" + queue + "}:replicated" }

// primaryFor returns a client of the primary that holds queue's keys.
func primaryFor(ctx context.Context, rdb redis.UniversalClient, queue string) (*redis.Client, error) {
	switch c := rdb.(type) {
	case *redis.Client: // one Redis, or the primary Sentinel names
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, replicatedMarker(queue))
	}
	return nil, waitable(rdb, 0)
}

// waitable says whether WaitReplicas works over rdb within timeout: the
// WAIT must end before the client's read timeout cuts it short.
func waitable(rdb redis.UniversalClient, timeout time.Duration) error {
	var read time.Duration
	switch c := rdb.(type) {
	case *redis.Client:
		read = c.Options().ReadTimeout
	case *redis.ClusterClient:
		read = c.Options().ReadTimeout
	default:
		return fmt.Errorf("WaitReplicas needs a *redis.Client or *redis.ClusterClient, not %T", rdb)
	}
	if read > 0 && timeout >= read {
		return fmt.Errorf("ReplicaTimeout is %v: must be below the client's read timeout (%v), which would cut the wait short", timeout, read)
	}
	return nil
}

// waitReplicas returns nil once p.cfg.WaitReplicas replicas have e.
func (p *Producer) waitReplicas(ctx context.Context, e *Enqueued) error {
	rerr := &ReplicationError{TaskID: e.TaskID, Queue: e.Queue, Want: p.cfg.WaitReplicas}
	node, err := primaryFor(ctx, p.rdb, e.Queue)
	if err != nil {
		rerr.Err = err
		return rerr
	}
	var task *redis.IntCmd
	var waiting *redis.BoolCmd
	var acked *redis.Cmd
	_, err = node.Pipelined(ctx, func(pl redis.Pipeliner) error {
		task = pl.Exists(ctx, taskKey(e.Queue, e.TaskID))
		waiting = pl.HExists(ctx, waitingKey(e.Queue), e.TaskID)
		pl.Set(ctx, replicatedMarker(e.Queue), e.TaskID, time.Minute)
		acked = pl.Do(ctx, "wait", p.cfg.WaitReplicas, p.cfg.ReplicaTimeout.Milliseconds())
		return nil
	})
	if err != nil {
		rerr.Err = err
		return rerr
	}
	n, _ := acked.Int()
	rerr.Acked = n
	rerr.Missing = task.Val() == 0 && !waiting.Val()
	if rerr.Missing || rerr.Acked < rerr.Want {
		return rerr
	}
	return nil
}
