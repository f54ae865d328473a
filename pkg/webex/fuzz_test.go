package webex_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/courier-dev/courier/pkg/webex"
)

// FuzzParseRetryAfter: any header gives a delay in [0, MaxRetryAfter].
// go test -run '^$' -fuzz '^FuzzParseRetryAfter$' -fuzztime 5s ./pkg/webex
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "5", "-3", " 120 ", "99999999999999999999", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", "1.5"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := webex.ParseRetryAfter(v, now); d < 0 || d > webex.MaxRetryAfter {
			t.Fatalf("%q: %v", v, d)
		}
	})
}

// FuzzDecodeRequest: any body, JSON or multipart, decodes or fails without
// a panic, and never reads past its limit.
// go test -run '^$' -fuzz '^FuzzDecodeRequest$' -fuzztime 5s ./pkg/webex
func FuzzDecodeRequest(f *testing.F) {
	f.Add(false, []byte(`{"roomId":"r","text":"x","files":["https://a/b"]}`))
	f.Add(false, []byte(`{"roomId":"r"}{"x":1}`))
	f.Add(true, []byte("--"+boundary+"\r\nContent-Disposition: form-data; name=\"roomId\"\r\n\r\nr\r\n--"+boundary+
		"\r\nContent-Disposition: form-data; name=\"files\"\r\nContent-Type: application/octet-stream\r\n\r\nI\xff\x00\r\n--"+boundary+"--\r\n"))
	f.Add(true, []byte("--"+boundary+"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n--"+boundary+"--\r\n"))
	f.Fuzz(func(t *testing.T, multipart bool, body []byte) {
		const limit = 1 << 12
		r := httptest.NewRequest("POST", "/messages", strings.NewReader(string(body)))
		r.Header.Set("Content-Type", "application/json")
		if multipart {
			r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
		}
		r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, limit)
		m, files, err := webex.DecodeRequest(r, limit)
		if err != nil {
			return
		}
		n := len(m.Text) + len(m.Markdown) + len(m.RoomID)
		for _, v := range []string{m.RoomID, m.ToPersonID, m.ToPersonEmail, m.ParentID, m.Text, m.Markdown} {
			if !utf8.ValidString(v) {
				t.Fatalf("accepted text that is not UTF-8: %q", v)
			}
		}
		for _, f := range files {
			n += len(f.Data)
			if f.Name == "" || len(f.Data) == 0 || strings.IndexFunc(f.Name, unicode.IsControl) >= 0 {
				t.Fatalf("accepted a file without a name or bytes, or a name with control characters: %q (%d bytes)", f.Name, len(f.Data))
			}
		}
		if n > limit {
			t.Fatalf("%d bytes decoded from a body limited to %d", n, limit)
		}
	})
}
