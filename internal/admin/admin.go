// Package admin is the worker's admin HTTP server: liveness and readiness,
// Prometheus metrics, the asynqmon UI, and the dead-letter record.
//
// It binds to loopback by default. asynqmon is read-only unless Writable.
// Basic auth, when configured, guards everything but /healthz and /readyz
// (orchestrators probe those without credentials); it is required when the
// server binds beyond loopback with asynqmon writable. Cross-origin browser
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

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/courier-dev/courier/pkg/tasks"
)

// MonitoringPath is where asynqmon is mounted.
const MonitoringPath = "/monitoring/"

// Config configures the admin server.
type Config struct {
	// Redis is where asynqmon looks (it keeps its own connections).
	Redis asynq.RedisConnOpt
	// Ready reports nil when the worker can deliver, else why not.
	Ready func(context.Context) error
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Writable lets asynqmon and /deadletters change tasks (re-run, delete).
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

// CheckBind refuses a writable admin server beyond loopback without auth.
func CheckBind(addr string, writable bool, user string) error {
	if !writable || user != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("COURIER_ADMIN_ADDR %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("COURIER_ADMIN_ADDR %q binds beyond loopback with asynqmon writable: set COURIER_ADMIN_USER and COURIER_ADMIN_PASSWORD (or _FILE)", addr)
}

// Handler builds the admin handler; close releases asynqmon's connections.
func Handler(cfg Config) (h http.Handler, closeFn func() error) {
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
	mon := asynqmon.New(asynqmon.Options{
		RootPath:         MonitoringPath,
		RedisConnOpt:     cfg.Redis,
		ReadOnly:         !cfg.Writable,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatPayload),
	})
	mux.Handle(MonitoringPath, mon)
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
	// Browsers send cross-site form posts (and cached basic-auth
	// credentials) to any address: refuse non-safe cross-origin requests.
	var handler http.Handler = http.NewCrossOriginProtection().Handler(mux)
	if cfg.User != "" {
		handler = basicAuth(handler, cfg.User, cfg.Password)
	} else {
		handler = hostGuard(handler, cfg.Addr)
	}
	return handler, mon.Close
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

// FormatPayload shows a send task's payload in asynqmon with inline file
// contents elided (name and size only). Other payloads show as they are.
func FormatPayload(taskType string, payload []byte) string {
	if taskType != tasks.TypeSend {
		return string(payload)
	}
	p, err := tasks.DecodePayload(payload)
	if p == nil {
		return fmt.Sprintf("(unreadable payload, %d bytes: %v)", len(payload), err)
	}
	type elided struct {
		Name        string `json:"name"`
		ContentType string `json:"contentType,omitempty"`
		Size        int    `json:"size"`
	}
	files := make([]elided, len(p.Message.Uploads))
	for i, f := range p.Message.Uploads {
		files[i] = elided{f.Name, f.ContentType, len(f.Data)}
	}
	p.Message.Uploads = nil
	out := struct {
		*tasks.Payload
		Uploads []elided `json:"uploads,omitempty"`
	}{p, files}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Sprintf("(payload, %d bytes)", len(payload))
	}
	return string(b)
}
