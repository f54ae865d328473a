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
		{"a path in a file's text", part{"files", "\r\nContent-Type: application/octet-stream", "/tmp/report.pdf"}, "", "file.bin", "application/octet-stream"},
		{"several lines", part{"files", "", "/tmp/a\n/tmp/b"}, "", "file.txt", "text/plain; charset=utf-8"},
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

// What Webex would refuse (a path or another scheme where a file belongs,
// text that is not UTF-8, an empty file, a filename with control
// characters) is refused with an error naming the field, never turned
// into a text file or U+FFFD.
func TestDecodeMultipartRefuses(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		part part
		want string
	}{
		{"a local path", part{"files", "", "/tmp/report.png"}, `files: "/tmp/report.png" is a local path`},
		{"a relative path", part{"files", "", "./report.png"}, `files: "./report.png" is a local path`},
		{"a windows path", part{"files", "", `C:\\x\\r.png`}, "files: "},
		{"an ftp url", part{"files", "", "ftp://x/a"}, `files: "ftp://x/a" is a local path or a URL that is not http(s)`},
		{"a file url, text/plain", part{"files", "\r\nContent-Type: text/plain", "file:/etc/passwd"}, "files: "},
		{"an empty file", part{"files", `; filename="a.png"` + "\r\nContent-Type: image/png", ""}, `files: file "a.png" is empty`},
		{"an empty value", part{"files", "", ""}, "is empty"},
		{"CR LF in a filename", part{"files", "; filename*=UTF-8''a%0D%0Ab.png", "x"}, "files: filename \"a\\r\\nb.png\" contains control characters"},
		{"a control character in a filename", part{"files", "; filename*=UTF-8''a%01%00.png", "x"}, "contains control characters"},
		{"latin-1 text", part{"text", "", "caf\xe9"}, "text: is not UTF-8"},
		{"a latin-1 charset", part{"markdown", "\r\nContent-Type: text/plain; charset=iso-8859-1", "cafe"}, `markdown: has charset "iso-8859-1"`},
	} {
		_, _, err := decodeMultipart(t, part{"roomId", "", "room-1"}, tt.part)
		var ve *webex.ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want a ValidationError with %q", tt.name, err, tt.want)
		}
	}
}

// A body of many tiny parts stops at MaxParts, and a part's headers are
// bounded, whatever the body size limit lets through.
func TestDecodeMultipartBounds(t *testing.T) {
	t.Parallel()
	parts := []part{{"roomId", "", "room-1"}}
	for range webex.MaxParts {
		parts = append(parts, part{"x", "", ""})
	}
	if _, _, err := decodeMultipart(t, parts[:webex.MaxParts]...); err != nil {
		t.Errorf("%d parts: %v", webex.MaxParts, err)
	}
	if _, _, err := decodeMultipart(t, parts...); !errors.Is(err, webex.ErrTooManyParts) {
		t.Errorf("%d parts: %v, want ErrTooManyParts", len(parts), err)
	}
	big := part{"text", "\r\nX-Padding: " + strings.Repeat("p", webex.MaxPartHeaderBytes), "x"}
	if _, _, err := decodeMultipart(t, parts[0], big); err == nil || !strings.Contains(err.Error(), "bytes of headers, the limit is 8192") {
		t.Errorf("a part with big headers: %v", err)
	}
}

// A JSON body that is not UTF-8 is refused naming the fields it garbles.
func TestDecodeJSONNotUTF8(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest("POST", "/messages", strings.NewReader("{\"roomId\":\"r\",\"text\":\"caf\xe9\"}"))
	r.Header.Set("Content-Type", "application/json")
	_, _, err := webex.DecodeRequest(r, 1<<20)
	var ve *webex.ValidationError
	if !errors.As(err, &ve) || ve.Field != "text" || !strings.Contains(err.Error(), "text: is not UTF-8") {
		t.Errorf("err = %v, want text: is not UTF-8", err)
	}
}
