package bench

import (
	"fmt"
	"io"
	"time"
)

// Options select what Run measures.
type Options struct {
	Messages     int   // drain size (20,000)
	Concurrency  []int // drain concurrencies (10, 50, 100)
	Runs         int   // A/B pairs per measurement (3)
	EnqueueN     int   // enqueue-rate size (20,000)
	Rates        []int // latency rates per second (100 … 2000)
	RateDuration time.Duration
	IdleFor      time.Duration
	PlotPath     string // latency plot (PNG), "" for none
}

// Run measures everything, courier and bare asynq alternating (A B, then
// B A), and prints markdown tables with medians and ratios to w.
func (e *Env) Run(w io.Writer, o Options) error {
	fmt.Fprintf(w, "## Drain: %d messages, messages/s (median of %d runs each, alternating)\n\n", o.Messages, o.Runs)
	fmt.Fprintln(w, "| concurrency | bare asynq + HTTP | courier | ratio | peak RSS bare | peak RSS courier |\n|---|---|---|---|---|---|")
	for _, c := range o.Concurrency {
		got := map[Side][]float64{}
		rss := map[Side]int64{}
		for run := range o.Runs {
			order := []Side{Bare, Courier}
			if run%2 == 1 {
				order = []Side{Courier, Bare}
			}
			for _, side := range order {
				r, err := e.Drain(side, o.Messages, c)
				if err != nil {
					return fmt.Errorf("drain %s c=%d: %w", side, c, err)
				}
				got[side] = append(got[side], r.PerSec)
				rss[side] = max(rss[side], r.PeakRSS)
			}
		}
		b, cr := median(got[Bare]), median(got[Courier])
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %.2f | %.1f MB | %.1f MB |\n", c, b, cr, cr/b, float64(rss[Bare])/1e6, float64(rss[Courier])/1e6)
	}

	fmt.Fprintf(w, "\n## Enqueue: %d messages, messages/s (median of %d runs)\n\n", o.EnqueueN, o.Runs)
	rates := map[string][]float64{}
	for range o.Runs {
		r, err := e.EnqueueRates(o.EnqueueN)
		if err != nil {
			return err
		}
		for k, v := range r {
			rates[k] = append(rates[k], v)
		}
	}
	m := func(k string) float64 { return median(rates[k]) }
	fmt.Fprintln(w, "| form | bare asynq | courier | ratio |\n|---|---|---|---|")
	fmt.Fprintf(w, "| one goroutine: `Client.Enqueue` vs `Producer.Enqueue` | %.0f | %.0f | %.2f |\n", m("bare-1"), m("producer-1"), m("producer-1")/m("bare-1"))
	fmt.Fprintf(w, "| 16 goroutines vs `Producer.EnqueueMany` | %.0f | %.0f | %.2f |\n", m("bare-16"), m("producer-bulk"), m("producer-bulk")/m("bare-16"))
	fmt.Fprintf(w, "| 16 goroutines vs `enqueue --jsonl FILE` (process start included) | %.0f | %.0f | %.2f |\n", m("bare-16"), m("enqueue-cli"), m("enqueue-cli")/m("bare-16"))

	fmt.Fprintf(w, "\n## Latency, enqueue to accepted, each side with its default configuration (%s per rate)\n\n", o.RateDuration)
	fmt.Fprintln(w, "| rate/s | bare p50 | bare p99 | bare max | courier p50 | courier p99 | courier max |\n|---|---|---|---|---|---|---|")
	var points []LatencyPoint
	for _, rate := range o.Rates {
		b, err := e.Latency(Bare, rate, o.RateDuration)
		if err != nil {
			return fmt.Errorf("latency bare %d/s: %w", rate, err)
		}
		c, err := e.Latency(Courier, rate, o.RateDuration)
		if err != nil {
			return fmt.Errorf("latency courier %d/s: %w", rate, err)
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s |\n", rate, ms(b.P50), ms(b.P99), ms(b.Max), ms(c.P50), ms(c.P99), ms(c.Max))
		points = append(points, LatencyPoint{Rate: rate, Bare: b, Courier: c})
	}
	if o.PlotPath != "" {
		if err := Plot(o.PlotPath, points); err != nil {
			return err
		}
		fmt.Fprintf(w, "\nPlot: %s\n", o.PlotPath)
	}

	fmt.Fprintf(w, "\n## Footprint\n\n| measure | bare asynq | courier |\n|---|---|---|\n")
	ib, err := e.IdleCPU(Bare, o.IdleFor)
	if err != nil {
		return err
	}
	ic, err := e.IdleCPU(Courier, o.IdleFor)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "| idle CPU, %% of one core over %s | %.2f%% | %.2f%% |\n", o.IdleFor, ib, ic)
	bb, err := e.BytesPerMessage(Bare, 10000)
	if err != nil {
		return err
	}
	bc, err := e.BytesPerMessage(Courier, 10000)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "| Redis bytes per pending message (10,000 queued) | %.0f | %.0f |\n", bb, bc)
	return nil
}
