package tasks

import (
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/webex"
)

func TestWorkerConfigValidate(t *testing.T) {
	t.Parallel()
	err := WorkerConfig{Concurrency: -1, Budget: time.Minute, ShutdownTimeout: time.Second, PoisonLimit: -1, Queues: map[string]int{"q": 0}}.WithDefaults().Validate()
	for _, want := range []string{"Bots", "Queues", "Concurrency", "Budget", "PoisonLimit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %s named", err, want)
		}
	}
}

// ValidateNamed names each field by the caller's setting, nested fields by
// their path.
func TestWorkerConfigValidateNamed(t *testing.T) {
	t.Parallel()
	cfg := WorkerConfig{Budget: time.Minute, ShutdownTimeout: time.Second, Gate: GateConfig{Burst: -1}}.WithDefaults()
	cfg.Policy.MaxAttempts = 0
	err := cfg.ValidateNamed(func(path string) string { return "<" + path + ">" })
	for _, want := range []string{"<Bots>: at least one bot", "<Budget> (1m0s) must be below <ShutdownTimeout> (1s)",
		"<Policy.MaxAttempts> is 0", "gate: <Gate.Burst> is -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

// A bot or queue name is the hash tag of its keys on a Redis Cluster: a
// brace in it ("}x" makes the tag empty) would spread the keys one script
// touches over several slots (CROSSSLOT, and the gate failing open).
func TestWorkerConfigRefusesBracesInNames(t *testing.T) {
	t.Parallel()
	err := WorkerConfig{Bots: map[string]Sender{"}x": (*webex.Client)(nil)}, Queues: map[string]int{"q{": 1}}.WithDefaults().Validate()
	for _, want := range []string{`bot "}x": must not contain { or }`, `"q{": must not contain { or }`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}
