package retrypolicy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Jitter says how a computed delay d is spread so that many clients that
// failed together do not retry together.
type Jitter uint8

const (
	// JitterEqual draws uniformly from [d/2, d]: the spread of full jitter
	// while keeping half of the delay as a floor, so a retry never fires at
	// once after a server refused us. It is the zero value and the default.
	JitterEqual Jitter = iota
	// JitterFull draws uniformly from [0, d] (AWS's "full jitter"). Spreads
	// load best, but a retry may come immediately.
	JitterFull
	// JitterNone uses d exactly; deterministic, for tests and schedules that
	// must be predictable.
	JitterNone
)

// String names the mode.
func (j Jitter) String() string {
	switch j {
	case JitterEqual:
		return "equal"
	case JitterFull:
		return "full"
	case JitterNone:
		return "none"
	}
	return fmt.Sprintf("Jitter(%d)", uint8(j))
}

// ParseJitter reads "equal", "full" or "none".
func ParseJitter(s string) (Jitter, error) {
	for _, j := range []Jitter{JitterEqual, JitterFull, JitterNone} {
		if j.String() == s {
			return j, nil
		}
	}
	return 0, fmt.Errorf("jitter %q: want equal, full or none", s)
}

// apply spreads d according to the mode.
func (j Jitter) apply(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	d = min(d, math.MaxInt64-1) // rand.Int64N(d+1) must not overflow
	switch j {
	case JitterFull:
		return time.Duration(rand.Int64N(int64(d) + 1))
	case JitterNone:
		return d
	default:
		half := d / 2
		return half + time.Duration(rand.Int64N(int64(d-half)+1))
	}
}

// floor is the smallest delay apply can return for d.
func (j Jitter) floor(d time.Duration) time.Duration {
	switch j {
	case JitterFull:
		return 0
	case JitterNone:
		return d
	default:
		return d / 2
	}
}

// Policy describes in-process attempts.
type Policy struct {
	// MaxAttempts is the number of attempts, the first included. At least 1.
	MaxAttempts int
	// InitialDelay is the delay before the second attempt. Greater than 0.
	InitialDelay time.Duration
	// MaxDelay caps every delay. At least InitialDelay.
	MaxDelay time.Duration
	// Multiplier grows the delay after each failed attempt. At least 1.
	Multiplier float64
	// Jitter spreads each delay; the zero value is JitterEqual.
	Jitter Jitter
}

// Default is the general-purpose preset: 3 attempts, 1s, 2s (then capped at
// 60s), equal jitter.
var Default = Policy{MaxAttempts: 3, InitialDelay: time.Second, MaxDelay: time.Minute, Multiplier: 2, Jitter: JitterEqual}

// Webex is the preset for the Webex API: 3 attempts, 2s then 4s (capped at
// 30s), equal jitter. The longer first delay suits a rate-limited API.
var Webex = Policy{MaxAttempts: 3, InitialDelay: 2 * time.Second, MaxDelay: 30 * time.Second, Multiplier: 2, Jitter: JitterEqual}

// Validate reports every field that breaks its rule, naming the field.
func (p Policy) Validate() error { return p.ValidateNamed(FieldName) }

// ValidateNamed is Validate naming each field as name(field): a program that
// fills the policy from its own settings names those (COURIER_MAX_DELAY).
func (p Policy) ValidateNamed(name func(field string) string) error {
	var errs []error
	if p.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("%s is %d: must be at least 1", name("MaxAttempts"), p.MaxAttempts))
	}
	if p.InitialDelay <= 0 {
		errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name("InitialDelay"), p.InitialDelay))
	}
	if p.MaxDelay < p.InitialDelay {
		errs = append(errs, fmt.Errorf("%s is %v: must be at least %s (%v)", name("MaxDelay"), p.MaxDelay, name("InitialDelay"), p.InitialDelay))
	}
	if !(p.Multiplier >= 1) || math.IsInf(p.Multiplier, 0) {
		errs = append(errs, fmt.Errorf("%s is %v: must be a finite number of at least 1", name("Multiplier"), p.Multiplier))
	}
	if p.Jitter > JitterNone {
		errs = append(errs, fmt.Errorf("%s is %d: must be JitterEqual, JitterFull or JitterNone", name("Jitter"), p.Jitter))
	}
	if len(errs) > 0 {
		return fmt.Errorf("retry policy: %w", errors.Join(errs...))
	}
	return nil
}

// FieldName names a field as itself: the name Validate uses.
func FieldName(field string) string { return field }

// Backoff is the delay after the n-th failed attempt (n from 1), before
// jitter: InitialDelay × Multiplier^(n-1), capped at MaxDelay. It never
// overflows, whatever n.
func (p Policy) Backoff(n int) time.Duration {
	return expDelay(p.InitialDelay, p.Multiplier, n-1, p.MaxDelay)
}

// Delay is Backoff(n) with the policy's jitter applied.
func (p Policy) Delay(n int) time.Duration {
	return p.Jitter.apply(p.Backoff(n))
}

// expDelay is base × mult^exp capped at limit, computed in float64 so that a
// large exp saturates instead of overflowing.
func expDelay(base time.Duration, mult float64, exp int, limit time.Duration) time.Duration {
	if exp < 0 {
		exp = 0
	}
	d := float64(base) * math.Pow(mult, float64(exp))
	if math.IsNaN(d) || d >= float64(limit) {
		return limit
	}
	return time.Duration(d)
}
