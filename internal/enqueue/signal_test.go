package enqueue

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `enqueue --jsonl FIFO` with no writer waits, as a pipe should; a first
// SIGTERM cannot interrupt the open, a second ends the process at once.
func TestSecondSignalEndsAStuckRun(t *testing.T) {
	if os.Getenv("COURIER_TEST_FLAKY") == "" {
		// Known defect (issue 16, item 8): about one run in three, the second
		// SIGTERM is not acted on while a thread blocks in the FIFO's open, so
		// the process goes on until the writer comes. Kept out of CI until it
		// is found; run it with COURIER_TEST_FLAKY=1.
		t.Skip("flaky: second signal during a blocked FIFO open; set COURIER_TEST_FLAKY=1")
	}
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
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// SIGTERM once a thread waits in the FIFO's open (the signal handlers
	// are in place by then); the second once the first was delivered (two
	// pending signals would merge into one).
	waitOpen(t, cmd.Process.Pid)
	for range 2 {
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("%v; stderr %q, exit %v", err, stderr.String(), <-done)
		}
		waitStatus(t, cmd.Process.Pid, "ShdPnd", false)
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

// waitStatus polls the SIGTERM bit of a signal mask in /proc/PID/status
// until it is set (want true) or clear; a process that ended counts as clear.
func waitStatus(t *testing.T, pid int, field string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		set := false
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				mask, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				set = mask&(1<<(uint(syscall.SIGTERM)-1)) != 0
			}
		}
		if err == nil && set == want || err != nil && !want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s SIGTERM bit never %v", field, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
