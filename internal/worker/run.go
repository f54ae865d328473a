package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/admin"
	"github.com/courier-dev/courier/internal/lifecycle"
	"github.com/courier-dev/courier/internal/metrics"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/internal/signals"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Exit codes of cmd/worker.
const (
	ExitOK      = 0 // stopped by SIGINT or SIGTERM
	ExitFailure = 1 // a part failed to start or stopped by itself, or the stop outlasted its bound
	ExitConfig  = 2 // Load refused the configuration
	// ExitTombstoned: another worker found this one dead and took its tasks
	// over (it was paused or cut off long enough to look dead). It exits at
	// once, so that asynq records nothing for those tasks, and its
	// supervisor restarts it.
	ExitTombstoned = 3
)

// ExitCode is the exit code for Run's error.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, tasks.ErrTakenOver), errors.Is(err, tasks.ErrFenceUnknown):
		return ExitTombstoned
	}
	return ExitFailure
}

// Run runs the worker's parts as one ordered group (internal/lifecycle) and
// blocks until ctx ends or a part fails. In start order: the dev-mode
// Redis and simulator, the Redis check, the delivery worker's build, the
// admin server, the token checks, the crash-recovery detector, the delivery
// server, the ordering reconciler and the relay. Whatever ends the group (a
// signal, a part failing to start, a part stopping by itself), the started
// parts stop in reverse order: the relay stops accepting; fetching stops,
// in-process waits end, requests under way finish and what is left is
// requeued within the shutdown timeout; the detector fences until then; the
// admin server stops last. The whole stop is bounded by the shutdown
// timeout + stopMargin. Run returns nil after ctx ended, else a
// *lifecycle.PartError naming the part, or a *lifecycle.StopError when the
// stop outlasted its bound. cfg is not changed.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	p := &process{cfg: *cfg, log: log}
	if p.cfg.Dev && p.cfg.Extras.Dev == nil {
		return errNoDevMode
	}
	if p.cfg.isolated {
		return p.runIsolated(ctx)
	}
	var g lifecycle.Group
	if p.cfg.Dev {
		g.Add(p.devPart())
	}
	g.Add(p.redisPart())
	g.Add(lifecycle.Part{Name: "worker", Start: p.build})
	if p.cfg.AdminAddr != "" {
		g.Add(p.adminPart())
	}
	// After the admin server listens (/healthz answers while Webex is
	// slow), before delivery starts: a rejected token holds its bot's tasks.
	g.Add(lifecycle.Part{Name: "token check", Start: func(ctx context.Context) error {
		checkTokens(ctx, p.clients, p.w.Handler(), log)
		return nil
	}})
	if p.cfg.recoveryOn() {
		// Before delivery, so that it stops after it: it fences the
		// deliveries under way through the shutdown too.
		g.Add(p.detectorPart())
	}
	g.Add(p.deliveryPart())
	g.Add(p.reconcilerPart())
	if p.cfg.RelayAddr != "" {
		g.Add(p.relayPart())
	}
	g.StopTimeout = p.cfg.ShutdownTimeout + stopMargin
	err := g.Run(ctx, p.stopping)
	if se := (*lifecycle.StopError)(nil); errors.As(err, &se) {
		log.Error("stop did not finish in time: exiting", "not_stopped", se.Parts, "timeout", g.StopTimeout)
		return err
	}
	log.Info("stopped")
	return err
}

// Main runs cfg as command name does (cmd/worker, cmd/dev): until SIGINT or
// SIGTERM, a second one exiting at once, logging to stderr; it returns the
// exit code.
func Main(name string, cfg *Config) int {
	ctx, stop := signals.Context(context.Background(), nil, func(s os.Signal) {
		fmt.Fprintf(os.Stderr, "%s: second %v: exiting now\n", name, s)
		os.Exit(ExitFailure)
	})
	defer stop()
	err := Run(ctx, cfg, NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	return ExitCode(err)
}

// stopMargin is how much longer than the shutdown timeout (the bound on
// deliveries under way) the whole stop may take: the relay's 5 s before
// delivery stops, the admin server's 2 s after, and asynq's last writes.
// A stop that outlasts it (Redis hung) exits 1 at once; asynq's leases
// and crash recovery give the tasks it held to other workers.
const stopMargin = 10 * time.Second

// runIsolated delivers one suspect task for the worker that started this
// process (isolate.go): Redis and the delivery worker, none of the servers.
func (p *process) runIsolated(ctx context.Context) error {
	r := p.redisPart()
	if err := r.Start(ctx); err != nil {
		return err
	}
	defer r.Interrupt()
	if err := p.build(ctx); err != nil {
		return err
	}
	return p.w.ServeIsolated(ctx, os.Stdin, os.Stdout)
}

// process is what the worker's parts share.
type process struct {
	cfg Config
	log *slog.Logger

	opt     *redisurl.Options
	rdb     redis.UniversalClient
	reg     *prometheus.Registry
	clients map[string]*webex.Client
	dead    *tasks.DeadLetters
	w       *tasks.Worker
	// recovery is the crash-recovery detector; nil when it is off.
	recovery *tasks.Recovery
	// adminAddr is where the admin server listens ("" when off).
	adminAddr string
}

func (p *process) stopping(cause error) {
	var pe *lifecycle.PartError
	if errors.As(cause, &pe) {
		p.log.Error("stopping: a part failed", "part", pe.Part, "timeout", p.cfg.ShutdownTimeout)
		return
	}
	p.log.Info("stopping: no new tasks; in-process waits end; requests under way finish", "timeout", p.cfg.ShutdownTimeout)
}

// devPart runs dev mode's embedded Redis and Webex simulator and points the
// configuration at them.
func (p *process) devPart() lifecycle.Part {
	stop := func() {}
	return lifecycle.Part{Name: "dev mode",
		Start: func(context.Context) (err error) {
			s, err := p.cfg.Extras.Dev(&p.cfg, p.log)
			if err == nil {
				stop = s
			}
			return err
		},
		Interrupt: func() { stop() },
	}
}

// redisPart waits for Redis and warns about settings that lose tasks.
func (p *process) redisPart() lifecycle.Part {
	return lifecycle.Part{Name: "redis",
		Start: func(ctx context.Context) error {
			LogRedisClient(p.log) // go-redis's own lines, as structured records
			opt, err := redisurl.Parse(p.cfg.RedisURL, p.cfg.RedisMode)
			if err != nil {
				return fmt.Errorf("REDIS_URL %s: %w", redisurl.Redact(p.cfg.RedisURL), err)
			}
			if err := waitForRedis(ctx, opt, p.cfg.RedisTimeout); err != nil {
				return fmt.Errorf("%s %s", redisurl.Redact(p.cfg.RedisURL), redisurl.Scrub(err.Error(), p.cfg.RedisURL))
			}
			p.opt, p.rdb = opt, opt.NewClient()
			p.log.Info("redis reachable", "redis", redisurl.Redact(p.cfg.RedisURL), "mode", opt.Mode)
			if !p.cfg.Dev && !p.cfg.isolated {
				checkRedisSettings(ctx, p.rdb, p.log)
			}
			return nil
		},
		Interrupt: func() { _ = p.rdb.Close() },
	}
}

// build makes the Webex clients, the metrics and the delivery worker.
func (p *process) build(ctx context.Context) error {
	p.reg = prometheus.NewRegistry()
	m := metrics.New(p.reg, asynq.NewInspectorFromRedisClient(p.rdb), p.cfg.Queues)
	bots := map[string]tasks.Sender{}
	p.clients = map[string]*webex.Client{}
	for name, tok := range p.cfg.Tokens {
		hc := webex.DefaultHTTPClient()
		hc.Transport = m.Transport(hc.Transport)
		c, err := webex.New(webex.Config{BaseURL: p.cfg.WebexBaseURL, Token: tok, UserAgent: "courier-worker", HTTPClient: hc})
		if err != nil {
			return fmt.Errorf("bot %q: %w", botLabel(name), err)
		}
		bots[name], p.clients[name] = c, c
		if p.cfg.crashRoom != "" {
			bots[name] = crashSender{Sender: c, room: p.cfg.crashRoom}
		}
		m.Bot(name)
	}
	p.dead = tasks.NewDeadLetters(p.rdb, "", p.cfg.DeadLetterMax)
	wcfg := p.cfg.workerConfig(bots)
	wcfg.Logger, wcfg.Observer, wcfg.DeadLetters, wcfg.Isolate = p.log, m, p.dead, p.cfg.isolate
	if p.log.Enabled(ctx, slog.LevelDebug) {
		wcfg.AttemptLogger = p.log // each in-process attempt, at debug
	}
	recovery, err := newRecovery(&p.cfg, p.rdb, p.reg, p.log)
	if err != nil {
		return err
	}
	if recovery != nil {
		wcfg.Fence = recovery
	}
	w, err := tasks.NewWorker(p.rdb, wcfg)
	p.w, p.recovery = w, recovery
	return err
}

// ready is nil when the worker can deliver.
func (p *process) ready(ctx context.Context) error {
	if err := p.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return p.w.Ready()
}

// adminPart serves health, metrics, pprof, the dead letters and, where
// Extras.Monitor is set, the operator UI.
func (p *process) adminPart() lifecycle.Part {
	var srv *http.Server
	var ln net.Listener
	closeMon := func() error { return nil }
	return lifecycle.Part{Name: "admin server",
		Start: func(context.Context) error {
			producer, err := tasks.NewProducer(p.rdb, tasks.ProducerConfig{KeyedRetention: p.cfg.KeyedRetention, Source: "admin", WaitReplicas: p.cfg.WaitReplicas})
			if err != nil {
				return err
			}
			p.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "courier_worker_ready",
				Help: "1 when this worker can deliver (Redis reachable, running, every bot's token accepted), else 0.",
			}, func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				if p.ready(ctx) != nil {
					return 0
				}
				return 1
			}))
			if ln, err = listenAdmin(p.cfg.AdminAddr, p.cfg.Dev); err != nil {
				return err
			}
			var mon http.Handler
			if p.cfg.Extras.Monitor != nil {
				mon, closeMon = p.cfg.Extras.Monitor(p.opt, p.cfg.AdminWritable)
			}
			h := admin.Handler(admin.Config{Monitor: mon, Ready: p.ready, Gatherer: p.reg, Writable: p.cfg.AdminWritable,
				Addr: p.cfg.AdminAddr, User: p.cfg.AdminUser, Password: p.cfg.AdminPassword, DeadLetters: p.dead, Producer: producer})
			srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
			p.adminAddr = ln.Addr().String()
			attrs := []any{"url", "http://" + p.adminAddr, "writable", p.cfg.AdminWritable, "basic_auth", p.cfg.AdminUser != ""}
			if mon != nil {
				attrs = append(attrs, "asynqmon", "http://"+p.adminAddr+admin.MonitoringPath)
			}
			p.log.Info("admin server listening", attrs...)
			return nil
		},
		Run: func() error { return serve(srv, ln) },
		Interrupt: func() {
			shutdown(srv, 2*time.Second)
			_ = closeMon()
		},
	}
}

// deliveryPart is the asynq server that fetches and delivers tasks.
func (p *process) deliveryPart() lifecycle.Part {
	return lifecycle.Part{Name: "delivery server",
		Start: func(ctx context.Context) error {
			if err := p.w.Start(); err != nil {
				return err
			}
			p.log.Info("worker started", "queues", p.cfg.Queues, "concurrency", p.cfg.Concurrency, "bots", len(p.clients),
				"webex", p.cfg.WebexBaseURL)
			if p.cfg.Dev {
				devStarted(ctx, &p.cfg, p.adminAddr, p.rdb, p.log)
			}
			return nil
		},
		// Fetching stops, in-process waits end, requests under way finish,
		// and what is left is requeued within the shutdown timeout.
		Interrupt: func() { p.w.Shutdown() },
	}
}

// reconcilerPart moves on ordered sequences whose head left asynq unnoticed.
func (p *process) reconcilerPart() lifecycle.Part {
	ctx, cancel := context.WithCancel(context.Background())
	return lifecycle.Part{Name: "ordering reconciler",
		Run:       func() error { return p.w.Reconciler().Run(ctx) },
		Interrupt: cancel,
	}
}

// detectorPart finds workers that died and hands their tasks back at once.
// When it finds this worker's own tombstone, Halt exits the process with
// ExitTombstoned before anything else runs.
func (p *process) detectorPart() lifecycle.Part {
	ctx, cancel := context.WithCancel(context.Background())
	return lifecycle.Part{Name: "crash-recovery detector",
		Run:       func() error { return p.recovery.Run(ctx) },
		Interrupt: cancel,
	}
}

// relayPart accepts Webex-shaped requests and enqueues them. It starts
// after delivery and stops before it: an answered request is queued.
func (p *process) relayPart() lifecycle.Part {
	var srv *http.Server
	var ln net.Listener
	return lifecycle.Part{Name: "relay",
		Start: func(context.Context) error {
			producer, err := tasks.NewProducer(p.rdb, tasks.ProducerConfig{KeyedRetention: p.cfg.KeyedRetention, Source: "relay", RelayKeys: true, WaitReplicas: p.cfg.WaitReplicas})
			if err != nil {
				return err
			}
			rl := relay.New(relay.Config{Tokens: p.cfg.RelayTokens, Producer: producer, Inspector: asynq.NewInspectorFromRedisClient(p.rdb),
				Queue: p.cfg.RelayQueue, Unordered: p.cfg.RelayUnordered, Logger: p.log, Registerer: p.reg})
			if ln, err = net.Listen("tcp", p.cfg.RelayAddr); err != nil {
				return fmt.Errorf("listen on %s: %w", p.cfg.RelayAddr, err)
			}
			srv = &http.Server{Handler: rl, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
			p.log.Info("relay listening", "url", "http://"+ln.Addr().String()+"/v1", "queue", p.cfg.RelayQueue, "tokens", len(p.cfg.RelayTokens))
			return nil
		},
		Run:       func() error { return serve(srv, ln) },
		Interrupt: func() { shutdown(srv, 5*time.Second) },
	}
}

// serve serves until shutdown; it returns nil once shut down.
func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func shutdown(srv *http.Server, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = srv.Shutdown(ctx)
}

// listenAdmin binds the admin server; in dev mode a taken port falls back
// to a free one.
func listenAdmin(addr string, dev bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && dev {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}
