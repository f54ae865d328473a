package tasks

import (
	"testing"
	"time"
)

// A rejected token admits one probe per interval; an accepted request
// makes it accepted again.
func TestBotTokenStateMachine(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &bot{name: "ops"}
	if _, ok := b.admit(t0, time.Minute); !ok {
		t.Fatal("an accepted token must admit every delivery")
	}
	b.reject(t0, time.Minute)
	if wait, ok := b.admit(t0.Add(10*time.Second), time.Minute); ok || wait != 50*time.Second {
		t.Fatalf("before the probe: ok %v, wait %v; want held for 50s", ok, wait)
	}
	if _, ok := b.admit(t0.Add(time.Minute), time.Minute); !ok {
		t.Fatal("the probe is not admitted")
	}
	if _, ok := b.admit(t0.Add(time.Minute+time.Second), time.Minute); ok {
		t.Fatal("a second delivery admitted in the probe's interval")
	}
	if since := b.rejectedSince(); !since.Equal(t0) {
		t.Fatalf("rejected since %v, want %v", since, t0)
	}
	b.reject(t0.Add(time.Minute), time.Minute) // the probe failed: still rejected since t0
	if since := b.rejectedSince(); !since.Equal(t0) {
		t.Fatalf("rejected since %v after a failed probe", since)
	}
	if !b.accept() || b.accept() {
		t.Fatal("accept reports whether the token was rejected")
	}
	if _, ok := b.admit(t0.Add(61*time.Second), time.Minute); !ok {
		t.Fatal("an accepted token holds deliveries")
	}
}

func TestRejectedTokenLoggedOncePerInterval(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &bot{}
	if !b.shouldLog(t0, time.Minute) || b.shouldLog(t0.Add(30*time.Second), time.Minute) || !b.shouldLog(t0.Add(time.Minute), time.Minute) {
		t.Fatal("want one log per interval")
	}
}
