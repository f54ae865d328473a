// Command worker delivers courier's queued Webex messages. Configuration
// comes from flags and environment variables (see README.md, "Configuration",
// or worker -help). "worker ready" asks a running worker's admin server
// whether it is ready, for container health checks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/courier-dev/courier/internal/signals"
	"github.com/courier-dev/courier/internal/worker"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "ready" { // container health check
		os.Exit(worker.Probe(worker.ProbeAddr(os.LookupEnv)))
	}
	cfg, err := worker.Load(os.Args[1:], nil)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "Usage: worker [flags]\n\nEvery flag has an environment variable; a flag wins.")
		worker.Usage(os.Stderr)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(worker.ExitConfig)
	}
	cfg.Isolation(os.Args[1:], os.LookupEnv)
	ctx, stop := signals.Context(context.Background(), nil, func(s os.Signal) {
		fmt.Fprintf(os.Stderr, "worker: second %v: exiting now\n", s)
		os.Exit(worker.ExitFailure)
	})
	err = worker.Run(ctx, cfg, worker.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
	}
	stop()
	os.Exit(worker.ExitCode(err))
}
