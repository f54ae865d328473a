package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/worker"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Redis's password never shows: not in the worker's log at debug level
// (start-up, the probe, deliveries, a dead letter), not in the admin
// server's pages (asynqmon's Redis info and queues, the dead letters,
// metrics, readiness), not in the start-up errors of a wrong password or
// of a URL whose password= is cut short by an unencoded '&' or '#'.
func TestRedisPasswordNeverShown(t *testing.T) {
	t.Parallel()
	const pw = "Mk7Secret9Zq"
	srv := redistest.Start(t, false)
	admin := redis.NewClient(srv.Options())
	if err := admin.ConfigSet(context.Background(), "requirepass", pw).Err(); err != nil {
		t.Fatal(err)
	}
	_ = admin.Close()
	opt := srv.Options()
	opt.Password = pw
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	url := "redis://:" + pw + "@" + srv.Addr + "/0"
	s := newSetup(t, rdb, url)
	cfg, base := adminConfig(t, url, s.sim.URL, s.queue, map[string]string{"LOG_LEVEL": "debug"})
	logs := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, 20*time.Second, "readiness", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 200 })
	if _, err := s.producer.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: "ok"}}); err != nil {
		t.Fatal(err)
	}
	s.sim.AddFault(webextest.Fault{Room: "dl", Status: 404, Count: 1})
	if _, err := s.producer.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "dl", Text: "x"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the delivery", func() bool { return len(s.sim.Messages("r")) == 1 })
	waitFor(t, 20*time.Second, "the dead letter", func() bool {
		archived, _ := s.inspector.ListArchivedTasks(s.queue)
		return len(archived) == 1
	})
	shown := logs.String()
	for _, path := range []string{"/readyz", "/healthz", "/metrics", "/deadletters", "/monitoring/api/redis_info", "/monitoring/api/queues",
		"/monitoring/api/servers", "/monitoring/api/queues/" + s.queue + "/archived_tasks", "/debug/pprof/"} {
		code, body := get(t, base+path, "", "")
		if code != 200 {
			t.Errorf("%s: %d", path, code)
		}
		shown += body
	}
	for _, bad := range []string{"redis://:wrong" + pw[:3] + "@" + srv.Addr + "/0", // a wrong password: the error is the server's
		"redis://" + srv.Addr + "/0?password=" + pw[:6] + "&" + pw[6:],
		"redis://" + srv.Addr + "/0?password=" + pw[:6] + "#" + pw[6:]} {
		c, _ := adminConfig(t, url, s.sim.URL, s.queue, nil)
		c.RedisURL = bad
		err := worker.Run(context.Background(), c, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err == nil {
			t.Errorf("%s: no error", bad)
			continue
		}
		shown += err.Error()
	}
	shown += logs.String()
	for i := 0; i+4 <= len(pw); i++ {
		if strings.Contains(shown, pw[i:i+4]) {
			t.Fatalf("%q shows: %s", pw[i:i+4], shown)
		}
	}
}
