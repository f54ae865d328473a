package metrics

import "github.com/prometheus/client_golang/prometheus"

// Recovered registers courier_recovered_tasks_total on reg and returns the
// function that counts one task taken over from a dead worker.
func Recovered(reg prometheus.Registerer) func(queue string) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "courier_recovered_tasks_total",
		Help: "Tasks of dead workers this worker moved back to pending (fast crash recovery), by queue.",
	}, []string{"queue"})
	reg.MustRegister(c)
	return func(queue string) { c.WithLabelValues(queue).Inc() }
}
