package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// OrderedOptions configure the ordered-vs-unordered drain comparison.
type OrderedOptions struct {
	Messages    int   // per drain run
	Rooms       []int // room counts to compare at
	Concurrency int   // of the one worker
	Runs        int   // alternating pairs per room count; the median is reported
	// Latency is the simulator's answer time (0: at once).
	Latency time.Duration
}

// OrderedResult is one room count's drain rates, messages per second.
type OrderedResult struct {
	Rooms              int
	Unordered, Ordered float64
}

// CompareOrdered drains the same messages spread over each room count,
// unordered and ordered (tasks.Ordered: one message per room at a time),
// through one courier worker, alternating the two.
func (e *Env) CompareOrdered(o OrderedOptions) ([]OrderedResult, error) {
	var out []OrderedResult
	for _, rooms := range o.Rooms {
		var un, ord []float64
		for range o.Runs {
			for _, ordered := range []bool{false, true} {
				r, err := e.drainRooms(ordered, o.Messages, rooms, o.Concurrency, o.Latency)
				if err != nil {
					return nil, err
				}
				if ordered {
					ord = append(ord, r)
				} else {
					un = append(un, r)
				}
			}
		}
		out = append(out, OrderedResult{Rooms: rooms, Unordered: median(un), Ordered: median(ord)})
	}
	return out, nil
}

// drainRooms fills a queue with n messages over rooms rooms and measures a
// courier worker's messages per second from the first request to the last
// acceptance.
func (e *Env) drainRooms(ordered bool, n, rooms, concurrency int, latency time.Duration) (float64, error) {
	queue := fmt.Sprintf("bench-ordered-%t-%d", ordered, time.Now().UnixNano())
	defer e.dropQueue(queue)
	p, done, err := e.producer(queue)
	if err != nil {
		return 0, err
	}
	defer done()
	reqs := make([]tasks.Request, n)
	for i := range reqs {
		m := tasks.Message{Message: webex.Message{RoomID: fmt.Sprintf("bench-room-%03d", i%rooms), Markdown: fmt.Sprintf("**load** message %06d", i)}}
		reqs[i] = tasks.Request{Message: m}
		if ordered {
			reqs[i].Options = []tasks.Option{tasks.Ordered()}
		}
	}
	for _, r := range p.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			return 0, r.Err
		}
	}
	e.Sim.Reset()
	e.Sim.SetLatency(latency)
	w, err := e.StartWorker(Courier, queue, concurrency)
	if err != nil {
		return 0, err
	}
	err = e.waitAccepted(n, 5*time.Minute)
	w.Stop(30 * time.Second)
	if err != nil {
		return 0, err
	}
	var first, last time.Time
	for _, r := range e.Sim.Requests("") {
		if first.IsZero() || r.Start.Before(first) {
			first = r.Start
		}
		if r.Time.After(last) {
			last = r.Time
		}
	}
	return float64(n) / last.Sub(first).Seconds(), nil
}

// PrintOrdered writes the comparison as a markdown table.
func PrintOrdered(w io.Writer, o OrderedOptions, res []OrderedResult) {
	fmt.Fprintf(w, "### Ordered vs unordered: %d messages, one worker, concurrency %d, Webex answering in %v, messages/s (median of %d runs each, alternating)\n\n",
		o.Messages, o.Concurrency, o.Latency, o.Runs)
	fmt.Fprintf(w, "| rooms | unordered | ordered | ordered / unordered |\n|---|---|---|---|\n")
	for _, r := range res {
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %.2f |\n", r.Rooms, r.Unordered, r.Ordered, r.Ordered/r.Unordered)
	}
}
