// Package signals turns SIGINT and SIGTERM into a graceful stop: the first
// cancels a context, a second ends the process at once (a stop that waits on
// something stuck can always be cut short).
package signals

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// Context returns a context cancelled by the first SIGINT or SIGTERM, after
// which it calls first (nil: nothing; in main: say that a second signal
// exits); a second calls exit (in main: print a line and os.Exit). stop
// releases the signals and ends the watching goroutine.
//
// Go's runtime keeps one pending instance of each signal for os/signal: a
// second SIGTERM that arrives before the first was handed to this package
// is merged into it. A caller that must see two signals (a test) sends the
// second once first has run.
func Context(parent context.Context, first, exit func(os.Signal)) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case sig := <-ch:
			cancel()
			if first != nil {
				first(sig)
			}
		case <-done:
			return
		}
		select {
		case sig := <-ch:
			exit(sig)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		<-finished
		cancel()
	}
}
