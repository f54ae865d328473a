package tasks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
)

// Worker runs the handler under an asynq server with courier's hooks.
type Worker struct {
	cfg     WorkerConfig
	srv     *asynq.Server
	handler *Handler
	stop    context.CancelFunc
	running atomic.Bool
	rec     *Reconciler
	// unwatch ends the gate's subscription; watched closes once it has.
	unwatch func()
	watched <-chan struct{}
}

// NewWorker builds a worker over a go-redis client (which the caller keeps
// and closes after Shutdown).
func NewWorker(rdb redis.UniversalClient, cfg WorkerConfig) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	redisurl.FollowFailovers(rdb)
	stopCtx, stop := context.WithCancel(context.Background())
	g := &gate{cfg: cfg.Gate, rdb: rdb, log: cfg.Logger, obs: cfg.Observer}
	h := &Handler{cfg: cfg, rec: &records{rdb: rdb}, bots: map[string]*bot{}, stop: stopCtx, gate: g,
		order:        &ordering{rdb: rdb, log: cfg.Logger, obs: cfg.Observer, now: cfg.Now, wait: cfg.DeferDelay, stop: stopCtx},
		isolateSlots: make(chan struct{}, cfg.IsolateConcurrency)}
	for name, s := range cfg.Bots {
		h.bots[name] = &bot{name: name, sender: s}
	}
	queues := make([]string, 0, len(cfg.Queues))
	for q := range cfg.Queues {
		queues = append(queues, q)
	}
	rec := NewReconciler(rdb, ReconcilerConfig{Queues: queues, Interval: cfg.ReconcileInterval, Logger: cfg.Logger, Observer: cfg.Observer, Now: cfg.Now})
	w := &Worker{cfg: cfg, handler: h, stop: stop, rec: rec}
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   cfg.Queues,
		StrictPriority:           cfg.StrictPriority,
		RetryDelayFunc:           h.RetryDelay,
		IsFailure:                IsFailure,
		ErrorHandler:             asynq.ErrorHandlerFunc(h.HandleError),
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.TaskCheckInterval,
		DelayedTaskCheckInterval: cfg.DelayedTaskCheckInterval,
		Logger:                   asynqLogger{cfg.Logger},
		LogLevel:                 asynq.WarnLevel,
	})
	return w, nil
}

// Handler is the worker's task handler.
func (w *Worker) Handler() *Handler { return w.handler }

// Reconciler is the reconciler of the worker's queues (its Interval is
// WorkerConfig.ReconcileInterval). Start does not run it: run its Run
// alongside the worker, and stop it with the worker, so that an ordered
// sequence whose head left asynq unnoticed moves on.
func (w *Worker) Reconciler() *Reconciler { return w.rec }

// Start begins fetching and delivering tasks.
func (w *Worker) Start() error {
	mux := asynq.NewServeMux()
	mux.Handle(TypeSend, w.handler)
	w.unwatch, w.watched = w.handler.gate.watch()
	pool := newWarm(w.cfg.Concurrency)
	w.handler.warm.Store(pool)
	if err := w.srv.Start(mux); err != nil {
		w.handler.warm.Store(nil)
		pool.stop()
		w.unwatch()
		<-w.watched
		return fmt.Errorf("start worker: %w", err)
	}
	w.running.Store(true)
	return nil
}

// Shutdown stops fetching, ends in-process waits at once (those tasks go
// back to the queue without using a redelivery), lets requests under way
// finish, and requeues what is still running after ShutdownTimeout.
func (w *Worker) Shutdown() {
	w.srv.Stop()
	w.stop()
	w.srv.Shutdown()
	if pool := w.handler.warm.Swap(nil); pool != nil {
		pool.stop()
	}
	w.handler.order.close() // the watches of released heads (ordering.go) end with w.stop
	if w.unwatch != nil {
		w.unwatch()
		<-w.watched
	}
	w.running.Store(false)
}

// Ready is nil when the worker is running and every bot's token works,
// else an error saying why not.
func (w *Worker) Ready() error {
	if !w.running.Load() {
		return errors.New("worker not running")
	}
	rejected := w.handler.RejectedBots()
	if len(rejected) == 0 {
		return nil
	}
	names := make([]string, 0, len(rejected))
	for n := range rejected {
		names = append(names, botLabel(n))
	}
	slices.Sort(names)
	return fmt.Errorf("token rejected by Webex for bot(s) %s", strings.Join(names, ", "))
}
