package retrypolicy

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"time"
)

// Schedule is the durable redelivery schedule: how long a task waits in the
// queue before its next delivery once in-process attempts are spent. It is a
// pure function of the number of redeliveries so far and the last error, in
// the shape asynq's RetryDelayFunc wants.
type Schedule struct {
	// Base is the delay before the first redelivery. Default 30s.
	Base time.Duration
	// Cap bounds every back-off delay. Default 1h.
	Cap time.Duration
	// Multiplier grows the delay after each redelivery. Default 2.
	Multiplier float64
	// Jitter spreads each delay; the zero value, JitterEqual, keeps half of
	// it as a floor so that Survives has a useful guaranteed bound.
	Jitter Jitter
	// MaxRetryAfter caps a server's Retry-After. Default 1h.
	MaxRetryAfter time.Duration
}

// DefaultSchedule is 30s doubling to 1h with equal jitter.
var DefaultSchedule = Schedule{Base: 30 * time.Second, Cap: time.Hour, Multiplier: 2, Jitter: JitterEqual, MaxRetryAfter: time.Hour}

// WithDefaults fills zero fields from DefaultSchedule.
func (s Schedule) WithDefaults() Schedule {
	s.Base = cmp.Or(s.Base, DefaultSchedule.Base)
	s.Cap = cmp.Or(s.Cap, DefaultSchedule.Cap)
	s.Multiplier = cmp.Or(s.Multiplier, DefaultSchedule.Multiplier)
	s.MaxRetryAfter = cmp.Or(s.MaxRetryAfter, DefaultSchedule.MaxRetryAfter)
	return s
}

// Validate reports every field that breaks its rule.
func (s Schedule) Validate() error { return s.ValidateNamed(FieldName) }

// ValidateNamed is Validate naming each field as name(field).
func (s Schedule) ValidateNamed(name func(field string) string) error {
	var errs []error
	if s.Base <= 0 {
		errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name("Base"), s.Base))
	}
	if s.Cap < s.Base {
		errs = append(errs, fmt.Errorf("%s is %v: must be at least %s (%v)", name("Cap"), s.Cap, name("Base"), s.Base))
	}
	if !(s.Multiplier >= 1) {
		errs = append(errs, fmt.Errorf("%s is %v: must be at least 1", name("Multiplier"), s.Multiplier))
	}
	if s.Jitter > JitterNone {
		errs = append(errs, fmt.Errorf("%s is %d: must be JitterEqual, JitterFull or JitterNone", name("Jitter"), s.Jitter))
	}
	if s.MaxRetryAfter <= 0 {
		errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name("MaxRetryAfter"), s.MaxRetryAfter))
	}
	if len(errs) > 0 {
		return fmt.Errorf("redelivery schedule: %w", errors.Join(errs...))
	}
	return nil
}

// Backoff is the delay before redelivery number retried+1, before jitter and
// rounding.
func (s Schedule) Backoff(retried int) time.Duration {
	return expDelay(s.Base, s.Multiplier, retried, s.Cap)
}

// Delay is the delay to hand to asynq after the retried-th redelivery failed
// with err (retried counts from 0). A Retry-After a retryable error carries
// (a 429, or a 503 that named one) wins
// (capped at MaxRetryAfter); otherwise the jittered back-off. The result is
// rounded with [QueueDelay], so it is at least 1s and never negative.
func (s Schedule) Delay(retried int, err error) time.Duration {
	if d := Classify(err, nil); d.Class.Retryable() && d.RetryAfter > 0 {
		return QueueDelay(min(d.RetryAfter, s.MaxRetryAfter))
	}
	return QueueDelay(s.Jitter.apply(s.Backoff(retried)))
}

// Survives is the guaranteed lower bound of the time n redeliveries span: an
// outage shorter than this is outlived by a task allowed n redeliveries,
// whatever the jitter draws. Each delay is at least the jitter's floor,
// rounded up by QueueDelay, and asynq may fire it up to 1s early.
func (s Schedule) Survives(n int) time.Duration {
	var total time.Duration
	for i := range n {
		g := s.guaranteed(i)
		if total > math.MaxInt64-g { // saturate: huge caps must not wrap around
			return math.MaxInt64
		}
		total += g
	}
	return total
}

// guaranteed is the least time redelivery number retried+1 waits.
func (s Schedule) guaranteed(retried int) time.Duration {
	return QueueDelay(s.Jitter.floor(s.Backoff(retried))) - time.Second
}

// RedeliveriesFor is the fewest redeliveries whose guaranteed span
// (Survives) is at least outage. It gives up at one million.
func (s Schedule) RedeliveriesFor(outage time.Duration) int {
	var total time.Duration
	for n := 0; n < 1_000_000; n++ {
		if total >= outage {
			return n
		}
		total += s.guaranteed(n)
	}
	return 1_000_000
}

// maxQueueDelay keeps QueueDelay's arithmetic clear of overflow (about 36 years).
const maxQueueDelay = time.Duration(1 << 60)

// QueueDelay rounds d up to whole seconds and adds one, so at least 1s.
// asynq stores a task's due time as whole Unix seconds, truncated, so a delay
// handed to it can fire up to a second early; the extra second makes sure a
// server's Retry-After is never undercut.
func QueueDelay(d time.Duration) time.Duration {
	d = min(max(d, 0), maxQueueDelay)
	return (d+time.Second-1)/time.Second*time.Second + time.Second
}
