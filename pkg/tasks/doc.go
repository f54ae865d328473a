// Package tasks is courier's queue contract, shared by producers and workers.
//
// Producers build a [Message] (a Webex message plus inline files) and
// enqueue it with a [Producer]: it is validated with Webex's rules before it
// reaches Redis, encoded as a versioned [Payload] and stored as an asynq task
// of type [TypeSend]. An idempotency key ([Key]) becomes the asynq task ID,
// so a second enqueue while the task exists (or is retained, 25h by default
// for keyed tasks) is reported as a [*DuplicateError].
//
// Workers run [NewWorker]: an asynq server whose [Handler] decodes each
// task, skips what a dedup record says was already posted, posts each part
// with in-process retry (pkg/retrypolicy, within a budget), and returns a
// [*DeliveryError] whose [Outcome] decides the task's fate through the
// server hooks [Handler.RetryDelay], [IsFailure] and [Handler.HandleError]:
//
//   - transient failures are redelivered on the durable schedule and use up
//     a redelivery; after the last one the task is dead-lettered;
//   - rate limits (429, or a Retry-After beyond the budget) wait the server's
//     delay without using one;
//   - permanent refusals, corrupt payloads, expired messages and poison tasks
//     are dead-lettered at once (asynq's archive) with the reason;
//   - a rejected token holds the bot's tasks (no redelivery used, nothing
//     dead-lettered) and makes the worker not ready until it works again.
//
// Ordered messages ([Ordered], [OrderingKey]) with the same ordering key are
// delivered one at a time, in enqueue order: only the head of each sequence
// is an asynq task, the rest wait in courier's keys (ordering.go) and enter
// asynq one by one as the head before them is delivered or dead-lettered. A
// [Reconciler] ([Worker.Reconciler], which cmd/worker runs beside each
// worker) moves sequences on whose head left without courier knowing. [ReplyTo] threads a reply under the message
// another task delivers.
//
// The client may be one Redis, a Sentinel client or a *redis.ClusterClient.
// A ClusterClient given to NewWorker, NewProducer, NewRecovery,
// NewReconciler or NewDeadLetters gets a hook (once) that reloads its map
// of slots as soon as a command fails: go-redis alone reloads it on MOVED
// or every 60 s, so after a primary died its commands kept failing for up
// to a minute after the cluster had promoted a replica (docs/REDIS.md,
// "A Cluster failover"). The hook affects the caller's own commands on
// that client the same way, and nothing else.
package tasks
