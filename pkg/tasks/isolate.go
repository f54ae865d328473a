package tasks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// Isolation gives a poison verdict one meaning: this message kills the
// process that delivers it.
//
// A worker that dies (SIGKILL, out of memory, a fatal runtime error) takes
// every delivery in flight with it, so a death says nothing about any one
// message: under a storm of unrelated crashes a healthy message can be in
// flight at three of them. So a death only makes a task a suspect. After
// suspectAfter deaths in a row, the worker delivers the task in a process of
// its own (WorkerConfig.Isolate starts it, Worker.ServeIsolated runs in it)
// and waits for it. Nothing else runs in that process, so when it dies while
// the worker lives, the death is the message's: the worker counts it
// (fieldKilled), and PoisonLimit such deaths make the task poison, after at
// most suspectAfter+PoisonLimit deaths in all. A delivery that returns (any
// outcome) clears both counts.
//
// When the worker itself dies, the isolated process sees its standard input
// close and stops like a stopping worker; nobody counts that death against
// the message. The task stays a suspect and is isolated again.
//
// The isolated delivery runs under the worker's claim: the epoch the worker
// read before starting it, and the worker's holder name (fast recovery
// watches the worker's liveness, which the worker keeps). The isolated
// process checks that epoch itself before each post and write, whatever
// fence its configuration has, so that a worker found dead (paused, say)
// while its isolated delivery runs gets nothing posted for a task another
// worker took over; the worker then finds the same and halts.

// suspectAfter is the number of deaths in a row after which a task is
// delivered in an isolated process.
const suspectAfter = 2

// isolatedRequest is what the worker writes, as one JSON line, to the
// isolated process's standard input (kept open until the delivery ends).
type isolatedRequest struct {
	Queue    string    `json:"queue"`
	ID       string    `json:"id"`
	Retried  int       `json:"retried"`
	MaxRetry int       `json:"max_retry"`
	Deadline time.Time `json:"deadline,omitzero"`
	Payload  []byte    `json:"payload"`
	// Run is the worker's claim on the task; nil when the worker could not
	// read it (the isolated delivery's own start then meets the cause).
	Run *isolatedRun `json:"run,omitempty"`
}

// isolatedRun is the claim an isolated delivery runs under: the worker's.
type isolatedRun struct {
	Epoch  int64  `json:"epoch"`
	Holder string `json:"holder,omitempty"`
}

// holder is the name a delivery records as its holder: the worker's.
func (h *Handler) holder() string {
	switch {
	case h.run != nil:
		return h.run.Holder
	case h.cfg.Fence != nil:
		return h.cfg.Fence.Holder()
	}
	return ""
}

// claimOf is the claim a delivery that began under epoch runs under: in an
// isolated process, the worker's.
func (h *Handler) claimOf(queue, id string, epoch int64) Claim {
	if h.run != nil {
		epoch = h.run.Epoch
	}
	return Claim{Queue: queue, ID: id, Epoch: epoch}
}

// isolatedFence is the isolated process's fence: the task's epoch must
// still be the claim's. Unlike a Recovery it halts nothing: the delivery returns
// Interrupted and the worker, checking its own fence, halts.
type isolatedFence struct{ rdb redis.UniversalClient }

var _ epochFence = isolatedFence{}

func (isolatedFence) Hold(Claim) func()   { return func() {} }
func (isolatedFence) Holder() string      { return "" }
func (isolatedFence) live(time.Time) bool { return false } // the worker's liveness: unknown here

func (f isolatedFence) Check(ctx context.Context, c Claim) error {
	_, err := checkEpoch(ctx, f.rdb, c)
	return err
}

// isolatedLine is one JSON line the isolated process writes: first
// Started (the delivery is about to begin), then Alive every isolatedBeat
// while it runs, then Result.
type isolatedLine struct {
	Started bool            `json:"started,omitempty"`
	Alive   bool            `json:"alive,omitempty"`
	Result  *isolatedResult `json:"result,omitempty"`
}

// An isolated process that began its delivery writes a line every
// isolatedBeat. One silent for isolatedSilenceDefault, and two beats more
// (a worker that was paused itself reads the lines written meanwhile), is
// frozen (SIGSTOP, a frozen cgroup): a running Go process answers even while
// its delivery is stuck or spinning. The worker kills it and hands the task back, not
// counted, rather than hold the task, and its isolation slot, until the
// task's deadline.
const (
	isolatedBeat           = time.Second
	isolatedSilenceDefault = 15 * time.Second
)

// isolatedResult carries the delivery's outcome back to the worker.
type isolatedResult struct {
	Outcome  Outcome       `json:"outcome"`
	Bot      string        `json:"bot"`
	Err      string        `json:"error,omitempty"`
	Delay    time.Duration `json:"delay,omitempty"`
	Attempts int           `json:"attempts,omitempty"`
	Part     int           `json:"part,omitempty"`
	Parts    int           `json:"parts,omitempty"`
	Sent     []string      `json:"sent,omitempty"`
}

func newIsolatedResult(err error, bot string) *isolatedResult {
	var de *DeliveryError
	switch {
	case err == nil:
		return &isolatedResult{Outcome: Delivered, Bot: bot}
	case errors.As(err, &de):
		r := &isolatedResult{Outcome: de.Outcome, Bot: de.Bot, Delay: de.Delay, Attempts: de.Attempts, Part: de.Part, Parts: de.Parts, Sent: de.Sent}
		if de.Err != nil {
			r.Err = de.Err.Error()
		}
		return r
	default:
		return &isolatedResult{Outcome: Transient, Bot: bot, Err: err.Error(), Delay: retrypolicy.QueueDelay(0)}
	}
}

// deliveryError is the result as the handler's return value.
func (r *isolatedResult) deliveryError() error {
	if r.Outcome == Delivered || r.Outcome == DeliveredUnconfirmed || r.Outcome == Deduplicated {
		return nil
	}
	de := &DeliveryError{Outcome: r.Outcome, Bot: r.Bot, Delay: r.Delay, Attempts: r.Attempts, Part: r.Part, Parts: r.Parts, Sent: r.Sent}
	if r.Err != "" {
		de.Err = errors.New(r.Err)
	}
	return de
}

// taskMeta is what asynq tells a handler about the task it runs.
type taskMeta struct {
	id, queue         string
	retried, maxRetry int
	// entered is when the handler was entered, after asynq's fetch; zero:
	// unknown (an isolated process), the begin then does not look for a
	// takeover since.
	entered time.Time
}

// isolating reports whether suspects are delivered in an isolated process.
func (h *Handler) isolating() bool { return h.cfg.Isolate != nil && !h.isolated }

// poisoned is the poison verdict on a delivery's start, nil if none. With
// isolation, only deaths of isolated deliveries count; without it (a
// Handler under an asynq.Server of one's own), every death does.
func (h *Handler) poisoned(st begun, bot string, sent []string) *DeliveryError {
	limit := h.cfg.PoisonLimit
	switch {
	case h.cfg.Isolate == nil && !h.isolated && st.died >= limit:
		return &DeliveryError{Outcome: Poison, Bot: bot, Sent: sent, Err: fmt.Errorf("%d deliveries died with their worker (limit %d)", st.died, limit)}
	case (h.cfg.Isolate != nil || h.isolated) && st.killed >= limit:
		return &DeliveryError{Outcome: Poison, Bot: bot, Sent: sent,
			Err: fmt.Errorf("%d isolated deliveries died with their process (limit %d), %d deaths in all", st.killed, limit, st.died)}
	}
	return nil
}

// isolate delivers a suspect in a process of its own, under the worker's
// claim (nil when it could not be read), and waits for it.
func (h *Handler) isolate(ctx context.Context, m taskMeta, payload []byte, died int, claim *Claim) error {
	bot := ""
	if p, err := DecodePayload(payload); err == nil {
		bot = p.Bot
	}
	handBack := func(err error) error {
		return &DeliveryError{Outcome: Interrupted, Bot: bot, Err: err, Delay: retrypolicy.QueueDelay(0)}
	}
	// One process per slot. A flood of suspects (after a crash storm every
	// task in flight is one) waits its turn in the queue, not in this
	// worker's delivery slots, which healthy messages need.
	select {
	case h.isolateSlots <- struct{}{}:
		defer func() { <-h.isolateSlots }()
	default:
		return handBack(fmt.Errorf("isolated deliveries busy (%d at once)", cap(h.isolateSlots)))
	}
	// What a death is counted against: the deaths so far and the epoch.
	base, err := h.rec.rdb.HMGet(ctx, taskKey(m.queue, m.id), fieldKilled, fieldEpoch).Result()
	if err != nil { // Redis's fault: not counted, nothing started
		return &DeliveryError{Outcome: RedisUnavailable, Bot: bot, Err: fmt.Errorf("isolated delivery: %w", err), Delay: retrypolicy.QueueDelay(0)}
	}
	killed, epoch := hashInt(base[0]), hashInt(base[1])
	if claim != nil { // the claim it runs under
		epoch = claim.Epoch
	}
	h.cfg.Logger.Warn("suspected of killing its worker: delivering it in an isolated process", "task_id", m.id, "queue", m.queue,
		"bot", botLabel(bot), "died", died)
	cmd := h.cfg.Isolate(ctx)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return handBack(fmt.Errorf("isolated delivery: %w", err))
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return handBack(fmt.Errorf("isolated delivery: %w", err))
	}
	// A signal the process asks for when its parent dies (Linux's
	// Pdeathsig) follows the thread that started it: keep that thread until
	// the process ended.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		h.cfg.Logger.Error("isolated delivery could not start: the suspect is handed back", "task_id", m.id, "queue", m.queue, "error", err.Error())
		return handBack(fmt.Errorf("start isolated delivery: %w", err))
	}
	req := isolatedRequest{Queue: m.queue, ID: m.id, Retried: m.retried, MaxRetry: m.maxRetry, Payload: payload}
	if d, ok := ctx.Deadline(); ok {
		req.Deadline = d
	}
	if claim != nil {
		req.Run = &isolatedRun{Epoch: claim.Epoch, Holder: h.holder()}
		if h.cfg.Fence != nil { // the worker's scans fence it too
			defer h.cfg.Fence.Hold(*claim)()
		}
	}
	_ = json.NewEncoder(stdin).Encode(req) // a process that died at once is seen below
	// A stopping worker closes the isolated process's input: it stops too.
	stopChild := context.AfterFunc(h.stop, func() { _ = stdin.Close() })
	defer stopChild()
	started, frozen, res := h.watchIsolated(cmd, stdout)
	_ = stdin.Close()
	waitErr := cmd.Wait()
	switch {
	case res != nil:
		if err := res.deliveryError(); err != nil {
			return err
		}
		h.cfg.Observer.Outcome(res.Bot, res.Outcome)
		return nil
	case ctx.Err() != nil:
		return handBack(fmt.Errorf("isolated delivery ended with the task's lease: %w", context.Cause(ctx)))
	case frozen: // not the message's doing: a running process answers
		h.cfg.Logger.Error("isolated delivery stopped answering (stopped or frozen?): killed, the suspect is handed back (not counted)",
			"task_id", m.id, "queue", m.queue, "silent_for", h.cfg.isolatedSilence)
		return handBack(fmt.Errorf("isolated delivery silent for %s: killed (%v)", h.cfg.isolatedSilence, waitErr))
	case !started || h.stopping():
		return handBack(fmt.Errorf("isolated delivery ended before its delivery began or while stopping: %v", waitErr))
	case waitErr == nil: // it exited of its own accord, its outcome unreadable: no death
		return handBack(errors.New("isolated delivery exited without a readable outcome"))
	}
	n, err := h.countKilled(ctx, m, killed, epoch)
	switch {
	case err != nil: // not counted: the message is not blamed
		return &DeliveryError{Outcome: RedisUnavailable, Bot: bot, Err: err, Delay: retrypolicy.QueueDelay(0)}
	case n < 0: // the task is another worker's now: its death is not this message's to count
		return handBack(fmt.Errorf("isolated delivery died with its process (%v) after its task was taken over or removed: not counted", waitErr))
	}
	return &DeliveryError{Outcome: Killed, Bot: bot, Delay: retrypolicy.QueueDelay(0),
		Err: fmt.Errorf("isolated delivery died with its process (%v): %d of %d such deaths make it poison", waitErr, n, h.cfg.PoisonLimit)}
}

// hashInt reads an integer field of an HMGET answer; 0 when absent.
func hashInt(v any) int64 {
	s, _ := v.(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// watchIsolated reads the isolated process's lines until it closes its
// output; it kills the process when it falls silent after its delivery
// began (frozen).
func (h *Handler) watchIsolated(cmd *exec.Cmd, stdout io.Reader) (started, frozen bool, res *isolatedResult) {
	lines := make(chan isolatedLine)
	go func() {
		defer close(lines)
		readIsolated(stdout, func(l isolatedLine) { lines <- l })
	}()
	var silence *time.Timer
	var silent <-chan time.Time
	defer func() {
		if silence != nil {
			silence.Stop()
		}
	}()
	doubt := false // the bound passed once: look again shortly
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return started, frozen, res
			}
			started = started || l.Started
			if l.Result != nil {
				res = l.Result
			}
			doubt = false
			switch {
			case !started || frozen:
			case silence == nil:
				silence = time.NewTimer(h.cfg.isolatedSilence)
				silent = silence.C
			default:
				silence.Reset(h.cfg.isolatedSilence)
			}
		case <-silent:
			if !doubt {
				// This worker may have been paused itself: the lines
				// written meanwhile wait in the pipe, read in a moment.
				doubt = true
				silence.Reset(2 * isolatedBeat)
				continue
			}
			frozen, silent = true, nil
			_ = cmd.Process.Kill()
		}
	}
}

// readIsolated calls line for each of the isolated process's lines until
// it closes its output. Lines that are not the protocol's are skipped, and
// so are lines too long to be (read and dropped: the process never blocks
// on a full pipe, and its later lines still count).
func readIsolated(r io.Reader, line func(isolatedLine)) {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	tooLong := false
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > maxIsolatedLine {
			tooLong, buf = true, buf[:0]
		}
		if !tooLong {
			buf = append(buf, frag...)
		}
		if errors.Is(err, bufio.ErrBufferFull) { // the line goes on
			continue
		}
		var l isolatedLine
		if !tooLong && json.Unmarshal(buf, &l) == nil {
			line(l)
		}
		buf, tooLong = buf[:0], false
		if err != nil {
			return
		}
	}
}

// maxIsolatedLine bounds one line of the isolated process's output (a
// result names at most a message's parts' ids).
const maxIsolatedLine = 16 << 20

// killedScript counts the death of an isolated delivery: courier_killed
// becomes the count read before it started plus one. Sent again after a
// lost answer, it counts nothing more. It counts nothing on a task whose
// epoch moved on (taken over: no longer this worker's) or whose hash is
// gone (it would create a stray hash): -1.
var killedScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'courier_epoch') or '0') ~= tonumber(ARGV[2]) then return -1 end
local k = tonumber(redis.call('HGET', KEYS[1], 'courier_killed') or '0')
if k > tonumber(ARGV[1]) then return k end
k = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'courier_killed', k)
return k
`)

// countKilled counts a death of an isolated delivery against the message,
// once: before is courier_killed as read before the delivery started, epoch
// the task's epoch then. It returns the deaths counted, -1 when the task is
// no longer this worker's.
func (h *Handler) countKilled(ctx context.Context, m taskMeta, before, epoch int64) (int, error) {
	var n int64
	err := h.untilDone(ctx, "isolated death not counted: retrying", m.queue, m.id, func(ctx context.Context) error {
		var err error
		n, err = killedScript.Run(ctx, h.rec.rdb, []string{taskKey(m.queue, m.id)}, before, epoch).Int64()
		if err != nil {
			return fmt.Errorf("count isolated death: %w", err)
		}
		return nil
	})
	return int(n), err
}

// ServeIsolated runs in the isolated process WorkerConfig.Isolate starts:
// it reads one delivery from in, delivers it with the worker's handler
// (never isolating again), and writes its outcome to out. The worker must
// not be started. The delivery stops, like a stopping worker's, when ctx
// ends or in closes (the worker stopped or died).
func (w *Worker) ServeIsolated(ctx context.Context, in io.Reader, out io.Writer) error {
	br := bufio.NewReader(in)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read isolated delivery: %w", err)
	}
	var req isolatedRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("read isolated delivery: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !req.Deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	stopOnEnd := context.AfterFunc(ctx, w.stop)
	defer stopOnEnd()
	go func() { // ends when the worker closes in (or dies)
		_, _ = io.Copy(io.Discard, br)
		w.stop()
	}()
	h := w.handler
	h.isolated, h.run = true, req.Run
	h.cfg.Fence = isolatedFence{h.rec.rdb}
	var mu sync.Mutex
	enc := json.NewEncoder(out)
	write := func(l isolatedLine) error {
		mu.Lock()
		defer mu.Unlock()
		return enc.Encode(l)
	}
	if err := write(isolatedLine{Started: true}); err != nil {
		return fmt.Errorf("write isolated delivery: %w", err)
	}
	beating, stopBeats := context.WithCancel(context.Background())
	beats := make(chan struct{})
	go func() { // the worker takes silence for a frozen process
		defer close(beats)
		t := time.NewTicker(isolatedBeat)
		defer t.Stop()
		for {
			select {
			case <-beating.Done():
				return
			case <-t.C:
				_ = write(isolatedLine{Alive: true})
			}
		}
	}()
	defer func() { stopBeats(); <-beats }()
	m := taskMeta{id: req.ID, queue: req.Queue, retried: req.Retried, maxRetry: req.MaxRetry}
	bot := ""
	if p, err := DecodePayload(req.Payload); err == nil {
		bot = p.Bot
	}
	res := newIsolatedResult(h.process(ctx, m, req.Payload, &delivery{}), bot) // the worker releases the sequence, once fenced
	if err := write(isolatedLine{Result: res}); err != nil {
		return fmt.Errorf("write isolated delivery: %w", err)
	}
	return nil
}
