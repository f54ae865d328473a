package redisurl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"
)

// replyError is an answer of Redis, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// The errors a moved primary explains ask for a reload of the slot map;
// the answers of a command itself do not.
func TestMovedPrimary(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{redis.Nil, false},
		{context.Canceled, false},
		{redis.TxFailedErr, false},
		{replyError("ERR Error running script (call to f_x): @user_script:1: boom"), false},
		{replyError("NOSCRIPT No matching script. Please use EVAL."), false},
		{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}, true},
		{io.EOF, true},
		{fmt.Errorf("enqueue: %w", context.DeadlineExceeded), true},
		{replyError("CLUSTERDOWN The cluster is down"), true},
		{replyError("TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{replyError("READONLY You can't write against a read only replica."), true},
		{replyError("MOVED 3999 127.0.0.1:6381"), true},
	} {
		if got := movedPrimary(tc.err); got != tc.want {
			t.Errorf("movedPrimary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A Cluster client is hooked once however often it is passed; other
// clients are left alone.
func TestFollowFailoversOnce(t *testing.T) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer c.Close()
	FollowFailovers(c)
	FollowFailovers(c)
	n := 0
	followed.Range(func(k, _ any) bool {
		if k.(interface{ Value() *redis.ClusterClient }).Value() == c {
			n++
		}
		return true
	})
	if n != 1 {
		t.Fatalf("hooked %d times, want once", n)
	}
	FollowFailovers(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})) // no panic, nothing to do
}
