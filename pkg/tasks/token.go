package tasks

import (
	"sync"
	"time"
)

// The bot-token state machine, per bot: accepted (deliveries call Webex)
// or rejected (found at start-up or by a 401). While rejected, one delivery
// per UnauthorizedDelay probes the token and the others are held; the first
// accepted request makes it accepted again. Not to be confused with the
// shared Redis gate (gate.go), which limits the rate of every worker.

// bot is one named bot and the state of its token.
type bot struct {
	name   string
	sender Sender

	mu        sync.Mutex
	rejected  bool
	since     time.Time
	nextProbe time.Time
	lastLog   time.Time
}

// admit says whether a delivery may call Webex now. While the token is
// rejected, one delivery per interval probes it; the others wait.
func (b *bot) admit(now time.Time, interval time.Duration) (wait time.Duration, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.rejected {
		return 0, true
	}
	if now.Before(b.nextProbe) {
		return b.nextProbe.Sub(now), false
	}
	b.nextProbe = now.Add(interval)
	return 0, true
}

func (b *bot) reject(now time.Time, interval time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.rejected {
		b.rejected, b.since = true, now
	}
	b.nextProbe = now.Add(interval)
}

// accept marks the token working; it reports whether it was rejected.
func (b *bot) accept() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	was := b.rejected
	b.rejected = false
	return was
}

// shouldLog rate-limits the loud log of a rejected token to one per interval.
func (b *bot) shouldLog(now time.Time, interval time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastLog) < interval {
		return false
	}
	b.lastLog = now
	return true
}

// rejectedSince is when the token was found rejected; zero while accepted.
func (b *bot) rejectedSince() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.rejected {
		return time.Time{}
	}
	return b.since
}

// RejectedBots lists the bots whose token Webex rejects, with when it began.
func (h *Handler) RejectedBots() map[string]time.Time {
	out := map[string]time.Time{}
	for _, b := range h.bots {
		if since := b.rejectedSince(); !since.IsZero() {
			out[b.name] = since
		}
	}
	return out
}

// MarkRejected records that Webex rejects a bot's token (found at start-up),
// so its tasks are held and readiness is false until a probe succeeds.
func (h *Handler) MarkRejected(name string) {
	if b := h.bots[name]; b != nil {
		b.reject(h.cfg.Now(), 0)
		h.cfg.Observer.TokenRejected(name, true)
	}
}
