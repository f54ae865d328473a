// Command dev is courier's zero-install demo: one process runs an embedded
// Redis (miniredis; nothing is durable), a simulated Webex, a worker with
// its admin server and asynqmon, and seeds one message per outcome. It
// takes the worker's flags and environment (worker -help); go run ./cmd/dev.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/courier-dev/courier/internal/devmode"
	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/worker"
)

func main() {
	cfg, err := worker.Load(append([]string{"-dev"}, os.Args[1:]...), nil)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "Usage: dev [flags]\n\nThe worker's flags; every flag has an environment variable; a flag wins.")
		worker.Usage(os.Stderr)
		return
	}
	if err == nil && !cfg.Dev {
		err = errors.New("-dev=false: cmd/dev is dev mode only; a worker without it is go run ./cmd/worker")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dev:", err)
		os.Exit(worker.ExitConfig)
	}
	cfg.Extras = worker.Extras{Dev: devmode.Start, Monitor: monitor.Handler}
	os.Exit(worker.Main("dev", cfg))
}
