package tasks

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// The isolated process of these tests is the test binary itself, started
// with these variables set (TestMain runs isolatedChild instead of tests).
const (
	isolatedChildEnv = "COURIER_TASKS_TEST_ISOLATED" // the Redis address
	isolatedSimEnv   = "COURIER_TASKS_TEST_SIM"      // the simulator's URL
	isolatedGateEnv  = "COURIER_TASKS_TEST_GATE"     // the gate's namespace
	// isolatedSetEnv, when set, names a Redis set each isolated process is
	// a member of while it runs, and (with the suffix ":max") the key of
	// the most members seen at once.
	isolatedSetEnv = "COURIER_TASKS_TEST_SET"
	// isolatedGarbageEnv, when set, makes the isolated process write a line
	// of 17 MiB and one that is not JSON before its own lines.
	isolatedGarbageEnv = "COURIER_TASKS_TEST_GARBAGE"
	// isolatedMuteEnv, when set, makes the isolated process say it started
	// and exit 0 without an outcome.
	isolatedMuteEnv = "COURIER_TASKS_TEST_MUTE"
)

// joinScript adds a running process to the set and keeps the most seen.
var joinScript = redis.NewScript(`
redis.call('SADD', KEYS[1], ARGV[1])
local n = redis.call('SCARD', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
`)

// crashRoom is the test hook for a poison message: sending to it crashes
// the process (a fatal panic outside any recovery, as a runtime fault would).
const crashRoom = "crash"

type crashSender struct{ Sender }

func (s crashSender) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	if m.RoomID == crashRoom {
		crashed := make(chan struct{})
		go func() { panic("poison message") }()
		<-crashed
	}
	return s.Sender.CreateMessage(ctx, m)
}

// isolatedChild is the isolated process: one delivery, as the worker asks.
func isolatedChild() int {
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv(isolatedChildEnv)})
	defer rdb.Close()
	if set := os.Getenv(isolatedSetEnv); set != "" {
		me := strconv.Itoa(os.Getpid())
		if err := joinScript.Run(context.Background(), rdb, []string{set, set + ":max"}, me).Err(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer rdb.SRem(context.Background(), set, me)
	}
	c, err := webex.New(webex.Config{BaseURL: os.Getenv(isolatedSimEnv), Token: token})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w, err := NewWorker(rdb, WorkerConfig{Bots: map[string]Sender{"": crashSender{c}}, Policy: fastPolicy, Budget: 500 * time.Millisecond,
		Schedule: fastSchedule, ShutdownTimeout: 5 * time.Second, Gate: GateConfig{Namespace: os.Getenv(isolatedGateEnv)},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if os.Getenv(isolatedMuteEnv) != "" {
		_, _ = os.Stdout.WriteString("{\"started\":true}\n")
		return 0
	}
	if os.Getenv(isolatedGarbageEnv) != "" {
		_, _ = os.Stdout.Write(append(bytes.Repeat([]byte("x"), 17<<20), "\nnot json {\n"...))
	}
	if err := w.ServeIsolated(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startIsolating runs a worker whose suspects are delivered by the test
// binary in a process of their own; its own sends to crashRoom crash too.
// adjust, when set, changes the configuration further.
func (e *env) startIsolating(adjust ...func(*WorkerConfig)) *Worker {
	return e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": crashSender{e.client(token)}}
		c.Isolate = e.isolatedCmd()
		for _, f := range adjust {
			f(c)
		}
	})
}

// isolatedCmd starts the test binary as an isolated delivery process; env
// is added to its environment.
func (e *env) isolatedCmd(env ...string) func(ctx context.Context) *exec.Cmd {
	return func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), isolatedChildEnv+"="+e.rdb.Options().Addr, isolatedSimEnv+"="+e.sim.URL,
			isolatedGateEnv+"=courier:{"+e.queue+"}")
		cmd.Env = append(cmd.Env, env...)
		cmd.Stderr = e.logs
		return cmd
	}
}

// died records n earlier deliveries of the task that died with their worker.
func (e *env) died(id string, n int) {
	e.t.Helper()
	if err := e.rdb.HSet(context.Background(), taskKey(e.queue, id), fieldRuns, n).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// Issue 14, item 5: a message that crashes the process delivering it is
// archived as poison after two deaths of its worker and three of its
// isolated process: five in all. The worker lives on and delivers the rest.
func TestIsolatedPoison(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text(crashRoom, "x"))
	e.died(id, 2) // the worker died twice with it in flight
	e.startIsolating()
	info := e.waitState(id, asynq.TaskStateArchived, 60*time.Second)
	if want := "poison: 3 isolated deliveries died with their process (limit 3), 5 deaths in all"; !strings.Contains(info.LastErr, want) {
		t.Fatalf("LastErr %q, want %q", info.LastErr, want)
	}
	if n := strings.Count(e.logs.String(), "outcome=killed"); n != 3 {
		t.Fatalf("%d isolated deaths logged, want 3:\n%s", n, e.logs.String())
	}
	after := e.enqueue(text("r", "after"))
	e.waitState(after, asynq.TaskStateCompleted, 10*time.Second)
	if req, _ := e.sim.Counts(crashRoom); req != 0 {
		t.Fatalf("%d requests to the crash room", req)
	}
}

// Issue 14, item 5: a healthy message in flight at unrelated crashes (here
// four in a row, beyond PoisonLimit) is delivered once, in isolation, not
// archived as poison. Without isolation it was archived.
func TestIsolatedSuspectDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "healthy"))
	e.died(id, 4)
	e.startIsolating()
	e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	if req, _ := e.sim.Counts("r"); req != 1 {
		t.Fatalf("%d requests, want 1", req)
	}
	runs, err := e.rdb.HMGet(context.Background(), taskKey(e.queue, id), fieldRuns, fieldKilled).Result()
	if err != nil || runs[0] != nil || runs[1] != nil {
		t.Fatalf("death counts left behind: %v %v", runs, err)
	}
}

// A stopping worker stops its isolated delivery too: handed back, not
// counted as the message's death.
func TestIsolatedStopIsNotADeath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "slow", Status: 503, Delay: webextest.Duration(time.Second)})
	id := e.enqueue(text("slow", "x"))
	e.died(id, 2)
	w := e.start(func(c *WorkerConfig) {
		c.Budget = 4 * time.Second // the isolated process waits between 503s
		c.Isolate = e.isolatedCmd()
	})
	waitFor(t, 30*time.Second, "the isolated delivery to try", func() bool { req, _ := e.sim.Counts("slow"); return req > 0 })
	w.Shutdown()
	killed, err := e.rdb.HGet(context.Background(), taskKey(e.queue, id), fieldKilled).Result()
	if err != redis.Nil {
		t.Fatalf("courier_killed = %q (%v), want none", killed, err)
	}
	if !strings.Contains(e.logs.String(), "outcome=interrupted") || strings.Contains(e.logs.String(), "isolated delivery died") {
		t.Fatalf("a stop taken for a death:\n%s", e.logs.String())
	}
}

// Issue 18: an isolated delivery runs under its worker's claim. When the
// task is taken over after the worker read its epoch (the worker was found
// dead while it started the process), the isolated process posts nothing;
// the worker, fenced too, halts. Before, the isolated process began under
// the new epoch and posted a second copy.
func TestIsolatedDeliveryFencedByTheWorkersClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"))
	e.died(id, 2)
	r := newTestRecovery(t, e.rdb, e.queue)
	posted := make(chan int, 1) // requests when the worker halts
	r.cfg.Halt = func() { n, _ := e.sim.Counts("r"); posted <- n }
	var once sync.Once
	e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": crashSender{e.client(token)}}
		c.Fence = r
		c.Isolate = func(ctx context.Context) *exec.Cmd {
			once.Do(func() { e.rdb.HIncrBy(ctx, taskKey(e.queue, id), fieldEpoch, 1) }) // another worker takes it over
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), isolatedChildEnv+"="+e.rdb.Options().Addr, isolatedSimEnv+"="+e.sim.URL,
				isolatedGateEnv+"=courier:{"+e.queue+"}")
			cmd.Stderr = e.logs
			return cmd
		}
	})
	select {
	case n := <-posted:
		if n != 0 {
			t.Fatalf("the isolated process posted %d times for a task taken over", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not halt")
	}
	waitFor(t, 10*time.Second, "the interrupted isolated delivery", func() bool {
		return strings.Contains(e.logs.String(), "outcome=interrupted") && strings.Contains(e.logs.String(), "declared dead by another worker")
	})
}

// A death of an isolated delivery is counted once even when Redis's answer
// to the count is lost (and the count is sent again): the verdict follows
// three real deaths. Before the fix the count was an HINCRBY sent again on
// a lost answer: two deaths counted three, poison one death early.
func TestIsolatedDeathCountedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text(crashRoom, "x"))
	e.died(id, 2)
	rule := e.faults().Add(&redisfault.Rule{Match: redisfault.Match{Name: "evalsha", Args: []string{killedScript.Hash(), taskKey(e.queue, id)}}, After: true})
	e.startIsolating()
	info := e.waitState(id, asynq.TaskStateArchived, 60*time.Second)
	if rule.Failed() != 1 {
		t.Fatalf("the count's answer was lost %d times, want 1", rule.Failed())
	}
	if want := "poison: 3 isolated deliveries died"; !strings.Contains(info.LastErr, want) {
		t.Fatalf("LastErr %q, want %q", info.LastErr, want)
	}
	if n := strings.Count(e.logs.String(), "suspected of killing its worker"); n != 4 {
		t.Fatalf("%d isolated deliveries, want 4 (3 deaths, then the verdict):\n%s", n, e.logs.String())
	}
}

// A flood of suspects (after a crash storm every task in flight is one)
// runs at most IsolateConcurrency isolated processes at once (2 by
// default; the others are handed back), each delivered once. Before the
// bound, each suspect started its process at once: as many processes as
// the worker's Concurrency, each with a worker's memory.
func TestIsolatedProcessesBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(300 * time.Millisecond)})
	ids := make([]string, 4)
	for i := range ids {
		ids[i] = e.enqueue(text("slow", fmt.Sprint("suspect ", i)))
		e.died(ids[i], 2)
	}
	set := "courier:{" + e.queue + "}:isolated"
	e.startIsolating(func(c *WorkerConfig) { c.Concurrency = 4; c.Isolate = e.isolatedCmd(isolatedSetEnv + "=" + set) })
	for _, id := range ids {
		e.waitState(id, asynq.TaskStateCompleted, 60*time.Second)
	}
	if req, _ := e.sim.Counts("slow"); req != len(ids) {
		t.Fatalf("%d requests, want %d", req, len(ids))
	}
	most, err := e.rdb.Get(context.Background(), set+":max").Int()
	if err != nil || most > DefaultIsolateConcurrency {
		t.Fatalf("%d isolated processes at once (%v), want at most %d", most, err, DefaultIsolateConcurrency)
	}
}

// An isolated process that is stopped (SIGSTOP) while it delivers is taken
// for frozen once silent for a while: killed, the suspect handed back (not
// counted) and delivered by the next isolated process. Before the fix the
// worker waited for it until the task's deadline (30 minutes by default),
// holding the only isolation slot.
func TestIsolatedFrozenHandedBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(2 * time.Second), Count: 1})
	id := e.enqueue(text("slow", "x"))
	e.died(id, 2)
	set := "courier:{" + e.queue + "}:isolated"
	e.startIsolating(func(c *WorkerConfig) {
		c.isolatedSilence = 3 * time.Second
		c.Isolate = e.isolatedCmd(isolatedSetEnv + "=" + set)
	})
	var pid int
	waitFor(t, 30*time.Second, "the isolated delivery to begin", func() bool {
		n, _ := e.rdb.HGet(context.Background(), taskKey(e.queue, id), fieldRuns).Int()
		ms, _ := e.rdb.SMembers(context.Background(), set).Result()
		if n == 3 && len(ms) == 1 {
			pid, _ = strconv.Atoi(ms[0])
		}
		return pid > 0
	})
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	e.waitState(id, asynq.TaskStateCompleted, 60*time.Second)
	logs := e.logs.String()
	if !strings.Contains(logs, "isolated delivery stopped answering") || strings.Contains(logs, "outcome=killed") {
		t.Fatalf("the frozen process was not handed back uncounted:\n%s", logs)
	}
}

// Output on the isolated process's result channel that is not the
// protocol's, however long, is skipped: the suspect is delivered once.
// Before the fix a line beyond the reader's limit ended the reading: the
// process blocked on a full pipe until the task's deadline, and its outcome
// was never read.
func TestIsolatedGarbageSkipped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"))
	e.died(id, 2)
	e.startIsolating(func(c *WorkerConfig) { c.Isolate = e.isolatedCmd(isolatedGarbageEnv + "=1") })
	e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	if req, _ := e.sim.Counts("r"); req != 1 {
		t.Fatalf("%d requests, want 1", req)
	}
}

// The worker's own Redis round trips for an isolated delivery, failed once
// and cut for 3s (the isolated process reaches Redis directly, unharmed):
// the read of the deaths so far before it starts, and the count of a death.
// A healthy suspect is delivered once; a message that kills its process is
// archived as poison after exactly three counted deaths: no death counted
// twice, none lost. baseline/cut needs asynq's recoverer (the hand-back
// meets the cut, as in TestRedisFaultMatrix): long form only.
func TestIsolatedRedisFaults(t *testing.T) {
	t.Parallel()
	baseline := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "hmget", Args: []string{taskKey(e.queue, id), fieldKilled}}
	}
	count := func(e *env, id string) redisfault.Match {
		return redisfault.Match{Name: "evalsha", Args: []string{killedScript.Hash(), taskKey(e.queue, id)}}
	}
	cells := []struct {
		name   string
		room   string
		match  func(e *env, id string) redisfault.Match
		cut    bool
		long   bool
		state  asynq.TaskState
		log    string
		killed int // isolated deaths logged
	}{
		{name: "baseline/fail", room: "r", match: baseline, state: asynq.TaskStateCompleted, log: "msg=\"Redis failed during the delivery"},
		{name: "baseline/cut", room: "r", match: baseline, cut: true, long: true, state: asynq.TaskStateCompleted, log: "msg=\"Redis failed during the delivery"},
		{name: "count/fail", room: crashRoom, match: count, state: asynq.TaskStateArchived, log: "msg=\"isolated death not counted: retrying", killed: 3},
		{name: "count/cut", room: crashRoom, match: count, cut: true, state: asynq.TaskStateArchived, log: "msg=\"isolated death not counted: retrying", killed: 3},
	}
	for _, c := range cells {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.long && testing.Short() {
				t.Skip("needs asynq's recoverer (up to ~2 minutes): long form only")
			}
			e := newEnv(t, webextest.Options{})
			proxy, hook := e.faultyWorkerRedis()
			id := e.enqueue(text(c.room, "x"))
			e.died(id, 2)
			rule := &redisfault.Rule{Match: c.match(e, id), Nth: 1}
			if c.cut {
				rule.Do = func() { proxy.Cut(3 * time.Second) }
			}
			hook.Add(rule)
			e.startIsolating()
			info := e.waitState(id, c.state, 150*time.Second)
			logs := e.logs.String()
			if rule.Failed() != 1 || !strings.Contains(logs, c.log) {
				t.Fatalf("rule fired %d times; log lacks %q", rule.Failed(), c.log)
			}
			if n := strings.Count(logs, "outcome=killed"); n != c.killed {
				t.Fatalf("%d isolated deaths logged, want %d", n, c.killed)
			}
			if req, _ := e.sim.Counts("r"); info.State == asynq.TaskStateCompleted && req != 1 {
				t.Fatalf("%d requests, want 1", req)
			}
			if info.State == asynq.TaskStateArchived && !strings.Contains(info.LastErr, "poison: 3 isolated deliveries died") {
				t.Fatalf("LastErr %q", info.LastErr)
			}
		})
	}
}

// An isolated process that exits by itself (status 0) without an outcome
// did not die: the suspect is handed back, no death counted. Before, it was
// counted as the message's death, three of them poison.
func TestIsolatedCleanExitIsNotADeath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	id := e.enqueue(text("r", "x"))
	e.died(id, 2)
	e.startIsolating(func(c *WorkerConfig) { c.Isolate = e.isolatedCmd(isolatedMuteEnv + "=1") })
	waitFor(t, 30*time.Second, "three isolated deliveries", func() bool {
		return strings.Count(e.logs.String(), "isolated delivery exited without a readable outcome") >= 3
	})
	if logs := e.logs.String(); strings.Contains(logs, "outcome=killed") || strings.Contains(logs, "outcome=poison") {
		t.Fatalf("a clean exit counted as a death:\n%s", logs)
	}
}
