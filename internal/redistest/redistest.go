// Package redistest hands tests a Redis server and keeps their keys apart.
//
// [Options] gives the shared server: REDIS_URL when set (the variable the
// binaries read), else 127.0.0.1:6379 when it answers, else a throwaway
// redis-server on a free port when the binary exists, else miniredis. Tests
// that crash or restart Redis, or that look at asynq's global keys, start
// their own server with [Start].
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// DefaultAddr is the machine's shared Redis, used when REDIS_URL is unset.
const DefaultAddr = "127.0.0.1:6379"

var shared struct {
	once sync.Once
	opt  *redis.Options
	err  error
}

// Options returns connection options for the shared test Redis. The first
// call decides which server that is; a throwaway server or miniredis started
// for it lives until the test binary exits.
func Options(t testing.TB) *redis.Options {
	t.Helper()
	shared.once.Do(func() { shared.opt, shared.err = pick() })
	if shared.err != nil {
		t.Fatalf("redistest: %v", shared.err)
	}
	opt := *shared.opt
	return &opt
}

// Client returns a client of the shared test Redis, closed at cleanup.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(Options(t))
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func pick() (*redis.Options, error) {
	if u := os.Getenv("REDIS_URL"); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("REDIS_URL: %w", err)
		}
		return opt, ping(opt)
	}
	if opt := (&redis.Options{Addr: DefaultAddr}); ping(opt) == nil {
		return opt, nil
	}
	if _, err := exec.LookPath("redis-server"); err == nil {
		dir, err := os.MkdirTemp("", "redistest")
		if err != nil {
			return nil, err
		}
		s, err := startServer(dir, false)
		if err != nil {
			return nil, err
		}
		return &redis.Options{Addr: s.Addr}, nil // lives until the test binary exits
	}
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		return nil, fmt.Errorf("miniredis: %w", err)
	}
	return &redis.Options{Addr: m.Addr()}, nil
}

func ping(opt *redis.Options) error {
	o := *opt
	o.DialTimeout, o.MaxRetries = 500*time.Millisecond, -1
	rdb := redis.NewClient(&o)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return rdb.Ping(ctx).Err()
}

// Name returns a name unique to this test run, for queues and key prefixes.
func Name(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// DeleteKeys removes, at cleanup, every key of the shared Redis matching any
// of the patterns (SCAN, not KEYS, and never FLUSHALL).
func DeleteKeys(t testing.TB, rdb *redis.Client, patterns ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, p := range patterns {
			iter := rdb.Scan(ctx, 0, p, 500).Iterator()
			for iter.Next(ctx) {
				rdb.Del(ctx, iter.Val())
			}
		}
	})
}

// Server is a redis-server process of the test's own.
type Server struct {
	Addr string
	dir  string
	aof  bool
	port int
	// conf is a config file read first (Sentinel's, which it rewrites);
	// extra are further arguments.
	conf  string
	extra []string
	cmd   *exec.Cmd
	done  chan struct{}
}

// Start runs a redis-server on a free loopback port, with append-only
// persistence (appendfsync always) when aof is true, and stops it at cleanup.
// It skips the test, naming the package, when no redis-server is installed.
func Start(t testing.TB, aof bool) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed (Debian package redis-server)")
	}
	s, err := startServer(t.TempDir(), aof)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

func startServer(dir string, aof bool) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, aof: aof, port: port}
	return s, s.start()
}

func (s *Server) start() error {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf, "--sentinel")
	}
	args = append(args, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"))
	switch {
	case s.conf != "": // a Sentinel keeps no data
	case s.aof:
		args = append(args, "--save", "", "--appendonly", "yes", "--appendfsync", "always")
	default:
		args = append(args, "--save", "", "--appendonly", "no")
	}
	args = append(args, s.extra...)
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(&redis.Options{Addr: s.Addr}) == nil {
			return nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server on %s exited: %s", s.Addr, log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.Kill()
	return fmt.Errorf("redis-server on %s did not answer within 10s", s.Addr)
}

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Pause stops the server with SIGSTOP, as a hung Redis: connections stay
// open and nothing answers. Resume undoes it.
func (s *Server) Pause() error { return s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

// Restart starts the server again on the same port and directory (so it
// reloads its append-only file).
func (s *Server) Restart() error { return s.start() }

// Options returns connection options for the server.
func (s *Server) Options() *redis.Options { return &redis.Options{Addr: s.Addr} }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
