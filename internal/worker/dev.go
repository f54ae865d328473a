package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"

	"github.com/hibiken/asynq"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Tokens of dev mode's two bots. The rate-limited demo message goes as its
// own bot, so that the shared cool-down its 429 starts holds only that bot.
const (
	DevToken        = "dev-token"
	DevLimitedToken = "dev-token-limited"
	devLimitedBot   = "limited"
)

// Demo rooms, one per outcome.
const (
	RoomDelivered   = "demo-delivered"
	RoomRetried     = "demo-retried"
	RoomRateLimited = "demo-rate-limited"
	RoomDeadLetter  = "demo-dead-letter"
)

// Extras are the parts a build of the worker adds. cmd/worker adds none:
// a production worker stays lean (the operator UI is cmd/monitor's, for
// the whole fleet). cmd/dev adds both.
type Extras struct {
	// Dev starts dev mode's embedded Redis and simulated Webex, points cfg
	// at them, and returns what stops them (internal/devmode.Start).
	// Config.Dev needs it.
	Dev func(cfg *Config, log *slog.Logger) (stop func(), err error)
	// Monitor builds the operator UI that the admin server mounts at
	// /monitoring/, read-only unless writable; closeFn releases its Redis
	// connections (internal/monitor.Handler).
	Monitor func(redis asynq.RedisConnOpt, writable bool) (h http.Handler, closeFn func() error)
}

// errNoDevMode is Run's error for Config.Dev without Extras.Dev.
var errNoDevMode = errors.New("dev mode is not part of this binary (cmd/worker stays lean): go run ./cmd/dev")

func (c *Config) applyDev() {
	c.Tokens = map[string]string{"": DevToken, devLimitedBot: DevLimitedToken}
	c.AdminWritable = true
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
