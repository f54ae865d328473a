package webex_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/courier-dev/courier/pkg/retrypolicy"
	"github.com/courier-dev/courier/pkg/webex"
)

// zeros is n zero bytes, produced on demand.
type zeros struct{ left int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.left))
	clear(p[:n])
	z.left -= int64(n)
	return n, nil
}

// uploadServer answers 503 to the first upload and 200 to the next, and
// records what the file part held.
func uploadServer(t *testing.T) (*httptest.Server, *atomic.Int64, *atomic.Int32) {
	var got atomic.Int64
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := posts.Add(1)
		if r.ContentLength <= 0 {
			t.Errorf("upload without a Content-Length (%d)", r.ContentLength)
		}
		mr, err := r.MultipartReader()
		if err != nil {
			t.Errorf("not multipart: %v", err)
			return
		}
		for {
			part, err := mr.NextPart()
			if err != nil {
				break
			}
			if part.FormName() == "files" {
				size, _ := io.Copy(io.Discard, part)
				got.Store(size)
			}
		}
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"id":"m1"}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &got, &posts
}

// A file given by Open is streamed: a 64 MiB upload, retried once, allocates
// far less than the file (it used to be held twice: the bytes and the
// multipart buffer), and each attempt re-opens it.
func TestUploadStreams(t *testing.T) { // not parallel: it measures allocations
	srv, got, posts := uploadServer(t)
	const size = 64 << 20
	var opens atomic.Int32
	f := webex.File{Name: "big.bin", Size: size, Open: func() (io.ReadCloser, error) {
		opens.Add(1)
		return io.NopCloser(&zeros{left: size}), nil
	}}
	c := newClient(t, srv.URL, nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := c.Send(context.Background(), webex.Message{RoomID: "r", Text: "big", File: &f}, webex.WithPolicy(fastPolicy))
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if posts.Load() != 2 || opens.Load() != 2 || got.Load() != size {
		t.Fatalf("posts %d opens %d received %d bytes, want 2 2 %d", posts.Load(), opens.Load(), got.Load(), size)
	}
	// Client and server (same process) together: well below one copy.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB for two streamed 64 MiB uploads (client and server)", alloc>>10)
	if alloc > size/4 {
		t.Fatalf("allocated %d MiB for two 64 MiB uploads: the file is buffered", alloc>>20)
	}
}

// The size check happens before anything is opened or sent.
func TestUploadOverLimitRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	srv, _, posts := uploadServer(t)
	opened := false
	f := webex.File{Name: "huge.iso", Size: webex.MaxFileBytes + 1, Open: func() (io.ReadCloser, error) {
		opened = true
		return io.NopCloser(&zeros{left: webex.MaxFileBytes + 1}), nil
	}}
	_, err := newClient(t, srv.URL, nil).Send(context.Background(), webex.Message{RoomID: "r", File: &f}, webex.WithPolicy(fastPolicy))
	var ve *webex.ValidationError
	if !errors.As(err, &ve) || ve.Field != "files" || !strings.Contains(err.Error(), "the limit is 104857600") || opened || posts.Load() != 0 {
		t.Fatalf("err = %v, opened %v, posts %d", err, opened, posts.Load())
	}
}

// A file that is not the size it declared fails clearly and is not retried.
func TestUploadSizeMismatch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		declared int64
		actual   int64
	}{{"shrunk", 10, 5}, {"grew", 5, 10}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _, posts := uploadServer(t)
			f := webex.File{Name: "a.bin", Size: tt.declared, Open: func() (io.ReadCloser, error) {
				return io.NopCloser(&zeros{left: tt.actual}), nil
			}}
			_, err := newClient(t, srv.URL, nil).Send(context.Background(), webex.Message{RoomID: "r", File: &f}, webex.WithPolicy(fastPolicy))
			if !errors.Is(err, webex.ErrFileSize) || retrypolicy.Classify(err, nil).Class != retrypolicy.Permanent || posts.Load() > 1 {
				t.Fatalf("err = %v (class %v), posts %d", err, retrypolicy.Classify(err, nil).Class, posts.Load())
			}
		})
	}
}

func TestOpenFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "report.pdf")
	if err := os.WriteFile(path, []byte("%PDF-1.7 content"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := webex.OpenFile(path)
	if err != nil || f.Name != "report.pdf" || f.ContentType != "application/pdf" || f.Size != 16 || f.Data != nil || f.Len() != 16 {
		t.Fatalf("OpenFile = %+v, %v", f, err)
	}
	rc, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, _ := io.ReadAll(rc); string(b) != "%PDF-1.7 content" {
		t.Fatalf("content %q", b)
	}
	if _, err := webex.OpenFile(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
}
