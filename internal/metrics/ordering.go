package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/pkg/tasks"
)

var _ tasks.OrderingObserver = (*Metrics)(nil)

// newReleased is the counter of ordered messages released past a head that
// was not delivered.
func newReleased() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "courier_ordered_released_total",
		Help: "Ordered messages released because the message ahead of them left undelivered, by queue and reason: dead_letter (dead-lettered by a worker) or reconciled (deleted, or archived by asynq, found by the reconciler).",
	}, []string{"queue", "reason"})
}

// newUnthreaded is the counter of replies sent outside their thread.
func newUnthreaded() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "courier_replies_unthreaded_total",
		Help: "Replies to a relayed message sent without a thread because the parent had no Webex id (dead-lettered, no longer retained, or unknown).",
	})
}

// ReplyUnthreaded counts a reply sent outside its parent's thread.
func (m *Metrics) ReplyUnthreaded(string) { m.unthreaded.Inc() }

// SuccessorReleased counts an ordered message released past a head that was
// not delivered.
func (m *Metrics) SuccessorReleased(queue, reason string) {
	m.released.WithLabelValues(queue, reason).Inc()
}
