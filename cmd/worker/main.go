// Command worker delivers courier's queued Webex messages. Configuration
// comes from flags and environment variables (see README.md, "Configuration",
// or worker -help). "worker ready" asks a running worker's admin server
// whether it is ready, for container health checks. The operator UI is
// cmd/monitor's and the zero-install demo cmd/dev's: neither is built in,
// which keeps each worker replica about 5 MB smaller in memory.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

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
	if err == nil && cfg.Dev {
		err = errors.New("dev mode is not part of the production worker: go run ./cmd/dev")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(worker.ExitConfig)
	}
	cfg.Isolation(os.Args[1:], os.LookupEnv)
	os.Exit(worker.Main("worker", cfg))
}
