package tasks

import (
	"strings"
	"testing"
	"time"
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
