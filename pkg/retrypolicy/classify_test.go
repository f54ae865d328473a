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
	"os"
	"syscall"
	"testing"
	"time"
)

type apiErr struct {
	class Class
	after time.Duration
}

func (e *apiErr) Error() string                      { return "api error" }
func (e *apiErr) RetryClass() (Class, time.Duration) { return e.class, e.after }

var _ Classifier = (*apiErr)(nil)

var errCallerTransient = errors.New("caller transient")
var errCallerPermanent = errors.New("caller permanent")

func TestClassify(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("send message: %w", err) }
	rules := &Rules{
		Retryable:    []error{errCallerTransient},
		NonRetryable: []error{errCallerPermanent},
	}
	tests := []struct {
		name  string
		err   error
		rules *Rules
		class Class
		after time.Duration
	}{
		{"nil", nil, nil, Permanent, 0},
		{"canceled", context.Canceled, nil, Permanent, 0},
		{"canceled wrapped", wrap(context.Canceled), nil, Permanent, 0},
		{"marked permanent beats pattern", MarkPermanent(errors.New("503 timeout")), nil, Permanent, 0},
		{"marked transient", MarkTransient(errors.New("odd")), nil, Transient, 0},
		{"marked transient wrapped", wrap(MarkTransient(errors.New("odd"))), nil, Transient, 0},
		{"marked retry after", MarkRetryAfter(errors.New("slow down"), 7*time.Second), nil, RateLimited, 7 * time.Second},
		{"classifier rate limited", wrap(&apiErr{RateLimited, 3 * time.Second}), nil, RateLimited, 3 * time.Second},
		{"classifier permanent", wrap(&apiErr{Permanent, 0}), nil, Permanent, 0},
		{"caller retryable", wrap(errCallerTransient), rules, Transient, 0},
		{"caller non-retryable beats pattern", fmt.Errorf("timeout: %w", errCallerPermanent), rules, Permanent, 0},
		{"caller func", errors.New("flaky disk"), &Rules{RetryableIf: func(err error) bool { return err.Error() == "flaky disk" }}, Transient, 0},
		{"ECONNRESET", wrap(syscall.ECONNRESET), nil, Transient, 0},
		{"ECONNREFUSED in OpError", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, nil, Transient, 0},
		{"ECONNABORTED", syscall.ECONNABORTED, nil, Transient, 0},
		{"EPIPE", wrap(syscall.EPIPE), nil, Transient, 0},
		{"ETIMEDOUT", syscall.ETIMEDOUT, nil, Transient, 0},
		{"EHOSTUNREACH", syscall.EHOSTUNREACH, nil, Transient, 0},
		{"ENETUNREACH", syscall.ENETUNREACH, nil, Transient, 0},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), nil, Transient, 0},
		{"EOF from http", &url.Error{Op: "Post", URL: "http://x", Err: io.EOF}, nil, Transient, 0},
		{"bare EOF", io.EOF, nil, Permanent, 0},
		{"deadline exceeded", wrap(context.DeadlineExceeded), nil, Transient, 0},
		{"net timeout", &net.DNSError{Err: "i/o", Name: "x", IsTimeout: true}, nil, Transient, 0},
		{"temporary DNS", &net.DNSError{Err: "server misbehaving", Name: "x", IsTemporary: true}, nil, Transient, 0},
		{"DNS not found", &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, nil, Permanent, 0},
		{"proxy", &net.OpError{Op: "proxyconnect", Net: "tcp", Err: errors.New("refused")}, nil, Transient, 0},
		{"TLS record header", wrap(tls.RecordHeaderError{Msg: "bad"}), nil, Transient, 0},
		{"TLS alert", tls.AlertError(40), nil, Transient, 0},
		{"unknown authority", wrap(x509.UnknownAuthorityError{}), nil, Transient, 0},
		{"pattern connection reset", errors.New("Connection Reset by peer"), nil, Transient, 0},
		{"pattern aborted", errors.New("connection aborted"), nil, Transient, 0},
		{"pattern timeout", errors.New("read TIMEOUT"), nil, Transient, 0},
		{"pattern timed out", errors.New("operation timed out"), nil, Transient, 0},
		{"pattern rate limit", errors.New("rate limit hit"), nil, Transient, 0},
		{"pattern too many requests", errors.New("Too Many Requests"), nil, Transient, 0},
		{"pattern 503", errors.New("HTTP 503"), nil, Transient, 0},
		{"pattern 504", errors.New("status 504"), nil, Transient, 0},
		{"pattern service unavailable", errors.New("Service Unavailable"), nil, Transient, 0},
		{"pattern ssl", errors.New("SSL handshake"), nil, Transient, 0},
		{"pattern certificate", errors.New("bad certificate"), nil, Transient, 0},
		{"pattern proxy", errors.New("proxy refused"), nil, Transient, 0},
		{"unclassified", errors.New("invalid room id"), nil, Permanent, 0},
		{"unclassified wrapped", wrap(errors.New("value error")), nil, Permanent, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tt.err, tt.rules)
			if got.Class != tt.class || got.RetryAfter != tt.after {
				t.Errorf("Classify(%v) = %v after %v (%s), want %v after %v", tt.err, got.Class, got.RetryAfter, got.Reason, tt.class, tt.after)
			}
			if got.Reason == "" {
				t.Error("empty Reason")
			}
		})
	}
}

func TestMarkNil(t *testing.T) {
	t.Parallel()
	if MarkPermanent(nil) != nil || MarkTransient(nil) != nil || MarkRetryAfter(nil, time.Second) != nil {
		t.Fatal("marking nil must stay nil")
	}
}

func TestMarkKeepsChain(t *testing.T) {
	t.Parallel()
	err := MarkPermanent(fmt.Errorf("x: %w", io.ErrClosedPipe))
	if !errors.Is(err, io.ErrClosedPipe) || err.Error() != "x: io: read/write on closed pipe" {
		t.Fatalf("marker changed the error: %v", err)
	}
}

func FuzzMatchPattern(f *testing.F) {
	for _, s := range []string{"connection reset", "HTTP 503", "ok", "", "ÄSSL", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		p, ok := matchPattern(msg)
		if ok != (p != "") {
			t.Fatalf("matchPattern(%q) = %q, %v", msg, p, ok)
		}
		d := Classify(errors.New(msg), nil)
		if d.Class == RateLimited {
			t.Fatalf("a foreign message must never be rate-limited: %q", msg)
		}
		if ok && d.Class != Transient {
			t.Fatalf("pattern %q matched but class is %v", p, d.Class)
		}
	})
}
