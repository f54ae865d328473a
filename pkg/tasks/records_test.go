package tasks

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/redistest"
)

// The delivery record: a run counted at each start and ended at each end
// (a run never ended is a delivery that died), the parts sent kept across
// deliveries, unconfirmed parts included.
func TestDeliveryRecord(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	key := taskKey(queue, "task-1")
	redistest.DeleteKeys(t, rdb, key)
	t.Cleanup(func() { rdb.Del(context.Background(), key) })
	ctx := context.Background()
	r := &records{rdb: rdb}

	if b, err := r.begin(ctx, queue, "task-1", "", 0, time.Time{}); err != nil || !b.gone {
		t.Fatalf("no task hash: %+v, %v", b, err)
	}
	if err := rdb.HSet(ctx, key, "msg", "x").Err(); err != nil {
		t.Fatal(err)
	}
	b, err := r.begin(ctx, queue, "task-1", "", 0, time.Time{})
	if err != nil || b.gone || b.died != 0 || b.sent != nil {
		t.Fatalf("first delivery: %+v, %v", b, err)
	}
	sent := []string{"id-1", unconfirmedID, ""}
	if err := r.markSent(ctx, queue, "task-1", sent, false, false, 0, nil); err != nil {
		t.Fatal(err)
	}
	// The worker dies here: the next delivery finds the run open.
	b, err = r.begin(ctx, queue, "task-1", "", 0, time.Time{})
	if err != nil || b.died != 1 || !slices.Equal(b.sent, sent) {
		t.Fatalf("after a death: %+v, %v", b, err)
	}
	if err := r.end(ctx, queue, "task-1"); err != nil {
		t.Fatal(err)
	}
	if b, err = r.begin(ctx, queue, "task-1", "", 0, time.Time{}); err != nil || b.died != 0 {
		t.Fatalf("after an ended run: %+v, %v", b, err)
	}
	sent[2] = "id-3"
	if err := r.markSent(ctx, queue, "task-1", sent, true, false, 0, nil); err != nil {
		t.Fatal(err)
	}
	if b, err = r.begin(ctx, queue, "task-1", "", 0, time.Time{}); err != nil || b.died != 0 || delivered(b.sent) != 3 {
		t.Fatalf("after the last part: %+v, %v", b, err)
	}
	stored, _ := rdb.HGet(ctx, key, fieldResult).Result()
	if stored != `{"message_ids":["id-1","","id-3"],"unconfirmed_parts":[1]}` {
		t.Fatalf("stored result %s", stored)
	}
}
