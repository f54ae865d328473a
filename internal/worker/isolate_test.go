package worker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/worker"
	"github.com/courier-dev/courier/pkg/webex/webextest"
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

// suspect records two deaths of the task's worker: its next delivery is
// isolated.
func (s *setup) suspect(t *testing.T, id string) {
	t.Helper()
	if err := s.rdb.HSet(context.Background(), "asynq:{"+s.queue+"}:t:"+id, "courier_runs", 2).Err(); err != nil {
		t.Fatal(err)
	}
}

// An isolated delivery that finds its task taken over (or cannot reach
// Redis to tell) stops posting and hands the task back: it does not exit
// like a fenced worker, which the worker would count as the message's death.
// Before the fix the isolated process exited 3 and the worker counted it
// toward poison (courier_killed 1) on a task no longer its own.
func TestIsolatedFencedIsNotADeath(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(3 * time.Second), Count: 1})
	id := s.enqueue(t, "slow", "in flight at a takeover")
	s.suspect(t, id)
	key := "asynq:{" + s.queue + "}:t:" + id
	w := startWorker(t, s.env("good")...)
	// The isolated delivery began (courier_runs 3): another worker takes
	// the task over, as fast crash recovery does (its epoch moves on).
	waitFor(t, 30*time.Second, "the isolated delivery to begin", func() bool {
		n, _ := s.rdb.HGet(context.Background(), key, "courier_runs").Int()
		return n == 3
	})
	if err := s.rdb.HIncrBy(context.Background(), key, "courier_epoch", 1).Err(); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := w.wait(t, 30*time.Second); !errors.As(err, &ee) || ee.ExitCode() != worker.ExitTombstoned {
		t.Fatalf("worker exited with %v, want exit %d (fenced)", err, worker.ExitTombstoned)
	}
	if killed, err := s.rdb.HGet(context.Background(), key, "courier_killed").Result(); err != redis.Nil {
		t.Fatalf("courier_killed = %q (%v): a takeover counted as the message's death", killed, err)
	}
	if out := w.out.String(); strings.Contains(out, "isolated delivery died") {
		t.Fatalf("a fenced isolated delivery taken for a death:\n%s", out)
	}
}

// A suspect is isolated in a copy of the running worker, even after its
// binary was replaced on disk (an upgrade) or removed. Before the fix the
// worker started whatever the path then held: here a new version that
// refuses the old flags, so the suspect was handed back forever, neither
// delivered nor dead-lettered.
func TestIsolatedAfterUpgrade(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	bin := filepath.Join(t.TempDir(), "worker")
	copyFile(t, workerBin, bin, 0o755)
	w := startBinary(t, bin, s.env("good")...)
	waitFor(t, 30*time.Second, "the worker to start", func() bool { return strings.Contains(w.out.String(), "worker started") })
	upgraded := filepath.Join(filepath.Dir(bin), "worker.new")
	if err := os.WriteFile(upgraded, []byte("#!/bin/sh\necho 'worker: flag provided but not defined' >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(upgraded, bin); err != nil {
		t.Fatal(err)
	}
	id := s.enqueue(t, "r", "suspect after an upgrade")
	s.suspect(t, id)
	waitFor(t, 30*time.Second, "the suspect's delivery", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	if req, _ := s.sim.Counts("r"); req != 1 {
		t.Fatalf("%d requests, want 1", req)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// An isolated delivery runs with the worker's environment minus the
// secrets of the parts it does not run: the admin server's password and the
// relay's tokens never reach the process a suspect message is delivered in,
// and it still delivers (its configuration loads without them).
func TestIsolatedDeliveryLeavesOutAdminAndRelaySecrets(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Room: "suspect", Delay: webextest.Duration(3 * time.Second), Count: 1}) // keeps the isolated process alive to be read
	id := s.enqueue(t, "suspect", "delivered in isolation")
	// Two deliveries of it died with their worker: a suspect.
	if err := s.rdb.HSet(context.Background(), "asynq:{"+s.queue+"}:t:"+id, "courier_runs", 2).Err(); err != nil {
		t.Fatal(err)
	}
	port, _ := redistest.FreePort()
	w := startWorker(t, s.env("good", "COURIER_ADMIN_USER=ops", "COURIER_ADMIN_PASSWORD=admin-secret-x",
		fmt.Sprintf("COURIER_RELAY_ADDR=127.0.0.1:%d", port), "COURIER_RELAY_TOKENS=relay-secret-y=default")...)
	var environ string
	waitFor(t, 30*time.Second, "the isolated delivery process", func() bool {
		// Between fork and exec a child shows its parent's environment:
		// wait for the one it was started with.
		environ = childEnviron(w.cmd.Process.Pid)
		return strings.Contains(environ, worker.IsolatedEnv+"=1")
	})
	if !strings.Contains(environ, "WEBEX_TOKEN=good") {
		t.Fatalf("the isolated process's environment lacks what it needs: %q", environ)
	}
	for _, secret := range []string{"admin-secret-x", "relay-secret-y"} {
		if strings.Contains(environ, secret) {
			t.Errorf("the isolated process got %s: %q", secret, environ)
		}
	}
	waitFor(t, 30*time.Second, "the isolated delivery", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	if n := len(s.sim.Messages("suspect")); n != 1 {
		t.Fatalf("%d messages delivered, want 1", n)
	}
}

// childEnviron is the environment of a child process of pid, "" while it
// has none (Linux's /proc).
func childEnviron(pid int) string {
	threads, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid)) // any of its threads may have started it
	for _, th := range threads {
		b, _ := os.ReadFile(th)
		for _, child := range strings.Fields(string(b)) {
			if env, err := os.ReadFile("/proc/" + child + "/environ"); err == nil {
				return strings.ReplaceAll(string(env), "\x00", "\n")
			}
		}
	}
	return ""
}
