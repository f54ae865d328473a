package enqueue

import (
	"strings"
	"testing"
)

// The relay's key prefix is refused (a key of that form would take a relay
// caller's Idempotency-Key); an upper-case http(s) scheme is a URL, other
// schemes are refused, and a path with control characters is quoted, never
// printed raw.
func TestKeysURLsAndPathsRefused(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	for _, tt := range []struct {
		stdin string
		want  string
	}{
		{`{"roomId":"r","text":"x","key":"relay/543cae55ff12/build-1"}`, `key: "relay/543cae55ff12/build-1": keys starting with relay/ are reserved for the relay`},
		{`{"roomId":"r","files":["ftp://x/a"]}`, `files: "ftp://x/a" is a URL that is not http(s)`},
		{`{"roomId":"r","files":["a\u0000b\u001b[2J"]}`, `files: "a\x00b\x1b[2J": a path with control characters`},
	} {
		code, out, _ := c.run(tt.stdin, "--jsonl", "-")
		if code != ExitInput || !strings.Contains(out, tt.want) || strings.ContainsAny(out, "\x00\x1b") {
			t.Errorf("%s: exit %d, output %q, want 2 and %q", tt.stdin, code, out, tt.want)
		}
	}
	code, out, _ := c.run("", "--room", "r", "--text", "x", "--file", "/tmp/a\x00b\x1b[2J")
	if code != ExitInput || strings.ContainsAny(out, "\x00\x1b") || !strings.Contains(out, "a path with control characters") {
		t.Errorf("--file with control characters: exit %d, output %q", code, out)
	}
	code, out, _ = c.run(`{"roomId":"r","files":["HTTPS://example.com/a.png"]}`, "--jsonl", "-")
	if p := c.payloads(); code != 0 || len(p) != 1 || len(p[0].Message.Files) != 1 || p[0].Message.Files[0] != "HTTPS://example.com/a.png" {
		t.Fatalf("upper-case scheme: exit %d %q, want one message with the URL", code, out)
	}
}

// Issue 16: the relay's control-character rule for text and markdown holds
// for the CLI too (the producer applies it): quoted, never printed raw.
func TestControlCharactersRefused(t *testing.T) {
	t.Parallel()
	c := newCLI(t)
	code, out, _ := c.run(`{"roomId":"r","text":"a\u0007b"}`+"\n"+`{"roomId":"r","markdown":"ok\tand\nlines"}`, "--jsonl", "-")
	if code != ExitInput || !strings.Contains(out, `text: contains the control character '\a' at byte 1`) || strings.Contains(out, "\a") || len(c.payloads()) != 1 {
		t.Errorf("JSONL text with a control character: exit %d, output %q, %d enqueued; want 2, the line refused, the other enqueued", code, out, len(c.payloads()))
	}
	code, out, _ = c.run("", "--room", "r", "--markdown", "x\x1b[2J")
	if code != ExitInput || !strings.Contains(out, `markdown: contains the control character '\x1b' at byte 1`) || strings.Contains(out, "\x1b") {
		t.Errorf("--markdown with a control character: exit %d, output %q", code, out)
	}
}
