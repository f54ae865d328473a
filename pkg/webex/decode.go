package webex

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// ErrTrailingData matches a JSON body with more after its object.
var ErrTrailingData = errors.New("data after the JSON object")

// decodeJSON reads exactly one JSON object: a second object or garbage
// after it is refused, never ignored.
func decodeJSON(body io.Reader) (Message, error) {
	var m Message
	dec := json.NewDecoder(body)
	if err := dec.Decode(&m); err != nil {
		return m, err
	}
	_, err := dec.Token()
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return m, nil
	case errors.As(err, &tooBig):
		return m, err
	}
	return m, ErrTrailingData
}

// decodeMultipart reads a multipart/form-data message part by part, so that
// a part's nature does not depend on how Go's ReadForm files it. A files
// part is a URL only when it has no filename, no Content-Type other than
// text/plain, and its value is a single http(s) URL; anything else is a file
// (the form-data package, used by Webex's JavaScript SDK, sends a Buffer
// without a filename).
func decodeMultipart(r *http.Request, maxMemory int64) (m Message, files []File, err error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return m, nil, fmt.Errorf("multipart form: %w", err)
	}
	fields := map[string]*string{"roomId": &m.RoomID, "toPersonId": &m.ToPersonID, "toPersonEmail": &m.ToPersonEmail,
		"parentId": &m.ParentID, "text": &m.Text, "markdown": &m.Markdown}
	var read int64
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return m, files, nil
		}
		if err != nil {
			return m, nil, fmt.Errorf("multipart form: %w", err)
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
			if u, ok := urlValue(part.Header, part.FileName(), data); ok {
				m.Files = append(m.Files, u)
			} else {
				files = append(files, partFile(part.Header, part.FileName(), data))
			}
			continue
		}
		if f, ok := fields[name]; ok && *f == "" { // the first value wins, as with ReadForm
			*f = string(data)
		}
	}
}

// urlValue reports a files part that is a plain value holding one http(s) URL.
func urlValue(h textproto.MIMEHeader, filename string, data []byte) (string, bool) {
	if filename != "" {
		return "", false
	}
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
			return "", false
		}
	}
	s := strings.TrimSpace(string(data))
	return s, isHTTPURL(s)
}

// isHTTPURL reports a single absolute http(s) URL with a host.
func isHTTPURL(s string) bool {
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
