package redistest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestSharedAnswers(t *testing.T) {
	rdb := Client(t)
	key := Name(t) + ":k"
	DeleteKeys(t, rdb, key)
	if err := rdb.Set(context.Background(), key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := rdb.Get(context.Background(), key).Val(); got != "v" {
		t.Fatalf("got %q", got)
	}
}

func TestOwnServerSurvivesKillWithAOF(t *testing.T) {
	s := Start(t, true)
	ctx := context.Background()
	rdb := redis.NewClient(s.Options())
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "kept", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("server still answers after Kill")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := rdb.Get(ctx, "k").Val(); got != "kept" {
		t.Fatalf("after restart got %q, want the acknowledged write", got)
	}
}
