// Command courierbench measures courier against bare asynq, side by side on
// the same Redis (its own redis-server) and the same Webex simulator, and runs
// the chaos scenario. Run it from the repository root:
//
//	go run ./cmd/courierbench run               # everything, results as markdown
//	go run ./cmd/courierbench chaos -short      # the chaos run, CI's short form
//	go run ./cmd/courierbench cost              # cost per message: drain, CPU, RSS, idle, latency at 500/s
//	go run ./cmd/courierbench cli-latency       # enqueue → Webex latency through `enqueue --jsonl -`
//	go run ./cmd/courierbench chaos -ordered -messages 5000 -rooms 50   # ordered delivery under chaos
//	go run ./cmd/courierbench ordered -runs 1   # ordered vs unordered throughput
//	go run ./cmd/courierbench chaos -redis-down 5s -kill-every 0   # Redis down 5s, no worker kills
//	go run ./cmd/courierbench chaos -kill-every 2s -kills 30 -messages 2000  # a crash storm
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/bench"
)

func main() {
	redis.SetLogger(quiet{}) // Redis is killed on purpose; its client's dial errors are expected
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: courierbench run|cost|chaos|cli-latency|ordered [flags]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "courierbench:", err)
		os.Exit(1)
	}
}

func run(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	switch cmd {
	case "bare-worker": // the bare asynq side, started by run
		addr := fs.String("redis", "", "Redis address")
		queue := fs.String("queue", "", "queue")
		c := fs.Int("concurrency", 10, "concurrency")
		sim := fs.String("sim", "", "simulator URL")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return bench.RunBareWorker(*addr, *queue, *c, *sim)
	case "run":
		n := fs.Int("messages", 20000, "messages per drain run")
		conc := fs.String("concurrency", "10,50,100", "drain concurrencies")
		runs := fs.Int("runs", 3, "A/B pairs per measurement")
		enq := fs.Int("enqueue", 20000, "messages per enqueue-rate run")
		rates := fs.String("rates", "100,250,500,1000,2000", "latency rates per second")
		per := fs.Duration("rate-duration", 10*time.Second, "time at each rate")
		idle := fs.Duration("idle", 10*time.Second, "idle CPU window")
		plot := fs.String("plot", "docs/latency.png", "latency plot (PNG); empty: none")
		verbose := fs.Bool("v", false, "show the workers' output")
		if err := fs.Parse(args); err != nil {
			return err
		}
		var log io.Writer = io.Discard
		if *verbose {
			log = os.Stderr
		}
		env, err := bench.NewEnv(log, "")
		if err != nil {
			return err
		}
		defer env.Close()
		return env.Run(os.Stdout, bench.Options{Messages: *n, Concurrency: ints(*conc), Runs: *runs, EnqueueN: *enq,
			Rates: ints(*rates), RateDuration: *per, IdleFor: *idle, PlotPath: *plot})
	case "cost": // cost per message: drain, CPU, RSS, idle CPU and latency, side by side
		o := bench.CostOptions{}
		fs.IntVar(&o.Messages, "messages", 20000, "messages per drain run")
		conc := fs.String("concurrency", "10,100", "drain concurrencies")
		fs.IntVar(&o.Runs, "runs", 3, "A/B pairs per concurrency")
		fs.IntVar(&o.Rate, "rate", 500, "latency rate per second")
		fs.DurationVar(&o.RateDuration, "rate-duration", 10*time.Second, "time at the rate")
		fs.DurationVar(&o.IdleFor, "idle", 20*time.Second, "idle CPU window")
		fs.BoolVar(&o.Admin, "admin", false, "run courier's worker with its admin server (metrics, pprof, dead letters) as its defaults have it")
		fs.StringVar(&o.ProfileDir, "profile", "", "directory for CPU profiles of courier's worker (drain.pprof, idle.pprof); turns the admin server on")
		fs.BoolVar(&o.DrainOnly, "drain-only", false, "measure the drain only (no idle CPU, no latency)")
		fs.Func("courier-env", "extra environment for courier's worker, KEY=VALUE (repeatable)", func(s string) error {
			o.CourierEnv = append(o.CourierEnv, s)
			return nil
		})
		verbose := fs.Bool("v", false, "show the workers' output")
		if err := fs.Parse(args); err != nil {
			return err
		}
		o.Concurrency = ints(*conc)
		var log io.Writer = io.Discard
		if *verbose {
			log = os.Stderr
		}
		env, err := bench.NewEnv(log, "")
		if err != nil {
			return err
		}
		defer env.Close()
		return env.Cost(os.Stdout, o)
	case "cli-latency": // enqueue → Webex latency through `enqueue --jsonl -` kept open
		rate := fs.Int("rate", 500, "lines per second")
		d := fs.Duration("duration", 10*time.Second, "time at the rate")
		runs := fs.Int("runs", 1, "pairs of runs; the order alternates (CLI first, then the Go producer first)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		env, err := bench.NewEnv(io.Discard, "")
		if err != nil {
			return err
		}
		defer env.Close()
		// Both sides under the same machine load, one right after the other,
		// with the same producer settings (the command's defaults).
		fmt.Println("| producer | rate/s | messages | p50 | p99 | max | ack p50 | ack p99 |\n|---|---|---|---|---|---|---|---|")
		sides := []string{"enqueue --jsonl - (kept open)", "Go Producer"}
		for run := range *runs {
			for k := range sides {
				side := sides[(k+run)%2]
				measure := func() (bench.LatencyResult, error) { return env.CLILatency(*rate, *d) }
				if side == "Go Producer" {
					measure = func() (bench.LatencyResult, error) { return env.ProducerLatency(*rate, *d) }
				}
				r, err := measure()
				if err != nil {
					return err
				}
				fmt.Printf("| %s | %d | %d | %.1f ms | %.1f ms | %.1f ms | %.2f ms | %.2f ms |\n", side, r.Rate, r.N, float64(r.P50)/1e6, float64(r.P99)/1e6, float64(r.Max)/1e6,
					float64(r.AckP50)/1e6, float64(r.AckP99)/1e6)
			}
		}
		return nil
	case "ordered":
		o := bench.OrderedOptions{}
		fs.IntVar(&o.Messages, "messages", 5000, "messages per drain run")
		rooms := fs.String("rooms", "50,1", "room counts to compare at")
		fs.IntVar(&o.Concurrency, "concurrency", 10, "the worker's concurrency")
		fs.IntVar(&o.Runs, "runs", 3, "alternating pairs per room count")
		fs.DurationVar(&o.Latency, "latency", 0, "the simulator's answer time")
		if err := fs.Parse(args); err != nil {
			return err
		}
		o.Rooms = ints(*rooms)
		env, err := bench.NewEnv(io.Discard, "")
		if err != nil {
			return err
		}
		defer env.Close()
		res, err := env.CompareOrdered(o)
		if err != nil {
			return err
		}
		bench.PrintOrdered(os.Stdout, o, res)
		return nil
	case "chaos":
		o := bench.DefaultChaos()
		short := fs.Bool("short", false, "CI's short form: about 1,000 messages and 2 worker kills")
		fs.IntVar(&o.Messages, "messages", o.Messages, "messages (unique keys)")
		fs.DurationVar(&o.KillEvery, "kill-every", o.KillEvery, "SIGKILL a random worker this often")
		fs.IntVar(&o.Kills, "kills", o.Kills, "worker kills")
		ordered := fs.Bool("ordered", false, "enqueue every message ordered, over -rooms rooms, and check each room's order")
		rooms := fs.Int("rooms", 50, "rooms of the ordered mode")
		fs.DurationVar(&o.RedisDown, "redis-down", time.Second, "how long Redis stays down after it is killed")
		fs.IntVar(&o.Workers, "workers", o.Workers, "worker processes")
		fs.DurationVar(&o.Latency, "latency", o.Latency, "the simulator's answer time (longer: more deliveries in flight at each kill)")
		recoveryAfter := fs.Duration("recovery-after", o.RecoveryAfter, "the workers' COURIER_RECOVERY_AFTER; 0: asynq's own recovery")
		maxDelay := fs.Duration("max-delay", -1, "fail when a message waits longer from enqueue to delivery; 0: no limit (default: the measured limit of the form run)")
		verbose := fs.Bool("v", false, "show the workers' output")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *short {
			s := bench.ShortChaos()
			s.RedisDown = o.RedisDown
			o = s
		}
		o.RecoveryAfter = *recoveryAfter
		if *maxDelay >= 0 {
			o.MaxDelay = *maxDelay
		}
		if *ordered {
			o.Ordered, o.Rooms = true, *rooms
		}
		if *verbose {
			o.Log = os.Stderr
		}
		rep, err := bench.Chaos(o)
		if rep != nil {
			rep.Print(os.Stdout)
		}
		if err != nil {
			return err
		}
		return rep.Check()
	}
	return fmt.Errorf("unknown command %q: want run, cost, chaos, cli-latency or ordered", cmd)
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}
