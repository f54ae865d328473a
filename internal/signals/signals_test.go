package signals_test

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/signals"
)

// The first signal cancels the context; the second ends the process.
func TestSecondSignalExits(t *testing.T) {
	exited := make(chan os.Signal, 1)
	firsts := make(chan os.Signal, 1)
	ctx, stop := signals.Context(context.Background(), func(s os.Signal) { firsts <- s }, func(s os.Signal) { exited <- s })
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("first signal did not cancel")
	}
	select {
	case s := <-firsts:
		if s != syscall.SIGTERM {
			t.Fatalf("first: signal %v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first was not called")
	}
	select {
	case <-exited:
		t.Fatal("exit after one signal")
	default:
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-exited:
		if s != os.Interrupt {
			t.Fatalf("signal %v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second signal did not end the process")
	}
}
