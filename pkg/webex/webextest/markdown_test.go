package webextest_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func TestFindLiterals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, markdown string
		want           string // kind@line, comma-separated
	}{
		{"what Webex renders", "**bold** *italic* [link](https://x.example)\n\n1. one\n2. two\n\n- a\n- b\n\n> quote\n\n`a | b`\n",
			""},
		{"mentions and autolinks", "hi <@personEmail:ana@example.com> and <@personId:Y2lz|Ana>, <@all>: see <https://x.example>", ""},
		{"a pipe table", "**Report**\n\n| priority | 0-2 days |\n|---|---|\n| P1 | 3 |\n", "table@3"},
		{"a table without outer pipes", "a | b\n:--|--:\n1 | 2\n", "table@1"},
		{"a one-column table", "| a |\n| --- |\n", "table@1"},
		{"a rule is not a table", "a | b is text\n\n---\n\nc\n", ""},
		{"html", "line one<br>two\n<b>bold</b>\n<!-- note -->\n<img src=x/>", "html@1,html@2,html@3,html@4"},
		{"comparisons are not html", "a < b and c > d, 1<2", ""},
		{"escaped html", `\<b> is shown as typed, on purpose`, ""},
		{"images", "![chart](https://x.example/c.png)\ntext ![ref][1]", "image@1,image@2"},
		{"escaped image", `\![not an image](x)`, ""},
		{"inside a code block", "```\n| a | b |\n|---|---|\n<b>\n![x](y)\n```\nafter\n", ""},
		{"after a code block", "~~~~\n```\n~~~~\n<b>x</b>\n", "html@4"},
		{"unclosed code block", "```\n<b>\n", ""},
		{"inside inline code", "use `<br>` or ``![x](y)`` and `|---|`", ""},
		{"unclosed backtick", "a ` then <i>x</i>", "html@1"},
	}
	for _, tt := range tests {
		var got []string
		for _, l := range webextest.FindLiterals(tt.markdown) {
			got = append(got, fmt.Sprintf("%s@%d", l.Kind, l.Line))
		}
		if strings.Join(got, ",") != tt.want {
			t.Errorf("%s: found %v, want %q", tt.name, got, tt.want)
		}
	}
}

func TestFindLiteralsNamesTheLine(t *testing.T) {
	t.Parallel()
	got := webextest.FindLiterals("intro\n| a | b |\n|---|---|\n" + strings.Repeat("x", 100) + "<br>")
	if len(got) != 2 || got[0].Text != "| a | b |" || len(got[1].Text) != 80 || got[1].Line != 4 {
		t.Fatalf("%+v", got)
	}
	got = webextest.FindLiterals(strings.Repeat("é", 50) + "<br>") // 2 bytes each: byte 80 starts a rune, 81 does not
	if len(got) != 1 || got[0].Text != strings.Repeat("é", 40) {
		t.Fatalf("%+v", got)
	}
	got = webextest.FindLiterals("x" + strings.Repeat("é", 50) + "<br>")
	if len(got) != 1 || got[0].Text != "x"+strings.Repeat("é", 39) {
		t.Fatalf("%+v", got)
	}
}

// The simulator accepts markdown Webex shows literally, as Webex does, and
// marks it on the stored message and with a warning.
func TestSimMarksLiteralMarkdown(t *testing.T) {
	t.Parallel()
	logs := &lines{}
	s := webextest.NewServer(t, webextest.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	c := s.Client(t, webextest.DefaultToken)
	ctx := context.Background()
	if _, err := c.CreateMessage(ctx, webex.Message{RoomID: "r", Markdown: "| a | b |\n|---|---|\n| 1 | 2 |"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateMessage(ctx, webex.Message{RoomID: "r", Markdown: "**fine**\n\n- a\n- b"}); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages("r")
	if len(msgs) != 2 || len(msgs[0].Literals) != 1 || msgs[0].Literals[0].Kind != webextest.LiteralTable || msgs[1].Literals != nil {
		t.Fatalf("stored %+v", msgs)
	}
	out := logs.String()
	if strings.Count(out, "level=WARN") != 1 || !strings.Contains(out, "kinds=table") || !strings.Contains(out, "message_id="+msgs[0].ID) {
		t.Fatalf("log %q", out)
	}
}

// lines is a goroutine-safe log sink.
type lines struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
