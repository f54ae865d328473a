package tasks

import (
	"time"
)

// Observer is told what deliveries do. Its methods must be fast and safe
// for concurrent use.
type Observer interface {
	// Outcome is called once per delivery.
	Outcome(bot string, o Outcome)
	// Attempt is called after each request to Webex, with its error (nil:
	// accepted).
	Attempt(bot string, err error)
	// Waited is called with each in-process wait between attempts.
	Waited(d time.Duration)
	// Delivered is called with the time from enqueue to delivery.
	Delivered(latency time.Duration)
	// TokenRejected is called when a bot's token is found rejected (true)
	// or working again (false).
	TokenRejected(bot string, rejected bool)
	// Throttled is called when the gate holds a send back (reason
	// cooldown, circuit_open or rate_limit).
	Throttled(bot, reason string)
	// Breaker is called when a bot's circuit opens (true) or closes.
	Breaker(bot string, open bool)
}

type nopObserver struct{}

func (nopObserver) Outcome(string, Outcome)    {}
func (nopObserver) Attempt(string, error)      {}
func (nopObserver) Waited(time.Duration)       {}
func (nopObserver) Delivered(time.Duration)    {}
func (nopObserver) TokenRejected(string, bool) {}
func (nopObserver) Throttled(string, string)   {}
func (nopObserver) Breaker(string, bool)       {}
