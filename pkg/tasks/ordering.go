package tasks

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
)

// Ordered delivery.
//
// An ordered message belongs to a sequence: the ordered messages of one
// queue with the same ordering key (its destination unless overridden).
// Only the head of a sequence is in asynq; the messages behind it wait in
// courier's keys, which carry the queue's hash tag so one script can touch
// them and asynq's keys together:
//
//	courier:{<queue>}:heads         hash: ordering key → the head's task id
//	courier:{<queue>}:seq:<key>     list: the task ids behind the head, in order
//	courier:{<queue>}:seqmsg:<key>  hash: task id → its encoded asynq message
//	courier:{<queue>}:waiting       hash: task id → ordering key, of every message behind a head
//	courier:{<queue>}:dead          hash: task id → mark, of heads dead-lettered and passed over
//
// A sequence that drains leaves nothing behind (Redis deletes empty lists
// and hashes, and the head's field goes), so an idle key costs no memory.
// A dead mark lives until asynq has archived its task (the Reconciler
// clears it then) or the task's id is enqueued again.
//
// Enqueueing makes the message the head (into asynq's pending list) when
// its sequence is empty, else appends it, in one script. When the head is
// delivered, the handler releases the next one into asynq's pending list,
// in one script; when it is dead-lettered, the error handler does (with a
// log line and a metric, and the dead letter names what was behind it). A
// Reconciler repairs sequences whose head left without courier knowing.
//
// An ordered task that reaches a worker without being its sequence's head
// (a dead letter re-run from asynqmon, a task run early by an operator)
// joins the end of its sequence and is handed back until its turn comes.
//
// A dead-lettered head releases its successor before asynq archives it
// (asynq calls the error handler first), and asynq skips the archive when
// the task's lease is no longer valid or the task moved meanwhile: the
// task then comes back although its sequence moved on past it. The release
// marks it dead with the error text asynq archives it with; a delivery
// that meets the mark is dead-lettered again (PassedOver) unless its task
// carries that text, which only asynq's archive writes: then it was
// archived and re-run by an operator, and it joins the end of its sequence.

// Ordered marks the message ordered: it is delivered after every ordered
// message enqueued before it with the same ordering key (by default its
// destination: the room, person id or email) in the same queue.
func Ordered() Option { return func(o *enqueueOptions) { o.ordered = true } }

// OrderingKey marks the message ordered under key k instead of its
// destination (an empty k keeps the destination).
func OrderingKey(k string) Option {
	return func(o *enqueueOptions) { o.ordered, o.orderingKey = true, k }
}

// BehindHead is the outcome of an ordered delivery that is not its
// sequence's head: it waits its turn (handed back, not counted).
const BehindHead Outcome = "behind_head"

// PassedOver is the outcome of an ordered message that was dead-lettered,
// whose sequence moved on past it, and that came back without being
// archived (asynq skipped the archive): it is dead-lettered again rather
// than delivered out of order. Its dead letter was recorded the first time.
const PassedOver Outcome = "passed_over"

// orderingKey is the key of an ordered message: the one given, else its
// destination. "" for an unordered message.
func orderingKey(msg *Message, o *enqueueOptions) string {
	switch {
	case !o.ordered:
		return ""
	case o.orderingKey != "":
		return o.orderingKey
	}
	return Destination(msg)
}

// Destination is the default ordering key of msg: its room id, person id,
// or email in lower case. The bot is not part of it: messages of several
// bots to one room are ordered together, as the room shows them; a producer
// that wants a sequence per bot (or per caller) says so with OrderingKey.
func Destination(msg *Message) string {
	switch {
	case msg.RoomID != "":
		return msg.RoomID
	case msg.ToPersonID != "":
		return msg.ToPersonID
	}
	return strings.ToLower(msg.ToPersonEmail)
}

// validateOrdering checks an ordered message's options.
func validateOrdering(o *enqueueOptions) error {
	if !o.ordered {
		return nil
	}
	var errs []error
	if !o.processAt.IsZero() || o.processIn > 0 {
		// The messages behind it would wait for it, which is rarely meant.
		errs = append(errs, &webex.ValidationError{Field: "ordered", Problem: "cannot be combined with a later delivery (process-at/process-in)"})
	}
	if len(o.orderingKey) > MaxKeyBytes {
		errs = append(errs, &webex.ValidationError{Field: "ordering_key", Problem: fmt.Sprintf("is %d bytes, the limit is %d", len(o.orderingKey), MaxKeyBytes)})
	}
	for _, r := range o.orderingKey {
		if !unicode.IsPrint(r) {
			errs = append(errs, &webex.ValidationError{Field: "ordering_key", Problem: fmt.Sprintf("contains %q: use printable characters", r)})
			break
		}
	}
	return errors.Join(errs...)
}

// sequence names the keys of one sequence.
type sequence struct{ queue, key string }

func (s sequence) heads() string   { return headsKey(s.queue) }
func (s sequence) list() string    { return "courier:{" + s.queue + "}:seq:" + s.key }
func (s sequence) msgs() string    { return "courier:{" + s.queue + "}:seqmsg:" + s.key }
func (s sequence) prefix() string  { return "asynq:{" + s.queue + "}:" }
func (s sequence) waiting() string { return waitingKey(s.queue) }
func (s sequence) dead() string    { return deadKey(s.queue) }

// deadKey is the hash of the dead marks of a queue's passed-over heads.
func deadKey(queue string) string { return "courier:{" + queue + "}:dead" }

// deadMark is the mark of a head dead-lettered with asynq error text msg.
func deadMark(msg string) string {
	h := fnv.New64a()
	h.Write([]byte(msg))
	return strconv.FormatUint(h.Sum64(), 16)
}

// waitingKey is the hash naming the sequence of each message behind a head.
func waitingKey(queue string) string { return "courier:{" + queue + "}:waiting" }

// headsKey is the hash of a queue's sequence heads.
func headsKey(queue string) string { return "courier:{" + queue + "}:heads" }

// enqueueOrderedScript makes the message its sequence's head (asynq's own
// enqueue: the task hash and the pending list) or appends it behind.
// Returns 0 for a task id already taken, 3 for one already waiting, 1 for a
// new head, 2 for a message behind the head. A new message drops the dead
// mark an earlier task with its id left.
var enqueueOrderedScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 3 end
redis.call('HDEL', KEYS[7], ARGV[2])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[4], 'msg', ARGV[3], 'state', 'pending', 'pending_since', ARGV[4])
  redis.call('LPUSH', KEYS[5], ARGV[2])
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[2], ARGV[1])
return 2
`)

// enqueueOrdered stores an ordered task: as its sequence's head, or behind.
func (p *Producer) enqueueOrdered(ctx context.Context, task *asynq.Task, o *enqueueOptions) (*Enqueued, error) {
	id := o.key
	if id == "" {
		id = uuid.NewString()
	}
	msg := encodeTaskMessage(taskMessage{typ: task.Type(), payload: task.Payload(), id: id, queue: o.queue,
		retry: o.maxRetry, timeout: asynqDefaultTimeout, retention: o.keep})
	s := sequence{o.queue, o.orderingKey}
	if err := p.knownQueue(ctx, o.queue); err != nil {
		return nil, err
	}
	n, err := enqueueOrderedScript.Run(ctx, p.rdb, []string{s.heads(), s.list(), s.msgs(), taskKey(o.queue, id), s.prefix() + "pending", s.waiting(), s.dead()},
		o.orderingKey, id, msg, p.cfg.Now().UnixNano()).Int()
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	switch n {
	case 0:
		return nil, p.duplicate(o.key, o.queue)
	case 3:
		return nil, &DuplicateError{Key: o.key, Queue: o.queue, State: StateWaiting}
	}
	return &Enqueued{TaskID: id, Queue: o.queue}, nil
}

// knownQueue adds queue to asynq's set of queues, as asynq's own enqueue
// keeps it, once per producer.
func (p *Producer) knownQueue(ctx context.Context, queue string) error {
	if _, known := p.queues.Load(queue); known {
		return nil
	}
	if err := p.rdb.SAdd(ctx, "asynq:queues", queue).Err(); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	p.queues.Store(queue, true)
	return nil
}

// enqueueKeyedScript is asynq's own enqueue (or schedule, when ARGV[4] is
// a time) of an unordered keyed task, which also refuses the key of an
// ordered message waiting in a sequence: one key, ordered or not. Returns
// 0 for a task id already taken, 3 for one waiting, 1 when enqueued.
var enqueueKeyedScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 3 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[4] == '0' then
  redis.call('HSET', KEYS[1], 'msg', ARGV[2], 'state', 'pending', 'pending_since', ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'msg', ARGV[2], 'state', 'scheduled')
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
end
return 1
`)

// enqueueKeyed stores an unordered task with an idempotency key. Only keyed
// messages pay for the look into the waiting hash.
func (p *Producer) enqueueKeyed(ctx context.Context, task *asynq.Task, o *enqueueOptions) (*Enqueued, error) {
	msg := encodeTaskMessage(taskMessage{typ: task.Type(), payload: task.Payload(), id: o.key, queue: o.queue,
		retry: o.maxRetry, timeout: asynqDefaultTimeout, retention: o.keep})
	now := p.cfg.Now()
	at := o.processAt
	if at.IsZero() && o.processIn > 0 {
		at = now.Add(o.processIn)
	}
	var score int64 // asynq enqueues at once a task due now or earlier
	if at.After(now) {
		score = at.Unix()
	}
	if err := p.knownQueue(ctx, o.queue); err != nil {
		return nil, err
	}
	prefix := sequence{queue: o.queue}.prefix()
	n, err := enqueueKeyedScript.Run(ctx, p.rdb, []string{taskKey(o.queue, o.key), waitingKey(o.queue), prefix + "pending", prefix + "scheduled"},
		o.key, msg, now.UnixNano(), score).Int()
	switch {
	case err != nil:
		return nil, fmt.Errorf("enqueue: %w", err)
	case n == 0:
		return nil, p.duplicate(o.key, o.queue)
	case n == 3:
		return nil, &DuplicateError{Key: o.key, Queue: o.queue, State: "waiting"}
	}
	return &Enqueued{TaskID: o.key, Queue: o.queue}, nil
}

// chains groups the indices of reqs that must be enqueued one after the
// other: the ordered requests with the same ordering key, in order. Every
// other request is a chain of its own.
func (p *Producer) chains(reqs []Request) [][]int {
	var out [][]int
	byKey := map[string]int{}
	for i, r := range reqs {
		o := &enqueueOptions{queue: p.cfg.Queue}
		for _, opt := range r.Options {
			opt(o)
		}
		k := orderingKey(&r.Message, o)
		if k == "" {
			out = append(out, []int{i})
			continue
		}
		k = o.queue + "\x00" + k
		if c, ok := byKey[k]; ok {
			out[c] = append(out[c], i)
			continue
		}
		byKey[k] = len(out)
		out = append(out, []int{i})
	}
	return out
}

// claimScript lets an ordered delivery go ahead when its task is the head
// (or its sequence has none: it becomes the head). Otherwise the task joins
// the end of the sequence, once, as a task already in asynq (no message in
// the seqmsg hash), and must wait. Returns {1} to go ahead, {0} to wait, or
// {2, mark, asynq's message} for a task marked dead, unless ARGV[3] is '1'
// (the caller found it archived since): then the mark goes.
var claimScript = redis.NewScript(`
local mark = redis.call('HGET', KEYS[3], ARGV[2])
if mark then
  if ARGV[3] ~= '1' then return {2, mark, redis.call('HGET', KEYS[4], 'msg') or ''} end
  redis.call('HDEL', KEYS[3], ARGV[2])
end
local head = redis.call('HGET', KEYS[1], ARGV[1])
if not head then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return {1}
end
if head == ARGV[2] then return {1} end
if not redis.call('LPOS', KEYS[2], ARGV[2]) then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return {0}
`)

// pullLua defines pull(prefix, id, state, now): it moves task id, waiting
// in asynq's retry or scheduled set (state), to the pending list, as
// asynq's forwarder would when it is due. False if it is not in the set.
const pullLua = `
local function pull(prefix, id, state, now)
  if redis.call('ZREM', prefix .. state, id) == 0 then return false end
  redis.call('LPUSH', prefix .. 'pending', id)
  redis.call('HSET', prefix .. 't:' .. id, 'state', 'pending', 'pending_since', now)
  return true
end
`

// releaseLua defines release(heads, list, msgs, waiting, key, head, prefix,
// now, behind): if head is still the head of the sequence, the next message
// becomes the head and goes into asynq's pending list. It returns
// {released, the next head (empty when none), messages behind, the ids of
// waiting messages dropped, 1 when the next head is an active task (0
// otherwise), the first 'behind' ids}.
// A waiting message whose id an asynq task took meanwhile is dropped (the
// task stands for it); its id is returned so that the drop is logged.
// Waiting entries whose task is already in asynq (re-entered dead letters)
// become the head where they are, pulled forward when they are waiting for
// a retry; ones that were deleted or finished meanwhile are passed over.
const releaseLua = pullLua + `
local function release(heads, list, msgs, waiting, key, head, prefix, now, behind)
  if redis.call('HGET', heads, key) ~= head then return {0, '', 0} end
  local out = {1, '', redis.call('LLEN', list), {}, 0}
  if behind > 0 then
    for _, id in ipairs(redis.call('LRANGE', list, 0, behind - 1)) do table.insert(out, id) end
  end
  while true do
    local id = redis.call('LPOP', list)
    if not id then
      redis.call('HDEL', heads, key)
      return out
    end
    local tk = prefix .. 't:' .. id
    local msg = redis.call('HGET', msgs, id)
    if msg then
      redis.call('HDEL', msgs, id)
      redis.call('HDEL', waiting, id)
      if redis.call('EXISTS', tk) == 0 then
        redis.call('HSET', tk, 'msg', msg, 'state', 'pending', 'pending_since', now)
        redis.call('LPUSH', prefix .. 'pending', id)
        redis.call('HSET', heads, key, id)
        out[2] = id
        return out
      end
      table.insert(out[4], id)
    end
    local state = redis.call('HGET', tk, 'state')
    if state == 'pending' or state == 'active' or state == 'retry' or state == 'scheduled' then
      if state == 'active' then out[5] = 1 end
      if state == 'retry' or state == 'scheduled' then pull(prefix, id, state, now) end
      redis.call('HSET', heads, key, id)
      out[2] = id
      return out
    end
  end
end
`

var releaseScript = redis.NewScript(releaseLua + `
return release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
`)

// deadLetterScript is releaseScript for a dead-lettered head, which it
// also marks dead (KEYS[5], mark ARGV[6]).
var deadLetterScript = redis.NewScript(releaseLua + `
redis.call('HSET', KEYS[5], ARGV[2], ARGV[6])
return release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
`)

// reconcileScript releases a sequence whose head left asynq's live states
// (completed, dead-lettered or deleted) without a release. It returns the
// head, its state (empty when it vanished) and release's answer, or
// {0, empty, 0} when the head is alive.
var reconcileScript = redis.NewScript(releaseLua + `
local head = redis.call('HGET', KEYS[1], ARGV[1])
if not head then return {0, '', 0} end
local state = redis.call('HGET', ARGV[2] .. 't:' .. head, 'state') or ''
if state == 'pending' or state == 'active' or state == 'retry' or state == 'scheduled' then return {0, '', 0} end
local out = release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], head, ARGV[2], ARGV[3], 0)
return {head, state, out[1], out[2], out[3], out[4], out[5]}
`)

// promoteScript watches a head that was an active task when released
// (handed back, or about to be delivered): {1} while it is active; once
// its hand-back landed in the retry set, {2, asynq's message}, or with
// ARGV[5] = '1' it pulls it forward; {0} when there is nothing to watch.
var promoteScript = redis.NewScript(pullLua + `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return {0} end
local tk = ARGV[3] .. 't:' .. ARGV[2]
local state = redis.call('HGET', tk, 'state')
if state == 'active' then return {1} end
if state ~= 'retry' then return {0} end
if ARGV[5] ~= '1' then return {2, redis.call('HGET', tk, 'msg') or ''} end
pull(ARGV[3], ARGV[2], 'retry', ARGV[4])
return {0}
`)

// maxBehind bounds the ids a dead letter records of the messages behind it.
const maxBehind = 100

// released is what a release did.
type released struct {
	done    bool     // the task was the head and its successor, if any, released
	next    string   // the new head's task id, "" when the sequence drained
	waiting int      // messages that were behind the head
	dropped []string // waiting messages dropped: an asynq task had taken their id
	active  bool     // the new head is a task a worker holds (handing it back?)
	behind  []string // the first of them (up to maxBehind), when asked
}

func parseReleased(v []any) released {
	var r released
	if len(v) < 3 {
		return r
	}
	n, _ := v[0].(int64)
	r.done = n == 1
	r.next, _ = v[1].(string)
	w, _ := v[2].(int64)
	r.waiting = int(w)
	if len(v) < 5 {
		return r
	}
	dropped, _ := v[3].([]any)
	for _, id := range dropped {
		if s, ok := id.(string); ok {
			r.dropped = append(r.dropped, s)
		}
	}
	active, _ := v[4].(int64)
	r.active = active == 1
	for _, id := range v[5:] {
		if s, ok := id.(string); ok {
			r.behind = append(r.behind, s)
		}
	}
	return r
}

// OrderingObserver is told what ordered delivery does; a WorkerConfig
// Observer that also implements it receives these calls.
type OrderingObserver interface {
	// SuccessorReleased is called once per message released because the
	// head before it left without being delivered; reason is "dead_letter"
	// or, when the Reconciler found it, "reconciled".
	SuccessorReleased(queue, reason string)
	// ReplyUnthreaded is called when a reply (ReplyTo) is sent outside its
	// parent's thread because the parent has no Webex id to give.
	ReplyUnthreaded(queue string)
}

// ordering is the handler's side of ordered delivery.
type ordering struct {
	rdb redis.UniversalClient
	log *slog.Logger
	obs Observer
	now func() time.Time
	// wait is how long a task behind its head is handed back for; the
	// release pulls it forward when its turn comes.
	wait time.Duration
	// stop ends the watches of released heads (the worker's stop); with it
	// they run in the background (bg), without it inline. Once closed, no
	// more are started (close).
	stop   context.Context
	bg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	// afterClaim, when set (tests), runs after each claim with its verdict.
	afterClaim func(id string, head bool)
}

// claim lets an ordered delivery go ahead (nil), hands it back, or
// dead-letters a head its sequence passed over.
func (o *ordering) claim(ctx context.Context, queue, id, key string) *DeliveryError {
	s := sequence{queue, key}
	keys := []string{s.heads(), s.list(), s.dead(), taskKey(queue, id)}
	v, err := claimScript.Run(ctx, o.rdb, keys, key, id, 0).Slice()
	if err == nil && len(v) == 3 && rerun(v) { // archived since it was marked, and re-run by an operator
		v, err = claimScript.Run(ctx, o.rdb, keys, key, id, 1).Slice()
	}
	if err == nil && len(v) == 0 {
		err = fmt.Errorf("unexpected answer %v", v)
	}
	if err != nil { // Redis's fault, not the message's: not counted
		return &DeliveryError{Outcome: RedisUnavailable, Err: fmt.Errorf("claim the head of the sequence: %w", err), Delay: retrypolicy.QueueDelay(0)}
	}
	n, _ := v[0].(int64)
	if o.afterClaim != nil {
		o.afterClaim(id, n == 1)
	}
	switch n {
	case 1:
		return nil
	case 0:
		return &DeliveryError{Outcome: BehindHead, Err: errBehindHead, Delay: retrypolicy.QueueDelay(o.wait)}
	}
	return &DeliveryError{Outcome: PassedOver, Err: errors.New("dead-lettered earlier and its sequence moved on past it; back without an operator's re-run, so not delivered out of order")}
}

// errBehindHead is why an ordered delivery behind its head is handed back.
var errBehindHead = errors.New("waiting for the messages ahead of it in its sequence")

// rerun reports whether claim's answer for a task marked dead shows it
// archived since: asynq's message carries the error text of the mark,
// which only asynq's archive writes into it.
func rerun(v []any) bool {
	mark, _ := v[1].(string)
	msg, _ := v[2].(string)
	text, err := errorMsgOf([]byte(msg))
	return err == nil && deadMark(text) == mark
}

// release hands the sequence on after its head id was delivered.
func (o *ordering) release(ctx context.Context, queue, id, key string) error {
	_, err := o.run(ctx, sequence{queue, key}, id, 0)
	return err
}

func (o *ordering) run(ctx context.Context, s sequence, head string, behind int) (released, error) {
	return o.runScript(ctx, releaseScript, s, head, behind)
}

// runScript runs releaseScript, or deadLetterScript with its mark.
func (o *ordering) runScript(ctx context.Context, script *redis.Script, s sequence, head string, behind int, mark ...any) (released, error) {
	args := append([]any{s.key, head, s.prefix(), o.now().UnixNano(), behind}, mark...)
	v, err := script.Run(ctx, o.rdb, []string{s.heads(), s.list(), s.msgs(), s.waiting(), s.dead()}, args...).Slice()
	if err != nil {
		return released{}, fmt.Errorf("release the next message: %w", err)
	}
	r := parseReleased(v)
	o.logDropped(s.queue, head, r)
	if r.active {
		o.watch(ctx, s, r.next)
	}
	return r, nil
}

// watchBound bounds how long a released head that was an active task is
// watched.
const watchBound = 10 * time.Second

// watch follows a new head that was an active task when released: most
// often a task behind the head that a worker is handing back for the wait
// (its claim came just before the release), which would sleep the whole
// wait. Once its hand-back lands, watch pulls it forward. A task that was
// about to be delivered instead is left alone.
func (o *ordering) watch(ctx context.Context, s sequence, id string) {
	if o.stop == nil {
		o.promote(ctx, s, id)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed { // the worker stopped: the hand-back wait runs its course
		return
	}
	o.bg.Add(1)
	go func() {
		defer o.bg.Done()
		o.promote(o.stop, s, id)
	}()
}

// close waits for the watches, once stop has ended them, and starts no more
// (a delivery asynq abandoned at shutdown may still release).
func (o *ordering) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.bg.Wait()
}

// promote polls the new head id until its hand-back lands (then pulls it
// forward), it leaves the active state otherwise, ctx ends or watchBound
// passes (then its hand-back wait runs its course: nothing is lost).
func (o *ordering) promote(ctx context.Context, s sequence, id string) {
	ctx, cancel := context.WithTimeout(ctx, watchBound)
	defer cancel()
	handedBack := string(BehindHead) + ": " + errBehindHead.Error() // asynq's error message after the hand-back
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		v, err := promoteScript.Run(ctx, o.rdb, []string{s.heads()}, s.key, id, s.prefix(), o.now().UnixNano(), 0).Slice()
		if err == nil && len(v) > 0 && v[0] != int64(1) {
			if len(v) == 2 { // in the retry set: pulled forward only if it was handed back for the wait
				msg, _ := v[1].(string)
				if text, err := errorMsgOf([]byte(msg)); err == nil && text == handedBack {
					err = promoteScript.Run(ctx, o.rdb, []string{s.heads()}, s.key, id, s.prefix(), o.now().UnixNano(), 1).Err()
					o.log.Debug("released head pulled forward after its hand-back", "queue", s.queue, "task_id", id, "error", errText(err))
				}
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay): // collected once fired or unreachable (Go ≥ 1.23)
		}
	}
}

// logDropped logs each waiting message a release dropped because an asynq
// task already had its id: never silently.
func (o *ordering) logDropped(queue, head string, r released) {
	for _, id := range r.dropped {
		o.log.Error("waiting message dropped: a task with its id is already in asynq and takes its place in the sequence",
			"queue", queue, "task_id", id, "head_task_id", head, "next_task_id", r.next)
	}
}

// releaseDeadLetter hands the sequence on after its head was dead-lettered
// with err, loudly, marks it dead, and returns the ids of the messages that
// were behind it.
func (o *ordering) releaseDeadLetter(ctx context.Context, t *asynq.Task, queue, id string, err error) []string {
	if o == nil {
		return nil
	}
	p, perr := DecodePayload(t.Payload())
	if perr != nil || p.OrderingKey == "" {
		return nil // unordered, or unreadable: the Reconciler finds its sequence
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// asynq archives the task with err's text as its error message.
	r, err := o.runScript(ctx, deadLetterScript, sequence{queue, p.OrderingKey}, id, maxBehind, deadMark(err.Error()))
	switch {
	case err != nil:
		o.log.Error("dead letter did not release the next message of its sequence; the reconciler will", "task_id", id, "queue", queue, "error", err.Error())
	case r.done && r.next != "":
		o.successorReleased(queue, "dead_letter", id, r)
	}
	return r.behind
}

// successorReleased logs and counts a successor released past a head that
// was not delivered.
func (o *ordering) successorReleased(queue, reason, head string, r released, attrs ...any) {
	attrs = append([]any{"queue", queue, "reason", reason, "task_id", head, "next_task_id", r.next, "waiting", r.waiting}, attrs...)
	o.log.Warn("sequence moves on past a message that was not delivered", attrs...)
	if obs, ok := o.obs.(OrderingObserver); ok {
		obs.SuccessorReleased(queue, reason)
	}
}

// ErrNotWaiting matches a task that is not waiting behind the head of a
// sequence.
var ErrNotWaiting = errors.New("not waiting in a sequence")

// Waiting returns the payload of an ordered message waiting behind the head
// of its sequence (not yet an asynq task), or an error matching
// ErrNotWaiting.
func (p *Producer) Waiting(ctx context.Context, queue, taskID string) (*Payload, error) {
	key, err := p.rdb.HGet(ctx, waitingKey(queue), taskID).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("task %s: %w", taskID, ErrNotWaiting)
	}
	if err != nil {
		return nil, fmt.Errorf("read waiting task %s: %w", taskID, err)
	}
	msg, err := p.rdb.HGet(ctx, sequence{queue, key}.msgs(), taskID).Bytes()
	if errors.Is(err, redis.Nil) { // released meanwhile
		return nil, fmt.Errorf("task %s: %w", taskID, ErrNotWaiting)
	}
	if err != nil {
		return nil, fmt.Errorf("read waiting task %s: %w", taskID, err)
	}
	b, err := payloadOf(msg)
	if err != nil {
		return nil, fmt.Errorf("read waiting task %s: %w", taskID, err)
	}
	return DecodePayload(b)
}
