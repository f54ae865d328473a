package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Tokens of dev mode's two bots. The rate-limited demo message goes as its
// own bot, so that the shared cool-down its 429 starts holds only that bot.
const (
	devToken        = "dev-token"
	devLimitedToken = "dev-token-limited"
	devLimitedBot   = "limited"
)

// Demo rooms, one per outcome.
const (
	RoomDelivered   = "demo-delivered"
	RoomRetried     = "demo-retried"
	RoomRateLimited = "demo-rate-limited"
	RoomDeadLetter  = "demo-dead-letter"
)

func (c *Config) applyDev() {
	c.Tokens = map[string]string{"": devToken, devLimitedBot: devLimitedToken}
	c.AdminWritable = true
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

// startDev starts miniredis (on 6379, or the next free port) and the Webex
// simulator, and points cfg at them. miniredis only expires keys when its
// clock is moved, so a ticker moves it with the wall clock: TTL-based
// features (dedup records, retention) behave as on a real Redis.
func startDev(cfg *Config, log *slog.Logger) (*dev, error) {
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
	d := &dev{redis: m, sim: webextest.New(webextest.Options{Tokens: map[string]string{devToken: "courier-dev", devLimitedToken: "courier-dev-limited"}, Logger: log}), stop: make(chan struct{})}
	go d.tick()
	d.srv = &http.Server{Handler: d.sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = d.srv.Serve(ln) }()
	cfg.RedisURL = "redis://" + m.Addr() + "/0"
	cfg.WebexBaseURL = "http://" + ln.Addr().String()
	d.sim.AddFault(webextest.Fault{Room: RoomRetried, Status: 503, Count: 2})
	d.sim.AddFault(webextest.Fault{Room: RoomRateLimited, Status: 429, RetryAfter: webextest.Duration(cfg.Budget + 5*time.Second), Count: 1})
	d.sim.AddFault(webextest.Fault{Room: RoomDeadLetter, Status: 404})
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

// devStarted seeds one message per outcome and prints the banner.
func devStarted(ctx context.Context, cfg *Config, adminAddr string, rdb redis.UniversalClient, log *slog.Logger) {
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Source: "dev-seed"})
	if err != nil {
		log.Error("dev: seed", "error", err.Error())
		return
	}
	for _, s := range []struct{ room, bot, text string }{
		{RoomDelivered, "", "Delivered at once."},
		{RoomRetried, "", "Delivered after two 503s, within the in-process attempts."},
		{RoomRateLimited, devLimitedBot, "Rate-limited (429 with a Retry-After beyond the budget): handed back, then delivered."},
		{RoomDeadLetter, "", "Webex answers 404: dead-lettered at once. Re-run it from asynqmon's Archived tab."},
	} {
		if _, err := p.Enqueue(ctx, tasks.Message{Message: webex.Message{RoomID: s.room, Markdown: s.text}}, tasks.Bot(s.bot)); err != nil {
			log.Error("dev: seed", "room", s.room, "error", err.Error())
		}
	}
	redisEnv := ""
	if cfg.RedisURL != "redis://127.0.0.1:6379/0" {
		redisEnv = "REDIS_URL=" + cfg.RedisURL + " "
	}
	fmt.Fprintf(os.Stderr, `
================ courier dev mode ================
NOTHING IS DURABLE: Redis is embedded in this process and Webex is simulated.
asynqmon:   http://%[1]s%[2]s
metrics:    http://%[1]s/metrics
messages:   %[3]s/_sim/messages  (what the simulated Webex received)
enqueue:    %[4]sgo run ./cmd/enqueue --room demo --markdown "**Hello** from courier"
Seeded: one message delivered, one retried, one rate-limited, one dead-lettered.
Stop with Ctrl-C.
==================================================
`, adminAddr, "/monitoring/", cfg.WebexBaseURL, redisEnv)
}
