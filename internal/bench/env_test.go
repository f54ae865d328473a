package bench

import (
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A worker that exits by itself is reported; one the harness stops is not.
func TestProcReportsExitsItDidNotCause(t *testing.T) {
	t.Parallel()
	halted, err := Start(io.Discard, "sh", []string{"-c", "exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for halted.Unexpected() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var ee *exec.ExitError
	if err := halted.Unexpected(); err == nil || !strings.Contains(err.Error(), "exited by itself") {
		t.Fatalf("a worker exiting 3 by itself: %v", err)
	} else if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("exit code not kept: %v", err)
	}
	killed, err := Start(io.Discard, "sleep", []string{"30"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	killed.Kill()
	if err := killed.Unexpected(); err != nil {
		t.Fatalf("a worker the harness killed: %v", err)
	}
}
