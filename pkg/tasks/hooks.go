package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// RetryDelay is the asynq RetryDelayFunc: the delay the handler decided, a
// short one after a lease expired (the worker died; not the task's fault),
// else the durable schedule.
func (h *Handler) RetryDelay(retried int, err error, _ *asynq.Task) time.Duration {
	var de *DeliveryError
	switch {
	case errors.As(err, &de):
		return max(de.Delay, time.Second)
	case errors.Is(err, asynq.ErrLeaseExpired):
		return retrypolicy.QueueDelay(0)
	}
	return h.cfg.Schedule.Delay(retried, err)
}

// IsFailure is the asynq IsFailure func: only transient failures (and
// anything unexpected) use up a redelivery. Rate limits, a rejected token,
// a stopping worker, a newer payload and a lease expiry do not.
func IsFailure(err error) bool {
	var de *DeliveryError
	if errors.As(err, &de) {
		return de.Outcome.countsAsFailure()
	}
	return !errors.Is(err, asynq.ErrLeaseExpired)
}

// HandleError is the asynq ErrorHandler: it records each failed delivery
// and each dead letter once, with the task id, queue, bot, attempts,
// redelivery count, outcome, Webex status and tracking id, and the next
// delay. Never the token, and the message text never above debug level.
func (h *Handler) HandleError(ctx context.Context, t *asynq.Task, err error) {
	id, _ := asynq.GetTaskID(ctx)
	queue, _ := asynq.GetQueueName(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, known := asynq.GetMaxRetry(ctx)
	limit := h.redeliveryLimit(maxRetry)
	var de *DeliveryError
	switch {
	case errors.As(err, &de):
	case errors.Is(err, asynq.ErrLeaseExpired):
		de = &DeliveryError{Outcome: LeaseExpired, Err: err, Delay: retrypolicy.QueueDelay(0)}
	default: // asynq's own: the task's deadline passed
		de = &DeliveryError{Outcome: Transient, Err: err, Delay: h.cfg.Schedule.Delay(retried, err)}
	}
	// asynq archives whatever the outcome once Retried reaches MaxRetry
	// (the handler's limit keeps counted outcomes below it).
	archived := errors.Is(err, asynq.SkipRetry) || known && retried >= maxRetry
	if archived && !de.Outcome.DeadLetter() {
		de = &DeliveryError{Outcome: Exhausted, Bot: de.Bot, Attempts: de.Attempts, Part: de.Part, Parts: de.Parts, Sent: de.Sent,
			Err: fmt.Errorf("archived by asynq at %d of %d retries: %w", retried, maxRetry, de)}
	}
	h.cfg.Observer.Outcome(de.Bot, de.Outcome)

	attrs := []any{"task_id", id, "queue", queue, "bot", botLabel(de.Bot), "outcome", string(de.Outcome),
		"attempts", de.Attempts, "max_attempts", h.cfg.Policy.MaxAttempts, "redeliveries", retried, "max_redeliveries", limit}
	if s := de.Status(); s != 0 {
		attrs = append(attrs, "status", s)
	}
	if tid := de.TrackingID(); tid != "" {
		attrs = append(attrs, "tracking_id", tid)
	}
	if de.Parts > 1 {
		attrs = append(attrs, "part", de.Part, "parts", de.Parts)
	}
	if !de.Outcome.DeadLetter() {
		attrs = append(attrs, "delay", de.Delay)
	}
	attrs = append(attrs, "error", errText(de.Err))
	log := h.cfg.Logger
	if archived {
		behind := h.order.releaseDeadLetter(ctx, t, queue, id, err)
		if de.Outcome != PassedOver { // recorded when it was first dead-lettered
			h.recordDeadLetter(ctx, t, id, queue, de, behind, log)
		}
	}
	switch {
	case de.Outcome == PassedOver:
		log.Error("dead-lettered again: a dead letter came back without being archived after its sequence moved on past it; not delivered out of order", attrs...)
	case de.Outcome == Exhausted:
		log.Error(fmt.Sprintf("failed after %d redeliveries, dead-lettered", retried), attrs...)
	case de.Outcome.DeadLetter():
		log.Error(fmt.Sprintf("%s error, dead-lettered (not retried)", de.Outcome), attrs...)
	case de.Outcome == Transient:
		log.Warn(fmt.Sprintf("delivery failed after %d/%d attempts, redelivery %d/%d in %s",
			de.Attempts, h.cfg.Policy.MaxAttempts, retried+1, limit, de.Delay), attrs...)
	case de.Outcome == LeaseExpired:
		log.Warn("lease expired: the delivery outlived its lease (worker died, stalled or lost Redis); redelivered (not counted)", attrs...)
	case de.Outcome == Killed:
		log.Error("isolated delivery died with its process: counted toward poison, redelivered", attrs...)
	case de.Outcome == TaskMissing:
		log.Error("task hash missing when its delivery began: not posted; asynq rebuilds it on redelivery (not counted)", attrs...)
	case de.Outcome == RedisUnavailable:
		log.Warn(fmt.Sprintf("Redis failed during the delivery, handed back in %s (not counted)", de.Delay), attrs...)
	case de.Outcome == RateLimited:
		log.Warn(fmt.Sprintf("rate-limited, redelivery in %s (not counted)", de.Delay), attrs...)
	case de.Outcome == Unauthorized:
		level := slog.LevelDebug
		if b := h.bots[de.Bot]; b != nil && b.shouldLog(h.cfg.Now(), h.cfg.UnauthorizedDelay) {
			level = slog.LevelError
		}
		log.Log(ctx, level, "Webex rejects the bot's token: its tasks are held, not dead-lettered; fix the token", attrs...)
	default: // interrupted, deferred
		log.Info(fmt.Sprintf("%s, handed back in %s (not counted)", de.Outcome, de.Delay), attrs...)
	}
}

// recordDeadLetter keeps the dead letter beyond asynq's archive caps.
func (h *Handler) recordDeadLetter(ctx context.Context, t *asynq.Task, id, queue string, de *DeliveryError, behind []string, log *slog.Logger) {
	if h.cfg.DeadLetters == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	dl := DeadLetter{TaskID: id, Queue: queue, Outcome: string(de.Outcome), Error: de.Error(), Time: h.cfg.Now(), Payload: t.Payload(), Behind: behind}
	if delivered(de.Sent) > 0 {
		r := newTaskResult(de.Sent)
		dl.Result = &r
	}
	if err := h.cfg.DeadLetters.Add(ctx, dl); err != nil {
		log.Error("dead letter not recorded beyond the archive", "task_id", id, "queue", queue, "error", err.Error())
	}
}

// botLabel names a bot in logs: the default bot has the empty name.
func botLabel(name string) string {
	if name == "" {
		return "default"
	}
	return name
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
