package tasks

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// The isolated process of these tests is the test binary itself, started
// with these variables set (TestMain runs isolatedChild instead of tests).
const (
	isolatedChildEnv = "COURIER_TASKS_TEST_ISOLATED" // the Redis address
	isolatedSimEnv   = "COURIER_TASKS_TEST_SIM"      // the simulator's URL
	isolatedGateEnv  = "COURIER_TASKS_TEST_GATE"     // the gate's namespace
)

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
	if err := w.ServeIsolated(context.Background(), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startIsolating runs a worker whose suspects are delivered by the test
// binary in a process of their own; its own sends to crashRoom crash too.
func (e *env) startIsolating() *Worker {
	return e.start(func(c *WorkerConfig) {
		c.Bots = map[string]Sender{"": crashSender{e.client(token)}}
		c.Isolate = func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), isolatedChildEnv+"="+e.rdb.Options().Addr, isolatedSimEnv+"="+e.sim.URL,
				isolatedGateEnv+"=courier:{"+e.queue+"}")
			cmd.Stderr = e.logs
			return cmd
		}
	})
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
		c.Isolate = func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), isolatedChildEnv+"="+e.rdb.Options().Addr, isolatedSimEnv+"="+e.sim.URL,
				isolatedGateEnv+"=courier:{"+e.queue+"}")
			cmd.Stderr = e.logs
			return cmd
		}
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
