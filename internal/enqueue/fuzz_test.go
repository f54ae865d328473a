package enqueue

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzJSONLines: any input splits into lines no longer than the limit, each
// decoded and built into a message or refused, without a panic and without
// reading a local file.
// go test -run '^$' -fuzz '^FuzzJSONLines$' -fuzztime 5s ./internal/enqueue
func FuzzJSONLines(f *testing.F) {
	f.Add([]byte(`{"roomId":"r","text":"x","key":"k","in":"10m"}` + "\n"))
	f.Add([]byte(`{"roomId":"r","text":"x"}{"roomId":"r"}` + "\n# comment\n\n"))
	f.Add([]byte(`{"roomId":"r","files":["/etc/passwd","https://a/b"],"at":"2026-01-01T00:00:00Z","maxRedeliveries":-1}`))
	f.Add([]byte(`{"toPersonEmail":"a@b.c","attachments":[{"contentType":"x","content":{}}],"expiresIn":"bogus"}` + "\r\n"))
	const limit = 64
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		files := &fileReader{max: 1 << 10} // no local file may be read
		for lines := 0; ; lines++ {
			if lines > bytes.Count(in, []byte("\n"))+1 {
				t.Fatal("more lines than the input holds")
			}
			line, err := readLine(br, limit)
			if len(line) > limit+1 {
				t.Fatalf("a line of %d bytes with a limit of %d", len(line), limit)
			}
			if errors.Is(err, ErrLineTooLong) {
				continue
			}
			if l, derr := decodeLine(bytes.TrimSpace(line)); derr == nil {
				p := build(lines+1, l, nil, "", files)
				if p.err == nil && len(p.req.Message.Uploads) > 0 {
					t.Fatal("a local file was read without --files-dir")
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				return
			}
		}
	})
}
