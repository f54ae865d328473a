package lifecycle_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/lifecycle"
)

// journal records what the parts did, in order.
type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.lines = append(j.lines, s)
}

func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.lines)
}

// server is a part that runs until interrupted, or until crash is closed.
func server(j *journal, name string, crash <-chan error) lifecycle.Part {
	stop := make(chan struct{})
	return lifecycle.Part{
		Name:  name,
		Start: func(context.Context) error { j.add("start " + name); return nil },
		Run: func() error {
			select {
			case <-stop:
				return nil
			case err := <-crash:
				return err
			}
		},
		Interrupt: func() { j.add("stop " + name); close(stop) },
	}
}

func failing(j *journal, name string, err error) lifecycle.Part {
	return lifecycle.Part{Name: name, Start: func(context.Context) error { j.add("start " + name); return err },
		Interrupt: func() { j.add("stop " + name) }}
}

func run(t *testing.T, ctx context.Context, g *lifecycle.Group) (error, []error) {
	t.Helper()
	var causes []error
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx, func(c error) { causes = append(causes, c) }) }()
	select {
	case err := <-done:
		return err, causes
	case <-time.After(10 * time.Second):
		t.Fatal("the group did not stop")
		return nil, nil
	}
}

func TestStartFailureStopsStartedPartsInReverse(t *testing.T) {
	t.Parallel()
	j := &journal{}
	boom := errors.New("port taken")
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(server(j, "b", nil))
	g.Add(failing(j, "c", boom))
	g.Add(server(j, "d", nil))
	err, causes := run(t, context.Background(), &g)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "c" || !pe.Start || !errors.Is(err, boom) || err.Error() != "start c: port taken" {
		t.Fatalf("err = %v", err)
	}
	if want := []string{"start a", "start b", "start c", "stop b", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
	if len(causes) != 1 || causes[0] != err {
		t.Fatalf("stopping called with %v", causes)
	}
}

func TestCrashStopsEveryPartInReverse(t *testing.T) {
	t.Parallel()
	j := &journal{}
	crash := make(chan error, 1)
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(lifecycle.Part{Name: "check", Start: func(context.Context) error { j.add("start check"); return nil }})
	g.Add(server(j, "b", crash))
	g.Add(server(j, "c", nil))
	crash <- errors.New("listener closed")
	err, _ := run(t, context.Background(), &g)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "b" || pe.Start || err.Error() != "b: listener closed" {
		t.Fatalf("err = %v", err)
	}
	if want := []string{"start a", "start check", "start b", "start c", "stop c", "stop b", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
}

func TestPartEndingQuietlyIsAFailure(t *testing.T) {
	t.Parallel()
	j := &journal{}
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(lifecycle.Part{Name: "quits", Run: func() error { return nil }})
	err, _ := run(t, context.Background(), &g)
	if !errors.Is(err, lifecycle.ErrEnded) || err.Error() != "quits: ended unexpectedly" {
		t.Fatalf("err = %v", err)
	}
	if want := []string{"start a", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
}

func TestContextEndStopsEveryPartInReverse(t *testing.T) {
	t.Parallel()
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(server(j, "b", nil))
	g.Add(lifecycle.Part{Name: "cancel", Start: func(context.Context) error { cancel(); return nil }})
	err, causes := run(t, ctx, &g)
	if err != nil || len(causes) != 1 || causes[0] != nil {
		t.Fatalf("err = %v, causes %v", err, causes)
	}
	if want := []string{"start a", "start b", "stop b", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
}

// A signal while a part is starting (waiting for Redis) is a clean stop,
// not that part's failure.
func TestContextEndDuringStartIsCleanStop(t *testing.T) {
	t.Parallel()
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(lifecycle.Part{Name: "slow", Start: func(ctx context.Context) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}})
	g.Add(server(j, "never", nil))
	err, _ := run(t, ctx, &g)
	if err != nil {
		t.Fatalf("err = %v, want nil", err)
	}
	if want := []string{"start a", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
}

// A part that ends while a later part is still starting (the admin server
// failing while the tokens are checked) cancels that start and is the
// cause: the group does not wait for the start to finish by itself.
func TestPartEndingDuringALaterStartStopsTheGroup(t *testing.T) {
	t.Parallel()
	j := &journal{}
	crash := make(chan error, 1)
	var g lifecycle.Group
	g.Add(server(j, "a", crash))
	g.Add(lifecycle.Part{Name: "slow", Start: func(ctx context.Context) error {
		j.add("start slow")
		crash <- errors.New("listener closed")
		<-ctx.Done()
		return ctx.Err()
	}})
	g.Add(server(j, "never", nil))
	err, causes := run(t, context.Background(), &g)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "a" || pe.Start || err.Error() != "a: listener closed" {
		t.Fatalf("err = %v", err)
	}
	if want := []string{"start a", "start slow", "stop a"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
	if len(causes) != 1 || causes[0] != err {
		t.Fatalf("stopping called with %v", causes)
	}
}

// A part that does not stop (an Interrupt stuck on a hung Redis, a Run that
// ignores its interrupt) does not hold the process: after StopTimeout Run
// returns a *StopError naming the parts still stopping.
// A part that does not stop (an Interrupt stuck on a hung Redis, a Run that
// ignores its interrupt) does not hold the process: after StopTimeout Run
// returns a *StopError naming the parts not stopped.
func TestStopTimeoutNamesThePartsNotStopped(t *testing.T) {
	t.Parallel()
	j := &journal{}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithCancel(context.Background())
	g := lifecycle.Group{StopTimeout: 100 * time.Millisecond}
	g.Add(server(j, "a", nil))
	g.Add(lifecycle.Part{Name: "stuck", Interrupt: func() { j.add("stop stuck"); <-release }})
	g.Add(lifecycle.Part{Name: "deaf", Run: func() error { <-release; return nil }})
	g.Add(lifecycle.Part{Name: "cancel", Start: func(context.Context) error { cancel(); return nil }})
	err, _ := run(t, ctx, &g)
	var se *lifecycle.StopError
	if !errors.As(err, &se) || !errors.Is(err, lifecycle.ErrStopTimeout) || se.Cause != nil || !slices.Equal(se.Parts, []string{"a", "stuck", "deaf"}) {
		t.Fatalf("err = %v", err)
	}
	if want := "the stop did not finish in time: after 100ms, not stopped: a, stuck, deaf"; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
	if want := []string{"start a", "stop stuck"}; !slices.Equal(j.get(), want) {
		t.Fatalf("journal %q, want %q", j.get(), want)
	}
}

// A part's failure stays the cause when the stop then outlasts its bound.
func TestStopTimeoutKeepsTheCause(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	boom := errors.New("port taken")
	g := lifecycle.Group{StopTimeout: 100 * time.Millisecond}
	g.Add(lifecycle.Part{Name: "stuck", Interrupt: func() { <-release }})
	g.Add(lifecycle.Part{Name: "relay", Start: func(context.Context) error { return boom }})
	err, _ := run(t, context.Background(), &g)
	if !errors.Is(err, boom) || !errors.Is(err, lifecycle.ErrStopTimeout) ||
		err.Error() != "start relay: port taken; then the stop did not finish in time: after 100ms, not stopped: stuck" {
		t.Fatalf("err = %v", err)
	}
}

// A part whose Run panics stops the group like a part that failed: the
// other parts stop in reverse order and the panic, with its stack, is the
// cause.
func TestPanicInRunStopsEveryPartInReverse(t *testing.T) {
	t.Parallel()
	j := &journal{}
	var g lifecycle.Group
	g.Add(server(j, "a", nil))
	g.Add(lifecycle.Part{Name: "buggy", Run: func() error { panic("nil map") }})
	g.Add(server(j, "b", nil))
	err, _ := run(t, context.Background(), &g)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "buggy" || pe.Start || !strings.HasPrefix(err.Error(), "buggy: panic: nil map\ngoroutine ") {
		t.Fatalf("err = %v", err)
	}
	if got := j.get(); !slices.Equal(got, []string{"start a", "start b", "stop b", "stop a"}) && !slices.Equal(got, []string{"start a", "stop a"}) {
		t.Fatalf("journal %q", got)
	}
}
