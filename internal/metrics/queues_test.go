package metrics_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/internal/metrics"
	"github.com/courier-dev/courier/internal/redistest"
)

// Any producer can make up queues in Redis (asynq's client takes any
// name): /metrics labels only the queues the worker serves, so the number
// of series stays bounded whatever is in Redis.
func TestQueueMetricsOnlyForServedQueues(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	served, idle := redistest.Name(t), redistest.Name(t)
	client := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	var queues []string
	for i := range 50 {
		queues = append(queues, fmt.Sprintf("%s-%d-%s", served, i, strings.Repeat("q", 300)))
	}
	queues = append(queues, served)
	for _, q := range queues {
		if _, err := client.Enqueue(asynq.NewTask("courier:send", []byte("{}")), asynq.Queue(q)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = insp.DeleteQueue(q, true) })
	}
	reg := prometheus.NewRegistry()
	metrics.New(reg, insp, map[string]int{served: 2, idle: 1})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	perQueue := map[string]int{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" {
					perQueue[l.GetValue()]++
				}
			}
		}
	}
	// asynq's families: 6 states of tasks_enqueued_total, then size,
	// latency, memory, processed, failed and paused.
	if len(perQueue) != 2 || perQueue[served] != 12 || perQueue[idle] != 12 {
		t.Fatalf("queue label series: %d queues (%v), want 12 series for each of the 2 served queues", len(perQueue), perQueue[served])
	}
	for _, mf := range mfs {
		if mf.GetName() != "asynq_queue_size" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if want := map[string]float64{served: 1, idle: 0}[m.GetLabel()[0].GetValue()]; m.GetGauge().GetValue() != want {
				t.Errorf("asynq_queue_size{queue=%q} = %v, want %v", m.GetLabel()[0].GetValue(), m.GetGauge().GetValue(), want)
			}
		}
	}
}
