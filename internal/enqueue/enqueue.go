// Package enqueue is the courier enqueue command: one message from flags, or
// many from JSON lines, handed to pkg/tasks, with an exit-code contract for
// scripts in any language.
package enqueue

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/courier-dev/courier/internal/redisurl"
	"github.com/courier-dev/courier/internal/settings"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Exit codes.
const (
	ExitOK      = 0 // every message enqueued (duplicates included)
	ExitFailure = 1 // Redis or another failure, or a key that was dead-lettered; wins over ExitInput
	ExitInput   = 2 // bad input only: nothing of an invalid line was enqueued, valid lines were
)

const usage = `Usage: enqueue [flags]            one message from flags
       enqueue --jsonl FILE|-     one message per JSON line

Enqueues Webex messages for courier's workers. Reads REDIS_URL
(default redis://127.0.0.1:6379/0).

Examples:
  # a markdown message to a room
  enqueue --room "$ROOM" --markdown "**Build failed** on main"

  # a chart and a PDF to a person: two Webex messages, in order, the text on the first
  enqueue --to-email ana@example.com --text "Weekly charts" --file chart.png --file report.pdf

  # an adaptive card with its fallback text, as the "reports" bot
  enqueue --room "$ROOM" --card card.json --text "Aging tickets" --bot reports

  # once a day, whatever the re-runs: the key makes a second run a duplicate
  enqueue --room "$ROOM" --markdown "$SUMMARY" --key "aging/team-a/$(date +%F)" --expires-in 6h

  # many messages from a script, one JSON object per line
  jq -c '.[] | {roomId: .room, markdown: .summary, key: .id}' teams.json | enqueue --jsonl -

JSON lines use Webex's field names (roomId, toPersonId, toPersonEmail,
parentId, text, markdown, attachments) plus files (http(s) URLs; local
paths only with --files-dir DIR, read under DIR), key, bot, queue, in
("10m"), at (RFC 3339), expiresIn ("2h"), maxRedeliveries, ordered (true)
and orderingKey (ordered lines with the same destination, or orderingKey,
are delivered in the order of the input). Each line
gets its own verdict: a line with anything after its object, or over
16 MiB, is invalid and reading goes on. Lines are enqueued as soon as the
input pauses and each result is printed when known, so a producer can keep
the pipe open and wait for a line's acknowledgement. Local files: regular
files only, at most the 1 MiB inline cap each.

SIGINT/SIGTERM: stop reading, enqueue and report the lines already read;
a second signal ends the process at once.

Exit status: 0 every message enqueued (duplicates count); 2 bad input only
(invalid lines reported with their number, valid lines enqueued); 1 Redis or
other failure, or a key whose message was dead-lettered earlier (wins over 2).

Flags:
`

// Line is one message of the JSON-lines input.
type Line struct {
	RoomID          string             `json:"roomId"`
	ToPersonID      string             `json:"toPersonId"`
	ToPersonEmail   string             `json:"toPersonEmail"`
	ParentID        string             `json:"parentId"`
	Text            string             `json:"text"`
	Markdown        string             `json:"markdown"`
	Files           []string           `json:"files"`
	Attachments     []webex.Attachment `json:"attachments"`
	Key             string             `json:"key"`
	Bot             string             `json:"bot"`
	Queue           string             `json:"queue"`
	In              string             `json:"in"`
	At              string             `json:"at"`
	ExpiresIn       string             `json:"expiresIn"`
	MaxRedeliveries *int               `json:"maxRedeliveries"`
	Ordered         bool               `json:"ordered"`
	OrderingKey     string             `json:"orderingKey"`
}

// outcome of one message, printed as a line.
type outcome struct {
	Line   int    `json:"line"`
	Status string `json:"status"` // enqueued, duplicate, dead_lettered, invalid, failed
	TaskID string `json:"task_id,omitempty"`
	Queue  string `json:"queue,omitempty"`
	Error  string `json:"error,omitempty"`
}

type summary struct {
	Messages     int `json:"messages"`
	Enqueued     int `json:"enqueued"`
	Duplicates   int `json:"duplicates"`
	DeadLettered int `json:"dead_lettered"`
	Invalid      int `json:"invalid"`
	Failed       int `json:"failed"`
}

type options struct {
	line      Line
	files     []string
	card      string
	jsonl     string
	filesDir  string
	jsonOut   bool
	timeout   time.Duration
	redisURL  string
	retention time.Duration
	// waitReplicas is tasks.ProducerConfig.WaitReplicas.
	waitReplicas int
}

// Run is the whole command; it returns the exit code.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if getenv == nil {
		getenv = os.Getenv
	}
	o, err := parseFlags(args, stderr, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "enqueue:", err)
		return ExitInput
	}
	mode, err := redisurl.ParseMode(getenv("REDIS_MODE"))
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: REDIS_MODE: %v\n", err)
		return ExitInput
	}
	ropt, err := redisurl.Parse(o.redisURL, mode)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: REDIS_URL %s: %v\n", redisurl.Redact(o.redisURL), err)
		return ExitInput
	}
	rdb := ropt.Tune(min(o.timeout, 5*time.Second), o.timeout, o.timeout, 1).NewClient()
	defer rdb.Close()
	pingCtx, cancel := context.WithTimeout(ctx, o.timeout)
	err = rdb.Ping(pingCtx).Err()
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "enqueue: redis at %s: no answer within %v: %s\n", redisurl.Redact(o.redisURL), o.timeout, redisurl.Scrub(err.Error(), o.redisURL))
		return ExitFailure
	}
	// The wait for replicas stays within --timeout, the client's read timeout.
	cfg := tasks.ProducerConfig{Source: "enqueue", KeyedRetention: o.retention, WaitReplicas: o.waitReplicas,
		ReplicaTimeout: max(min(tasks.DefaultReplicaTimeout, o.timeout/2), time.Millisecond)}
	p, err := tasks.NewProducer(rdb, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "enqueue:", err)
		return ExitFailure
	}
	out := &printer{w: stdout, json: o.jsonOut}
	if o.jsonl == "" {
		out.run(ctx, p, o.timeout, []pending{build(0, o.line, o.files, o.card, &fileReader{any: true, max: tasks.DefaultMaxInlineBytes})})
	} else {
		files := &fileReader{max: tasks.DefaultMaxInlineBytes}
		if o.filesDir != "" {
			root, err := os.OpenRoot(o.filesDir)
			if err != nil {
				fmt.Fprintln(stderr, "enqueue: --files-dir:", err)
				return ExitInput
			}
			defer root.Close()
			files.root = root
		}
		if err := out.stream(ctx, p, o, stdin, files); err != nil {
			fmt.Fprintln(stderr, "enqueue:", err)
			out.exit = ExitFailure
		}
	}
	out.summary()
	return out.code()
}

func parseFlags(args []string, stderr io.Writer, getenv func(string) string) (*options, error) {
	o := &options{}
	set := settings.New("enqueue")
	fs := set.FlagSet()
	fs.SetOutput(stderr)
	fs.Usage = func() { _, _ = io.WriteString(stderr, usage); fs.PrintDefaults() }
	l := &o.line
	fs.StringVar(&l.RoomID, "room", "", "room id")
	fs.StringVar(&l.ToPersonEmail, "to-email", "", "person's email (a direct message)")
	fs.StringVar(&l.ToPersonID, "to-person", "", "person id (a direct message)")
	fs.StringVar(&l.Text, "text", "", "plain text (at most 7439 bytes)")
	fs.StringVar(&l.Markdown, "markdown", "", "markdown (at most 7439 bytes)")
	fs.Func("file", "local file or http(s) URL to attach; repeat for several (one Webex message each)", func(v string) error {
		o.files = append(o.files, v)
		return nil
	})
	fs.StringVar(&o.card, "card", "", "adaptive card JSON file (needs --text or --markdown as fallback)")
	fs.StringVar(&l.ParentID, "parent", "", "parent message id (reply in a thread)")
	fs.StringVar(&l.Bot, "bot", "", "bot to send as (default: the worker's default bot)")
	fs.StringVar(&l.Key, "key", "", "idempotency key: the same key again is a duplicate")
	fs.StringVar(&l.Queue, "queue", "", "queue (default "+tasks.DefaultQueue+")")
	fs.StringVar(&l.In, "in", "", "deliver after this delay, e.g. 10m")
	fs.StringVar(&l.At, "at", "", "deliver at this time, RFC 3339")
	fs.StringVar(&l.ExpiresIn, "expires-in", "", "dead-letter as expired if not delivered within, e.g. 2h")
	fs.BoolVar(&l.Ordered, "ordered", false, "deliver after the ordered messages enqueued before it to the same destination")
	fs.StringVar(&l.OrderingKey, "ordering-key", "", "order by this key instead of the destination (implies --ordered)")
	fs.Func("max-redeliveries", "redeliveries after transient failures (default 30)", func(v string) error {
		var n int
		if _, err := fmt.Sscan(v, &n); err != nil {
			return fmt.Errorf("want a whole number")
		}
		l.MaxRedeliveries = &n
		return nil
	})
	fs.StringVar(&o.jsonl, "jsonl", "", "read one message per JSON line from FILE, or - for standard input")
	fs.StringVar(&o.filesDir, "files-dir", "", "with --jsonl: read the lines' local files under this directory only (default: no local files, URLs only)")
	fs.BoolVar(&o.jsonOut, "json", false, "print one JSON object per message and a summary")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up on an unreachable or silent Redis after this long")
	set.Func("wait-replicas", "COURIER_WAIT_REPLICAS", "0", "return only once this many Redis replicas have each message (WAIT), so a failover cannot lose it; 0: no wait", func(v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return fmt.Errorf("want 0 (no wait) or more, got %q", v)
		}
		o.waitReplicas = n
		return nil
	})
	set.Duration(&o.retention, "keyed-retention", "COURIER_KEYED_RETENTION", tasks.DefaultKeyedRetention, "keep delivered keyed messages (and so their keys) this long")
	// An empty variable is unset here, as for REDIS_URL.
	if err := set.Parse(args, func(k string) (string, bool) { v := getenv(k); return v, v != "" }); err != nil {
		if fs.Parsed() && fs.NArg() > 0 {
			return nil, fmt.Errorf("%w (quote the text?)", err)
		}
		return nil, err
	}
	o.redisURL = getenv("REDIS_URL")
	if o.redisURL == "" {
		o.redisURL = "redis://127.0.0.1:6379/0"
	}
	if o.timeout <= 0 {
		return nil, errors.New("--timeout must be greater than 0")
	}
	if o.jsonl != "" && fs.NFlag() > countSet(fs, "jsonl", "json", "timeout", "keyed-retention", "queue", "bot", "files-dir", "wait-replicas") {
		return nil, errors.New("--jsonl reads every message from JSON lines: only --queue and --bot (defaults for the lines), --files-dir, --json and --timeout go with it")
	}
	if o.filesDir != "" && o.jsonl == "" {
		return nil, errors.New("--files-dir goes with --jsonl (files named by --file are read as given)")
	}
	return o, nil
}

// countSet counts which of the named flags were given.
func countSet(fs *flag.FlagSet, names ...string) int {
	n := 0
	fs.Visit(func(f *flag.Flag) {
		for _, name := range names {
			if f.Name == name {
				n++
			}
		}
	})
	return n
}

// clip shortens an input value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// pending is one message ready to enqueue, or the input error that stops it.
type pending struct {
	line int
	req  tasks.Request
	err  error
}

// build turns a line of input into a request, reading its files and card
// through files.
func build(n int, l Line, extraFiles []string, cardFile string, files *fileReader) pending {
	p := pending{line: n}
	m := tasks.Message{Message: webex.Message{RoomID: l.RoomID, ToPersonID: l.ToPersonID, ToPersonEmail: l.ToPersonEmail,
		ParentID: l.ParentID, Text: l.Text, Markdown: l.Markdown, Attachments: l.Attachments}}
	var errs []error
	for _, f := range append(l.Files, extraFiles...) {
		if scheme, _, ok := strings.Cut(f, "://"); ok && !strings.ContainsAny(scheme, "/\\") {
			if !strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") {
				errs = append(errs, fmt.Errorf("files: %q is a URL that is not http(s): Webex fetches only http(s)", clip(f)))
				continue
			}
			m.Files = append(m.Files, f)
			continue
		}
		file, err := files.read(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("files: %w", err))
			continue
		}
		m.Uploads = append(m.Uploads, file)
	}
	if cardFile != "" {
		card, err := files.read(cardFile)
		b := card.Data
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("card: %w", err))
		case !json.Valid(b):
			errs = append(errs, fmt.Errorf("card: %s is not JSON", cardFile))
		default:
			m.Attachments = append(m.Attachments, webex.Attachment{ContentType: webex.CardContentType, Content: json.RawMessage(b)})
		}
	}
	opts := []tasks.Option{}
	for _, opt := range []struct {
		v    string
		name string
		set  func(string) (tasks.Option, error)
	}{
		{l.In, "in", func(v string) (tasks.Option, error) { d, err := time.ParseDuration(v); return tasks.ProcessIn(d), err }},
		{l.At, "at", func(v string) (tasks.Option, error) {
			t, err := time.Parse(time.RFC3339, v)
			return tasks.ProcessAt(t), err
		}},
		{l.ExpiresIn, "expiresIn", func(v string) (tasks.Option, error) { d, err := time.ParseDuration(v); return tasks.ExpiresIn(d), err }},
	} {
		if opt.v == "" {
			continue
		}
		o, err := opt.set(opt.v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a valid value", opt.name, opt.v))
			continue
		}
		opts = append(opts, o)
	}
	if strings.HasPrefix(l.Key, tasks.ReservedKeyPrefix) { // the producer refuses it too; said here with the line's other problems
		errs = append(errs, fmt.Errorf("key: %q: %w", clip(l.Key), tasks.ErrReservedKey))
	}
	if l.Key != "" {
		opts = append(opts, tasks.Key(l.Key))
	}
	if l.Bot != "" {
		opts = append(opts, tasks.Bot(l.Bot))
	}
	if l.Queue != "" {
		opts = append(opts, tasks.Queue(l.Queue))
	}
	if l.MaxRedeliveries != nil {
		opts = append(opts, tasks.MaxRedeliveries(*l.MaxRedeliveries))
	}
	if l.Ordered || l.OrderingKey != "" {
		opts = append(opts, tasks.OrderingKey(l.OrderingKey))
	}
	p.req = tasks.Request{Message: m, Options: opts}
	p.err = errors.Join(errs...)
	return p
}

// printer reports outcomes and keeps the exit code.
type printer struct {
	w    io.Writer
	json bool
	sum  summary
	exit int
}

func (pr *printer) code() int {
	switch {
	case pr.exit == ExitFailure || pr.sum.Failed > 0 || pr.sum.DeadLettered > 0:
		return ExitFailure
	case pr.sum.Invalid > 0:
		return ExitInput
	}
	return ExitOK
}

// run enqueues the valid messages of a batch concurrently and reports every one.
func (pr *printer) run(ctx context.Context, p *tasks.Producer, timeout time.Duration, batch []pending) {
	var reqs []tasks.Request
	var idx []int
	for i, b := range batch {
		if b.err == nil {
			reqs = append(reqs, b.req)
			idx = append(idx, i)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	results := p.EnqueueMany(ctx, reqs)
	res := make([]*tasks.Result, len(batch))
	for j, i := range idx {
		res[i] = &results[j]
	}
	for i, b := range batch {
		o := outcome{Line: b.line}
		err := b.err
		if res[i] != nil {
			err = res[i].Err
			if res[i].Enqueued != nil {
				o.TaskID, o.Queue = res[i].Enqueued.TaskID, res[i].Enqueued.Queue
			}
		}
		var ve *webex.ValidationError
		var dup *tasks.DuplicateError
		switch {
		case err == nil:
			o.Status = "enqueued"
			pr.sum.Enqueued++
		case errors.As(err, &dup) && errors.Is(err, tasks.ErrDeadLettered):
			o.Status, o.TaskID, o.Queue, o.Error = "dead_lettered", dup.Key, dup.Queue, err.Error()
			pr.sum.DeadLettered++
		case errors.As(err, &dup):
			o.Status, o.TaskID, o.Queue = "duplicate", dup.Key, dup.Queue
			pr.sum.Duplicates++
		case b.err != nil || errors.As(err, &ve):
			o.Status, o.Error = "invalid", oneLine(err)
			pr.sum.Invalid++
		default:
			o.Status, o.Error = "failed", oneLine(err)
			pr.sum.Failed++
		}
		pr.sum.Messages++
		pr.print(o)
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func (pr *printer) print(o outcome) {
	if pr.json {
		b, _ := json.Marshal(o)
		fmt.Fprintf(pr.w, "%s\n", b)
		return
	}
	where := ""
	if o.Line > 0 {
		where = fmt.Sprintf("line %d: ", o.Line)
	}
	switch o.Status {
	case "enqueued":
		fmt.Fprintf(pr.w, "%senqueued %s (queue %s)\n", where, o.TaskID, o.Queue)
	case "duplicate":
		fmt.Fprintf(pr.w, "%sduplicate %s (queue %s): already enqueued or delivered\n", where, o.TaskID, o.Queue)
	case "dead_lettered":
		fmt.Fprintf(pr.w, "%sdead-lettered earlier %s (queue %s): re-run or delete it in asynqmon\n", where, o.TaskID, o.Queue)
	default:
		fmt.Fprintf(pr.w, "%s%s: %s\n", where, o.Status, o.Error)
	}
}

func (pr *printer) summary() {
	s := pr.sum
	if pr.json {
		b, _ := json.Marshal(map[string]summary{"summary": s})
		fmt.Fprintf(pr.w, "%s\n", b)
		return
	}
	fmt.Fprintf(pr.w, "%d message(s): %d enqueued, %d duplicate, %d dead-lettered earlier, %d invalid, %d failed\n",
		s.Messages, s.Enqueued, s.Duplicates, s.DeadLettered, s.Invalid, s.Failed)
}
