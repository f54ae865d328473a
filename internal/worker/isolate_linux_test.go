package worker_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// children lists the pids of a process's children.
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// alive reports whether pid runs (or is stopped): not gone, not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z' && s[i+2] != 'X'
}

// An isolated delivery process never outlives its worker, even when it is
// stopped (SIGSTOP) and cannot see its input close: the kernel kills it
// with the worker. Before the fix it stayed behind, stopped, and would have
// finished its request whenever it was continued.
func TestIsolatedDiesWithItsWorker(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(time.Minute), Count: 1})
	id := s.enqueue(t, "slow", "in flight when the worker dies")
	s.suspect(t, id)
	w := startWorker(t, s.env("good")...)
	key := "asynq:{" + s.queue + "}:t:" + id
	waitFor(t, 30*time.Second, "the isolated delivery to begin", func() bool {
		n, _ := s.rdb.HGet(context.Background(), key, "courier_runs").Int()
		return n == 3
	})
	kids := children(w.cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("worker has children %v, want one isolated delivery", kids)
	}
	child := kids[0]
	t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
	if err := syscall.Kill(child, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the stopped isolated process to die with its worker", func() bool { return !alive(child) })
}

// A worker paused (SIGSTOP) for longer than the isolated process's silence
// bound, while that process delivers, does not take it for frozen when it
// resumes: the lines written meanwhile wait in the pipe. (Fast crash
// recovery is off: it would rightly take the paused worker's task over.)
// Before the fix the bound's timer, expired during the pause, fired before
// those lines were read: the process was killed in the middle of its
// delivery and the message handed back.
func TestPausedWorkerKeepsItsIsolatedDelivery(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	// The isolated process waits 9 s twice (503 with Retry-After), then
	// delivers: it is alive, waiting, when its worker resumes.
	s.sim.AddFault(webextest.Fault{Room: "slow", Status: 503, RetryAfter: webextest.Duration(9 * time.Second), Count: 2})
	id := s.enqueue(t, "slow", "delivered while its worker is paused")
	s.suspect(t, id)
	w := startWorker(t, s.env("good", "COURIER_RECOVERY_AFTER=0")...)
	key := "asynq:{" + s.queue + "}:t:" + id
	waitFor(t, 30*time.Second, "the isolated delivery to begin", func() bool {
		n, _ := s.rdb.HGet(context.Background(), key, "courier_runs").Int()
		return n == 3
	})
	pid := w.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(17 * time.Second) // the fault: a pause beyond the 15 s silence bound
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the suspect's delivery", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	if out := w.out.String(); strings.Contains(out, "stopped answering") {
		t.Fatalf("a live isolated process taken for frozen after its worker's pause:\n%s", out)
	}
	if _, accepted := s.sim.Counts("slow"); accepted != 1 {
		t.Fatalf("%d messages accepted, want 1", accepted)
	}
}
