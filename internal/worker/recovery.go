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

// ExitTombstoned is the exit code of a worker that finds another worker took
// a task of its over (it was paused or cut off long enough to look dead), or
// that cannot reach Redis to check before it posts or writes: it exits at
// once, so that asynq records nothing for those tasks, and its supervisor
// restarts it.
const ExitTombstoned = 3

// newRecovery builds fast crash recovery, or nil when it is off
// (COURIER_RECOVERY_AFTER=0, or the dev mode's miniredis).
func newRecovery(cfg *Config, rdb redis.UniversalClient, reg prometheus.Registerer, log *slog.Logger) (*tasks.Recovery, error) {
	if cfg.RecoveryAfter == 0 || cfg.Dev {
		return nil, nil
	}
	queues := make([]string, 0, len(cfg.Queues))
	for q := range cfg.Queues {
		queues = append(queues, q)
	}
	slices.Sort(queues)
	return tasks.NewRecovery(rdb, tasks.RecoveryConfig{After: cfg.RecoveryAfter, Queues: queues, Logger: log,
		Recovered: metrics.Recovered(reg), Halt: func() { os.Exit(ExitTombstoned) }})
}
