package tasks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"sort"
	"strings"
	"time"

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
	DefaultIsolateConcurrency       = 2
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
	// IsolateConcurrency bounds the isolated processes this worker runs at
	// once: more suspects are handed back (not counted) to wait their turn
	// in the queue. Each process costs a worker's memory, and a flood of
	// them after a crash storm must not exhaust it, since an out-of-memory
	// kill counts as the message's death. Default 2.
	IsolateConcurrency int
	// isolatedSilence: an isolated process silent this long after its
	// delivery began is frozen (isolate.go). Default isolatedSilenceDefault.
	isolatedSilence time.Duration
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
	// ReconcileInterval is how often the worker's Reconciler checks that
	// every ordered sequence's head is still in asynq. Default 30s.
	ReconcileInterval time.Duration
	// Now reads the clock. Default time.Now.
	Now func() time.Time
	// Fence, when set, is asked before each post to Webex, before each
	// write to the task's hash and before a delivery's outcome goes back to
	// asynq: an error means this worker must post and write nothing.
	// *Recovery is the one to use (fast crash recovery).
	Fence Fence

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
	c.IsolateConcurrency = cmp.Or(c.IsolateConcurrency, DefaultIsolateConcurrency)
	c.isolatedSilence = cmp.Or(c.isolatedSilence, isolatedSilenceDefault)
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

// Validate reports every problem with the configuration at once, naming
// the fields.
func (c WorkerConfig) Validate() error { return c.ValidateNamed(retrypolicy.FieldName) }

// ValidateNamed is Validate naming each field as name(path), where path is
// the field's name, or "Policy.", "Schedule." or "Gate." and the field's
// name in those: a program that fills the configuration from its own
// settings names those (cmd/worker: COURIER_BUDGET, not Budget).
func (c WorkerConfig) ValidateNamed(name func(path string) string) error {
	var errs []error
	if len(c.Bots) == 0 {
		errs = append(errs, fmt.Errorf("%s: at least one bot is required", name("Bots")))
	}
	for bot, s := range c.Bots {
		if s == nil {
			errs = append(errs, fmt.Errorf("%s: bot %q has no sender", name("Bots"), bot))
		}
		if strings.ContainsAny(bot, "{}") {
			errs = append(errs, fmt.Errorf("%s: bot %q: must not contain { or } (the bot's name is the hash tag of its gate keys on a Redis Cluster)", name("Bots"), bot))
		}
	}
	for q, prio := range c.Queues {
		if q == "" || prio < 1 {
			errs = append(errs, fmt.Errorf("%s: %q has priority %d, want a name and a priority of at least 1", name("Queues"), q, prio))
		}
		if strings.ContainsAny(q, "{}") {
			errs = append(errs, fmt.Errorf("%s: %q: must not contain { or } (the queue's name is the hash tag of its keys on a Redis Cluster)", name("Queues"), q))
		}
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("%s is %d: must be at least 1", name("Concurrency"), c.Concurrency))
	}
	within := func(prefix string) func(string) string { return func(f string) string { return name(prefix + f) } }
	if err := c.Policy.ValidateNamed(within("Policy.")); err != nil {
		errs = append(errs, err)
	}
	if err := c.Schedule.ValidateNamed(within("Schedule.")); err != nil {
		errs = append(errs, err)
	}
	if err := c.Gate.ValidateNamed(within("Gate.")); err != nil {
		errs = append(errs, fmt.Errorf("gate: %w", err))
	}
	if c.Budget < 0 {
		errs = append(errs, fmt.Errorf("%s is %v: must not be negative", name("Budget"), c.Budget))
	}
	if c.Budget >= c.ShutdownTimeout {
		errs = append(errs, fmt.Errorf("%s (%v) must be below %s (%v)", name("Budget"), c.Budget, name("ShutdownTimeout"), c.ShutdownTimeout))
	}
	for _, f := range []struct {
		field string
		d     time.Duration
	}{{"ShutdownTimeout", c.ShutdownTimeout}, {"TaskCheckInterval", c.TaskCheckInterval},
		{"DelayedTaskCheckInterval", c.DelayedTaskCheckInterval}, {"UnauthorizedDelay", c.UnauthorizedDelay}, {"DeferDelay", c.DeferDelay},
		{"ReconcileInterval", c.ReconcileInterval}} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name(f.field), f.d))
		}
	}
	if c.MaxRedeliveries < 0 {
		errs = append(errs, fmt.Errorf("%s is %d: must be 0 (the task's own limit) or more", name("MaxRedeliveries"), c.MaxRedeliveries))
	}
	if c.PoisonLimit < 1 {
		errs = append(errs, fmt.Errorf("%s is %d: must be at least 1", name("PoisonLimit"), c.PoisonLimit))
	}
	if c.IsolateConcurrency < 1 {
		errs = append(errs, fmt.Errorf("%s is %d: must be at least 1", name("IsolateConcurrency"), c.IsolateConcurrency))
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
