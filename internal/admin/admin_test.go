package admin_test

import (
	"context"
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

// A form posted from another site cannot change anything, even on a
// writable admin server without auth (dev mode).
func TestCrossOriginRequestsRefused(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	mon, closeMon := monitor.Handler(redisurl.Single(redistest.Options(t)), true)
	t.Cleanup(func() { _ = closeMon() })
	h := admin.Handler(admin.Config{Monitor: mon, Ready: func(context.Context) error { return nil },
		Gatherer: prometheus.NewRegistry(), Writable: true, DeadLetters: tasks.NewDeadLetters(rdb, "courier:{"+queue+"}:deadletters", 10), Producer: p})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	post := func(path string, header map[string]string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+path, strings.NewReader("x=1"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	pause := admin.MonitoringPath + "api/queues/" + queue + ":pause"
	for _, path := range []string{pause, "/deadletters/1-0/requeue"} {
		for _, hdr := range []map[string]string{{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}} {
			if code := post(path, hdr); code != http.StatusForbidden {
				t.Errorf("%s with %v: %d, want 403", path, hdr, code)
			}
		}
	}
	if q, err := insp.GetQueueInfo(queue); err == nil && q.Paused {
		t.Fatal("a cross-site request paused the queue")
	}
	// Same-origin and non-browser requests still work.
	if code := post(pause, map[string]string{"Origin": srv.URL}); code == http.StatusForbidden {
		t.Errorf("same origin: %d", code)
	}
	if code := post("/deadletters/1-0/requeue", nil); code != http.StatusNotFound {
		t.Errorf("curl: %d, want 404 (no such dead letter)", code)
	}
}
