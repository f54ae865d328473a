package tasks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ErrTombstoned means another worker found this one dead and took its tasks
// over: it must post nothing more and let asynq write nothing (it exits).
var ErrTombstoned = errors.New("declared dead by another worker, which took over its tasks")

// Defaults of RecoveryConfig.
const (
	DefaultRecoveryAfter    = 10 * time.Second
	DefaultRecoveryInterval = time.Second
	// MinRecoveryAfter is asynq's heartbeat and a margin: a live worker's
	// lease moves at every heartbeat.
	MinRecoveryAfter = asynqHeartbeat + time.Second
	tombstoneTTL     = 24 * time.Hour
	// listHorizon bounds how far back servers are listed and remembered;
	// it is also the clock skew between workers that listing tolerates.
	listHorizon = time.Hour
)

// RecoveryConfig configures a Recovery. Zero fields take the defaults.
type RecoveryConfig struct {
	// After is how long a task's lease must stand still, with its worker
	// gone from Redis, before another worker moves it back to pending. It is
	// also how long the detector and Redis must have been up before it
	// moves anything (plus 5s). Default 10s, minimum 6s.
	After time.Duration
	// Queues are the queues watched. Default {DefaultQueue}.
	Queues []string
	// Interval is the time between two scans, which also check this
	// worker's own tombstone. Default 1s.
	Interval time.Duration
	// Halt, when set, is called at once when this worker finds its own
	// tombstone, before Run or Fence return ErrTombstoned; the worker
	// process exits in it, so that asynq writes nothing.
	Halt func()
	// Recovered, when set, is called for each task moved back (metrics).
	Recovered func(queue string)
	// Logger receives an info record per task moved back. Default slog.Default().
	Logger *slog.Logger
	// Host and PID find this process's asynq server in Redis (one worker per
	// process). Default os.Hostname() and os.Getpid().
	Host string
	PID  int

	settle time.Duration // margin beyond After before moving anything; 5s
}

// WithDefaults fills zero fields with the defaults.
func (c RecoveryConfig) WithDefaults() RecoveryConfig {
	c.After = cmp.Or(c.After, DefaultRecoveryAfter)
	if len(c.Queues) == 0 {
		c.Queues = []string{DefaultQueue}
	}
	c.Interval = cmp.Or(c.Interval, DefaultRecoveryInterval)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.Host == "" {
		c.Host, _ = os.Hostname()
		c.Host = cmp.Or(c.Host, "unknown-host") // as asynq names it
	}
	c.PID = cmp.Or(c.PID, os.Getpid())
	c.settle = cmp.Or(c.settle, 5*time.Second)
	return c
}

// Validate reports every problem with the configuration at once.
func (c RecoveryConfig) Validate() error {
	var errs []error
	if c.After < MinRecoveryAfter {
		errs = append(errs, fmt.Errorf("RecoveryAfter is %v: must be at least %v (asynq's heartbeat and a margin)", c.After, MinRecoveryAfter))
	}
	if c.Interval <= 0 || c.Interval > c.After/2 {
		errs = append(errs, fmt.Errorf("recovery Interval is %v: must be above 0 and at most half of After (%v)", c.Interval, c.After))
	}
	for _, q := range c.Queues {
		if q == "" {
			errs = append(errs, errors.New("recovery Queues: a queue name is empty"))
		}
	}
	return errors.Join(errs...)
}

// Recovery finds workers that died (SIGKILL, OOM, a lost node) and moves
// the tasks they held back to pending within seconds, where asynq's own
// recoverer takes 60–130 s. Every worker runs one; the Lua script that moves
// a task lets only one of them move it.
//
// A task is taken over only when its lease has not moved for After (a live
// worker's heartbeat moves it every 5 s), it is in no live worker's list,
// and the server that held it is gone from Redis (its key expired); and only
// once this detector and Redis have both been up for After + 5 s, since
// right after a Redis restart every worker looks dead. The takeover writes
// a tombstone for the dead server: a worker that was only paused finds it
// (Fence before each post, Run on a timer) and exits before asynq records
// anything for the task that is now someone else's.
type Recovery struct {
	rdb  redis.UniversalClient
	cfg  RecoveryConfig
	insp *asynq.Inspector
	born time.Time

	self   atomic.Pointer[ServerID] // this process's asynq server, once found
	halted atomic.Bool
}

// NewRecovery builds the detector over a go-redis client.
func NewRecovery(rdb redis.UniversalClient, cfg RecoveryConfig) (*Recovery, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("recovery config: %w", err)
	}
	return &Recovery{rdb: rdb, cfg: cfg, insp: asynq.NewInspectorFromRedisClient(rdb), born: time.Now()}, nil
}

// Run watches until ctx ends (it then returns nil), or until it finds this
// worker's own tombstone: then it calls Halt and returns ErrTombstoned.
// Redis errors are not returned: they restart the observation window.
func (r *Recovery) Run(ctx context.Context) error {
	s := &scan{seen: map[taskRef]sighting{}, owner: map[string]string{}, servers: map[string]float64{}}
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if err := r.tick(ctx, s); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Fence is the check before each post: ErrTombstoned (after Halt) when
// this worker was declared dead, an error when Redis cannot say, else nil.
func (r *Recovery) Fence(ctx context.Context) error {
	self := r.self.Load()
	if self == nil {
		return nil // not heartbeating yet: nobody can have declared it dead
	}
	return r.fence(ctx, *self)
}

func (r *Recovery) fence(ctx context.Context, self ServerID) error {
	by, err := r.rdb.Get(ctx, tombstoneKey(self.String())).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil
	case err != nil:
		return fmt.Errorf("check tombstone: %w", err)
	}
	if r.halted.CompareAndSwap(false, true) {
		r.cfg.Logger.Error("another worker found this one dead and took over its tasks: exiting at once, posting nothing more",
			"server", self.String(), "taken_over_by", by)
		if r.cfg.Halt != nil {
			r.cfg.Halt()
		}
	}
	return ErrTombstoned
}

// tombstoneKey marks a server declared dead.
func tombstoneKey(server string) string { return "courier:tombstone:{" + server + "}" }

type taskRef struct{ queue, id string }

// sighting is a lease score and when this detector first saw it.
type sighting struct {
	score float64
	since time.Time
}

// scan is what the detector has seen, continuously, since watching.
type scan struct {
	// watching is the start of the current unbroken observation: a failed
	// read of Redis restarts it. A slow or paused detector does not: lease
	// scores only grow, so one seen unchanged did not move in between.
	watching time.Time
	seen     map[taskRef]sighting
	owner    map[string]string // task id → the server last seen listing it
	// servers are the servers seen in asynq:servers, with their expiry.
	// Kept across restarts of the watch: asynq's Inspector (asynqmon, the
	// metrics exporter) removes expired servers from asynq:servers, so a dead
	// server may be known only here.
	servers map[string]float64
}

func (s *scan) reset(now time.Time) {
	s.watching = now
	clear(s.seen)
	clear(s.owner)
}

// view is one look at Redis.
type view struct {
	uptime time.Duration
	leases map[taskRef]float64
	listed map[string]string  // task id → live server listing it
	live   map[string]bool    // live servers
	dead   map[string]float64 // server → expiry (Unix seconds) of a server whose key is gone
}

func (r *Recovery) tick(ctx context.Context, s *scan) error {
	now := time.Now()
	if s.watching.IsZero() {
		s.reset(now)
	}
	if err := r.checkSelf(ctx); err != nil {
		if errors.Is(err, ErrTombstoned) {
			return err
		}
		s.reset(now)
		return nil
	}
	v, err := r.look(ctx, s.servers)
	if err != nil {
		r.cfg.Logger.Debug("recovery: cannot read Redis; watching again from scratch", "error", err.Error())
		s.reset(now)
		return nil
	}
	s.update(now, v)
	if up := r.cfg.After + r.cfg.settle; now.Sub(s.watching) < up || v.uptime < up {
		return nil
	}
	for ref, sg := range s.seen {
		if now.Sub(sg.since) < r.cfg.After {
			continue
		}
		if dead := s.deadHolders(ref, sg.score, v); len(dead) > 0 {
			if r.takeOver(ctx, ref, sg, dead, now) {
				delete(s.seen, ref)
			}
		}
	}
	return nil
}

// checkSelf finds this process's asynq server (once) and checks its tombstone.
func (r *Recovery) checkSelf(ctx context.Context) error {
	if r.self.Load() == nil {
		servers, err := r.insp.Servers()
		if err != nil {
			return err
		}
		var mine *asynq.ServerInfo
		for _, s := range servers { // the earliest started since this detector was built: a predecessor with the same host and pid started before
			if s.Host == r.cfg.Host && s.PID == r.cfg.PID && !s.Started.Before(r.born.Add(-time.Second)) && (mine == nil || s.Started.Before(mine.Started)) {
				mine = s
			}
		}
		if mine == nil {
			return nil
		}
		r.self.Store(&ServerID{Host: mine.Host, PID: mine.PID, ID: mine.ID})
	}
	return r.fence(ctx, *r.self.Load())
}

// look reads the leases of the watched queues, the live servers' task
// lists and which servers are dead, in two round trips. It adds the servers
// of asynq:servers to known.
func (r *Recovery) look(ctx context.Context, known map[string]float64) (*view, error) {
	horizon := time.Now().Add(-listHorizon).Unix()
	since := strconv.FormatInt(horizon, 10)
	p := r.rdb.Pipeline()
	info := p.Info(ctx, "server")
	leases := make([]*redis.ZSliceCmd, len(r.cfg.Queues))
	for i, q := range r.cfg.Queues {
		leases[i] = p.ZRangeWithScores(ctx, leaseKey(q), 0, -1)
	}
	workers := p.ZRangeByScore(ctx, asynqWorkers, &redis.ZRangeBy{Min: since, Max: "+inf"})
	servers := p.ZRangeByScoreWithScores(ctx, asynqServers, &redis.ZRangeBy{Min: since, Max: "+inf"})
	if _, err := p.Exec(ctx); err != nil {
		return nil, err
	}
	v := &view{leases: map[taskRef]float64{}, listed: map[string]string{}, live: map[string]bool{}, dead: map[string]float64{}}
	v.uptime = redisUptime(info.Val())
	for i, q := range r.cfg.Queues {
		for _, z := range leases[i].Val() {
			v.leases[taskRef{q, fmt.Sprint(z.Member)}] = z.Score
		}
	}
	p = r.rdb.Pipeline()
	lists := map[string]*redis.StringSliceCmd{}
	for _, m := range workers.Val() {
		if srv := serverOf(m); srv != "" {
			lists[srv] = p.HKeys(ctx, m)
		}
	}
	for _, z := range servers.Val() {
		if srv := serverOf(fmt.Sprint(z.Member)); srv != "" {
			known[srv] = max(known[srv], z.Score)
		}
	}
	exists := map[string]*redis.IntCmd{}
	for srv, exp := range known {
		if exp < float64(horizon) {
			delete(known, srv)
			continue
		}
		exists[srv] = p.Exists(ctx, serverKey(srv))
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, err
	}
	for srv, ids := range lists {
		for _, id := range ids.Val() {
			v.listed[id] = srv
		}
	}
	for srv, n := range exists {
		if n.Val() > 0 {
			v.live[srv] = true
		} else {
			v.dead[srv] = known[srv]
		}
	}
	return v, nil
}

func redisUptime(info string) time.Duration {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "uptime_in_seconds:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return time.Duration(n) * time.Second
		}
	}
	return 0
}

// update records the leases seen: a lease whose score changed starts its
// stand-still anew; the servers listing tasks are remembered as their holders.
func (s *scan) update(now time.Time, v *view) {
	for ref, score := range v.leases {
		if sg, ok := s.seen[ref]; !ok || sg.score != score {
			s.seen[ref] = sighting{score: score, since: now}
		}
	}
	for ref := range s.seen {
		if _, ok := v.leases[ref]; !ok {
			delete(s.seen, ref)
			delete(s.owner, ref.id)
		}
	}
	for id, srv := range v.listed {
		s.owner[id] = srv
	}
}

// deadHolders names the dead server(s) that may hold the task, or none when
// the task is in a live server's list or its holder is alive. A holder this
// detector never saw listing it (it died within a heartbeat of fetching the
// task, or before this detector started) is any dead server whose expiry,
// its last heartbeat + 10 s, fits the lease it set with the same clock: the
// lease is 30 s from the dequeue or from the last heartbeat, and a task is
// fetched at most 5 s after a heartbeat; 2 s spare for whole seconds.
func (s *scan) deadHolders(ref taskRef, score float64, v *view) []string {
	if _, ok := v.listed[ref.id]; ok {
		return nil
	}
	if owner, ok := s.owner[ref.id]; ok {
		if v.live[owner] {
			return nil
		}
		return []string{owner}
	}
	latest := score - (asynqLeaseDuration - asynqServerStateTTL).Seconds() // its last heartbeat set the lease
	earliest := latest - (asynqHeartbeat + 2*time.Second).Seconds()
	var dead []string
	for srv, exp := range v.dead {
		if exp >= earliest && exp <= latest+2 {
			dead = append(dead, srv)
		}
	}
	slices.Sort(dead)
	return dead
}

// takeOverScript moves one task of a dead server back to pending, at the
// head of the queue as asynq's own requeue does, and writes a tombstone for
// every server that may have held it: only if the task is still active
// with the same lease score and none of those servers came back.
//
// KEYS: active, lease, pending, task hash, then per server its asynq key
// and its tombstone. ARGV: task id, lease score, tombstone value, tombstone
// TTL (seconds), number of servers.
var takeOverScript = redis.NewScript(`
local n = tonumber(ARGV[5])
for i = 1, n do
  if redis.call('EXISTS', KEYS[3 + 2*i]) == 1 then return 0 end
end
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 1, n do
  redis.call('SET', KEYS[4 + 2*i], ARGV[3], 'EX', ARGV[4])
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'state', 'pending')
return 1
`)

// takeOver runs the script; it reports whether this detector moved the task.
func (r *Recovery) takeOver(ctx context.Context, ref taskRef, sg sighting, dead []string, now time.Time) bool {
	keys := []string{activeKey(ref.queue), leaseKey(ref.queue), pendingKey(ref.queue), taskKey(ref.queue, ref.id)}
	for _, srv := range dead {
		keys = append(keys, serverKey(srv), tombstoneKey(srv))
	}
	by := r.cfg.Host + ":" + strconv.Itoa(r.cfg.PID)
	if self := r.self.Load(); self != nil {
		by = self.String()
	}
	by += " at " + time.Now().UTC().Format(time.RFC3339)
	moved, err := takeOverScript.Run(ctx, r.rdb, keys, ref.id, strconv.FormatFloat(sg.score, 'f', -1, 64), by,
		int(tombstoneTTL.Seconds()), len(dead)).Int()
	if err != nil {
		r.cfg.Logger.Warn("recovery: could not move a dead worker's task back; will try again", "task_id", ref.id, "queue", ref.queue, "error", err.Error())
		return false
	}
	if moved == 0 {
		return false
	}
	attrs := []any{"task_id", ref.id, "queue", ref.queue, "dead_worker", strings.Join(dead, ","), "lease_still_for", now.Sub(sg.since).Round(time.Millisecond)}
	if id, ok := parseServerID(dead[0]); ok && len(dead) == 1 {
		attrs = append(attrs, "dead_host", id.Host, "dead_pid", id.PID)
	}
	r.cfg.Logger.Info("task of a dead worker moved back to pending", attrs...)
	if r.cfg.Recovered != nil {
		r.cfg.Recovered(ref.queue)
	}
	return true
}
