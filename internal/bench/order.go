package bench

import (
	"context"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// orderViolations checks each room's messages, in the order Webex accepted
// them, against the order they were enqueued in (their texts, chaos-NNNNN,
// sort in enqueue order). A message may repeat right after itself (a
// duplicate from a lost answer or a crash before the dedup record), but a
// room must never see a message after a later one.
func orderViolations(msgs []webextest.Stored) []string {
	last := map[string]string{} // room → the last message seen
	var out []string
	bad := map[string]bool{}
	for _, m := range msgs {
		prev, seen := last[m.RoomID]
		if seen && m.Text < prev && !bad[m.RoomID] {
			bad[m.RoomID] = true
			out = append(out, fmt.Sprintf("room %s: %s arrived after %s", m.RoomID, m.Text, prev))
		}
		if !seen || m.Text > prev {
			last[m.RoomID] = m.Text
		}
	}
	sort.Strings(out)
	return out
}

// sequenceKeys lists the ordering keys of queue still in Redis: none once
// every sequence has drained (an idle key costs no memory).
func sequenceKeys(rdb *redis.Client, queue string) ([]string, error) {
	ctx := context.Background()
	var out []string
	for _, k := range []string{"courier:{" + queue + "}:heads", "courier:{" + queue + "}:waiting"} {
		if n, err := rdb.HLen(ctx, k).Result(); err != nil || n > 0 {
			out = append(out, fmt.Sprintf("%s (%d fields)", k, n))
		}
	}
	iter := rdb.Scan(ctx, 0, "courier:{"+queue+"}:seq*", 1000).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("list sequence keys: %w", err)
	}
	sort.Strings(out)
	return out, nil
}
