package enqueue

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unicode"

	"github.com/courier-dev/courier/pkg/webex"
)

// ErrLocalFilesOff matches a local file named in JSON lines without
// --files-dir: JSON lines are often built from data someone else controls.
var ErrLocalFilesOff = errors.New("local files in JSON lines are read only under --files-dir DIR")

// fileReader reads the local files a message carries: regular files only,
// never more than the inline cap, and for JSON lines only under a chosen
// directory.
type fileReader struct {
	// root confines paths (JSON lines with --files-dir); nil with any
	// false means no local file may be read.
	root *os.Root
	any  bool // any path: files named on the command line
	max  int  // bytes per file (the inline cap)
}

// read loads one local file, its content type from the extension, else
// from its first bytes.
func (fr *fileReader) read(path string) (webex.File, error) {
	if strings.IndexFunc(path, unicode.IsControl) >= 0 {
		return webex.File{}, fmt.Errorf("%q: a path with control characters", clip(path))
	}
	var f *os.File
	var err error
	switch {
	case fr.root != nil:
		f, err = fr.root.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	case fr.any:
		// O_NONBLOCK: opening a FIFO without a writer returns at once (and
		// is refused below); it changes nothing for a regular file.
		f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	default:
		return webex.File{}, fmt.Errorf("%q: %w", path, ErrLocalFilesOff)
	}
	if err != nil {
		return webex.File{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return webex.File{}, err
	}
	if !st.Mode().IsRegular() {
		return webex.File{}, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(fr.max)+1))
	if err != nil {
		return webex.File{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > fr.max {
		return webex.File{}, fmt.Errorf("%s is over the inline limit of %d bytes: send it by URL", path, fr.max)
	}
	name := filepath.Base(path)
	ct := mime.TypeByExtension(filepath.Ext(name))
	if ct == "" {
		ct = http.DetectContentType(data)
	}
	return webex.File{Name: name, ContentType: ct, Data: data}, nil
}
