// Package retrypolicy is courier's retry vocabulary: how long to wait between
// attempts, which errors are worth another attempt, and how to run attempts
// in-process without overrunning a budget. It knows nothing of Webex or asynq.
//
// The pieces:
//
//   - [Policy] describes in-process attempts (MaxAttempts, InitialDelay,
//     MaxDelay, Multiplier, Jitter). [Default] and [Webex] are the presets.
//   - [Classify] sorts an error into [Permanent], [Transient] or [RateLimited]
//     (with the delay the server asked for). Callers mark their own errors with
//     [MarkPermanent], [MarkTransient] and [MarkRetryAfter]; error types of
//     other packages classify themselves by implementing [Classifier].
//   - [Do] and [DoValue] run a function with retries on top of
//     github.com/sethvargo/go-retry; [Loop] is the explicit-loop form for
//     callers that need control over each attempt.
//   - [Schedule] is the pure redelivery schedule the durable layer (asynq's
//     RetryDelayFunc) uses once in-process attempts are spent.
//
// In-process attempts absorb blips (a reset connection, one 503); the durable
// schedule absorbs outages, measured in minutes or hours, without holding a
// worker slot.
package retrypolicy
