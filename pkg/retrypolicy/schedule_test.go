package retrypolicy

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestQueueDelay(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want time.Duration }{
		{-time.Hour, time.Second},
		{0, time.Second},
		{time.Nanosecond, 2 * time.Second},
		{time.Second, 2 * time.Second},
		{1500 * time.Millisecond, 3 * time.Second},
		{3 * time.Second, 4 * time.Second},
		{1 << 62, maxQueueDelay.Truncate(time.Second) + 2*time.Second},
	}
	for _, tt := range tests {
		if got := QueueDelay(tt.in); got != tt.want {
			t.Errorf("QueueDelay(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestScheduleDelay(t *testing.T) {
	t.Parallel()
	s := DefaultSchedule
	s.Jitter = JitterNone
	transient := errors.New("503")
	tests := []struct {
		retried int
		err     error
		want    time.Duration
	}{
		{0, transient, 31 * time.Second},
		{1, transient, 61 * time.Second},
		{2, transient, 121 * time.Second},
		{7, transient, 3601 * time.Second}, // 30s × 128 > 1h: capped
		{10_000, transient, 3601 * time.Second},
		{-5, transient, 31 * time.Second},
		{3, MarkRetryAfter(transient, 1500*time.Millisecond), 3 * time.Second},
		{3, MarkRetryAfter(transient, 48*time.Hour), time.Hour + time.Second},
		{3, MarkRetryAfter(transient, 0), 241 * time.Second},
		{0, nil, 31 * time.Second},
	}
	for _, tt := range tests {
		if got := s.Delay(tt.retried, tt.err); got != tt.want {
			t.Errorf("Delay(%d, %v) = %v, want %v", tt.retried, tt.err, got, tt.want)
		}
	}
}

func TestScheduleJitteredKeepsFloor(t *testing.T) {
	t.Parallel()
	s := DefaultSchedule
	for retried := range 12 {
		floor := s.guaranteed(retried) + time.Second
		for range 2000 {
			d := s.Delay(retried, errors.New("503"))
			if d < floor || d > QueueDelay(s.Backoff(retried)) || d%time.Second != 0 {
				t.Fatalf("Delay(%d) = %v, want whole seconds within [%v, %v]", retried, d, floor, QueueDelay(s.Backoff(retried)))
			}
		}
	}
}

func TestSurvives(t *testing.T) {
	t.Parallel()
	s := DefaultSchedule
	// Floors of equal jitter: 15, 30, 60, ... 1800 s; each rounded up, +1 s, less the second asynq may fire early.
	if got, want := s.Survives(3), (15+30+60)*time.Second; got != want {
		t.Fatalf("Survives(3) = %v, want %v", got, want)
	}
	n := s.RedeliveriesFor(12 * time.Hour)
	if n != 30 {
		t.Fatalf("RedeliveriesFor(12h) = %d, want 30", n)
	}
	if s.Survives(n) < 12*time.Hour || s.Survives(n-1) >= 12*time.Hour {
		t.Fatalf("Survives(%d) = %v, Survives(%d) = %v", n, s.Survives(n), n-1, s.Survives(n-1))
	}
	// The bound holds against actual draws.
	for range 200 {
		var total time.Duration
		for i := range n {
			total += s.Delay(i, errors.New("503")) - time.Second
		}
		if total < s.Survives(n) {
			t.Fatalf("drawn span %v below the guaranteed %v", total, s.Survives(n))
		}
	}
}

func TestScheduleValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultSchedule.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := (Schedule{}).WithDefaults(); got != DefaultSchedule {
		t.Fatalf("WithDefaults = %+v", got)
	}
	err := Schedule{Base: -1, Cap: -2, Multiplier: 0.1, MaxRetryAfter: -1, Jitter: 7}.Validate()
	for _, f := range []string{"Base", "Cap", "Multiplier", "MaxRetryAfter", "Jitter"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("error does not name %s: %v", f, err)
		}
	}
}

// Item 9 of issue 14: the largest caps neither panic nor wrap around.
func TestHugeCapsSaturate(t *testing.T) {
	for _, j := range []Jitter{JitterEqual, JitterFull, JitterNone} {
		s := Schedule{Base: time.Second, Cap: math.MaxInt64, Multiplier: 2, Jitter: j, MaxRetryAfter: time.Hour}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		for retried := range 80 {
			if d := s.Delay(retried, errors.New("x")); d <= 0 {
				t.Fatalf("jitter %v: delay %v at %d", j, d, retried)
			}
		}
		if got := s.Survives(200); got < s.Survives(100) || got < 0 {
			t.Fatalf("jitter %v: Survives wrapped around: %v", j, got)
		}
		p := Policy{MaxAttempts: 80, InitialDelay: time.Second, MaxDelay: math.MaxInt64, Multiplier: 2, Jitter: j}
		for attempt := range 80 {
			if d := p.Delay(attempt + 1); d < 0 {
				t.Fatalf("jitter %v: %v", j, d)
			}
		}
	}
}
