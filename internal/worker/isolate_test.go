package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/worker"
)

// Issue 14, item 5: a message that crashes its worker is dead-lettered as
// poison after five deaths in all: twice the worker process dies with it
// (and is restarted), then three times the process it is isolated in, while
// the worker lives on and delivers other messages.
func TestPoisonMessageProcess(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	env := s.env("good", worker.CrashRoomEnv+"=crash")
	id := s.enqueue(t, "crash", "kills its worker")
	for range 2 {
		w := startWorker(t, env...)
		if err := w.wait(t, 30*time.Second); err == nil || !strings.Contains(w.out.String(), "crashes its worker") {
			t.Fatalf("worker exited with %v, not by the crash hook", err)
		}
		// Expire the lease now, as 30 s without heartbeats would; asynq's
		// recoverer runs when the next worker starts.
		if err := s.rdb.ZAdd(context.Background(), "asynq:{"+s.queue+"}:lease", redis.Z{Score: float64(time.Now().Add(-time.Minute).Unix()), Member: id}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	w := startWorker(t, env...)
	waitFor(t, 60*time.Second, "the poison verdict", func() bool { st, _ := s.state(id); return st == asynq.TaskStateArchived })
	info, err := s.inspector.GetTaskInfo(s.queue, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := "poison: 3 isolated deliveries died with their process (limit 3), 5 deaths in all"; !strings.Contains(info.LastErr, want) {
		t.Fatalf("LastErr %q, want %q", info.LastErr, want)
	}
	other := s.enqueue(t, "r", "after the poison")
	waitFor(t, 15*time.Second, "another delivery by the same worker", func() bool { st, _ := s.state(other); return st == asynq.TaskStateCompleted })
	select {
	case err := <-w.done:
		t.Fatalf("the worker died: %v", err)
	default:
	}
	if req, _ := s.sim.Counts("crash"); req != 0 {
		t.Fatalf("%d requests to the crash room", req)
	}
}
