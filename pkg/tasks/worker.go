package tasks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// Defaults of WorkerConfig.
const (
	DefaultConcurrency              = 10
	DefaultBudget                   = 20 * time.Second
	DefaultShutdownTimeout          = 30 * time.Second
	DefaultTaskCheckInterval        = 25 * time.Millisecond
	DefaultDelayedTaskCheckInterval = time.Second
	DefaultPoisonLimit              = 3
	DefaultUnauthorizedDelay        = 5 * time.Minute
	DefaultDeferDelay               = 30 * time.Second
)

// WorkerConfig configures a Worker. Zero fields take the defaults.
type WorkerConfig struct {
	// Bots maps bot names to their senders; "" is the default bot, used by
	// tasks that name none. At least one.
	Bots map[string]Sender
	// Queues maps queue names to priorities. Default {DefaultQueue: 1}.
	Queues map[string]int
	// StrictPriority serves higher-priority queues first, always.
	StrictPriority bool
	// Concurrency is the number of deliveries at once. Default 10.
	Concurrency int
	// Policy governs in-process attempts. Default retrypolicy.Webex.
	Policy retrypolicy.Policy
	// MaxRedeliveries, when above 0, caps every task's own redelivery limit
	// (set at enqueue, default 30). 0: the task's own limit.
	MaxRedeliveries int
	// Budget bounds the time one delivery spends waiting between in-process
	// attempts; a longer wait is handed to the queue instead of holding a
	// worker slot. Default 20s, kept below ShutdownTimeout.
	Budget time.Duration
	// Schedule is the durable redelivery schedule. Default
	// retrypolicy.DefaultSchedule (30s doubling to 1h, equal jitter).
	Schedule retrypolicy.Schedule
	// ShutdownTimeout bounds a graceful stop. Default 30s.
	ShutdownTimeout time.Duration
	// TaskCheckInterval is how often an idle worker polls for new tasks: the
	// latency floor of an idle queue. Default 25ms.
	TaskCheckInterval time.Duration
	// DelayedTaskCheckInterval is how often scheduled and retried tasks are
	// made due. Default 1s.
	DelayedTaskCheckInterval time.Duration
	// PoisonLimit dead-letters a task after this many deliveries died with
	// their worker (lease expiry); with Isolate, after this many isolated
	// deliveries died with their own process (at most 2+PoisonLimit deaths
	// in all). Default 3.
	PoisonLimit int
	// Isolate, when set, returns a command (not started) that runs
	// Worker.ServeIsolated over its standard input and output: a task whose
	// deliveries died twice in a row is delivered there, alone, so that a
	// poison verdict means this message kills its process (isolate.go). Nil:
	// every death counts toward PoisonLimit.
	Isolate func(ctx context.Context) *exec.Cmd
	// UnauthorizedDelay is how long tasks of a bot whose token is rejected
	// wait, and how often one of them probes the token. Default 5m.
	UnauthorizedDelay time.Duration
	// DeferDelay is how long a task of a newer payload version waits for a
	// newer worker. Default 30s.
	DeferDelay time.Duration
	// Logger receives courier's records. Default slog.Default().
	Logger *slog.Logger
	// AttemptLogger, when set, receives a debug record per in-process
	// attempt (the error handler already logs each outcome once, so the
	// attempts are detail, logged at debug whatever their usual level).
	AttemptLogger *slog.Logger
	// Gate coordinates all workers sending as the same bot: a shared rate
	// limit (off unless Gate.Rate is set), a shared cool-down after a 429,
	// and a circuit breaker (on by default).
	Gate GateConfig
	// Observer, when set, is told what each delivery did (metrics).
	Observer Observer
	// DeadLetters, when set, keeps a durable record of every dead letter
	// beyond asynq's archive caps.
	DeadLetters *DeadLetters
	// ReconcileInterval is how often the worker checks that every ordered
	// sequence's head is still in asynq (see Reconciler). Default 30s.
	ReconcileInterval time.Duration
	// Now reads the clock. Default time.Now.
	Now func() time.Time
	// Fence, when set, is asked before each post to Webex and before a
	// delivery's outcome goes back to asynq: an error means this worker
	// must not post. Recovery.Fence is the one to use (fast crash recovery).
	Fence func(ctx context.Context) error

	attemptLogger *slog.Logger
}

// WithDefaults fills zero fields with the defaults.
func (c WorkerConfig) WithDefaults() WorkerConfig {
	if len(c.Queues) == 0 {
		c.Queues = map[string]int{DefaultQueue: 1}
	}
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	if c.Policy == (retrypolicy.Policy{}) {
		c.Policy = retrypolicy.Webex
	}
	c.Budget = cmp.Or(c.Budget, DefaultBudget)
	c.Schedule = c.Schedule.WithDefaults()
	c.Gate = c.Gate.WithDefaults()
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	c.TaskCheckInterval = cmp.Or(c.TaskCheckInterval, DefaultTaskCheckInterval)
	c.DelayedTaskCheckInterval = cmp.Or(c.DelayedTaskCheckInterval, DefaultDelayedTaskCheckInterval)
	c.PoisonLimit = cmp.Or(c.PoisonLimit, DefaultPoisonLimit)
	c.UnauthorizedDelay = cmp.Or(c.UnauthorizedDelay, DefaultUnauthorizedDelay)
	c.DeferDelay = cmp.Or(c.DeferDelay, DefaultDeferDelay)
	c.ReconcileInterval = cmp.Or(c.ReconcileInterval, DefaultReconcileInterval)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	c.attemptLogger = discard
	if c.AttemptLogger != nil {
		c.attemptLogger = slog.New(debugHandler{c.AttemptLogger.Handler()})
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports every problem with the configuration at once.
func (c WorkerConfig) Validate() error {
	var errs []error
	if len(c.Bots) == 0 {
		errs = append(errs, errors.New("Bots: at least one bot is required"))
	}
	for name, s := range c.Bots {
		if s == nil {
			errs = append(errs, fmt.Errorf("Bots: bot %q has no sender", name))
		}
	}
	for q, prio := range c.Queues {
		if q == "" || prio < 1 {
			errs = append(errs, fmt.Errorf("Queues: %q has priority %d, want a name and a priority of at least 1", q, prio))
		}
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("Concurrency is %d: must be at least 1", c.Concurrency))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Schedule.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Gate.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("gate: %w", err))
	}
	if c.Budget < 0 {
		errs = append(errs, fmt.Errorf("Budget is %v: must not be negative", c.Budget))
	}
	if c.Budget >= c.ShutdownTimeout {
		errs = append(errs, fmt.Errorf("Budget (%v) must be below ShutdownTimeout (%v)", c.Budget, c.ShutdownTimeout))
	}
	for name, d := range map[string]time.Duration{"ShutdownTimeout": c.ShutdownTimeout, "TaskCheckInterval": c.TaskCheckInterval,
		"DelayedTaskCheckInterval": c.DelayedTaskCheckInterval, "UnauthorizedDelay": c.UnauthorizedDelay, "DeferDelay": c.DeferDelay,
		"ReconcileInterval": c.ReconcileInterval} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name, d))
		}
	}
	if c.MaxRedeliveries < 0 {
		errs = append(errs, fmt.Errorf("MaxRedeliveries is %d: must be 0 (the task's own limit) or more", c.MaxRedeliveries))
	}
	if c.PoisonLimit < 1 {
		errs = append(errs, fmt.Errorf("PoisonLimit is %d: must be at least 1", c.PoisonLimit))
	}
	return errors.Join(errs...)
}

func (c *WorkerConfig) botNames() string {
	names := make([]string, 0, len(c.Bots))
	for n := range c.Bots {
		names = append(names, fmt.Sprintf("%q", n))
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Observer is told what deliveries do. Its methods must be fast and safe
// for concurrent use.
type Observer interface {
	// Outcome is called once per delivery.
	Outcome(bot string, o Outcome)
	// Attempt is called after each request to Webex, with its error (nil:
	// accepted).
	Attempt(bot string, err error)
	// Waited is called with each in-process wait between attempts.
	Waited(d time.Duration)
	// Delivered is called with the time from enqueue to delivery.
	Delivered(latency time.Duration)
	// TokenRejected is called when a bot's token is found rejected (true)
	// or working again (false).
	TokenRejected(bot string, rejected bool)
	// Throttled is called when the gate holds a send back (reason
	// cooldown, circuit_open or rate_limit).
	Throttled(bot, reason string)
	// Breaker is called when a bot's circuit opens (true) or closes.
	Breaker(bot string, open bool)
}

type nopObserver struct{}

func (nopObserver) Outcome(string, Outcome)    {}
func (nopObserver) Attempt(string, error)      {}
func (nopObserver) Waited(time.Duration)       {}
func (nopObserver) Delivered(time.Duration)    {}
func (nopObserver) TokenRejected(string, bool) {}
func (nopObserver) Throttled(string, string)   {}
func (nopObserver) Breaker(string, bool)       {}

// Worker runs the handler under an asynq server with courier's hooks.
type Worker struct {
	cfg     WorkerConfig
	srv     *asynq.Server
	handler *Handler
	stop    context.CancelFunc
	running atomic.Bool
	rec     *Reconciler
	recDone chan struct{} // closed when the reconciler has stopped
}

// NewWorker builds a worker over a go-redis client (which the caller keeps
// and closes after Shutdown).
func NewWorker(rdb redis.UniversalClient, cfg WorkerConfig) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	stopCtx, stop := context.WithCancel(context.Background())
	g := &gate{cfg: cfg.Gate, rdb: rdb, log: cfg.Logger, obs: cfg.Observer}
	h := &Handler{cfg: cfg, rec: &records{rdb: rdb}, bots: map[string]*bot{}, stop: stopCtx, gate: g,
		order: &ordering{rdb: rdb, log: cfg.Logger, obs: cfg.Observer, now: cfg.Now, wait: cfg.DeferDelay}}
	for name, s := range cfg.Bots {
		h.bots[name] = &bot{name: name, sender: s}
	}
	queues := make([]string, 0, len(cfg.Queues))
	for q := range cfg.Queues {
		queues = append(queues, q)
	}
	rec := NewReconciler(rdb, ReconcilerConfig{Queues: queues, Interval: cfg.ReconcileInterval, Logger: cfg.Logger, Observer: cfg.Observer, Now: cfg.Now})
	w := &Worker{cfg: cfg, handler: h, stop: stop, rec: rec, recDone: make(chan struct{})}
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

// Start begins fetching and delivering tasks.
func (w *Worker) Start() error {
	mux := asynq.NewServeMux()
	mux.Handle(TypeSend, w.handler)
	if err := w.srv.Start(mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	go func() {
		defer close(w.recDone)
		_ = w.rec.Run(w.handler.stop)
	}()
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
	if w.running.Load() {
		<-w.recDone
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

// asynqLogger adapts slog to asynq's logger.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq", "fatal", true)
}

// debugHandler logs every record at debug level.
type debugHandler struct{ slog.Handler }

func (h debugHandler) Enabled(ctx context.Context, _ slog.Level) bool {
	return h.Handler.Enabled(ctx, slog.LevelDebug)
}

func (h debugHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return h.Handler.Handle(ctx, r)
}

func (h debugHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return debugHandler{h.Handler.WithAttrs(attrs)}
}

func (h debugHandler) WithGroup(name string) slog.Handler {
	return debugHandler{h.Handler.WithGroup(name)}
}
