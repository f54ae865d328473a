package retrypolicy

import (
	"strings"
	"testing"
	"time"
)

func TestPresets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    Policy
		want []time.Duration
	}{
		{"default", Default, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}},
		{"webex", Webex, []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}},
		{"x3", Policy{MaxAttempts: 5, InitialDelay: 2 * time.Second, MaxDelay: 120 * time.Second, Multiplier: 3}, []time.Duration{2 * time.Second, 6 * time.Second, 18 * time.Second, 54 * time.Second, 120 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.p.Validate(); err != nil {
				t.Fatal(err)
			}
			tt.p.Jitter = JitterNone
			for i, want := range tt.want {
				if got := tt.p.Delay(i + 1); got != want {
					t.Errorf("Delay(%d) = %v, want %v", i+1, got, want)
				}
			}
		})
	}
	if Default.MaxAttempts != 3 || Webex.MaxAttempts != 3 || Default.Jitter != JitterEqual || Webex.Jitter != JitterEqual {
		t.Errorf("presets changed: %+v %+v", Default, Webex)
	}
}

func TestJitterBounds(t *testing.T) {
	t.Parallel()
	d := 10 * time.Second
	tests := []struct {
		j      Jitter
		lo, hi time.Duration
	}{
		{JitterEqual, 5 * time.Second, 10 * time.Second},
		{JitterFull, 0, 10 * time.Second},
		{JitterNone, 10 * time.Second, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.j.String(), func(t *testing.T) {
			t.Parallel()
			lo, hi := time.Duration(1<<62), time.Duration(0)
			for range 20000 {
				got := tt.j.apply(d)
				lo, hi = min(lo, got), max(hi, got)
			}
			if lo < tt.lo || hi > tt.hi {
				t.Fatalf("draws span [%v, %v], want within [%v, %v]", lo, hi, tt.lo, tt.hi)
			}
			// The draws must actually spread over most of the range.
			if spread := tt.hi - tt.lo; spread > 0 && hi-lo < spread*9/10 {
				t.Fatalf("draws span [%v, %v], expected to cover most of [%v, %v]", lo, hi, tt.lo, tt.hi)
			}
			if f := tt.j.floor(d); f != tt.lo {
				t.Fatalf("floor = %v, want %v", f, tt.lo)
			}
		})
	}
}

func TestValidateNamesFields(t *testing.T) {
	t.Parallel()
	err := Policy{MaxAttempts: 0, InitialDelay: 0, MaxDelay: -1, Multiplier: 0.5, Jitter: 9}.Validate()
	if err == nil {
		t.Fatal("want error")
	}
	for _, field := range []string{"MaxAttempts", "InitialDelay", "MaxDelay", "Multiplier", "Jitter"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
}

func TestBackoffNoOverflow(t *testing.T) {
	t.Parallel()
	p := Policy{MaxAttempts: 1, InitialDelay: time.Second, MaxDelay: time.Hour, Multiplier: 10}
	for _, n := range []int{0, 1, 50, 10_000, 1 << 30} {
		if d := p.Backoff(n); d <= 0 || d > time.Hour {
			t.Errorf("Backoff(%d) = %v", n, d)
		}
	}
}

func TestParseJitter(t *testing.T) {
	t.Parallel()
	for _, j := range []Jitter{JitterEqual, JitterFull, JitterNone} {
		got, err := ParseJitter(j.String())
		if err != nil || got != j {
			t.Errorf("ParseJitter(%q) = %v, %v", j.String(), got, err)
		}
	}
	if _, err := ParseJitter("some"); err == nil {
		t.Error("want error for unknown mode")
	}
}
