package retrypolicy

import (
	"context"
	"time"
)

// Loop is the explicit-loop form of [Do], for callers that need control over
// each attempt (the counterpart of the old RetryContext):
//
//	l := retrypolicy.NewLoop(ctx, retrypolicy.Webex)
//	for l.Next() {
//		if err := call(); err != nil {
//			l.Fail(err)
//		}
//	}
//	if err := l.Err(); err != nil { ... }
//
// Next waits the back-off before every attempt but the first. An attempt that
// does not call Fail counts as a success and ends the loop.
type Loop struct {
	ctx    context.Context
	r      *run
	delay  time.Duration
	failed bool
	done   bool
	err    error
}

// NewLoop starts a loop. An invalid policy ends it before the first attempt,
// with the validation error from Err.
func NewLoop(ctx context.Context, p Policy, opts ...Option) *Loop {
	r, err := newRun(p, opts)
	return &Loop{ctx: ctx, r: r, err: err, done: err != nil}
}

// Next reports whether to make an attempt, after waiting the delay the last
// failure called for. It returns false after a success, a final failure, or
// when the context ends.
func (l *Loop) Next() bool {
	if l.done {
		return false
	}
	if l.r.attempt > 0 && !l.failed {
		l.r.succeeded()
		l.done = true
		return false
	}
	if l.r.attempt > 0 {
		t := time.NewTimer(l.delay)
		select {
		case <-l.ctx.Done():
			t.Stop()
			l.err, l.done = l.r.canceled(l.ctx), true
			return false
		case <-t.C:
		}
	} else if l.ctx.Err() != nil {
		l.err, l.done = context.Cause(l.ctx), true
		return false
	}
	l.r.attempt++
	l.failed = false
	return true
}

// Fail records the current attempt's error and decides whether another
// attempt follows.
func (l *Loop) Fail(err error) {
	if l.done || err == nil {
		return
	}
	d, stop := l.r.failed(l.ctx, err)
	l.failed = true
	if stop != nil {
		l.err, l.done = stop, true
		return
	}
	l.delay = d
}

// Attempt is the number of the current attempt, from 1.
func (l *Loop) Attempt() int {
	if l.r == nil {
		return 0
	}
	return l.r.attempt
}

// Err is nil after a success, else the error the loop ended with, as [Do]
// returns it.
func (l *Loop) Err() error { return l.err }
