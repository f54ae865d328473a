package enqueue

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/testutil"
)

// outcomes parses --json output: every line but the summary.
func outcomes(t *testing.T, out string) []outcome {
	t.Helper()
	var got []outcome
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for _, l := range lines[:len(lines)-1] {
		var o outcome
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, o)
	}
	return got
}

// Every line gets its own verdict: two objects on a line are refused, and
// a line over the limit is reported while the lines after it are enqueued.
func TestEveryLineItsOwnVerdict(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	in := `{"roomId":"r","text":"one"}{"roomId":"r","text":"two"}
{"roomId":"r","text":"three"} trailing
{"roomId":"r","text":"` + strings.Repeat("x", MaxLineBytes) + `"}
{"roomId":"r","text":"after the long line"}
{"roomId":"r","text":"last, no newline"}`
	code, out, _ := c.run(in, "--jsonl", "-", "--json")
	got := outcomes(t, out)
	want := []string{"invalid", "invalid", "invalid", "enqueued", "enqueued"}
	if code != ExitInput || len(got) != len(want) {
		t.Fatalf("exit %d, %+v", code, got)
	}
	for i, w := range want {
		if got[i].Line != i+1 || got[i].Status != w {
			t.Errorf("line %d: %+v, want %s", i+1, got[i], w)
		}
	}
	if !strings.Contains(got[0].Error, "one message per line") || !strings.Contains(got[2].Error, "is over 16777216 bytes") {
		t.Errorf("errors: %q / %q", got[0].Error, got[2].Error)
	}
	if n := len(c.payloads()); n != 2 {
		t.Fatalf("%d enqueued, want 2", n)
	}
}

type syncBuffer = testutil.Buffer

// A line is enqueued and answered while its pipe stays open.
func TestStreamingInputAnsweredBeforeEOF(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	pr, pw := io.Pipe()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(context.Background(), []string{"--queue", c.queue, "--jsonl", "-", "--json"}, pr, &out, io.Discard,
			func(k string) string {
				if k == "REDIS_URL" {
					return c.url
				}
				return ""
			})
	}()
	for i, line := range []string{`{"roomId":"r","text":"first"}`, `{"roomId":"r","text":"second"}`} {
		if _, err := io.WriteString(pw, line+"\n"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(out.String(), `"status":"enqueued"`) < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("line %d not answered while the pipe is open; output %q", i+1, out.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	pw.Close()
	if code := <-done; code != ExitOK {
		t.Fatalf("exit %d", code)
	}
}

// Local files: regular files only, within the inline cap; from JSON lines
// only under --files-dir.
func TestLocalFiles(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ok.png"), []byte("\x89PNG"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.bin")
	if err := os.WriteFile(big, make([]byte, 1<<20+1), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ file, want string }{
		{"/dev/zero", "/dev/zero is not a regular file"},
		{fifo, "fifo is not a regular file"},
		{big, "over the inline limit of 1048576 bytes"},
		{dir, "is not a regular file"},
	} {
		code, out, _ := c.run("", "--room", "r", "--text", "x", "--file", tt.file)
		if code != ExitInput || !strings.Contains(out, tt.want) {
			t.Errorf("--file %s: exit %d %q, want %q", tt.file, code, out, tt.want)
		}
	}
	in := `{"roomId":"r","files":["ok.png"]}
{"roomId":"r","files":["../etc/passwd"]}
{"roomId":"r","files":["` + big + `"]}
`
	code, out, _ := c.run(in, "--jsonl", "-", "--json")
	got := outcomes(t, out)
	if code != ExitInput || len(got) != 3 || got[0].Status != "invalid" || !strings.Contains(got[0].Error, "only under --files-dir") {
		t.Fatalf("without --files-dir: exit %d %+v", code, got)
	}
	code, out, _ = c.run(in, "--jsonl", "-", "--json", "--files-dir", dir)
	got = outcomes(t, out)
	if code != ExitInput || len(got) != 3 || got[0].Status != "enqueued" || got[1].Status != "invalid" || got[2].Status != "invalid" {
		t.Fatalf("with --files-dir: exit %d %+v", code, got)
	}
	if n := len(c.payloads()); n != 1 || len(c.payloads()[0].Message.Uploads) != 1 {
		t.Fatalf("%d payloads", n)
	}
}
