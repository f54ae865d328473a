// Command enqueue hands Webex messages to courier from any job: one from
// flags, or many from JSON lines. Run enqueue -help for examples.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/courier-dev/courier/internal/enqueue"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := enqueue.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
