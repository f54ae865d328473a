package redisurl

import (
	"context"
	"errors"
	"strings"
	"sync"
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
// done at 2.4 s). Reloads are go-redis's own: one at a time, at most one
// every 200 ms.
//
// Any other client is left as it is (a Sentinel client follows the
// primary by itself). A client is hooked once however often it is passed.
func FollowFailovers(rdb redis.UniversalClient) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return
	}
	if _, loaded := followed.LoadOrStore(weak.Make(c), struct{}{}); loaded {
		return
	}
	c.AddHook(reloadOnFailure{c})
}

// followed holds the clients hooked already (weakly: a closed client is
// left to the collector; its entry, a few words, stays).
var followed sync.Map

// reloadOnFailure asks for a reload of the slot map after a command or a
// pipeline that failed in a way a moved primary would explain.
type reloadOnFailure struct{ c *redis.ClusterClient }

func (h reloadOnFailure) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnFailure) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if movedPrimary(err) {
			h.c.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadOnFailure) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if movedPrimary(cmd.Err()) {
				h.c.ReloadState(ctx)
				break
			}
		}
		return err
	}
}

// movedPrimary reports whether err may mean the slot's primary is not
// where the client's map says: a network error or a timeout, or an answer
// of a node that is not (or no longer) the primary, or of a cluster
// between states. A key that is absent, a cancelled call and an answer of
// the command itself (a script's error, a wrong type) say nothing of it.
func movedPrimary(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) || errors.Is(err, redis.TxFailedErr) {
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
