// Package admin is the worker's admin HTTP server: liveness and readiness,
// Prometheus metrics, pprof, the dead-letter record, and the operator UI
// (internal/monitor) where the build mounts it (cmd/dev; cmd/monitor
// serves it alone, behind the same Guard).
//
// It binds to loopback by default. The UI is read-only unless Writable.
// Basic auth, when configured, guards everything but /healthz and /readyz
// (orchestrators probe those without credentials); it is required when the
// server binds beyond loopback writable. Cross-origin browser
// requests that change state (a form posted from another site) are refused
// with 403 (net/http's CrossOriginProtection). Without auth, a request whose
// Host names another site (a DNS name rebound to this address) gets 421.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/courier-dev/courier/pkg/tasks"
)

// MonitoringPath is where Config.Monitor is mounted.
const MonitoringPath = "/monitoring/"

// Config configures the admin server.
type Config struct {
	// Monitor, when set, is mounted at MonitoringPath (internal/monitor).
	Monitor http.Handler
	// Ready reports nil when the worker can deliver, else why not.
	Ready func(context.Context) error
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Writable lets /deadletters change tasks (re-run, delete); Monitor
	// is built writable or not by the caller.
	Writable bool
	// Addr is the listen address (host:port). Without auth, requests must
	// name it, loopback, localhost, an IP address or a single-label name as
	// their Host (DNS rebinding); others get 421.
	Addr string
	// User and Password turn on HTTP basic auth.
	User, Password string
	// DeadLetters and Producer serve the dead-letter record (optional).
	DeadLetters *tasks.DeadLetters
	Producer    *tasks.Producer
}

// CheckBind refuses a writable server beyond loopback without auth;
// setting names the address's setting in the error.
func CheckBind(setting, addr string, writable bool, user string) error {
	if !writable || user != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: %w", setting, addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("%s %q binds beyond loopback writable (re-run and delete tasks): set COURIER_ADMIN_USER and COURIER_ADMIN_PASSWORD (or _FILE)", setting, addr)
}

// Handler builds the admin handler.
func Handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := cfg.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	if cfg.Monitor != nil {
		mux.Handle(MonitoringPath, cfg.Monitor)
	} else {
		// Where the UI was before cmd/monitor: say where it went.
		mux.HandleFunc(MonitoringPath, func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "asynqmon is not part of the worker: the operator UI is cmd/monitor (one for the fleet, COURIER_MONITOR_ADDR; see docs/OPERATIONS.md)", http.StatusNotFound)
		})
	}
	// Go's profiler, for "why is it slow" (behind the same auth).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	if cfg.DeadLetters != nil {
		mux.HandleFunc("GET /deadletters", func(w http.ResponseWriter, r *http.Request) {
			n, _ := strconv.ParseInt(r.URL.Query().Get("count"), 10, 64)
			if n <= 0 || n > 1000 {
				n = 100
			}
			list, err := cfg.DeadLetters.List(r.Context(), n)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			writeJSON(w, http.StatusOK, list)
		})
		mux.HandleFunc("POST /deadletters/{id}/requeue", func(w http.ResponseWriter, r *http.Request) {
			if !cfg.Writable || cfg.Producer == nil {
				http.Error(w, "read-only: start the worker with COURIER_ADMIN_WRITABLE=true to requeue", http.StatusForbidden)
				return
			}
			res, err := cfg.DeadLetters.Requeue(r.Context(), r.PathValue("id"), cfg.Producer)
			switch {
			case errors.Is(err, tasks.ErrDeadLetterNotFound):
				http.Error(w, err.Error(), http.StatusNotFound)
			case errors.Is(err, tasks.ErrDuplicate):
				http.Error(w, err.Error()+": re-run it from the archive in asynqmon", http.StatusConflict)
			case err != nil:
				http.Error(w, err.Error(), http.StatusInternalServerError)
			default:
				writeJSON(w, http.StatusOK, res)
			}
		})
	}
	return Guard(mux, cfg.Addr, cfg.User, cfg.Password)
}

// Guard refuses non-safe cross-origin requests to h and, with user, asks
// for basic auth on everything but /healthz and /readyz; without user, a
// request whose Host names another site than addr gets 421 (hostGuard).
func Guard(h http.Handler, addr, user, password string) http.Handler {
	// Browsers send cross-site form posts (and cached basic-auth
	// credentials) to any address: refuse non-safe cross-origin requests.
	h = http.NewCrossOriginProtection().Handler(h)
	if user != "" {
		return basicAuth(h, user, password)
	}
	return hostGuard(h, addr)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// basicAuth guards h, except the probes.
func basicAuth(h http.Handler, user, password string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			h.ServeHTTP(w, r)
			return
		}
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="courier"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
