package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/lifecycle"
	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/worker"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// takenAddr is an address something else already listens on.
func takenAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// runUntilEnd runs the worker in-process until Run returns by itself.
func runUntilEnd(t *testing.T, ctx context.Context, cfg *worker.Config) (error, string) {
	t.Helper()
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- worker.Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	select {
	case err := <-done:
		return err, logs.String()
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return:\n%s", logs.String())
		return nil, ""
	}
}

// A part that fails to start stops the parts started before it: the admin
// server, already listening when the relay cannot bind, stops too.
func TestRelayStartFailureStopsTheAdminServer(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	relayAddr := takenAddr(t)
	cfg, base := adminConfig(t, s.url, s.sim.URL, s.queue, map[string]string{
		"COURIER_RELAY_ADDR": relayAddr, "COURIER_RELAY_TOKENS": "relay-secret=default"})
	err, logs := runUntilEnd(t, context.Background(), cfg)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "relay" || !pe.Start || !strings.Contains(err.Error(), "listen on "+relayAddr) {
		t.Fatalf("Run: %v", err)
	}
	if worker.ExitCode(err) != worker.ExitFailure {
		t.Fatalf("exit code %d", worker.ExitCode(err))
	}
	for _, want := range []string{`"msg":"admin server listening"`, `"msg":"worker started"`,
		`"level":"ERROR","msg":"stopping: a part failed","part":"relay"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if code, body := get(t, base+"/healthz", "", ""); code != 0 {
		t.Fatalf("the admin server still answers after Run returned: %d %s", code, body)
	}
}

func TestAdminStartFailure(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	addr := takenAddr(t)
	cfg, _ := adminConfig(t, s.url, s.sim.URL, s.queue, map[string]string{"COURIER_ADMIN_ADDR": addr})
	err, logs := runUntilEnd(t, context.Background(), cfg)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "admin server" || err.Error() != "start admin server: listen on "+addr+": listen tcp "+addr+": bind: address already in use" {
		t.Fatalf("Run: %v", err)
	}
	if strings.Contains(logs, "worker started") || !strings.Contains(logs, `"part":"admin server"`) {
		t.Fatalf("log:\n%s", logs)
	}
}

func TestRedisStartFailure(t *testing.T) {
	t.Parallel()
	port, _ := redistest.FreePort()
	cfg, base := adminConfig(t, fmt.Sprintf("redis://127.0.0.1:%d/0", port), "http://127.0.0.1:1", "q", map[string]string{"COURIER_REDIS_TIMEOUT": "500ms"})
	err, logs := runUntilEnd(t, context.Background(), cfg)
	var pe *lifecycle.PartError
	if !errors.As(err, &pe) || pe.Part != "redis" || !strings.Contains(err.Error(), "unreachable after 500ms") {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(logs, `"part":"redis"`) || strings.Contains(logs, "admin server listening") {
		t.Fatalf("log:\n%s", logs)
	}
	if code, _ := get(t, base+"/healthz", "", ""); code != 0 {
		t.Fatal("the admin server answers though Redis never did")
	}
}

// A signal while the worker waits for Redis is a clean stop (exit 0), not
// a Redis failure.
func TestSignalDuringStartUp(t *testing.T) {
	t.Parallel()
	port, _ := redistest.FreePort()
	cfg, _ := adminConfig(t, fmt.Sprintf("redis://127.0.0.1:%d/0", port), "http://127.0.0.1:1", "q", map[string]string{"COURIER_REDIS_TIMEOUT": "1m"})
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- worker.Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	waitFor(t, 10*time.Second, "go-redis to report the refused dial", func() bool { return strings.Contains(logs.String(), "redis client") })
	cancel()
	select {
	case err := <-done:
		if err != nil || worker.ExitCode(err) != worker.ExitOK {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// The process: a part that fails to start exits 1 naming the part.
func TestPartFailureExits1(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	for _, c := range []struct{ name, env, part, want string }{
		{"admin", "COURIER_ADMIN_ADDR=" + takenAddr(t), "admin server", "worker: start admin server: listen on "},
		{"relay", "COURIER_RELAY_ADDR=" + takenAddr(t), "relay", "worker: start relay: listen on "},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startWorker(t, s.env("good", c.env, "COURIER_RELAY_TOKENS=t=default")...)
			err := p.wait(t, 20*time.Second)
			out := p.out.String()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want 1:\n%s", err, out)
			}
			if !strings.Contains(out, c.want) || !strings.Contains(out, `"msg":"stopping: a part failed","part":"`+c.part+`"`) {
				t.Fatalf("output:\n%s", out)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, worker.ExitOK},
		{&lifecycle.PartError{Part: "relay", Start: true, Err: errors.New("bind")}, worker.ExitFailure},
		{&lifecycle.PartError{Part: "crash-recovery detector", Err: tasks.ErrTakenOver}, worker.ExitTombstoned},
		{&lifecycle.StopError{Parts: []string{"delivery server"}}, worker.ExitFailure},
		{&lifecycle.StopError{Cause: &lifecycle.PartError{Part: "crash-recovery detector", Err: tasks.ErrTakenOver}}, worker.ExitTombstoned},
	} {
		if got := worker.ExitCode(c.err); got != c.want {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// The ordering reconciler is a part of the worker: a sequence whose head
// was deleted before any worker saw it moves on.
func TestReconcilerRunsInTheWorker(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	ctx := context.Background()
	var ids []string
	for _, text := range []string{"a", "b"} {
		r, err := s.producer.Enqueue(ctx, tasks.Message{Message: webex.Message{RoomID: "ordered", Text: text}}, tasks.Ordered())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.TaskID)
	}
	if err := s.inspector.DeleteTask(s.queue, ids[0]); err != nil {
		t.Fatal(err)
	}
	cfg, _ := adminConfig(t, s.url, s.sim.URL, s.queue, map[string]string{"COURIER_RECONCILE_INTERVAL": "100ms"})
	runWorker(t, cfg)
	waitFor(t, 15*time.Second, "the second message, once the reconciler moved its sequence on", func() bool {
		msgs := s.sim.Messages("ordered")
		return len(msgs) == 1 && msgs[0].Text == "b"
	})
}

// A stop that hangs on Redis (SIGSTOPped: connections open, nothing
// answers) does not hold the worker: past the shutdown timeout and the
// stop's margin it exits 1, naming the parts that had not stopped (before,
// it waited on go-redis's timeouts and exited 0 some 20 s later).
func TestStopBoundedWhenRedisHangs(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, false)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	s := newSetup(t, rdb, "redis://"+srv.Addr+"/0")
	w := startWorker(t, s.env("good", "COURIER_SHUTDOWN_TIMEOUT=1s", "COURIER_BUDGET=500ms")...)
	waitFor(t, 30*time.Second, "the worker to start", func() bool { return strings.Contains(w.out.String(), `"msg":"worker started"`) })
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := w.wait(t, 60*time.Second)
	out := w.out.String()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != worker.ExitFailure {
		t.Fatalf("exit %v, want %d:\n%s", err, worker.ExitFailure, out)
	}
	if !strings.Contains(out, `"level":"ERROR","msg":"stop did not finish in time: exiting","not_stopped":[`) ||
		!strings.Contains(out, `"delivery server"`) || !strings.Contains(out, `"timeout":11000000000`) ||
		!strings.Contains(out, "worker: the stop did not finish in time: after 11s, not stopped: ") {
		t.Fatalf("output:\n%s", out)
	}
}

// A second SIGTERM during a stop that waits on a Webex request ends the
// worker at once with exit 1 (the first stops it gracefully; the task it
// held comes back through its lease).
func TestSecondSignalExits1(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	webex := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			once.Do(func() { close(arrived) })
			<-release
		}
		s.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(webex.Close)
	t.Cleanup(func() { close(release) })
	s.enqueue(t, "r", "held at Webex")
	w := startWorker(t, s.env("good", "WEBEX_BASE_URL="+webex.URL)...)
	select {
	case <-arrived:
	case <-time.After(60 * time.Second):
		t.Fatalf("no request reached Webex:\n%s", w.out.String())
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The worker took the first signal once it says it is stopping.
	waitFor(t, 30*time.Second, "the graceful stop", func() bool { return strings.Contains(w.out.String(), `"msg":"stopping: no new tasks`) })
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := w.wait(t, 30*time.Second)
	out := w.out.String()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != worker.ExitFailure || !strings.Contains(out, "worker: second terminated: exiting now") {
		t.Fatalf("exit %v, want %d:\n%s", err, worker.ExitFailure, out)
	}
}

// A signal while the bots' tokens are checked (Webex silent) stops the
// worker cleanly, without "delivering anyway" warnings for checks the stop
// cut short, and without starting delivery.
func TestSignalDuringTokenCheck(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	webexURL, open := silentWebex(t)
	cfg, _ := adminConfig(t, s.url, webexURL, s.queue, nil)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- worker.Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	waitFor(t, 10*time.Second, "the token check under way", func() bool { return open() >= 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop")
	}
	out := logs.String()
	if strings.Contains(out, "could not check the bot's token") || strings.Contains(out, `"msg":"worker started"`) || !strings.Contains(out, `"msg":"stopped"`) {
		t.Fatalf("log:\n%s", out)
	}
}
