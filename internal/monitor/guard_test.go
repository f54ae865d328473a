package monitor_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// The browser guards of the admin servers, on cmd/monitor's server: a
// writable UI refuses a cross-site POST or DELETE (a form or a script of
// another site) while curl's requests go through; without auth, a request
// naming another site's host (DNS rebinding) gets 421, but not the probes.
func TestMonitorRefusesCrossSiteAndForeignHost(t *testing.T) {
	t.Parallel()
	queue, insp := queueWith(t, tasks.Message{Message: webex.Message{RoomID: "r", Text: "x"}})
	base := serve(t, map[string]string{"REDIS_URL": redisURL(t), "COURIER_ADMIN_WRITABLE": "true"})
	deleteAll := base + "/monitoring/api/queues/" + queue + "/pending_tasks:delete_all"
	for _, h := range []map[string]string{{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}} {
		if code, body := do(t, "DELETE", deleteAll, "", h); code != http.StatusForbidden {
			t.Errorf("cross-site DELETE %v: %d %s", h, code, body)
		}
		if code, body := do(t, "POST", base+"/monitoring/api/queues/"+queue+":pause", "", h); code != http.StatusForbidden {
			t.Errorf("cross-site POST %v: %d %s", h, code, body)
		}
	}
	if n, err := insp.GetQueueInfo(queue); err != nil || n.Pending != 1 || n.Paused {
		t.Fatalf("queue after the refused requests: %+v %v", n, err)
	}
	for _, path := range []string{"/", "/monitoring/", "/monitoring/api/queues", "/monitoring/api/redis_info"} {
		if code, _ := do(t, "GET", base+path, "evil.example:8090", nil); code != http.StatusMisdirectedRequest {
			t.Errorf("GET %s for a foreign host: %d", path, code)
		}
	}
	if code, _ := do(t, "DELETE", deleteAll, "evil.example", nil); code != http.StatusMisdirectedRequest {
		t.Errorf("DELETE for a foreign host: %d", code)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := do(t, "GET", base+path, "evil.example", nil); code != 200 {
			t.Errorf("%s for a foreign host: %d", path, code)
		}
	}
	for _, host := range []string{"localhost:8090", "monitor:8090", "127.0.0.1"} {
		if code, _ := do(t, "GET", base+"/monitoring/api/queues", host, nil); code != 200 {
			t.Errorf("GET for host %s: %d", host, code)
		}
	}
	if code, body := do(t, "DELETE", deleteAll, "", nil); code/100 != 2 { // curl: no Origin, no Sec-Fetch-Site
		t.Fatalf("same-origin DELETE: %d %s", code, body)
	}
}

// Redis's password never shows: not in the start-up log, not on any page
// of the UI (asynqmon's Redis info, queues, servers, tasks), not on
// /readyz, nor when the password is wrong.
func TestMonitorNeverShowsRedisPassword(t *testing.T) {
	t.Parallel()
	const pw = "Mk7Secret9Zq"
	srv := redistest.Start(t, false)
	rdb := redis.NewClient(srv.Options())
	if err := rdb.ConfigSet(context.Background(), "requirepass", pw).Err(); err != nil {
		t.Fatal(err)
	}
	_ = rdb.Close()
	opt := srv.Options()
	opt.Password = pw
	rdb = redis.NewClient(opt)
	defer rdb.Close()
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: "x"}}); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	var shown string
	for _, url := range []string{"redis://:" + pw + "@" + srv.Addr + "/0", "redis://:wrong" + pw[:4] + "@" + srv.Addr + "/0"} {
		base, stop := start(t, map[string]string{"REDIS_URL": url, "COURIER_ADMIN_USER": "ops", "COURIER_ADMIN_PASSWORD": "pw"},
			slog.New(slog.NewJSONHandler(logs, nil)))
		for _, path := range []string{"/readyz", "/monitoring/", "/monitoring/api/redis_info", "/monitoring/api/queues",
			"/monitoring/api/servers", "/monitoring/api/queues/q/pending_tasks"} {
			code, body := request(t, "GET", base+path, "ops", "pw")
			if code != 200 && !strings.Contains(url, "wrong") {
				t.Errorf("%s: %d %s", path, code, body)
			}
			shown += body
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	shown += logs.String()
	if !strings.Contains(shown, "WRONGPASS") {
		t.Errorf("the wrong password's error is not shown:\n%s", shown)
	}
	for i := 0; i+4 <= len(pw); i++ {
		if strings.Contains(shown, pw[i:i+4]) {
			t.Fatalf("%q shows: %s", pw[i:i+4], shown)
		}
	}
}
