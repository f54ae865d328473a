// Package bench is courier's load tool: it measures courier against bare
// asynq side by side (same Redis, same simulator, same retention), and runs
// the chaos scenario. cmd/courierbench is its command line.
package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Env is the bench's own Redis and simulator, and the worker binaries.
type Env struct {
	Dir       string
	Redis     *RedisServer
	Sim       *webextest.Sim
	SimURL    string
	WorkerBin string // courier's cmd/worker
	EnqBin    string // courier's cmd/enqueue
	BenchBin  string // cmd/courierbench, whose bare-worker command is the bare asynq side
	Log       io.Writer
	simSrv    *http.Server
}

// Token the simulator accepts.
const Token = "bench-token"

// NewEnv starts a redis-server (AOF off unless fsync is set) and the
// simulator, and builds the courier binaries.
func NewEnv(log io.Writer, fsync string) (*Env, error) {
	dir, err := os.MkdirTemp("", "courierbench")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Log: log}
	if e.Redis, err = StartRedis(dir, fsync); err != nil {
		return nil, err
	}
	e.Sim = webextest.New(webextest.Options{Tokens: map[string]string{Token: "bench"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.simSrv = &http.Server{Handler: e.Sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = e.simSrv.Serve(ln) }()
	e.SimURL = "http://" + ln.Addr().String()
	e.WorkerBin = filepath.Join(dir, "worker")
	e.EnqBin = filepath.Join(dir, "enqueue")
	e.BenchBin = filepath.Join(dir, "courierbench")
	const mod = "github.com/courier-dev/courier/cmd/"
	for bin, pkg := range map[string]string{e.WorkerBin: mod + "worker", e.EnqBin: mod + "enqueue", e.BenchBin: mod + "courierbench"} {
		// Built as the Dockerfile builds what ships: static, stripped.
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s (run inside the repository): %v\n%s", pkg, err, out)
		}
	}
	return e, nil
}

// Close stops everything.
func (e *Env) Close() {
	_ = e.simSrv.Close()
	e.Redis.Kill()
	_ = os.RemoveAll(e.Dir)
}

// Client is a go-redis client of the bench Redis.
func (e *Env) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: e.Redis.Addr, PoolSize: 64})
}

// RedisServer is a redis-server process.
type RedisServer struct {
	Addr  string
	dir   string
	fsync string
	cmd   *exec.Cmd
	done  chan struct{}
}

// StartRedis runs redis-server on a free port in dir; fsync "" means no AOF,
// else the appendfsync policy ("always", "everysec").
func StartRedis(dir, fsync string) (*RedisServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &RedisServer{Addr: addr, dir: dir, fsync: fsync}
	return s, s.Start()
}

// Start (re)starts the server on its port and directory.
func (s *RedisServer) Start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis-"+port+".log")}
	if s.fsync != "" {
		args = append(args, "--appendonly", "yes", "--appendfsync", s.fsync, "--appendfilename", "bench-"+port+".aof")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("redis-server (Debian package redis-server): %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err := rdb.Ping(context.Background()).Err(); err == nil {
			return nil
		} else if strings.Contains(err.Error(), "LOADING") {
			continue
		}
	}
	return errors.New("redis-server did not answer")
}

// Kill ends the server with SIGKILL.
func (s *RedisServer) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Proc is a worker process.
type Proc struct {
	Cmd    *exec.Cmd
	done   chan error
	exited chan struct{} // closed when the process has exited; err is then set
	err    error
	ours   atomic.Bool // Stop or Kill ended it
}

// Start runs a command, its output to log.
func Start(log io.Writer, name string, args []string, env []string) (*Proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan error, 1), exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
		p.done <- p.err
	}()
	return p, nil
}

// Unexpected reports how the process ended when it exited by itself (a
// worker that halts, exit 3, because another worker took a task of its
// over, or that crashed); nil while it runs or when Stop or Kill ended it.
func (p *Proc) Unexpected() error {
	select {
	case <-p.exited:
		if p.ours.Load() {
			return nil
		}
		if p.err == nil {
			return fmt.Errorf("worker pid %d exited by itself: exit status 0", p.Cmd.Process.Pid)
		}
		return fmt.Errorf("worker pid %d exited by itself: %w", p.Cmd.Process.Pid, p.err)
	default:
		return nil
	}
}

// ending marks an end this harness causes, unless the process already
// ended by itself.
func (p *Proc) ending() {
	select {
	case <-p.exited:
	default:
		p.ours.Store(true)
	}
}

// Stop sends SIGTERM and waits (SIGKILL after timeout).
func (p *Proc) Stop(timeout time.Duration) {
	p.ending()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
	}
}

// Kill sends SIGKILL and waits.
func (p *Proc) Kill() {
	p.ending()
	_ = p.Cmd.Process.Kill()
	<-p.done
	p.done <- errors.New("killed")
}

// CPU is the process's user+system CPU time so far.
func (p *Proc) CPU() time.Duration { return processCPU(p.Cmd.Process.Pid) }

// CPU is the server's user+system CPU time so far.
func (s *RedisServer) CPU() time.Duration { return processCPU(s.cmd.Process.Pid) }

// processCPU is a process's user+system CPU time so far.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// PeakRSS is the process's peak resident set (VmHWM).
func (p *Proc) PeakRSS() int64 { return p.status()["VmHWM"] }

// Memory is the process's resident set now: anonymous memory (heap,
// stacks) and pages of files (its binary, shared libraries).
func (p *Proc) Memory() (anon, file int64) {
	st := p.status()
	return st["RssAnon"], st["RssFile"]
}

// status is the process's /proc status sizes in bytes, by name.
func (p *Proc) status() map[string]int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	sizes := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		if v, unit := strings.CutSuffix(strings.TrimSpace(v), " kB"); ok && unit {
			kb, _ := strconv.ParseInt(v, 10, 64)
			sizes[name] = kb << 10
		}
	}
	return sizes
}

// median of xs (sorted copy).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}
