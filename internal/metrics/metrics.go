// Package metrics exports courier's Prometheus metrics: deliveries by
// outcome, Webex attempts and request latency, in-process waiting,
// enqueue-to-delivery latency and rejected tokens. It implements
// tasks.Observer; asynq's queue metrics of the served queues are registered
// beside it.
package metrics

import (
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Metrics holds courier's collectors.
type Metrics struct {
	deliveries    *prometheus.CounterVec
	attempts      *prometheus.CounterVec
	waited        prometheus.Counter
	latency       prometheus.Histogram
	requests      *prometheus.HistogramVec
	tokenRejected *prometheus.GaugeVec
	throttled     *prometheus.CounterVec
	breaker       *prometheus.GaugeVec
	transitions   *prometheus.CounterVec
	released      *prometheus.CounterVec
	unthreaded    prometheus.Counter

	mu   sync.RWMutex
	bots map[string]bool // registered by Bot: the only bot label values besides "unknown"
}

var _ tasks.Observer = (*Metrics)(nil)

// New registers courier's metrics, asynq's queue metrics of the queues the
// worker serves (queues, by name to priority as in tasks.WorkerConfig;
// through inspector, when not nil: no other queue gets a label) and the Go
// runtime's on reg.
func New(reg prometheus.Registerer, inspector *asynq.Inspector, queues map[string]int) *Metrics {
	m := &Metrics{
		bots: map[string]bool{},
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_deliveries_total",
			Help: "Deliveries by bot and outcome: delivered, delivered_unconfirmed, deduplicated, transient (redelivered), rate_limited, unauthorized, interrupted, deferred, circuit_open, redis_unavailable, task_missing, lease_expired, killed, behind_head, and the dead letters permanent, exhausted, expired, corrupt, poison.",
		}, []string{"bot", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_webex_attempts_total",
			Help: "Requests to create a message, by bot and result (accepted, the HTTP status, or error).",
		}, []string{"bot", "result"}),
		waited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inprocess_wait_seconds_total",
			Help: "Time spent waiting between in-process attempts.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "courier_enqueue_to_delivery_seconds",
			Help:    "Time from enqueue to Webex accepting the message.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600},
		}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "courier_webex_request_seconds",
			Help:    "Webex API request latency by status class (2xx, 4xx, 5xx, error).",
			Buckets: prometheus.DefBuckets,
		}, []string{"class"}),
		tokenRejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "courier_bot_token_rejected",
			Help: "1 while Webex rejects the bot's token (its tasks are held), else 0.",
		}, []string{"bot"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_gate_held_total",
			Help: "Sends held back by the shared gate, by bot and reason (cooldown, circuit_open, rate_limit).",
		}, []string{"bot", "reason"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "courier_circuit_open",
			Help: "1 while this worker last saw the bot's shared circuit breaker open, else 0.",
		}, []string{"bot"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_circuit_transitions_total",
			Help: "Circuit breaker transitions this worker caused, by bot and to (open, closed).",
		}, []string{"bot", "to"}),
		released:   newReleased(),
		unthreaded: newUnthreaded(),
	}
	reg.MustRegister(m.deliveries, m.attempts, m.waited, m.latency, m.requests, m.tokenRejected, m.throttled, m.breaker, m.transitions, m.released, m.unthreaded)
	if inspector != nil {
		reg.MustRegister(newQueueCollector(inspector, queues))
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Bot registers a bot so its token gauge reads 0 before anything happens.
// Only registered bots get a label of their own: any other bot name (a
// producer may put anything in a payload) is counted as "unknown", so the
// number of series stays bounded.
func (m *Metrics) Bot(name string) {
	m.mu.Lock()
	m.bots[name] = true
	m.mu.Unlock()
	m.tokenRejected.WithLabelValues(m.label(name)).Set(0)
}

// UnknownBot is the bot label of every bot name the worker does not know.
const UnknownBot = "unknown"

func (m *Metrics) label(bot string) string {
	m.mu.RLock()
	known := m.bots[bot]
	m.mu.RUnlock()
	switch {
	case !known:
		return UnknownBot
	case bot == "":
		return "default"
	}
	return bot
}

// Outcome counts a delivery.
func (m *Metrics) Outcome(bot string, o tasks.Outcome) {
	m.deliveries.WithLabelValues(m.label(bot), string(o)).Inc()
}

// Attempt counts a request to Webex.
func (m *Metrics) Attempt(bot string, err error) {
	result := "accepted"
	var ae *webex.APIError
	switch {
	case errors.As(err, &ae) && ae.StatusCode >= 100 && ae.StatusCode <= 599:
		result = strconv.Itoa(ae.StatusCode)
	case errors.As(err, &ae):
		result = "other"
	case err != nil:
		result = "error"
	}
	m.attempts.WithLabelValues(m.label(bot), result).Inc()
	if err == nil {
		m.breaker.WithLabelValues(m.label(bot)).Set(0)
	}
}

// Waited adds in-process waiting.
func (m *Metrics) Waited(d time.Duration) { m.waited.Add(d.Seconds()) }

// Delivered observes enqueue-to-delivery latency.
func (m *Metrics) Delivered(d time.Duration) { m.latency.Observe(d.Seconds()) }

// TokenRejected sets the bot's token gauge.
func (m *Metrics) TokenRejected(bot string, rejected bool) {
	v := 0.0
	if rejected {
		v = 1
	}
	m.tokenRejected.WithLabelValues(m.label(bot)).Set(v)
}

// Throttled counts a send the gate held back.
func (m *Metrics) Throttled(bot, reason string) {
	m.throttled.WithLabelValues(m.label(bot), reason).Inc()
	if reason == "circuit_open" {
		m.breaker.WithLabelValues(m.label(bot)).Set(1)
	}
}

// Breaker records a circuit transition.
func (m *Metrics) Breaker(bot string, open bool) {
	to, v := "closed", 0.0
	if open {
		to, v = "open", 1
	}
	m.transitions.WithLabelValues(m.label(bot), to).Inc()
	m.breaker.WithLabelValues(m.label(bot)).Set(v)
}

// Transport wraps rt to observe each Webex request's latency by status class.
func (m *Metrics) Transport(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		start := time.Now()
		resp, err := rt.RoundTrip(r)
		class := "error"
		if err == nil {
			class = strconv.Itoa(resp.StatusCode/100) + "xx"
		}
		m.requests.WithLabelValues(class).Observe(time.Since(start).Seconds())
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
