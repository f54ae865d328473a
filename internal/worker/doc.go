// Package worker is the courier worker process. cmd/worker calls Load,
// Isolation, NewLogger, Run and ExitCode (and Probe for "worker ready").
//
//   - config.go: Config, read from flags and environment variables by Load,
//     every problem reported at once, naming the setting;
//   - run.go: Run, the process as one ordered group of parts
//     (internal/lifecycle): the Redis check, the admin server, the token
//     checks, the crash-recovery detector, the delivery server, the
//     ordering reconciler and the relay. A failed start, a signal and a
//     part that ends all stop the started parts the same way, in reverse
//     order, within the shutdown timeout + stopMargin; ExitCode maps the
//     outcome to the exit code;
//   - isolate.go: the isolated delivery process a suspect task runs in
//     (COURIER_ISOLATED_DELIVERY), which runs none of the servers;
//   - checks.go: the start-up checks (Redis, its settings, the bots' tokens);
//   - recovery.go: fast crash recovery (pkg/tasks.Recovery) as configured;
//   - logger.go: the process logger (tint text or JSON);
//   - probe.go: "worker ready", the container health check;
//   - dev.go: the dev mode's embedded Redis, simulator and seeded messages.
package worker
