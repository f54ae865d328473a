package worker

import (
	"log/slog"
	"os"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/metrics"
	"github.com/courier-dev/courier/pkg/tasks"
)

// newRecovery builds fast crash recovery, or nil when it is off
// (COURIER_RECOVERY_AFTER=0, or the dev mode's miniredis).
func newRecovery(cfg *Config, rdb redis.UniversalClient, reg prometheus.Registerer, log *slog.Logger) (*tasks.Recovery, error) {
	if !cfg.recoveryOn() {
		return nil, nil
	}
	queues := make([]string, 0, len(cfg.Queues))
	for q := range cfg.Queues {
		queues = append(queues, q)
	}
	slices.Sort(queues)
	halt := func() { os.Exit(ExitTombstoned) }
	if cfg.isolated {
		// An isolated delivery that is fenced hands its outcome back instead
		// (interrupted): an exit would be taken for the message's death.
		// The worker then checks its own fence and halts if it must.
		halt = nil
	}
	return tasks.NewRecovery(rdb, tasks.RecoveryConfig{After: cfg.RecoveryAfter, Queues: queues, Logger: log,
		Recovered: metrics.Recovered(reg), Halt: halt})
}

// recoveryOn says whether fast crash recovery runs.
func (c *Config) recoveryOn() bool { return c.RecoveryAfter != 0 && !c.Dev }
