package retrypolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/sethvargo/go-retry"
)

// Class is what an error means for retrying.
type Class uint8

const (
	// Permanent errors are not retried: trying again gives the same answer.
	// Errors that match no rule are permanent too (see [Classify]).
	Permanent Class = iota
	// Transient errors are worth another attempt after a back-off.
	Transient
	// RateLimited errors are worth another attempt after the delay the
	// server asked for (Decision.RetryAfter), or a back-off when it named none.
	RateLimited
)

// String names the class.
func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case RateLimited:
		return "rate_limited"
	}
	return fmt.Sprintf("Class(%d)", uint8(c))
}

// Retryable reports whether the class is worth another attempt.
func (c Class) Retryable() bool { return c == Transient || c == RateLimited }

// Decision is the outcome of classifying an error.
type Decision struct {
	Class Class
	// RetryAfter is the delay the server asked for, 0 when it named none.
	RetryAfter time.Duration
	// Reason says which rule decided, for logs: "marked", "classifier",
	// "caller", "syscall ECONNRESET", "pattern \"503\"", "unclassified", ...
	Reason string
}

// Classifier is implemented by error types that know their own class, such as
// an HTTP API error that carries a status and a Retry-After. [Classify] finds
// it anywhere in the error's chain with errors.As.
type Classifier interface {
	error
	RetryClass() (Class, time.Duration)
}

// marked is an error with an explicit instruction attached by the caller.
type marked struct {
	err        error
	class      Class
	retryAfter time.Duration
}

func (m *marked) Error() string                      { return m.err.Error() }
func (m *marked) Unwrap() error                      { return m.err }
func (m *marked) RetryClass() (Class, time.Duration) { return m.class, m.retryAfter }

// MarkPermanent marks err as not worth retrying. Nil stays nil.
func MarkPermanent(err error) error { return mark(err, Permanent, 0) }

// MarkTransient marks err as worth retrying after a back-off. Nil stays nil.
func MarkTransient(err error) error { return mark(err, Transient, 0) }

// MarkRetryAfter marks err as rate-limited: retry after d (a back-off when d
// is 0). Nil stays nil.
func MarkRetryAfter(err error, d time.Duration) error { return mark(err, RateLimited, max(d, 0)) }

func mark(err error, c Class, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &marked{err: err, class: c, retryAfter: d}
}

// Rules extends classification for a caller's own errors: the Go form of the
// old mechanism's retryable_exceptions and non_retryable_exceptions. Each
// entry is matched with errors.Is against the error's chain; the funcs match
// anything else (an error type with errors.As, say). Non-retryable rules win.
type Rules struct {
	Retryable      []error
	NonRetryable   []error
	RetryableIf    func(error) bool
	NonRetryableIf func(error) bool
}

func (r *Rules) match(err error) (Class, bool) {
	if r == nil {
		return 0, false
	}
	if matchAny(err, r.NonRetryable, r.NonRetryableIf) {
		return Permanent, true
	}
	if matchAny(err, r.Retryable, r.RetryableIf) {
		return Transient, true
	}
	return 0, false
}

func matchAny(err error, targets []error, f func(error) bool) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return f != nil && f(err)
}

// transientErrnos are the socket errors worth another attempt.
var transientErrnos = []struct {
	errno syscall.Errno
	name  string
}{
	{syscall.ECONNRESET, "ECONNRESET"},
	{syscall.ECONNREFUSED, "ECONNREFUSED"},
	{syscall.ECONNABORTED, "ECONNABORTED"},
	{syscall.EPIPE, "EPIPE"},
	{syscall.ETIMEDOUT, "ETIMEDOUT"},
	{syscall.EHOSTUNREACH, "EHOSTUNREACH"},
	{syscall.ENETUNREACH, "ENETUNREACH"},
}

// transientPatterns are the old mechanism's message patterns, matched
// case-insensitively against errors no other rule knows.
var transientPatterns = []string{
	"connection reset", "connection aborted",
	"timeout", "timed out",
	"rate limit", "too many requests",
	"503", "504", "service unavailable",
	"ssl", "certificate", "proxy",
}

// Classify decides what err means for retrying, in this order:
//
//  1. context.Canceled: permanent (the caller gave up);
//  2. markers attached with MarkPermanent, MarkTransient, MarkRetryAfter, and
//     errors implementing [Classifier]; go-retry's RetryableError marker
//     (transient), so code moved over from go-retry keeps its meaning;
//  3. the caller's rules, when given;
//  4. typed errors: net.Error timeouts, socket errors (ECONNRESET,
//     ECONNREFUSED, ECONNABORTED, EPIPE, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH),
//     io.ErrUnexpectedEOF, a connection closed mid-request, temporary DNS
//     errors, TLS and certificate errors, proxy errors, and an attempt's
//     context.DeadlineExceeded: transient;
//  5. the old mechanism's message patterns ("connection reset", "timeout",
//     "503", "ssl", ...): transient;
//  6. anything else: permanent, as in the old mechanism. In the worker such
//     an error goes to the dead-letter queue, where it can be re-run.
func Classify(err error, rules *Rules) Decision {
	if err == nil {
		return Decision{Class: Permanent, Reason: "nil error"}
	}
	if errors.Is(err, context.Canceled) {
		return Decision{Class: Permanent, Reason: "canceled"}
	}
	var c Classifier
	if errors.As(err, &c) {
		class, d := c.RetryClass()
		reason := "classifier"
		if _, ok := c.(*marked); ok {
			reason = "marked"
		}
		return Decision{Class: class, RetryAfter: max(d, 0), Reason: reason}
	}
	if isGoRetryMarker(err) {
		return Decision{Class: Transient, Reason: "go-retry marker"}
	}
	if class, ok := rules.match(err); ok {
		return Decision{Class: class, Reason: "caller rule"}
	}
	if reason, ok := typedTransient(err); ok {
		return Decision{Class: Transient, Reason: reason}
	}
	if p, ok := matchPattern(err.Error()); ok {
		return Decision{Class: Transient, Reason: fmt.Sprintf("pattern %q", p)}
	}
	return Decision{Class: Permanent, Reason: "unclassified"}
}

// isGoRetryMarker reports whether err carries go-retry's RetryableError
// marker. Its type is unexported, so go-retry itself is asked: it consults the
// backoff only for a marked error.
func isGoRetryMarker(err error) bool {
	asked := false
	stop := retry.BackoffFunc(func() (time.Duration, bool) { asked = true; return 0, true })
	_ = retry.Do(context.Background(), stop, func(context.Context) error { return err })
	return asked
}

// typedTransient recognises the standard library's transient error types.
func typedTransient(err error) (string, bool) {
	for _, e := range transientErrnos {
		if errors.Is(err, e.errno) {
			return "syscall " + e.name, true
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "deadline exceeded", true
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected EOF", true
	}
	var ue *url.Error
	if errors.As(err, &ue) && errors.Is(ue.Err, io.EOF) {
		return "connection closed", true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && (dns.IsTemporary || dns.IsTimeout) {
		return "temporary DNS error", true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "network timeout", true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "proxyconnect" {
		return "proxy error", true
	}
	if isTLS(err) {
		return "TLS error", true
	}
	return "", false
}

func isTLS(err error) bool {
	var (
		rh  tls.RecordHeaderError
		alt tls.AlertError
		cv  *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
		ech *tls.ECHRejectionError
	)
	return errors.As(err, &rh) || errors.As(err, &alt) || errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &ech)
}

// matchPattern reports the first old-mechanism pattern found in msg.
func matchPattern(msg string) (string, bool) {
	msg = strings.ToLower(msg)
	for _, p := range transientPatterns {
		if strings.Contains(msg, p) {
			return p, true
		}
	}
	return "", false
}
