package webextest

import (
	"encoding/json"
	"net/http"
	"time"
)

// RateLimit is the control API's rate-limit setting.
type RateLimit struct {
	RPS        float64  `json:"rps"` // 0 turns the limit off
	Burst      int      `json:"burst"`
	RetryAfter Duration `json:"retryAfter"`
}

// Latency is the control API's latency setting (SetLatency).
type Latency struct {
	Latency Duration `json:"latency"` // 0 turns it off
}

// Stats is the control API's summary per destination.
type Stats struct {
	Requests int `json:"requests"`
	Accepted int `json:"accepted"`
}

// ControlHandler serves the simulator's controls, for cmd/webexsim and
// tools in other processes (no auth: bind the simulator to loopback):
//
//	POST   /_sim/faults     add a Fault (JSON body)
//	DELETE /_sim/faults     clear faults and the rate limit
//	PUT    /_sim/ratelimit  set a RateLimit (JSON body)
//	PUT    /_sim/latency    hold every POST /messages answer ({"latency": "2s"}; 0: off)
//	PUT    /_sim/tokens     replace the accepted tokens ({"token": "bot"})
//	POST   /_sim/reset      forget messages, log and counts; clear faults,
//	                        the rate limit and the latency
//	GET    /_sim/requests   the request log (?room= to filter)
//	GET    /_sim/messages   accepted messages (?room= to filter)
//	GET    /_sim/stats      {"total": Stats, "rooms": {room: Stats}}
func (s *Sim) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if !decode(w, r, &f) {
			return
		}
		if f.Drop != "" && f.Drop != "before" && f.Drop != "after" && f.Drop != "partial" {
			http.Error(w, `drop: want "before", "after" or "partial"`, http.StatusBadRequest)
			return
		}
		s.AddFault(f)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /_sim/ratelimit", func(w http.ResponseWriter, r *http.Request) {
		var rl RateLimit
		if !decode(w, r, &rl) {
			return
		}
		s.SetRateLimit(rl.RPS, rl.Burst, rl.RetryAfter.D())
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /_sim/latency", func(w http.ResponseWriter, r *http.Request) {
		var l Latency
		if !decode(w, r, &l) {
			return
		}
		if l.Latency < 0 {
			http.Error(w, "latency: must not be negative", http.StatusBadRequest)
			return
		}
		s.SetLatency(l.Latency.D())
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /_sim/tokens", func(w http.ResponseWriter, r *http.Request) {
		var tokens map[string]string
		if !decode(w, r, &tokens) {
			return
		}
		s.SetTokens(tokens)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_sim/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_sim/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(s.Requests(r.URL.Query().Get("room"))))
	})
	mux.HandleFunc("GET /_sim/messages", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(s.Messages(r.URL.Query().Get("room"))))
	})
	mux.HandleFunc("GET /_sim/stats", func(w http.ResponseWriter, r *http.Request) {
		total, rooms := s.Stats()
		writeJSON(w, http.StatusOK, map[string]any{"total": total, "rooms": rooms})
	})
	return mux
}

// D is the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		http.Error(w, "bad body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}
