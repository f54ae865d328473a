package monitor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/admin"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/settings"
	"github.com/courier-dev/courier/internal/worker"
)

// DefaultAddr is cmd/monitor's default listen address.
const DefaultAddr = "127.0.0.1:8090"

// Config is cmd/monitor's configuration.
type Config struct {
	// RedisURL and RedisMode are the workers' (REDIS_URL, REDIS_MODE).
	RedisURL  string
	RedisMode redisurl.Mode
	// Addr is the listen address (COURIER_MONITOR_ADDR). Default
	// DefaultAddr; port 0 picks a free port.
	Addr string
	// Writable lets the UI re-run and delete tasks (COURIER_ADMIN_WRITABLE).
	// Beyond loopback it requires User.
	Writable bool
	// User and Password turn on basic auth (COURIER_ADMIN_USER;
	// COURIER_ADMIN_PASSWORD or _FILE), as on the workers' admin servers.
	User, Password string
	// LogFormat and LogLevel are the worker's (COURIER_LOG_FORMAT,
	// COURIER_LOG_LEVEL): auto, text or json; debug, info, warn or error.
	LogFormat, LogLevel string
}

func flags(c *Config) *settings.Set {
	s := settings.New("monitor")
	s.String(&c.RedisURL, "redis-url", "REDIS_URL", "redis://127.0.0.1:6379/0", "the workers' Redis (same forms as the worker's REDIS_URL)")
	s.Func("redis-mode", "REDIS_MODE", "auto", "how to read REDIS_URL: auto, single, sentinel or cluster", func(v string) (err error) {
		c.RedisMode, err = redisurl.ParseMode(v)
		return err
	})
	s.String(&c.Addr, "addr", "COURIER_MONITOR_ADDR", DefaultAddr, "listen address of the UI")
	s.Bool(&c.Writable, "writable", "COURIER_ADMIN_WRITABLE", false, "let the UI re-run and delete tasks")
	s.String(&c.User, "user", "COURIER_ADMIN_USER", "", "HTTP basic auth user (password: COURIER_ADMIN_PASSWORD or _FILE)")
	s.String(&c.LogFormat, "log-format", "COURIER_LOG_FORMAT", "auto", "auto (colour text on a terminal, JSON otherwise), text or json")
	s.String(&c.LogLevel, "log-level", "COURIER_LOG_LEVEL", "info", "debug, info, warn or error")
	return s
}

// Load reads the configuration from args and the environment and reports
// every problem at once.
func Load(args []string, lookupEnv func(string) (string, bool)) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	c := &Config{}
	var errs []error
	if err := flags(c).Parse(args, lookupEnv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		errs = append(errs, err)
	}
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	if pw, err := settings.Secret(getenv, "COURIER_ADMIN_PASSWORD", "COURIER_ADMIN_PASSWORD_FILE"); err != nil {
		errs = append(errs, err)
	} else {
		c.Password = pw
	}
	if c.User != "" && c.Password == "" {
		errs = append(errs, errors.New("COURIER_ADMIN_USER is set: set COURIER_ADMIN_PASSWORD or COURIER_ADMIN_PASSWORD_FILE too"))
	}
	if _, err := redisurl.Parse(c.RedisURL, c.RedisMode); err != nil {
		errs = append(errs, fmt.Errorf("REDIS_URL %s: %w", redisurl.Redact(c.RedisURL), err))
	}
	// An empty address would listen on every interface (a port picked at
	// random), not turn the UI off as an empty COURIER_ADMIN_ADDR does.
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("COURIER_MONITOR_ADDR %q: want host:port (127.0.0.1:8090; 0.0.0.0:8090 for every interface)", c.Addr))
	} else if err := admin.CheckBind("COURIER_MONITOR_ADDR", c.Addr, c.Writable, c.User); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, worker.CheckLogSettings(c.LogFormat, c.LogLevel)...)
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuration:\n%w", errors.Join(errs...))
	}
	return c, nil
}

// Usage writes every setting.
func Usage(w io.Writer) { flags(&Config{}).Usage(w) }

// readyTimeout bounds /readyz's and the start-up's ping of Redis.
const readyTimeout = 2 * time.Second

// Run serves the UI until ctx ends: asynqmon at Path, /healthz (the
// process lives), /readyz (Redis answers), and a redirect from / to Path.
// listening, when set, is told the address. Redis unreachable does not stop
// it: it logs so at start, /readyz says why, the UI shows Redis's errors,
// and all recover when Redis answers again. A stop takes at most 5 s.
func Run(ctx context.Context, cfg *Config, log *slog.Logger, listening func(addr string)) error {
	opt, err := redisurl.Parse(cfg.RedisURL, cfg.RedisMode)
	if err != nil {
		return fmt.Errorf("REDIS_URL %s: %w", redisurl.Redact(cfg.RedisURL), err)
	}
	worker.LogRedisClient(log) // go-redis's own lines, as records of this log
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("COURIER_MONITOR_ADDR: listen on %s: %w", cfg.Addr, err)
	}
	mon, closeMon := Handler(opt, cfg.Writable)
	defer func() { _ = closeMon() }()
	// The probe's client neither retries nor re-dials: its error is the
	// cause (refused, a wrong password), not a deadline.
	rdb := opt.Tune(0, 0, 0, -1).NewClient()
	defer func() { _ = rdb.Close() }()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ping(r.Context(), rdb, cfg.RedisURL); err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle(Path, mon)
	mux.Handle("GET /{$}", http.RedirectHandler(Path, http.StatusFound))
	srv := &http.Server{Handler: admin.Guard(mux, cfg.Addr, cfg.User, cfg.Password), ReadHeaderTimeout: 10 * time.Second}
	addr := ln.Addr().String()
	log.Info("monitor listening", "url", "http://"+addr+Path, "redis", redisurl.Redact(cfg.RedisURL), "writable", cfg.Writable, "basic_auth", cfg.User != "")
	if listening != nil {
		listening(addr)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := ping(ctx, rdb, cfg.RedisURL); err != nil {
		log.Warn("redis not answering: the UI shows its errors until it does", "redis", redisurl.Redact(cfg.RedisURL), "error", err.Error())
	} else {
		log.Info("redis reachable", "redis", redisurl.Redact(cfg.RedisURL), "mode", opt.Mode)
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	log.Info("stopped")
	return nil
}

// ping asks Redis for an answer within readyTimeout; its error names the
// cause and never a password of rawURL.
func ping(ctx context.Context, rdb redis.UniversalClient, rawURL string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	err := rdb.Ping(ctx).Err()
	var ne net.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("no answer within %v", readyTimeout)
	}
	return errors.New(redisurl.Scrub(err.Error(), rawURL))
}

// Envs lists the environment variables the monitor reads.
func Envs() []string {
	return append(flags(&Config{}).Envs(), "COURIER_ADMIN_PASSWORD", "COURIER_ADMIN_PASSWORD_FILE")
}
