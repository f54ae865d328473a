package tasks

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func TestDeadLetterRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 404, Count: 1})
	e.start(func(c *WorkerConfig) { c.DeadLetters = dls })
	id := e.enqueue(text("r", "kept"), Key("dl-key"))
	e.waitState(id, asynq.TaskStateArchived, 10*time.Second)
	var list []DeadLetter
	waitFor(t, 5*time.Second, "the dead-letter record", func() bool {
		list, _ = dls.List(context.Background(), 10)
		return len(list) == 1
	})
	if dl := list[0]; dl.TaskID != id || dl.Queue != e.queue || dl.Outcome != "permanent" || !strings.Contains(dl.Error, "404") || dl.Time.IsZero() {
		t.Fatalf("record %+v", dl)
	}
	// While asynq's archive holds the task, its key is taken.
	if _, err := dls.Requeue(context.Background(), list[0].ID, e.producer); !errors.Is(err, ErrDeadLettered) {
		t.Fatalf("requeue over the archive: %v", err)
	}
	// The archive drops it (as after 90 days or 10,000 newer dead letters): the record brings it back.
	if err := e.inspector.DeleteTask(e.queue, id); err != nil {
		t.Fatal(err)
	}
	r, err := dls.Requeue(context.Background(), list[0].ID, e.producer)
	if err != nil || r.TaskID != "dl-key" {
		t.Fatalf("requeue = %+v, %v", r, err)
	}
	e.waitState(r.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	if msgs := e.sim.Messages("r"); len(msgs) != 1 || msgs[0].Text != "kept" {
		t.Fatalf("messages %+v", msgs)
	}
	if _, err := dls.Get(context.Background(), "0-1"); !errors.Is(err, ErrDeadLetterNotFound) {
		t.Fatalf("missing entry: %v", err)
	}
}
