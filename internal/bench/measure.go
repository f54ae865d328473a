package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

func message(i int) tasks.Message {
	return tasks.Message{Message: webex.Message{RoomID: "bench-room", Markdown: fmt.Sprintf("**load** message %06d", i)}}
}

// producer returns a Producer over the bench Redis with no retention, as the
// bare side (asynq's default keeps nothing either).
func (e *Env) producer(queue string) (*tasks.Producer, func(), error) {
	rdb := e.Client()
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, Retention: -1})
	return p, func() { _ = rdb.Close() }, err
}

func (e *Env) fill(queue string, n int) error {
	p, done, err := e.producer(queue)
	if err != nil {
		return err
	}
	defer done()
	reqs := make([]tasks.Request, n)
	for i := range reqs {
		reqs[i] = tasks.Request{Message: message(i)}
	}
	for _, r := range p.EnqueueMany(context.Background(), reqs) {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

func (e *Env) dropQueue(queue string) {
	rdb := e.Client()
	defer rdb.Close()
	_ = asynq.NewInspectorFromRedisClient(rdb).DeleteQueue(queue, true)
	iter := rdb.Scan(context.Background(), 0, "courier:{"+queue+"}:*", 1000).Iterator()
	for iter.Next(context.Background()) {
		rdb.Del(context.Background(), iter.Val())
	}
}

// waitAccepted polls the simulator until n messages were accepted.
func (e *Env) waitAccepted(n int, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		if _, acc := e.Sim.Totals(); acc >= n {
			return nil
		}
		if time.Now().After(deadline) {
			_, acc := e.Sim.Totals()
			return fmt.Errorf("only %d of %d delivered after %v", acc, n, timeout)
		}
	}
}

// DrainResult is one drain run.
type DrainResult struct {
	PerSec  float64
	PeakRSS int64
	CPU     time.Duration // the worker's CPU time, start-up included
	// RedisCPU is Redis's CPU time from the worker's start to the last
	// message accepted; SimCPU the bench process's (the Webex simulator,
	// which answers every request) over the same span.
	RedisCPU, SimCPU time.Duration
	// PeakAnon and PeakFile are the highest anonymous memory (heap,
	// stacks) and file pages (the binary) seen in the worker's resident
	// set, sampled every 20 ms.
	PeakAnon, PeakFile int64
}

// Drain fills a queue with n messages, starts a worker of side and measures
// messages per second from the first request to the last acceptance.
func (e *Env) Drain(side Side, n, concurrency int) (DrainResult, error) {
	return e.drainWith(side, n, concurrency, nil)
}

// drainWith is Drain with extra environment for the worker; during, when
// set, runs while it drains, with the worker's admin address.
func (e *Env) drainWith(side Side, n, concurrency int, during func(admin string), extra ...string) (DrainResult, error) {
	queue := fmt.Sprintf("bench-drain-%s-%d", side, time.Now().UnixNano())
	defer e.dropQueue(queue)
	if err := e.fill(queue, n); err != nil {
		return DrainResult{}, err
	}
	e.Sim.Reset()
	redis0, sim0 := e.Redis.CPU(), processCPU(os.Getpid())
	p, err := e.StartWorker(side, queue, concurrency, extra...)
	if err != nil {
		return DrainResult{}, err
	}
	if during != nil {
		go during(adminAddr(extra))
	}
	var res DrainResult
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			anon, file := p.Memory()
			res.PeakAnon, res.PeakFile = max(res.PeakAnon, anon), max(res.PeakFile, file)
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()
	err = e.waitAccepted(n, 5*time.Minute)
	res.RedisCPU, res.SimCPU = e.Redis.CPU()-redis0, processCPU(os.Getpid())-sim0
	res.PeakRSS, res.CPU = p.PeakRSS(), p.CPU()
	close(stopSampling)
	<-sampled
	p.Stop(30 * time.Second)
	if err != nil {
		return DrainResult{}, err
	}
	var first, last time.Time
	for _, r := range e.Sim.Requests("") {
		if first.IsZero() || r.Start.Before(first) {
			first = r.Start
		}
		if r.Time.After(last) {
			last = r.Time
		}
	}
	res.PerSec = float64(n) / last.Sub(first).Seconds()
	return res, nil
}

// EnqueueRates measures enqueues per second: bare Client.Enqueue and
// Producer.Enqueue from one goroutine, from 16 (the Producer's bulk form),
// and cmd/enqueue --jsonl.
func (e *Env) EnqueueRates(n int) (map[string]float64, error) {
	out := map[string]float64{}
	rdb := e.Client()
	defer rdb.Close()
	client := asynq.NewClientFromRedisClient(rdb)
	timeIt := func(name string, f func(queue string) error) error {
		queue := fmt.Sprintf("bench-enq-%d", time.Now().UnixNano())
		defer e.dropQueue(queue)
		start := time.Now()
		if err := f(queue); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out[name] = float64(n) / time.Since(start).Seconds()
		return nil
	}
	bare := func(queue string, i int) error {
		// A bare producer encodes its own payload too.
		m := message(i)
		b, err := json.Marshal(tasks.Payload{Version: 1, Message: m, EnqueuedAt: time.Now()})
		if err != nil {
			return err
		}
		_, err = client.Enqueue(asynq.NewTask(tasks.TypeSend, b), asynq.Queue(queue))
		return err
	}
	parallel := func(f func(i int) error) error {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		next := make(chan int, 256)
		go func() {
			for i := range n {
				next <- i
			}
			close(next)
		}()
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := f(i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	steps := []struct {
		name string
		f    func(string) error
	}{
		{"bare-1", func(q string) error {
			for i := range n {
				if err := bare(q, i); err != nil {
					return err
				}
			}
			return nil
		}},
		{"producer-1", func(q string) error {
			p, done, err := e.producer(q)
			if err != nil {
				return err
			}
			defer done()
			for i := range n {
				if _, err := p.Enqueue(context.Background(), message(i)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"bare-16", func(q string) error { return parallel(func(i int) error { return bare(q, i) }) }},
		{"producer-bulk", func(q string) error { return e.fill(q, n) }},
	}
	for _, s := range steps {
		if err := timeIt(s.name, s.f); err != nil {
			return nil, err
		}
	}
	// The CLI, reading a file of JSON lines (its process start included).
	file := filepath.Join(e.Dir, "bench.jsonl")
	var b strings.Builder
	for i := range n {
		line, _ := json.Marshal(map[string]string{"roomId": "bench-room", "markdown": message(i).Markdown})
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	err := timeIt("enqueue-cli", func(q string) error {
		cmd := exec.Command(e.EnqBin, "--jsonl", file, "--queue", q, "--json")
		cmd.Env = append(os.Environ(), "REDIS_URL=redis://"+e.Redis.Addr+"/0")
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out[max(0, len(out)-300):])
		}
		return nil
	})
	return out, err
}

// LatencyResult is the enqueue-to-accepted latency at a steady rate, and
// the producer's own share: from handing a message over to its
// acknowledgement (Enqueue returned; the CLI printed the line's outcome).
type LatencyResult struct {
	Rate           int
	N              int
	P50, P99, Max  time.Duration
	AckP50, AckP99 time.Duration
}

// Latency starts a worker of side (its default configuration, concurrency
// 10), enqueues with a Producer at rate per second for d, and measures
// enqueue-to-accepted latency at the simulator.
func (e *Env) Latency(side Side, rate int, d time.Duration) (LatencyResult, error) {
	return e.producerLatency(side, rate, d, e.producer)
}

// ProducerLatency is Latency with a Producer configured as the enqueue
// command's (the defaults: a delivered task is retained for 1 h), the Go
// side of CLILatency.
func (e *Env) ProducerLatency(rate int, d time.Duration) (LatencyResult, error) {
	return e.producerLatency(Courier, rate, d, func(queue string) (*tasks.Producer, func(), error) {
		rdb := e.Client()
		p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, Source: "enqueue"})
		return p, func() { _ = rdb.Close() }, err
	})
}

func (e *Env) producerLatency(side Side, rate int, d time.Duration, producer func(queue string) (*tasks.Producer, func(), error)) (LatencyResult, error) {
	return e.latency(side, rate, d, func(queue string, acked func(int)) (func(int) error, func() error, error) {
		prod, done, err := producer(queue)
		if err != nil {
			return nil, nil, err
		}
		send := func(i int) error {
			_, err := prod.Enqueue(context.Background(), message(i))
			acked(i)
			return err
		}
		return send, func() error { done(); return nil }, nil
	})
}

// CLILatency is Latency through the enqueue command: one process kept open,
// one JSON line written per message to its standard input (a producer
// piping events), a courier worker delivering. The acknowledgement is the
// line's outcome on the command's output.
func (e *Env) CLILatency(rate int, d time.Duration) (LatencyResult, error) {
	return e.latency(Courier, rate, d, func(queue string, acked func(int)) (func(int) error, func() error, error) {
		cmd := exec.Command(e.EnqBin, "--jsonl", "-", "--queue", queue, "--json")
		cmd.Env = append(os.Environ(), "REDIS_URL=redis://"+e.Redis.Addr+"/0")
		cmd.Stderr = e.Log
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		read := make(chan struct{})
		go func() { // line 1 is the warm-up message; line k+2 is message k
			defer close(read)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var o struct{ Line int }
				if json.Unmarshal(sc.Bytes(), &o) == nil && o.Line > 1 {
					acked(o.Line - 2)
				}
			}
		}()
		send := func(i int) error {
			b, err := json.Marshal(message(i).Message)
			if err != nil {
				return err
			}
			_, err = stdin.Write(append(b, '\n'))
			return err
		}
		return send, func() error { _ = stdin.Close(); <-read; return cmd.Wait() }, nil
	})
}

// latency runs a worker of side, sends at rate per second for d through the
// sender newSender makes for the queue, and measures enqueue-to-accepted.
func (e *Env) latency(side Side, rate int, d time.Duration, newSender func(queue string, acked func(int)) (send func(int) error, done func() error, err error)) (LatencyResult, error) {
	queue := fmt.Sprintf("bench-lat-%s-%d", side, time.Now().UnixNano())
	defer e.dropQueue(queue)
	p, err := e.StartWorker(side, queue, 10)
	if err != nil {
		return LatencyResult{}, err
	}
	defer p.Stop(30 * time.Second)
	n := int(d.Seconds() * float64(rate))
	sent, acks := make([]time.Time, n), make([]time.Time, n)
	var acksMu sync.Mutex
	acked := func(i int) {
		if i >= 0 && i < n {
			acksMu.Lock()
			acks[i] = time.Now()
			acksMu.Unlock()
		}
	}
	send, done, err := newSender(queue, acked)
	if err != nil {
		return LatencyResult{}, err
	}
	defer func() { _ = done() }()
	// Warm up: one message through, so the worker is fetching.
	e.Sim.Reset()
	if err := send(999999); err != nil {
		return LatencyResult{}, err
	}
	if err := e.waitAccepted(1, 30*time.Second); err != nil {
		return LatencyResult{}, err
	}
	e.Sim.Reset()
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		sent[i] = time.Now()
		if err := send(i); err != nil {
			return LatencyResult{}, err
		}
	}
	if err := e.waitAccepted(n, time.Minute); err != nil {
		return LatencyResult{}, err
	}
	var lat []time.Duration
	for _, m := range e.Sim.Messages("") {
		f := strings.Fields(m.Markdown)
		i, err := strconv.Atoi(f[len(f)-1])
		if err != nil || i >= n {
			continue
		}
		lat = append(lat, m.Created.Sub(sent[i]))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if err := done(); err != nil { // every acknowledgement read
		return LatencyResult{}, err
	}
	done = func() error { return nil }
	var ack []time.Duration
	for i, a := range acks {
		if !a.IsZero() {
			ack = append(ack, a.Sub(sent[i]))
		}
	}
	sort.Slice(ack, func(i, j int) bool { return ack[i] < ack[j] })
	r := LatencyResult{Rate: rate, N: len(lat), P50: percentile(lat, .5), P99: percentile(lat, .99), Max: lat[len(lat)-1]}
	if len(ack) > 0 {
		r.AckP50, r.AckP99 = percentile(ack, .5), percentile(ack, .99)
	}
	return r, nil
}

// IdleCPU is the share of one core a worker of side uses with nothing to do.
func (e *Env) IdleCPU(side Side, d time.Duration) (float64, error) {
	queue := fmt.Sprintf("bench-idle-%s-%d", side, time.Now().UnixNano())
	defer e.dropQueue(queue)
	p, err := e.StartWorker(side, queue, 10)
	if err != nil {
		return 0, err
	}
	defer p.Stop(30 * time.Second)
	time.Sleep(3 * time.Second) // start-up done
	c0 := p.CPU()
	time.Sleep(d)
	return 100 * float64(p.CPU()-c0) / float64(d), nil
}

// BytesPerMessage is Redis's used_memory growth per pending message of side.
func (e *Env) BytesPerMessage(side Side, n int) (float64, error) {
	rdb := e.Client()
	defer rdb.Close()
	queue := fmt.Sprintf("bench-mem-%s-%d", side, time.Now().UnixNano())
	defer e.dropQueue(queue)
	used := func() int64 {
		info := rdb.Info(context.Background(), "memory").Val()
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		return 0
	}
	before := used()
	if side == Courier {
		if err := e.fill(queue, n); err != nil {
			return 0, err
		}
	} else {
		client := asynq.NewClientFromRedisClient(rdb)
		for i := range n {
			b, _ := json.Marshal(tasks.Payload{Version: 1, Message: message(i), EnqueuedAt: time.Now()})
			if _, err := client.Enqueue(asynq.NewTask(tasks.TypeSend, b), asynq.Queue(queue)); err != nil {
				return 0, err
			}
		}
	}
	return float64(used()-before) / float64(n), nil
}
