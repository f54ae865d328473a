package retrypolicy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sethvargo/go-retry"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fast is a policy of exact millisecond delays for tests.
var fast = Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond, Multiplier: 2, Jitter: JitterNone}

// failing returns a function that fails with errs in turn, then succeeds.
func failing(calls *int, errs ...error) func(context.Context) error {
	return func(context.Context) error {
		*calls++
		if *calls <= len(errs) {
			return errs[*calls-1]
		}
		return nil
	}
}

type retryCall struct {
	attempt int
	err     error
	delay   time.Duration
}

func TestDo(t *testing.T) {
	t.Parallel()
	reset := syscall.ECONNRESET
	invalid := errors.New("invalid room id")
	tests := []struct {
		name      string
		errs      []error
		wantErr   error
		wantCalls int
		wantDelay []time.Duration // OnRetry delays
		failures  int             // OnFailure calls
	}{
		{"first attempt", nil, nil, 1, nil, 0},
		{"transient then success", []error{reset}, nil, 2, []time.Duration{time.Millisecond}, 0},
		{"two transient then success", []error{reset, reset}, nil, 3, []time.Duration{time.Millisecond, 2 * time.Millisecond}, 0},
		{"always transient", []error{reset, reset, reset, reset}, reset, 3, []time.Duration{time.Millisecond, 2 * time.Millisecond}, 1},
		{"permanent at once", []error{invalid}, invalid, 1, nil, 1},
		{"transient then permanent", []error{reset, invalid}, invalid, 2, []time.Duration{time.Millisecond}, 1},
		{"retry after replaces delay", []error{MarkRetryAfter(reset, 3*time.Millisecond)}, nil, 2, []time.Duration{3 * time.Millisecond}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			calls, failures := 0, 0
			var retries []retryCall
			err := Do(context.Background(), fast, failing(&calls, tt.errs...),
				OnRetry(func(a int, err error, d time.Duration) { retries = append(retries, retryCall{a, err, d}) }),
				OnFailure(func(err error, n int) {
					failures++
					if n != calls {
						t.Errorf("OnFailure attempts = %d, want %d", n, calls)
					}
				}))
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if failures != tt.failures {
				t.Errorf("OnFailure called %d times, want %d", failures, tt.failures)
			}
			if len(retries) != len(tt.wantDelay) {
				t.Fatalf("OnRetry called %d times, want %d", len(retries), len(tt.wantDelay))
			}
			for i, r := range retries {
				if r.attempt != i+1 || r.delay != tt.wantDelay[i] || r.err == nil {
					t.Errorf("OnRetry #%d = %+v, want attempt %d delay %v", i, r, i+1, tt.wantDelay[i])
				}
			}
		})
	}
}

func TestDoBudget(t *testing.T) {
	t.Parallel()
	reset := syscall.ECONNRESET
	t.Run("max wait", func(t *testing.T) {
		t.Parallel()
		calls := 0
		p := fast
		p.MaxAttempts = 10
		err := Do(context.Background(), p, failing(&calls, reset, reset, reset, reset), WithMaxWait(2*time.Millisecond))
		var be *BudgetError
		if !errors.As(err, &be) || !errors.Is(err, ErrBudgetExhausted) || !errors.Is(err, reset) {
			t.Fatalf("err = %v, want a BudgetError wrapping ECONNRESET", err)
		}
		// 1ms fits, 1+2 = 3ms does not: two attempts.
		if calls != 2 || be.Attempts != 2 || be.Wait != 2*time.Millisecond {
			t.Fatalf("calls = %d, BudgetError = %+v", calls, be)
		}
	})
	t.Run("huge retry after does not wrap the budget", func(t *testing.T) {
		t.Parallel()
		// waited+delay would overflow to a negative sum and pass a naive
		// check: the call would then wait for ~292 years.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls := 0
		err := Do(ctx, fast, failing(&calls,
			MarkRetryAfter(errors.New("429"), time.Millisecond),
			MarkRetryAfter(errors.New("429"), time.Duration(math.MaxInt64))),
			WithMaxWait(time.Second),
			OnRetry(func(_ int, _ error, d time.Duration) {
				if d > time.Second {
					cancel() // the budget let it through: end the wait at once
				}
			}))
		var be *BudgetError
		if !errors.As(err, &be) || be.Wait != time.Duration(math.MaxInt64) || calls != 2 {
			t.Fatalf("err = %v calls = %d, want a BudgetError after 2 calls", err, calls)
		}
	})
	t.Run("waited so far shares one budget between calls", func(t *testing.T) {
		t.Parallel()
		// Each call alone fits (1ms + 2ms of 4ms); the second call starts
		// with 3ms spent, so its 2ms wait no longer fits.
		var waited time.Duration
		first, second := 0, 0
		opts := []Option{WithMaxWait(4 * time.Millisecond), WithWaitedSoFar(&waited)}
		if err := Do(context.Background(), fast, failing(&first, reset, reset), opts...); err != nil || waited != 3*time.Millisecond {
			t.Fatalf("first call: err = %v, waited %v, want nil after 3ms", err, waited)
		}
		err := Do(context.Background(), fast, failing(&second, reset, reset), opts...)
		var be *BudgetError
		if !errors.As(err, &be) || second != 2 || waited != 4*time.Millisecond {
			t.Fatalf("second call: err = %v, calls %d, waited %v; want a BudgetError after 1ms more", err, second, waited)
		}
	})
	t.Run("retry after beyond deadline", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		calls := 0
		start := time.Now()
		err := Do(ctx, fast, failing(&calls, MarkRetryAfter(errors.New("429"), 2*time.Minute)))
		var be *BudgetError
		if !errors.As(err, &be) || be.Wait != 2*time.Minute || calls != 1 {
			t.Fatalf("err = %v calls = %d", err, calls)
		}
		if c, after := be.RetryClass(); c != RateLimited || after != 2*time.Minute {
			t.Fatalf("BudgetError class %v after %v", c, after)
		}
		if d := Classify(err, nil); d.Class != RateLimited || d.RetryAfter != 2*time.Minute {
			t.Fatalf("Classify(BudgetError) = %+v", d)
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("Do waited instead of returning at once")
		}
	})
}

// The context ends while Do waits an hour between attempts: Do returns at
// once, with both the cancellation and the last error, and makes no further
// attempt. OnRetry runs after the attempt was judged worth retrying and just
// before the wait, so cancelling there reaches the wait itself.
func TestDoCanceledDuringWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := Policy{MaxAttempts: 3, InitialDelay: time.Hour, MaxDelay: time.Hour, Multiplier: 1, Jitter: JitterNone}
	calls, waits := 0, 0
	err := Do(ctx, p, func(context.Context) error {
		calls++
		return syscall.ECONNRESET
	}, OnRetry(func(_ int, _ error, d time.Duration) {
		waits++
		if d != time.Hour {
			t.Errorf("wait = %v, want 1h", d)
		}
		cancel()
	}))
	if !errors.Is(err, context.Canceled) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("err = %v, want both the cancellation and the last error", err)
	}
	if calls != 1 || waits != 1 {
		t.Fatalf("calls = %d, waits = %d, want 1 and 1", calls, waits)
	}
}

// go-retry's marker (from code moved over from go-retry) counts as transient
// and never lets go-retry run past MaxAttempts.
func TestDoGoRetryMarker(t *testing.T) {
	t.Parallel()
	inner := errors.New("flaky backend")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := 0
	err := Do(ctx, fast, func(context.Context) error {
		calls++
		return retry.RetryableError(inner)
	})
	if calls != fast.MaxAttempts || !errors.Is(err, inner) {
		t.Fatalf("calls = %d, err = %v; want %d calls and the last error", calls, err, fast.MaxAttempts)
	}
	calls = 0
	if err := Do(ctx, fast, failing(&calls, retry.RetryableError(inner))); err != nil || calls != 2 {
		t.Fatalf("marked once: err = %v after %d calls, want success on the 2nd", err, calls)
	}
	if d := Classify(retry.RetryableError(inner), nil); d.Class != Transient || d.Reason != "go-retry marker" {
		t.Fatalf("Classify(go-retry marker) = %+v", d)
	}
}

// Without a budget (no WithMaxWait, no deadline) a Retry-After longer than
// the policy's MaxDelay ends the call at once instead of blocking it.
func TestDoRetryAfterBoundedWithoutBudget(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := time.AfterFunc(10*time.Second, cancel) // a failing Do would wait an hour
	defer stop.Stop()
	calls := 0
	err := Do(ctx, fast, failing(&calls, MarkRetryAfter(errors.New("429"), time.Hour)))
	var be *BudgetError
	if !errors.As(err, &be) || be.Wait != time.Hour || calls != 1 {
		t.Fatalf("err = %v after %d calls, want a BudgetError asking for 1h after 1 call", err, calls)
	}
	// Within MaxDelay the Retry-After is waited out in-process.
	calls = 0
	if err := Do(ctx, fast, failing(&calls, MarkRetryAfter(errors.New("429"), fast.MaxDelay))); err != nil || calls != 2 {
		t.Fatalf("err = %v after %d calls", err, calls)
	}
}

func TestDoCanceledStopsAtOnce(t *testing.T) {
	t.Parallel()
	calls := 0
	err := Do(context.Background(), fast, failing(&calls, context.Canceled, nil))
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("err = %v after %d calls", err, calls)
	}
}

func TestDoInvalidPolicy(t *testing.T) {
	t.Parallel()
	calls := 0
	if err := Do(context.Background(), Policy{}, failing(&calls)); err == nil || calls != 0 {
		t.Fatalf("err = %v, calls = %d", err, calls)
	}
}

func TestDoValue(t *testing.T) {
	t.Parallel()
	calls := 0
	v, err := DoValue(context.Background(), fast, func(context.Context) (string, error) {
		calls++
		if calls < 3 {
			return "", errors.New("503 service unavailable")
		}
		return "msg-1", nil
	})
	if err != nil || v != "msg-1" || calls != 3 {
		t.Fatalf("DoValue = %q, %v after %d calls", v, err, calls)
	}
}

func TestDoRules(t *testing.T) {
	t.Parallel()
	errFlaky := errors.New("flaky")
	calls := 0
	err := Do(context.Background(), fast, failing(&calls, errFlaky), WithRules(&Rules{Retryable: []error{errFlaky}}))
	if err != nil || calls != 2 {
		t.Fatalf("err = %v after %d calls", err, calls)
	}
}

func TestDoLogs(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	calls := 0
	_ = Do(context.Background(), fast, failing(&calls, syscall.ECONNRESET), WithLogger(log), WithName("send_chart"))
	_ = Do(context.Background(), fast, failing(new(int), syscall.ECONNRESET, syscall.ECONNRESET, syscall.ECONNRESET), WithLogger(log), WithName("send_chart"))
	_ = Do(context.Background(), fast, failing(new(int), errors.New("invalid room")), WithLogger(log), WithName("send_chart"))
	out := buf.String()
	for _, want := range []string{
		`level=WARN msg="attempt failed, retrying" op=send_chart attempt=1 max_attempts=3 delay=1ms class=transient reason="syscall ECONNRESET"`,
		`level=INFO msg="succeeded after retrying" op=send_chart attempt=2 max_attempts=3`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	// The last attempt never announces a retry that will not happen, and the
	// returned error is not logged as well (the caller handles it once).
	if strings.Contains(out, "attempt=3 max_attempts=3 delay") || strings.Contains(out, "level=ERROR") {
		t.Errorf("log announces a retry after the last attempt or logs the returned error:\n%s", out)
	}
	// At debug level the end of the call is traced, with why it stopped.
	buf.Reset()
	debug := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_ = Do(context.Background(), fast, failing(new(int), errors.New("invalid room")), WithLogger(debug), WithName("send_chart"))
	if want := `level=DEBUG msg="giving up" op=send_chart stop="not retryable" attempt=1`; !strings.Contains(buf.String(), want) {
		t.Errorf("debug log lacks %q:\n%s", want, buf.String())
	}
}

func TestLoop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   bool
	}{
		{"success", nil, 1, false},
		{"retry then success", []error{syscall.ECONNRESET}, 2, false},
		{"exhausted", []error{syscall.EPIPE, syscall.EPIPE, syscall.EPIPE}, 3, true},
		{"permanent", []error{errors.New("bad")}, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			calls := 0
			call := failing(&calls, tt.errs...)
			l := NewLoop(context.Background(), fast)
			for l.Next() {
				if err := call(context.Background()); err != nil {
					l.Fail(err)
				}
			}
			if calls != tt.wantCalls || (l.Err() != nil) != tt.wantErr || l.Attempt() != tt.wantCalls {
				t.Fatalf("calls = %d, attempt = %d, err = %v", calls, l.Attempt(), l.Err())
			}
		})
	}
}

func TestLoopInvalidPolicy(t *testing.T) {
	t.Parallel()
	l := NewLoop(context.Background(), Policy{})
	if l.Next() || l.Err() == nil {
		t.Fatal("an invalid policy must end the loop before the first attempt")
	}
}

func BenchmarkDoFirstAttemptSucceeds(b *testing.B) {
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := Do(ctx, Webex, fn); err != nil {
			b.Fatal(err)
		}
	}
}
