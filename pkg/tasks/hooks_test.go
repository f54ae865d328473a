package tasks

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/redistest"
)

// outcomes records what an Observer is told.
type outcomes struct {
	nopObserver
	mu  sync.Mutex
	got []Outcome
}

func (o *outcomes) Outcome(_ string, oc Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, oc)
}

// Item 6: a lease expiry is logged and counted as what it is, not as a
// failed delivery of 0 attempts.
func TestLeaseExpiryLoggedAsSuch(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	obs := &outcomes{}
	w, err := NewWorker(redistest.Client(t), WorkerConfig{Bots: map[string]Sender{"": &panicky{}}, Observer: obs,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := w.Handler()
	h.HandleError(context.Background(), asynq.NewTask(TypeSend, nil), asynq.ErrLeaseExpired)
	if len(obs.got) != 1 || obs.got[0] != LeaseExpired {
		t.Fatalf("counted as %v", obs.got)
	}
	if s := logs.String(); !strings.Contains(s, "level=WARN msg=\"lease expired") || strings.Contains(s, "attempts") && strings.Contains(s, "delivery failed") {
		t.Fatalf("log: %s", s)
	}
	if IsFailure(asynq.ErrLeaseExpired) || h.RetryDelay(0, asynq.ErrLeaseExpired, nil) <= 0 {
		t.Fatal("a lease expiry must not count and must be redelivered soon")
	}
}

// Items 1 and 6: every counted outcome goes through the limit, so asynq's
// Retried never reaches MaxRetry, where asynq (and its recoverer, without
// the error handler) would archive whatever the outcome.
func TestCountedNeverReachesMaxRetry(t *testing.T) {
	t.Parallel()
	for _, cap := range []int{0, 1, 2} {
		h := &Handler{cfg: WorkerConfig{MaxRedeliveries: cap}}
		for redeliveries := range 5 {
			maxRetry := redeliveries + retryHeadroom // as the producer sets it
			for retried := range maxRetry {
				de := h.counted(&DeliveryError{Outcome: Transient}, retried, maxRetry)
				if de.Outcome == Transient && retried+1 >= maxRetry {
					t.Fatalf("cap %d max %d: a counted redelivery at %d reaches asynq's MaxRetry", cap, maxRetry, retried)
				}
				if de.Outcome != Transient && de.Outcome != Exhausted {
					t.Fatalf("outcome %v", de.Outcome)
				}
			}
		}
	}
}

func (o *outcomes) has(want Outcome) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Contains(o.got, want)
}

func (o *outcomes) all() []Outcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.got)
}

var errInjected = errors.New("injected: completion lost")

func TestHooks(t *testing.T) {
	t.Parallel()
	h := &Handler{cfg: WorkerConfig{Schedule: fastSchedule}.WithDefaults()}
	if IsFailure(asynq.ErrLeaseExpired) || h.RetryDelay(5, asynq.ErrLeaseExpired, nil) != time.Second {
		t.Fatal("a lease expiry must come back quickly without using a redelivery")
	}
	for o, counts := range map[Outcome]bool{Transient: true, Permanent: true, RateLimited: false, Unauthorized: false, Interrupted: false, Deferred: false} {
		if IsFailure(&DeliveryError{Outcome: o}) != counts {
			t.Errorf("IsFailure(%s) = %v", o, !counts)
		}
	}
	if !IsFailure(errors.New("panic: boom")) {
		t.Error("an unexpected error must count")
	}
	if d := h.RetryDelay(0, &DeliveryError{Outcome: RateLimited, Delay: 7 * time.Second}, nil); d != 7*time.Second {
		t.Errorf("RetryDelay took %v, not the handler's 7s", d)
	}
	if !errors.Is(&DeliveryError{Outcome: Permanent, Err: errors.New("x")}, asynq.SkipRetry) || errors.Is(&DeliveryError{Outcome: Transient, Err: errors.New("x")}, asynq.SkipRetry) {
		t.Error("only dead letters may skip asynq's retry")
	}
}
