package enqueue

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `enqueue --jsonl FIFO` with no writer waits, as a pipe should; a first
// SIGTERM cannot interrupt the open (the process says it is stopping), a
// second ends the process at once.
func TestSecondSignalEndsAStuckRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "enqueue")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/courier-dev/courier/cmd/enqueue").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	fifo := filepath.Join(dir, "lines")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--jsonl", fifo)
	cmd.Env = []string{"REDIS_URL=" + newCLI(t).url}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// SIGTERM once a thread waits in the FIFO's open (the signal handlers
	// are in place by then); the second once the process said it stops:
	// Go's runtime merges a second SIGTERM that comes before the first was
	// handed over (the kernel's pending bit is clear by then: not enough).
	waitOpen(t, cmd.Process.Pid)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("%v; stderr %q, exit %v", err, stderr.String(), <-done)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "stopping; a second signal exits now") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("the first signal was not acknowledged; stderr %q, exit %v", stderr.String(), <-done)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("%v; stderr %q, exit %v", err, stderr.String(), <-done)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != ExitFailure || !strings.Contains(stderr.String(), "exiting now") {
			t.Fatalf("exit %v, stderr %q", err, stderr.String())
		}
	case <-time.After(30 * time.Second): // generous: CI runs this beside the -race suite on 2 cores
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("still running after two signals; stderr %q", stderr.String())
	}
}

// waitOpen polls until a thread of pid waits for a FIFO's writer.
func waitOpen(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
		for _, f := range tasks {
			if b, _ := os.ReadFile(f); strings.Contains(string(b), "fifo") || strings.Contains(string(b), "partner") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the process never waited in the FIFO's open")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
