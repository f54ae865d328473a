package tasks

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
)

// ErrTakenOver means another worker found this one dead and took one of its
// tasks over (the task's epoch moved on): it must post nothing more and let
// asynq write nothing (it exits).
var ErrTakenOver = errors.New("declared dead by another worker, which took over its task")

// ErrFenceUnknown means the fence could not read the task's epoch from Redis
// while the delivery's context lasted (and for FenceTimeout at least): the
// worker halts, as if taken over.
var ErrFenceUnknown = errors.New("cannot check whether another worker took the task over")

// Defaults of RecoveryConfig.
const (
	DefaultRecoveryAfter    = 5 * time.Second
	DefaultRecoveryInterval = time.Second
	// MinRecoveryAfter is three refreshes of a worker's liveness key at the
	// default interval: one late refresh is no death.
	MinRecoveryAfter = 3 * DefaultRecoveryInterval
	// leaseStill is how long a task's lease must stand still before it is
	// moved: asynq's heartbeat and a margin (whole seconds). A live asynq
	// server moves the lease of every task it runs at each heartbeat, also
	// of one it fetched a moment ago whose delivery has not begun (whose
	// holder is not yet recorded).
	leaseStill = asynqHeartbeat + time.Second
	// goneFor is how long a server's key must have been absent, in every
	// scan, before its server counts as dead: a heartbeat and a margin, so
	// that one slow or failed heartbeat of a live worker (its key lapses
	// until the next one) never makes it look dead.
	goneFor = asynqHeartbeat + time.Second
	// FenceTimeout is how long the fence retries an unreachable Redis at
	// least, also for a delivery whose context ended, before it halts the
	// worker (it cannot prove the task is still its own).
	FenceTimeout = 3 * time.Second
	// listHorizon bounds how far back servers are listed and remembered;
	// it is also the clock skew between workers that listing tolerates.
	listHorizon = time.Hour
)

// RecoveryConfig configures a Recovery. Zero fields take the defaults.
type RecoveryConfig struct {
	// After is how long a worker must have been silent (its liveness key,
	// refreshed every Interval, not refreshed) before another worker moves
	// the tasks it was delivering back to pending. It is also how long the
	// detector and Redis must have been up before it moves anything (plus
	// 5s). A task whose delivery had not begun when its worker died goes by
	// asynq's own liveness instead: its lease still for max(After, 6s) and
	// its server's key gone for 6s. Default 5s, minimum 3s.
	After time.Duration
	// Queues are the queues watched. Default {DefaultQueue}.
	Queues []string
	// Interval is the time between two scans, which also check the epochs
	// of the tasks this worker holds. Default 1s.
	Interval time.Duration
	// Halt, when set, is called at once when a task this worker holds was
	// taken over (or Redis cannot say while the delivery lasts), before Run or
	// Check return; the worker process exits in it, so that asynq writes
	// nothing.
	Halt func()
	// Recovered, when set, is called for each task moved back (metrics).
	Recovered func(queue string)
	// Logger receives a warn record per task moved back. Default slog.Default().
	Logger *slog.Logger

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
	c.settle = cmp.Or(c.settle, 5*time.Second)
	return c
}

// Validate reports every problem with the configuration at once.
func (c RecoveryConfig) Validate() error {
	var errs []error
	if c.After < MinRecoveryAfter {
		errs = append(errs, fmt.Errorf("RecoveryAfter is %v: must be at least %v (three liveness refreshes)", c.After, MinRecoveryAfter))
	}
	if c.Interval <= 0 || c.Interval > c.After/3 {
		errs = append(errs, fmt.Errorf("recovery Interval is %v: must be above 0 and at most a third of After (%v)", c.Interval, c.After))
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
// Each worker keeps a liveness key of its own (courier:alive:{id}), written
// every Interval with a time to live of After, and a delivery records its
// worker's id in the task's hash when it begins (courier_holder, removed
// when its run ends). A task is taken over when its recorded holder's
// liveness key is gone (the holder has not refreshed it for After) and its
// lease has not moved for asynq's heartbeat and a margin (6 s: the asynq
// server running it stopped beating too, so no live worker fetched it since
// the holder's delivery began); and only once this detector and Redis have
// both been up for After + 5 s, since right after a Redis restart every
// worker looks dead. A task whose delivery had not begun (no holder
// recorded) is taken over by asynq's own liveness: it is in no live worker's
// list, the server that held it has been gone from Redis (its key expired)
// in every scan for a heartbeat and a margin, and its lease has not moved
// for max(After, 6 s). Either way its lease must not have expired yet by
// Redis's clock (an expired one is asynq's recoverer's).
//
// The takeover moves the task's epoch (courier_epoch in its hash) on: a
// fencing token. A delivery reads the epoch when it begins (Claim); before
// each post and each write, and before its outcome goes back to asynq, the
// handler checks it (Check), and the detector checks every held task's on
// each scan. A worker that was only paused finds its task's epoch moved on
// and halts before it posts or asynq records anything for a task that is now
// someone else's.
type Recovery struct {
	rdb redis.UniversalClient
	cfg RecoveryConfig
	id  string // this worker's name in liveness keys and holder fields

	mu     sync.Mutex
	held   map[Claim]int // deliveries under way, by claim
	halted atomic.Bool
	// alive is set once the liveness key was first written: only then may a
	// delivery name this worker as its holder.
	alive atomic.Bool
	// beatAt is when the last liveness write that succeeded was sent.
	beatAt atomic.Pointer[time.Time]
	// standsSince is when the liveness key surely stood again after a gap
	// (or first): the answer to the first write that succeeded after the
	// key may have lapsed.
	standsSince atomic.Pointer[time.Time]
}

// Fence guards deliveries against a second copy after a takeover by
// another worker; *Recovery is one.
type Fence interface {
	// Hold records a delivery under way; release ends it.
	Hold(c Claim) (release func())
	// Check returns nil while the claim stands; any error means the
	// delivery must post and write nothing more.
	Check(ctx context.Context, c Claim) error
	// Holder is the name a delivery records as its holder when it begins,
	// the name under which this worker's liveness is kept; "" records none.
	Holder() string
}

var _ Fence = (*Recovery)(nil)

// epochFence is a Fence whose claim is the task's epoch (fieldEpoch): the
// handler may check it inside its own writes.
type epochFence interface {
	Fence
	// live reports whether no other worker can have taken this worker's
	// tasks over since confirmed, nor can within fenceFresh and a margin:
	// only then may a claim Redis confirmed at confirmed, less than
	// fenceFresh ago, stand without asking again.
	live(confirmed time.Time) bool
}

var _ epochFence = (*Recovery)(nil)

// live: this worker's liveness key has stood without a gap since
// confirmed, and, written at beatAt for After, stands for fenceFresh and a
// second more.
func (r *Recovery) live(confirmed time.Time) bool {
	at, since := r.beatAt.Load(), r.standsSince.Load()
	return at != nil && since != nil && !confirmed.Before(*since) && time.Since(*at) < r.cfg.After-fenceFresh-time.Second
}

// Claim is one delivery's hold on a task: the task and the epoch it began
// under.
type Claim struct {
	Queue, ID string
	Epoch     int64
}

// NewRecovery builds the detector over a go-redis client.
func NewRecovery(rdb redis.UniversalClient, cfg RecoveryConfig) (*Recovery, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("recovery config: %w", err)
	}
	redisurl.FollowFailovers(rdb)
	return &Recovery{rdb: rdb, cfg: cfg, id: workerID(), held: map[Claim]int{}}, nil
}

// workerID is host:pid:random, the form of asynq's server ids.
func workerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + hex.EncodeToString(b[:])
}

// aliveKey is the liveness key of the worker named id.
func aliveKey(id string) string { return "courier:alive:{" + id + "}" }

// Holder is this worker's name once its liveness key is written, else "".
func (r *Recovery) Holder() string {
	if r.alive.Load() {
		return r.id
	}
	return ""
}

// beat writes this worker's liveness key, valid for After.
func (r *Recovery) beat(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Interval)
	defer cancel()
	at := time.Now() // the key lives at least After from here
	if err := r.rdb.Set(ctx, aliveKey(r.id), 1, r.cfg.After).Err(); err != nil {
		r.cfg.Logger.Debug("recovery: cannot write this worker's liveness", "error", err.Error())
		return
	}
	// The key written before stood at least After from when it was sent:
	// unless this write was answered within that, there may have been a gap.
	if done, prev := time.Now(), r.beatAt.Load(); prev == nil || done.Sub(*prev) >= r.cfg.After {
		r.standsSince.Store(&done)
	}
	r.beatAt.Store(&at)
	r.alive.Store(true)
}

// beating writes the liveness key every Interval until ctx ends, apart from
// the scans so that a slow scan never delays it.
func (r *Recovery) beating(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.beat(ctx)
		}
	}
}

// Run watches until ctx ends (it then returns nil), or until it finds a
// task this worker holds taken over: then it calls Halt and returns
// ErrTakenOver. Redis errors are not returned: they restart the observation
// window.
func (r *Recovery) Run(ctx context.Context) error {
	r.beat(ctx)
	beatCtx, stopBeating := context.WithCancel(ctx)
	var beating sync.WaitGroup
	beating.Go(func() { r.beating(beatCtx) })
	defer beating.Wait()
	defer stopBeating()
	s := &scan{seen: map[taskRef]sighting{}, owner: map[string]string{}, servers: map[string]float64{}, gone: map[string]time.Time{}}
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

// Hold records a delivery under way, so that every scan checks its epoch;
// release ends it.
func (r *Recovery) Hold(c Claim) (release func()) {
	r.mu.Lock()
	r.held[c]++
	r.mu.Unlock()
	return sync.OnceFunc(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.held[c]--; r.held[c] <= 0 {
			delete(r.held, c)
		}
	})
}

// Check is the fence before each post and write: nil while the task's
// epoch is still the claim's. When another worker took the task over (its
// epoch moved on, or its hash is gone) it calls Halt and returns
// ErrTakenOver. It retries a Redis it cannot reach while ctx lasts (for
// FenceTimeout at least, asynq's 30s lease at most), then fails closed: it
// calls Halt and returns ErrFenceUnknown.
func (r *Recovery) Check(ctx context.Context, c Claim) error {
	now, err := checkEpoch(ctx, r.rdb, c)
	switch {
	case errors.Is(err, ErrTakenOver):
		r.takenOver(c, now)
	case err != nil:
		r.halt("cannot check whether another worker took the task over: exiting at once, posting nothing more",
			"task_id", c.ID, "queue", c.Queue, "error", err.Error())
	}
	return err
}

// checkEpoch reads the task's epoch: ErrTakenOver (with the epoch read)
// when it is not the claim's. It retries a Redis it cannot reach while ctx
// lasts (a delivery's: until its lease ends), for FenceTimeout at least and
// asynq's lease at most, then returns ErrFenceUnknown. Waiting posts and
// writes nothing, and a worker that halted at a shorter outage would lose
// the ids of the parts Webex just accepted: their redelivery would post
// them again (TestRedisFaultMatrix, fence-before-record/cut).
func checkEpoch(ctx context.Context, rdb redis.UniversalClient, c Claim) (int64, error) {
	end := time.Now().Add(asynqLeaseDuration)
	for {
		epoch, err := checkEpochWithin(ctx, rdb, c, FenceTimeout)
		if !errors.Is(err, ErrFenceUnknown) || ctx.Err() != nil || time.Now().After(end) {
			return epoch, err
		}
	}
}

// checkEpochWithin is checkEpoch retrying for d.
func checkEpochWithin(ctx context.Context, rdb redis.UniversalClient, c Claim, d time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	delay := 50 * time.Millisecond
	for {
		epochs, err := readEpochs(ctx, rdb, []Claim{c})
		if err == nil {
			if epochs[0] != c.Epoch {
				return epochs[0], ErrTakenOver
			}
			return epochs[0], nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("%w: %w", ErrFenceUnknown, err)
		case <-t.C:
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// readEpochs reads the tasks' current epochs, in one round trip; a task
// whose hash is gone reads -1.
func readEpochs(ctx context.Context, rdb redis.UniversalClient, cs []Claim) ([]int64, error) {
	p := rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(cs))
	for i, c := range cs {
		cmds[i] = p.HMGet(ctx, taskKey(c.Queue, c.ID), "state", fieldEpoch)
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([]int64, len(cs))
	for i, cmd := range cmds {
		v := cmd.Val()
		if v[0] == nil {
			out[i] = -1
			continue
		}
		if e, ok := v[1].(string); ok {
			out[i], _ = strconv.ParseInt(e, 10, 64)
		}
	}
	return out, nil
}

func (r *Recovery) takenOver(c Claim, now int64) error {
	r.halt("another worker found this one dead and took over its task: exiting at once, posting nothing more",
		"task_id", c.ID, "queue", c.Queue, "epoch", c.Epoch, "task_epoch", now)
	return ErrTakenOver
}

// halt logs why and calls Halt, once.
func (r *Recovery) halt(msg string, attrs ...any) {
	if r.halted.CompareAndSwap(false, true) {
		r.cfg.Logger.Error(msg, attrs...)
		if r.cfg.Halt != nil {
			r.cfg.Halt()
		}
	}
}

// checkHeld checks the epochs of the deliveries under way. A Redis error is
// not the end: the handler's own checks fail closed.
func (r *Recovery) checkHeld(ctx context.Context) error {
	r.mu.Lock()
	cs := make([]Claim, 0, len(r.held))
	for c := range r.held {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	if len(cs) == 0 {
		return nil
	}
	epochs, err := readEpochs(ctx, r.rdb, cs)
	if err != nil {
		return nil
	}
	for i, c := range cs {
		if epochs[i] != c.Epoch && r.holds(c) {
			return r.takenOver(c, epochs[i])
		}
	}
	return nil
}

func (r *Recovery) holds(c Claim) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[c] > 0
}

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
	// gone holds, per server whose key was absent, since when it has been
	// absent in every scan; a failed read forgets it (the key may have come
	// back unseen).
	gone map[string]time.Time
	// runID is the run_id of the Redis server last read (INFO server): a
	// different one is another server (a replica promoted by a failover, a
	// restart), whose data may lag and whose uptime says nothing of how
	// long the workers have reached it, so the watch starts again.
	runID string
}

func (s *scan) reset(now time.Time) {
	s.watching = now
	clear(s.seen)
	clear(s.owner)
	clear(s.gone)
}

// view is one look at Redis.
type view struct {
	uptime time.Duration
	runID  string // INFO server's run_id
	leases map[taskRef]float64
	listed map[string]string  // task id → live server listing it
	live   map[string]bool    // live servers
	dead   map[string]float64 // server → expiry (Unix seconds) of a server whose key is gone for goneFor
	lapsed map[string]float64 // the same, of a server whose key is gone for less (update sorts them)
}

func (r *Recovery) tick(ctx context.Context, s *scan) error {
	now := time.Now()
	if s.watching.IsZero() {
		s.reset(now)
	}
	if err := r.checkHeld(ctx); err != nil {
		return err
	}
	v, err := r.look(ctx, s.servers)
	if err != nil {
		r.cfg.Logger.Debug("recovery: cannot read Redis; watching again from scratch", "error", err.Error())
		s.reset(now)
		return nil
	}
	if s.runID != "" && v.runID != "" && v.runID != s.runID {
		r.cfg.Logger.Info("recovery: Redis is another server now (failover or restart); watching again from scratch", "run_id", v.runID)
		s.reset(now)
	}
	s.runID = v.runID
	s.update(now, v)
	if up := r.cfg.After + r.cfg.settle; now.Sub(s.watching) < up || v.uptime < up {
		return nil
	}
	var still []taskRef // leases that stood still for a heartbeat and a margin
	for ref, sg := range s.seen {
		if now.Sub(sg.since) >= leaseStill {
			still = append(still, ref)
		}
	}
	if len(still) == 0 {
		return nil
	}
	holders, alive, err := r.holders(ctx, still)
	if err != nil {
		r.cfg.Logger.Debug("recovery: cannot read the holders of still leases", "error", err.Error())
		return nil
	}
	for _, ref := range still {
		sg, moved := s.seen[ref], false
		switch h := holders[ref]; {
		case h != "": // its delivery began: its holder's liveness decides
			if !alive[h] {
				moved = r.takeOver(ctx, ref, sg, h, nil, now)
			}
		case now.Sub(sg.since) >= max(r.cfg.After, leaseStill): // asynq's liveness decides
			if dead := s.deadHolders(ref, sg.score, v); len(dead) > 0 {
				moved = r.takeOver(ctx, ref, sg, "", dead, now)
			}
		}
		if moved {
			delete(s.seen, ref)
		}
	}
	return nil
}

// holders reads the holder each task's delivery recorded ("" for none),
// and whether each holder's liveness key is there, in two round trips.
func (r *Recovery) holders(ctx context.Context, refs []taskRef) (map[taskRef]string, map[string]bool, error) {
	p := r.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(refs))
	for i, ref := range refs {
		cmds[i] = p.HGet(ctx, taskKey(ref.queue, ref.id), fieldHolder)
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, err
	}
	holders := map[taskRef]string{}
	exists := map[string]*redis.IntCmd{}
	p = r.rdb.Pipeline()
	for i, ref := range refs {
		if h := cmds[i].Val(); h != "" {
			holders[ref] = h
			if exists[h] == nil {
				exists[h] = p.Exists(ctx, aliveKey(h))
			}
		}
	}
	if len(exists) == 0 {
		return holders, nil, nil
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, nil, err
	}
	alive := map[string]bool{}
	for h, n := range exists {
		alive[h] = n.Val() > 0
	}
	return holders, alive, nil
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
	v := &view{leases: map[taskRef]float64{}, listed: map[string]string{}, live: map[string]bool{}, dead: map[string]float64{}, lapsed: map[string]float64{}}
	v.uptime, v.runID = redisServer(info.Val())
	if _, cluster := r.rdb.(*redis.ClusterClient); cluster {
		v.runID = "" // INFO goes to any node: its run_id names no one server (a Cluster's failover is left to the failed reads)
	}
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

// redisServer reads the uptime and the run_id from INFO server's answer.
func redisServer(info string) (uptime time.Duration, runID string) {
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "uptime_in_seconds:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			uptime = time.Duration(n) * time.Second
		} else if v, ok := strings.CutPrefix(line, "run_id:"); ok {
			runID = v
		}
	}
	return uptime, runID
}

// update records the leases seen: a lease whose score changed starts its
// stand-still anew; the servers listing tasks are remembered as their
// holders. It leaves in v.dead only the servers whose key has been absent
// for goneFor.
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
	for srv := range s.gone {
		if _, ok := v.dead[srv]; !ok {
			delete(s.gone, srv)
		}
	}
	for srv := range v.dead {
		since, ok := s.gone[srv]
		if !ok {
			s.gone[srv], since = now, now
		}
		if now.Sub(since) < goneFor { // one missed heartbeat is no death
			v.lapsed[srv] = v.dead[srv]
			delete(v.dead, srv)
		}
	}
}

// deadHolders names the dead server(s) that may hold the task, or none when
// the task is in a live server's list or its holder is alive. A holder this
// detector never saw listing it (it died within a heartbeat of fetching the
// task, or before this detector started) is any dead server whose expiry,
// its last heartbeat + 10 s, fits the lease it set with the same clock: the
// lease is 30 s from the dequeue or from the last heartbeat, and a task is
// fetched at most 5 s after a heartbeat; 2 s spare for whole seconds. A
// live or lapsed server that fits as well may be the holder: none then.
func (s *scan) deadHolders(ref taskRef, score float64, v *view) []string {
	if _, ok := v.listed[ref.id]; ok {
		return nil
	}
	if owner, ok := s.owner[ref.id]; ok {
		if _, dead := v.dead[owner]; !dead { // alive, or gone for less than goneFor
			return nil
		}
		return []string{owner}
	}
	latest := score - (asynqLeaseDuration - asynqServerStateTTL).Seconds() // its last heartbeat set the lease
	earliest := latest - (asynqHeartbeat + 2*time.Second).Seconds()
	fits := func(exp float64) bool { return exp >= earliest && exp <= latest+2 }
	for _, exp := range v.lapsed {
		if fits(exp) { // it may be the holder, and alive: wait and see
			return nil
		}
	}
	for srv := range v.live {
		// A live server that has not beaten since the lease was set (its
		// heartbeat late) may hold the task unlisted: taking it for a dead
		// one's that happens to fit would take a live worker's task over.
		if fits(s.servers[srv]) {
			return nil
		}
	}
	var dead []string
	for srv, exp := range v.dead {
		if fits(exp) {
			dead = append(dead, srv)
		}
	}
	slices.Sort(dead)
	return dead
}

// takeOverScript moves one task of a dead worker back to pending, at the
// head of the queue as asynq's own requeue does, and moves the task's epoch
// on (the fence of the worker that held it): only if the task is still
// active with the same lease score, its recorded holder is the dead worker
// named (or, taken by asynq's liveness, it has none), none of the keys that
// would show that worker alive exists, its lease has not expired by Redis's
// clock (an expired one is asynq's recoverer's, which lists and then moves
// it in two steps), and it was not moved already for this lease. It records
// when it moved it (courier_moved_at, Redis's clock in ms), by which a
// delivery fetched before the move but begun after it knows it is
// overtaken (records.begin).
//
// KEYS: active, lease, pending, task hash, then the dead worker's liveness
// key or each server's asynq key (on a Cluster, none: takeOver checks
// them just before, they hash to other slots). ARGV: task id, lease score, holder ("":
// none). It returns the new epoch, or 0.
var takeOverScript = redis.NewScript(`
for i = 5, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
local holder = redis.call('HGET', KEYS[4], 'courier_holder') or ''
if holder ~= ARGV[3] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if tonumber(score) <= tonumber(redis.call('TIME')[1]) then return 0 end
local moved = redis.call('HGET', KEYS[4], 'courier_moved_lease')
if moved and tonumber(moved) >= tonumber(score) then return 0 end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
local t = redis.call('TIME')
redis.call('HSET', KEYS[4], 'state', 'pending', 'courier_moved_lease', score, 'courier_moved_at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HDEL', KEYS[4], 'courier_holder')
return redis.call('HINCRBY', KEYS[4], 'courier_epoch', 1)
`)

// anyExists reports whether any of keys exists, one command per key (they
// may live in different Cluster slots).
func (r *Recovery) anyExists(ctx context.Context, keys []string) (bool, error) {
	cmds, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Exists(ctx, k)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	for _, c := range cmds {
		if c.(*redis.IntCmd).Val() > 0 {
			return true, nil
		}
	}
	return false, nil
}

// takeOver runs the script for a task whose delivery's holder is dead, or,
// with holder "", for one held by one of the dead asynq servers; it reports
// whether this detector moved the task.
func (r *Recovery) takeOver(ctx context.Context, ref taskRef, sg sighting, holder string, dead []string, now time.Time) bool {
	keys := []string{activeKey(ref.queue), leaseKey(ref.queue), pendingKey(ref.queue), taskKey(ref.queue, ref.id)}
	var alive []string // the keys that would show the holder alive
	if holder != "" {
		alive, dead = []string{aliveKey(holder)}, []string{holder}
	} else {
		for _, srv := range dead {
			alive = append(alive, serverKey(srv))
		}
	}
	if _, cluster := r.rdb.(*redis.ClusterClient); cluster {
		// Those keys hash to slots of their own, which a Cluster may keep
		// on another node than the queue's: check them just before. A
		// worker that comes back in between finds its task's epoch moved
		// on, and halts (the fence).
		if back, err := r.anyExists(ctx, alive); err != nil || back {
			return false
		}
	} else {
		keys = append(keys, alive...)
	}
	epoch, err := takeOverScript.Run(ctx, r.rdb, keys, ref.id, strconv.FormatFloat(sg.score, 'f', -1, 64), holder).Int64()
	if err != nil {
		r.cfg.Logger.Warn("recovery: could not move a dead worker's task back; will try again", "task_id", ref.id, "queue", ref.queue, "error", err.Error())
		return false
	}
	if epoch == 0 {
		return false
	}
	attrs := []any{"task_id", ref.id, "queue", ref.queue, "dead_worker", strings.Join(dead, ","), "epoch", epoch,
		"lease_still_for", now.Sub(sg.since).Round(time.Millisecond)}
	if id, ok := parseServerID(dead[0]); ok && len(dead) == 1 {
		attrs = append(attrs, "dead_host", id.Host, "dead_pid", id.PID)
	}
	r.cfg.Logger.Warn("task of a dead worker moved back to pending", attrs...)
	if r.cfg.Recovered != nil {
		r.cfg.Recovered(ref.queue)
	}
	return true
}
