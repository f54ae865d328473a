package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// ChaosOptions configure the chaos run.
type ChaosOptions struct {
	Messages    int           // enqueued with unique keys
	Workers     int           // worker processes
	Concurrency int           // per worker
	KillEvery   time.Duration // SIGKILL a random worker this often, and restart it; 0: no worker kills
	Kills       int           // how many worker kills; Redis is killed once, after the first
	RedisDown   time.Duration // how long Redis stays down when it is killed (default 1s)
	Quiesce     time.Duration // how long to wait for every task to settle
	Latency     time.Duration // the simulator's answer time, so that deliveries span the kills
	// RecoveryAfter is the workers' COURIER_RECOVERY_AFTER (0: fast crash
	// recovery off, asynq's own 60–130 s).
	RecoveryAfter time.Duration
	// MaxDelay fails the run when a message whose request a worker kill cut
	// is delivered longer than this after the kill (0: no limit).
	MaxDelay time.Duration
	Log      io.Writer
	// Ordered enqueues every message ordered (tasks.Ordered) over Rooms
	// rooms, and the report checks each room's order.
	Ordered bool
	Rooms   int // rooms of the ordered mode; default 20
	// KeepRedis leaves Redis running (and skips the fsync measurements).
	KeepRedis bool
}

// DefaultChaos is the full run of docs/RELIABILITY.md.
func DefaultChaos() ChaosOptions {
	return ChaosOptions{Messages: 10000, Workers: 3, Concurrency: 10, KillEvery: 10 * time.Second, Kills: 6, Quiesce: 15 * time.Minute,
		Latency: 200 * time.Millisecond, RecoveryAfter: tasks.DefaultRecoveryAfter, MaxDelay: chaosMaxDelay, Log: io.Discard}
}

// ShortChaos is CI's form: about 1,000 messages and 2 worker kills, in under
// four minutes (most of it waiting for asynq to reclaim the killed workers'
// leases).
func ShortChaos() ChaosOptions {
	o := DefaultChaos()
	o.Messages, o.Concurrency, o.KillEvery, o.Kills, o.Latency, o.Quiesce = 1000, 5, 3*time.Second, 2, 100*time.Millisecond, 3*time.Minute
	o.MaxDelay = shortChaosMaxDelay
	return o
}

// The limits on the delivery delay, from a kill, of messages whose request
// the kill cut, set from measurement (docs/RELIABILITY.md): the slowest
// measured with fast crash recovery was 13.3 s (a kill at the moment Redis
// restarts: the detectors wait until Redis has been up for the window + 5
// s); asynq's own recovery (60–130 s) exceeds them.
const (
	chaosMaxDelay      = 20 * time.Second
	shortChaosMaxDelay = 20 * time.Second
)

// ChaosReport accounts for every message.
type ChaosReport struct {
	Messages, Delivered, DeadLettered, Lost int
	Poisoned                                int            // healthy messages archived as poison
	Duplicates                              map[string]int // explanation → count
	Unexplained                             []string
	MaxDelay, P99Delay                      time.Duration // from enqueue (the backlog's drain dominates)
	// CutByKill messages had a request under way when a worker was killed;
	// KillP99 and KillMax are their delivery delays from the kill.
	CutByKill        int
	KillP99, KillMax time.Duration
	DelayLimit       time.Duration // KillMax above it fails the run (0: no limit)
	RecoveryAfter    time.Duration
	WorkerKills      int
	// SelfExits are worker exits the run did not cause: a worker that
	// halted (exit 3) because another took a task of its over while it was
	// alive, or that crashed. Any fails the run.
	SelfExits        []string
	RedisKilledAt    time.Time
	RedisDown        time.Duration
	Took             time.Duration
	Everysec, Always FsyncLoss
	Ordered          bool
	Rooms            int
	OrderViolations  []string // ordered mode: a room's messages out of enqueue order
	SequenceKeysLeft []string // ordered mode: keys of drained sequences still in Redis
}

// FsyncLoss is what a Redis crash lost of acknowledged enqueues.
type FsyncLoss struct {
	Acknowledged, Lost int
}

const chaos404Room = "chaos-404"

// Chaos runs three workers against a Redis with appendfsync always and a
// faulty simulator (15% 503, 5% drops before accepting, 2% after, bursts of
// 429, 2% of messages to a room answering 404), kills workers and Redis, and
// accounts for every message.
func Chaos(o ChaosOptions) (*ChaosReport, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	start := time.Now()
	o.Rooms = cmp.Or(o.Rooms, 20)
	rep := &ChaosReport{Messages: o.Messages, Duplicates: map[string]int{}, RedisDown: cmp.Or(o.RedisDown, time.Second), DelayLimit: o.MaxDelay,
		RecoveryAfter: o.RecoveryAfter, Ordered: o.Ordered, Rooms: o.Rooms}
	var err error
	if !o.KeepRedis {
		if rep.Everysec, err = fsyncLoss("everysec"); err != nil {
			return nil, err
		}
		if rep.Always, err = fsyncLoss("always"); err != nil {
			return nil, err
		}
	}
	e, err := NewEnv(o.Log, "always")
	if err != nil {
		return nil, err
	}
	defer e.Close()
	sim := e.Sim
	sim.SetLatency(o.Latency)
	sim.AddFault(webextest.Fault{Room: chaos404Room, Status: 404})
	sim.AddFault(webextest.Fault{Status: 503, Probability: 0.15})
	sim.AddFault(webextest.Fault{Drop: "before", Probability: 0.05})
	sim.AddFault(webextest.Fault{Drop: "after", Probability: 0.02})

	rdb := e.Client()
	defer rdb.Close()
	queue := "chaos"
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, Source: "chaos"})
	if err != nil {
		return nil, err
	}
	enqueued := make(map[string]time.Time, o.Messages)
	reqs := make([]tasks.Request, o.Messages)
	key := func(i int) string { return fmt.Sprintf("chaos-%05d", i) }
	for i := range reqs {
		room := "room-" + key(i) // a room per message: the simulator's request log then names the message
		if o.Ordered {           // rooms shared by many messages, whose order is checked
			room = fmt.Sprintf("chaos-room-%02d", i%o.Rooms)
		}
		if i%50 == 7 { // 2%
			room = chaos404Room
		}
		reqs[i] = tasks.Request{Message: tasks.Message{Message: webex.Message{RoomID: room, Text: key(i)}}, Options: []tasks.Option{tasks.Key(key(i))}}
		if o.Ordered {
			reqs[i].Options = append(reqs[i].Options, tasks.Ordered())
		}
	}
	t0 := time.Now()
	for i, r := range p.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			return nil, fmt.Errorf("enqueue %s: %w", key(i), r.Err)
		}
	}
	for i := range reqs {
		enqueued[key(i)] = t0
	}

	env := []string{"COURIER_INITIAL_DELAY=100ms", "COURIER_MAX_DELAY=1s", "COURIER_REDELIVERY_BASE=1s", "COURIER_REDELIVERY_CAP=10s",
		"COURIER_BUDGET=5s", "COURIER_SHUTDOWN_TIMEOUT=10s", "COURIER_LOG_LEVEL=warn", "COURIER_RECOVERY_AFTER=" + o.RecoveryAfter.String()}
	workers := make([]*Proc, o.Workers)
	var all []*Proc // every worker started, to find those that exited by themselves
	var mu sync.Mutex
	var killTimes []time.Time
	for i := range workers {
		if workers[i], err = e.StartWorker(Courier, queue, o.Concurrency, env...); err != nil {
			return nil, err
		}
		all = append(all, workers[i])
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range workers {
			w.Stop(15 * time.Second)
		}
	}()

	// Bursts of 429 with Retry-After, while most messages are still to go (a
	// burst that outlives the load would only ever answer the stragglers).
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(7 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, acc := sim.Totals(); acc < o.Messages*8/10 {
					sim.AddFault(webextest.Fault{Status: 429, RetryAfter: webextest.Duration(2 * time.Second), Count: 5})
				}
			}
		}
	}()

	// Kills: a random worker every KillEvery; Redis once, after the first
	// (or, with no worker kills, 3s into the run), kept down RedisDown.
	killRedis := func() error {
		rep.RedisKilledAt = time.Now()
		e.Redis.Kill()
		time.Sleep(cmp.Or(o.RedisDown, time.Second))
		if err := e.Redis.Start(); err != nil {
			return fmt.Errorf("restart Redis from its AOF: %w", err)
		}
		return nil
	}
	if o.KillEvery <= 0 {
		o.Kills = 0
		time.Sleep(3 * time.Second)
		if err := killRedis(); err != nil {
			return nil, err
		}
	}
	for k := range o.Kills {
		time.Sleep(o.KillEvery)
		mu.Lock()
		i := rand.IntN(len(workers))
		killTimes = append(killTimes, time.Now())
		workers[i].Kill()
		workers[i], err = e.StartWorker(Courier, queue, o.Concurrency, env...)
		if err == nil {
			all = append(all, workers[i])
		}
		mu.Unlock()
		if err != nil {
			return nil, err
		}
		rep.WorkerKills++
		if k == 0 && !o.KeepRedis {
			if err := killRedis(); err != nil {
				return nil, err
			}
		}
	}

	// Quiescence: nothing pending, scheduled, retrying or active for 3s.
	insp := asynq.NewInspectorFromRedisClient(rdb)
	settledSince := time.Time{}
	for deadline := time.Now().Add(o.Quiesce); ; time.Sleep(500 * time.Millisecond) {
		q, err := insp.GetQueueInfo(queue)
		busy := err != nil || q.Pending+q.Active+q.Scheduled+q.Retry > 0
		switch {
		case busy:
			settledSince = time.Time{}
		case settledSince.IsZero():
			settledSince = time.Now()
		case time.Since(settledSince) > 3*time.Second:
			goto settled
		}
		if time.Now().After(deadline) {
			var why []string
			if retry, err := insp.ListRetryTasks(queue, asynq.PageSize(5)); err == nil {
				for _, t := range retry {
					why = append(why, t.ID+": "+t.LastErr)
				}
			}
			return rep, fmt.Errorf("not settled after %v: %+v; waiting: %s", o.Quiesce, q, strings.Join(why, "; "))
		}
	}
settled:
	rep.Took = time.Since(start)
	mu.Lock()
	for _, w := range all {
		if err := w.Unexpected(); err != nil {
			rep.SelfExits = append(rep.SelfExits, err.Error())
		}
	}
	mu.Unlock()
	if o.Ordered {
		rep.OrderViolations = orderViolations(sim.Messages(""))
		if rep.SequenceKeysLeft, err = sequenceKeys(rdb, queue); err != nil {
			return rep, err
		}
	}
	return rep, rep.account(sim, insp, queue, enqueued, killTimes, o.Latency)
}

// account counts deliveries per key and explains every duplicate.
func (rep *ChaosReport) account(sim *webextest.Sim, insp *asynq.Inspector, queue string, enqueued map[string]time.Time, kills []time.Time, latency time.Duration) error {
	delivered := map[string][]webextest.Stored{}
	for _, m := range sim.Messages("") {
		delivered[m.Text] = append(delivered[m.Text], m)
	}
	droppedAfter := map[string]int{}
	cut := map[string]time.Time{} // message → the kill that cut its request
	for _, r := range sim.Requests("") {
		// A request the kill cut ends while the simulator still holds it for
		// its latency; a simulated drop ends after.
		if k, ok := strings.CutPrefix(r.Room, "room-"); ok && r.Outcome == webextest.DroppedBefore && r.Time.Sub(r.Start) < latency {
			for _, kt := range kills { // the kill closes the connection at once
				if d := r.Time.Sub(kt); d >= 0 && d < 500*time.Millisecond {
					cut[k] = kt
				}
			}
		}
		if r.Outcome == webextest.DroppedAfter {
			for _, m := range sim.Messages(r.Room) {
				if m.ID == r.MessageID {
					droppedAfter[m.Text]++
				}
			}
		}
	}
	archived := map[string]string{}
	for page := 1; ; page++ {
		infos, err := insp.ListArchivedTasks(queue, asynq.PageSize(1000), asynq.Page(page))
		if err != nil || len(infos) == 0 {
			break
		}
		for _, info := range infos {
			archived[info.ID] = info.LastErr
		}
	}
	var delays []time.Duration
	for k, at := range enqueued {
		ms := delivered[k]
		reason, dead := archived[k]
		switch {
		case len(ms) > 0:
			rep.Delivered++
			sort.Slice(ms, func(i, j int) bool { return ms[i].Created.Before(ms[j].Created) })
			delays = append(delays, ms[0].Created.Sub(at))
		case dead && strings.Contains(reason, "permanent"):
			rep.DeadLettered++
		case dead && strings.Contains(reason, "poison"):
			rep.Poisoned++
			rep.Unexplained = append(rep.Unexplained, fmt.Sprintf("%s (healthy) archived as poison: %q", k, reason))
		default:
			rep.Lost++
			rep.Unexplained = append(rep.Unexplained, fmt.Sprintf("%s lost (archived: %v %q)", k, dead, reason))
		}
		for extra := 1; extra < len(ms); extra++ {
			switch {
			case droppedAfter[k] >= extra:
				rep.Duplicates["connection dropped after Webex accepted"]++
			case near(ms[extra-1].Created, kills, 45*time.Second):
				// The worker died between Webex's 200 and the dedup record; its
				// lease expired and another worker delivered again.
				rep.Duplicates["worker killed between acceptance and the dedup record"]++
			default: // a Redis crash shorter than a lease explains none: the worker keeps trying the record
				var at []string
				for _, m := range ms {
					at = append(at, m.Created.Format("15:04:05.000"))
				}
				var ks []string
				for _, kt := range kills {
					ks = append(ks, kt.Format("15:04:05.000"))
				}
				rep.Unexplained = append(rep.Unexplained, fmt.Sprintf("%s delivered %d times (at %s; worker kills at %s; dropped after accepting %d times)",
					k, len(ms), strings.Join(at, ", "), strings.Join(ks, ", "), droppedAfter[k]))
			}
		}
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	if len(delays) > 0 {
		rep.MaxDelay, rep.P99Delay = delays[len(delays)-1], percentile(delays, .99)
	}
	var afterKill []time.Duration
	for k, kt := range cut {
		for _, m := range delivered[k] {
			if m.Created.After(kt) {
				afterKill = append(afterKill, m.Created.Sub(kt))
				break
			}
		}
	}
	sort.Slice(afterKill, func(i, j int) bool { return afterKill[i] < afterKill[j] })
	if rep.CutByKill = len(afterKill); len(afterKill) > 0 {
		rep.KillMax, rep.KillP99 = afterKill[len(afterKill)-1], percentile(afterKill, .99)
	}
	return nil
}

// near reports whether t is within d after one of the times.
func near(t time.Time, times []time.Time, d time.Duration) bool {
	for _, k := range times {
		if t.Before(k.Add(time.Second)) && k.Sub(t) < d {
			return true
		}
	}
	return false
}

// fsyncLoss enqueues as fast as it can to a Redis with the given appendfsync
// policy, SIGKILLs it mid-stream, restarts it from its AOF and counts the
// acknowledged enqueues that did not survive.
func fsyncLoss(policy string) (FsyncLoss, error) {
	dir, err := os.MkdirTemp("", "courierbench-fsync")
	if err != nil {
		return FsyncLoss{}, err
	}
	defer os.RemoveAll(dir)
	srv, err := StartRedis(dir, policy)
	if err != nil {
		return FsyncLoss{}, err
	}
	defer srv.Kill()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, PoolSize: 32})
	defer rdb.Close()
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: "fsync"})
	if err != nil {
		return FsyncLoss{}, err
	}
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	deadline := time.Now().Add(1500 * time.Millisecond)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				k := fmt.Sprintf("f-%02d-%06d", g, i)
				if _, err := p.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: k}}, tasks.Key(k)); err != nil {
					return // Redis is gone
				}
				mu.Lock()
				acked = append(acked, k)
				mu.Unlock()
				if time.Now().After(deadline) {
					srv.Kill()
				}
			}
		}()
	}
	wg.Wait()
	if err := srv.Start(); err != nil {
		return FsyncLoss{}, err
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	lost := 0
	for _, k := range acked {
		if _, err := insp.GetTaskInfo("fsync", k); errors.Is(err, asynq.ErrTaskNotFound) || (err != nil && strings.Contains(err.Error(), "not found")) {
			lost++
		}
	}
	return FsyncLoss{Acknowledged: len(acked), Lost: lost}, nil
}

// Print writes the report as markdown.
func (rep *ChaosReport) Print(w io.Writer) {
	redisKill := fmt.Sprintf("Redis killed once and down %s (appendfsync always)", rep.RedisDown)
	if rep.RedisKilledAt.IsZero() {
		redisKill = "Redis left running"
	}
	ordered := ""
	if rep.Ordered {
		ordered = fmt.Sprintf(", ordered over %d rooms", rep.Rooms)
	}
	fmt.Fprintf(w, "## Chaos run: %d messages%s, %d worker kills, %s\n\n", rep.Messages, ordered, rep.WorkerKills, redisKill)
	fmt.Fprintf(w, "| outcome | messages |\n|---|---|\n| delivered | %d |\n| dead-lettered with a permanent reason (the 404 room) | %d |\n| **healthy, archived as poison** | **%d** |\n| **lost** | **%d** |\n",
		rep.Delivered, rep.DeadLettered, rep.Poisoned, rep.Lost)
	total := 0
	for _, n := range rep.Duplicates {
		total += n
	}
	fmt.Fprintf(w, "\nDuplicates: %d\n\n", total)
	for why, n := range rep.Duplicates {
		fmt.Fprintf(w, "- %d: %s\n", n, why)
	}
	for _, u := range rep.Unexplained {
		fmt.Fprintf(w, "- UNEXPLAINED: %s\n", u)
	}
	fmt.Fprintf(w, "\nWorkers that exited by themselves (a live worker's task taken over, or a crash): %d\n", len(rep.SelfExits))
	for _, x := range rep.SelfExits {
		fmt.Fprintf(w, "- %s\n", x)
	}
	recovery := "off (asynq's own)"
	if rep.RecoveryAfter > 0 {
		recovery = rep.RecoveryAfter.String()
	}
	limit := "none"
	if rep.DelayLimit > 0 {
		limit = rep.DelayLimit.String()
	}
	fmt.Fprintf(w, "\nDelivery delay from enqueue: p99 %s, max %s. Run took %s.\n", rep.P99Delay.Round(time.Millisecond), rep.MaxDelay.Round(time.Millisecond), rep.Took.Round(time.Second))
	if !rep.Ordered { // ordered rooms are shared: a request does not name its message
		fmt.Fprintf(w, "\nDelivery delay from the kill, of the %d messages whose request a worker kill cut: p99 %s, max %s (limit %s; fast crash recovery %s).\n",
			rep.CutByKill, rep.KillP99.Round(time.Millisecond), rep.KillMax.Round(time.Millisecond), limit, recovery)
	}
	if rep.Ordered {
		fmt.Fprintf(w, "\nRooms whose messages arrived out of enqueue order: %d. Sequence keys left in Redis after the run: %d.\n",
			len(rep.OrderViolations), len(rep.SequenceKeysLeft))
		for _, v := range rep.OrderViolations {
			fmt.Fprintf(w, "- OUT OF ORDER: %s\n", v)
		}
	}
	if rep.Always.Acknowledged > 0 {
		fmt.Fprintf(w, "\nAcknowledged enqueues lost when Redis was SIGKILLed mid-stream: appendfsync always %d of %d; everysec %d of %d.\n",
			rep.Always.Lost, rep.Always.Acknowledged, rep.Everysec.Lost, rep.Everysec.Acknowledged)
	}
}

// Check fails when anything was lost or a duplicate has no explanation,
// when appendfsync always lost an acknowledged enqueue, when a worker
// exited by itself, or when a message waited longer than the delay limit.
func (rep *ChaosReport) Check() error {
	if rep.Lost > 0 || rep.Poisoned > 0 || len(rep.Unexplained) > 0 || rep.Always.Lost > 0 || len(rep.OrderViolations) > 0 || len(rep.SequenceKeysLeft) > 0 {
		return fmt.Errorf("chaos: %d lost, %d healthy archived as poison, %d unexplained, %d acknowledged enqueues lost with appendfsync always, %d rooms out of order, sequence keys left: %v",
			rep.Lost, rep.Poisoned, len(rep.Unexplained), rep.Always.Lost, len(rep.OrderViolations), rep.SequenceKeysLeft)
	}
	if len(rep.SelfExits) > 0 {
		return fmt.Errorf("chaos: %d workers exited without being killed: %s", len(rep.SelfExits), strings.Join(rep.SelfExits, "; "))
	}
	if rep.DelayLimit > 0 && rep.KillMax > rep.DelayLimit {
		return fmt.Errorf("chaos: a message cut by a worker kill was delivered %s after the kill, above the limit of %s", rep.KillMax.Round(time.Millisecond), rep.DelayLimit)
	}
	return nil
}
