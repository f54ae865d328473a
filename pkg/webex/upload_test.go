package webex_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

// An Open that returns neither a reader nor an error fails the send before
// any request, with an error that names it; it used to crash the process
// from net/http's writer goroutine, where SafeSend's recover cannot reach.
func TestUploadOpenReturnsNil(t *testing.T) {
	t.Parallel()
	srv, _, posts := uploadServer(t)
	f := webex.File{Name: "a.bin", Size: 5, Open: func() (io.ReadCloser, error) { return nil, nil }}
	c := newClient(t, srv.URL, nil)
	_, err := c.Send(context.Background(), webex.Message{RoomID: "r", File: &f}, webex.WithPolicy(fastPolicy))
	if !errors.Is(err, webex.ErrNilReader) || !strings.Contains(err.Error(), `"a.bin"`) || posts.Load() != 0 {
		t.Fatalf("err = %v, posts %d", err, posts.Load())
	}
	if c.SafeSend(context.Background(), webex.Message{RoomID: "r", File: &f}, webex.WithPolicy(fastPolicy)) {
		t.Fatal("SafeSend reported a file that could not be opened as delivered")
	}
}

// closeCounter counts the readers Open hands out and the Close calls they get.
type closeCounter struct {
	opens, closes atomic.Int32
}

func (c *closeCounter) file(content string) webex.File {
	return webex.File{Name: "a.bin", Size: int64(len(content)), Open: func() (io.ReadCloser, error) {
		c.opens.Add(1)
		return countedCloser{strings.NewReader(content), &c.closes}, nil
	}}
}

type countedCloser struct {
	io.Reader
	closes *atomic.Int32
}

func (c countedCloser) Close() error { c.closes.Add(1); return nil }

// A redirect answering an upload is refused, and the file is opened once and
// closed once: net/http closes a refused 301's body twice, and re-opens the
// body of a 307/308 before asking whether to follow it.
func TestUploadRedirectOpensAndClosesOnce(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Location", "/elsewhere")
				w.WriteHeader(code)
			}))
			t.Cleanup(srv.Close)
			var cc closeCounter
			f := cc.file("hello")
			_, err := newClient(t, srv.URL, nil).CreateMessage(context.Background(), webex.Message{RoomID: "r", File: &f})
			var ae *webex.APIError
			if !errors.As(err, &ae) || ae.StatusCode != code {
				t.Fatalf("err = %v", err)
			}
			if cc.opens.Load() != 1 || cc.closes.Load() != 1 {
				t.Fatalf("opened %d times, closed %d times; want once each", cc.opens.Load(), cc.closes.Load())
			}
		})
	}
}

// slowReader is a server that takes the upload in 64 KiB reads, pausing
// between them like a slow link, then accepts it.
func slowReader(t *testing.T, pause time.Duration) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
			time.Sleep(pause) // the link's speed, not synchronisation
		}
		_, _ = io.WriteString(w, `{"id":"m1"}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// An upload that takes longer than Timeout succeeds: the bound of one request
// grows with its body at MinUploadRate. It used to be a fixed 20s for the
// whole request (the default HTTP client's Timeout), so no upload needing
// more than 20s could ever succeed.
func TestUploadTimeoutGrowsWithSize(t *testing.T) {
	t.Parallel()
	if hc := webex.DefaultHTTPClient(); hc.Timeout != 0 {
		t.Fatalf("DefaultHTTPClient has a whole-request timeout of %v: it would cut off any longer upload", hc.Timeout)
	}
	const size = 4 << 20 // 64 reads of 64 KiB, 10ms apart: well over 100ms
	srv := slowReader(t, 10*time.Millisecond)
	c, err := webex.New(webex.Config{BaseURL: srv.URL, Token: secret, Timeout: 100 * time.Millisecond, MinUploadRate: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	f := webex.File{Name: "a.bin", Size: size, Open: func() (io.ReadCloser, error) { return io.NopCloser(&zeros{left: size}), nil }}
	start := time.Now()
	s, err := c.CreateMessage(context.Background(), webex.Message{RoomID: "r", File: &f})
	if err != nil || s.ID != "m1" {
		t.Fatalf("upload of %v: %v", time.Since(start), err)
	}
}

// An upload that stalls is still bounded: Timeout plus its size at
// MinUploadRate, then a transient error.
func TestUploadStallBounded(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // reads nothing
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: the handler returns, srv.Close does not wait
	c, err := webex.New(webex.Config{BaseURL: srv.URL, Token: secret, Timeout: 100 * time.Millisecond, MinUploadRate: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f := webex.File{Name: "a.bin", Size: 1 << 20, Data: make([]byte, 1<<20)}
	_, err = c.CreateMessage(context.Background(), webex.Message{RoomID: "r", File: &f})
	if !errors.Is(err, context.DeadlineExceeded) || retrypolicy.Classify(err, nil).Class != retrypolicy.Transient {
		t.Fatalf("stalled upload: err = %v (class %v), want a transient deadline", err, retrypolicy.Classify(err, nil).Class)
	}
}

// A file's own failures are permanent by their type, not their message: the
// request error around them may hold a port such as 50372, which the old
// "503" pattern would take for a transient answer.
func TestUploadFileErrorsPermanent(t *testing.T) {
	t.Parallel()
	for _, sentinel := range []error{webex.ErrFileSize, webex.ErrNilReader} {
		err := fmt.Errorf(`Post "http://127.0.0.1:41217/messages": readfrom tcp 127.0.0.1:50372->127.0.0.1:41217: %w`, sentinel)
		if d := retrypolicy.Classify(err, nil); d.Class != retrypolicy.Permanent {
			t.Errorf("%v classified %v (%s)", sentinel, d.Class, d.Reason)
		}
	}
}
