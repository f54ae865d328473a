package bench

import (
	"fmt"
	"sort"

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
