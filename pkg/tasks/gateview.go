package tasks

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The shared gate's state (cool-down, breaker, probe) changes only when
// something fails, so a worker need not ask Redis before every send: it
// keeps what it last read of each bot's gate while that was "open road",
// for at most GateConfig.StateCache, and drops it as soon as any worker
// publishes a change (a cool-down, the start of a run of failures, the
// breaker opening) on the gate's channel. Without a live subscription (not
// yet subscribed, or the connection dropped, when a message may have been
// lost) it keeps nothing and asks Redis before every send, as it did before
// views existed.
//
// With a shared rate limit the view also holds the permits the worker took
// in one round trip (GateConfig.Batch): permit j may be used from its slot
// in the limit's schedule for Batch intervals, and is dropped with the
// view.

// views is what one worker knows of its bots' gates.
type views struct {
	mu   sync.Mutex
	live bool   // subscribed: a change made by any worker reaches this one
	gen  uint64 // moves on at every drop: a read begun before it is stale
	bots map[string]*botView
	// inflight holds, per bot, the fetch from Redis under way: one at a time.
	inflight map[string]chan struct{}
}

// botView is one bot's gate as last read: open road until until.
type botView struct {
	until   time.Time
	failing bool // a run of failures was open: successes end it
	permits []permit
	// next, with no permit left, is when the limit said the next slot
	// comes: asking before then would only hear "wait".
	next time.Time
}

// permit is one send of the shared rate limit, usable in [from, to].
type permit struct{ from, to time.Time }

// decide answers from the view: an open road (taking a permit when a rate
// is set), a wait for the next permit, or nil when Redis must be asked.
func (v *views) decide(bot string, now time.Time) *decision {
	v.mu.Lock()
	defer v.mu.Unlock()
	b := v.bots[bot]
	if !v.live || b == nil || !now.Before(b.until) {
		return nil
	}
	if b.permits == nil { // no rate limit
		return &decision{}
	}
	for len(b.permits) > 0 && b.permits[0].to.Before(now) {
		b.permits = b.permits[1:] // unused in its time: dropped, never late
	}
	switch {
	case len(b.permits) == 0 && now.Before(b.next):
		return &decision{kind: GateRateLimit, wait: b.next.Sub(now)}
	case len(b.permits) == 0:
		return nil
	case b.permits[0].from.After(now):
		return &decision{kind: GateRateLimit, wait: b.permits[0].from.Sub(now)}
	}
	b.permits = b.permits[1:]
	return &decision{}
}

// snapshot returns the generation to store a read under, and whether views
// are kept at all.
func (v *views) snapshot() (gen uint64, live bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.gen, v.live
}

// store keeps an open-road read made at generation gen, unless a change
// came in since (it then reports false). With a rate limit (interval above
// 0) it keeps the n permits granted, slotted interval apart from first
// (relative to now), each usable for the batch's span from its slot; with
// none, next is when the limit's next slot comes.
func (v *views) store(bot string, gen uint64, now time.Time, ttl time.Duration, failing bool, n int, first, interval time.Duration, next time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.live || v.gen != gen {
		return false
	}
	if v.bots == nil {
		v.bots = map[string]*botView{}
	}
	b := &botView{until: now.Add(ttl), failing: failing, next: next}
	if interval > 0 {
		b.permits = []permit{}
		span := time.Duration(max(n-1, 1)) * interval
		if old := v.bots[bot]; old != nil {
			b.permits = append(b.permits, old.permits...)
		}
		for j := range n {
			from := now.Add(max(first+time.Duration(j)*interval, 0))
			b.permits = append(b.permits, permit{from: from, to: from.Add(span)})
		}
		sortPermits(b.permits)
	}
	v.bots[bot] = b
	return true
}

// fetching registers a fetch of bot's gate from Redis: it returns the
// function to call when done, or, when another fetch is under way, a
// channel closed when that one is done.
func (v *views) fetching(bot string) (done func(), wait <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if ch, ok := v.inflight[bot]; ok {
		return nil, ch
	}
	if v.inflight == nil {
		v.inflight = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	v.inflight[bot] = ch
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		delete(v.inflight, bot)
		close(ch)
	}, nil
}

// drop forgets a bot's view (a change was published, or this worker made
// one).
func (v *views) drop(bot string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gen++
	delete(v.bots, bot)
}

// calm reports whether the view says no run of failures is open for bot.
func (v *views) calm(bot string, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	b := v.bots[bot]
	return v.live && b != nil && now.Before(b.until) && !b.failing
}

// setLive records whether the subscription is up; either way every view
// is dropped (messages may have been lost while it was down).
func (v *views) setLive(live bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.live = live
	v.gen++
	clear(v.bots)
}

func sortPermits(ps []permit) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].from.Before(ps[j-1].from); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// channel is the gate's pub/sub channel: a message names the bot whose
// gate changed.
func (g *gate) channel() string { return g.cfg.Namespace + ":gate:changed" }

// watch keeps the subscription to the gate's channel until stop is called
// (it returns at once; the watch ends in the background, done closes when
// it has). With StateCache negative it does nothing. A connection that
// goes silent (a half-open TCP connection: no reset ever comes) is found
// by a ping unanswered for subscriptionCheck: it is then dropped like a
// lost one, and the subscription started again on a new connection.
func (g *gate) watch() (stop func(), done <-chan struct{}) {
	finished := make(chan struct{})
	if g.cfg.StateCache < 0 {
		close(finished)
		return func() {}, finished
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex // guards ps, replaced when its connection went silent
	ps := g.rdb.Subscribe(ctx, g.channel())
	current := func() *redis.PubSub {
		mu.Lock()
		defer mu.Unlock()
		return ps
	}
	go func() {
		defer close(finished)
		defer g.views.setLive(false)
		delay := 50 * time.Millisecond
		pinged := false
		for {
			msg, err := current().ReceiveTimeout(ctx, subscriptionCheck)
			if ctx.Err() != nil {
				return
			}
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				if !pinged && current().Ping(ctx) == nil {
					pinged = true // its answer, or any message, shows the connection alive
					continue
				}
				g.views.setLive(false) // silent: messages may be lost without a word
				fresh := g.rdb.Subscribe(ctx, g.channel())
				mu.Lock()
				old := ps
				ps = fresh
				mu.Unlock()
				_ = old.Close()
				if ctx.Err() != nil { // stopped meanwhile: stop closed the old one
					_ = fresh.Close()
					return
				}
				pinged = false
				continue
			}
			pinged = false
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					g.views.setLive(true)
				}
			case *redis.Message:
				g.views.drop(m.Payload)
			}
			if err == nil {
				delay = 50 * time.Millisecond
				continue
			}
			g.views.setLive(false) // go-redis reconnects and subscribes again on the next Receive
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			delay = min(2*delay, time.Second)
		}
	}()
	return func() { cancel(); _ = current().Close() }, finished
}

// subscriptionCheck is how long the gate's subscription may stay silent
// before a ping asks whether its connection is still there, and how long
// that ping has to be answered.
const subscriptionCheck = 2 * time.Second
