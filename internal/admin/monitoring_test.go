package admin_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/internal/admin"
)

// A production worker's admin server has no UI: a bookmark of the old
// embedded asynqmon is told where it went (behind the same auth).
func TestMonitoringPathNamesCmdMonitor(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(admin.Handler(admin.Config{Ready: func(context.Context) error { return nil },
		Gatherer: prometheus.NewRegistry(), User: "ops", Password: "pw"}))
	t.Cleanup(srv.Close)
	for _, path := range []string{"/monitoring/", "/monitoring/api/queues"} {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without credentials: %d", path, resp.StatusCode)
		}
		req.SetBasicAuth("ops", "pw")
		if resp, err = http.DefaultClient.Do(req); err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "cmd/monitor") {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
}
