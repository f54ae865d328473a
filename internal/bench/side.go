package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/tasks"
)

// Side is one of the two pipelines measured.
type Side string

// The sides.
const (
	Bare    Side = "bare"    // asynq with a handler that POSTs the message to the simulator
	Courier Side = "courier" // courier's worker binary
)

// StartWorker runs a worker of side over queue with concurrency c. Courier
// runs with its defaults but for the queue and concurrency; bare asynq runs
// with asynq's defaults.
func (e *Env) StartWorker(side Side, queue string, c int, extraEnv ...string) (*Proc, error) {
	if side == Courier {
		env := append([]string{"REDIS_URL=redis://" + e.Redis.Addr + "/0", "WEBEX_TOKEN=" + Token, "WEBEX_BASE_URL=" + e.SimURL,
			"COURIER_QUEUES=" + queue, "COURIER_CONCURRENCY=" + strconv.Itoa(c), "COURIER_ADMIN_ADDR=", "COURIER_LOG_LEVEL=warn",
			"COURIER_LOG_FORMAT=json"}, extraEnv...)
		return Start(e.Log, e.WorkerBin, nil, env)
	}
	return Start(e.Log, e.BenchBin, []string{"bare-worker", "-redis", e.Redis.Addr, "-queue", queue, "-concurrency", strconv.Itoa(c), "-sim", e.SimURL}, nil)
}

// RunBareWorker is the bare asynq worker process: decode the payload, POST
// the message as JSON to the simulator, fail on anything but 200.
func RunBareWorker(redisAddr, queue string, concurrency int, simURL string) error {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, PoolSize: concurrency + 10})
	defer rdb.Close()
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: concurrency + 10}}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: concurrency, Queues: map[string]int{queue: 1}, LogLevel: asynq.WarnLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeSend, func(ctx context.Context, t *asynq.Task) error {
		var p tasks.Payload
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return fmt.Errorf("%v: %w", err, asynq.SkipRetry)
		}
		body, _ := json.Marshal(p.Message.Message)
		req, _ := http.NewRequestWithContext(ctx, "POST", simURL+"/messages", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+Token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	if err := srv.Start(mux); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	srv.Shutdown()
	return nil
}
