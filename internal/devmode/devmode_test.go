package devmode

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/worker"
)

// miniredis expires keys only when its clock moves: dev mode moves it, so
// TTL-based state (cool-downs, probe slots, retention) expires as on Redis.
func TestDevRedisExpiresKeys(t *testing.T) {
	cfg := &worker.Config{Budget: time.Second}
	d, err := start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "courier:gate:{bot}:cooldown", "1", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Exists(ctx, "courier:gate:{bot}:cooldown").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("a 300ms key still exists after 5s in dev mode's Redis")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
