package enqueue

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/courier-dev/courier/internal/redistest"
)

// --ordered and the JSON-lines fields ordered and orderingKey make ordered
// messages: one head per sequence in the queue, the rest waiting behind it
// in the order of the input.
func TestOrderedFlagsAndLines(t *testing.T) {
	c := newCLI(t)
	rdb := redistest.Client(t)
	redistest.DeleteKeys(t, rdb, "courier:{"+c.queue+"}:*")
	t.Cleanup(func() { redistest.DeleteKeys(t, rdb, "courier:{"+c.queue+"}:*") })
	if code, out, errOut := c.run("", "--room", "r", "--text", "first", "--ordered"); code != ExitOK {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	lines := `{"roomId":"r","text":"second","ordered":true}
{"roomId":"r","text":"third","ordered":true}
{"roomId":"x","text":"by key","orderingKey":"incident-9"}
{"roomId":"y","text":"also by key","orderingKey":"incident-9"}
{"roomId":"r","text":"unordered"}
`
	code, out, errOut := c.run(lines, "--jsonl", "-")
	if code != ExitOK || strings.Count(out, "enqueued ") != 5 {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	heads, err := rdb.HGetAll(context.Background(), "courier:{"+c.queue+"}:heads").Result()
	if err != nil || len(heads) != 2 || heads["r"] == "" || heads["incident-9"] == "" {
		t.Fatalf("heads %v, %v", heads, err)
	}
	var inAsynq []string
	for _, p := range c.payloads() {
		inAsynq = append(inAsynq, p.Message.Text+"/"+p.OrderingKey)
	}
	slices.Sort(inAsynq)
	if strings.Join(inAsynq, ",") != "by key/incident-9,first/r,unordered/" {
		t.Fatalf("in asynq: %v", inAsynq)
	}
	for key, want := range map[string]int64{"r": 2, "incident-9": 1} {
		if n, _ := rdb.LLen(context.Background(), "courier:{"+c.queue+"}:seq:"+key).Result(); n != want {
			t.Errorf("%d messages behind the head of %s, want %d", n, key, want)
		}
	}
}
