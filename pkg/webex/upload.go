package webex

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// MaxFileBytes is Webex's limit on one uploaded file: 100 MB, taken as
// 100 MiB (104,857,600 bytes). A larger local file fails validation before
// any byte is sent.
const MaxFileBytes = 100 << 20

// File is a local file to upload, either in memory (Data) or streamed from
// Open, which is called once per attempt so that a retry re-reads it.
type File struct {
	Name        string `json:"name"`
	ContentType string `json:"contentType,omitempty"`
	// Data is the file's bytes, for files small enough to hold in memory
	// (and the only form that travels in a queued task's payload).
	Data []byte `json:"data"`
	// Open, when set instead of Data, opens the file's content for one
	// upload; it is called again for each attempt. Not part of the JSON form.
	Open func() (io.ReadCloser, error) `json:"-"`
	// Size is the exact size in bytes of what Open yields; it is checked
	// against MaxFileBytes before the upload and sent as the length. Unused
	// with Data.
	Size int64 `json:"-"`
}

// Len is the file's size in bytes: Size with Open, else len(Data).
func (f *File) Len() int64 {
	if f.Open != nil {
		return f.Size
	}
	return int64(len(f.Data))
}

// ReadFile loads a local file into memory (Data), taking its content type
// from the extension, else from its first bytes. For large files, OpenFile
// streams instead.
func ReadFile(path string) (File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("read file: %w", err)
	}
	return File{Name: filepath.Base(path), ContentType: contentType(path, data), Data: data}, nil
}

// OpenFile describes a local file to stream at upload time (Open and Size),
// without reading it into memory; its content type comes from the extension,
// else from its first bytes. The file must keep its size until it is sent.
func OpenFile(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("open file: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return File{}, fmt.Errorf("open file: %w", err)
	}
	if !info.Mode().IsRegular() {
		return File{}, fmt.Errorf("open file: %s is not a regular file", path)
	}
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return File{}, fmt.Errorf("open file: %w", err)
	}
	return File{
		Name:        filepath.Base(path),
		ContentType: contentType(path, head[:n]),
		Size:        info.Size(),
		Open:        func() (io.ReadCloser, error) { return os.Open(path) },
	}, nil
}

func contentType(path string, head []byte) string {
	if ct := mime.TypeByExtension(filepath.Ext(path)); ct != "" {
		return ct
	}
	return http.DetectContentType(head)
}

// ErrFileSize is matched (errors.Is) when a file's content is not the size
// it declared (File.Size): it changed since it was described.
// It is permanent for pkg/retrypolicy, whatever else the request's error
// says, and wins over the answer a server gave to the cut-short upload.
var ErrFileSize error = permanentError("webex: file content does not match its declared size")

// permanentError is a sentinel that pkg/retrypolicy classifies as permanent
// by its type, not by its message (a message holding a port number such as
// 50372 would match the old "503" pattern).
type permanentError string

func (e permanentError) Error() string { return string(e) }

// RetryClass makes the error permanent.
func (e permanentError) RetryClass() (retrypolicy.Class, time.Duration) {
	return retrypolicy.Permanent, 0
}

// requestBody is a request body that can be opened again for each attempt,
// with its exact length known in advance.
type requestBody struct {
	contentType string
	size        int64
	open        func() (io.ReadCloser, error)
	// wrongSize is set when a reader from open found the file's content not
	// its declared size: the request was cut short, whatever came back.
	wrongSize atomic.Bool
}

// encodeMessage is the JSON form of m, or a multipart/form-data stream when
// m has a local file: the fields and the part's header, the file's content
// read at send time, and the closing boundary. Nothing but the file's own
// reader holds its bytes.
func encodeMessage(m *Message) (*requestBody, error) {
	if m.File == nil {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		return &requestBody{contentType: "application/json", size: int64(len(b)),
			open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}, nil
	}
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range [][2]string{
		{"roomId", m.RoomID}, {"toPersonId", m.ToPersonID}, {"toPersonEmail", m.ToPersonEmail},
		{"parentId", m.ParentID}, {"text", m.Text}, {"markdown", m.Markdown},
	} {
		if f[1] != "" {
			if err := w.WriteField(f[0], f[1]); err != nil {
				return nil, err
			}
		}
	}
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", multipart.FileContentDisposition("files", m.File.Name))
	h.Set("Content-Type", cmp.Or(m.File.ContentType, "application/octet-stream"))
	if _, err := w.CreatePart(h); err != nil {
		return nil, err
	}
	head := bytes.Clone(buf.Bytes())
	buf.Reset()
	if err := w.Close(); err != nil { // writes the closing boundary
		return nil, err
	}
	tail := bytes.Clone(buf.Bytes())
	file := *m.File
	body := &requestBody{contentType: w.FormDataContentType(), size: int64(len(head)) + file.Len() + int64(len(tail))}
	body.open = func() (io.ReadCloser, error) {
		content, err := openContent(&file, &body.wrongSize)
		if err != nil {
			return nil, err
		}
		return &onceCloser{Reader: io.MultiReader(bytes.NewReader(head), content, bytes.NewReader(tail)), closer: content}, nil
	}
	return body, nil
}

// openContent opens a file's content, checked to be exactly its declared size.
// A content of the wrong size sets wrong.
func openContent(f *File, wrong *atomic.Bool) (io.ReadCloser, error) {
	if f.Open == nil {
		return io.NopCloser(bytes.NewReader(f.Data)), nil
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("open file %q: %w", f.Name, err)
	}
	if rc == nil { // reading it would panic in net/http's writer, beyond any recover
		return nil, fmt.Errorf("open file %q: %w", f.Name, ErrNilReader)
	}
	return &exactReader{rc: rc, left: f.Size, wrong: wrong}, nil
}

// exactReader yields exactly left bytes of rc, or fails with ErrFileSize.
type exactReader struct {
	rc    io.ReadCloser
	left  int64
	wrong *atomic.Bool // set with ErrFileSize
}

func (r *exactReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		var one [1]byte
		if n, _ := r.rc.Read(one[:]); n > 0 {
			r.wrong.Store(true)
			return 0, ErrFileSize
		}
		return 0, io.EOF
	}
	n, err := r.rc.Read(p[:min(int64(len(p)), r.left)])
	r.left -= int64(n)
	if errors.Is(err, io.EOF) && r.left > 0 {
		r.wrong.Store(true)
		return n, ErrFileSize
	}
	if errors.Is(err, io.EOF) {
		err = nil // the next call checks that nothing follows
	}
	return n, err
}

func (r *exactReader) Close() error { return r.rc.Close() }

// ErrNilReader is matched (errors.Is) when a File's Open returned neither a
// reader nor an error.
var ErrNilReader error = permanentError("webex: File.Open returned no reader and no error")

// onceCloser is a request body whose Close reaches the file once, however
// often net/http calls it (it does twice for a refused redirect).
type onceCloser struct {
	io.Reader
	closer io.Closer
	once   sync.Once
	err    error
}

func (c *onceCloser) Close() error {
	c.once.Do(func() { c.err = c.closer.Close() })
	return c.err
}

// lazyBody opens a request body at its first Read. net/http calls GetBody
// before it asks CheckRedirect whether to follow a 307/308 at all; a refused
// redirect then closes a body it never read, which opens nothing.
type lazyBody struct {
	open func() (io.ReadCloser, error)
	mu   sync.Mutex
	rc   io.ReadCloser
	err  error
	done bool // Close was called
}

func (b *lazyBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.rc == nil && b.err == nil && !b.done {
		b.rc, b.err = b.open()
	}
	rc, err := b.rc, b.err
	b.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if rc == nil {
		return 0, io.ErrClosedPipe
	}
	return rc.Read(p)
}

func (b *lazyBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	if b.rc == nil {
		return nil
	}
	return b.rc.Close()
}
