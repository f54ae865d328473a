package webex

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	card := json.RawMessage(`{"type":"AdaptiveCard","version":"1.3"}`)
	long := strings.Repeat("x", MaxTextBytes+1)
	tests := []struct {
		name  string
		m     Message
		field string // "" = valid
		want  string
	}{
		{"text to room", Message{RoomID: "r", Text: "hi"}, "", ""},
		{"markdown to email", Message{ToPersonEmail: "a@b.c", Markdown: "**hi**"}, "", ""},
		{"file url only", Message{ToPersonID: "p", Files: []string{"https://x/y.png"}}, "", ""},
		{"local file only", Message{RoomID: "r", File: &File{Name: "a.png", Data: []byte{1}}}, "", ""},
		{"card with fallback", Message{RoomID: "r", Text: "fb", Attachments: []Attachment{{CardContentType, card}}}, "", ""},
		{"exact limit", Message{RoomID: "r", Text: strings.Repeat("é", MaxTextBytes/2) + "x"}, "", ""}, // 7439 bytes
		{"limit counts bytes not characters", Message{RoomID: "r", Markdown: strings.Repeat("é", MaxTextBytes/2+1)}, "markdown", "is 7440 bytes, the limit is 7439"},
		{"text limit counts bytes not characters", Message{RoomID: "r", Text: strings.Repeat("é", MaxTextBytes/2+1)}, "text", "is 7440 bytes, the limit is 7439"}, // 3720 characters
		{"markdown exact limit", Message{RoomID: "r", Markdown: strings.Repeat("é", MaxTextBytes/2) + "x"}, "", ""},
		{"https file url", Message{RoomID: "r", Files: []string{"HTTPS://files.example.com/a.pdf?sig=s3cret"}}, "", ""},
		{"file path not url", Message{RoomID: "r", Files: []string{"/tmp/report.pdf"}}, "files", "entry 1 has no scheme, must be an http or https URL"},
		{"ftp file url", Message{RoomID: "r", Files: []string{"ftp://files.example.com/a.pdf"}}, "files", `entry 1 has scheme "ftp", must be an http or https URL`},
		{"file url without host", Message{RoomID: "r", Files: []string{"https:///a.pdf"}}, "files", "entry 1 has no host"},
		{"local file at the limit", Message{RoomID: "r", File: &File{Name: "big.bin", Size: MaxFileBytes, Open: openNothing}}, "", ""},
		{"local file over the limit", Message{RoomID: "r", File: &File{Name: "big.bin", Size: MaxFileBytes + 1, Open: openNothing}}, "files", `"big.bin" is 104857601 bytes, the limit is 104857600`},
		{"local file with data and open", Message{RoomID: "r", File: &File{Name: "a", Data: []byte{1}, Open: openNothing, Size: 1}}, "files", "has Data or Open, not both"},
		{"no destination", Message{Text: "hi"}, "roomId", "exactly one of roomId, toPersonId, toPersonEmail is required, got 0"},
		{"two destinations", Message{RoomID: "r", ToPersonEmail: "a@b.c", Text: "hi"}, "roomId", "got 2"},
		{"no content", Message{RoomID: "r"}, "text", "one of text, markdown or a file is required"},
		{"text too long", Message{RoomID: "r", Text: long}, "text", "is 7440 bytes, the limit is 7439"},
		{"markdown too long", Message{RoomID: "r", Markdown: long}, "markdown", "is 7440 bytes, the limit is 7439"},
		{"two file urls", Message{RoomID: "r", Files: []string{"https://x/a", "https://x/b"}}, "files", "has 2 files, the limit is 1 per message"},
		{"url and local file", Message{RoomID: "r", Files: []string{"https://x/a"}, File: &File{Name: "b", Data: []byte{1}}}, "files", "has 2 files"},
		{"unnamed file", Message{RoomID: "r", File: &File{Data: []byte{1}}}, "files", "needs a name"},
		{"two cards", Message{RoomID: "r", Text: "fb", Attachments: []Attachment{{CardContentType, card}, {CardContentType, card}}}, "attachments", "has 2 cards, the limit is 1"},
		{"wrong card type", Message{RoomID: "r", Text: "fb", Attachments: []Attachment{{"text/html", card}}}, "attachments", `must be "application/vnd.microsoft.card.adaptive"`},
		{"card not json", Message{RoomID: "r", Text: "fb", Attachments: []Attachment{{CardContentType, json.RawMessage("{")}}}, "attachments", "content must be the card's JSON"},
		{"card without fallback", Message{RoomID: "r", Attachments: []Attachment{{CardContentType, card}}}, "text", "needs a text or markdown fallback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.m.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("valid message rejected: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.field+": ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want field %q with %q", err, tt.field, tt.want)
			}
			if d := retrypolicy.Classify(err, nil); d.Class != retrypolicy.Permanent {
				t.Fatalf("validation error classified %v", d.Class)
			}
		})
	}
}

func openNothing() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil }

// The error never quotes a file URL, which may carry a signed query.
func TestValidateKeepsFileURLsOut(t *testing.T) {
	t.Parallel()
	err := (&Message{RoomID: "r", Files: []string{"ftp://files.example.com/a.pdf?sig=s3cret"}}).Validate()
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
}

func TestValidateReportsAll(t *testing.T) {
	t.Parallel()
	err := (&Message{Text: strings.Repeat("x", 8000), Markdown: strings.Repeat("x", 8000)}).Validate()
	for _, f := range []string{"roomId: ", "text: ", "markdown: "} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("missing %q in %v", f, err)
		}
	}
}

func TestSplitFiles(t *testing.T) {
	t.Parallel()
	files := []File{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	parts := SplitFiles(Message{RoomID: "r", ParentID: "p", Markdown: "see"}, files)
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	for i, p := range parts {
		if p.File.Name != files[i].Name || p.RoomID != "r" || p.ParentID != "p" || (i == 0) != (p.Markdown == "see") {
			t.Errorf("part %d = %+v", i, p)
		}
	}
	if got := SplitFiles(Message{RoomID: "r", Text: "x"}, nil); len(got) != 1 || got[0].File != nil {
		t.Fatalf("no files: %+v", got)
	}
}
