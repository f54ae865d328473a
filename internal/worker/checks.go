package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// The start-up checks: Redis must answer (else the worker does not start);
// Redis settings that lose tasks and rejected tokens are reported, and do
// not stop the worker.

// waitForRedis pings until Redis answers or timeout passes, and then
// reports the last real cause (a refused connection, a wrong password), not
// the deadline that cut the last ping short.
func waitForRedis(ctx context.Context, opt *redisurl.Options, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A client of its own that neither retries commands nor dials: go-redis's
	// retries would run into the deadline and hide the cause behind it.
	rdb := opt.Tune(0, 0, 0, -1).NewClient()
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
func checkRedisSettings(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger) {
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
func checkToken(stop context.Context, name string, c *webex.Client, h *tasks.Handler, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(stop, 10*time.Second)
	defer cancel()
	me, err := c.Me(ctx)
	switch {
	case err != nil && stop.Err() != nil: // the worker is stopping: it will not deliver
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

func botLabel(name string) string {
	if name == "" {
		return "default"
	}
	return name
}
