package admin_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/internal/admin"
	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/tasks"
)

// A page on evil.example whose name is rebound to 127.0.0.1 talks to the
// admin server as the same origin: without auth, its Host header is
// refused, so it can neither pause a queue nor read dead letters.
func TestForeignHostRefusedWithoutAuth(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	mon, closeMon := monitor.Handler(redisurl.Single(redistest.Options(t)), true)
	t.Cleanup(func() { _ = closeMon() })
	h := admin.Handler(admin.Config{Monitor: mon, Ready: func(context.Context) error { return nil },
		Gatherer: prometheus.NewRegistry(), Writable: true, Addr: "127.0.0.1:18916",
		DeadLetters: tasks.NewDeadLetters(rdb, "courier:{"+queue+"}:deadletters", 10), Producer: p})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	do := func(method, path, host string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		req.Host = host
		if method == "POST" {
			req.Header.Set("Origin", "http://"+host)
			req.Header.Set("Sec-Fetch-Site", "same-origin")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pause := admin.MonitoringPath + "api/queues/" + queue + ":pause"
	for _, host := range []string{"evil.example:18916", "evil.example", "127.0.0.1.evil.example:18916"} {
		if code, body := do("POST", pause, host); code != http.StatusMisdirectedRequest || !strings.Contains(body, "COURIER_ADMIN_USER") {
			t.Errorf("pause with Host %s: %d %q, want 421 naming COURIER_ADMIN_USER", host, code, body)
		}
		if code, _ := do("GET", "/deadletters", host); code != http.StatusMisdirectedRequest {
			t.Errorf("dead letters with Host %s: %d, want 421", host, code)
		}
		if code, _ := do("GET", "/healthz", host); code != http.StatusOK {
			t.Errorf("healthz with Host %s: %d, want 200 (probes answer any Host)", host, code)
		}
	}
	if q, err := insp.GetQueueInfo(queue); err == nil && q.Paused {
		t.Fatal("a rebound page paused the queue")
	}
	for _, host := range []string{"127.0.0.1:18916", "localhost:18916", "[::1]:18916", "10.1.2.3:8080", "worker:8080", "app.localhost"} {
		if code, _ := do("GET", "/deadletters", host); code != http.StatusOK {
			t.Errorf("dead letters with Host %s: %d, want 200", host, code)
		}
	}
	// With auth, the credentials are the guard: any Host.
	h2 := admin.Handler(admin.Config{Ready: func(context.Context) error { return nil },
		Gatherer: prometheus.NewRegistry(), User: "admin", Password: "pw", DeadLetters: tasks.NewDeadLetters(rdb, "courier:{"+queue+"}:deadletters", 10)})
	req := httptest.NewRequest("GET", "/deadletters", nil)
	req.Host = "courier.example.com"
	req.SetBasicAuth("admin", "pw")
	rec := httptest.NewRecorder()
	h2.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("with auth, Host courier.example.com: %d, want 200", rec.Code)
	}
}
