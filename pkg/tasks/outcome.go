package tasks

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex"
)

// Outcome is what became of one delivery of a task.
type Outcome string

// Outcomes. The first three complete the task; the next ten hand it back
// to the queue; the rest dead-letter it (asynq's archive).
const (
	Delivered    Outcome = "delivered"
	Deduplicated Outcome = "deduplicated" // delivered earlier; nothing posted
	// DeliveredUnconfirmed: Webex answered 2xx but its answer could not be
	// read; the message exists, its id is unknown. Never posted again.
	DeliveredUnconfirmed Outcome = "delivered_unconfirmed"

	Transient    Outcome = "transient"    // redelivered on the durable schedule; counts as a redelivery
	RateLimited  Outcome = "rate_limited" // redelivered after Retry-After; does not count
	Unauthorized Outcome = "unauthorized" // the bot's token was rejected; held, does not count
	Interrupted  Outcome = "interrupted"  // the worker is stopping; does not count
	Deferred     Outcome = "deferred"     // a newer payload version; left for a newer worker
	CircuitOpen  Outcome = "circuit_open" // Webex is failing for every worker; waits for the probe, does not count
	// RedisUnavailable: a Redis call the delivery needs failed; Redis's
	// fault, not the message's: does not count.
	RedisUnavailable Outcome = "redis_unavailable"
	// TaskMissing: the task's hash was gone when its delivery began (evicted
	// or deleted); asynq rebuilds it on redelivery. Does not count.
	TaskMissing Outcome = "task_missing"
	// LeaseExpired: the delivery outlived its lease (its worker died or lost
	// Redis); asynq's recoverer redelivers it. Does not count.
	LeaseExpired Outcome = "lease_expired"
	// Killed: the isolated process delivering a suspect died (isolate.go);
	// counts toward poison, not as a redelivery.
	Killed Outcome = "killed"

	Permanent Outcome = "permanent" // Webex refused the message for good
	Exhausted Outcome = "exhausted" // transient failures outlasted the redeliveries
	Expired   Outcome = "expired"   // not delivered before its expires_at
	Corrupt   Outcome = "corrupt"   // the payload cannot be read
	Poison    Outcome = "poison"    // deliveries kept dying with their worker
)

// DeadLetter reports whether the outcome archives the task.
func (o Outcome) DeadLetter() bool {
	switch o {
	case Permanent, Exhausted, Expired, Corrupt, Poison, PassedOver:
		return true
	}
	return false
}

// countsAsFailure reports whether the outcome uses up a redelivery.
func (o Outcome) countsAsFailure() bool { return o == Transient || o.DeadLetter() }

// DeliveryError is what the handler returns for every delivery that did not
// complete. It carries the delay before the next delivery (asynq calls the
// error handler before RetryDelayFunc, so the delay is decided here) and the
// facts the error handler logs. Its text is what asynqmon shows.
type DeliveryError struct {
	Outcome Outcome
	Err     error
	// Delay is the wait before the next delivery (0 for dead letters).
	Delay time.Duration
	Bot   string
	// Attempts is the number of in-process attempts this delivery made.
	Attempts int
	// Part and Parts locate the failure in a multi-file message (from 1).
	Part, Parts int
	// Sent holds, per part, the Webex id of each part delivered ("" for one
	// not delivered): the dead-letter record keeps it so that a re-run does
	// not post those parts again.
	Sent []string
}

func (e *DeliveryError) Error() string {
	var b strings.Builder
	b.WriteString(string(e.Outcome))
	if e.Parts > 1 {
		fmt.Fprintf(&b, " (message %d of %d)", e.Part, e.Parts)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes the cause, and asynq.SkipRetry for a dead letter so that
// asynq archives it at once.
func (e *DeliveryError) Unwrap() []error {
	if e.Outcome.DeadLetter() {
		return []error{e.Err, asynq.SkipRetry}
	}
	return []error{e.Err}
}

// Status is the Webex HTTP status behind the error, 0 if none.
func (e *DeliveryError) Status() int {
	var ae *webex.APIError
	if errors.As(e.Err, &ae) {
		return ae.StatusCode
	}
	return 0
}

// TrackingID is Webex's tracking id behind the error, "" if none.
func (e *DeliveryError) TrackingID() string {
	var ae *webex.APIError
	if errors.As(e.Err, &ae) {
		return ae.TrackingID
	}
	return ""
}
