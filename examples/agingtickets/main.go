// Command agingtickets is courier's first producer: it reads open tickets,
// buckets them by age, renders one summary per team (markdown that Webex
// renders, with a plain-text fallback) and enqueues it
// to the team's room, once per day whatever the re-runs.
//
//	go run ./examples/agingtickets -tickets examples/agingtickets/sample/tickets.csv \
//	    -teams examples/agingtickets/sample/teams.json
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, time.Now(), os.Getenv))
}

// run is the whole job; it returns the exit code (0 ok, duplicates
// included; 1 failure; 2 bad input).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, now time.Time, getenv func(string) string) int {
	fs := flag.NewFlagSet("agingtickets", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ticketsPath := fs.String("tickets", "examples/agingtickets/sample/tickets.csv", "open tickets, CSV (with header) or JSON")
	teamsPath := fs.String("teams", "examples/agingtickets/sample/teams.json", "team-to-room mapping and report settings")
	bucketsFlag := fs.String("buckets", "2,7,30", "age bucket upper bounds in days")
	maxList := fs.Int("list", 15, "oldest tickets listed per team (fewer if the message would pass Webex's limit)")
	card := fs.Bool("card", false, "send an adaptive card too, with the markdown as its fallback")
	nowFlag := fs.String("now", "", "the report's time, RFC 3339 (default: now)")
	queue := fs.String("queue", tasks.DefaultQueue, "courier queue")
	dry := fs.Bool("dry-run", false, "print the messages, enqueue nothing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *nowFlag != "" {
		t, err := time.Parse(time.RFC3339, *nowFlag)
		if err != nil {
			fmt.Fprintf(stderr, "-now %q: want RFC 3339\n", *nowFlag)
			return 2
		}
		now = t
	}
	buckets, err := ParseBuckets(*bucketsFlag)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	cfg, err := LoadConfig(*teamsPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	loc, err := time.LoadLocation(cfg.Timezone)
	if err != nil {
		fmt.Fprintf(stderr, "timezone %q: %v\n", cfg.Timezone, err)
		return 2
	}
	tickets, err := LoadTickets(*ticketsPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	reports, skipped := Build(tickets, buckets, now, cfg.Rooms)
	if skipped > 0 {
		fmt.Fprintf(stderr, "%d ticket(s) of teams without a room were left out\n", skipped)
	}
	var p *tasks.Producer
	if !*dry {
		rdb, err := redisClient(cmp.Or(getenv("REDIS_URL"), "redis://127.0.0.1:6379/0"))
		if err != nil {
			fmt.Fprintln(stderr, "REDIS_URL:", err)
			return 2
		}
		defer rdb.Close()
		if p, err = tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: *queue, Source: cfg.Report}); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	code := 0
	for _, r := range reports {
		md, text := r.Render(now, *maxList)
		m := tasks.Message{Message: webex.Message{RoomID: cfg.Rooms[r.Team], Markdown: md, Text: text}}
		if *card {
			m.Attachments = []webex.Attachment{{ContentType: webex.CardContentType, Content: mustJSON(r.Card(now))}}
		}
		key := Key(cfg.Report, r.Team, now, loc)
		if *dry {
			fmt.Fprintf(stdout, "--- %s (%s): markdown, %d bytes\n%s\n", r.Team, key, len(md), md)
			fmt.Fprintf(stdout, "--- %s: plain-text fallback, %d bytes\n%s\n", r.Team, len(text), text)
			continue
		}
		// Delivering a day-old summary is worse than none: expire it by evening.
		_, err := p.Enqueue(ctx, m, tasks.Key(key), tasks.ExpiresIn(12*time.Hour))
		switch {
		case errors.Is(err, tasks.ErrDeadLettered):
			fmt.Fprintf(stdout, "%s: dead-lettered earlier (%s): see asynqmon\n", r.Team, key)
			code = 1
		case errors.Is(err, tasks.ErrDuplicate):
			fmt.Fprintf(stdout, "%s: already sent today (%s), nothing new\n", r.Team, key)
		case err != nil:
			fmt.Fprintf(stdout, "%s: %v\n", r.Team, err)
			code = 1
		default:
			fmt.Fprintf(stdout, "%s: enqueued %s (%d tickets)\n", r.Team, key, r.Total)
		}
	}
	return code
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are rendered
	}
	return b
}

// redisClient connects to REDIS_URL in go-redis's forms: one Redis
// (redis://[user:password@]host:port/db, rediss:// for TLS), Sentinel
// (…?master_name=NAME&addr=sentinel2:port) or Cluster (addr= seeds without
// master_name). An error never shows the URL, nor any part of it: a
// password with an unencoded / ? # or & in it ends up in the path, the
// query or the host, and go-redis's own errors quote those.
func redisClient(raw string) (redis.UniversalClient, error) {
	const encode = " (its text is not shown: it may hold a password; percent-encode % / # ? @ and & in the password as %25 %2F %23 %3F %40 %26)"
	u, err := url.Parse(raw)
	if err != nil || u.Fragment != "" || strings.Contains(raw, "#") {
		return nil, errors.New("does not parse" + encode)
	}
	switch q := u.Query(); {
	case q.Has("master_name"):
		opt, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, errors.New("not a valid Sentinel form, redis://[user:password@]sentinel:port/db?master_name=NAME&addr=sentinel2:port" + encode)
		}
		return redis.NewFailoverClient(opt), nil
	case q.Has("addr"):
		opt, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, errors.New("not a valid Cluster form, redis://[user:password@]node:port?addr=node2:port" + encode)
		}
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, errors.New("not a valid URL of one Redis, redis://[user:password@]host:port/db" + encode)
	}
	return redis.NewClient(opt), nil
}
