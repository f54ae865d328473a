package retrypolicy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

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

func TestDoCanceledDuringWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	p := Policy{MaxAttempts: 3, InitialDelay: time.Hour, MaxDelay: time.Hour, Multiplier: 1, Jitter: JitterNone}
	err := Do(ctx, p, func(context.Context) error {
		cancel()
		return syscall.ECONNRESET
	})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("err = %v, want both the cancellation and the last error", err)
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
		`level=WARN msg="attempt 1/3 failed, retrying in 0.00s" op=send_chart`,
		`level=INFO msg="succeeded on attempt 2/3"`,
		`level=ERROR msg="failed after 3 attempts"`,
		`level=ERROR msg="non-retryable error"`,
		`reason="syscall ECONNRESET"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	// The last attempt never announces a retry that will not happen.
	if strings.Contains(out, "attempt 3/3 failed, retrying") {
		t.Errorf("log announces a retry after the last attempt:\n%s", out)
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
