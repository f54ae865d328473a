package tasks

import (
	"strconv"
	"strings"
	"time"
)

// What fast recovery reads and writes of asynq v0.26's Redis layout
// (internal/base/base.go, internal/rdb/rdb.go, heartbeat.go). The tests in
// asynqlayout_test.go pin every one of these against a real asynq server:
// an asynq upgrade that changes them fails there, loudly, before recovery
// moves a task it misunderstands.
//
//   - asynq:{q}:active — LIST of the ids of tasks being processed.
//   - asynq:{q}:lease — ZSET id → lease expiry (Unix seconds, the holder's
//     clock): now+30s at dequeue, moved to now+30s at every heartbeat (5s).
//   - asynq:{q}:pending — LIST; asynq dequeues with RPOPLPUSH from its tail,
//     and requeues with RPUSH (the next to run).
//   - asynq:{q}:t:<id> — HASH of the task; field "state" ("active",
//     "pending", …).
//   - asynq:servers — ZSET of "asynq:servers:{host:pid:sid}" members, scored
//     with their expiry. A crashed server's member stays until a clean stop
//     or asynq's Inspector (asynqmon, the metrics exporter) removes expired
//     ones, so recovery remembers the servers it saw. The key itself is
//     written at every heartbeat with a 10s TTL.
//   - asynq:workers — ZSET of "asynq:workers:{host:pid:sid}"; that key is a
//     HASH task id → worker info, rewritten at every heartbeat, 10s TTL. A
//     task fetched since the last heartbeat is not in it yet.
const (
	asynqServers        = "asynq:servers"
	asynqWorkers        = "asynq:workers"
	asynqServersPrefix  = "asynq:servers:{"
	asynqWorkersPrefix  = "asynq:workers:{"
	asynqLeaseDuration  = 30 * time.Second
	asynqHeartbeat      = 5 * time.Second
	asynqServerStateTTL = 2 * asynqHeartbeat
)

func activeKey(queue string) string  { return "asynq:{" + queue + "}:active" }
func leaseKey(queue string) string   { return "asynq:{" + queue + "}:lease" }
func pendingKey(queue string) string { return "asynq:{" + queue + "}:pending" }

// serverKey is asynq's key of a server's state, by its "host:pid:sid".
func serverKey(server string) string { return asynqServersPrefix + server + "}" }

// serverOf returns the "host:pid:sid" of an asynq:servers or asynq:workers
// member, or "" for anything else.
func serverOf(member string) string {
	for _, p := range []string{asynqServersPrefix, asynqWorkersPrefix} {
		if s, ok := strings.CutPrefix(member, p); ok && strings.HasSuffix(s, "}") {
			return strings.TrimSuffix(s, "}")
		}
	}
	return ""
}

// ServerID names one asynq server (one worker process): its host, process
// id and asynq's random server id, as asynq writes them into its keys.
type ServerID struct {
	Host string
	PID  int
	ID   string
}

// parseServerID reads "host:pid:sid" (a host may itself hold colons).
func parseServerID(s string) (ServerID, bool) {
	rest, sid, ok := cutLast(s, ":")
	if !ok {
		return ServerID{}, false
	}
	host, pidText, ok := cutLast(rest, ":")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || sid == "" {
		return ServerID{}, false
	}
	return ServerID{Host: host, PID: pid, ID: sid}, true
}

func (s ServerID) String() string { return s.Host + ":" + strconv.Itoa(s.PID) + ":" + s.ID }

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
