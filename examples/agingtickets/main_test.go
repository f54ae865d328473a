package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func TestBucketBoundaries(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		age  time.Duration
		want int
	}{
		{-time.Hour, 0}, {0, 0}, {2 * day, 0}, {3*day - time.Second, 0}, {3 * day, 1}, {7 * day, 1},
		{8*day - time.Second, 1}, {8 * day, 2}, {30 * day, 2}, {31*day - time.Second, 2}, {31 * day, 3}, {400 * day, 3},
	}
	for _, tt := range tests {
		if got := DefaultBuckets.Of(now.Add(-tt.age), now); got != tt.want {
			t.Errorf("age %v: bucket %d, want %d", tt.age, got, tt.want)
		}
	}
	// The same instant written in other zones lands in the same bucket.
	opened := now.Add(-3 * day)
	for _, zone := range []int{-5, 0, 1, 9} {
		loc := time.FixedZone("z", zone*3600)
		if got := DefaultBuckets.Of(opened.In(loc), now.In(time.FixedZone("y", -8*3600))); got != 1 {
			t.Errorf("zone %+d: bucket %d", zone, got)
		}
	}
	if got := DefaultBuckets.Labels(); strings.Join(got, ",") != "0-2 days,3-7 days,8-30 days,over 30 days" {
		t.Fatalf("labels %v", got)
	}
	if _, err := ParseBuckets("7,2"); err == nil {
		t.Fatal("decreasing buckets accepted")
	}
}

func TestKeyUsesTheReportsTimeZone(t *testing.T) {
	t.Parallel()
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone data")
	}
	now := time.Date(2026, 11, 28, 23, 30, 0, 0, time.UTC) // already the 29th in Berlin
	if k := Key("aging-tickets", "data", now, berlin); k != "aging-tickets/data/2026-11-29" {
		t.Fatalf("key %s", k)
	}
	if k := Key("aging-tickets", "data", now, time.UTC); k != "aging-tickets/data/2026-11-28" {
		t.Fatalf("key %s", k)
	}
}

func TestCSVErrorsNameTheRow(t *testing.T) {
	t.Parallel()
	_, err := readCSV(strings.NewReader("id,title,assignee,team,priority,opened_at\nA,t,,x,P1,2026-11-01T00:00:00Z\nB,t,,x,P1,yesterday\n"))
	if err == nil || !strings.Contains(err.Error(), `csv row 3: opened_at "yesterday"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestSampleLoads(t *testing.T) {
	t.Parallel()
	ts, err := LoadTickets("sample/tickets.csv")
	if err != nil || len(ts) < 200 {
		t.Fatalf("%d tickets, %v", len(ts), err)
	}
	cfg, err := LoadConfig("sample/teams.json")
	if err != nil {
		t.Fatal(err)
	}
	if reports, skipped := Build(ts, DefaultBuckets, time.Now(), cfg.Rooms); len(reports) != len(cfg.Rooms) || skipped != 0 {
		t.Fatalf("%d reports, %d skipped", len(reports), skipped)
	}
}

// A re-run of the same day enqueues nothing new; end to end through a
// worker, each team's room receives its markdown once.
func TestRerunAndEndToEnd(t *testing.T) {
	t.Parallel()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	redistest.DeleteKeys(t, rdb, "asynq:{"+queue+"}:*", "courier:{"+queue+"}:*")
	opt := redistest.Options(t)
	url := fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB)
	if u := os.Getenv("REDIS_URL"); u != "" {
		url = u
	}
	teams := filepath.Join(t.TempDir(), "teams.json")
	if err := os.WriteFile(teams, []byte(`{"report":"aging","timezone":"UTC","rooms":{"data":"room-data","mobile":"room-mobile"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	args := []string{"-tickets", "sample/tickets.csv", "-teams", teams, "-queue", queue, "-now", now.Format(time.RFC3339)}
	getenv := func(k string) string { return map[string]string{"REDIS_URL": url}[k] }
	var out, errs bytes.Buffer
	if code := run(context.Background(), args, &out, &errs, now, getenv); code != 0 {
		t.Fatalf("first run: %d %s %s", code, out.String(), errs.String())
	}
	if !strings.Contains(out.String(), "data: enqueued aging/data/2026-11-28") {
		t.Fatalf("first run said %q", out.String())
	}
	out.Reset()
	if code := run(context.Background(), args, &out, &errs, now, getenv); code != 0 {
		t.Fatalf("re-run: %d", code)
	}
	if strings.Count(out.String(), "already sent today") != 2 || strings.Contains(out.String(), "enqueued") {
		t.Fatalf("re-run said %q", out.String())
	}

	sim := webextest.NewServer(t, webextest.Options{})
	w, err := tasks.NewWorker(rdb, tasks.WorkerConfig{Bots: map[string]tasks.Sender{"": sim.Client(t, webextest.DefaultToken)},
		Queues: map[string]int{queue: 1}, TaskCheckInterval: 10 * time.Millisecond, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	ts, _ := LoadTickets("sample/tickets.csv")
	reports, _ := Build(ts, DefaultBuckets, now, map[string]string{"data": "", "mobile": ""})
	deadline := time.Now().Add(15 * time.Second)
	for len(sim.Messages("room-data")) == 0 || len(sim.Messages("room-mobile")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("reports not delivered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, r := range reports {
		msgs := sim.Messages("room-" + r.Team)
		md, text := r.Render(now, 15)
		if len(msgs) != 1 || msgs[0].Markdown != md || msgs[0].Text != text || msgs[0].Literals != nil {
			t.Errorf("%s: %d messages, markdown %q, text %q, shown literally %v", r.Team, len(msgs), msgs[0].Markdown, msgs[0].Text, msgs[0].Literals)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// REDIS_URL in its Cluster form reaches a Cluster (a queue's keys on its
// shard), and one that does not parse is refused without its text, which
// may hold a password.
func TestRedisURLForms(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	queue := redistest.Name(t)
	teams := filepath.Join(t.TempDir(), "teams.json")
	if err := os.WriteFile(teams, []byte(`{"report":"aging","timezone":"UTC","rooms":{"data":"room-data"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	args := []string{"-tickets", "sample/tickets.csv", "-teams", teams, "-queue", queue, "-now", now.Format(time.RFC3339)}
	for _, tc := range []struct {
		url, out string
		code     int
	}{
		{c.URL(), "data: enqueued aging/data/2026-11-28", 0},
		{"redis://user:s3cr%zzet@127.0.0.1:6379/0", "REDIS_URL: does not parse", 2},
		{"redis://user:s3cret@127.0.0.1:6379/0?master_name=x&addr=127.0.0.1:1&read_timeout=abc", "REDIS_URL: not a valid Sentinel form", 2},
		// An unencoded / ? # or & puts a part of the password where
		// go-redis's errors quote it: the path, an option, an address.
		{"redis://user:/s3cret@127.0.0.1:6379/0", "REDIS_URL: not a valid URL of one Redis", 2},
		{"redis://:123/s3cret@127.0.0.1:6379", "REDIS_URL: not a valid URL of one Redis", 2},
		{"redis://user:?s3cret@127.0.0.1:6379/0", "REDIS_URL: not a valid URL of one Redis", 2},
		{"redis://user:12#s3cret@127.0.0.1:6379/0", "REDIS_URL: does not parse", 2},
		{"redis://127.0.0.1:26379?master_name=m&password=ab&s3cret", "REDIS_URL: not a valid Sentinel form", 2},
		{"redis://127.0.0.1:26379?master_name=m&addr=:s3cret@127.0.0.1:26380", "REDIS_URL: not a valid Sentinel form", 2},
		{"redis://127.0.0.1:6379?addr=user:s3cret@127.0.0.1:6380", "REDIS_URL: not a valid Cluster form", 2},
		{"redis://user:12/s3cret@127.0.0.1:6379?master_name=m", "REDIS_URL: not a valid Sentinel form", 2},
	} {
		var out, errs bytes.Buffer
		getenv := func(k string) string { return map[string]string{"REDIS_URL": tc.url}[k] }
		code := run(context.Background(), args, &out, &errs, now, getenv)
		if all := out.String() + errs.String(); code != tc.code || !strings.Contains(all, tc.out) || strings.Contains(all, "s3cr") {
			t.Errorf("%s: exit %d, want %d; said %q, want %q and no password", tc.url, code, tc.code, all, tc.out)
		}
	}
}
