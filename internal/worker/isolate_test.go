package worker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
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

// An isolated delivery whose task another worker takes over (its epoch
// moves on while the isolated process waits for Webex) is not the message's
// fault: the isolated process reports it and writes nothing, no death is
// counted against the message on the new owner's task, and the worker
// exits with ExitTombstoned.
func TestIsolatedDeliveryTakenOverIsNotADeath(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	arrived, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	webex := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			once.Do(func() { close(arrived); <-proceed })
		}
		s.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(webex.Close)
	t.Cleanup(func() {
		select {
		case <-proceed:
		default:
			close(proceed)
		}
	})
	id := s.enqueue(t, "r", "suspect")
	key := "asynq:{" + s.queue + "}:t:" + id
	ctx := context.Background()
	// Two deliveries of it died in a row: a suspect, delivered in isolation.
	if err := s.rdb.HSet(ctx, key, "courier_runs", 2).Err(); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, s.env("good", "WEBEX_BASE_URL="+webex.URL)...)
	select {
	case <-arrived:
	case <-time.After(60 * time.Second):
		t.Fatalf("no request reached Webex:\n%s", w.out.String())
	}
	if !strings.Contains(w.out.String(), "delivering it in an isolated process") {
		t.Fatalf("not isolated:\n%s", w.out.String())
	}
	// Another worker takes the task over while the isolated process waits.
	if err := s.rdb.HIncrBy(ctx, key, "courier_epoch", 1).Err(); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	err := w.wait(t, 60*time.Second)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != worker.ExitTombstoned {
		t.Fatalf("exit %v, want %d", err, worker.ExitTombstoned)
	}
	if killed, err := s.rdb.HGet(ctx, key, "courier_killed").Result(); err != redis.Nil {
		t.Fatalf("a death was counted against the message on the new owner's task: courier_killed %q (%v)", killed, err)
	}
	if out := w.out.String(); strings.Contains(out, "isolated delivery died with its process") {
		t.Fatalf("the message was blamed:\n%s", out)
	}
}
