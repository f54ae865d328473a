package worker

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// "worker ready" probes the default admin address when COURIER_ADMIN_ADDR
// is unset, and nothing when it is set empty (admin server off).
func TestProbeAddr(t *testing.T) {
	if got := ProbeAddr(env(nil)); got != DefaultAdminAddr {
		t.Errorf("unset: %q", got)
	}
	if got := ProbeAddr(env(map[string]string{"COURIER_ADMIN_ADDR": "0.0.0.0:9090"})); got != "0.0.0.0:9090" {
		t.Errorf("set: %q", got)
	}
	if got := ProbeAddr(env(map[string]string{"COURIER_ADMIN_ADDR": ""})); got != "" {
		t.Errorf("empty: %q", got)
	}
}

func TestProbe(t *testing.T) {
	t.Parallel()
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if code := Probe(addr); code != 0 {
		t.Fatalf("ready worker: exit %d", code)
	}
	ready.Store(false)
	if code := Probe(addr); code != 1 {
		t.Fatalf("unready worker: exit %d", code)
	}
	srv.Close()
	if code := Probe(addr); code != 1 {
		t.Fatalf("no worker: exit %d", code)
	}
	if code := Probe("no-port"); code != 1 {
		t.Fatalf("bad address: exit %d", code)
	}
}
