package redisurl

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"
)

// FollowFailovers makes a Cluster client reload its map of slots as soon
// as a command fails, instead of at its next periodic reload. go-redis
// reloads the map on a MOVED answer, which a live node gives, and every
// ClusterStateReloadInterval (60 s by default), but not when a primary
// stops answering: its commands go on failing against the dead node until
// the interval ends, although the cluster promoted a replica in about two
// seconds (TestClusterFailover measured 58 s without this, for a failover
// done at 2.4 s). Reloads are go-redis's own (one at a time), asked for at
// most every reloadEvery: while every node is down, each failed command
// would otherwise start another.
//
// The reload is asked for once the command has failed, after go-redis's
// own retries: at once for a dead primary (its connections are refused),
// after the read timeout for one that hangs. Pub/sub connections do not
// pass through the hook: they follow the map that other commands reload.
//
// Any other client is left as it is (a Sentinel client follows the
// primary by itself). A client is hooked once however often it is passed.
func FollowFailovers(rdb redis.UniversalClient) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return
	}
	key := weak.Make(c)
	if _, loaded := followed.LoadOrStore(key, struct{}{}); loaded {
		return
	}
	runtime.AddCleanup(c, func(k weak.Pointer[redis.ClusterClient]) { followed.Delete(k) }, key)
	c.AddHook(&reloadOnFailure{c: c})
}

// reloadEvery is the shortest time between two reloads one client asks for.
const reloadEvery = 250 * time.Millisecond

// followed holds the clients hooked already, weakly: an entry goes with
// its client.
var followed sync.Map

// reloadOnFailure asks for a reload of the slot map after a command or a
// pipeline that failed in a way a moved primary would explain.
type reloadOnFailure struct {
	c    *redis.ClusterClient
	last atomic.Int64 // when a reload was last asked for, Unix ns
}

func (h *reloadOnFailure) reload(ctx context.Context) {
	now, last := time.Now().UnixNano(), h.last.Load()
	if now-last < int64(reloadEvery) || !h.last.CompareAndSwap(last, now) {
		return
	}
	h.c.ReloadState(ctx)
}

func (h *reloadOnFailure) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *reloadOnFailure) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if movedPrimary(err) {
			h.reload(ctx)
		}
		return err
	}
}

func (h *reloadOnFailure) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if movedPrimary(cmd.Err()) {
				h.reload(ctx)
				break
			}
		}
		return err
	}
}

// movedPrimary reports whether err may mean the slot's primary is not
// where the client's map says: any error that is not an answer of Redis
// (a network error, a timeout, a closed pool), or an answer of a node
// that is not (or no longer) the primary, or of a cluster between states.
// A key that is absent (redis.Nil, itself an answer), a cancelled call and
// an answer of the command itself (a script's error, a wrong type) say
// nothing of it.
func movedPrimary(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var reply redis.Error
	if !errors.As(err, &reply) {
		return true
	}
	for _, p := range []string{"CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN", "MOVED", "ASK"} {
		if strings.HasPrefix(reply.Error(), p) {
			return true
		}
	}
	return false
}
