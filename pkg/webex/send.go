package webex

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/courier-dev/courier/pkg/retrypolicy"
)

// SendOption adjusts one call of the send helpers.
type SendOption func(*sendOptions)

type sendOptions struct {
	policy retrypolicy.Policy
	retry  []retrypolicy.Option
}

// WithPolicy replaces the Webex preset for this call.
func WithPolicy(p retrypolicy.Policy) SendOption { return func(o *sendOptions) { o.policy = p } }

// WithRetryOptions passes options (callbacks, a budget, a logger) to
// retrypolicy.Do. They come after the helper's own, so they win.
func WithRetryOptions(opts ...retrypolicy.Option) SendOption {
	return func(o *sendOptions) { o.retry = append(o.retry, opts...) }
}

// DefaultWaitBudget bounds the time a helper spends waiting between
// attempts (not the attempts themselves, each bounded by the HTTP client's
// timeout). It covers the Webex preset's own back-off (at most 2 waits of at
// most 30s) with room for a 429's Retry-After of about a minute; a wait that
// would cross it ends the call with a *retrypolicy.BudgetError at once,
// instead of blocking the caller for as long as the server asks (up to
// MaxRetryAfter). Change it per call with
// WithRetryOptions(retrypolicy.WithMaxWait(d)), or give ctx a deadline.
const DefaultWaitBudget = 2 * time.Minute

func (c *Client) retryOptions(name string, opts []SendOption) sendOptions {
	o := sendOptions{policy: retrypolicy.Webex}
	if c.logger != nil {
		o.retry = []retrypolicy.Option{retrypolicy.WithLogger(c.logger)}
	}
	o.retry = append(o.retry, retrypolicy.WithName(name), retrypolicy.WithMaxWait(DefaultWaitBudget))
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Send posts a message with in-process retry (send_message), waiting at most
// DefaultWaitBudget between attempts in all.
//
// When Webex accepted the message but its answer could not be read, Send
// returns an error matching *UnconfirmedError (errors.As) after that one
// request: the message was delivered, with an unknown id; do not send it
// again.
func (c *Client) Send(ctx context.Context, m Message, opts ...SendOption) (*Sent, error) {
	return c.send(ctx, "send_message", m, opts)
}

func (c *Client) send(ctx context.Context, name string, m Message, opts []SendOption) (*Sent, error) {
	o := c.retryOptions(name, opts)
	return retrypolicy.DoValue(ctx, o.policy, func(ctx context.Context) (*Sent, error) {
		return c.CreateMessage(ctx, m)
	}, o.retry...)
}

// SendFiles posts m with files attached (send_message_with_files). Webex
// takes one file per message: the first message carries m's text and the
// first file, each further file follows as its own message, in order. Each
// message is retried on its own, within one wait budget for the whole call
// (DefaultWaitBudget, or WithMaxWait); on failure the messages already sent
// are returned with the error, and none is sent twice.
//
// A message Webex accepted without a readable answer counts as sent: it
// appears as a Sent with an empty ID (its Response holds the status and
// tracking id), the following files are still sent, and the returned error
// matches *UnconfirmedError.
func (c *Client) SendFiles(ctx context.Context, m Message, files []File, opts ...SendOption) ([]*Sent, error) {
	parts := SplitFiles(m, files)
	sent := make([]*Sent, 0, len(parts))
	var unconfirmed []error
	// One wait budget for the whole call: each message's waits count
	// against what the earlier ones left.
	var waited time.Duration
	opts = append([]SendOption{WithRetryOptions(retrypolicy.WithWaitedSoFar(&waited))}, opts...)
	for i, part := range parts {
		s, err := c.send(ctx, "send_message_with_files", part, opts)
		var ue *UnconfirmedError
		if errors.As(err, &ue) {
			s = &Sent{Response: Response{StatusCode: ue.StatusCode, TrackingID: ue.TrackingID}}
			unconfirmed = append(unconfirmed, fmt.Errorf("message %d of %d: %w", i+1, len(parts), err))
		} else if err != nil {
			return sent, errors.Join(append(unconfirmed, fmt.Errorf("message %d of %d: %w", i+1, len(parts), err))...)
		}
		sent = append(sent, s)
	}
	return sent, errors.Join(unconfirmed...)
}

// SplitFiles turns a message with several local files into the messages
// Webex takes: m with the first file, then one message per further file to
// the same destination and thread. Without files it is just m.
func SplitFiles(m Message, files []File) []Message {
	if len(files) == 0 {
		return []Message{m}
	}
	out := make([]Message, len(files))
	for i := range files {
		part := Message{RoomID: m.RoomID, ToPersonID: m.ToPersonID, ToPersonEmail: m.ToPersonEmail, ParentID: m.ParentID}
		if i == 0 {
			part = m
		}
		part.File = &files[i]
		out[i] = part
	}
	return out
}

// SendCard posts an adaptive card (send_card). card is the card's content
// (any JSON-encodable value, or json.RawMessage); m needs a text or markdown
// fallback for clients that cannot render cards. Like Send, it returns an
// *UnconfirmedError after one request when Webex accepted the card but its
// answer was unreadable.
func (c *Client) SendCard(ctx context.Context, m Message, card any, opts ...SendOption) (*Sent, error) {
	content, ok := card.(json.RawMessage)
	if !ok {
		var err error
		if content, err = json.Marshal(card); err != nil {
			return nil, fmt.Errorf("send card: encode card: %w", err)
		}
	}
	m.Attachments = []Attachment{{ContentType: CardContentType, Content: content}}
	return c.send(ctx, "send_card", m, opts)
}

// SafeSend posts a message with in-process retry and reports only whether it
// was delivered (safe_send_message): it never returns an error and never
// panics. It logs a failure at warn level through the client's logger; with
// a nil Config.Logger (or a nil client) nothing is logged. A message Webex
// accepted without a readable answer was delivered: true, logged at warn.
// Use it for error notifications that must not cascade.
func (c *Client) SafeSend(ctx context.Context, m Message, opts ...SendOption) (ok bool) {
	if c == nil {
		return false
	}
	logger := c.logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if r := recover(); r != nil {
			logger.Error("safe send panicked", "destination", m.Destination(), "panic", fmt.Sprint(r))
			ok = false
		}
	}()
	_, err := c.send(ctx, "safe_send_message", m, opts)
	var ue *UnconfirmedError
	switch {
	case errors.As(err, &ue):
		logger.Warn("safe send delivered, answer unreadable", "destination", m.Destination(),
			"status", ue.StatusCode, "tracking_id", ue.TrackingID, "error", err.Error())
		return true
	case err != nil:
		logger.Warn("safe send failed", "destination", m.Destination(), "error", err.Error())
		return false
	}
	return true
}
