// Command monitor serves courier's operator UI for a fleet of workers:
// asynqmon over the workers' Redis (queues, tasks, the archive of dead
// letters, re-runs when writable), with inline file contents elided from
// payloads, behind the same basic auth and browser guards as the workers'
// admin servers. Configuration comes from flags and environment variables
// (monitor -help). "monitor ready" asks a running monitor's /readyz (at
// COURIER_MONITOR_ADDR) and exits 0 or 1, for container health checks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/signals"
	"github.com/courier-dev/courier/internal/worker"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "ready" { // container health check: /readyz at COURIER_MONITOR_ADDR
		addr, ok := os.LookupEnv("COURIER_MONITOR_ADDR")
		if !ok {
			addr = monitor.DefaultAddr
		}
		os.Exit(worker.Probe(addr))
	}
	cfg, err := monitor.Load(os.Args[1:], nil)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "Usage: monitor [flags]\n\nEvery flag has an environment variable; a flag wins.")
		monitor.Usage(os.Stderr)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitor:", err)
		os.Exit(2)
	}
	ctx, stop := signals.Context(context.Background(), nil, func(s os.Signal) {
		fmt.Fprintf(os.Stderr, "monitor: second %v: exiting now\n", s)
		os.Exit(1)
	})
	defer stop()
	log := worker.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
	if err := monitor.Run(ctx, cfg, log, nil); err != nil {
		fmt.Fprintln(os.Stderr, "monitor:", err)
		stop()
		os.Exit(1)
	}
}
