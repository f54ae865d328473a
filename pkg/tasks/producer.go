package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/webex"
)

// DefaultQueue is the queue producers use and workers serve by default.
const DefaultQueue = "courier"

// Defaults of ProducerConfig.
const (
	DefaultMaxRedeliveries = 30
	DefaultKeyedRetention  = 25 * time.Hour
	DefaultRetention       = time.Hour
)

// ErrDuplicate matches a keyed enqueue whose key already names a task in the
// queue: the message is (or was) on its way, and callers can treat this as
// success. The error is a *DuplicateError with the task's state.
var ErrDuplicate = errors.New("duplicate idempotency key")

// ErrDeadLettered matches a duplicate whose task is in the dead-letter queue
// (archived): it was not delivered, and enqueueing again will not help until
// an operator re-runs or deletes it.
var ErrDeadLettered = errors.New("idempotency key names a dead-lettered task")

// DuplicateError reports a keyed enqueue that found its task already there.
type DuplicateError struct {
	Key, Queue string
	// State is the state of the existing task.
	State TaskState
}

// TaskState is the state of the task a duplicate key names: asynq's states
// by asynq's names ("pending", "scheduled", "active", "retry",
// "completed", "archived", "aggregating"), StateWaiting, or StateGone.
type TaskState string

// The states a DuplicateError reports.
const (
	StateGone      TaskState = "gone" // the task vanished before it could be read
	StatePending   TaskState = "pending"
	StateScheduled TaskState = "scheduled"
	StateActive    TaskState = "active"
	StateRetry     TaskState = "retry"
	StateCompleted TaskState = "completed"
	StateArchived  TaskState = "archived" // dead-lettered
	StateWaiting   TaskState = "waiting"  // an ordered message behind the head of its sequence
)

func (e *DuplicateError) Error() string {
	if e.State == StateArchived {
		return fmt.Sprintf("key %q in queue %q: dead-lettered earlier", e.Key, e.Queue)
	}
	return fmt.Sprintf("key %q in queue %q: duplicate (task %s)", e.Key, e.Queue, e.State)
}

// Is matches ErrDuplicate, and ErrDeadLettered for an archived task.
func (e *DuplicateError) Is(target error) bool {
	return target == ErrDuplicate || (target == ErrDeadLettered && e.State == StateArchived)
}

// ProducerConfig configures a Producer. Zero fields take the defaults.
type ProducerConfig struct {
	// Queue is the default queue. Default DefaultQueue.
	Queue string
	// MaxInlineBytes caps the inline files of one message. Default 1 MiB.
	MaxInlineBytes int
	// MaxRedeliveries is the default number of durable redeliveries after
	// the first delivery. Default 30, which outlives a 12 h outage with the
	// default schedule (retrypolicy.DefaultSchedule.Survives(30) ≥ 12h).
	MaxRedeliveries int
	// KeyedRetention keeps a delivered keyed task (and so its key) this
	// long: a re-run within it is a duplicate. Default 25h.
	KeyedRetention time.Duration
	// Retention keeps a delivered task without a key, so its result (the
	// Webex message id) can be seen. Default 1h; negative: not kept.
	Retention time.Duration
	// Source names the producer in payloads and logs.
	Source string
	// WaitReplicas, when above 0, makes each enqueue return only once that
	// many replicas of the task's primary have it (Redis WAIT,
	// durability.go), so that a failover to one of them cannot lose an
	// acknowledged enqueue; else the enqueue fails with ErrNotReplicated.
	// Default 0: the primary's acknowledgement is enough (replication is
	// asynchronous, and a failover can lose the last writes).
	WaitReplicas int
	// ReplicaTimeout bounds the wait for WaitReplicas. Default 1s, at least
	// 1ms (Redis's WAIT counts whole milliseconds); it must stay below the
	// client's read timeout (go-redis: 3s).
	ReplicaTimeout time.Duration
	// RelayKeys lets keys start with ReservedKeyPrefix: set by the relay's
	// own producer only. Every other producer is refused such keys
	// (ErrReservedKey), so that none can take a relay caller's key.
	RelayKeys bool
	// Now reads the clock; default time.Now.
	Now func() time.Time
}

func (c ProducerConfig) withDefaults() ProducerConfig {
	c.Queue = cmp.Or(c.Queue, DefaultQueue)
	c.MaxInlineBytes = cmp.Or(c.MaxInlineBytes, DefaultMaxInlineBytes)
	c.MaxRedeliveries = cmp.Or(c.MaxRedeliveries, DefaultMaxRedeliveries)
	c.KeyedRetention = cmp.Or(c.KeyedRetention, DefaultKeyedRetention)
	c.Retention = cmp.Or(c.Retention, DefaultRetention)
	c.ReplicaTimeout = cmp.Or(c.ReplicaTimeout, DefaultReplicaTimeout)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// validate reports every problem at once.
func (c ProducerConfig) validate() error {
	var errs []error
	for _, f := range []struct {
		field string
		v     int64
	}{{"MaxRedeliveries", int64(c.MaxRedeliveries)}, {"MaxInlineBytes", int64(c.MaxInlineBytes)}, {"WaitReplicas", int64(c.WaitReplicas)}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s is %d: must not be negative", f.field, f.v))
		}
	}
	if c.KeyedRetention < 0 {
		errs = append(errs, fmt.Errorf("KeyedRetention is %v: must not be negative", c.KeyedRetention))
	}
	if c.ReplicaTimeout < time.Millisecond {
		// WAIT takes whole milliseconds, and 0 means wait for ever.
		errs = append(errs, fmt.Errorf("ReplicaTimeout is %v: must be at least 1ms", c.ReplicaTimeout))
	}
	return errors.Join(errs...)
}

// Producer enqueues send tasks. It is safe for concurrent use.
type Producer struct {
	cfg       ProducerConfig
	rdb       redis.UniversalClient
	client    *asynq.Client
	inspector *asynq.Inspector
	queues    sync.Map // queues known to be in asynq's set of queues
}

// NewProducer returns a producer over a go-redis client (which the caller
// keeps and closes).
func NewProducer(rdb redis.UniversalClient, cfg ProducerConfig) (*Producer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("producer config: %w", err)
	}
	redisurl.FollowFailovers(rdb)
	if cfg.WaitReplicas > 0 {
		if err := waitable(rdb, cfg.ReplicaTimeout); err != nil {
			return nil, fmt.Errorf("producer config: %w", err)
		}
	}
	return &Producer{cfg: cfg, rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb)}, nil
}

// Option adjusts one enqueue.
type Option func(*enqueueOptions)

type enqueueOptions struct {
	queue           string
	key             string
	bot             string
	source          string
	processAt       time.Time
	processIn       time.Duration
	maxRedeliveries *int
	expiresAt       time.Time
	expiresIn       time.Duration
	retention       *time.Duration
	enqueuedAt      time.Time
	ordered         bool
	orderingKey     string         // the given key, then the one in use
	parentTask      string         // ReplyTo
	asynq           []asynq.Option // built from the above
	maxRetry        int            // asynq's MaxRetry
	keep            int64          // asynq's retention in seconds
}

// Queue sends the task to queue q.
func Queue(q string) Option { return func(o *enqueueOptions) { o.queue = q } }

// Key sets the idempotency key: a second enqueue with the same key in the
// same queue, while the task exists or is retained, is a duplicate.
func Key(k string) Option { return func(o *enqueueOptions) { o.key = k } }

// Bot names the bot to send as (empty: the default bot).
func Bot(name string) Option { return func(o *enqueueOptions) { o.bot = name } }

// Source names the producer for this message.
func Source(s string) Option { return func(o *enqueueOptions) { o.source = s } }

// ProcessAt delays the first delivery until t.
func ProcessAt(t time.Time) Option { return func(o *enqueueOptions) { o.processAt = t } }

// ProcessIn delays the first delivery by d.
func ProcessIn(d time.Duration) Option { return func(o *enqueueOptions) { o.processIn = d } }

// MaxRedeliveries sets how many durable redeliveries a transient failure may
// use before the task is dead-lettered.
func MaxRedeliveries(n int) Option { return func(o *enqueueOptions) { o.maxRedeliveries = &n } }

// ExpiresAt dead-letters the message as expired if it is not delivered by t.
func ExpiresAt(t time.Time) Option { return func(o *enqueueOptions) { o.expiresAt = t } }

// ExpiresIn is ExpiresAt(now + d).
func ExpiresIn(d time.Duration) Option { return func(o *enqueueOptions) { o.expiresIn = d } }

// Retention keeps the delivered task (and its result) for d.
func Retention(d time.Duration) Option { return func(o *enqueueOptions) { o.retention = &d } }

// EnqueuedAt records t as the message's enqueue time (default: now), for
// producers that answer with it (the relay) or import older messages.
func EnqueuedAt(t time.Time) Option { return func(o *enqueueOptions) { o.enqueuedAt = t } }

// Enqueued is a task that was enqueued.
type Enqueued struct {
	TaskID string
	Queue  string
}

// Enqueue validates msg and enqueues it. An invalid message never reaches
// Redis: the error holds a *webex.ValidationError per problem. A keyed
// duplicate returns a *DuplicateError (errors.Is ErrDuplicate). With
// WaitReplicas, an enqueue not known to be on the replicas returns a
// *ReplicationError (errors.Is ErrNotReplicated).
func (p *Producer) Enqueue(ctx context.Context, msg Message, opts ...Option) (*Enqueued, error) {
	e, err := p.enqueue(ctx, msg, opts)
	var dup *DuplicateError
	if errors.As(err, &dup) && p.cfg.WaitReplicas > 0 && dup.State != StateGone {
		// A duplicate says the primary has the task, not that its replicas
		// do: the first enqueue may have failed with ErrNotReplicated, and
		// its retry must not read "kept" before the replicas have it.
		if werr := p.waitReplicas(ctx, &Enqueued{TaskID: dup.Key, Queue: dup.Queue}); werr != nil {
			return nil, werr
		}
	}
	if err != nil || p.cfg.WaitReplicas == 0 {
		return e, err
	}
	if err := p.waitReplicas(ctx, e); err != nil {
		return nil, err
	}
	return e, nil
}

func (p *Producer) enqueue(ctx context.Context, msg Message, opts []Option) (*Enqueued, error) {
	task, o, err := p.build(msg, opts)
	if err != nil {
		return nil, err
	}
	switch {
	case o.ordered:
		return p.enqueueOrdered(ctx, task, o)
	case o.key != "":
		return p.enqueueKeyed(ctx, task, o)
	}
	info, err := p.client.EnqueueContext(ctx, task, o.asynq...)
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil, p.duplicate(o.key, o.queue)
	}
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	return &Enqueued{TaskID: info.ID, Queue: info.Queue}, nil
}

// build validates and encodes one message.
func (p *Producer) build(msg Message, opts []Option) (*asynq.Task, *enqueueOptions, error) {
	o := &enqueueOptions{queue: p.cfg.Queue}
	for _, opt := range opts {
		opt(o)
	}
	if msg.File != nil { // a single local file set the webex way: carry it inline
		msg.Uploads = append([]webex.File{*msg.File}, msg.Uploads...)
		msg.File = nil
	}
	var errs []error
	if err := msg.Validate(p.cfg.MaxInlineBytes); err != nil {
		errs = append(errs, err)
	}
	if err := validateKey(o.key, p.cfg.RelayKeys); err != nil {
		errs = append(errs, err)
	}
	if err := validateOrdering(o); err != nil {
		errs = append(errs, err)
	}
	o.orderingKey = orderingKey(&msg, o)
	now := p.cfg.Now()
	if !o.enqueuedAt.IsZero() {
		now = o.enqueuedAt
	}
	pl := Payload{Version: PayloadVersion, Message: msg, Bot: o.bot, Key: o.key, Source: cmp.Or(o.source, p.cfg.Source), EnqueuedAt: now.UTC(), OrderingKey: o.orderingKey, ParentTask: o.parentTask}
	if o.expiresIn > 0 {
		o.expiresAt = now.Add(o.expiresIn)
	}
	if !o.expiresAt.IsZero() {
		if !o.expiresAt.After(now) {
			errs = append(errs, &webex.ValidationError{Field: "expires_at", Problem: fmt.Sprintf("%s is not in the future", o.expiresAt.Format(time.RFC3339))})
		}
		t := o.expiresAt.UTC()
		pl.ExpiresAt = &t
	}
	redeliveries := p.cfg.MaxRedeliveries
	if o.maxRedeliveries != nil {
		redeliveries = *o.maxRedeliveries
		if redeliveries < 0 {
			errs = append(errs, &webex.ValidationError{Field: "max_redeliveries", Problem: fmt.Sprintf("is %d, must be 0 or more", redeliveries)})
		}
	}
	if err := validateQueue(o.queue); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	aopts := []asynq.Option{asynq.Queue(o.queue), asynq.MaxRetry(redeliveries + retryHeadroom)}
	retention := p.cfg.Retention
	if o.key != "" {
		aopts = append(aopts, asynq.TaskID(o.key))
		retention = p.cfg.KeyedRetention
	}
	if o.retention != nil {
		retention = *o.retention
	}
	if retention > 0 {
		aopts = append(aopts, asynq.Retention(retention))
	}
	switch {
	case !o.processAt.IsZero():
		aopts = append(aopts, asynq.ProcessAt(o.processAt))
	case o.processIn > 0:
		aopts = append(aopts, asynq.ProcessIn(o.processIn))
	}
	o.asynq, o.maxRetry, o.keep = aopts, redeliveries+retryHeadroom, int64(max(retention, 0).Seconds())
	b, err := json.Marshal(pl)
	if err != nil {
		return nil, nil, fmt.Errorf("encode payload: %w", err)
	}
	return asynq.NewTask(TypeSend, b), o, nil
}

// MaxQueueBytes is the longest queue name a producer may use. Queue names
// become Redis keys and metric labels: they are short and plain.
const MaxQueueBytes = 64

// validateQueue refuses an empty, long or unusual queue name: 1 to
// MaxQueueBytes characters of A-Z a-z 0-9 . _ : -.
func validateQueue(q string) error {
	switch {
	case q == "":
		return &webex.ValidationError{Field: "queue", Problem: "must not be empty"}
	case len(q) > MaxQueueBytes:
		return &webex.ValidationError{Field: "queue", Problem: fmt.Sprintf("is %d bytes, the limit is %d", len(q), MaxQueueBytes)}
	}
	if i := strings.IndexFunc(q, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-", r))
	}); i >= 0 {
		r, _ := utf8.DecodeRuneInString(q[i:])
		return &webex.ValidationError{Field: "queue", Problem: fmt.Sprintf("contains %q: use only A-Z a-z 0-9 . _ : -", r)}
	}
	return nil
}

// retryHeadroom is how many more redeliveries asynq allows than courier: asynq
// archives whenever Retried >= MaxRetry, even for a rate-limited attempt that
// does not count, so courier enforces its own limit one below asynq's.
const retryHeadroom = 1

// duplicate describes the task a conflicting key names.
func (p *Producer) duplicate(key, queue string) error {
	dup := &DuplicateError{Key: key, Queue: queue, State: StateGone}
	if info, err := p.inspector.GetTaskInfo(queue, key); err == nil {
		dup.State = TaskState(info.State.String())
	}
	return dup
}

// Request is one message of a bulk enqueue.
type Request struct {
	Message Message
	Options []Option
}

// Result is the outcome of one Request: Enqueued, or Err (a validation
// error, a *DuplicateError, or a Redis failure).
type Result struct {
	Enqueued *Enqueued
	Err      error
}

// ErrChainBroken matches an ordered request of EnqueueMany that was not
// attempted because an earlier one with the same ordering key failed (it
// would have been delivered out of order, or ahead of the gap).
var ErrChainBroken = errors.New("not attempted: an earlier message with the same ordering key failed")

// EnqueueMany enqueues reqs concurrently (at most 16 at a time) and returns
// one Result per request, in order. Each message succeeds or fails on its
// own: an invalid one does not stop the others. Ordered messages with the
// same ordering key are enqueued one after the other, in the order given;
// after one fails, the rest of that key's messages are not attempted
// (ErrChainBroken, wrapping the failure).
func (p *Producer) EnqueueMany(ctx context.Context, reqs []Request) []Result {
	results := make([]Result, len(reqs))
	if len(reqs) == 1 { // no goroutine to hand it to (a line streamed alone, say)
		e, err := p.Enqueue(ctx, reqs[0].Message, reqs[0].Options...)
		results[0] = Result{Enqueued: e, Err: err}
		return results
	}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, chain := range p.chains(reqs) {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			var failed error
			for _, i := range chain {
				if failed != nil {
					results[i] = Result{Err: fmt.Errorf("%w: %w", ErrChainBroken, failed)}
					continue
				}
				e, err := p.Enqueue(ctx, reqs[i].Message, reqs[i].Options...)
				results[i] = Result{Enqueued: e, Err: err}
				if err != nil && len(chain) > 1 {
					failed = err
				}
			}
		}()
	}
	wg.Wait()
	return results
}
