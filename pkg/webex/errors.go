package webex

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// ErrUnauthorized matches (errors.Is) an *APIError whose status is 401: the
// token is missing, expired or revoked. Retrying will not help, and neither
// will dead-lettering: the fix is a new token.
var ErrUnauthorized = errors.New("webex: token rejected (401)")

// Defaults for reading Retry-After.
const (
	// DefaultRetryAfter is assumed for a 429 whose Retry-After is missing or
	// unreadable.
	DefaultRetryAfter = 15 * time.Second
	// MaxRetryAfter caps any Retry-After a server sends.
	MaxRetryAfter = time.Hour
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
)

// APIError is a non-2xx answer of the Webex API.
type APIError struct {
	StatusCode int
	// Message is the body's "message", or a short excerpt of a non-JSON body.
	Message string
	// Errors are the body's errors[].description.
	Errors []string
	// TrackingID is the body's trackingId, else the TrackingID header: quote
	// it to Webex support.
	TrackingID string
	// RetryAfter is the server's Retry-After; on a 429 without a readable
	// one, DefaultRetryAfter.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "webex: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	for _, d := range e.Errors {
		if d != e.Message {
			b.WriteString("; ")
			b.WriteString(d)
		}
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " (tracking id %s)", e.TrackingID)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrUnauthorized) true for a 401.
func (e *APIError) Is(target error) bool {
	return target == ErrUnauthorized && e.StatusCode == http.StatusUnauthorized
}

// RetryClass classifies the answer for pkg/retrypolicy: 429 rate-limited;
// 408, 423 and every 5xx transient (with their Retry-After, if any): besides
// Webex's own 500/502/503/504, CDNs and proxies in front of it answer
// 520–530, and none of the 5xx says the request itself is wrong. Everything
// else (the other 4xx, and 1xx/3xx that should not reach a caller) is
// permanent.
func (e *APIError) RetryClass() (retrypolicy.Class, time.Duration) {
	switch {
	case e.StatusCode == http.StatusTooManyRequests:
		return retrypolicy.RateLimited, e.RetryAfter
	case e.StatusCode == http.StatusRequestTimeout, e.StatusCode == http.StatusLocked,
		e.StatusCode >= 500 && e.StatusCode <= 599:
		return retrypolicy.Transient, e.RetryAfter
	}
	return retrypolicy.Permanent, 0
}

// ErrNoMessageID is matched (errors.Is) by the *UnconfirmedError of a
// POST /messages answered 2xx with a body that names no message id ({},
// null): the message was accepted, but which one it is is unknown.
var ErrNoMessageID = errors.New("webex: the answer has no message id")

// UnconfirmedError says Webex answered a request with a 2xx status whose
// body could not be read or decoded (cut off, slower than the client's
// timeout, over the response cap, not JSON), or, for a POST /messages, had
// no message id (ErrNoMessageID). For a POST /messages the
// message exists: posting it again would duplicate it. It is never retried
// (its class is Permanent) and callers that deliver messages should treat it
// as delivered with an unknown id, not as a failure.
type UnconfirmedError struct {
	// StatusCode is the 2xx status Webex answered with.
	StatusCode int
	// TrackingID is the TrackingID header of the answer, if any.
	TrackingID string
	// Err is why the body could not be read or decoded, or ErrNoMessageID.
	Err error
}

func (e *UnconfirmedError) Error() string {
	s := fmt.Sprintf("webex: %d answer unreadable, the request took effect: %v", e.StatusCode, e.Err)
	if e.TrackingID != "" {
		s += " (tracking id " + e.TrackingID + ")"
	}
	return s
}

// Unwrap returns the read or decode error.
func (e *UnconfirmedError) Unwrap() error { return e.Err }

// RetryClass makes an accepted request permanent: it must not be sent again.
func (e *UnconfirmedError) RetryClass() (retrypolicy.Class, time.Duration) {
	return retrypolicy.Permanent, 0
}

// errorBody is Webex's error shape.
type errorBody struct {
	Message string `json:"message"`
	Errors  []struct {
		Description string `json:"description"`
	} `json:"errors"`
	TrackingID string `json:"trackingId"`
}

// parseAPIError reads a non-2xx answer (at most maxErrorBody bytes of it).
func parseAPIError(resp *http.Response, now time.Time) *APIError {
	e := &APIError{StatusCode: resp.StatusCode, TrackingID: resp.Header.Get("TrackingID")}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body errorBody
	if json.Unmarshal(raw, &body) == nil {
		e.Message = body.Message
		for _, d := range body.Errors {
			if d.Description != "" {
				e.Errors = append(e.Errors, d.Description)
			}
		}
		if body.TrackingID != "" {
			e.TrackingID = body.TrackingID
		}
	} else {
		e.Message = excerpt(raw)
	}
	e.RetryAfter = ParseRetryAfter(resp.Header.Get("Retry-After"), now)
	if e.RetryAfter == 0 && resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = DefaultRetryAfter
	}
	return e
}

// excerpt is a short, single-line piece of a non-JSON body (an HTML page
// from a proxy, say), with tags dropped.
func excerpt(raw []byte) string {
	var b strings.Builder
	inTag := false
	for _, r := range string(raw) {
		switch {
		case r == '<':
			inTag = true
		case r == '>':
			inTag = false
			b.WriteByte(' ')
		case !inTag:
			b.WriteRune(r)
		}
	}
	s := strings.Join(strings.Fields(b.String()), " ")
	if len(s) <= maxExcerpt {
		return s
	}
	cut := maxExcerpt
	for cut > 0 && !utf8.RuneStart(s[cut]) { // never split a character
		cut--
	}
	return s[:cut] + "…"
}

// maxExcerpt bounds an error excerpt, in bytes.
const maxExcerpt = 200

// ParseRetryAfter reads a Retry-After header: whole seconds or an HTTP date.
// Missing, malformed or past values give 0; values are capped at
// MaxRetryAfter, including a number of seconds too large for any integer
// type. It never fails.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	secs, err := strconv.ParseInt(v, 10, 64)
	if errors.Is(err, strconv.ErrRange) { // all digits, beyond int64: saturate
		secs, err = math.MaxInt64, nil
		if strings.HasPrefix(v, "-") {
			secs = math.MinInt64
		}
	}
	if err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}
