package tasks

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/redisfault"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Redis fails the release after a delivered head that is not retained
// (Retention < 0, so asynq deletes it on completion): the worker keeps
// trying while it holds the task, so the next message goes on, and the
// reconciler never takes the delivered head for a deleted one (no false
// alarm, no successor counted as released past a lost message).
func TestReleaseRetriedAfterRedisFault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	head := e.enqueue(text("r", "head"), Ordered(), Retention(-1))
	e.enqueue(text("r", "next"), Ordered(), Retention(-1))
	rule := e.faults().Add(&redisfault.Rule{Match: redisfault.Match{Name: "evalsha", Args: []string{releaseScript.Hash(), head}}, Count: 3})
	obs := &releaseCounter{}
	e.start(func(c *WorkerConfig) { c.ReconcileInterval, c.Observer = time.Hour, obs })
	waitFor(t, 20*time.Second, "the head delivered and gone (not retained)", func() bool {
		_, err := e.inspector.GetTaskInfo(e.queue, head)
		return errors.Is(err, asynq.ErrTaskNotFound) && len(e.sim.Messages("r")) >= 1
	})
	rec := NewReconciler(e.rdb, ReconcilerConfig{Queues: []string{e.queue}, Observer: obs, Logger: e.logger()})
	if _, err := rec.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "both messages", func() bool { return len(e.sim.Messages("r")) >= 2 })
	if got := texts(e.sim.Messages("r")); !slices.Equal(got, []string{"head", "next"}) {
		t.Fatalf("delivered %v", got)
	}
	if n := obs.count("reconciled"); n != 0 || strings.Contains(e.logs.String(), "head_state=deleted") {
		t.Fatalf("a delivered head was taken for a deleted one (%d counted):\n%s", n, e.logs.String())
	}
	if rule.Failed() != 3 {
		t.Fatalf("the release failed %d times, want 3", rule.Failed())
	}
	e.waitKeysGone()
}
