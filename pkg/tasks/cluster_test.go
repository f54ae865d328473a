package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// courier on a real Redis Cluster (three primaries, created by the test):
// every script's keys share a hash slot, the gate is shared per bot across
// the cluster, and the dead letters stream works. Two workers, each with
// its own cluster client, on the default gate namespace (the key names
// production uses).
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	opt, err := redisurl.Parse(c.URL(), redisurl.ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	if opt.Mode != redisurl.ModeCluster {
		t.Fatalf("mode %q", opt.Mode)
	}
	client := func() redis.UniversalClient {
		rdb := opt.NewClient()
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	rdb := client()
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("client %T", rdb)
	}
	const rate = 10 // sends per second per bot, across both workers
	sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{token: "bot", "tok-b2": "b2"}})
	queue := redistest.Name(t)
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	dls := NewDeadLetters(rdb, "", 0)
	for range 2 {
		wrdb := client()
		w, err := NewWorker(wrdb, WorkerConfig{
			Bots:   map[string]Sender{"": sim.Client(t, token), "b2": sim.Client(t, "tok-b2")},
			Queues: map[string]int{queue: 1}, Concurrency: 4, Policy: fastPolicy, Budget: 500 * time.Millisecond,
			Schedule: fastSchedule, ShutdownTimeout: 5 * time.Second, TaskCheckInterval: 10 * time.Millisecond,
			DelayedTaskCheckInterval: 100 * time.Millisecond, UnauthorizedDelay: time.Second,
			Gate:        GateConfig{Rate: rate, Burst: 1, Batch: 1}, // a round trip per send: the strict limit
			DeadLetters: NewDeadLetters(wrdb, "", 0),
			Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Shutdown)
	}
	p, err := NewProducer(rdb, ProducerConfig{Queue: queue, Source: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	ctx := context.Background()
	enqueue := func(t *testing.T, m Message, opts ...Option) string {
		t.Helper()
		r, err := p.Enqueue(ctx, m, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return r.TaskID
	}
	texts := func(room string) []string {
		var out []string
		for _, m := range sim.Messages(room) {
			out = append(out, m.Text)
		}
		return out
	}
	waitState := func(t *testing.T, id string, state asynq.TaskState) *asynq.TaskInfo {
		t.Helper()
		var info *asynq.TaskInfo
		waitFor(t, 20*time.Second, fmt.Sprintf("task %s to be %v", id, state), func() bool {
			info, err = insp.GetTaskInfo(queue, id)
			return err == nil && info.State == state
		})
		return info
	}

	t.Run("deliver", func(t *testing.T) {
		enqueue(t, text("c-deliver", "plain"))
		id := enqueue(t, text("c-deliver", "keyed"), Key("c-key"), Bot("b2"))
		if _, err := p.Enqueue(ctx, text("c-deliver", "keyed"), Key("c-key"), Bot("b2")); !errors.Is(err, ErrDuplicate) {
			t.Errorf("second enqueue of a key: %v", err)
		}
		waitState(t, id, asynq.TaskStateCompleted)
		waitFor(t, 20*time.Second, "both messages", func() bool { return len(texts("c-deliver")) == 2 })
	})

	t.Run("redeliver", func(t *testing.T) {
		sim.AddFault(webextest.Fault{Room: "c-redeliver", Status: 500, Count: fastPolicy.MaxAttempts})
		id := enqueue(t, text("c-redeliver", "after a 500"), Key("c-redeliver"))
		info := waitState(t, id, asynq.TaskStateCompleted)
		if got := texts("c-redeliver"); len(got) != 1 || info.Retried < 1 {
			t.Errorf("messages %q, redeliveries %d: want one message after a redelivery", got, info.Retried)
		}
	})

	t.Run("dead-letter and requeue", func(t *testing.T) {
		sim.AddFault(webextest.Fault{Room: "c-dead", Status: 404, Count: 1})
		id := enqueue(t, text("c-dead", "kept"), Key("c-dead"))
		waitState(t, id, asynq.TaskStateArchived)
		var dl *DeadLetter
		waitFor(t, 10*time.Second, "the dead-letter record", func() bool {
			list, _ := dls.List(ctx, 100)
			for _, d := range list {
				if d.TaskID == id {
					dl = &d
				}
			}
			return dl != nil
		})
		if err := insp.DeleteTask(queue, id); err != nil { // as the archive would after 90 days
			t.Fatal(err)
		}
		r, err := dls.Requeue(ctx, dl.ID, p)
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, r.TaskID, asynq.TaskStateCompleted)
		if got := texts("c-dead"); len(got) != 1 || got[0] != "kept" {
			t.Errorf("messages %q", got)
		}
	})

	t.Run("shared limit", func(t *testing.T) {
		const n = 10
		for i := range n { // the default bot: its gate keys are tagged {:default}
			enqueue(t, text("c-limit", fmt.Sprint(i)))
		}
		waitFor(t, 30*time.Second, "every limited message", func() bool { return len(texts("c-limit")) == n })
		reqs := sim.Requests("c-limit")
		span := reqs[len(reqs)-1].Start.Sub(reqs[0].Start)
		if min := (n - 1) * time.Second * 8 / (10 * rate); span < min {
			t.Errorf("%d sends in %v across two workers: the shared limit (%d/s) would take at least %v", n, span, rate, min)
		}
	})

	t.Run("shared cool-down", func(t *testing.T) {
		// A 429 to one worker holds the bot's sends on both (the other
		// learns it through Redis pub/sub, else up to StateCache late).
		sim.AddFault(webextest.Fault{Room: "c-cool", Status: 429, RetryAfter: webextest.Duration(2 * time.Second), Count: 1})
		for i := range 6 {
			enqueue(t, text("c-cool", fmt.Sprint(i)), Bot("b2"))
		}
		waitFor(t, 30*time.Second, "every message after the cool-down", func() bool { return len(texts("c-cool")) == 6 })
		reqs := sim.Requests("c-cool")
		for _, r := range reqs[1:] {
			if d := r.Start.Sub(reqs[0].Time); reqs[0].Status == 429 && d < 1900*time.Millisecond {
				t.Errorf("a send %v after the 429, inside the 2s cool-down", d)
			}
		}
		if reqs[0].Status != 429 {
			t.Errorf("first answer %d, want the 429", reqs[0].Status)
		}
	})

	t.Run("ordering", func(t *testing.T) {
		var want []string
		for i := range 8 {
			want = append(want, fmt.Sprint("step ", i))
			enqueue(t, text("c-order", want[i]), OrderingKey("c-seq"), Key(fmt.Sprint("c-seq-", i)))
		}
		waitFor(t, 30*time.Second, "every ordered message", func() bool { return len(texts("c-order")) == len(want) })
		if got := texts("c-order"); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("delivered %q, want %q", got, want)
		}
	})

	t.Run("reply waits for its parent", func(t *testing.T) {
		// parentScript reads the parent's hash and the waiting hash.
		sim.AddFault(webextest.Fault{Room: "c-reply", Status: 503, Count: fastPolicy.MaxAttempts})
		enqueue(t, text("c-reply", "head"), Ordered())
		parent := enqueue(t, text("c-reply", "parent"), Ordered())
		id := enqueue(t, Message{Message: webex.Message{RoomID: "c-reply", Text: "reply"}}, ReplyTo(parent))
		waitState(t, id, asynq.TaskStateCompleted)
		msgs := sim.Messages("c-reply")
		if got := strings.Join(texts("c-reply"), ","); got != "head,parent,reply" || msgs[2].ParentID != msgs[1].ID {
			t.Errorf("delivered %s, reply's parentId %q, want head,parent,reply in the parent's thread", got, msgs[2].ParentID)
		}
	})

	t.Run("reconciler", func(t *testing.T) {
		// A head deleted in asynqmon: reconcileScript and sweepScript build
		// the task keys from the queue's prefix, in the queue's slot.
		idle := redistest.Name(t) // no worker serves it
		head := enqueue(t, text("c-rec", "head"), Ordered(), Queue(idle))
		next := enqueue(t, text("c-rec", "next"), Ordered(), Queue(idle))
		if err := insp.DeleteTask(idle, head); err != nil {
			t.Fatal(err)
		}
		rec := NewReconciler(rdb, ReconcilerConfig{Queues: []string{idle}, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if n, err := rec.Reconcile(ctx); err != nil || n != 1 {
			t.Fatalf("reconciled %d: %v", n, err)
		}
		if info, err := insp.GetTaskInfo(idle, next); err != nil || info.State != asynq.TaskStatePending {
			t.Errorf("the next message after the reconciler: %v %v", info, err)
		}
	})

	t.Run("WaitReplicas asks the task's shard", func(t *testing.T) {
		// This cluster has no replicas: the wait fails, on the node that
		// holds the task (not Missing), for queues in different slots.
		for _, q := range []string{queue, redistest.Name(t), redistest.Name(t)} {
			wp, err := NewProducer(rdb, ProducerConfig{Queue: q, WaitReplicas: 1, ReplicaTimeout: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			_, err = wp.Enqueue(ctx, text("c-wait", "w"), Key("c-wait"), ProcessIn(time.Hour))
			var re *ReplicationError
			if !errors.As(err, &re) || re.Missing || re.Err != nil || re.Acked != 0 {
				t.Errorf("queue %s: %v (%+v)", q, err, re)
			}
		}
	})

	t.Run("fast recovery", func(t *testing.T) {
		idle := redistest.Name(t) // a queue no worker serves: the task stays where the test puts it
		id := enqueue(t, text("c-recover", "orphan"), Queue(idle))
		dead := fakeDeadHolder(t, rdb, idle, id)
		r := newTestRecovery(t, rdb, idle)
		r.run(t)
		waitFor(t, takeoverWait, "the dead worker's task back in pending", func() bool {
			info, err := insp.GetTaskInfo(idle, id)
			return err == nil && info.State == asynq.TaskStatePending
		})
		r.waitRecovered(t, 1)
		if log := r.logs.String(); !strings.Contains(log, dead) || strings.Contains(log, "could not move") {
			t.Errorf("recovery log:\n%s", log)
		}
	})

	for _, bad := range []string{"CROSSSLOT", "did not answer the send gate", "same slot"} {
		if strings.Contains(logs.String(), bad) {
			t.Errorf("the workers' log shows %q", bad)
		}
	}
}

// A gate namespace with an empty hash tag would spread a bot's keys over
// a cluster's slots: refused, naming the field.
func TestGateNamespaceHashTag(t *testing.T) {
	t.Parallel()
	err := GateConfig{Namespace: "courier{}"}.WithDefaults().Validate()
	if err == nil || !strings.Contains(err.Error(), "Namespace") || !strings.Contains(err.Error(), "{}") {
		t.Errorf("namespace courier{}: %v", err)
	}
	if err := (GateConfig{Namespace: "courier:{q1}"}).WithDefaults().Validate(); err != nil {
		t.Errorf("namespace courier:{q1}: %v", err)
	}
}
