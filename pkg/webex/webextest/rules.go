package webextest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
)

// Webex's rules for POST /messages, written down here on their own and not
// taken from pkg/webex, so that a bug in the client's validation is caught
// by the simulator instead of shared with it.
const (
	// maxTextBytes bounds text and markdown, each, in bytes (not characters).
	maxTextBytes = 7439
	// maxFileBytes bounds one uploaded file: 100 MB, taken as 100 MiB.
	maxFileBytes = 100 << 20
	// maxFieldBytes bounds one form field or the JSON form besides files.
	maxFieldBytes = 1 << 20
	// cardType is the only attachment content type Webex takes.
	cardType = "application/vnd.microsoft.card.adaptive"
)

// idShape is what a Webex id looks like: base64url text (Webex's own ids) or
// the simulator's "sim-msg-N".
var idShape = regexp.MustCompile(`^[A-Za-z0-9_=-]{1,256}$`)

// request is a create-message request as the simulator reads it.
type request struct {
	RoomID        string   `json:"roomId"`
	ToPersonID    string   `json:"toPersonId"`
	ToPersonEmail string   `json:"toPersonEmail"`
	ParentID      string   `json:"parentId"`
	Text          string   `json:"text"`
	Markdown      string   `json:"markdown"`
	Files         []string `json:"files"`
	Attachments   []struct {
		ContentType string          `json:"contentType"`
		Content     json.RawMessage `json:"content"`
	} `json:"attachments"`
	// uploads are the multipart file parts.
	uploads []upload
}

type upload struct {
	name, contentType string
	size              int64
	data              []byte
}

func (q *request) destination() string {
	switch {
	case q.RoomID != "":
		return q.RoomID
	case q.ToPersonID != "":
		return q.ToPersonID
	default:
		return q.ToPersonEmail
	}
}

// errTooLarge is a body or file over Webex's limits: 413.
var errTooLarge = errors.New("request entity too large")

// readRequest reads a JSON or multipart/form-data body. File parts are read
// as they stream; a file's bytes are held only up to keep bytes.
func readRequest(r *http.Request, keep int64) (*request, error) {
	var q request
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxFieldBytes+1))
		if err != nil {
			return nil, err
		}
		if len(body) > maxFieldBytes {
			return nil, errTooLarge
		}
		if err := json.Unmarshal(body, &q); err != nil {
			return nil, err
		}
		return &q, nil
	}
	if params["boundary"] == "" {
		return nil, errors.New("multipart body without a boundary")
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, err
	}
	fields := map[string]*string{"roomId": &q.RoomID, "toPersonId": &q.ToPersonID, "toPersonEmail": &q.ToPersonEmail,
		"parentId": &q.ParentID, "text": &q.Text, "markdown": &q.Markdown}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return &q, nil
		}
		if err != nil {
			return nil, err
		}
		if part.FormName() == "files" && hasFileName(part) {
			u, err := readUpload(part.FileName(), part.Header.Get("Content-Type"), part, keep)
			if err != nil {
				return nil, err
			}
			q.uploads = append(q.uploads, u)
			continue
		}
		value, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
		if err != nil {
			return nil, err
		}
		if len(value) > maxFieldBytes {
			return nil, errTooLarge
		}
		if part.FormName() == "files" {
			q.Files = append(q.Files, string(value))
		} else if f, ok := fields[part.FormName()]; ok {
			*f = string(value)
		}
	}
}

// hasFileName reports whether a part is an upload: its Content-Disposition
// has a filename, even an empty one (which check then refuses), rather than
// being a URL value.
func hasFileName(part *multipart.Part) bool {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	_, ok := params["filename"]
	return err == nil && ok
}

// readUpload reads one file part, holding at most keep of its bytes (a
// larger file is counted, not held), and refuses it past maxFileBytes.
func readUpload(name, contentType string, rd io.Reader, keep int64) (upload, error) {
	var buf bytes.Buffer
	held, err := io.Copy(&buf, io.LimitReader(rd, keep+1))
	if err != nil {
		return upload{}, err
	}
	rest, err := io.Copy(io.Discard, io.LimitReader(rd, maxFileBytes+1))
	if err != nil {
		return upload{}, err
	}
	u := upload{name: name, contentType: contentType, size: held + rest}
	if u.size > maxFileBytes {
		return upload{}, errTooLarge
	}
	if held <= keep {
		u.data = buf.Bytes()
	}
	return u, nil
}

// check applies Webex's rules and returns every problem, in the
// "field: problem" form of Webex's errors[].description.
func (q *request) check() []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	dests := 0
	for _, d := range []string{q.RoomID, q.ToPersonID, q.ToPersonEmail} {
		if d != "" {
			dests++
		}
	}
	if dests != 1 {
		bad("roomId: exactly one of roomId, toPersonId, toPersonEmail is required, got %d", dests)
	}
	files := len(q.Files) + len(q.uploads)
	if q.Text == "" && q.Markdown == "" && files == 0 {
		bad("text: one of text, markdown or a file is required")
	}
	for _, f := range []struct{ name, value string }{{"text", q.Text}, {"markdown", q.Markdown}} {
		if n := len(f.value); n > maxTextBytes {
			bad("%s: is %d bytes, the limit is %d", f.name, n, maxTextBytes)
		}
	}
	if files > 1 {
		bad("files: has %d files, the limit is 1 per message", files)
	}
	for i, f := range q.Files {
		if u, err := url.Parse(f); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("files: entry %d must be an http or https URL", i+1)
		}
	}
	for _, u := range q.uploads {
		if u.name == "" {
			bad("files: an uploaded file needs a name")
		}
	}
	if len(q.Attachments) > 1 {
		bad("attachments: has %d cards, the limit is 1 per message", len(q.Attachments))
	}
	for _, a := range q.Attachments {
		if a.ContentType != cardType {
			bad("attachments: contentType is %q, must be %q", a.ContentType, cardType)
		}
		if len(a.Content) == 0 || !json.Valid(a.Content) {
			bad("attachments: content must be the card's JSON")
		}
	}
	if len(q.Attachments) > 0 && q.Text == "" && q.Markdown == "" {
		bad("text: a card needs a text or markdown fallback")
	}
	if q.ParentID != "" && !idShape.MatchString(q.ParentID) {
		bad("parentId: is not a message id")
	}
	return problems
}
