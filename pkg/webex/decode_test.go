package webex_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/courier-dev/courier/pkg/webex"
)

const boundary = "--------------------------418239573650122876345902"

// part is one multipart part: its headers after Content-Disposition, and
// its value.
type part struct{ name, extra, value string }

func decodeMultipart(t *testing.T, parts ...part) (webex.Message, []webex.File, error) {
	t.Helper()
	var b strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=%q%s\r\n\r\n%s\r\n", boundary, p.name, p.extra, p.value)
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	r := httptest.NewRequest("POST", "/messages", strings.NewReader(b.String()))
	r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
	return webex.DecodeRequest(r, 1<<20)
}

// A files part is a URL only when it is a plain value holding one http(s)
// URL; anything else is a file, as Webex takes it.
func TestDecodeMultipartFiles(t *testing.T) {
	t.Parallel()
	binary := "I\xff\xfe\x00\x01binary"
	tests := []struct {
		name     string
		part     part
		wantURL  string
		wantFile string // name
		wantType string
	}{
		{"js sdk buffer, no filename", part{"files", "\r\nContent-Type: application/octet-stream", binary}, "", "file.bin", "application/octet-stream"},
		{"no filename, no type, binary", part{"files", "", binary}, "", "file.bin", "application/octet-stream"},
		{"no filename, image type", part{"files", "\r\nContent-Type: image/png", "\x89PNG\r\n\x1a\n"}, "", "file.png", "image/png"},
		{"plain url", part{"files", "", "https://example.com/r.pdf"}, "https://example.com/r.pdf", "", ""},
		{"text/plain url", part{"files", "\r\nContent-Type: text/plain; charset=utf-8", " https://example.com/r.pdf\r\n"}, "https://example.com/r.pdf", "", ""},
		{"url with a filename", part{"files", `; filename="link.txt"` + "\r\nContent-Type: text/plain", "https://example.com/r.pdf"}, "", "link.txt", "text/plain"},
		{"two urls in one value", part{"files", "", "https://a/1 https://a/2"}, "", "file.txt", "text/plain; charset=utf-8"},
		{"a local path", part{"files", "", "/tmp/report.pdf"}, "", "file.txt", "text/plain; charset=utf-8"},
	}
	for _, tt := range tests {
		m, files, err := decodeMultipart(t, part{"roomId", "", "room-1"}, tt.part)
		switch {
		case err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case m.RoomID != "room-1":
			t.Errorf("%s: roomId %q", tt.name, m.RoomID)
		case tt.wantURL != "" && (len(m.Files) != 1 || m.Files[0] != tt.wantURL || len(files) != 0):
			t.Errorf("%s: files %q, uploads %d; want the URL", tt.name, m.Files, len(files))
		case tt.wantFile != "" && (len(m.Files) != 0 || len(files) != 1 || files[0].Name != tt.wantFile || files[0].ContentType != tt.wantType || !bytes.Equal(files[0].Data, []byte(tt.part.value))):
			t.Errorf("%s: files %q, uploads %+v; want the file %s (%s)", tt.name, m.Files, files, tt.wantFile, tt.wantType)
		}
	}
}

// JSON bodies hold one object: anything after it is refused.
func TestDecodeJSONTrailingData(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]error{
		`{"roomId":"r","text":"x"}`:                       nil,
		"{\"roomId\":\"r\",\"text\":\"x\"}\n  \n":         nil,
		`{"roomId":"r","text":"x"}{"roomId":"s"}`:         webex.ErrTrailingData,
		`{"roomId":"r","text":"x"} garbage`:               webex.ErrTrailingData,
		`{"roomId":"r","text":"x"}]`:                      webex.ErrTrailingData,
		"{\"roomId\":\"r\",\"text\":\"x\"}\n{\"text\":2}": webex.ErrTrailingData,
	} {
		r := httptest.NewRequest("POST", "/messages", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		m, _, err := webex.DecodeRequest(r, 1<<20)
		if !errors.Is(err, want) || (want == nil && m.RoomID != "r") {
			t.Errorf("%q: %v, want %v", body, err, want)
		}
	}
}
