package redisfault

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
)

func TestHookFailsNthMatch(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	key := redistest.Name(t) + ":k"
	redistest.DeleteKeys(t, rdb, key)
	h := &Hook{}
	rdb.AddHook(h)
	ctx := context.Background()
	before := h.FailNth(Match{Name: "hset", Args: []string{key}}, 2)
	after := h.Add(&Rule{Match: Match{Name: "hincrby", Args: []string{key}}, After: true})

	for i, want := range []error{nil, ErrInjected, nil} {
		if err := rdb.HSet(ctx, key, "f", i).Err(); !errors.Is(err, want) {
			t.Fatalf("hset %d: %v, want %v", i, err, want)
		}
	}
	if got := rdb.HGet(ctx, key, "f").Val(); got != "2" || before.Failed() != 1 || before.Seen() != 3 {
		t.Fatalf("f = %q, failed %d seen %d", got, before.Failed(), before.Seen())
	}
	// After: the command ran, its answer was lost.
	if err := rdb.HIncrBy(ctx, key, "n", 1).Err(); !errors.Is(err, ErrInjected) {
		t.Fatalf("hincrby: %v", err)
	}
	if got := rdb.HGet(ctx, key, "n").Val(); got != "1" || after.Failed() != 1 {
		t.Fatalf("n = %q, want the lost write done", got)
	}
	// A pipeline fails whole when one of its commands matches.
	h.FailNth(Match{Name: "hset", Args: []string{key}}, 1)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key+":other", 1, time.Minute)
		p.HSet(ctx, key, "f", 9)
		return nil
	})
	if !errors.Is(err, ErrInjected) || rdb.HGet(ctx, key, "f").Val() != "2" {
		t.Fatalf("pipeline: %v", err)
	}
}

func TestProxyCutStallReset(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, false)
	p, err := NewProxy(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr, MaxRetries: -1, ReadTimeout: 300 * time.Millisecond, DialTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	p.Cut(time.Hour)
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("ping through a cut proxy answered")
	}
	p.Up()
	waitOK(t, rdb)

	p.Stall(time.Hour)
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("ping through a stalled proxy answered within the read timeout")
	}
	p.Stall(0)
	waitOK(t, rdb)

	p.Reset()
	waitOK(t, rdb) // the pool redials
}

// waitOK polls until a ping answers.
func waitOK(t *testing.T, rdb *redis.Client) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("Redis did not answer through the proxy again")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
