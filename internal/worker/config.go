package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/courier-dev/courier/internal/admin"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/settings"
	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// DefaultAdminAddr is where the admin server listens unless configured.
const DefaultAdminAddr = "127.0.0.1:8080"

// Config is the worker's whole configuration. Load fills it from flags and
// environment variables (named beside each field); the defaults are Load's.
type Config struct {
	// RedisURL is where the queues live (REDIS_URL): redis:// or rediss://,
	// with an optional ACL user and password; a Sentinel set-up
	// (?master_name=NAME&addr=…, or redis-sentinel://) or a Cluster
	// (?addr=node2:port&addr=…) in go-redis's URL forms (internal/redisurl).
	// Default redis://127.0.0.1:6379/0.
	RedisURL string
	// RedisMode says how to read RedisURL (REDIS_MODE): auto (from the URL,
	// the default), single, sentinel or cluster. A cluster reached through
	// one address (a managed service's configuration endpoint) needs cluster.
	RedisMode redisurl.Mode
	// RedisTimeout is how long start-up waits for Redis to answer before the
	// worker exits 1 (COURIER_REDIS_TIMEOUT). Default 10s.
	RedisTimeout time.Duration
	// WebexBaseURL is the Webex API (WEBEX_BASE_URL): http:// or https://.
	// Default webex.DefaultBaseURL.
	WebexBaseURL string
	// Tokens maps bot names to tokens; "" is the default bot (WEBEX_TOKEN or
	// WEBEX_TOKEN_FILE); the others are named by COURIER_BOTS and read from
	// COURIER_BOT_<NAME>_TOKEN or _TOKEN_FILE. At least one.
	Tokens map[string]string

	// Queues maps queue names to priorities, at least 1 each
	// (COURIER_QUEUES, name:priority,...). Default {tasks.DefaultQueue: 1}.
	Queues map[string]int
	// StrictPriority always serves higher-priority queues first
	// (COURIER_STRICT_PRIORITY). Default false: weighted by priority.
	StrictPriority bool
	// Concurrency is the number of deliveries at once (COURIER_CONCURRENCY).
	// Default tasks.DefaultConcurrency (10).
	Concurrency int
	// Policy governs in-process attempts: COURIER_MAX_ATTEMPTS (first
	// included), COURIER_INITIAL_DELAY, COURIER_MAX_DELAY, COURIER_MULTIPLIER
	// and COURIER_JITTER (equal, full or none; also the Schedule's). Default
	// retrypolicy.Webex: 3 attempts, 2s doubling to at most 30s, equal jitter.
	Policy retrypolicy.Policy
	// Budget is the in-process waiting per delivery; a longer wait goes back
	// to the queue (COURIER_BUDGET). Default tasks.DefaultBudget (20s); must
	// be below ShutdownTimeout.
	Budget time.Duration
	// Schedule is the durable redelivery schedule: COURIER_REDELIVERY_BASE
	// (default 30s) doubling to COURIER_REDELIVERY_CAP (default 1h).
	Schedule retrypolicy.Schedule
	// MaxRedeliveries caps every task's redeliveries
	// (COURIER_MAX_REDELIVERIES). Default 0: each task's own limit (30
	// unless set at enqueue).
	MaxRedeliveries int
	// KeyedRetention is how long keyed tasks the worker itself enqueues
	// (relay, dead-letter requeue) are kept after delivery
	// (COURIER_KEYED_RETENTION). Default tasks.DefaultKeyedRetention (25h).
	KeyedRetention time.Duration
	// WaitReplicas makes the relay's and the admin requeue's enqueues wait
	// until this many replicas have each task (COURIER_WAIT_REPLICAS; see
	// tasks.ProducerConfig.WaitReplicas). Default 0: no wait.
	WaitReplicas int
	// TaskCheckInterval is the idle poll for new tasks, the latency floor of
	// an idle queue (COURIER_TASK_CHECK_INTERVAL). Default 25ms.
	TaskCheckInterval time.Duration
	// DelayedInterval is how often scheduled and redelivered tasks are made
	// due (COURIER_DELAYED_TASK_CHECK_INTERVAL). Default 1s.
	DelayedInterval time.Duration
	// ShutdownTimeout is how long a graceful stop lets deliveries under way
	// finish; those still running then are requeued
	// (COURIER_SHUTDOWN_TIMEOUT). Default 30s. The whole stop may take 10 s
	// more (stopMargin); a stop that outlasts that exits 1.
	ShutdownTimeout time.Duration
	// PoisonLimit dead-letters a task after this many of its deliveries died
	// with their worker (COURIER_POISON_LIMIT). Default 3; at least 1.
	PoisonLimit int
	// IsolateConcurrency bounds the isolated delivery processes (suspects
	// of killing their worker) that run at once
	// (COURIER_ISOLATE_CONCURRENCY); more are handed back to the queue.
	// Default 2; at least 1.
	IsolateConcurrency int
	// UnauthorizedDelay is the hold time and probe interval for a bot whose
	// token Webex rejects (COURIER_UNAUTHORIZED_DELAY). Default 5m.
	UnauthorizedDelay time.Duration
	// Gate is the limit every worker shares per bot: COURIER_RATE (requests
	// per second; default 0: no shared limit), COURIER_BURST (default 1),
	// COURIER_GATE_MAX_WAIT (default 2s), COURIER_BREAKER_FAILURES (default
	// 20; -1: no breaker), COURIER_BREAKER_WINDOW (default 30s),
	// COURIER_PROBE_INTERVAL (default 5s), COURIER_GATE_NAMESPACE (Redis key
	// prefix; default "courier").
	Gate tasks.GateConfig
	// ReconcileInterval is how often the worker moves on ordered sequences
	// whose head left asynq unnoticed (COURIER_RECONCILE_INTERVAL). Default
	// tasks.DefaultReconcileInterval (30s).
	ReconcileInterval time.Duration
	// RecoveryAfter: a dead worker's tasks go back to pending once it has
	// been silent this long (COURIER_RECOVERY_AFTER). Default
	// tasks.DefaultRecoveryAfter (5s), at least tasks.MinRecoveryAfter
	// (3s); 0: off (asynq's own recovery, 60-130s). Off in dev mode.
	RecoveryAfter time.Duration

	// LogFormat is auto (colour text on a terminal, JSON otherwise), text or
	// json (COURIER_LOG_FORMAT). Default auto.
	LogFormat string
	// LogLevel is debug, info, warn or error (COURIER_LOG_LEVEL). Default
	// info; debug adds a record per in-process attempt.
	LogLevel string

	// AdminAddr is the admin HTTP server's address: health, metrics,
	// pprof, dead letters, and the operator UI where Extras.Monitor is set
	// (COURIER_ADMIN_ADDR). Default DefaultAdminAddr;
	// "" turns it off; port 0 picks a free port.
	AdminAddr string
	// AdminWritable lets /deadletters (and the UI) re-run and delete tasks
	// (COURIER_ADMIN_WRITABLE). Default false. Beyond loopback it requires
	// AdminUser.
	AdminWritable bool
	// AdminUser and AdminPassword turn on HTTP basic auth for the admin
	// server (COURIER_ADMIN_USER; COURIER_ADMIN_PASSWORD or _FILE). Default
	// "": no auth.
	AdminUser     string
	AdminPassword string
	// DeadLetterMax is how many dead letters the courier:deadletters stream
	// keeps beyond asynq's archive (COURIER_DEADLETTER_MAX). Default
	// tasks.DefaultDeadLetterMax; at least 1.
	DeadLetterMax int

	// RelayAddr is the Webex-compatible relay's address (COURIER_RELAY_ADDR).
	// Default "": off.
	RelayAddr string
	// RelayQueue is the queue the relay enqueues to (COURIER_RELAY_QUEUE).
	// Default tasks.DefaultQueue.
	RelayQueue string
	// RelayTokens maps relay tokens to bot names ("" the default bot)
	// (COURIER_RELAY_TOKENS or _FILE: token=bot,...). Required with RelayAddr.
	RelayTokens map[string]string
	// RelayUnordered turns off the relay's per-destination order
	// (COURIER_RELAY_UNORDERED). Default false: each room's messages are
	// delivered in the order posted.
	RelayUnordered bool

	// Dev runs everything in-process: miniredis, the Webex simulator and
	// seeded demo messages (COURIER_DEV). Nothing is durable. Default false.
	// It needs Extras.Dev: cmd/dev has it, cmd/worker does not.
	Dev bool

	// Extras are the parts a build adds to the worker (not settings).
	Extras Extras

	isolate   func(context.Context) *exec.Cmd // set by Isolation
	isolated  bool                            // this process is an isolated delivery
	crashRoom string                          // CrashRoomEnv, a test hook
}

// Load reads the configuration from args and the environment and reports
// every problem at once. Tokens are read from the environment or files only,
// never from flags (flags show in process lists).
func Load(args []string, lookupEnv func(string) (string, bool)) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	c := &Config{}
	s := flags(c)
	err := s.Parse(args, lookupEnv)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if c.Dev {
		c.applyDev()
	} else {
		errs = append(errs, c.loadTokens(getenv)...)
	}
	if getenv(IsolatedEnv) != "" {
		// An isolated delivery serves neither the admin server nor the
		// relay, and its worker leaves their secrets out of its environment
		// (isolatedEnv).
		c.AdminAddr, c.AdminUser, c.RelayAddr = "", "", ""
	}
	if pw, perr := settings.Secret(getenv, "COURIER_ADMIN_PASSWORD", "COURIER_ADMIN_PASSWORD_FILE"); perr != nil {
		errs = append(errs, perr)
	} else {
		c.AdminPassword = pw
	}
	if c.RelayAddr != "" {
		errs = append(errs, c.loadRelayTokens(getenv)...)
	}
	if c.AdminUser != "" && c.AdminPassword == "" {
		errs = append(errs, errors.New("COURIER_ADMIN_USER is set: set COURIER_ADMIN_PASSWORD or COURIER_ADMIN_PASSWORD_FILE too"))
	}
	if c.AdminAddr != "" {
		if err := admin.CheckBind("COURIER_ADMIN_ADDR", c.AdminAddr, c.AdminWritable, c.AdminUser); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.validate()...)
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuration:\n%w", errors.Join(errs...))
	}
	return c, nil
}

// Usage writes every setting.
func Usage(w io.Writer) { flags(&Config{}).Usage(w) }

// Envs lists every environment variable the worker reads (besides the
// per-bot COURIER_BOT_<NAME>_TOKEN and _TOKEN_FILE).
func Envs() []string {
	return append(flags(&Config{}).Envs(), "WEBEX_TOKEN", "WEBEX_TOKEN_FILE", "COURIER_ADMIN_PASSWORD", "COURIER_ADMIN_PASSWORD_FILE",
		"COURIER_RELAY_TOKENS", "COURIER_RELAY_TOKENS_FILE")
}

func flags(c *Config) *settings.Set {
	s := settings.New("worker")
	s.String(&c.RedisURL, "redis-url", "REDIS_URL", "redis://127.0.0.1:6379/0", "Redis: redis:// or rediss://[user:password@]host:port/db; Sentinel: ?master_name=NAME&addr=host:port…; Cluster: ?addr=host:port&addr=…")
	s.Func("redis-mode", "REDIS_MODE", "auto", "how to read REDIS_URL: auto, single, sentinel or cluster (a cluster behind one address needs cluster)", func(v string) (err error) {
		c.RedisMode, err = redisurl.ParseMode(v)
		return err
	})
	s.Duration(&c.RedisTimeout, "redis-timeout", "COURIER_REDIS_TIMEOUT", 10*time.Second, "how long start-up waits for Redis")
	s.String(&c.WebexBaseURL, "webex-base-url", "WEBEX_BASE_URL", webex.DefaultBaseURL, "Webex API base URL")
	s.Func("bots", "COURIER_BOTS", "", "further bots by name, comma-separated; each reads COURIER_BOT_<NAME>_TOKEN or _TOKEN_FILE", func(v string) error {
		c.Tokens = map[string]string{}
		for _, n := range splitList(v) {
			if !botName.MatchString(n) {
				return fmt.Errorf("bot name %q: use letters, digits, - and _", n)
			}
			c.Tokens[n] = ""
		}
		return nil
	})
	s.Func("queues", "COURIER_QUEUES", tasks.DefaultQueue+":1", "queues and priorities, name:priority,...", func(v string) error {
		c.Queues = map[string]int{}
		for _, q := range splitList(v) {
			name, prio, ok := strings.Cut(q, ":")
			p, err := strconv.Atoi(prio)
			if !ok {
				p, err = 1, nil
			}
			if name == "" || err != nil || p < 1 {
				return fmt.Errorf("%q: want name:priority with a priority of at least 1", q)
			}
			c.Queues[name] = p
		}
		if len(c.Queues) == 0 {
			return errors.New("at least one queue is required")
		}
		return nil
	})
	s.Bool(&c.StrictPriority, "strict-priority", "COURIER_STRICT_PRIORITY", false, "always serve higher-priority queues first")
	s.Int(&c.Concurrency, "concurrency", "COURIER_CONCURRENCY", tasks.DefaultConcurrency, "deliveries at once")
	s.Int(&c.Policy.MaxAttempts, "max-attempts", "COURIER_MAX_ATTEMPTS", retrypolicy.Webex.MaxAttempts, "in-process attempts per delivery, the first included")
	s.Duration(&c.Policy.InitialDelay, "initial-delay", "COURIER_INITIAL_DELAY", retrypolicy.Webex.InitialDelay, "in-process delay before the second attempt")
	s.Duration(&c.Policy.MaxDelay, "max-delay", "COURIER_MAX_DELAY", retrypolicy.Webex.MaxDelay, "cap on in-process delays")
	s.Float(&c.Policy.Multiplier, "multiplier", "COURIER_MULTIPLIER", retrypolicy.Webex.Multiplier, "growth of in-process delays")
	s.Func("jitter", "COURIER_JITTER", "equal", "jitter: equal ([d/2, d]), full ([0, d]) or none", func(v string) error {
		j, err := retrypolicy.ParseJitter(v)
		c.Policy.Jitter, c.Schedule.Jitter = j, j
		return err
	})
	s.Duration(&c.Budget, "budget", "COURIER_BUDGET", tasks.DefaultBudget, "in-process waiting per delivery; longer waits go back to the queue")
	s.Duration(&c.Schedule.Base, "redelivery-base", "COURIER_REDELIVERY_BASE", retrypolicy.DefaultSchedule.Base, "delay before the first redelivery")
	s.Duration(&c.Schedule.Cap, "redelivery-cap", "COURIER_REDELIVERY_CAP", retrypolicy.DefaultSchedule.Cap, "cap on redelivery delays")
	s.Int(&c.MaxRedeliveries, "max-redeliveries", "COURIER_MAX_REDELIVERIES", 0, "cap on every task's redeliveries; 0: each task's own (30 unless set at enqueue)")
	s.Int(&c.WaitReplicas, "wait-replicas", "COURIER_WAIT_REPLICAS", 0, "the relay's enqueues return only once this many Redis replicas have the task (WAIT): none lost in a failover; 0: no wait")
	s.Duration(&c.KeyedRetention, "keyed-retention", "COURIER_KEYED_RETENTION", tasks.DefaultKeyedRetention, "how long keyed tasks that the worker itself enqueues (relay, dead-letter requeue) are kept after delivery")
	s.Duration(&c.TaskCheckInterval, "task-check-interval", "COURIER_TASK_CHECK_INTERVAL", tasks.DefaultTaskCheckInterval, "idle poll for new tasks: latency floor of an idle queue")
	s.Duration(&c.DelayedInterval, "delayed-task-check-interval", "COURIER_DELAYED_TASK_CHECK_INTERVAL", tasks.DefaultDelayedTaskCheckInterval, "how often scheduled and redelivered tasks are made due")
	s.Duration(&c.ShutdownTimeout, "shutdown-timeout", "COURIER_SHUTDOWN_TIMEOUT", tasks.DefaultShutdownTimeout, "how long a stop lets deliveries under way finish (the whole stop: 10s more, then exit 1)")
	s.Int(&c.PoisonLimit, "poison-limit", "COURIER_POISON_LIMIT", tasks.DefaultPoisonLimit, "dead-letter a task after this many of its isolated deliveries died with their process")
	s.Int(&c.IsolateConcurrency, "isolate-concurrency", "COURIER_ISOLATE_CONCURRENCY", tasks.DefaultIsolateConcurrency, "isolated delivery processes (suspects of killing their worker) run at once; more are handed back to the queue")
	s.Duration(&c.UnauthorizedDelay, "unauthorized-delay", "COURIER_UNAUTHORIZED_DELAY", tasks.DefaultUnauthorizedDelay, "hold time and probe interval for a bot whose token is rejected")
	s.Duration(&c.RecoveryAfter, "recovery-after", "COURIER_RECOVERY_AFTER", tasks.DefaultRecoveryAfter, "take over a dead worker's tasks once it has been silent this long; 0: off (asynq's own recovery, 60-130s)")
	s.Float(&c.Gate.Rate, "rate", "COURIER_RATE", 0, "requests per second per bot, shared by all workers; 0: no shared limit")
	s.Int(&c.Gate.Burst, "burst", "COURIER_BURST", tasks.DefaultGateBurst, "requests a bot may send at once above the shared rate")
	s.Int(&c.Gate.Batch, "rate-batch", "COURIER_RATE_BATCH", tasks.DefaultGateBatch, "with COURIER_RATE, permits a worker takes per Redis round trip; all workers together exceed the rate by at most this many")
	s.Duration(&c.Gate.StateCache, "gate-state-cache", "COURIER_GATE_STATE_CACHE", tasks.DefaultGateStateCache, "how long a worker trusts an open gate without asking Redis (changes reach it at once through pub/sub); negative: ask before every send")
	s.Duration(&c.Gate.MaxWait, "gate-max-wait", "COURIER_GATE_MAX_WAIT", tasks.DefaultGateMaxWait, "longest in-process wait for the shared limit or cool-down; longer waits hand the task back")
	s.Int(&c.Gate.BreakerFailures, "breaker-failures", "COURIER_BREAKER_FAILURES", tasks.DefaultGateBreakerFailures, "open the shared circuit after this many transient failures in the window; -1: no breaker")
	s.Duration(&c.Gate.BreakerWindow, "breaker-window", "COURIER_BREAKER_WINDOW", tasks.DefaultGateBreakerWindow, "window the breaker counts failures in")
	s.Duration(&c.Gate.ProbeInterval, "probe-interval", "COURIER_PROBE_INTERVAL", tasks.DefaultGateProbeInterval, "while the circuit is open, one probe request per interval across all workers")
	s.String(&c.Gate.Namespace, "gate-namespace", "COURIER_GATE_NAMESPACE", tasks.DefaultGateNamespace, "Redis key prefix of the shared gate: workers sharing it share each bot's limits")
	s.String(&c.LogFormat, "log-format", "COURIER_LOG_FORMAT", "auto", "auto (colour text on a terminal, JSON otherwise), text or json")
	s.String(&c.LogLevel, "log-level", "COURIER_LOG_LEVEL", "info", "debug, info, warn or error")
	s.String(&c.AdminAddr, "admin-addr", "COURIER_ADMIN_ADDR", DefaultAdminAddr, "admin HTTP server (health, metrics, pprof, dead letters); empty: off")
	s.Bool(&c.AdminWritable, "admin-writable", "COURIER_ADMIN_WRITABLE", false, "let /deadletters (and cmd/dev's asynqmon) re-run and delete tasks")
	s.String(&c.AdminUser, "admin-user", "COURIER_ADMIN_USER", "", "HTTP basic auth user for the admin server (password: COURIER_ADMIN_PASSWORD or _FILE)")
	s.Int(&c.DeadLetterMax, "deadletter-max", "COURIER_DEADLETTER_MAX", tasks.DefaultDeadLetterMax, "dead letters kept in the courier:deadletters stream beyond asynq's archive")
	s.String(&c.RelayAddr, "relay-addr", "COURIER_RELAY_ADDR", "", "Webex-compatible relay listener (e.g. 127.0.0.1:8081); empty: off")
	s.String(&c.RelayQueue, "relay-queue", "COURIER_RELAY_QUEUE", tasks.DefaultQueue, "queue the relay enqueues to")
	s.Bool(&c.RelayUnordered, "relay-unordered", "COURIER_RELAY_UNORDERED", false, "relay without per-destination order (default: each room's messages in the order posted)")
	s.Duration(&c.ReconcileInterval, "reconcile-interval", "COURIER_RECONCILE_INTERVAL", tasks.DefaultReconcileInterval, "how often ordered sequences whose head left unnoticed are moved on")
	s.Bool(&c.Dev, "dev", "COURIER_DEV", false, "zero-install demo (cmd/dev only): embedded Redis (not durable), the Webex simulator, seeded messages")
	return s
}

var botName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// loadTokens reads the default bot's token and each named bot's.
func (c *Config) loadTokens(getenv func(string) string) []error {
	if c.Tokens == nil {
		c.Tokens = map[string]string{}
	}
	var errs []error
	if tok, err := settings.Secret(getenv, "WEBEX_TOKEN", "WEBEX_TOKEN_FILE"); err != nil {
		errs = append(errs, err)
	} else if tok != "" {
		c.Tokens[""] = tok
	}
	names := make([]string, 0, len(c.Tokens))
	for n := range c.Tokens {
		if n != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		prefix := "COURIER_BOT_" + strings.ToUpper(strings.ReplaceAll(n, "-", "_")) + "_TOKEN"
		tok, err := settings.Secret(getenv, prefix, prefix+"_FILE")
		switch {
		case err != nil:
			errs = append(errs, err)
		case tok == "":
			errs = append(errs, fmt.Errorf("bot %q: set %s or %s_FILE", n, prefix, prefix))
		default:
			c.Tokens[n] = tok
		}
	}
	if len(c.Tokens) == 0 {
		errs = append(errs, errors.New("no bot: set WEBEX_TOKEN or WEBEX_TOKEN_FILE (or COURIER_BOTS with their tokens)"))
	}
	return errs
}

// loadRelayTokens reads COURIER_RELAY_TOKENS (or _FILE): token=bot pairs,
// comma- or line-separated; "default" names the default bot.
func (c *Config) loadRelayTokens(getenv func(string) string) []error {
	raw, err := settings.Secret(getenv, "COURIER_RELAY_TOKENS", "COURIER_RELAY_TOKENS_FILE")
	if err != nil {
		return []error{err}
	}
	c.RelayTokens = map[string]string{}
	var errs []error
	for i, pair := range strings.FieldsFunc(raw, func(r rune) bool { return r == ',' || r == '\n' }) {
		tok, bot, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if bot == "default" {
			bot = ""
		}
		switch _, known := c.Tokens[bot]; {
		case !ok || tok == "":
			errs = append(errs, fmt.Errorf("COURIER_RELAY_TOKENS entry %d: want token=bot", i+1))
		case !known:
			errs = append(errs, fmt.Errorf("COURIER_RELAY_TOKENS entry %d: bot %q is not configured", i+1, bot))
		default:
			c.RelayTokens[tok] = bot
		}
	}
	if len(c.RelayTokens) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("COURIER_RELAY_ADDR is set: set COURIER_RELAY_TOKENS or COURIER_RELAY_TOKENS_FILE (token=bot,...)"))
	}
	return errs
}

func (c *Config) validate() []error {
	var errs []error
	if _, err := redisurl.Parse(c.RedisURL, c.RedisMode); err != nil {
		errs = append(errs, fmt.Errorf("REDIS_URL %s: %w", redisurl.Redact(c.RedisURL), err))
	}
	if c.RedisTimeout <= 0 {
		errs = append(errs, fmt.Errorf("COURIER_REDIS_TIMEOUT is %v: must be greater than 0", c.RedisTimeout))
	}
	if !strings.HasPrefix(c.WebexBaseURL, "http://") && !strings.HasPrefix(c.WebexBaseURL, "https://") {
		errs = append(errs, fmt.Errorf("WEBEX_BASE_URL %q: must start with http:// or https://", c.WebexBaseURL))
	}
	errs = append(errs, CheckLogSettings(c.LogFormat, c.LogLevel)...)
	if c.DeadLetterMax < 1 {
		errs = append(errs, fmt.Errorf("COURIER_DEADLETTER_MAX is %d: must be at least 1", c.DeadLetterMax))
	}
	if c.WaitReplicas < 0 {
		errs = append(errs, fmt.Errorf("COURIER_WAIT_REPLICAS is %d: must be 0 (no wait) or more", c.WaitReplicas))
	}
	if c.KeyedRetention <= 0 {
		errs = append(errs, fmt.Errorf("COURIER_KEYED_RETENTION is %v: must be greater than 0", c.KeyedRetention))
	}
	if c.RecoveryAfter != 0 && c.RecoveryAfter < tasks.MinRecoveryAfter {
		errs = append(errs, fmt.Errorf("COURIER_RECOVERY_AFTER is %v: must be 0 (off) or at least %v (three liveness refreshes)", c.RecoveryAfter, tasks.MinRecoveryAfter))
	}
	if err := c.workerConfig(nil).WithDefaults().ValidateNamed(settingName); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// settingNames names the tasks.WorkerConfig fields the worker fills by the
// setting a user sets.
var settingNames = map[string]string{
	"Bots": "WEBEX_TOKEN", "Queues": "COURIER_QUEUES", "Concurrency": "COURIER_CONCURRENCY", "Budget": "COURIER_BUDGET",
	"Policy.MaxAttempts": "COURIER_MAX_ATTEMPTS", "Policy.InitialDelay": "COURIER_INITIAL_DELAY", "Policy.MaxDelay": "COURIER_MAX_DELAY",
	"Policy.Multiplier": "COURIER_MULTIPLIER", "Policy.Jitter": "COURIER_JITTER", "Schedule.Jitter": "COURIER_JITTER",
	"Schedule.Base": "COURIER_REDELIVERY_BASE", "Schedule.Cap": "COURIER_REDELIVERY_CAP", "MaxRedeliveries": "COURIER_MAX_REDELIVERIES",
	"ShutdownTimeout": "COURIER_SHUTDOWN_TIMEOUT", "TaskCheckInterval": "COURIER_TASK_CHECK_INTERVAL",
	"DelayedTaskCheckInterval": "COURIER_DELAYED_TASK_CHECK_INTERVAL", "PoisonLimit": "COURIER_POISON_LIMIT",
	"IsolateConcurrency": "COURIER_ISOLATE_CONCURRENCY",
	"UnauthorizedDelay":  "COURIER_UNAUTHORIZED_DELAY", "Gate.Rate": "COURIER_RATE", "Gate.Burst": "COURIER_BURST", "Gate.Batch": "COURIER_RATE_BATCH",
	"Gate.MaxWait": "COURIER_GATE_MAX_WAIT", "Gate.BreakerWindow": "COURIER_BREAKER_WINDOW", "Gate.ProbeInterval": "COURIER_PROBE_INTERVAL",
	"ReconcileInterval": "COURIER_RECONCILE_INTERVAL",
}

// settingName is the setting behind a tasks.WorkerConfig field, or the
// field's own name for one the worker leaves at its default.
func settingName(path string) string { return cmp.Or(settingNames[path], path) }

// workerConfig is the tasks.WorkerConfig this configuration describes.
func (c *Config) workerConfig(bots map[string]tasks.Sender) tasks.WorkerConfig {
	if bots == nil { // validation only: a placeholder per bot
		bots = map[string]tasks.Sender{}
		for n := range c.Tokens {
			bots[n] = (*webex.Client)(nil)
		}
		if len(bots) == 0 {
			bots[""] = (*webex.Client)(nil)
		}
	}
	sched := c.Schedule.WithDefaults()
	return tasks.WorkerConfig{
		Bots: bots, Queues: c.Queues, StrictPriority: c.StrictPriority, Concurrency: c.Concurrency,
		Policy: c.Policy, Budget: c.Budget, Schedule: sched, MaxRedeliveries: c.MaxRedeliveries,
		ShutdownTimeout: c.ShutdownTimeout, TaskCheckInterval: c.TaskCheckInterval, DelayedTaskCheckInterval: c.DelayedInterval,
		PoisonLimit: c.PoisonLimit, IsolateConcurrency: c.IsolateConcurrency, UnauthorizedDelay: c.UnauthorizedDelay, Gate: c.Gate, ReconcileInterval: c.ReconcileInterval,
	}
}
