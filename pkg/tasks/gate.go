package tasks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
)

// GateConfig configures the coordination of all workers sending as the same
// bot: a shared rate limit, a shared cool-down after a 429, and a shared
// circuit breaker for outages. State lives in Redis so every worker agrees.
type GateConfig struct {
	// Rate is the requests per second all workers together send per bot; 0
	// turns the shared rate limit off (the default).
	Rate float64
	// Burst is how many requests may go at once above the rate. Default 1.
	Burst int
	// MaxWait is the longest a delivery waits in-process for the limit or a
	// cool-down; longer waits hand the task back (no redelivery used).
	// Default 2s (a shorter hand-back would be due at once in asynq's
	// whole-second clock and spin).
	MaxWait time.Duration
	// BreakerFailures opens the breaker after a run of this many transient
	// failures, across workers, within BreakerWindow: any success ends the
	// run. Default 20; negative turns the breaker off.
	BreakerFailures int
	// BreakerWindow is the window failures are counted in. Default 30s.
	BreakerWindow time.Duration
	// ProbeInterval: while the breaker is open, one request per interval
	// (across all workers) probes Webex. Default 5s.
	ProbeInterval time.Duration
	// Namespace prefixes the gate's Redis keys (default "courier"): workers
	// that share a namespace share the limits of each bot name.
	Namespace string
	// Timeout bounds each Redis call; when Redis is slower or down, delivery
	// goes on without coordination (fail open). Default 250ms.
	Timeout time.Duration
	// StateCache is how long a worker trusts what it last read of a bot's
	// gate when that was "open road" (no cool-down, breaker closed) before
	// asking Redis again. A worker that starts a cool-down or opens the
	// breaker publishes it (Redis pub/sub), and every worker drops its view
	// at once; a worker that lost its subscription asks Redis before every
	// send until it is back (a connection gone silent without a reset is
	// found within about 4s, by a ping). Default 1s; negative: ask before
	// every send.
	StateCache time.Duration
	// Batch is, with Rate set, how many permits a worker takes from the
	// shared limit in one round trip. It uses them in the order the limit
	// slots them, each within Batch intervals of its slot, so that all
	// workers together never exceed the limit by more than Batch requests
	// in any window. Default 5; 1: a round trip per send.
	Batch int
}

// Defaults of GateConfig.
const (
	DefaultGateBurst           = 1
	DefaultGateMaxWait         = 2 * time.Second
	DefaultGateBreakerFailures = 20
	DefaultGateBreakerWindow   = 30 * time.Second
	DefaultGateProbeInterval   = 5 * time.Second
	DefaultGateNamespace       = "courier"
	DefaultGateTimeout         = 250 * time.Millisecond
	DefaultGateStateCache      = time.Second
	DefaultGateBatch           = 5
)

// WithDefaults fills zero fields with the defaults.
func (c GateConfig) WithDefaults() GateConfig {
	c.BreakerFailures = cmp.Or(c.BreakerFailures, DefaultGateBreakerFailures)
	c.Burst = cmp.Or(c.Burst, DefaultGateBurst)
	c.MaxWait = cmp.Or(c.MaxWait, DefaultGateMaxWait)
	c.BreakerWindow = cmp.Or(c.BreakerWindow, DefaultGateBreakerWindow)
	c.ProbeInterval = cmp.Or(c.ProbeInterval, DefaultGateProbeInterval)
	c.Timeout = cmp.Or(c.Timeout, DefaultGateTimeout)
	c.Namespace = cmp.Or(c.Namespace, DefaultGateNamespace)
	c.StateCache = cmp.Or(c.StateCache, DefaultGateStateCache)
	c.Batch = cmp.Or(c.Batch, DefaultGateBatch)
	return c
}

// Validate reports every problem.
func (c GateConfig) Validate() error { return c.ValidateNamed(retrypolicy.FieldName) }

// ValidateNamed is Validate naming each field as name(field).
func (c GateConfig) ValidateNamed(name func(field string) string) error {
	var errs []error
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("%s is %v: must be 0 (off) or more", name("Rate"), c.Rate))
	}
	if strings.Contains(c.Namespace, "{}") {
		errs = append(errs, fmt.Errorf("%s is %q: must not contain {} (an empty hash tag spreads a bot's keys over a Redis Cluster)", name("Namespace"), c.Namespace))
	}
	if c.Burst < 1 {
		errs = append(errs, fmt.Errorf("%s is %d: must be at least 1", name("Burst"), c.Burst))
	}
	if c.Batch < 1 || c.Batch > maxGateBatch {
		errs = append(errs, fmt.Errorf("%s is %d: must be 1 to %d", name("Batch"), c.Batch, maxGateBatch))
	}
	for _, f := range []struct {
		field string
		d     time.Duration
	}{{"MaxWait", c.MaxWait}, {"BreakerWindow", c.BreakerWindow}, {"ProbeInterval", c.ProbeInterval}, {"Timeout", c.Timeout}} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s is %v: must be greater than 0", name(f.field), f.d))
		}
	}
	return errors.Join(errs...)
}

// maxGateBatch bounds GateConfig.Batch: the limit's overshoot.
const maxGateBatch = 100

// GateKind says why the gate holds a send back.
type GateKind int

const (
	gateOpen        GateKind = iota // send now
	GateCooldown                    // a worker got a 429: every worker waits
	GateCircuitOpen                 // the breaker is open and this send is not the probe
	GateRateLimit                   // over the shared rate limit
)

// String is the kind as metrics and logs name it.
func (k GateKind) String() string {
	return [...]string{"open", "cooldown", "circuit_open", "rate_limit"}[k]
}

// GateError is returned (inside the in-process attempts) when the gate holds
// a send back for longer than MaxWait. It stops the attempts at once; the
// handler hands the task back.
type GateError struct {
	// Kind is why: GateCooldown, GateCircuitOpen or GateRateLimit.
	Kind GateKind
	// Wait is how long until the gate may let the send through.
	Wait time.Duration
}

func (e *GateError) Error() string {
	switch e.Kind {
	case GateCircuitOpen:
		return fmt.Sprintf("circuit open: Webex is failing, next probe in %s", e.Wait)
	case GateCooldown:
		return fmt.Sprintf("shared cool-down after a 429: %s left", e.Wait)
	}
	return fmt.Sprintf("shared rate limit: next slot in %s", e.Wait)
}

// RetryClass stops in-process attempts: the gate already said how long.
func (e *GateError) RetryClass() (retrypolicy.Class, time.Duration) { return retrypolicy.Permanent, 0 }

// gate is the Redis side of GateConfig for one worker.
type gate struct {
	cfg      GateConfig
	rdb      redis.UniversalClient
	log      *slog.Logger
	obs      Observer
	lastWarn atomic.Int64 // unix seconds of the last fail-open warning
	views    views        // what this worker knows of each bot's gate (gateview.go)
}

// gateLua decides, in Redis, whether a send may go now: cool-down first,
// then the breaker (one probe per interval while open), then the GCRA rate
// limit, which grants n permits at once, the next n slots of its schedule,
// when the first comes within horizon µs (each is used at its slot, see
// views). Time comes from
// Redis, so workers' clocks do not matter. It returns kind, wait in ms,
// probe, whether a run of failures is open, the permits granted and the
// first one's slot relative to now (µs).
const gateLua = `
local function gate(cooldown, open, probekey, rate, fails, interval, burst, probe_ms, n, horizon)
  local cd = redis.call('PTTL', cooldown)
  if cd > 0 then return 1, cd, 0, 0, 0, 0 end
  if redis.call('EXISTS', open) == 1 then
    if redis.call('SET', probekey, '1', 'NX', 'PX', probe_ms) then return 0, 0, 1, 1, 0, 0 end
    return 2, math.max(redis.call('PTTL', probekey), 1), 0, 1, 0, 0
  end
  local failing = redis.call('EXISTS', fails)
  interval = tonumber(interval)
  if interval > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local tat = tonumber(redis.call('GET', rate) or now)
    if tat < now then tat = now end
    local first = tat + interval - interval * tonumber(burst)
    if now + tonumber(horizon) < first then return 3, math.ceil((first - now - tonumber(horizon)) / 1000), 0, failing, 0, 0 end
    local k = tonumber(n)
    local new_tat = tat + k * interval
    redis.call('SET', rate, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    return 0, 0, 0, failing, k, first - now
  end
  return 0, 0, 0, failing, 0, 0
end
`

// acquireScript asks the gate for one send (or a batch of permits).
var acquireScript = redis.NewScript(gateLua + `
local k, w, p, f, n, first = gate(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return {k, w, p, f, n, first}
`)

// decision is the gate's answer for one send.
type decision struct {
	kind  GateKind
	wait  time.Duration
	probe bool
}

func newDecision(kind, waitMS, probe int64) *decision {
	return &decision{kind: GateKind(kind), wait: time.Duration(waitMS) * time.Millisecond, probe: probe == 1}
}

// interval is the rate limit's interval between two sends; 0: no limit.
func (g *gate) interval() time.Duration {
	if g.cfg.Rate <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / g.cfg.Rate)
}

// args are the gate script's arguments: interval in µs (0: no rate limit),
// burst, probe interval in ms, permits wanted, and how far ahead (µs) the
// first may be slotted (the batch's span).
func (g *gate) args(n int) []any {
	interval := g.interval()
	horizon := time.Duration(n-1) * interval
	return []any{interval.Microseconds(), g.cfg.Burst, g.cfg.ProbeInterval.Milliseconds(), n, horizon.Microseconds()}
}

// cooldownScript sets the cool-down unless a longer one is running, and
// tells every worker (ARGV[2]: the channel, ARGV[3]: the bot). With a
// second key, it also ends the breaker's run of failures (a 429 is Webex
// answering).
var cooldownScript = redis.NewScript(`
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
if KEYS[2] then redis.call('DEL', KEYS[2]) end
return 0
`)

// failureScript counts a transient failure; at the threshold it opens the
// breaker. While open, a failure (a failed probe) keeps it open. The start
// of a run and the opening are published (ARGV[4]: the channel, ARGV[5]:
// the bot). Returns 1 when this call opened it.
var failureScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 0
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
`)

// keys are the bot's gate keys. The bot's name is their hash tag, so that
// a Redis Cluster keeps them in one slot (the scripts touch several); the
// default bot's tag is ":default" (a bot name has no ':'), since an empty
// tag ({}) would hash each whole key to a slot of its own.
func (g *gate) keys(bot string) (cooldown, open, probe, rate, fails string) {
	p := g.cfg.Namespace + ":gate:{" + cmp.Or(bot, ":default") + "}:"
	return p + "cooldown", p + "open", p + "probe", p + "rate", p + "fails"
}

// acquire asks whether bot may send now; errors fail open. It answers from
// this worker's view when it can (gateview.go), else asks Redis.
func (g *gate) acquire(ctx context.Context, bot string) *decision {
	for {
		if d := g.views.decide(bot, time.Now()); d != nil {
			return d
		}
		if _, live := g.views.snapshot(); !live || g.cfg.StateCache <= 0 {
			return g.ask(ctx, bot) // no view to share: each send asks, as before views
		}
		// One fetch of permits per bot at a time: the others wait for it.
		fetched, wait := g.views.fetching(bot)
		if wait == nil {
			d := g.ask(ctx, bot)
			fetched()
			return d
		}
		select {
		case <-ctx.Done():
			return &decision{}
		case <-wait:
		}
	}
}

// ask asks Redis; with a rate limit and a live view it takes a batch of
// permits, which the view hands out at their slots.
func (g *gate) ask(ctx context.Context, bot string) *decision {
	cooldown, open, probeKey, rate, fails := g.keys(bot)
	gen, live := g.views.snapshot()
	keep := live && g.cfg.StateCache > 0
	n := 1
	if interval := g.interval(); keep && interval > 0 {
		n = max(1, min(g.cfg.Batch, 1+int(g.cfg.MaxWait/interval)))
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	res, err := acquireScript.Run(ctx, g.rdb, []string{cooldown, open, probeKey, rate, fails}, g.args(n)...).Int64Slice()
	if err != nil || len(res) != 6 {
		g.failOpen(err)
		return &decision{}
	}
	d := newDecision(res[0], res[1], res[2])
	now := time.Now()
	switch {
	case !keep || d.probe || (d.kind != gateOpen && d.kind != GateRateLimit):
		return d
	case d.kind == GateRateLimit: // open road, no slot yet: the others wait for it without asking
		g.views.store(bot, gen, now, g.cfg.StateCache, res[3] == 1, 0, 0, g.interval(), now.Add(d.wait))
		return d
	}
	if !g.views.store(bot, gen, now, g.cfg.StateCache, res[3] == 1, int(res[4]), time.Duration(res[5])*time.Microsecond, g.interval(), time.Time{}) {
		return d // a change came in meanwhile: this send goes, no view is kept
	}
	if d := g.views.decide(bot, now); d != nil {
		return d
	}
	return &decision{}
}

// result tells the gate what a send got: a 429 (or a 423/503 naming a
// Retry-After) starts a shared cool-down; a transient failure counts toward
// the breaker's run; any other answer from Webex (a 429, a refusal) ends the
// run; a success after a probe closes the breaker. (Other successes end the
// run in the dedup record's round trip, see succeeded.)
func (g *gate) result(ctx context.Context, bot string, err error, probe bool) {
	cooldown, open, probeKey, _, fails := g.keys(bot)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.Timeout)
	defer cancel()
	dec := retrypolicy.Classify(err, nil)
	var ae *webex.APIError
	switch {
	case err == nil:
		if probe {
			g.views.drop(bot)
			n, rerr := g.rdb.Del(ctx, open, probeKey, fails).Result()
			if rerr != nil {
				g.failOpen(rerr)
			} else if n > 0 {
				g.obs.Breaker(bot, false)
				g.log.Info("circuit closed: Webex answers again", "bot", botLabel(bot))
			}
		}
	case errors.As(err, &ae) && ae.StatusCode == 429:
		g.views.drop(bot)
		if rerr := cooldownScript.Run(ctx, g.rdb, []string{cooldown, fails}, cooldownMS(dec.RetryAfter), g.channel(), bot).Err(); rerr != nil {
			g.failOpen(rerr)
		}
	case errors.As(err, &ae) && dec.Class.Retryable() && dec.RetryAfter > 0 && (ae.StatusCode == 423 || ae.StatusCode == 503):
		g.views.drop(bot)
		if rerr := cooldownScript.Run(ctx, g.rdb, []string{cooldown}, cooldownMS(dec.RetryAfter), g.channel(), bot).Err(); rerr != nil {
			g.failOpen(rerr)
		}
		g.failure(ctx, bot, open, fails)
	case dec.Class == retrypolicy.Transient:
		g.failure(ctx, bot, open, fails)
	case errors.As(err, &ae) && g.cfg.BreakerFailures >= 0: // Webex answered, if with a refusal: the run ends
		if rerr := g.rdb.Del(ctx, fails).Err(); rerr != nil {
			g.failOpen(rerr)
		}
	}
}

// maxCooldown caps the shared cool-down a Retry-After asks for: a custom
// Sender may name any wait, 0 included.
const maxCooldown = time.Hour

// cooldownMS is a Retry-After as the cool-down's PX argument: 1ms to 1h.
func cooldownMS(d time.Duration) int64 {
	return min(max(d, time.Millisecond), maxCooldown).Milliseconds()
}

func (g *gate) failure(ctx context.Context, bot, open, fails string) {
	if g.cfg.BreakerFailures < 0 {
		return
	}
	// The open key outlives a few probe intervals so that a breaker whose
	// workers all died does not stay open for good.
	openFor := max(10*g.cfg.ProbeInterval, g.cfg.BreakerWindow)
	g.views.drop(bot)
	opened, err := failureScript.Run(ctx, g.rdb, []string{fails, open}, g.cfg.BreakerWindow.Milliseconds(),
		g.cfg.BreakerFailures, openFor.Milliseconds(), g.channel(), bot).Int()
	if err != nil {
		g.failOpen(err)
		return
	}
	if opened == 1 {
		g.obs.Breaker(bot, true)
		g.log.Warn("circuit open: Webex keeps failing; tasks wait on the durable schedule, one probe per interval",
			"bot", botLabel(bot), "failures", g.cfg.BreakerFailures, "window", g.cfg.BreakerWindow, "probe_interval", g.cfg.ProbeInterval)
	}
}

// succeeded returns the commands that end the bot's run of failures, for the
// dedup record's round trip: the breaker opens on a run of failures within
// the window, not on a failure rate that a busy bot reaches in any window.
// nil when there is nothing to end: the breaker is off, or this worker's
// view says no run is open (the start of a run is published).
func (g *gate) succeeded(ctx context.Context, bot string) func(redis.Pipeliner) {
	if g.cfg.BreakerFailures < 0 || g.views.calm(bot, time.Now()) {
		return nil
	}
	_, _, _, _, fails := g.keys(bot)
	return func(p redis.Pipeliner) { p.Del(ctx, fails) }
}

// failOpen logs that coordination is off, at most once a minute.
func (g *gate) failOpen(err error) {
	if err == nil {
		err = errors.New("unexpected answer")
	}
	now := time.Now().Unix()
	if last := g.lastWarn.Load(); now-last < 60 || !g.lastWarn.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("Redis did not answer the send gate in time: delivering without shared rate limit, cool-down or breaker", "error", err.Error())
}

// wait holds a send until the gate lets it through, waiting in-process up
// to MaxWait in all; a longer hold is a *GateError.
func (g *gate) wait(ctx context.Context, bot string) (probe bool, err error) {
	deadline := time.Now().Add(g.cfg.MaxWait)
	for {
		d := g.acquire(ctx, bot)
		if err := ctx.Err(); err != nil { // the answer was cut short (fail open) or waited for: not this send's
			return false, err
		}
		if d.kind == gateOpen {
			return d.probe, nil
		}
		g.obs.Throttled(bot, d.kind.String())
		if d.kind == GateCircuitOpen || time.Now().Add(d.wait).After(deadline) {
			return false, &GateError{Kind: d.kind, Wait: d.wait}
		}
		t := time.NewTimer(d.wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
	}
}
