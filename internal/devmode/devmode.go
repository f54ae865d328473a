// Package devmode is the worker's zero-install dev mode, as cmd/dev runs
// it: an embedded Redis (miniredis) and the Webex simulator in the
// worker's process. It is not in cmd/worker: miniredis and the simulator
// cost a production worker about 2 MB of resident memory.
package devmode

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/courier-dev/courier/internal/worker"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Start starts dev mode's embedded Redis and simulated Webex, points cfg at
// them, and returns what stops them: worker.Extras.Dev.
func Start(cfg *worker.Config, log *slog.Logger) (stop func(), err error) {
	d, err := start(cfg, log)
	if err != nil {
		return nil, err
	}
	return d.close, nil
}

// dev is the in-process Redis and simulator of dev mode.
type dev struct {
	redis *miniredis.Miniredis
	sim   *webextest.Sim
	srv   *http.Server
	stop  chan struct{}
}

func (d *dev) close() {
	close(d.stop)
	_ = d.srv.Close()
	d.redis.Close()
}

// start starts miniredis (on 6379, or the next free port) and the Webex
// simulator, and points cfg at them. miniredis only expires keys when its
// clock is moved, so a ticker moves it with the wall clock: TTL-based
// features (dedup records, retention) behave as on a real Redis.
func start(cfg *worker.Config, log *slog.Logger) (*dev, error) {
	// The simulator's listener first: a failed start leaves nothing running.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dev: simulator: %w", err)
	}
	m := miniredis.NewMiniRedis()
	for port := 6379; port < 6400; port++ {
		if err = m.StartAddr("127.0.0.1:" + strconv.Itoa(port)); err == nil {
			break
		}
	}
	if err != nil {
		if err = m.StartAddr("127.0.0.1:0"); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("dev: embedded Redis: %w", err)
		}
	}
	d := &dev{redis: m, sim: webextest.New(webextest.Options{Tokens: map[string]string{worker.DevToken: "courier-dev", worker.DevLimitedToken: "courier-dev-limited"}, Logger: log}), stop: make(chan struct{})}
	go d.tick()
	d.srv = &http.Server{Handler: d.sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = d.srv.Serve(ln) }()
	cfg.RedisURL = "redis://" + m.Addr() + "/0"
	cfg.WebexBaseURL = "http://" + ln.Addr().String()
	d.sim.AddFault(webextest.Fault{Room: worker.RoomRetried, Status: 503, Count: 2})
	d.sim.AddFault(webextest.Fault{Room: worker.RoomRateLimited, Status: 429, RetryAfter: webextest.Duration(cfg.Budget + 5*time.Second), Count: 1})
	d.sim.AddFault(webextest.Fault{Room: worker.RoomDeadLetter, Status: 404})
	log.Warn("DEV MODE: embedded Redis and a simulated Webex; nothing is durable", "redis", cfg.RedisURL, "webex", cfg.WebexBaseURL)
	return d, nil
}

func (d *dev) tick() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			d.redis.SetTime(now)
			d.redis.FastForward(now.Sub(last))
			last = now
		}
	}
}
