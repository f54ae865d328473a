package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// The worker reads a Sentinel and a Cluster REDIS_URL (the latter also as
// one seed with REDIS_MODE=cluster), becomes ready, delivers, and serves
// asynqmon's view of the queue, with crash recovery and the reconciler on.
func TestWorkerOnSentinelAndCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t)
	sentinel := redistest.StartSentinel(t, 1, 5*time.Second)
	for _, tc := range []struct {
		name, url, mode string
	}{
		{"sentinel", sentinel.URL(), ""},
		{"cluster", cluster.URL(), ""},
		{"cluster, one seed", "redis://" + cluster.Nodes[1].Addr, "cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode, _ := redisurl.ParseMode(tc.mode)
			opt, err := redisurl.Parse(tc.url, mode)
			if err != nil {
				t.Fatal(err)
			}
			rdb := opt.NewClient()
			defer rdb.Close()
			queue := redistest.Name(t)
			sim := webextest.NewServer(t, webextest.Options{Tokens: map[string]string{"good": "bot"}})
			cfg, base := adminConfig(t, tc.url, sim.URL, queue, map[string]string{"REDIS_MODE": tc.mode, "COURIER_GATE_NAMESPACE": "courier"})
			runWorker(t, cfg)
			waitFor(t, 20*time.Second, "readiness", func() bool { code, _ := get(t, base+"/readyz", "", ""); return code == 200 })
			p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: "via " + tc.name}}, tasks.Key("k")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "the delivery", func() bool { return len(sim.Messages("r")) == 1 })
			if code, body := get(t, base+"/monitoring/api/queues", "", ""); code != 200 || !strings.Contains(body, queue) {
				t.Errorf("asynqmon's queues: %d %s", code, body)
			}
		})
	}
}
