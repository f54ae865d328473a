package tasks

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// A reply waits for its parent (here redelivered after an outage) and is
// sent with the parent's Webex message id.
func TestReplyThreadedUnderParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 3}) // the parent's first delivery
	parent := e.enqueue(text("r", "parent"))
	reply := Message{Message: webex.Message{RoomID: "r", Text: "reply", ParentID: "relay-id-of-the-parent"}}
	id := e.enqueue(reply, ReplyTo(parent))
	e.start(nil)
	e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	msgs := e.sim.Messages("r")
	if len(msgs) != 2 || msgs[0].Text != "parent" || msgs[1].Text != "reply" || msgs[1].ParentID != msgs[0].ID {
		t.Fatalf("simulator holds %+v", msgs)
	}
}

// A reply whose parent was dead-lettered goes unthreaded, with a warning
// and a metric.
func TestReplyUnthreadedAfterDeadParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "gone", Status: 404})
	obs := &releaseCounter{}
	parent := e.enqueue(text("gone", "parent"))
	id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Text: "reply", ParentID: "relay-id"}}, ReplyTo(parent))
	e.start(func(c *WorkerConfig) { c.Observer = obs })
	e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	if msgs := e.sim.Messages("r"); len(msgs) != 1 || msgs[0].ParentID != "" {
		t.Fatalf("simulator holds %+v", msgs)
	}
	obs.mu.Lock()
	n := obs.unthreaded
	obs.mu.Unlock()
	if n != 1 || !strings.Contains(e.logs.String(), "reply sent unthreaded: the parent message was dead-lettered") {
		t.Fatalf("unthreaded counted %d; logs:\n%s", n, e.logs.String())
	}
}

// A reply to a message still waiting behind the head of its sequence waits
// for it, and is threaded under it (not sent first, unthreaded).
func TestReplyToWaitingParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 503, Count: 3})
	e.enqueue(text("r", "head"), Ordered())
	parent := e.enqueue(text("r", "parent"), Ordered())
	id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Text: "reply"}}, ReplyTo(parent))
	e.start(nil)
	e.waitState(id, asynq.TaskStateCompleted, 30*time.Second)
	e.waitState(parent, asynq.TaskStateCompleted, 30*time.Second)
	msgs := e.sim.Messages("r")
	if got := strings.Join(texts(msgs), ","); got != "head,parent,reply" {
		t.Fatalf("delivered %s, want head,parent,reply", got)
	}
	if msgs[2].ParentID != msgs[1].ID {
		t.Fatalf("reply's parentId %q, want the parent's id %q; logs:\n%s", msgs[2].ParentID, msgs[1].ID, e.logs.String())
	}
}

// A reply requeued from the dead-letter record is still a reply: it is sent
// in its parent's thread, not with the parent id it was enqueued with.
func TestRequeuedReplyStaysThreaded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	dls := NewDeadLetters(e.rdb, "courier:{"+e.queue+"}:deadletters", 100)
	e.start(func(c *WorkerConfig) { c.DeadLetters = dls })
	parent := e.enqueue(text("r", "parent"))
	e.waitState(parent, asynq.TaskStateCompleted, 10*time.Second)
	e.sim.AddFault(webextest.Fault{Room: "r", Status: 400, Count: 1})
	reply := e.enqueue(Message{Message: webex.Message{RoomID: "r", Text: "reply", ParentID: "relay-id-of-the-parent"}}, ReplyTo(parent))
	e.waitState(reply, asynq.TaskStateArchived, 10*time.Second)
	var list []DeadLetter
	waitFor(t, 5*time.Second, "the dead-letter record", func() bool { list, _ = dls.List(context.Background(), 10); return len(list) == 1 })
	if err := e.inspector.DeleteTask(e.queue, reply); err != nil {
		t.Fatal(err)
	}
	r, err := dls.Requeue(context.Background(), list[0].ID, e.producer)
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(r.TaskID, asynq.TaskStateCompleted, 10*time.Second)
	msgs := e.sim.Messages("r")
	if len(msgs) != 2 || msgs[1].Text != "reply" || msgs[1].ParentID != msgs[0].ID {
		t.Fatalf("delivered %+v, want the reply under %s", msgs, msgs[0].ID)
	}
}

// idLost forwards every message, and loses Webex's answer to the one with
// a given text (delivered, its id unknown).
type idLost struct {
	Sender
	text string
}

func (s idLost) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	sent, err := s.Sender.CreateMessage(ctx, m)
	if err == nil && m.Text == s.text {
		return nil, &webex.UnconfirmedError{StatusCode: 200, Err: webex.ErrNoMessageID}
	}
	return sent, err
}

// A reply whose parent was delivered with an unknown Webex id (its answer
// cut short) goes unthreaded, after the parent, with a warning and a metric.
func TestReplyUnthreadedAfterUnknownParentID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	obs := &releaseCounter{}
	parent := e.enqueue(text("r", "parent"), Ordered())
	id := e.enqueue(Message{Message: webex.Message{RoomID: "r", Text: "reply", ParentID: "relay-id"}}, Ordered(), ReplyTo(parent))
	e.start(func(c *WorkerConfig) {
		c.Bots, c.Observer = map[string]Sender{"": idLost{Sender: e.client(token), text: "parent"}}, obs
	})
	e.waitState(id, asynq.TaskStateCompleted, 20*time.Second)
	msgs := e.sim.Messages("r")
	if got := strings.Join(texts(msgs), ","); got != "parent,reply" || msgs[1].ParentID != "" {
		t.Fatalf("delivered %s, reply's parentId %q", got, msgs[len(msgs)-1].ParentID)
	}
	obs.mu.Lock()
	n := obs.unthreaded
	obs.mu.Unlock()
	if n != 1 || !strings.Contains(e.logs.String(), "reply sent unthreaded: the parent message's Webex id is unknown") {
		t.Fatalf("unthreaded counted %d; logs:\n%s", n, e.logs.String())
	}
}
