package enqueue

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/pkg/tasks"
)

type cli struct {
	t         *testing.T
	url       string
	queue     string
	inspector *asynq.Inspector
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	rdb := redistest.Client(t)
	opt := redistest.Options(t)
	c := &cli{t: t, url: fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB), queue: redistest.Name(t), inspector: asynq.NewInspectorFromRedisClient(rdb)}
	if u := os.Getenv("REDIS_URL"); u != "" {
		c.url = u
	}
	t.Cleanup(func() { _ = c.inspector.DeleteQueue(c.queue, true) })
	redistest.DeleteKeys(t, rdb, "asynq:{"+c.queue+"}:*")
	return c
}

func (c *cli) run(stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	getenv := func(k string) string {
		if k == "REDIS_URL" {
			return c.url
		}
		return ""
	}
	code = Run(context.Background(), append([]string{"--queue", c.queue}, args...), strings.NewReader(stdin), &out, &errb, getenv)
	return code, out.String(), errb.String()
}

func (c *cli) payloads() []*tasks.Payload {
	c.t.Helper()
	var out []*tasks.Payload
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){c.inspector.ListPendingTasks, c.inspector.ListScheduledTasks} {
		infos, err := list(c.queue)
		if err != nil {
			continue
		}
		for _, info := range infos {
			p, err := tasks.DecodePayload(info.Payload)
			if err != nil {
				c.t.Fatal(err)
			}
			out = append(out, p)
		}
	}
	return out
}

func writeFile(t *testing.T, name, content string) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEveryFlag(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	png := writeFile(t, "chart.png", "\x89PNG-bytes")
	pdf := writeFile(t, "report.pdf", "%PDF-bytes")
	card := writeFile(t, "card.json", `{"type":"AdaptiveCard","version":"1.3"}`)
	code, out, errs := c.run("", "--to-email", "ana@example.com", "--text", "Weekly charts", "--markdown", "**Weekly**",
		"--file", png, "--file", pdf, "--file", "https://example.com/x.png", "--parent", "p1", "--bot", "reports", "--key", "weekly-1",
		"--in", "10m", "--expires-in", "2h", "--max-redeliveries", "4")
	if code != ExitOK {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	if !strings.Contains(out, "enqueued weekly-1 (queue "+c.queue+")") {
		t.Fatalf("output %q", out)
	}
	info, err := c.inspector.GetTaskInfo(c.queue, "weekly-1")
	if err != nil || info.State != asynq.TaskStateScheduled || info.MaxRetry != 5 {
		t.Fatalf("task %+v %v", info, err)
	}
	p, _ := tasks.DecodePayload(info.Payload)
	m := p.Message
	if m.ToPersonEmail != "ana@example.com" || m.Text != "Weekly charts" || m.Markdown != "**Weekly**" || m.ParentID != "p1" || p.Bot != "reports" ||
		p.Key != "weekly-1" || p.ExpiresAt == nil || len(m.Uploads) != 2 || m.Uploads[0].Name != "chart.png" || string(m.Uploads[1].Data) != "%PDF-bytes" ||
		len(m.Files) != 1 || m.Files[0] != "https://example.com/x.png" || p.Source != "enqueue" {
		t.Fatalf("payload %+v", p)
	}
	if len(m.Parts()) != 3 {
		t.Fatalf("%d parts", len(m.Parts()))
	}

	code, _, _ = c.run("", "--room", "r", "--text", "fallback", "--card", card, "--at", time.Now().Add(time.Hour).Format(time.RFC3339))
	if code != ExitOK {
		t.Fatalf("card: exit %d", code)
	}
	found := false
	for _, p := range c.payloads() {
		if len(p.Message.Attachments) == 1 && strings.Contains(string(p.Message.Attachments[0].Content), "AdaptiveCard") {
			found = true
		}
	}
	if !found {
		t.Fatal("card not in any payload")
	}
}

func TestValidationMessages(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--text", "no destination"}, "roomId: exactly one of roomId, toPersonId, toPersonEmail is required, got 0"},
		{[]string{"--room", "r", "--to-email", "a@b.c", "--text", "x"}, "got 2"},
		{[]string{"--room", "r"}, "text: one of text, markdown or a file is required"},
		{[]string{"--room", "r", "--markdown", strings.Repeat("x", 7440)}, "markdown: is 7440 bytes, the limit is 7439"},
		{[]string{"--room", "r", "--text", "x", "--file", "/nonexistent/file.png"}, "files: open /nonexistent/file.png"},
		{[]string{"--room", "r", "--card", writeFile(t, "bad.json", "{")}, "is not JSON"},
		{[]string{"--room", "r", "--card", writeFile(t, "c.json", `{"type":"AdaptiveCard"}`)}, "a card needs a text or markdown fallback"},
		{[]string{"--room", "r", "--text", "x", "--key", "has space"}, "key: contains ' '"},
		{[]string{"--room", "r", "--text", "x", "--in", "soon"}, `in: "soon" is not a valid value`},
		{[]string{"--room", "r", "--text", "x", "--at", "tomorrow"}, `at: "tomorrow" is not a valid value`},
		{[]string{"--room", "r", "--text", "x", "--max-redeliveries", "-2"}, "max_redeliveries: is -2"},
	}
	for _, tt := range tests {
		code, out, _ := c.run("", tt.args...)
		if code != ExitInput || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, output %q, want 2 and %q", tt.args, code, out, tt.want)
		}
	}
	if n := len(c.payloads()); n != 0 {
		t.Fatalf("%d invalid messages enqueued", n)
	}
	if code, _, errs := c.run("", "--room", "r", "stray"); code != ExitInput || !strings.Contains(errs, `unexpected argument "stray"`) {
		t.Fatalf("stray argument: %d %q", code, errs)
	}
}

func TestJSONLinesWithABadLine(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	in := `{"roomId":"r","markdown":"one","key":"jl-1"}
{"roomId":"r","text":"` + strings.Repeat("x", 8000) + `"}

# a comment
{"romId":"typo","text":"x"}
{"toPersonEmail":"a@b.c","text":"four"}
not json at all
`
	code, out, _ := c.run(in, "--jsonl", "-", "--json")
	if code != ExitInput {
		t.Fatalf("exit %d, want 2:\n%s", code, out)
	}
	var got []outcome
	var sum map[string]summary
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines[:len(lines)-1] {
		var o outcome
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, o)
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		line   int
		status string
		error  string
	}{
		{1, "enqueued", ""}, {2, "invalid", "text: is 8000 bytes"}, {5, "invalid", `unknown field "romId"`}, {6, "enqueued", ""}, {7, "invalid", "not a message object"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i, w := range want {
		if got[i].Line != w.line || got[i].Status != w.status || !strings.Contains(got[i].Error, w.error) {
			t.Errorf("line %d: %+v, want %+v", i, got[i], w)
		}
	}
	if s := sum["summary"]; s.Messages != 5 || s.Enqueued != 2 || s.Invalid != 3 {
		t.Fatalf("summary %+v", s)
	}
	if n := len(c.payloads()); n != 2 {
		t.Fatalf("%d enqueued, want the 2 valid lines", n)
	}
}

func TestDuplicatesAreSuccess(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	in := `{"roomId":"r","text":"x","key":"daily-2026-11-28"}` + "\n"
	if code, out, _ := c.run(in, "--jsonl", "-"); code != ExitOK || !strings.Contains(out, "line 1: enqueued daily-2026-11-28") {
		t.Fatalf("first run: %d %q", code, out)
	}
	code, out, _ := c.run(in, "--jsonl", "-")
	if code != ExitOK || !strings.Contains(out, "line 1: duplicate daily-2026-11-28") || !strings.Contains(out, "1 duplicate") {
		t.Fatalf("re-run: %d %q", code, out)
	}
}

func TestDeadLetteredKeyExits1(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	if code, _, _ := c.run("", "--room", "r", "--text", "x", "--key", "dl-1"); code != ExitOK {
		t.Fatal("enqueue failed")
	}
	if err := c.inspector.ArchiveTask(c.queue, "dl-1"); err != nil {
		t.Fatal(err)
	}
	code, out, _ := c.run("", "--room", "r", "--text", "x", "--key", "dl-1")
	if code != ExitFailure || !strings.Contains(out, "dead-lettered earlier dl-1") {
		t.Fatalf("%d %q", code, out)
	}
}

func TestUnreachableRedis(t *testing.T) {
	t.Parallel()
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	closed, _ := redistest.FreePort()
	for _, addr := range []string{silent.Addr().String(), fmt.Sprintf("127.0.0.1:%d", closed)} {
		var out, errb bytes.Buffer
		start := time.Now()
		code := Run(context.Background(), []string{"--room", "r", "--text", "x", "--timeout", "1s"}, nil, &out, &errb,
			func(k string) string {
				if k == "REDIS_URL" {
					return "redis://:hidden-pw@" + addr + "/0"
				}
				return ""
			})
		took := time.Since(start)
		if code != ExitFailure || !strings.Contains(errb.String(), "no answer within 1s") || strings.Contains(errb.String(), "hidden-pw") {
			t.Errorf("%s: exit %d, stderr %q", addr, code, errb.String())
		}
		if took > 4*time.Second {
			t.Errorf("%s: took %v with a 1s bound", addr, took)
		}
	}
}

func TestHelpHasExamples(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"-help"}, nil, &out, &errb, nil); code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--markdown", "--file chart.png", "--card card.json", "--jsonl -", "Exit status"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// COURIER_KEYED_RETENTION is read as every other setting is: a flag wins,
// and a bad value names the variable.
func TestKeyedRetentionSetting(t *testing.T) {
	t.Parallel()
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "COURIER_KEYED_RETENTION" {
				return v
			}
			return ""
		}
	}
	o, err := parseFlags([]string{"--room", "r", "--text", "x"}, io.Discard, env("2h"))
	if err != nil || o.retention != 2*time.Hour {
		t.Fatalf("from the variable: %v, %v", o, err)
	}
	o, err = parseFlags([]string{"--keyed-retention", "3h", "--room", "r"}, io.Discard, env("2h"))
	if err != nil || o.retention != 3*time.Hour {
		t.Fatalf("the flag must win: %v, %v", o, err)
	}
	o, err = parseFlags(nil, io.Discard, env(""))
	if err != nil || o.retention != tasks.DefaultKeyedRetention {
		t.Fatalf("default: %v, %v", o, err)
	}
	_, err = parseFlags(nil, io.Discard, env("soon"))
	if err == nil || err.Error() != `COURIER_KEYED_RETENTION: want a duration such as 30s or 5m, got "soon"` {
		t.Fatalf("bad value: %v", err)
	}
}

// --wait-replicas: a message no replica has is a failure (exit 1) that says
// so; with a replica in sync it is enqueued. REDIS_MODE is read and checked.
func TestWaitReplicasFlag(t *testing.T) {
	t.Parallel()
	primary := redistest.Start(t, false)
	run := func(env map[string]string, args ...string) (int, string) {
		var out, errb bytes.Buffer
		getenv := func(k string) string { return env[k] }
		code := Run(context.Background(), append([]string{"--room", "r", "--text", "x", "--timeout", "5s"}, args...), nil, &out, &errb, getenv)
		return code, out.String() + errb.String()
	}
	env := map[string]string{"REDIS_URL": "redis://" + primary.Addr + "/0"}
	if code, out := run(env, "--wait-replicas", "1"); code != ExitFailure || !strings.Contains(out, "0 of 1 replicas") {
		t.Errorf("no replica: exit %d, %s", code, out)
	}
	// a --timeout below the 1s wait: the wait is cut to fit, not the read
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"--room", "r", "--text", "x", "--timeout", "400ms", "--wait-replicas", "1"}, nil, &out, &errb,
		func(k string) string { return env[k] })
	if code != ExitFailure || !strings.Contains(out.String()+errb.String(), "0 of 1 replicas") {
		t.Errorf("no replica, --timeout 400ms: exit %d, %s%s", code, out.String(), errb.String())
	}
	redistest.StartReplica(t, primary)
	if code, out := run(env, "--wait-replicas", "1"); code != ExitOK {
		t.Errorf("with a replica: exit %d, %s", code, out)
	}
	env["REDIS_MODE"] = "sentinel"
	if code, out := run(env); code != ExitInput || !strings.Contains(out, "master_name") {
		t.Errorf("REDIS_MODE=sentinel without master_name: exit %d, %s", code, out)
	}
}

// A negative --wait-replicas (or COURIER_WAIT_REPLICAS) is bad input (exit
// 2) named by its flag, found before Redis is asked.
func TestWaitReplicasFlagNegative(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--wait-replicas", "-1"}, nil, `-wait-replicas: want 0 (no wait) or more, got "-1"`},
		{nil, map[string]string{"COURIER_WAIT_REPLICAS": "-2"}, `COURIER_WAIT_REPLICAS: want 0 (no wait) or more, got "-2"`},
	} {
		var out, errb bytes.Buffer
		env := map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0"} // nothing listens: Redis must not be asked
		maps.Copy(env, tt.env)
		code := Run(context.Background(), append([]string{"--room", "r", "--text", "x", "--timeout", "2s"}, tt.args...), nil, &out, &errb,
			func(k string) string { return env[k] })
		if code != ExitInput || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("%v %v: exit %d, %s, want exit %d and %q", tt.args, tt.env, code, errb.String(), ExitInput, tt.want)
		}
	}
}
