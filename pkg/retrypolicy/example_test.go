package retrypolicy_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

func ExampleDo() {
	p := retrypolicy.Webex
	p.InitialDelay, p.Jitter = time.Millisecond, retrypolicy.JitterNone // fast and exact, for the example

	calls := 0
	err := retrypolicy.Do(context.Background(), p, func(context.Context) error {
		calls++
		if calls < 3 {
			return syscall.ECONNRESET // transient: retried
		}
		return nil
	}, retrypolicy.OnRetry(func(attempt int, err error, delay time.Duration) {
		fmt.Printf("attempt %d failed (%v), retrying in %v\n", attempt, err, delay)
	}))
	fmt.Println("err:", err, "calls:", calls)
	// Output:
	// attempt 1 failed (connection reset by peer), retrying in 1ms
	// attempt 2 failed (connection reset by peer), retrying in 2ms
	// err: <nil> calls: 3
}

func ExampleClassify() {
	for _, err := range []error{
		syscall.ECONNREFUSED,
		errors.New("HTTP 503 Service Unavailable"),
		retrypolicy.MarkRetryAfter(errors.New("slow down"), 15*time.Second),
		errors.New("invalid roomId"),
	} {
		d := retrypolicy.Classify(err, nil)
		fmt.Printf("%-30s %-12s %v\n", err, d.Class, d.RetryAfter)
	}
	// Output:
	// connection refused             transient    0s
	// HTTP 503 Service Unavailable   transient    0s
	// slow down                      rate_limited 15s
	// invalid roomId                 permanent    0s
}

func ExampleSchedule() {
	s := retrypolicy.DefaultSchedule
	n := s.RedeliveriesFor(12 * time.Hour)
	fmt.Println("redeliveries to outlive 12h:", n)
	fmt.Println("guaranteed span:", s.Survives(n))
	// A server's Retry-After wins, rounded up for asynq's whole-second clock.
	fmt.Println(s.Delay(4, retrypolicy.MarkRetryAfter(errors.New("429"), 2500*time.Millisecond)))
	// Output:
	// redeliveries to outlive 12h: 30
	// guaranteed span: 12h1m45s
	// 4s
}

func ExampleLoop() {
	p := retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}
	l := retrypolicy.NewLoop(context.Background(), p)
	for l.Next() {
		fmt.Println("attempt", l.Attempt())
		if l.Attempt() < 2 {
			l.Fail(errors.New("connection reset"))
		}
	}
	fmt.Println("err:", l.Err())
	// Output:
	// attempt 1
	// attempt 2
	// err: <nil>
}

func ExampleDoValue() {
	p := retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}
	calls := 0
	id, err := retrypolicy.DoValue(context.Background(), p, func(context.Context) (string, error) {
		calls++
		if calls == 1 {
			return "", retrypolicy.MarkTransient(errors.New("flaky"))
		}
		return "msg-42", nil
	})
	fmt.Println(id, err, calls)
	// Output: msg-42 <nil> 2
}

// A Retry-After longer than the budget ends the call at once with a
// BudgetError that keeps the last error and the wait the server asked for.
func ExampleWithMaxWait() {
	err := retrypolicy.Do(context.Background(), retrypolicy.Webex, func(context.Context) error {
		return retrypolicy.MarkRetryAfter(errors.New("429 Too Many Requests"), 10*time.Minute)
	}, retrypolicy.WithMaxWait(2*time.Minute))
	var be *retrypolicy.BudgetError
	if errors.As(err, &be) {
		fmt.Println(be.Attempts, be.Wait, be.Decision.Class, errors.Is(err, retrypolicy.ErrBudgetExhausted))
	}
	// Output: 1 10m0s rate_limited true
}

func ExampleWithWaitedSoFar() {
	// Two calls share one 10ms budget: the first waits 6ms, so the second's
	// 6ms wait no longer fits.
	var waited time.Duration
	p := retrypolicy.Policy{MaxAttempts: 2, InitialDelay: 6 * time.Millisecond, MaxDelay: time.Second, Multiplier: 1, Jitter: retrypolicy.JitterNone}
	for i := range 2 {
		calls := 0
		err := retrypolicy.Do(context.Background(), p, func(context.Context) error {
			if calls++; calls == 1 {
				return retrypolicy.MarkTransient(errors.New("503"))
			}
			return nil
		}, retrypolicy.WithMaxWait(10*time.Millisecond), retrypolicy.WithWaitedSoFar(&waited))
		fmt.Println(i+1, calls, waited, errors.Is(err, retrypolicy.ErrBudgetExhausted))
	}
	// Output:
	// 1 2 6ms false
	// 2 1 6ms true
}

func ExampleMarkPermanent() {
	calls := 0
	err := retrypolicy.Do(context.Background(), retrypolicy.Webex, func(context.Context) error {
		calls++
		return retrypolicy.MarkPermanent(errors.New("room archived"))
	})
	fmt.Println(err, calls)
	// Output: room archived 1
}

func ExampleRules() {
	errQuota := errors.New("quota exceeded")
	rules := &retrypolicy.Rules{NonRetryable: []error{errQuota}, Retryable: []error{syscall.EAGAIN}}
	fmt.Println(retrypolicy.Classify(fmt.Errorf("upload: %w", errQuota), rules).Class)
	fmt.Println(retrypolicy.Classify(syscall.EAGAIN, rules).Class)
	// Output:
	// permanent
	// transient
}

func ExamplePolicy_Backoff() {
	p := retrypolicy.Webex
	for n := 1; n <= 5; n++ {
		fmt.Print(p.Backoff(n), " ")
	}
	fmt.Println()
	// Output: 2s 4s 8s 16s 30s
}

func ExampleQueueDelay() {
	// asynq stores due times as whole seconds and truncates: round up, plus one.
	fmt.Println(retrypolicy.QueueDelay(2500*time.Millisecond), retrypolicy.QueueDelay(0))
	// Output: 4s 1s
}
