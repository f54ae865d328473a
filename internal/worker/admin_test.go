package worker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/worker"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func get(t *testing.T, url, user, pw string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runWorker runs the worker in-process until the test ends.
func runWorker(t *testing.T, cfg *worker.Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &lockedBuffer{}
	go func() { done <- worker.Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
}

func adminConfig(t *testing.T, redisURL, simURL, queue string, extra map[string]string) (*worker.Config, string) {
	t.Helper()
	port, _ := redistest.FreePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	envs := map[string]string{"REDIS_URL": redisURL, "WEBEX_TOKEN": "good", "WEBEX_BASE_URL": simURL, "COURIER_QUEUES": queue,
		"COURIER_ADMIN_ADDR": addr, "COURIER_TASK_CHECK_INTERVAL": "10ms", "COURIER_REDIS_TIMEOUT": "2s",
		"COURIER_GATE_NAMESPACE": "courier:{" + queue + "}"}
	for k, v := range extra {
		envs[k] = v
	}
	cfg, err := worker.Load(nil, func(k string) (string, bool) { v, ok := envs[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Extras.Monitor = monitor.Handler // as cmd/dev mounts it
	return cfg, "http://" + addr
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, true)
	rdb := redis.NewClient(srv.Options())
	defer rdb.Close()
	s := newSetup(t, rdb, "redis://"+srv.Addr+"/0")
	cfg, base := adminConfig(t, s.url, s.sim.URL, s.queue, nil)
	runWorker(t, cfg)
	waitFor(t, 10*time.Second, "readiness", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 200 })
	if code, body := get(t, base+"/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}

	id := s.enqueue(t, "r", "hello")
	waitFor(t, 10*time.Second, "delivery", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	_, metrics := get(t, base+"/metrics", "", "")
	for _, want := range []string{
		`courier_deliveries_total{bot="default",outcome="delivered"} 1`,
		`courier_webex_attempts_total{bot="default",result="accepted"} 1`,
		`courier_webex_request_seconds_count{class="2xx"}`,
		`courier_bot_token_rejected{bot="default"} 0`,
		`courier_enqueue_to_delivery_seconds_count 1`,
		`courier_worker_ready 1`,
		`asynq_tasks_processed_total{queue="` + s.queue + `"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	if code, body := get(t, base+"/monitoring/", "", ""); code != 200 || !strings.Contains(body, "<html") {
		t.Fatalf("asynqmon page %d", code)
	}
	code, body := get(t, base+"/monitoring/api/queues", "", "")
	if code != 200 || !strings.Contains(body, s.queue) {
		t.Fatalf("asynqmon api %d %s", code, body)
	}
	resp, err := http.Post(base+"/monitoring/api/queues/"+s.queue+"/archived_tasks:run_all", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("read-only asynqmon accepted a POST: %d", resp.StatusCode)
	}

	// Readiness follows Redis: down, then back from its append-only file.
	srv.Kill()
	waitFor(t, 15*time.Second, "not ready without Redis", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 503 })
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "ready again", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 200 })
}

func TestAdminBasicAuthAndWritable(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	cfg, base := adminConfig(t, s.url, s.sim.URL, s.queue, map[string]string{
		"COURIER_ADMIN_USER": "ops", "COURIER_ADMIN_PASSWORD": "pw", "COURIER_ADMIN_WRITABLE": "true"})
	runWorker(t, cfg)
	waitFor(t, 10*time.Second, "readiness (no auth on probes)", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 200 })
	for _, path := range []string{"/metrics", "/monitoring/", "/deadletters"} {
		if code, _ := get(t, base+path, "", ""); code != 401 {
			t.Errorf("%s without credentials: %d", path, code)
		}
		if code, _ := get(t, base+path, "ops", "wrong"); code != 401 {
			t.Errorf("%s with a wrong password: %d", path, code)
		}
		if code, _ := get(t, base+path, "ops", "pw"); code != 200 {
			t.Errorf("%s with credentials: %d", path, code)
		}
	}
	// Writable: an archived task can be re-run through asynqmon's API.
	s.sim.AddFault(webextest.Fault{Room: "r", Status: 404, Count: 1})
	id := s.enqueue(t, "r", "re-run me")
	waitFor(t, 10*time.Second, "dead letter", func() bool { st, _ := s.state(id); return st == asynq.TaskStateArchived })
	req, _ := http.NewRequest("POST", base+"/monitoring/api/queues/"+s.queue+"/archived_tasks/"+id+":run", nil)
	req.SetBasicAuth("ops", "pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("re-run: %d", resp.StatusCode)
	}
	waitFor(t, 10*time.Second, "delivery after re-run", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	// The dead letter was recorded beyond the archive.
	_, body := get(t, base+"/deadletters", "ops", "pw")
	var list []tasks.DeadLetter
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	found := false
	for _, dl := range list {
		found = found || dl.TaskID == id
	}
	if !found {
		t.Fatalf("dead letter %s not in the record: %s", id, body)
	}
}

func TestAdminRefusesWritableBeyondLoopbackWithoutAuth(t *testing.T) {
	t.Parallel()
	_, err := worker.Load(nil, func(k string) (string, bool) {
		v, ok := map[string]string{"WEBEX_TOKEN": "x", "COURIER_ADMIN_ADDR": "0.0.0.0:8080", "COURIER_ADMIN_WRITABLE": "true"}[k]
		return v, ok
	})
	if err == nil || !strings.Contains(err.Error(), "COURIER_ADMIN_USER") {
		t.Fatalf("err = %v", err)
	}
}

func TestPayloadViewElidesFiles(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	_, err := s.producer.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: "x"},
		Uploads: []webex.File{{Name: "secret.pdf", ContentType: "application/pdf", Data: []byte("TOP-SECRET-FILE-CONTENT")}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, base := adminConfig(t, s.url, s.sim.URL, "other-"+s.queue, nil)
	runWorker(t, cfg)
	waitFor(t, 10*time.Second, "admin", func() bool { code, _ := get(t, base+"/healthz", "", ""); return code == 200 })
	code, body := get(t, base+"/monitoring/api/queues/"+s.queue+"/pending_tasks", "", "")
	if code != 200 || !strings.Contains(body, "secret.pdf") || strings.Contains(body, "TOP-SECRET") || strings.Contains(body, "VE9QLVNFQ1JFVA") {
		t.Fatalf("%d %s", code, body)
	}
}

// The production worker has no dev mode (no embedded Redis, simulator or
// UI in its binary): asked for it, it exits 2 and names cmd/dev; Run says
// the same to an embedder that did not add Extras.Dev.
func TestWorkerRefusesDevMode(t *testing.T) {
	t.Parallel()
	p := startWorker(t, "COURIER_DEV=true")
	err := p.wait(t, 20*time.Second)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != worker.ExitConfig || !strings.Contains(p.out.String(), "go run ./cmd/dev") {
		t.Fatalf("exit %v, output:\n%s", err, p.out.String())
	}
	cfg, err := worker.Load([]string{"-dev"}, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.Run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "cmd/dev") {
		t.Fatalf("Run without Extras.Dev: %v", err)
	}
}

// cmd/dev is dev mode only: -dev=false would make it a production worker
// that carries the UI and delivers suspect tasks without isolation.
func TestDevRefusesDevOff(t *testing.T) {
	t.Parallel()
	port, _ := redistest.FreePort()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, devBin, "-dev=false")
	cmd.Env = []string{"WEBEX_TOKEN=t", fmt.Sprintf("REDIS_URL=redis://127.0.0.1:%d/0", port), "COURIER_REDIS_TIMEOUT=1s", "COURIER_ADMIN_ADDR="}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != worker.ExitConfig || !strings.Contains(string(out), "go run ./cmd/worker") {
		t.Fatalf("exit %v, output:\n%s", err, out)
	}
}

// The dev mode: one command, seeded outcomes, a CLI enqueue against the
// address its banner prints, and a clean stop on SIGINT.
func TestDevMode(t *testing.T) {
	t.Parallel()
	p := startBinary(t, devBin, "COURIER_ADMIN_ADDR=127.0.0.1:0", "COURIER_LOG_FORMAT=json")
	var redisURL, simURL, uiURL string
	waitFor(t, 20*time.Second, "the banner", func() bool {
		out := p.out.String()
		m := regexp.MustCompile(`enqueue:\s+(REDIS_URL=(\S+) )?go run`).FindStringSubmatch(out)
		s := regexp.MustCompile(`messages:\s+(\S+)/_sim/messages`).FindStringSubmatch(out)
		u := regexp.MustCompile(`asynqmon:\s+(\S+)`).FindStringSubmatch(out)
		if m == nil || s == nil || u == nil {
			return false
		}
		redisURL, simURL, uiURL = m[2], s[1], u[1]
		if redisURL == "" {
			redisURL = "redis://127.0.0.1:6379/0"
		}
		return true
	})
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	count := func(room string) int {
		resp, err := http.Get(simURL + "/_sim/messages?room=" + room)
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var msgs []webextest.Stored
		_ = json.NewDecoder(resp.Body).Decode(&msgs)
		return len(msgs)
	}
	waitFor(t, 20*time.Second, "seeded deliveries", func() bool {
		return count(worker.RoomDelivered) == 1 && count(worker.RoomRetried) == 1
	})
	waitFor(t, 10*time.Second, "the seeded dead letter", func() bool {
		q, err := insp.GetQueueInfo(tasks.DefaultQueue)
		return err == nil && q.Archived == 1 && q.Retry == 1 // the rate-limited one waits its Retry-After
	})
	// asynqmon where the banner says, writable: the dead letter re-runs.
	if code, body := get(t, uiURL, "", ""); code != 200 || !strings.Contains(body, "<html") {
		t.Fatalf("the banner's asynqmon %s: %d", uiURL, code)
	}
	if code, body := get(t, uiURL+"api/queues", "", ""); code != 200 || !strings.Contains(body, `"queue":"`+tasks.DefaultQueue+`"`) {
		t.Fatalf("asynqmon's queues: %d %s", code, body)
	}
	resp, err := http.Post(uiURL+"api/queues/"+tasks.DefaultQueue+"/archived_tasks:run_all", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("re-run from asynqmon: %d", resp.StatusCode)
	}
	enq := exec.Command("go", "run", "github.com/courier-dev/courier/cmd/enqueue", "--room", "from-cli", "--text", "hi")
	enq.Env = append(enq.Environ(), "REDIS_URL="+redisURL)
	if out, err := enq.CombinedOutput(); err != nil {
		t.Fatalf("enqueue: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "the CLI's message", func() bool { return count("from-cli") == 1 })
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	stopped := false
	for sc.Scan() {
		stopped = stopped || strings.Contains(sc.Text(), `"msg":"stopped"`)
	}
	if !stopped {
		t.Fatal("no clean stop logged")
	}
}
