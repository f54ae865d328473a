package tasks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
)

// Sender posts one Webex message once; *webex.Client is one.
type Sender interface {
	CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error)
}

var _ Sender = (*webex.Client)(nil)

// TaskResult is what a task records, as asynq's result, after each part
// Webex accepts: the Webex message id of each part, "" for a part not yet
// delivered. asynqmon shows it among completed tasks while the task is
// retained; it is also the dedup record a redelivery reads.
type TaskResult struct {
	MessageIDs []string `json:"message_ids"`
	// Unconfirmed lists the parts (from 0) Webex accepted whose id courier
	// never learnt (a 2xx answer cut short): delivered, with an empty id.
	Unconfirmed []int `json:"unconfirmed_parts,omitempty"`
}

// Handler delivers send tasks: the asynq.Handler of a Worker (NewWorker
// builds it; Worker.Handler returns it). Its RetryDelay, IsFailure and
// HandleError are the asynq server's hooks (hooks.go).
type Handler struct {
	cfg   WorkerConfig
	rec   *records
	bots  map[string]*bot
	stop  context.Context // ends when the worker stops: in-process waits end
	gate  *gate
	order *ordering

	// afterRecord, when set (tests), runs after each dedup record is written.
	afterRecord func(taskID string, part int) error
	// isolated: this handler delivers in an isolated process (isolate.go).
	isolated bool
	// isolateSlots holds a token per isolated process running (isolate.go).
	isolateSlots chan struct{}
	// warm, while the worker runs, runs deliveries on goroutines whose
	// stacks have grown already (warm.go).
	warm atomic.Pointer[warm]
	// run is, in an isolated process, the claim and holder of the worker
	// that started it (isolate.go); nil elsewhere.
	run *isolatedRun
}

// ProcessTask delivers one task. It returns nil when the message is
// delivered (or was already), else a *DeliveryError.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	entered := time.Now() // after asynq's fetch: a takeover seen as later than this overtook the delivery
	if w := h.warm.Load(); w != nil {
		return w.run(func() error { return h.processTask(ctx, t, entered) })
	}
	return h.processTask(ctx, t, entered)
}

func (h *Handler) processTask(ctx context.Context, t *asynq.Task, entered time.Time) error {
	m := taskMeta{entered: entered}
	m.id, _ = asynq.GetTaskID(ctx)
	m.queue, _ = asynq.GetQueueName(ctx)
	m.retried, _ = asynq.GetRetryCount(ctx)
	m.maxRetry, _ = asynq.GetMaxRetry(ctx)
	var d delivery
	err := h.process(ctx, m, t.Payload(), &d)
	if d.suspect > 0 {
		d.claim = h.isolatedClaim(ctx, m)
		err = h.isolate(ctx, m, t.Payload(), d.suspect, d.claim)
		d.release = h.releaser(ctx, m, t.Payload()) // the isolated process never releases: this worker does, once fenced
		d.confirmed = time.Time{}                   // the isolated process wrote, not this one: check
	}
	claim, release := d.claim, d.release
	if claim == nil {
		if err == nil && release != nil { // delivered in isolation, its claim unread: no fence to release under
			return &DeliveryError{Outcome: Interrupted, Err: errors.New("delivered, but its claim could not be read to release its sequence under: its redelivery will"), Delay: retrypolicy.QueueDelay(0)}
		}
		return err // nothing began: nothing to fence, nothing to release
	}
	// A worker whose task was taken over (or that cannot tell) exits here,
	// before asynq records the outcome on the new owner's entries, and never
	// releases the next message of a sequence: the new owner may still be
	// posting this one.
	if ferr := h.fence(ctx, *claim, d.confirmed); ferr != nil {
		if err == nil {
			err = &DeliveryError{Outcome: Interrupted, Err: ferr, Delay: retrypolicy.QueueDelay(0)}
		}
		return err
	}
	if err == nil && release != nil {
		release()
	}
	return err
}

// releaser returns what hands the sequence of an ordered message on once
// it is delivered; nil for an unordered one.
func (h *Handler) releaser(ctx context.Context, m taskMeta, payload []byte) func() {
	p, err := DecodePayload(payload)
	if err != nil || p.OrderingKey == "" {
		return nil
	}
	// Tried until it succeeds while the task is held: a delivered head that
	// completed without its release would leave its sequence to the
	// Reconciler, which cannot tell it from a deleted one once asynq drops
	// it (Retention < 0). Once the task's context ends asynq does not
	// complete it: its redelivery finds it delivered and releases.
	return func() {
		err := h.untilDone(ctx, "next message of the sequence not released: retrying while the task is held", m.queue, m.id,
			func(ctx context.Context) error { return h.order.release(ctx, m.queue, m.id, p.OrderingKey) })
		if err != nil {
			h.cfg.Logger.Warn("next message of the sequence not released; the head's redelivery will", "task_id", m.id, "queue", m.queue, "error", err.Error())
		}
	}
}

// isolatedClaim is the claim an isolated delivery runs under, read before
// it starts, so that its outcome is fenced too; nil when Redis cannot say
// or the hash is gone (the isolated delivery's own start then meets it).
func (h *Handler) isolatedClaim(ctx context.Context, m taskMeta) *Claim {
	v, err := h.rec.rdb.HMGet(ctx, taskKey(m.queue, m.id), "state", fieldEpoch).Result()
	if err != nil || v[0] == nil {
		return nil
	}
	var epoch int64
	if e, ok := v[1].(string); ok {
		epoch, _ = strconv.ParseInt(e, 10, 64)
	}
	return &Claim{Queue: m.queue, ID: m.id, Epoch: epoch}
}

// delivery is what process tells ProcessTask.
type delivery struct {
	// claim is the delivery's hold on the task once it has begun, fenced
	// until process returns; nil when nothing began.
	claim *Claim
	// release, for a delivered ordered message, hands its sequence on;
	// ProcessTask calls it once the fence allows.
	release func()
	// confirmed is when Redis last confirmed the claim's epoch (the start
	// of the delivery, each fenced record write); zero: never.
	confirmed time.Time
	// suspect, above 0, is how many deliveries of the task died in a row:
	// nothing began here, ProcessTask delivers it in isolation.
	suspect int
}

// process delivers one task, in the worker or in an isolated process,
// filling d as it goes.
func (h *Handler) process(ctx context.Context, m taskMeta, payload []byte, d *delivery) (err error) {
	id, queue, retried, maxRetry := m.id, m.queue, m.retried, m.maxRetry
	defer func() {
		if r := recover(); r != nil { // counted, through the limit like every counted outcome
			err = h.counted(&DeliveryError{Outcome: Transient, Err: fmt.Errorf("panic: %v", r)}, retried, maxRetry)
		}
	}()
	now := h.cfg.Now()

	p, err := DecodePayload(payload)
	switch {
	case errors.Is(err, ErrNewerPayload):
		return &DeliveryError{Outcome: Deferred, Err: err, Delay: retrypolicy.QueueDelay(h.cfg.DeferDelay)}
	case err != nil:
		return &DeliveryError{Outcome: Corrupt, Err: err}
	}
	if p.OrderingKey != "" { // only the head of its sequence goes; once delivered, the next one
		if de := h.order.claim(ctx, queue, id, p.OrderingKey); de != nil {
			return de
		}
		d.release = h.releaser(ctx, m, payload) // called once delivered (not after a panic: the sequence waits)
	}
	if p.ParentTask != "" { // a reply: to its parent's Webex message, once delivered
		if de := h.threadReply(ctx, queue, id, p); de != nil {
			return de
		}
	}
	b := h.bots[p.Bot]
	if b == nil {
		return &DeliveryError{Outcome: Permanent, Bot: p.Bot, Err: fmt.Errorf("unknown bot %q: this worker knows %s", p.Bot, h.cfg.botNames())}
	}
	if h.stopping() {
		return &DeliveryError{Outcome: Interrupted, Bot: b.name, Err: errors.New("worker stopping"), Delay: retrypolicy.QueueDelay(0)}
	}
	suspectAt := 0
	if h.isolating() {
		suspectAt = suspectAfter
	}
	asked := time.Now() // Redis confirms the epoch after this, however long its answer takes to be read
	st, err := h.rec.begin(ctx, queue, id, h.holder(), suspectAt, m.entered)
	switch {
	case err != nil: // Redis's fault, not the message's: not counted
		return &DeliveryError{Outcome: RedisUnavailable, Bot: b.name, Err: err, Delay: retrypolicy.QueueDelay(0)}
	case st.overtaken: // the epoch read is the new owner's: fenced under the one before it, ProcessTask's fence halts
		d.claim = &Claim{Queue: queue, ID: id, Epoch: st.epoch - 1}
		return &DeliveryError{Outcome: Interrupted, Bot: b.name, Err: fmt.Errorf("%w: after this delivery was fetched, before it began", ErrTakenOver), Delay: retrypolicy.QueueDelay(0)}
	case st.gone: // asynq's retry rebuilds the hash from the message it holds
		return &DeliveryError{Outcome: TaskMissing, Bot: b.name, Err: fmt.Errorf("task hash %s is missing (evicted or deleted?): not posting without a delivery record", taskKey(queue, id)), Delay: retrypolicy.QueueDelay(0)}
	case st.suspect:
		d.suspect = st.died
		return nil
	}
	claim := h.claimOf(queue, id, st.epoch)
	d.claim = &claim
	if claim.Epoch == st.epoch { // Redis confirmed it (an isolated process runs under the worker's)
		d.confirmed = asked
	}
	if h.cfg.Fence != nil {
		defer h.cfg.Fence.Hold(claim)()
	}
	finished := false
	defer func() {
		if !finished {
			h.endRun(ctx, claim)
		}
	}()
	parts := p.Message.Parts()
	sent := st.sent
	if len(sent) != len(parts) {
		sent = make([]string, len(parts)) // no record yet (or a stale one): deliver every part
	}
	if delivered(sent) == len(parts) {
		finished = true
		h.endRun(ctx, claim)
		h.cfg.Logger.Info("already delivered, not posting again", "task_id", id, "queue", queue, "bot", botLabel(b.name), "outcome", Deduplicated)
		h.cfg.Observer.Outcome(b.name, Deduplicated)
		return nil
	}
	if p.ExpiresAt != nil && now.After(*p.ExpiresAt) {
		what := ", not delivered"
		if k := delivered(sent); k > 0 {
			what = fmt.Sprintf(" after %d of %d parts", k, len(parts))
		}
		return &DeliveryError{Outcome: Expired, Bot: b.name, Sent: sent, Err: fmt.Errorf("expired at %s%s", p.ExpiresAt.Format(time.RFC3339), what)}
	}
	if de := h.poisoned(st, b.name, sent); de != nil {
		return de
	}
	if wait, ok := b.admit(now, h.cfg.UnauthorizedDelay); !ok {
		return &DeliveryError{Outcome: Unauthorized, Bot: b.name, Err: webex.ErrUnauthorized, Delay: retrypolicy.QueueDelay(wait)}
	}

	// In-process waits end when the worker stops; a request under way
	// finishes (the HTTP timeout is below the shutdown timeout).
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWaits := context.AfterFunc(h.stop, cancel)
	defer stopWaits()

	totalAttempts, unconfirmed := 0, 0
	for i, part := range parts {
		if sent[i] != "" {
			continue
		}
		attempts := 0
		s, err := retrypolicy.DoValue(waitCtx, h.cfg.Policy, func(waitCtx context.Context) (*webex.Sent, error) {
			probe, err := h.gate.wait(waitCtx, b.name)
			if err != nil {
				return nil, err
			}
			if err := h.fence(ctx, claim, d.confirmed); err != nil {
				return nil, err
			}
			attempts++
			s, err := b.sender.CreateMessage(ctx, part)
			h.cfg.Observer.Attempt(b.name, err)
			h.gate.result(ctx, b.name, err, probe)
			return s, err
		}, retrypolicy.WithMaxWait(h.cfg.Budget), retrypolicy.WithLogger(h.cfg.attemptLogger), retrypolicy.WithName("deliver"),
			retrypolicy.OnRetry(func(_ int, _ error, d time.Duration) { h.cfg.Observer.Waited(d) }))
		totalAttempts += attempts
		var unc *webex.UnconfirmedError
		switch {
		case errors.As(err, &unc): // the message exists: delivered, id unknown
			sent[i] = unconfirmedID
			unconfirmed++
			attrs := []any{"task_id", id, "queue", queue, "bot", botLabel(b.name), "outcome", DeliveredUnconfirmed,
				"status", unc.StatusCode, "error", err.Error()}
			if unc.TrackingID != "" {
				attrs = append(attrs, "tracking_id", unc.TrackingID)
			}
			if len(parts) > 1 {
				attrs = append(attrs, "part", i+1, "parts", len(parts))
			}
			h.cfg.Logger.Warn("Webex accepted the message but its answer was unreadable: counted as delivered, id unknown", attrs...)
		case err != nil:
			de := h.failure(ctx, b, err, retried, maxRetry)
			de.Attempts, de.Part, de.Parts, de.Sent = attempts, i+1, len(parts), sent
			return de
		default:
			sent[i] = s.ID
		}
		if b.accept() {
			h.cfg.Observer.TokenRejected(b.name, false)
			h.cfg.Logger.Info("Webex accepts the bot's token again: delivering", "bot", botLabel(b.name))
		}
		last := delivered(sent) == len(parts)
		confirmed, err := h.record(ctx, claim, sent, last, b.name)
		if err != nil {
			if errors.Is(err, ErrTakenOver) || errors.Is(err, ErrFenceUnknown) { // not the new owner's record to write
				return &DeliveryError{Outcome: Interrupted, Bot: b.name, Err: err, Delay: retrypolicy.QueueDelay(0), Part: i + 1, Parts: len(parts)}
			}
			// Only this worker knew the ids: the redelivery posts these parts again.
			return &DeliveryError{Outcome: RedisUnavailable, Bot: b.name, Err: err, Delay: retrypolicy.QueueDelay(0), Part: i + 1, Parts: len(parts)}
		}
		if h.fencedWrites() {
			d.confirmed = confirmed
		}
		finished = last
		if h.afterRecord != nil {
			if err := h.afterRecord(id, i); err != nil {
				return h.counted(&DeliveryError{Outcome: Transient, Bot: b.name, Err: err, Delay: h.cfg.Schedule.Delay(retried, err)}, retried, maxRetry)
			}
		}
	}
	outcome := Delivered
	if unconfirmed > 0 {
		outcome = DeliveredUnconfirmed
	}
	if h.cfg.Logger.Enabled(ctx, slog.LevelInfo) {
		h.cfg.Logger.Info("delivered", "task_id", id, "queue", queue, "bot", botLabel(b.name), "outcome", outcome,
			"attempts", totalAttempts, "redeliveries", retried, "parts", len(parts))
	}
	h.cfg.Observer.Outcome(b.name, outcome)
	if !p.EnqueuedAt.IsZero() {
		h.cfg.Observer.Delivered(h.cfg.Now().Sub(p.EnqueuedAt))
	}
	return nil
}

// record writes the dedup record. Only this worker knows the Webex ids: it
// keeps trying, never counting a redelivery, until the handler's context
// ends (asynq ends it when the task's lease expires, at its deadline or on
// abort; a lease cannot be extended while Redis is down, so this outlasts
// outages shorter than the lease, about 25s). It ends the breaker's run of
// failures for the bot in the same round trip when one may be open (a
// success means Webex answers), and checks the fence: with *Recovery in the
// write's own script, else with Fence.Check before it. A write the fence
// refuses returns ErrTakenOver (or ErrFenceUnknown), the fence having
// halted the worker. It returns when the write that succeeded was sent: a
// fenced write confirms the claim from then on, however long its answer
// took to be read.
func (h *Handler) record(ctx context.Context, c Claim, sent []string, last bool, bot string) (sentAt time.Time, _ error) {
	fenced := h.fencedWrites()
	if !fenced {
		if err := h.fence(ctx, c, time.Time{}); err != nil {
			return time.Time{}, err
		}
	}
	var refused error
	err := h.untilDone(ctx, "delivery record not written: retrying while the task is held", c.Queue, c.ID, func(ctx context.Context) error {
		sentAt = time.Now()
		err := h.rec.markSent(ctx, c.Queue, c.ID, sent, last, fenced, c.Epoch, h.gate.succeeded(ctx, bot))
		if errors.Is(err, errFenced) {
			if refused = h.fence(ctx, c, time.Time{}); refused == nil { // the fence halts the worker
				refused = fmt.Errorf("%w: %w", ErrTakenOver, err)
			}
			return nil
		}
		return err
	})
	return sentAt, cmp.Or(refused, err)
}

// endRun ends the delivery's run, retrying like record (but for at most a
// few seconds once the task's context has ended): a run left open would be
// taken for a delivery that died with its worker. A delivery whose task was
// taken over leaves the run marker alone: it is the new owner's.
func (h *Handler) endRun(ctx context.Context, c Claim) {
	if h.fence(ctx, c, time.Time{}) != nil {
		return
	}
	queue, id := c.Queue, c.ID
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endRunTimeout)
	defer cancel()
	err := h.untilDone(ctx, "delivery run not ended: retrying", queue, id, func(ctx context.Context) error { return h.rec.end(ctx, queue, id) })
	if err != nil {
		h.cfg.Logger.Warn("delivery run left open: a later delivery may take it for a crash", "task_id", id, "queue", queue, "error", err.Error())
	}
}

// endRunTimeout bounds endRun.
const endRunTimeout = 10 * time.Second

// untilDone runs op until it succeeds or ctx ends, backing off from 50ms to
// 1s; the first failure is logged at warn with msg.
func (h *Handler) untilDone(ctx context.Context, msg, queue, id string, op func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for n := 1; ; n++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if n == 1 {
			h.cfg.Logger.Warn(msg, "task_id", id, "queue", queue, "error", err.Error())
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("gave up after %d tries (%w): %w", n, context.Cause(ctx), err)
		case <-t.C:
		}
		delay = min(2*delay, time.Second)
	}
}

// failure turns the error of a delivery's in-process attempts into the
// outcome that decides the task's fate.
func (h *Handler) failure(ctx context.Context, b *bot, err error, retried, maxRetry int) *DeliveryError {
	de := &DeliveryError{Bot: b.name, Err: err}
	dec := retrypolicy.Classify(err, nil)
	var budget *retrypolicy.BudgetError
	var held *GateError
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() == nil, // our stop, not the task's end
		errors.Is(err, ErrTakenOver),    // taken over: the worker exits unless Fence has no Halt
		errors.Is(err, ErrFenceUnknown): // Redis cannot say whether it was taken over: not the message's fault
		de.Outcome, de.Delay = Interrupted, retrypolicy.QueueDelay(0)
	case errors.As(err, &held) && held.Kind == GateCircuitOpen:
		de.Outcome, de.Delay = CircuitOpen, max(h.cfg.Schedule.Delay(retried, err), retrypolicy.QueueDelay(held.Wait))
	case errors.As(err, &held):
		de.Outcome, de.Delay = RateLimited, retrypolicy.QueueDelay(held.Wait)
	case errors.Is(err, webex.ErrUnauthorized):
		b.reject(h.cfg.Now(), h.cfg.UnauthorizedDelay)
		h.cfg.Observer.TokenRejected(b.name, true)
		de.Outcome, de.Delay = Unauthorized, retrypolicy.QueueDelay(h.cfg.UnauthorizedDelay)
	case !dec.Class.Retryable():
		de.Outcome = Permanent
	case dec.Class == retrypolicy.RateLimited,
		errors.As(err, &budget) && dec.RetryAfter > 0: // the server named a wait beyond the budget
		de.Outcome, de.Delay = RateLimited, h.cfg.Schedule.Delay(retried, err)
	default:
		de.Outcome, de.Delay = Transient, h.cfg.Schedule.Delay(retried, err)
	}
	return h.counted(de, retried, maxRetry)
}

// counted applies the redelivery limit to an outcome that uses up a
// redelivery: at the limit it becomes Exhausted, a dead letter. Every
// counted outcome goes through it, so that asynq's Retried never reaches
// MaxRetry (where asynq archives whatever the outcome, even a rate limit,
// and its recoverer archives without calling the error handler).
func (h *Handler) counted(de *DeliveryError, retried, maxRetry int) *DeliveryError {
	if de.Outcome == Transient && retried >= h.redeliveryLimit(maxRetry) {
		de.Outcome, de.Delay = Exhausted, 0
		de.Err = fmt.Errorf("failed after %d redeliveries: %w", retried, de.Err)
	}
	return de
}

// redeliveryLimit is the task's redelivery limit (asynq's MaxRetry less the
// headroom), capped by the worker's MaxRedeliveries when set.
func (h *Handler) redeliveryLimit(maxRetry int) int {
	limit := max(maxRetry-retryHeadroom, 0)
	if h.cfg.MaxRedeliveries > 0 {
		limit = min(limit, h.cfg.MaxRedeliveries)
	}
	return limit
}

func (h *Handler) stopping() bool { return h.stop.Err() != nil }

// fence asks WorkerConfig.Fence whether this delivery may still post and
// write. Its error is final (the fence retries Redis itself): it stops the
// attempts at once and is never the message's fault. With *Recovery, a
// claim Redis confirmed less than fenceFresh ago (confirmed) is not asked
// again (see fenceFresh).
func (h *Handler) fence(ctx context.Context, c Claim, confirmed time.Time) error {
	if h.cfg.Fence == nil {
		return nil
	}
	if ef, ok := h.cfg.Fence.(epochFence); ok && !confirmed.IsZero() && ef.live(confirmed) && time.Since(confirmed) < fenceFresh {
		return nil
	}
	err := h.cfg.Fence.Check(ctx, c)
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, ErrTakenOver) && !errors.Is(err, ErrFenceUnknown):
		err = fmt.Errorf("%w: %w", ErrFenceUnknown, err)
	}
	return retrypolicy.MarkPermanent(err)
}

// fenceFresh is how long a claim Redis confirmed (the start-of-delivery
// script read its epoch; a record write checked it) stands without asking
// again before a post or before the outcome goes back to asynq, while the
// worker's own liveness key stands for fenceFresh and a margin more
// (epochFence.live): a takeover needs the holder's liveness key gone (not
// refreshed for RecoveryConfig.After) and its lease still, so within
// fenceFresh of a confirmation nobody can overtake a live worker. A pause
// longer than fenceFresh (SIGSTOP, a stalled VM) is always checked, and so
// is every claim while this worker's liveness writes fail.
const fenceFresh = time.Second

// fencedWrites reports whether the fence is the task's epoch (*Recovery):
// the record write then checks it in its own script, and a fresh claim is
// not asked again.
func (h *Handler) fencedWrites() bool {
	_, ok := h.cfg.Fence.(epochFence)
	return ok
}

var _ asynq.Handler = (*Handler)(nil)
