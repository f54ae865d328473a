// Command enqueue hands Webex messages to courier from any job: one from
// flags, or many from JSON lines. Run enqueue -help for examples.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/courier-dev/courier/internal/enqueue"
	"github.com/courier-dev/courier/internal/signals"
)

func main() {
	ctx, stop := signals.Context(context.Background(), func(s os.Signal) {
		fmt.Fprintf(os.Stderr, "enqueue: %v: stopping; a second signal exits now\n", s)
	}, func(s os.Signal) {
		fmt.Fprintf(os.Stderr, "enqueue: second %v: exiting now\n", s)
		os.Exit(enqueue.ExitFailure)
	})
	code := enqueue.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
