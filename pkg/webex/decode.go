package webex

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrTrailingData matches a JSON body with more after its object.
var ErrTrailingData = errors.New("data after the JSON object")

// ErrTooManyParts matches a multipart body of more than MaxParts parts.
var ErrTooManyParts = fmt.Errorf("more than %d parts", MaxParts)

// MaxParts is the most parts a multipart message may have: its six text
// fields and its files, with room to spare. Each part costs memory however
// small it is, so the reader stops as soon as there are more.
const MaxParts = 100

// MaxPartHeaderBytes is the most a part's headers may hold (names and
// values).
const MaxPartHeaderBytes = 8 << 10

// decodeJSON reads exactly one JSON object: a second object or garbage
// after it is refused, never ignored. The body must be UTF-8: Go would
// silently turn other bytes into U+FFFD.
func decodeJSON(body io.Reader) (Message, error) {
	var m Message
	b, err := io.ReadAll(body)
	if err != nil {
		return m, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return m, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return m, ErrTrailingData
	}
	if !utf8.Valid(b) {
		return m, notUTF8(m)
	}
	return m, nil
}

// notUTF8 names the fields of a message decoded from a body that was not
// UTF-8: those holding U+FFFD where the bytes were.
func notUTF8(m Message) error {
	fields := []string{}
	for name, v := range map[string]string{"roomId": m.RoomID, "toPersonId": m.ToPersonID, "toPersonEmail": m.ToPersonEmail,
		"parentId": m.ParentID, "text": m.Text, "markdown": m.Markdown} {
		if strings.ContainsRune(v, utf8.RuneError) {
			fields = append(fields, name)
		}
	}
	slices.Sort(fields)
	return &ValidationError{Field: cmp.Or(strings.Join(fields, ", "), "body"), Problem: "is not UTF-8: send text as UTF-8"}
}

// decodeMultipart reads a multipart/form-data message part by part, so that
// a part's nature does not depend on how Go's ReadForm files it. A files
// part is a URL only when it has no filename, no Content-Type other than
// text/plain, and its value is a single http(s) URL; anything else is a file
// (the form-data package, used by Webex's JavaScript SDK, sends a Buffer
// without a filename), except a plain value that reads as a local path or
// another scheme's URL: Webex refuses that, so it is refused here. Text
// fields must be UTF-8; files must not be empty.
func decodeMultipart(r *http.Request, maxMemory int64) (m Message, files []File, err error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return m, nil, fmt.Errorf("multipart form: %w", err)
	}
	fields := map[string]*string{"roomId": &m.RoomID, "toPersonId": &m.ToPersonID, "toPersonEmail": &m.ToPersonEmail,
		"parentId": &m.ParentID, "text": &m.Text, "markdown": &m.Markdown}
	var read int64
	for n := 1; ; n++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return m, files, nil
		}
		if err != nil {
			return m, nil, fmt.Errorf("multipart form: %w", err)
		}
		if n > MaxParts {
			part.Close()
			return m, nil, fmt.Errorf("multipart form: %w", ErrTooManyParts)
		}
		if size := headerBytes(part.Header); size > MaxPartHeaderBytes {
			part.Close()
			return m, nil, fmt.Errorf("multipart form: part %d has %d bytes of headers, the limit is %d", n, size, MaxPartHeaderBytes)
		}
		data, err := io.ReadAll(io.LimitReader(part, maxMemory-read+1))
		part.Close()
		if err != nil {
			return m, nil, fmt.Errorf("multipart form: %w", err)
		}
		if read += int64(len(data)); read > maxMemory {
			return m, nil, &http.MaxBytesError{Limit: maxMemory}
		}
		name := part.FormName()
		if name == "files" {
			f, u, err := filesPart(part.Header, part.FileName(), data)
			switch {
			case err != nil:
				return m, nil, err
			case u != "":
				m.Files = append(m.Files, u)
			default:
				files = append(files, f)
			}
			continue
		}
		f, ok := fields[name]
		if !ok {
			continue
		}
		if err := textPart(name, part.Header, data); err != nil {
			return m, nil, err
		}
		if *f == "" { // the first value wins, as with ReadForm
			*f = string(data)
		}
	}
}

// headerBytes is the size of a part's header names and values.
func headerBytes(h textproto.MIMEHeader) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// textPart checks a text field's part: UTF-8, declared or not.
func textPart(name string, h textproto.MIMEHeader, data []byte) error {
	if _, params, err := mime.ParseMediaType(h.Get("Content-Type")); err == nil && !IsUTF8Charset(params["charset"]) {
		return &ValidationError{Field: name, Problem: fmt.Sprintf("has charset %q: send text as UTF-8", clip(params["charset"]))}
	}
	if !utf8.Valid(data) {
		return &ValidationError{Field: name, Problem: "is not UTF-8: send text as UTF-8"}
	}
	return nil
}

// IsUTF8Charset reports a charset parameter that means UTF-8 (or ASCII, a
// subset), or none.
func IsUTF8Charset(cs string) bool {
	switch strings.ToLower(cs) {
	case "", "utf-8", "utf8", "us-ascii":
		return true
	}
	return false
}

// filesPart reads a files part as either a URL or a file.
func filesPart(h textproto.MIMEHeader, filename string, data []byte) (File, string, error) {
	if u, plain := urlValue(h, filename, data); plain && u != "" && IsHTTPURL(u) {
		return File{}, u, nil
	} else if plain && looksLikeReference(u) {
		return File{}, "", &ValidationError{Field: "files", Problem: fmt.Sprintf("%q is a local path or a URL that is not http(s): "+
			"upload the file's bytes in a part with a filename, or give an http(s) URL", clip(u))}
	}
	if strings.IndexFunc(filename, unicode.IsControl) >= 0 {
		return File{}, "", &ValidationError{Field: "files", Problem: fmt.Sprintf("filename %q contains control characters", clip(filename))}
	}
	f := partFile(h, filename, data)
	if len(data) == 0 {
		return File{}, "", &ValidationError{Field: "files", Problem: fmt.Sprintf("file %q is empty", clip(f.Name))}
	}
	return f, "", nil
}

// urlValue reads a files part that is a plain value (no filename, no
// Content-Type other than text/plain): its trimmed text, and true.
func urlValue(h textproto.MIMEHeader, filename string, data []byte) (string, bool) {
	if filename != "" {
		return "", false
	}
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
			return "", false
		}
	}
	return strings.TrimSpace(string(data)), true
}

// reference matches what reads as a file's address rather than its
// contents: an absolute or relative path, a Windows drive path, or a URL
// of any scheme ("ftp://x/a", "file:/etc/passwd", "data:...").
var reference = regexp.MustCompile(`^(/|\\|\./|\.\./|~/|[A-Za-z]:[\\/]|[A-Za-z][A-Za-z0-9+.-]*://|(?i:file|data):)\S*$`)

// looksLikeReference reports a single line reading as a path or a URL.
func looksLikeReference(s string) bool {
	return len(s) <= 4096 && reference.MatchString(s)
}

// clip shortens a caller's value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// IsHTTPURL reports a single absolute http(s) URL with a host (the scheme in
// any case), without spaces: what Webex fetches as a file.
func IsHTTPURL(s string) bool {
	if strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// partFile is a files part as a file: its filename, or "file" with an
// extension for its type; its Content-Type, or the one its bytes show.
func partFile(h textproto.MIMEHeader, filename string, data []byte) File {
	ct := h.Get("Content-Type")
	if ct == "" {
		ct = http.DetectContentType(data)
	}
	if filename == "" {
		filename = "file" + extension(ct)
	}
	return File{Name: filename, ContentType: ct, Data: data}
}

// extension names a file of content type ct that came without a filename.
func extension(ct string) string {
	mt, _, _ := mime.ParseMediaType(ct)
	switch mt {
	case "text/plain":
		return ".txt"
	case "image/jpeg":
		return ".jpg"
	case "application/octet-stream", "":
		return ".bin"
	}
	if exts, err := mime.ExtensionsByType(mt); err == nil && len(exts) > 0 {
		return exts[0]
	}
	return ".bin"
}
