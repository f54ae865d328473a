package bench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CostOptions select what Cost measures.
type CostOptions struct {
	Messages     int   // drain size
	Concurrency  []int // drain concurrencies
	Runs         int   // A/B pairs per concurrency
	Rate         int   // latency rate per second
	RateDuration time.Duration
	IdleFor      time.Duration
	// Admin runs courier's worker with its admin server on (metrics,
	// pprof, dead letters) as its defaults have it; Cost turns it off otherwise.
	Admin bool
	// ProfileDir, when set, receives CPU profiles of courier's worker: one
	// while draining (drain.pprof) and one while idle (idle.pprof).
	ProfileDir string
	// CourierEnv is extra environment for courier's worker (KEY=VALUE).
	CourierEnv []string
	// DrainOnly skips idle CPU and latency.
	DrainOnly bool
}

// Cost measures the cost per message side by side (bare asynq A, courier B,
// alternating): drain rate, CPU per message and peak RSS per concurrency,
// then idle CPU and latency at Rate per second for both sides.
func (e *Env) Cost(w io.Writer, o CostOptions) error {
	extra := append([]string(nil), o.CourierEnv...)
	if o.Admin || o.ProfileDir != "" {
		extra = append(extra, "COURIER_ADMIN_ADDR="+freeAddr())
	}
	fmt.Fprintf(w, "### Drain: %d messages (median of %d alternating runs)\n\n", o.Messages, o.Runs)
	fmt.Fprintln(w, "| concurrency | bare msg/s | courier msg/s | ratio | worker CPU/msg bare | courier | Redis CPU/msg bare | courier | simulator CPU/msg bare | courier | peak RSS bare (anon + file) | courier |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range o.Concurrency {
		rate, cpu, rcpu, scpu := map[Side][]float64{}, map[Side][]float64{}, map[Side][]float64{}, map[Side][]float64{}
		rss, anon, file := map[Side]int64{}, map[Side]int64{}, map[Side]int64{}
		for run := range o.Runs {
			order := []Side{Bare, Courier}
			if run%2 == 1 {
				order = []Side{Courier, Bare}
			}
			for _, side := range order {
				r, err := e.drain(side, o.Messages, c, extra...)
				if err != nil {
					return fmt.Errorf("drain %s c=%d: %w", side, c, err)
				}
				rate[side] = append(rate[side], r.PerSec)
				cpu[side] = append(cpu[side], float64(r.CPU)/float64(o.Messages))
				rcpu[side] = append(rcpu[side], float64(r.RedisCPU)/float64(o.Messages))
				scpu[side] = append(scpu[side], float64(r.SimCPU)/float64(o.Messages))
				rss[side] = max(rss[side], r.PeakRSS)
				anon[side], file[side] = max(anon[side], r.PeakAnon), max(file[side], r.PeakFile)
			}
		}
		b, cr := median(rate[Bare]), median(rate[Courier])
		us := func(xs []float64) string { return fmt.Sprintf("%.0f µs", median(xs)/1e3) }
		mb := func(s Side) string {
			return fmt.Sprintf("%.1f MB (%.1f + %.1f)", float64(rss[s])/1e6, float64(anon[s])/1e6, float64(file[s])/1e6)
		}
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, b, cr, cr/b,
			us(cpu[Bare]), us(cpu[Courier]), us(rcpu[Bare]), us(rcpu[Courier]), us(scpu[Bare]), us(scpu[Courier]), mb(Bare), mb(Courier))
	}
	if o.ProfileDir != "" {
		if err := e.profileDrain(o, extra); err != nil {
			return err
		}
	}
	if o.DrainOnly {
		return nil
	}
	fmt.Fprintf(w, "\n### Idle CPU (%% of one core over %s, after 5 s) and latency at %d/s for %s\n\n", o.IdleFor, o.Rate, o.RateDuration)
	fmt.Fprintln(w, "| side | idle CPU | p50 | p99 | max |\n|---|---|---|---|---|")
	for _, side := range []Side{Bare, Courier} {
		idle, err := e.idleCPU(side, o.IdleFor, o.ProfileDir, extra...)
		if err != nil {
			return err
		}
		l, err := e.Latency(side, o.Rate, o.RateDuration)
		if err != nil {
			return err
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
		fmt.Fprintf(w, "| %s | %.2f%% | %s | %s | %s |\n", side, idle, ms(l.P50), ms(l.P99), ms(l.Max))
	}
	return nil
}

// drain is Drain with extra environment for courier's worker.
func (e *Env) drain(side Side, n, concurrency int, extra ...string) (DrainResult, error) {
	if side == Bare {
		extra = nil
	}
	return e.drainWith(side, n, concurrency, nil, extra...)
}

// profileDrain drains once more with courier and saves a CPU profile.
func (e *Env) profileDrain(o CostOptions, extra []string) error {
	c := o.Concurrency[0]
	perr := make(chan error, 1)
	_, err := e.drainWith(Courier, o.Messages, c, func(addr string) {
		perr <- saveProfile(addr, 3*time.Second, filepath.Join(o.ProfileDir, "drain.pprof"))
	}, extra...)
	if err != nil {
		return err
	}
	if err := <-perr; err != nil {
		return fmt.Errorf("drain profile: %w", err)
	}
	return nil
}

// idleCPU is IdleCPU with extra environment; with dir, it also saves a CPU
// profile of courier's idle worker over the same window.
func (e *Env) idleCPU(side Side, d time.Duration, dir string, extra ...string) (float64, error) {
	queue := fmt.Sprintf("bench-idle-%s-%d", side, time.Now().UnixNano())
	defer e.dropQueue(queue)
	if side == Bare {
		extra = nil
	}
	p, err := e.StartWorker(side, queue, 10, extra...)
	if err != nil {
		return 0, err
	}
	defer p.Stop(30 * time.Second)
	time.Sleep(5 * time.Second) // start-up done
	c0 := p.CPU()
	if side == Courier && dir != "" {
		if err := saveProfile(adminAddr(extra), d, filepath.Join(dir, "idle.pprof")); err != nil {
			return 0, err
		}
	} else {
		time.Sleep(d)
	}
	return 100 * float64(p.CPU()-c0) / float64(d), nil
}

// saveProfile fetches a CPU profile of seconds d from the admin server.
// It waits up to 10 s for the admin server to listen.
func saveProfile(addr string, d time.Duration, path string) error {
	c := &http.Client{Timeout: d + 30*time.Second}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return err
		}
	}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func adminAddr(env []string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "COURIER_ADMIN_ADDR="); ok {
			return v
		}
	}
	return ""
}

// freeAddr is a free loopback address (for the admin server).
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:18080"
	}
	defer ln.Close()
	return ln.Addr().String()
}
