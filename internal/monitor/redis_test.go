package monitor_test

import (
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/testutil"
	"github.com/courier-dev/courier/internal/worker"
)

// lockedBuffer is a log destination that Run's goroutines and the test
// share.
type lockedBuffer = testutil.Buffer

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, within, what, cond)
}

// Redis down at start, back, then hung: the monitor starts anyway and
// says so (a warning, /readyz 503 with the cause, go-redis's lines as
// records of its log), the UI answers with Redis's error rather than
// hanging, /readyz recovers with Redis, and a stop while Redis hangs and a
// UI request waits on it is bounded. Not parallel: go-redis's logger is
// process-wide.
func TestMonitorRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t, false)
	srv.Kill()
	logs := &lockedBuffer{}
	base, stop := start(t, map[string]string{"REDIS_URL": "redis://" + srv.Addr + "/0"}, slog.New(slog.NewJSONHandler(logs, nil)))
	waitFor(t, 10*time.Second, "start-up warning", func() bool { return strings.Contains(logs.String(), "redis not answering") })
	if code, _ := request(t, "GET", base+"/healthz", "", ""); code != 200 {
		t.Errorf("healthz with Redis down: %d", code)
	}
	if code, body := request(t, "GET", base+"/readyz", "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("readyz with Redis down: %d %q", code, body)
	}
	addr := strings.TrimPrefix(base, "http://")
	if code := worker.Probe(addr); code != 1 { // "monitor ready", the compose health check
		t.Errorf("monitor ready with Redis down: exit %d", code)
	}
	if code, body := request(t, "GET", base+"/monitoring/api/queues", "", ""); code != http.StatusInternalServerError || !strings.Contains(body, "connection refused") {
		t.Errorf("the UI's queues with Redis down: %d %q", code, body)
	}
	waitFor(t, 10*time.Second, "go-redis's line as a record", func() bool { return strings.Contains(logs.String(), `"msg":"redis client"`) })

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "readiness once Redis is back", func() bool { code, _ := request(t, "GET", base+"/readyz", "", ""); return code == 200 })
	if code := worker.Probe(addr); code != 0 {
		t.Errorf("monitor ready with Redis back: exit %d", code)
	}
	if code, _ := request(t, "GET", base+"/monitoring/api/queues", "", ""); code != 200 {
		t.Errorf("the UI's queues with Redis back: %d", code)
	}

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Resume() })
	if code, body := request(t, "GET", base+"/readyz", "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "no answer within") {
		t.Errorf("readyz with Redis hung: %d %q", code, body)
	}
	inFlight, wrote := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(inFlight)
		req, _ := http.NewRequest("GET", base+"/monitoring/api/queues", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) }}))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}()
	<-wrote
	began := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if took := time.Since(began); took > 8*time.Second {
		t.Errorf("stop with Redis hung took %v", took)
	}
	<-inFlight
}
