package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel is a Redis primary, its replicas and three Sentinels on
// loopback ports, started by a test and stopped at its cleanup.
type Sentinel struct {
	Primary   *Server
	Replicas  []*Server
	Sentinels []*Server
	// Master is the name the Sentinels monitor.
	Master string
}

// SentinelMaster is the name a started Sentinel set-up monitors.
const SentinelMaster = "courier"

// StartSentinel starts a primary, replicas of it and three Sentinels that
// agree on them (quorum 2, the primary judged down after downAfter), and
// waits until the replicas are in sync and every Sentinel knows the
// others. It skips the test when redis-server is not installed.
func StartSentinel(t testing.TB, replicas int, downAfter time.Duration) *Sentinel {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed (Debian package redis-server)")
	}
	s := &Sentinel{Master: SentinelMaster}
	s.Primary = startExtra(t, false, nil)
	for range replicas {
		s.Replicas = append(s.Replicas, StartReplica(t, s.Primary))
	}
	for range 3 {
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2\nsentinel down-after-milliseconds %s %d\n"+
			"sentinel failover-timeout %s 10000\nsentinel parallel-syncs %s 1\n",
			s.Master, s.Primary.port, s.Master, downAfter.Milliseconds(), s.Master, s.Master)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		sv := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, port: port, conf: conf}
		if err := sv.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sv.Kill)
		s.Sentinels = append(s.Sentinels, sv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func startExtra(t testing.TB, aof bool, extra []string) *Server {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: t.TempDir(), aof: aof, port: port, extra: extra}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// waitReady waits until every Sentinel sees the replicas and the two other
// Sentinels.
func (s *Sentinel) waitReady(ctx context.Context) error {
	return poll(ctx, "the Sentinels to find the replicas and each other", func() bool {
		for _, sv := range s.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sv.Addr})
			m, err := c.Master(ctx, s.Master).Result()
			_ = c.Close()
			if err != nil || m["num-other-sentinels"] != "2" || m["num-slaves"] != strconv.Itoa(len(s.Replicas)) {
				return false
			}
		}
		return true
	})
}

// URL is the set-up's REDIS_URL in go-redis's Sentinel form.
func (s *Sentinel) URL() string {
	u := "redis://" + s.Sentinels[0].Addr + "/0?master_name=" + s.Master
	for _, sv := range s.Sentinels[1:] {
		u += "&addr=" + sv.Addr
	}
	return u
}

// PrimaryAddr asks a Sentinel which address the primary has now.
func (s *Sentinel) PrimaryAddr(ctx context.Context) (string, error) {
	var last error
	for _, sv := range s.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sv.Addr})
		addr, err := c.GetMasterAddrByName(ctx, s.Master).Result()
		_ = c.Close()
		if err == nil && len(addr) == 2 {
			return net.JoinHostPort(addr[0], addr[1]), nil
		}
		last = err
	}
	return "", fmt.Errorf("no Sentinel names the primary: %w", last)
}

// Cluster is a Redis Cluster of three primaries, with or without replicas,
// on loopback ports, created by a test and stopped at its cleanup.
type Cluster struct {
	// Nodes are every node, the three primaries first (as created: a
	// failover makes a replica a primary).
	Nodes []*Server
}

// StartCluster starts three cluster-enabled redis-servers, joins them with
// redis-cli --cluster create, and waits until every node reports the
// cluster ok. It skips the test when redis-server or redis-cli is missing.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return StartClusterReplicas(t, 0, 5*time.Second)
}

// StartClusterReplicas starts a cluster of three primaries with replicas
// replicas each (a node judged failed after nodeTimeout, its replica then
// promoted), and waits until the cluster is ok on every node and every
// replica is in sync.
func StartClusterReplicas(t testing.TB, replicas int, nodeTimeout time.Duration) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian package redis-server)", bin)
		}
	}
	c := &Cluster{}
	args := []string{"--cluster", "create"}
	for range 3 * (1 + replicas) {
		n := startExtra(t, false, []string{"--cluster-enabled", "yes", "--cluster-node-timeout", strconv.FormatInt(nodeTimeout.Milliseconds(), 10),
			"--repl-diskless-sync-delay", "0"}) // a replica's first sync at once, not after 5 s
		c.Nodes = append(c.Nodes, n)
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = poll(ctx, "the cluster to be ok on every node, its replicas in sync", func() bool {
		for _, n := range c.Nodes {
			rdb := redis.NewClient(n.Options())
			info, err := rdb.ClusterInfo(ctx).Result()
			repl, rerr := rdb.Info(ctx, "replication").Result()
			slots, serr := rdb.ClusterSlots(ctx).Result()
			_ = rdb.Close()
			if err != nil || rerr != nil || serr != nil || !strings.Contains(info, "cluster_state:ok") ||
				strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				return false
			}
			for _, s := range slots { // every node knows every shard's replicas
				if len(s.Nodes) != 1+replicas {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Shard returns the node that is the primary of key's slot now, and its
// replicas, as the cluster's nodes report them.
func (c *Cluster) Shard(ctx context.Context, key string) (primary *Server, replicas []*Server, err error) {
	byAddr := map[string]*Server{}
	for _, n := range c.Nodes {
		byAddr[n.Addr] = n
	}
	var last error
	for _, n := range c.Nodes {
		rdb := redis.NewClient(n.Options())
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		var slots []redis.ClusterSlot
		if err == nil {
			slots, err = rdb.ClusterSlots(ctx).Result()
		}
		_ = rdb.Close()
		if err != nil {
			last = err
			continue
		}
		for _, s := range slots {
			if int64(s.Start) > slot || int64(s.End) < slot || len(s.Nodes) == 0 {
				continue
			}
			primary = byAddr[s.Nodes[0].Addr]
			for _, r := range s.Nodes[1:] {
				if byAddr[r.Addr] != nil {
					replicas = append(replicas, byAddr[r.Addr])
				}
			}
			if primary == nil {
				return nil, nil, fmt.Errorf("slot %d is served by %s, not a node of this cluster", slot, s.Nodes[0].Addr)
			}
			return primary, replicas, nil
		}
		last = fmt.Errorf("slot %d is served by no node", slot)
	}
	return nil, nil, fmt.Errorf("no node names the primary of %q: %w", key, last)
}

// URL is the cluster's REDIS_URL in go-redis's Cluster form.
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr + "?addr=" + c.Nodes[1].Addr
	for _, n := range c.Nodes[2:] {
		u += "&addr=" + n.Addr
	}
	return u
}

func poll(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// StartReplica starts a replica of primary and waits until it is in sync.
func StartReplica(t testing.TB, primary *Server) *Server {
	t.Helper()
	r := startExtra(t, false, []string{"--replicaof", "127.0.0.1", strconv.Itoa(primary.port)})
	rdb := redis.NewClient(r.Options())
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := poll(ctx, "the replica to sync", func() bool {
		info, err := rdb.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}
