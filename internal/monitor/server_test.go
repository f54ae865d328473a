package monitor_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// serve runs cmd/monitor's server on a free port until the test ends and
// returns its base URL.
func serve(t *testing.T, env map[string]string) string {
	t.Helper()
	base, _ := start(t, env, slog.New(slog.DiscardHandler))
	return base
}

// start runs cmd/monitor's server on a free port, logging to log, and
// returns its base URL and what stops it (once; the test's end stops it
// otherwise), reporting Run's error.
func start(t *testing.T, env map[string]string, log *slog.Logger) (string, func() error) {
	t.Helper()
	cfg, err := monitor.Load([]string{"-addr", "127.0.0.1:0"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- monitor.Run(ctx, cfg, log, func(a string) { addr <- a }) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case a := <-addr:
		return "http://" + a, stop
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("monitor did not listen")
	}
	return "", nil
}

// queueWith enqueues m on a queue of its own on the test Redis.
func queueWith(t *testing.T, m tasks.Message) (string, *asynq.Inspector) {
	t.Helper()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Enqueue(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return queue, insp
}

func redisURL(t *testing.T) string {
	o := redistest.Options(t)
	return fmt.Sprintf("redis://%s/%d", o.Addr, o.DB)
}

// request sends method to url, with basic auth when user is set.
func request(t *testing.T, method, url, user, pw string) (int, string) {
	t.Helper()
	var header map[string]string
	if user != "" {
		header = map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))}
	}
	return do(t, method, url, "", header)
}

// do sends method to url with Host host (when set) and the extra headers,
// following no redirect.
func do(t *testing.T, method, url, host string, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The fleet's UI: the workers' queues, a send task's file shown by name
// and size only, read-only unless writable, / leading to the UI.
func TestMonitorShowsQueuesReadOnly(t *testing.T) {
	t.Parallel()
	queue, insp := queueWith(t, tasks.Message{Message: webex.Message{RoomID: "r", Text: "x"},
		Uploads: []webex.File{{Name: "secret.pdf", ContentType: "application/pdf", Data: []byte("TOP-SECRET-FILE-CONTENT")}}})
	base := serve(t, map[string]string{"REDIS_URL": redisURL(t)})
	if code, body := request(t, "GET", base+"/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Fatalf("healthz %d %q", code, body)
	}
	if code, _ := request(t, "GET", base+"/", "", ""); code != http.StatusFound {
		t.Errorf("/: %d, want a redirect to %s", code, monitor.Path)
	}
	if code, body := request(t, "GET", base+"/monitoring/", "", ""); code != 200 || !strings.Contains(body, "<html") {
		t.Fatalf("UI page %d", code)
	}
	code, body := request(t, "GET", base+"/monitoring/api/queues/"+queue+"/pending_tasks", "", "")
	if code != 200 || !strings.Contains(body, "secret.pdf") || strings.Contains(body, "TOP-SECRET") || strings.Contains(body, "VE9QLVNFQ1JFVA") {
		t.Fatalf("pending tasks %d %s", code, body)
	}
	if code, _ := request(t, "DELETE", base+"/monitoring/api/queues/"+queue+"/pending_tasks:delete_all", "", ""); code/100 == 2 {
		t.Fatalf("read-only UI deleted the pending tasks: %d", code)
	}
	if n, err := insp.GetQueueInfo(queue); err != nil || n.Pending != 1 {
		t.Fatalf("queue after the refused delete: %+v %v", n, err)
	}
}

// With a user, everything but /healthz asks for the password; writable, the
// UI changes tasks.
func TestMonitorBasicAuthAndWritable(t *testing.T) {
	t.Parallel()
	queue, insp := queueWith(t, tasks.Message{Message: webex.Message{RoomID: "r", Text: "x"}})
	base := serve(t, map[string]string{"REDIS_URL": redisURL(t),
		"COURIER_ADMIN_USER": "ops", "COURIER_ADMIN_PASSWORD": "pw", "COURIER_ADMIN_WRITABLE": "true"})
	if code, _ := request(t, "GET", base+"/healthz", "", ""); code != 200 {
		t.Errorf("healthz without credentials: %d", code)
	}
	for _, path := range []string{"/monitoring/", "/monitoring/api/queues"} {
		if code, _ := request(t, "GET", base+path, "", ""); code != 401 {
			t.Errorf("%s without credentials: %d", path, code)
		}
		if code, _ := request(t, "GET", base+path, "ops", "wrong"); code != 401 {
			t.Errorf("%s with a wrong password: %d", path, code)
		}
		if code, _ := request(t, "GET", base+path, "ops", "pw"); code != 200 {
			t.Errorf("%s with credentials: %d", path, code)
		}
	}
	if code, body := request(t, "DELETE", base+"/monitoring/api/queues/"+queue+"/pending_tasks:delete_all", "ops", "pw"); code/100 != 2 {
		t.Fatalf("writable delete: %d %s", code, body)
	}
	if n, err := insp.GetQueueInfo(queue); err != nil || n.Pending != 0 {
		t.Fatalf("queue after the delete: %+v %v", n, err)
	}
}

// Every problem at once, each naming its setting; the Redis password
// never shown.
func TestMonitorConfigurationErrors(t *testing.T) {
	env := map[string]string{"REDIS_URL": "redis://u:topsecret@127.0.0.1:1/zero", "COURIER_MONITOR_ADDR": "0.0.0.0:8090",
		"COURIER_ADMIN_WRITABLE": "true", "REDIS_MODE": "ring", "COURIER_LOG_FORMAT": "xml", "COURIER_LOG_LEVEL": "loud"}
	_, err := monitor.Load(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"REDIS_MODE", "REDIS_URL redis://u:xxxxx@", `COURIER_MONITOR_ADDR "0.0.0.0:8090" binds beyond loopback writable`, "COURIER_ADMIN_USER",
		`COURIER_LOG_FORMAT "xml"`, "COURIER_LOG_LEVEL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error shows the password: %v", err)
	}
	_, err = monitor.Load(nil, func(k string) (string, bool) {
		v, ok := map[string]string{"COURIER_ADMIN_USER": "ops"}[k]
		return v, ok
	})
	if err == nil || !strings.Contains(err.Error(), "COURIER_ADMIN_PASSWORD") {
		t.Fatalf("user without password: %v", err)
	}
	// An empty address is refused (it would listen on every interface),
	// as is one without a port.
	for _, addr := range []string{"", "8090"} {
		_, err = monitor.Load(nil, func(k string) (string, bool) {
			v, ok := map[string]string{"COURIER_MONITOR_ADDR": addr}[k]
			return v, ok
		})
		if err == nil || !strings.Contains(err.Error(), "COURIER_MONITOR_ADDR") {
			t.Errorf("COURIER_MONITOR_ADDR=%q: %v", addr, err)
		}
	}
	// A stray argument is the one problem: the settings are still read.
	_, err = monitor.Load([]string{"bogus"}, func(string) (string, bool) { return "", false })
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "bogus"`) || strings.Contains(err.Error(), "REDIS_URL") {
		t.Fatalf("a stray argument: %v", err)
	}
}
