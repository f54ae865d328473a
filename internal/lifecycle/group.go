// Package lifecycle runs a process's parts as one ordered group, in the
// manner of oklog/run: each part has a run and an interrupt. Parts start in
// order, each once the one before is up; the first part to end (or to fail
// its start), or the context ending, stops every started part in reverse
// order, so that a failed start, a signal and a crash all shut down the
// same way. Group.StopTimeout bounds that stop, so that a part stuck in it
// (on a hung Redis) cannot hold the process.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrEnded is the cause when a part's Run returns nil while the group is
// still running: a part that should run until interrupted stopped by itself.
var ErrEnded = errors.New("ended unexpectedly")

// Part is one piece of the process. Every field may be nil.
type Part struct {
	// Name says which part failed in a *PartError.
	Name string
	// Start brings the part up and returns once it is up (a check passed, a
	// listener bound, a server started). An error stops the parts already
	// started. ctx ends when the group stops.
	Start func(ctx context.Context) error
	// Run blocks while the part works and returns when Interrupt is called;
	// returning earlier, with or without an error, or panicking, stops the
	// group. nil: the part has nothing that runs (a check, a resource).
	Run func() error
	// Interrupt makes Run return and releases what Start acquired. It is
	// called once, if Start succeeded, after every part started later has
	// been interrupted (in turn; Run returns after Interrupt was called).
	// A part whose Interrupt does not return holds up the parts before it
	// until Group.StopTimeout.
	Interrupt func()
}

// PartError says which part ended the group and how.
type PartError struct {
	Part string
	// Start is true when the part failed to start, false when its Run ended.
	Start bool
	Err   error
}

func (e *PartError) Error() string {
	if e.Start {
		return fmt.Sprintf("start %s: %v", e.Part, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Part, e.Err)
}

func (e *PartError) Unwrap() error { return e.Err }

// Group is an ordered set of parts. The zero value is empty and ready.
type Group struct {
	parts []Part

	// StopTimeout bounds the stop: once it began, Run returns after this
	// long even if a part's Interrupt or Run has not returned. 0: no bound.
	StopTimeout time.Duration
}

// Add appends a part: it starts after, and stops before, the parts added
// earlier.
func (g *Group) Add(p Part) { g.parts = append(g.parts, p) }

// Run starts the parts in order and waits until ctx ends or a part's Run
// returns (a part that ends while a later one starts cancels that start);
// then it interrupts the started parts in reverse order, waits for every Run
// to return, and returns the cause: nil when ctx ended (also during
// start-up), else a *PartError. stopping, when not nil, is called once with
// that cause before the first part is interrupted. When StopTimeout is set
// and the stop takes longer, Run returns at once with a *StopError naming
// the parts not stopped, and leaves them behind.
func (g *Group) Run(ctx context.Context, stopping func(cause error)) error {
	startCtx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	ended := make(chan *PartError, len(g.parts))
	var running sync.WaitGroup
	live := &liveParts{count: map[string]int{}}
	started := 0
	var cause error
	for _, p := range g.parts {
		if err := runStart(startCtx, p); err != nil {
			select {
			case e := <-ended: // an earlier part ended, which cancelled this start
				cause = e
			default:
				if ctx.Err() == nil {
					cause = &PartError{Part: p.Name, Start: true, Err: err}
				}
			}
			break
		}
		started++
		if p.Run != nil {
			live.add(p.Name, 1)
			running.Go(func() {
				err := runPart(p.Run)
				if err == nil {
					err = ErrEnded
				}
				ended <- &PartError{Part: p.Name, Err: err}
				live.add(p.Name, -1)
				cancelStart()
			})
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case e := <-ended:
			cause = e
		default:
		}
		if cause != nil {
			break
		}
	}
	if cause == nil && ctx.Err() == nil && started == len(g.parts) {
		select {
		case <-ctx.Done():
		case e := <-ended:
			cause = e
		}
	}
	cancelStart()
	if stopping != nil {
		stopping(cause)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for i := started - 1; i >= 0; i-- {
			if p := g.parts[i]; p.Interrupt != nil {
				live.add(p.Name, 1)
				p.Interrupt()
				live.add(p.Name, -1)
			}
		}
		running.Wait()
	}()
	if g.StopTimeout <= 0 {
		<-stopped
		return cause
	}
	t := time.NewTimer(g.StopTimeout)
	defer t.Stop()
	select {
	case <-stopped:
		return cause
	case <-t.C:
		return &StopError{Cause: cause, After: g.StopTimeout, Parts: live.list(g.parts)}
	}
}

// StopError says that the stop outlasted Group.StopTimeout.
type StopError struct {
	// Cause is what ended the group (nil: the context).
	Cause error
	// After is the StopTimeout.
	After time.Duration
	// Parts are the parts whose Run or Interrupt has not returned, in start
	// order.
	Parts []string
}

// ErrStopTimeout matches a *StopError.
var ErrStopTimeout = errors.New("the stop did not finish in time")

func (e *StopError) Error() string {
	msg := fmt.Sprintf("%v: after %v, not stopped: %s", ErrStopTimeout, e.After, strings.Join(e.Parts, ", "))
	if e.Cause != nil {
		return e.Cause.Error() + "; then " + msg
	}
	return msg
}

func (e *StopError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrStopTimeout}
	}
	return []error{ErrStopTimeout, e.Cause}
}

// liveParts counts, by part name, the Runs and Interrupts that have not
// returned.
type liveParts struct {
	mu    sync.Mutex
	count map[string]int
}

func (l *liveParts) add(name string, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count[name] += n
}

// list names the live parts once each, in the order of parts.
func (l *liveParts) list(parts []Part) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for _, p := range parts {
		if l.count[p.Name] > 0 && !slices.Contains(names, p.Name) {
			names = append(names, p.Name)
		}
	}
	return names
}

// runPart runs a part's Run; a panic in it becomes its error, so that the
// other parts still stop in order (deliveries under way finish) instead of
// the process dying with them.
func runPart(run func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return run()
}

func runStart(ctx context.Context, p Part) error {
	if p.Start == nil {
		return nil
	}
	return p.Start(ctx)
}
