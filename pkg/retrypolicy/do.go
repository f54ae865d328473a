package retrypolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/sethvargo/go-retry"
)

// ErrBudgetExhausted is matched (errors.Is) by the error [Do] returns when
// the next delay would overrun the in-process budget.
var ErrBudgetExhausted = errors.New("in-process retry budget exhausted")

// BudgetError is returned when attempts remained but the next delay did not
// fit in the budget (the context's deadline or WithMaxWait). It wraps the last
// error and keeps its classification, so a durable layer can take over and
// wait Wait before the next attempt.
type BudgetError struct {
	// Err is the last attempt's error.
	Err error
	// Attempts is the number of attempts made.
	Attempts int
	// Wait is the delay that did not fit: the server's Retry-After when it
	// named one, else the next back-off.
	Wait time.Duration
	// Decision is the classification of Err.
	Decision Decision
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("retry budget exhausted after %d attempts (next wait %s): %v", e.Attempts, e.Wait, e.Err)
}

// Unwrap exposes both ErrBudgetExhausted and the last error.
func (e *BudgetError) Unwrap() []error { return []error{ErrBudgetExhausted, e.Err} }

// RetryClass keeps the last error's class and Retry-After.
func (e *BudgetError) RetryClass() (Class, time.Duration) {
	return e.Decision.Class, e.Decision.RetryAfter
}

// Option adjusts one call of [Do], [DoValue] or [NewLoop].
type Option func(*options)

type options struct {
	logger    *slog.Logger
	name      string
	rules     *Rules
	maxWait   time.Duration
	waited    *time.Duration
	onRetry   func(attempt int, err error, delay time.Duration)
	onFailure func(err error, attempts int)
}

// WithLogger logs each retry (warn, "attempt failed, retrying") and the
// success after a retry (info, "succeeded after retrying") through l, with
// the details in fields (op, attempt, max_attempts, delay, class, reason,
// error). The end of a failed call is logged at debug only ("giving up"): the
// error is returned, and whoever handles it logs it once. Without a logger
// nothing is logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithName names the operation in log records ("op").
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithRules extends classification with the caller's retryable and
// non-retryable errors.
func WithRules(r *Rules) Option { return func(o *options) { o.rules = r } }

// WithMaxWait bounds the total time spent waiting between attempts. A delay
// that would cross it ends the call with a [*BudgetError] instead. The
// context's deadline bounds it too. 0 (the default) means no bound besides the
// deadline; with neither, no single wait exceeds the policy's MaxDelay (a
// longer Retry-After ends the call with a [*BudgetError]).
func WithMaxWait(d time.Duration) Option { return func(o *options) { o.maxWait = d } }

// WithWaitedSoFar shares one WithMaxWait budget between successive calls:
// the call counts *waited as already spent and adds its own waits to it, so
// calls given the same pointer wait at most WithMaxWait in all. The calls must
// not run at the same time.
func WithWaitedSoFar(waited *time.Duration) Option { return func(o *options) { o.waited = waited } }

// OnRetry is called before each wait with the failed attempt's number (from
// 1), its error and the delay to come.
func OnRetry(f func(attempt int, err error, delay time.Duration)) Option {
	return func(o *options) { o.onRetry = f }
}

// OnFailure is called once when the call gives up, with the last error and
// the number of attempts made.
func OnFailure(f func(err error, attempts int)) Option {
	return func(o *options) { o.onFailure = f }
}

// Do calls fn until it succeeds, returns an error that is not worth retrying,
// runs out of attempts or budget, or ctx ends. It returns nil or the last
// error fn returned: bare when attempts ran out or the error was permanent, as
// a [*BudgetError] when the budget ran out, and joined with the context's
// error when ctx ended during a wait.
func Do(ctx context.Context, p Policy, fn func(context.Context) error, opts ...Option) error {
	_, err := DoValue(ctx, p, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, fn(ctx)
	}, opts...)
	return err
}

// DoValue is [Do] for a function that returns a value.
func DoValue[T any](ctx context.Context, p Policy, fn func(context.Context) (T, error), opts ...Option) (T, error) {
	var zero T
	r, err := newRun(p, opts)
	if err != nil {
		return zero, err
	}
	var final error // set when r decided to stop
	var delay time.Duration
	backoff := retry.BackoffFunc(func() (time.Duration, bool) { return delay, false })
	v, err := retry.DoValue(ctx, backoff, func(ctx context.Context) (T, error) {
		r.attempt++
		v, err := fn(ctx)
		if err == nil {
			r.succeeded()
			return v, nil
		}
		d, stop := r.failed(ctx, err)
		if stop != nil {
			// go-retry must not see stop itself: fn may have returned
			// go-retry's own retryable marker, which would make it go on.
			final = stop
			return zero, errStop
		}
		delay = d
		return zero, retry.RetryableError(err)
	})
	switch {
	case err == nil:
		return v, nil
	case final != nil:
		return zero, final
	default: // ctx ended before or during a wait; go-retry returns only its cause
		return zero, r.canceled(ctx)
	}
}

// errStop tells go-retry to stop; Do returns the real error instead.
var errStop = errors.New("retrypolicy: stop")

// run is the state of one retried call, shared by Do and Loop.
type run struct {
	p       Policy
	o       options
	attempt int
	waited  time.Duration
	last    error
}

func newRun(p Policy, opts []Option) (*run, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	r := &run{p: p}
	for _, opt := range opts {
		opt(&r.o)
	}
	if r.o.waited != nil {
		r.waited = max(*r.o.waited, 0)
	}
	return r, nil
}

func (r *run) succeeded() {
	if r.attempt > 1 && r.o.logger != nil {
		r.o.logger.Info(msgSucceeded, "op", r.o.name, "attempt", r.attempt, "max_attempts", r.p.MaxAttempts)
	}
}

// failed decides what follows a failed attempt: the delay before the next
// one, or the error to end the call with.
func (r *run) failed(ctx context.Context, err error) (time.Duration, error) {
	r.last = err
	if ctx.Err() != nil {
		return 0, r.canceled(ctx)
	}
	dec := Classify(err, r.o.rules)
	if !dec.Class.Retryable() {
		r.giveUp(err, stopPermanent, dec)
		return 0, err
	}
	if r.attempt >= r.p.MaxAttempts {
		r.giveUp(err, stopAttempts, dec)
		return 0, err
	}
	delay := r.p.Delay(r.attempt)
	if dec.RetryAfter > 0 {
		delay = dec.RetryAfter
	}
	if r.overBudget(ctx, delay) {
		berr := &BudgetError{Err: err, Attempts: r.attempt, Wait: delay, Decision: dec}
		r.giveUp(berr, stopBudget, dec)
		return 0, berr
	}
	if r.o.onRetry != nil {
		r.o.onRetry(r.attempt, err, delay)
	}
	if r.o.logger != nil {
		r.o.logger.Warn(msgRetrying, "op", r.o.name, "attempt", r.attempt, "max_attempts", r.p.MaxAttempts, "delay", delay,
			"class", dec.Class.String(), "reason", dec.Reason, "error", err.Error())
	}
	r.waited = addSat(r.waited, delay)
	if r.o.waited != nil {
		*r.o.waited = r.waited
	}
	return delay, nil
}

// overBudget reports whether delay does not fit. The budget is WithMaxWait
// and the context's deadline; with neither, no single wait may exceed the
// policy's MaxDelay, so a server's long Retry-After ends the call instead of
// blocking it for up to an hour.
func (r *run) overBudget(ctx context.Context, delay time.Duration) bool {
	// Compared as a difference: waited+delay can overflow for a server's
	// huge Retry-After, and a wrapped sum would pass the check.
	if r.o.maxWait > 0 && delay > r.o.maxWait-r.waited {
		return true
	}
	deadline, ok := ctx.Deadline()
	if ok {
		return time.Until(deadline) < delay
	}
	return r.o.maxWait <= 0 && delay > r.p.MaxDelay
}

// addSat is a+b for non-negative durations, saturating instead of wrapping.
func addSat(a, b time.Duration) time.Duration {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// Log messages of Do and Loop: constant, with the details in fields.
const (
	msgRetrying  = "attempt failed, retrying"
	msgSucceeded = "succeeded after retrying"
	msgGaveUp    = "giving up"
)

// Why a call gave up, in the "stop" field of the msgGaveUp record.
const (
	stopPermanent = "not retryable"
	stopAttempts  = "attempts exhausted"
	stopBudget    = "next wait exceeds the budget"
)

// giveUp reports the end of the call. The error is returned to the caller,
// who handles it (logs it once), so the record here is at debug level only.
func (r *run) giveUp(err error, stop string, dec Decision) {
	if r.o.onFailure != nil {
		r.o.onFailure(err, r.attempt)
	}
	if r.o.logger != nil {
		r.o.logger.Debug(msgGaveUp, "op", r.o.name, "stop", stop, "attempt", r.attempt, "max_attempts", r.p.MaxAttempts,
			"class", dec.Class.String(), "reason", dec.Reason, "error", err.Error())
	}
}

// canceled is the error for a call whose context ended: the context's cause
// joined with the last attempt's error, so neither is lost.
func (r *run) canceled(ctx context.Context) error {
	cause := context.Cause(ctx)
	if r.last == nil {
		return cause
	}
	err := fmt.Errorf("%w (last error: %w)", cause, r.last)
	if r.o.onFailure != nil {
		r.o.onFailure(err, r.attempt)
	}
	return err
}
