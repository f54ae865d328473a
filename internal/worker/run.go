package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/lmittmann/tint"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/admin"
	"github.com/courier-dev/courier/internal/metrics"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("COURIER_LOG_LEVEL %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger builds the process logger: colour text (tint) when format is
// "text", or "auto" and w is a terminal; JSON otherwise.
func NewLogger(w io.Writer, format, level string) *slog.Logger {
	l, _ := parseLevel(level)
	if format == "text" || (format == "auto" && isTerminal(w)) {
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: l, TimeFormat: time.TimeOnly}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Run starts the worker and blocks until ctx ends, then stops it gracefully:
// fetching stops, in-process waits end, requests under way finish, and what
// is left is requeued within the shutdown timeout.
func Run(ctx context.Context, cfg *Config, log *slog.Logger) error {
	if cfg.Dev {
		dev, err := startDev(cfg, log)
		if err != nil {
			return err
		}
		defer dev.close()
	}
	redis.SetLogger(redisLogger{log}) // go-redis's own lines, as structured records
	opt, err := redisurl.Parse(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("REDIS_URL %s: %w", redisurl.Redact(cfg.RedisURL), err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	if err := waitForRedis(ctx, opt, cfg.RedisTimeout); err != nil {
		return fmt.Errorf("redis at %s: %s", redisurl.Redact(cfg.RedisURL), redisurl.Scrub(err.Error(), cfg.RedisURL))
	}
	log.Info("redis reachable", "redis", redisurl.Redact(cfg.RedisURL))
	if !cfg.Dev && !cfg.isolated {
		checkRedisSettings(ctx, rdb, log)
	}

	reg := prometheus.NewRegistry()
	m := metrics.New(reg, asynq.NewInspectorFromRedisClient(rdb), cfg.Queues)
	bots := map[string]tasks.Sender{}
	clients := map[string]*webex.Client{}
	for name, tok := range cfg.Tokens {
		hc := webex.DefaultHTTPClient()
		hc.Transport = m.Transport(hc.Transport)
		c, err := webex.New(webex.Config{BaseURL: cfg.WebexBaseURL, Token: tok, UserAgent: "courier-worker", HTTPClient: hc})
		if err != nil {
			return fmt.Errorf("bot %q: %w", botLabel(name), err)
		}
		bots[name], clients[name] = c, c
		if cfg.crashRoom != "" {
			bots[name] = crashSender{Sender: c, room: cfg.crashRoom}
		}
		m.Bot(name)
	}
	dead := tasks.NewDeadLetters(rdb, "", cfg.DeadLetterMax)
	wcfg := cfg.workerConfig(bots)
	wcfg.Logger, wcfg.Observer, wcfg.DeadLetters, wcfg.Isolate = log, m, dead, cfg.isolate
	if log.Enabled(ctx, slog.LevelDebug) {
		wcfg.AttemptLogger = log // each in-process attempt, at debug
	}
	recovery, err := newRecovery(cfg, rdb, reg, log)
	if err != nil {
		return err
	}
	if recovery != nil {
		wcfg.Fence = recovery.Fence
	}
	w, err := tasks.NewWorker(rdb, wcfg)
	if err != nil {
		return err
	}
	if cfg.isolated { // one suspect's delivery, for the worker that started this process
		return w.ServeIsolated(ctx, os.Stdin, os.Stdout)
	}
	var adminSrv *http.Server
	if cfg.AdminAddr != "" {
		producer, err := tasks.NewProducer(rdb, tasks.ProducerConfig{KeyedRetention: cfg.KeyedRetention, Source: "admin"})
		if err != nil {
			return err
		}
		ready := func(ctx context.Context) error {
			if err := rdb.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			return w.Ready()
		}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "courier_worker_ready",
			Help: "1 when this worker can deliver (Redis reachable, running, every bot's token accepted), else 0.",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if ready(ctx) != nil {
				return 0
			}
			return 1
		}))
		h, closeMon := admin.Handler(admin.Config{Redis: opt, Ready: ready, Gatherer: reg, Writable: cfg.AdminWritable,
			Addr: cfg.AdminAddr, User: cfg.AdminUser, Password: cfg.AdminPassword, DeadLetters: dead, Producer: producer})
		defer closeMon()
		ln, err := listenAdmin(cfg.AdminAddr, cfg.Dev)
		if err != nil {
			return err
		}
		adminSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = adminSrv.Serve(ln) }()
		cfg.AdminAddr = ln.Addr().String()
		log.Info("admin server listening", "url", "http://"+cfg.AdminAddr, "asynqmon", "http://"+cfg.AdminAddr+admin.MonitoringPath,
			"asynqmon_writable", cfg.AdminWritable, "basic_auth", cfg.AdminUser != "")
	}
	// After the admin server listens (/healthz answers while Webex is
	// slow), before delivery starts: a rejected token holds its bot's tasks.
	checkTokens(ctx, clients, w.Handler(), log)
	var relaySrv *http.Server
	if cfg.RelayAddr != "" {
		producer, err := tasks.NewProducer(rdb, tasks.ProducerConfig{KeyedRetention: cfg.KeyedRetention, Source: "relay"})
		if err != nil {
			return err
		}
		rl := relay.New(relay.Config{Tokens: cfg.RelayTokens, Producer: producer, Inspector: asynq.NewInspectorFromRedisClient(rdb),
			Queue: cfg.RelayQueue, Unordered: cfg.RelayUnordered, Logger: log, Registerer: reg})
		ln, err := net.Listen("tcp", cfg.RelayAddr)
		if err != nil {
			return fmt.Errorf("relay on %s: %w", cfg.RelayAddr, err)
		}
		relaySrv = &http.Server{Handler: rl, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
		go func() { _ = relaySrv.Serve(ln) }()
		log.Info("relay listening", "url", "http://"+ln.Addr().String()+"/v1", "queue", cfg.RelayQueue, "tokens", len(cfg.RelayTokens))
	}
	if err := w.Start(); err != nil {
		return err
	}
	if recovery != nil {
		go func() { _ = recovery.Run(ctx) }() // ErrTombstoned: Halt has exited the process
	}
	log.Info("worker started", "queues", cfg.Queues, "concurrency", cfg.Concurrency, "bots", len(bots),
		"webex", cfg.WebexBaseURL)
	if cfg.Dev {
		devStarted(ctx, cfg, rdb, log)
	}

	<-ctx.Done()
	log.Info("stopping: no new tasks; in-process waits end; requests under way finish", "timeout", cfg.ShutdownTimeout)
	if relaySrv != nil { // stop accepting first: an answered request is durably queued
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = relaySrv.Shutdown(sctx)
		cancel()
	}
	w.Shutdown()
	if adminSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = adminSrv.Shutdown(sctx)
		cancel()
	}
	log.Info("stopped")
	return nil
}

// ProbeAddr is the admin address "worker ready" probes: COURIER_ADMIN_ADDR,
// or the default address when it is unset ("" when it is set empty: the
// admin server is off and nothing can be probed).
func ProbeAddr(lookupEnv func(string) (string, bool)) string {
	if addr, ok := lookupEnv("COURIER_ADMIN_ADDR"); ok {
		return addr
	}
	return DefaultAdminAddr
}

// Probe asks a worker's admin server whether it is ready (for container
// health checks, where no curl exists); it returns the exit code.
func Probe(addr string) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

// listenAdmin binds the admin server; in dev mode a taken port falls back
// to a free one.
func listenAdmin(addr string, dev bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && dev {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, fmt.Errorf("admin server on %s: %w", addr, err)
	}
	return ln, nil
}

func botLabel(name string) string {
	if name == "" {
		return "default"
	}
	return name
}

// waitForRedis pings until Redis answers or timeout passes, and then
// reports the last real cause (a refused connection, a wrong password), not
// the deadline that cut the last ping short.
func waitForRedis(ctx context.Context, opt *redis.Options, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A client of its own that neither retries commands nor dials: go-redis's
	// retries would run into the deadline and hide the cause behind it.
	probe := *opt
	probe.MaxRetries, probe.DialerRetries = -1, 1
	rdb := redis.NewClient(&probe)
	defer rdb.Close()
	var cause error
	for {
		err := rdb.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			cause = err
		}
		select {
		case <-ctx.Done():
			if cause == nil {
				return fmt.Errorf("no answer within %v", timeout)
			}
			return fmt.Errorf("unreachable after %v: %w", timeout, cause)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkRedisSettings warns about settings that lose tasks.
func checkRedisSettings(ctx context.Context, rdb *redis.Client, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	policy, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		log.Debug("cannot read Redis settings (CONFIG GET refused?)", "error", err.Error())
		return
	}
	if p := policy["maxmemory-policy"]; p != "" && p != "noeviction" {
		log.Warn("Redis maxmemory-policy is not noeviction: under memory pressure Redis deletes keys, which loses tasks", "maxmemory-policy", p)
	}
	aof, _ := rdb.ConfigGet(ctx, "appendonly").Result()
	save, _ := rdb.ConfigGet(ctx, "save").Result()
	if aof["appendonly"] != "yes" && strings.TrimSpace(save["save"]) == "" {
		log.Warn("Redis persistence is off (no AOF, no snapshots): a Redis restart loses every queued task")
	}
}

// checkTokens checks every bot's token at once.
func checkTokens(ctx context.Context, clients map[string]*webex.Client, h *tasks.Handler, log *slog.Logger) {
	var wg sync.WaitGroup
	for name, c := range clients {
		wg.Go(func() { checkToken(ctx, name, c, h, log) })
	}
	wg.Wait()
}

// checkToken asks Webex who the bot is. A rejected token does not stop the
// worker: the bot's tasks are held and readiness is false until it works.
func checkToken(ctx context.Context, name string, c *webex.Client, h *tasks.Handler, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	me, err := c.Me(ctx)
	switch {
	case errors.Is(err, webex.ErrUnauthorized):
		h.MarkRejected(name)
		log.Error("Webex rejects the bot's token: its tasks are held (not dead-lettered) and the worker is not ready until the token works",
			"bot", botLabel(name), "error", err.Error())
	case err != nil:
		log.Warn("could not check the bot's token; delivering anyway", "bot", botLabel(name), "error", err.Error())
	default:
		log.Info("bot token accepted", "bot", botLabel(name), "webex_name", me.DisplayName)
	}
}
