package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/testutil"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// workerBin is cmd/worker; devBin cmd/dev.
var workerBin, devBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "courier-worker-test")
	if err != nil {
		panic(err)
	}
	workerBin, devBin = filepath.Join(dir, "worker"), filepath.Join(dir, "dev")
	for bin, pkg := range map[string]string{workerBin: "cmd/worker", devBin: "cmd/dev"} {
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/courier-dev/courier/"+pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a worker process.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

type lockedBuffer = testutil.Buffer

func startWorker(t *testing.T, env ...string) *proc {
	t.Helper()
	return startBinary(t, workerBin, env...)
}

// startBinary starts the worker binary at bin.
func startBinary(t *testing.T, bin string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "COURIER_ADMIN_ADDR=127.0.0.1:0", "COURIER_LOG_LEVEL=debug"}, env...)
	p := &proc{cmd: cmd, out: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("worker output:\n%s", p.out.String())
		}
	})
	return p
}

// wait returns the process's exit error, failing the test after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // keep it for cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("worker still running after %v", timeout)
		return nil
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, what, cond)
}

// setup gives a test its queue on the shared Redis, a simulator and a producer.
type setup struct {
	rdb       *redis.Client
	url       string
	queue     string
	sim       *webextest.Server
	producer  *tasks.Producer
	inspector *asynq.Inspector
}

func newSetup(t *testing.T, rdb *redis.Client, redisURL string) *setup {
	s := &setup{rdb: rdb, url: redisURL, queue: redistest.Name(t), sim: webextest.NewServer(t, webextest.Options{Tokens: map[string]string{"good": "bot"}})}
	s.inspector = asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = s.inspector.DeleteQueue(s.queue, true) })
	redistest.DeleteKeys(t, rdb, "asynq:{"+s.queue+"}:*", "courier:{"+s.queue+"}:*")
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: s.queue})
	if err != nil {
		t.Fatal(err)
	}
	s.producer = p
	return s
}

func sharedSetup(t *testing.T) *setup {
	opt := redistest.Options(t)
	url := fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB)
	if u := os.Getenv("REDIS_URL"); u != "" {
		url = u
	}
	return newSetup(t, redistest.Client(t), url)
}

func (s *setup) env(token string, extra ...string) []string {
	return append([]string{"REDIS_URL=" + s.url, "WEBEX_TOKEN=" + token, "WEBEX_BASE_URL=" + s.sim.URL,
		"COURIER_QUEUES=" + s.queue, "COURIER_TASK_CHECK_INTERVAL=10ms", "COURIER_DELAYED_TASK_CHECK_INTERVAL=100ms",
		"COURIER_INITIAL_DELAY=10ms", "COURIER_REDELIVERY_BASE=1s", "COURIER_REDELIVERY_CAP=1s", "COURIER_UNAUTHORIZED_DELAY=1s",
		"COURIER_LOG_FORMAT=json", "COURIER_GATE_NAMESPACE=courier:{" + s.queue + "}"}, extra...)
}

func (s *setup) enqueue(t *testing.T, room, text string) string {
	t.Helper()
	r, err := s.producer.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: room, Text: text}})
	if err != nil {
		t.Fatal(err)
	}
	return r.TaskID
}

func (s *setup) state(id string) (asynq.TaskState, int) {
	info, err := s.inspector.GetTaskInfo(s.queue, id)
	if err != nil {
		return 0, -1
	}
	return info.State, info.Retried
}

func TestBadConfigurationExits2(t *testing.T) {
	t.Parallel()
	p := startWorker(t, "REDIS_URL=redis://u:topsecret@127.0.0.1:1/zero", "COURIER_CONCURRENCY=many", "COURIER_MAX_DELAY=1ms")
	err := p.wait(t, 10*time.Second)
	out := p.out.String()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2", err)
	}
	for _, want := range []string{"COURIER_CONCURRENCY", "COURIER_MAX_DELAY is 1ms", "REDIS_URL redis://u:xxxxx@", "WEBEX_TOKEN"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "topsecret") {
		t.Fatalf("password printed:\n%s", out)
	}
}

func TestRedisUnreachableExits1(t *testing.T) {
	t.Parallel()
	port, _ := redistest.FreePort()
	p := startWorker(t, fmt.Sprintf("REDIS_URL=redis://:pw-not-shown@127.0.0.1:%d/0", port), "WEBEX_TOKEN=x", "COURIER_REDIS_TIMEOUT=1s")
	err := p.wait(t, 15*time.Second)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1", err)
	}
	if out := p.out.String(); !strings.Contains(out, "unreachable after 1s") || strings.Contains(out, "pw-not-shown") {
		t.Fatalf("output:\n%s", out)
	}
}

// An ACL user in REDIS_URL is honoured (asynq's own URL parser drops it).
func TestACLUser(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, false)
	admin := redis.NewClient(srv.Options())
	defer admin.Close()
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "courier", "on", ">s3cret-pw", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "default", "off").Err(); err != nil {
		t.Fatal(err)
	}
	url := "redis://courier:s3cret-pw@" + srv.Addr + "/0"
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	s := newSetup(t, rdb, url)
	startWorker(t, s.env("good")...)
	id := s.enqueue(t, "r", "via ACL user")
	waitFor(t, 15*time.Second, "delivery", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
}

// SIGKILL mid-delivery: another worker delivers, nothing lost, no
// redelivery used. The lease is moved into the past so asynq's recoverer
// (which runs at server start) reclaims it at once instead of after 30-90 s.
func TestSIGKILLRedelivers(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Room: "slow", Delay: webextest.Duration(time.Minute), Count: 1})
	first := startWorker(t, s.env("good")...)
	id := s.enqueue(t, "slow", "survives a crash")
	waitFor(t, 15*time.Second, "the delivery to start", func() bool { st, _ := s.state(id); return st == asynq.TaskStateActive })
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(t, 10*time.Second)
	// Expire the lease now, as 30 s without heartbeats would.
	if err := s.rdb.ZAdd(context.Background(), "asynq:{"+s.queue+"}:lease", redis.Z{Score: float64(time.Now().Add(-time.Minute).Unix()), Member: id}).Err(); err != nil {
		t.Fatal(err)
	}
	startWorker(t, s.env("good")...)
	waitFor(t, 30*time.Second, "redelivery by the second worker", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	if _, retried := s.state(id); retried != 0 {
		t.Fatalf("a crash used a redelivery: retried = %d", retried)
	}
	if _, acc := s.sim.Counts("slow"); acc != 1 {
		t.Fatalf("accepted %d, want 1", acc)
	}
}

// SIGTERM under load: the worker exits 0 within the shutdown timeout; after
// a restart every message is delivered exactly once.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.AddFault(webextest.Fault{Delay: webextest.Duration(100 * time.Millisecond)})
	const n = 300
	reqs := make([]tasks.Request, n)
	for i := range reqs {
		reqs[i] = tasks.Request{Message: tasks.Message{Message: webex.Message{RoomID: "load", Text: fmt.Sprintf("m%03d", i)}}}
	}
	for _, r := range s.producer.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	w := startWorker(t, s.env("good", "COURIER_CONCURRENCY=20", "COURIER_SHUTDOWN_TIMEOUT=10s", "COURIER_BUDGET=2s")...)
	waitFor(t, 20*time.Second, "some deliveries", func() bool { _, acc := s.sim.Counts("load"); return acc >= 30 })
	start := time.Now()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second+2*time.Second {
		t.Fatalf("stopping took %v, over the 10s shutdown timeout", took)
	}
	_, before := s.sim.Counts("load")
	if before >= n {
		t.Skipf("all %d delivered before SIGTERM took effect; nothing to test", n)
	}
	startWorker(t, s.env("good", "COURIER_CONCURRENCY=20")...)
	waitFor(t, 60*time.Second, "every message", func() bool { _, acc := s.sim.Counts("load"); return acc >= n })
	seen := map[string]int{}
	for _, m := range s.sim.Messages("load") {
		seen[m.Text]++
	}
	for i := range n {
		if c := seen[fmt.Sprintf("m%03d", i)]; c != 1 {
			t.Errorf("m%03d delivered %d times", i, c)
		}
	}
}

// A revoked token: nothing archived, the worker says which bot; a good token: drains.
func TestRevokedTokenHoldsThenDrains(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	s.sim.SetTokens(map[string]string{"other": "x"})
	port, _ := redistest.FreePort()
	admin := fmt.Sprintf("127.0.0.1:%d", port)
	w := startWorker(t, s.env("good", "COURIER_ADMIN_ADDR="+admin)...)
	waitFor(t, 15*time.Second, "not ready, naming the bot", func() bool {
		code, body := get(t, "http://"+admin+"/readyz", "", "")
		return code == 503 && strings.Contains(body, "default")
	})
	ids := []string{s.enqueue(t, "r", "a"), s.enqueue(t, "r", "b")}
	waitFor(t, 15*time.Second, "the rejected-token report", func() bool {
		return strings.Contains(w.out.String(), "Webex rejects the bot's token")
	})
	waitFor(t, 15*time.Second, "tasks held in retry", func() bool {
		st, _ := s.state(ids[0])
		return st == asynq.TaskStateRetry || st == asynq.TaskStateScheduled
	})
	if q, err := s.inspector.GetQueueInfo(s.queue); err != nil || q.Archived != 0 {
		t.Fatalf("archived: %+v %v", q, err)
	}
	s.sim.SetTokens(map[string]string{"good": "bot"})
	for _, id := range ids {
		waitFor(t, 20*time.Second, "drain", func() bool { st, _ := s.state(id); return st == asynq.TaskStateCompleted })
	}
	if code, body := get(t, "http://"+admin+"/readyz", "", ""); code != 200 {
		t.Fatalf("still not ready after the token works: %d %s", code, body)
	}
}

// The relay, switched on by configuration: a bot posts as to Webex, the
// worker delivers, the relay reports the Webex message id.
func TestRelayThroughTheWorker(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	port, _ := redistest.FreePort()
	relayURL := fmt.Sprintf("http://127.0.0.1:%d/v1", port)
	startWorker(t, s.env("good", fmt.Sprintf("COURIER_RELAY_ADDR=127.0.0.1:%d", port), "COURIER_RELAY_TOKENS=relay-secret=default",
		"COURIER_RELAY_QUEUE="+s.queue)...)
	var id string
	waitFor(t, 15*time.Second, "the relay to accept a message", func() bool {
		req, _ := http.NewRequest("POST", relayURL+"/messages", strings.NewReader(`{"roomId":"relay-room","markdown":"**via the relay**"}`))
		req.Header.Set("Authorization", "Bearer relay-secret")
		req.Header.Set("Content-Type", "application/json;charset=utf-8")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var m struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&m)
		id = m.ID
		return resp.StatusCode == 200 && id != ""
	})
	var st struct {
		State      string
		MessageIDs []string
	}
	waitFor(t, 20*time.Second, "the relay to report delivery", func() bool {
		req, _ := http.NewRequest("GET", relayURL+"/messages/"+id, nil)
		req.Header.Set("Authorization", "Bearer relay-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return st.State == "delivered"
	})
	msgs := s.sim.Messages("relay-room")
	if len(msgs) != 1 || msgs[0].Markdown != "**via the relay**" || len(st.MessageIDs) != 1 || st.MessageIDs[0] != msgs[0].ID {
		t.Fatalf("relay status %+v, simulator %+v", st, msgs)
	}
}

// silentWebex accepts connections and never answers; it counts the
// connections open at once.
func silentWebex(t *testing.T) (url string, open func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String() + "/v1", func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

// With Webex silent, the admin server answers while the tokens are being
// checked, and the bots' checks run at once.
func TestStartUpAdminFirstTokensConcurrently(t *testing.T) {
	t.Parallel()
	s := sharedSetup(t)
	webexURL, open := silentWebex(t)
	p := startWorker(t, "REDIS_URL="+s.url, "COURIER_LOG_FORMAT=json", "WEBEX_BASE_URL="+webexURL, "WEBEX_TOKEN=a",
		"COURIER_BOTS=second", "COURIER_BOT_SECOND_TOKEN=b", "COURIER_QUEUES="+s.queue+":1")
	waitFor(t, 10*time.Second, "both token checks under way at once", func() bool { return open() >= 2 })
	// The worker's output comes through a pipe: its line may lag the
	// requests it made after writing it.
	listening := regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+)"`)
	var m []string
	waitFor(t, 10*time.Second, "the admin server's address", func() bool { m = listening.FindStringSubmatch(p.out.String()); return m != nil })
	if code, _ := get(t, m[1]+"/healthz", "", ""); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if strings.Contains(p.out.String(), "could not check the bot's token") {
		t.Fatal("a token check ended before the test looked (Webex is silent: they should still wait)")
	}
}

// An unreachable Redis is reported by its real cause, and go-redis's own
// lines come out as JSON records like the rest.
func TestRedisUnreachableLogsJSON(t *testing.T) {
	t.Parallel()
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := startWorker(t, fmt.Sprintf("REDIS_URL=redis://127.0.0.1:%d/0", port), "COURIER_REDIS_TIMEOUT=2s", "COURIER_LOG_FORMAT=json", "WEBEX_TOKEN=a")
	if err := p.wait(t, 30*time.Second); err == nil {
		t.Fatal("worker started without Redis")
	}
	out := p.out.String()
	if !strings.Contains(out, "connection refused") || strings.Contains(out, "deadline exceeded") {
		t.Errorf("the cause is not named:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !json.Valid([]byte(line)) && !strings.HasPrefix(line, "worker: ") {
			t.Errorf("not a JSON record: %q", line)
		}
	}
}
