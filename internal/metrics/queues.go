package metrics

import (
	"maps"
	"slices"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

// queueCollector exports asynq's queue metrics (the names and labels of
// asynq/x/metrics) for the queues the worker serves only: any producer can
// make up a queue in Redis, and a label per queue would let it grow
// /metrics without limit.
type queueCollector struct {
	inspector *asynq.Inspector
	queues    []string
}

func newQueueCollector(inspector *asynq.Inspector, queues map[string]int) *queueCollector {
	return &queueCollector{inspector: inspector, queues: slices.Sorted(maps.Keys(queues))}
}

var (
	tasksQueuedDesc = prometheus.NewDesc("asynq_tasks_enqueued_total", "Number of tasks enqueued; broken down by queue and state.", []string{"queue", "state"}, nil)
	queueSizeDesc   = prometheus.NewDesc("asynq_queue_size", "Number of tasks in a queue", []string{"queue"}, nil)
	queueLatency    = prometheus.NewDesc("asynq_queue_latency_seconds", "Number of seconds the oldest pending task is waiting in pending state to be processed.", []string{"queue"}, nil)
	queueMemory     = prometheus.NewDesc("asynq_queue_memory_usage_approx_bytes", "Number of memory used by a given queue (approximated number by sampling).", []string{"queue"}, nil)
	processedDesc   = prometheus.NewDesc("asynq_tasks_processed_total", "Number of tasks processed (both succeeded and failed); broken down by queue", []string{"queue"}, nil)
	failedDesc      = prometheus.NewDesc("asynq_tasks_failed_total", "Number of tasks failed; broken down by queue", []string{"queue"}, nil)
	pausedDesc      = prometheus.NewDesc("asynq_queue_paused_total", "Number of queues paused", []string{"queue"}, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tasksQueuedDesc, queueSizeDesc, queueLatency, queueMemory, processedDesc, failedDesc, pausedDesc} {
		ch <- d
	}
}

// Collect reads each served queue: one Redis cannot answer for is left out
// of this scrape, and a queue that has had no task yet reads as empty.
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	existing, err := c.inspector.Queues()
	if err != nil {
		return
	}
	for _, q := range c.queues {
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(existing, q) {
			if info, err = c.inspector.GetQueueInfo(q); err != nil {
				continue
			}
		}
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		for state, n := range map[string]int{"active": info.Active, "pending": info.Pending, "scheduled": info.Scheduled,
			"retry": info.Retry, "archived": info.Archived, "completed": info.Completed} {
			gauge(tasksQueuedDesc, float64(n), q, state)
		}
		gauge(queueSizeDesc, float64(info.Size), q)
		gauge(queueLatency, info.Latency.Seconds(), q)
		gauge(queueMemory, float64(info.MemoryUsage), q)
		ch <- prometheus.MustNewConstMetric(processedDesc, prometheus.CounterValue, float64(info.ProcessedTotal), q)
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.CounterValue, float64(info.FailedTotal), q)
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		gauge(pausedDesc, paused, q)
	}
}
