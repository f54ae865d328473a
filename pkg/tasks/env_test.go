package tasks

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/testutil"
	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func TestMain(m *testing.M) {
	if os.Getenv(isolatedChildEnv) != "" { // an isolated delivery (isolate_test.go)
		os.Exit(isolatedChild())
	}
	goleak.VerifyTestMain(m,
		// The shared test Redis (or miniredis) started by redistest lives for the whole binary.
		goleak.IgnoreTopFunction("github.com/alicebob/miniredis/v2/server.(*Server).servePeer"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("os/exec.(*Cmd).Wait"),
		// go-redis probes a node it cannot dial once a second until its pool
		// closes, and the probe sees the close only after its sleep: up to a
		// second after a test that killed a node closed its clients.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
	)
}

// fastPolicy keeps in-process attempts in milliseconds.
var fastPolicy = retrypolicy.Policy{MaxAttempts: 3, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone}

// fastSchedule makes every redelivery due after QueueDelay's floor (2s).
var fastSchedule = retrypolicy.Schedule{Base: time.Millisecond, Cap: time.Millisecond, Multiplier: 2, Jitter: retrypolicy.JitterNone, MaxRetryAfter: time.Hour}

const token = "tok-default"

// env is one test's queue, simulator, producer and (once started) worker.
type env struct {
	t         *testing.T
	rdb       *redis.Client
	queue     string
	sim       *webextest.Server
	producer  *Producer
	inspector *asynq.Inspector
	worker    *Worker
	logs      *syncBuffer
	// workerRdb, when set, is the worker's own client (through a proxy).
	workerRdb *redis.Client
}

type syncBuffer = testutil.Buffer

func newEnv(t *testing.T, simOpts webextest.Options) *env {
	t.Helper()
	return newEnvOn(t, redistest.Client(t), simOpts)
}

// newEnvOn is newEnv on the Redis rdb talks to.
func newEnvOn(t *testing.T, rdb *redis.Client, simOpts webextest.Options) *env {
	t.Helper()
	if simOpts.Tokens == nil {
		simOpts.Tokens = map[string]string{token: "bot"}
	}
	e := &env{t: t, rdb: rdb, queue: redistest.Name(t), sim: webextest.NewServer(t, simOpts), logs: &syncBuffer{}}
	e.inspector = asynq.NewInspectorFromRedisClient(e.rdb)
	t.Cleanup(func() {
		_ = e.inspector.DeleteQueue(e.queue, true)
		if t.Failed() {
			t.Logf("worker log:\n%s", e.logs.String())
		}
	})
	redistest.DeleteKeys(t, e.rdb, "asynq:{"+e.queue+"}:*", "courier:{"+e.queue+"}:*")
	p, err := NewProducer(e.rdb, ProducerConfig{Queue: e.queue, Source: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	e.producer = p
	return e
}

// client returns a webex client of the simulator for tok.
func (e *env) client(tok string) *webex.Client {
	return e.sim.Client(e.t, tok)
}

// start runs a worker on the test's queue; adjust edits its configuration.
func (e *env) start(adjust func(*WorkerConfig)) *Worker {
	e.t.Helper()
	cfg := WorkerConfig{
		Bots:                     map[string]Sender{"": e.client(token)},
		Queues:                   map[string]int{e.queue: 1},
		Concurrency:              4,
		Policy:                   fastPolicy,
		Budget:                   500 * time.Millisecond,
		Schedule:                 fastSchedule,
		ShutdownTimeout:          5 * time.Second,
		TaskCheckInterval:        10 * time.Millisecond,
		DelayedTaskCheckInterval: 100 * time.Millisecond,
		UnauthorizedDelay:        time.Second,
		Gate:                     GateConfig{Namespace: "courier:{" + e.queue + "}"},
		Logger:                   slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	rdb := e.rdb
	if e.workerRdb != nil {
		rdb = e.workerRdb
	}
	w, err := NewWorker(rdb, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	e.worker = w
	return w
}

func (e *env) enqueue(m Message, opts ...Option) string {
	e.t.Helper()
	r, err := e.producer.Enqueue(context.Background(), m, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return r.TaskID
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, what, cond)
}

// taskState waits until the task reaches state and returns its info.
func (e *env) waitState(id string, state asynq.TaskState, timeout time.Duration) *asynq.TaskInfo {
	e.t.Helper()
	var info *asynq.TaskInfo
	waitFor(e.t, timeout, fmt.Sprintf("task %s to be %v", id, state), func() bool {
		var err error
		info, err = e.inspector.GetTaskInfo(e.queue, id)
		return err == nil && info.State == state
	})
	return info
}

func text(room, s string) Message {
	return Message{Message: webex.Message{RoomID: room, Text: s}}
}
