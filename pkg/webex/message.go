package webex

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// Limits of the Messages API that courier enforces before sending.
const (
	// MaxTextBytes bounds text and markdown, each.
	MaxTextBytes = 7439
	// CardContentType is the only attachment type Webex accepts.
	CardContentType = "application/vnd.microsoft.card.adaptive"
)

// Message is a message to create, in the Messages API's field names. Exactly
// one destination (RoomID, ToPersonID, ToPersonEmail); at least one of Text,
// Markdown, a file. A file is either a public URL in Files or local bytes in
// File (sent as multipart/form-data), never more than one per message; a
// URL must be http or https, a local file at most MaxFileBytes.
type Message struct {
	RoomID        string       `json:"roomId,omitempty"`
	ToPersonID    string       `json:"toPersonId,omitempty"`
	ToPersonEmail string       `json:"toPersonEmail,omitempty"`
	ParentID      string       `json:"parentId,omitempty"`
	Text          string       `json:"text,omitempty"`
	Markdown      string       `json:"markdown,omitempty"`
	Files         []string     `json:"files,omitempty"`
	Attachments   []Attachment `json:"attachments,omitempty"`
	// File is a local file's bytes; it is not part of the JSON form.
	File *File `json:"-"`
}

// Attachment is a card: ContentType must be CardContentType and Content the
// adaptive card's JSON.
type Attachment struct {
	ContentType string          `json:"contentType"`
	Content     json.RawMessage `json:"content"`
}

// Destination is the message's one destination, for logs and per-room keys.
func (m *Message) Destination() string {
	switch {
	case m.RoomID != "":
		return m.RoomID
	case m.ToPersonID != "":
		return m.ToPersonID
	default:
		return m.ToPersonEmail
	}
}

// ValidationError is a message that breaks a Messages API rule. It is
// permanent: sending it again gives the same answer.
type ValidationError struct {
	Field   string // the Webex field name, e.g. "markdown"
	Problem string // the rule and the limit
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Problem }

// RetryClass makes validation errors permanent for pkg/retrypolicy.
func (e *ValidationError) RetryClass() (retrypolicy.Class, time.Duration) {
	return retrypolicy.Permanent, 0
}

// Validate checks the message against the Messages API's rules and reports
// every broken rule, each a *ValidationError (joined; errors.As finds the
// first).
func (m *Message) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ValidationError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	dests := 0
	for _, d := range []string{m.RoomID, m.ToPersonID, m.ToPersonEmail} {
		if d != "" {
			dests++
		}
	}
	if dests != 1 {
		bad("roomId", "exactly one of roomId, toPersonId, toPersonEmail is required, got %d", dests)
	}
	nfiles := len(m.Files)
	if m.File != nil {
		nfiles++
	}
	if m.Text == "" && m.Markdown == "" && nfiles == 0 {
		bad("text", "one of text, markdown or a file is required")
	}
	if n := len(m.Text); n > MaxTextBytes {
		bad("text", "is %d bytes, the limit is %d", n, MaxTextBytes)
	}
	if n := len(m.Markdown); n > MaxTextBytes {
		bad("markdown", "is %d bytes, the limit is %d", n, MaxTextBytes)
	}
	if nfiles > 1 {
		bad("files", "has %d files, the limit is 1 per message", nfiles)
	}
	if m.File != nil && m.File.Name == "" {
		bad("files", "a local file needs a name")
	}
	if f := m.File; f != nil {
		switch {
		case f.Open != nil && f.Data != nil:
			bad("files", "a local file has Data or Open, not both")
		case f.Size < 0:
			bad("files", "a local file's Size is %d, must not be negative", f.Size)
		case f.Len() > MaxFileBytes:
			bad("files", "%q is %d bytes, the limit is %d", f.Name, f.Len(), MaxFileBytes)
		}
	}
	for i, u := range m.Files {
		if problem := fileURLProblem(u); problem != "" {
			bad("files", "entry %d %s, must be an http or https URL", i+1, problem)
		}
	}
	if len(m.Attachments) > 1 {
		bad("attachments", "has %d cards, the limit is 1 per message", len(m.Attachments))
	}
	for _, a := range m.Attachments {
		if a.ContentType != CardContentType {
			bad("attachments", "contentType is %q, must be %q", a.ContentType, CardContentType)
		}
		if len(a.Content) == 0 || !json.Valid(a.Content) {
			bad("attachments", "content must be the card's JSON")
		}
	}
	if len(m.Attachments) > 0 && m.Text == "" && m.Markdown == "" {
		bad("text", "a card needs a text or markdown fallback")
	}
	if len(m.Attachments) > 0 && m.File != nil {
		bad("attachments", "a card cannot be sent with a local file (multipart carries no cards)")
	}
	return errors.Join(errs...)
}

// fileURLProblem says what keeps u from being a file URL Webex fetches, or "".
// It never quotes the URL, which may carry a signed query.
func fileURLProblem(u string) string {
	p, err := url.Parse(u)
	switch {
	case err != nil:
		return "is not a URL"
	case p.Scheme != "http" && p.Scheme != "https":
		if p.Scheme == "" {
			return "has no scheme"
		}
		return fmt.Sprintf("has scheme %q", p.Scheme)
	case p.Host == "":
		return "has no host"
	}
	return ""
}

// DecodeRequest reads a create-message request as the Messages API accepts
// it: one JSON object (nothing after it), or multipart/form-data with the
// fields roomId, toPersonId, toPersonEmail, parentId, text, markdown and
// files (file parts, or URLs as plain values; see decodeMultipart). The file
// parts are returned apart, in order, so a caller decides how many it allows;
// m.File is left nil. The body should already be limited
// (http.MaxBytesReader); maxMemory bounds the multipart bytes read.
func DecodeRequest(r *http.Request, maxMemory int64) (m Message, files []File, err error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		m, err = decodeJSON(r.Body)
		return m, nil, err
	}
	return decodeMultipart(r, maxMemory)
}
