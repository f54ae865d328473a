package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/courier-dev/courier/pkg/webex"
)

// TypeSend is the asynq task type of a send-message task.
const TypeSend = "courier:send"

// PayloadVersion is the payload version this code writes and reads. New
// fields stay additive within a version; a worker that meets a higher
// version hands the task back for a newer worker.
const PayloadVersion = 1

// DefaultMaxInlineBytes caps the bytes of files carried inside a payload.
const DefaultMaxInlineBytes = 1 << 20

// MaxKeyBytes bounds an idempotency key (it becomes the asynq task ID).
const MaxKeyBytes = 200

// Message is what a producer asks courier to deliver: a Webex message in the
// Messages API's field names, plus local files carried inline. Several files
// (URLs in Files, then Uploads) become several Webex messages, in order: the
// first carries the text and the first file.
type Message struct {
	webex.Message
	// Uploads are local files carried inside the payload, base64 in JSON.
	// Their total size is capped (default 1 MiB): larger files go by URL.
	Uploads []webex.File `json:"uploads,omitempty"`
}

// Parts is the message as Webex takes it: one Webex message per file.
func (m *Message) Parts() []webex.Message {
	base := m.Message
	base.File = nil
	if len(base.Files)+len(m.Uploads) <= 1 {
		if len(m.Uploads) == 1 {
			base.File = &m.Uploads[0]
		}
		return []webex.Message{base}
	}
	var parts []webex.Message
	next := func(i int) webex.Message {
		if i == 0 {
			p := base
			p.Files = nil
			return p
		}
		return webex.Message{RoomID: base.RoomID, ToPersonID: base.ToPersonID, ToPersonEmail: base.ToPersonEmail, ParentID: base.ParentID}
	}
	for _, url := range base.Files {
		p := next(len(parts))
		p.Files = []string{url}
		parts = append(parts, p)
	}
	for i := range m.Uploads {
		p := next(len(parts))
		p.File = &m.Uploads[i]
		parts = append(parts, p)
	}
	return parts
}

// Validate checks every part against Webex's rules and the inline cap
// (maxInline bytes; 0 means DefaultMaxInlineBytes), reporting every problem.
func (m *Message) Validate(maxInline int) error {
	if maxInline <= 0 {
		maxInline = DefaultMaxInlineBytes
	}
	var errs []error
	total := 0
	for i, f := range m.Uploads {
		total += len(f.Data)
		if f.Open != nil {
			// Only Data travels in a task's payload: a streamed file would
			// arrive empty.
			errs = append(errs, &webex.ValidationError{Field: fmt.Sprintf("uploads[%d]", i),
				Problem: "a streamed file (Open) cannot be queued: load its bytes into Data, or send it by URL"})
		}
	}
	if total > maxInline {
		errs = append(errs, &webex.ValidationError{Field: "uploads",
			Problem: fmt.Sprintf("files total %d bytes, the inline limit is %d (send larger files by URL)", total, maxInline)})
	}
	for field, v := range map[string]string{"text": m.Text, "markdown": m.Markdown} {
		if i := strings.IndexFunc(v, isControl); i >= 0 {
			errs = append(errs, &webex.ValidationError{Field: field,
				Problem: fmt.Sprintf("contains the control character %q at byte %d: only tab, CR and LF are allowed", v[i], i)})
		}
	}
	for i, part := range m.Parts() {
		if err := part.Validate(); err != nil {
			if i > 0 {
				err = fmt.Errorf("file %d: %w", i+1, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isControl reports a C0 control character (or DEL) other than tab, LF and
// CR: Webex's clients do not show them, and NUL ends strings in many.
func isControl(r rune) bool {
	return (r < 0x20 || r == 0x7f) && r != '\t' && r != '\n' && r != '\r'
}

// clipValue shortens a producer's value quoted in an error.
func clipValue(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Payload is the JSON a send task carries.
type Payload struct {
	// Version is PayloadVersion when written by this code.
	Version int     `json:"v"`
	Message Message `json:"message"`
	// Bot names the bot to send as; empty means the default bot.
	Bot string `json:"bot,omitempty"`
	// Key is the producer's idempotency key (also the task ID), if any.
	Key string `json:"key,omitempty"`
	// Source names the producer, for logs.
	Source     string    `json:"source,omitempty"`
	EnqueuedAt time.Time `json:"enqueued_at"`
	// ExpiresAt, when set, is when an undelivered message stops being worth
	// posting: it is dead-lettered as expired instead.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// OrderingKey, when set, makes the message ordered: it is delivered
	// after the ordered messages enqueued before it with the same key.
	OrderingKey string `json:"ordering_key,omitempty"`
	// ParentTask, when set, names the task (same queue) whose delivered
	// message this one replies to: its Webex id becomes the parentId.
	ParentTask string `json:"parent_task,omitempty"`
}

// ErrCorruptPayload matches a payload that cannot be decoded.
var ErrCorruptPayload = errors.New("corrupt payload")

// ErrNewerPayload matches a payload of a version this code does not know.
var ErrNewerPayload = errors.New("payload version newer than this worker")

// DecodePayload reads a task's payload. It fails with ErrCorruptPayload for
// bytes that are not a payload and ErrNewerPayload for a later version.
func DecodePayload(b []byte) (*Payload, error) {
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptPayload, err)
	}
	switch {
	case p.Version > PayloadVersion:
		return &p, fmt.Errorf("%w: version %d, this worker reads up to %d", ErrNewerPayload, p.Version, PayloadVersion)
	case p.Version < 1:
		return nil, fmt.Errorf("%w: version %d", ErrCorruptPayload, p.Version)
	}
	return &p, nil
}

// ReservedKeyPrefix starts the keys the relay gives its callers'
// Idempotency-Keys (relay/<token id>/<key>): the same key from another
// producer would take a relay caller's, so only a producer made for the
// relay (ProducerConfig.RelayKeys) may use it.
const ReservedKeyPrefix = "relay/"

// ErrReservedKey matches a key refused for starting with ReservedKeyPrefix
// (the error is also a *webex.ValidationError for the field "key").
var ErrReservedKey = errors.New("keys starting with " + ReservedKeyPrefix + " are reserved for the relay")

// reservedKeyError is a validation error that also matches ErrReservedKey.
type reservedKeyError struct{ webex.ValidationError }

func (e *reservedKeyError) Unwrap() []error { return []error{&e.ValidationError, ErrReservedKey} }

// validateKey checks an idempotency key: printable, no spaces, bounded, and
// outside the relay's key space unless relay.
func validateKey(key string, relay bool) error {
	if len(key) > MaxKeyBytes {
		return &webex.ValidationError{Field: "key", Problem: fmt.Sprintf("is %d bytes, the limit is %d", len(key), MaxKeyBytes)}
	}
	if !relay && strings.HasPrefix(key, ReservedKeyPrefix) {
		return &reservedKeyError{webex.ValidationError{Field: "key", Problem: fmt.Sprintf("%q: %v", clipValue(key), ErrReservedKey)}}
	}
	for _, r := range key {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return &webex.ValidationError{Field: "key", Problem: fmt.Sprintf("contains %q: use printable characters without spaces", r)}
		}
	}
	return nil
}
