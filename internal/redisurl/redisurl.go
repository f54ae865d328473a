// Package redisurl reads REDIS_URL, in its three forms, without ever
// printing a password: a URL that does not parse is reported by what to
// fix, never quoted, since any part of it may be the password.
//
// The forms are go-redis's own (redis.ParseURL, ParseFailoverURL,
// ParseClusterURL), plus asynq's Sentinel form:
//
//   - one Redis: redis://[user:password@]host:port/db (rediss:// for TLS);
//   - Sentinel: redis://[user:password@]sentinel:port/db?master_name=NAME&addr=sentinel2:port…,
//     where the user and password in front are the Sentinels' and the
//     data nodes' go in username= and password=; or asynq's
//     redis-sentinel://[:password@]s1:port,s2:port/db?master=NAME;
//   - Cluster: redis://[user:password@]node:port?addr=node2:port&addr=node3:port
//     (any reachable nodes: the rest are discovered).
//
// The form follows from the URL (master_name or redis-sentinel: Sentinel;
// addr= seeds: Cluster; else one Redis) unless a Mode says it: a cluster
// reached through a single address (a managed service's configuration
// endpoint) needs ModeCluster.
package redisurl

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrUnparseable matches a URL whose text cannot be shown: it does not
// parse, or a character of the password cut it short.
var ErrUnparseable = errors.New("cannot be parsed (its text is not shown: it may hold a password); " +
	"want redis:// or rediss://[user:password@]host:port/db, with % / # ? @ and & in the password percent-encoded as %25 %2F %23 %3F %40 %26")

// Mode is how courier reaches Redis.
type Mode string

// The modes. ModeAuto reads the mode from the URL.
const (
	ModeAuto     Mode = ""
	ModeSingle   Mode = "single"
	ModeSentinel Mode = "sentinel"
	ModeCluster  Mode = "cluster"
)

// ParseMode reads a mode setting: auto (or empty), single, sentinel, cluster.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "auto", ModeAuto:
		return ModeAuto, nil
	case ModeSingle, ModeSentinel, ModeCluster:
		return m, nil
	}
	return "", fmt.Errorf("want auto, single, sentinel or cluster, got %q", s)
}

// Options is a parsed REDIS_URL: exactly one of Single, Failover and
// Cluster is set, as Mode says. It is also asynq's RedisConnOpt.
type Options struct {
	Mode     Mode
	Single   *redis.Options
	Failover *redis.FailoverOptions
	Cluster  *redis.ClusterOptions
}

// Single wraps the options of one Redis.
func Single(opt *redis.Options) *Options { return &Options{Mode: ModeSingle, Single: opt} }

// NewClient returns a client of the options' kind: *redis.Client for one
// Redis and for Sentinel (it follows the primary), *redis.ClusterClient
// for a Cluster (following failovers: FollowFailovers).
func (o *Options) NewClient() redis.UniversalClient {
	switch o.Mode {
	case ModeSentinel:
		return redis.NewFailoverClient(o.Failover)
	case ModeCluster:
		c := redis.NewClusterClient(o.Cluster)
		FollowFailovers(c)
		return c
	}
	return redis.NewClient(o.Single)
}

// MakeRedisClient makes Options an asynq.RedisConnOpt (asynqmon and any
// asynq part that keeps its own connections).
func (o *Options) MakeRedisClient() any { return o.NewClient() }

// Tune returns a copy with the connection settings that the CLI and probes
// adjust: dial, read and write timeouts (0 leaves one as it is) and command
// retries (-1: none, and a single dial attempt; 0 leaves them).
func (o *Options) Tune(dial, read, write time.Duration, maxRetries int) *Options {
	c := *o
	switch o.Mode {
	case ModeSentinel:
		f := *o.Failover
		tune(&f.DialTimeout, &f.ReadTimeout, &f.WriteTimeout, &f.MaxRetries, &f.DialerRetries, dial, read, write, maxRetries)
		c.Failover = &f
	case ModeCluster:
		cl := *o.Cluster
		tune(&cl.DialTimeout, &cl.ReadTimeout, &cl.WriteTimeout, &cl.MaxRetries, &cl.DialerRetries, dial, read, write, maxRetries)
		c.Cluster = &cl
	default:
		s := *o.Single
		tune(&s.DialTimeout, &s.ReadTimeout, &s.WriteTimeout, &s.MaxRetries, &s.DialerRetries, dial, read, write, maxRetries)
		c.Single = &s
	}
	return &c
}

func tune(d, r, w *time.Duration, mr, dr *int, dial, read, write time.Duration, maxRetries int) {
	for _, f := range []struct {
		p *time.Duration
		v time.Duration
	}{{d, dial}, {r, read}, {w, write}} {
		if f.v != 0 {
			*f.p = f.v
		}
	}
	if maxRetries != 0 {
		*mr = maxRetries
	}
	if maxRetries < 0 {
		*dr = 1
	}
}

// Parse reads raw in the given mode (ModeAuto: as the URL says). Its
// errors never hold any part of a password.
func Parse(raw string, mode Mode) (*Options, error) {
	u, err := parse(raw)
	if err != nil {
		return nil, err
	}
	o, err := parseAs(raw, u, mode)
	if err != nil {
		return nil, errors.New(scrub(err.Error(), u))
	}
	return o, nil
}

func parseAs(raw string, u *url.URL, mode Mode) (*Options, error) {
	q := u.Query()
	sentinelScheme := u.Scheme == "redis-sentinel"
	if mode == ModeAuto {
		switch {
		case sentinelScheme || q.Has("master_name"):
			mode = ModeSentinel
		case q.Has("addr"):
			mode = ModeCluster
		default:
			mode = ModeSingle
		}
	}
	switch mode {
	case ModeSingle:
		if sentinelScheme || q.Has("master_name") || q.Has("addr") {
			return nil, errors.New("single mode takes one address: drop master_name and addr, or set the mode to sentinel or cluster")
		}
		opt, err := redis.ParseURL(raw)
		if err != nil {
			return nil, err
		}
		return &Options{Mode: ModeSingle, Single: opt}, nil
	case ModeSentinel:
		f, err := parseSentinel(raw, u)
		if err != nil {
			return nil, err
		}
		if f.TLSConfig != nil {
			// Sentinels and data nodes have names of their own: each
			// connection checks the name it dials, not the first Sentinel's.
			f.TLSConfig.ServerName = ""
		}
		return &Options{Mode: ModeSentinel, Failover: f}, nil
	case ModeCluster:
		if sentinelScheme || q.Has("master_name") {
			return nil, errors.New("cluster mode: master_name and redis-sentinel:// are Sentinel's; drop them or set the mode to sentinel")
		}
		c, err := parseCluster(u)
		if err != nil {
			return nil, err
		}
		return &Options{Mode: ModeCluster, Cluster: c}, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

func parseSentinel(raw string, u *url.URL) (*redis.FailoverOptions, error) {
	if u.Scheme != "redis-sentinel" {
		f, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, err
		}
		if f.MasterName == "" {
			return nil, errors.New("sentinel mode needs master_name=NAME (the name the Sentinels monitor)")
		}
		return f, nil
	}
	// asynq's form: redis-sentinel://[:password@]host:port[,host:port…][/db]?master=NAME
	f := &redis.FailoverOptions{MasterName: u.Query().Get("master")}
	if f.MasterName == "" {
		return nil, errors.New("redis-sentinel:// needs master=NAME (the name the Sentinels monitor)")
	}
	for k := range u.Query() {
		if k != "master" {
			return nil, fmt.Errorf("redis-sentinel:// takes only master=, not %s= (use the redis://…?master_name= form for more)", k)
		}
	}
	if u.User != nil {
		f.SentinelUsername = u.User.Username()
		f.SentinelPassword, _ = u.User.Password()
	}
	for _, a := range strings.Split(u.Host, ",") {
		if h, p, err := net.SplitHostPort(a); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("redis-sentinel://: Sentinel address %q: want host:port", a)
		}
		f.SentinelAddrs = append(f.SentinelAddrs, a)
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("redis-sentinel://: database %q: want a number", db)
		}
		f.DB = n
	}
	return f, nil
}

// parseCluster is go-redis's ParseClusterURL, with skip_verify (which
// go-redis takes for one Redis and Sentinel only) and TLS checking each
// node's own name.
func parseCluster(u *url.URL) (*redis.ClusterOptions, error) {
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return nil, fmt.Errorf("cluster mode has only database 0, the URL names /%s", p)
	}
	c := *u
	c.Path = ""
	q := c.Query()
	skip, hasSkip := q.Get("skip_verify"), q.Has("skip_verify")
	q.Del("skip_verify")
	c.RawQuery = q.Encode()
	opt, err := redis.ParseClusterURL(c.String())
	if err != nil {
		return nil, err
	}
	if opt.TLSConfig != nil {
		opt.TLSConfig.ServerName = ""
		opt.TLSConfig.MinVersion = tls.VersionTLS12
		if hasSkip {
			b, err := strconv.ParseBool(skip)
			if err != nil {
				return nil, fmt.Errorf("skip_verify: want true or false, got %q", skip)
			}
			opt.TLSConfig.InsecureSkipVerify = b
		}
	}
	return opt, nil
}

// parse checks that url.Parse reads raw as written: an '@' left outside the
// user info means a '/', '#' or '?' in the password ended the host early,
// and what url.Parse took for host, path or fragment is the password.
func parse(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, ErrUnparseable
	}
	if strings.Contains(raw, "@") && u.User == nil {
		return nil, ErrUnparseable
	}
	if strings.Contains(u.Host+u.Path+u.Fragment, "@") {
		return nil, ErrUnparseable
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil {
		return nil, ErrUnparseable
	}
	if strings.Contains(u.RawQuery, "@") && !passwordsOnly(u, "@") {
		return nil, ErrUnparseable
	}
	if strings.Contains(raw, "#") { // a '#' ends the URL: what follows it, unused, may be the rest of a password=
		return nil, ErrUnparseable
	}
	if hasSecret(u) && len(unknownOptions(u)) > 0 { // an '&' in a password= value makes the rest an option
		return nil, ErrUnparseable
	}
	return u, nil
}

// knownOptions are the query options go-redis v9 reads in its three URL
// forms, and skip_verify for the Cluster form (parseCluster).
var knownOptions = map[string]bool{}

func init() {
	for _, k := range strings.Fields(`addr client_name conn_max_idle_time conn_max_lifetime conn_max_lifetime_jitter
		context_timeout_enabled db dial_timeout dialer_retries dialer_retry_timeout failing_timeout_seconds
		idle_timeout master_name max_active_conns max_concurrent_dials max_conn_age max_idle_conns max_redirects
		max_retries max_retry_backoff min_idle_conns min_retry_backoff password pipeline_pool_size
		pipeline_read_buffer_size pipeline_write_buffer_size pool_fifo pool_size pool_timeout protocol read_only
		read_timeout replica_only route_by_latency route_by_latency_tolerance route_randomly skip_verify
		use_disconnected_replicas username write_timeout master`) {
		knownOptions[k] = true
	}
}

// unknownOptions are the query's keys that no form reads.
func unknownOptions(u *url.URL) []string {
	var out []string
	for k := range u.Query() {
		if !knownOptions[k] && !secretParam(k) {
			out = append(out, k)
		}
	}
	return out
}

// hasSecret reports whether the query holds a password.
func hasSecret(u *url.URL) bool {
	for k := range u.Query() {
		if secretParam(k) {
			return true
		}
	}
	return false
}

// passwordsOnly reports whether every occurrence of s in the query is
// inside a password= or sentinel_password= value.
func passwordsOnly(u *url.URL, s string) bool {
	for k, vs := range u.Query() {
		for _, v := range vs {
			if strings.Contains(k, s) || strings.Contains(v, s) && !secretParam(k) {
				return false
			}
		}
	}
	return true
}

// secretParam: password=, sentinel_password=, and any other option whose
// name speaks of a password (Password=, passwd=), known or not.
func secretParam(k string) bool { return strings.Contains(strings.ToLower(k), "pass") }

// Redact shows a Redis URL with its passwords masked, or a placeholder.
func Redact(raw string) string {
	u, err := parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	q := u.Query()
	masked := false
	for k := range q {
		if secretParam(k) {
			q.Set(k, "xxxxx")
			masked = true
		}
	}
	c := *u
	if masked {
		c.RawQuery = q.Encode()
	}
	return c.Redacted()
}

// Scrub removes the passwords of raw, as written and decoded, from msg (an
// error's text that may quote them).
func Scrub(msg, raw string) string {
	u, err := parse(raw)
	if err != nil {
		return "(not shown: REDIS_URL " + ErrUnparseable.Error() + ")"
	}
	return scrub(msg, u)
}

func scrub(msg string, u *url.URL) string {
	var pws []string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			pws = append(pws, pw)
		}
	}
	for k, vs := range u.Query() {
		if secretParam(k) {
			pws = append(pws, vs...)
		}
	}
	for _, pw := range pws {
		if pw == "" {
			continue
		}
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		for _, enc := range []string{url.PathEscape(pw), url.QueryEscape(pw)} {
			msg = strings.ReplaceAll(msg, enc, "xxxxx")
		}
	}
	return msg
}
