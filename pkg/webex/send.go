package webex

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

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

func (c *Client) retryOptions(name string, opts []SendOption) sendOptions {
	o := sendOptions{policy: retrypolicy.Webex}
	if c.logger != nil {
		o.retry = []retrypolicy.Option{retrypolicy.WithLogger(c.logger)}
	}
	o.retry = append(o.retry, retrypolicy.WithName(name))
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Send posts a message with in-process retry (send_message).
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
// message is retried on its own; on failure the messages already sent are
// returned with the error, and none is sent twice.
func (c *Client) SendFiles(ctx context.Context, m Message, files []File, opts ...SendOption) ([]*Sent, error) {
	parts := SplitFiles(m, files)
	sent := make([]*Sent, 0, len(parts))
	for i, part := range parts {
		s, err := c.send(ctx, "send_message_with_files", part, opts)
		if err != nil {
			return sent, fmt.Errorf("message %d of %d: %w", i+1, len(parts), err)
		}
		sent = append(sent, s)
	}
	return sent, nil
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
// fallback for clients that cannot render cards.
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
// panics, and logs a failure at warn level through the client's logger (or
// slog's default). Use it for error notifications that must not cascade.
func (c *Client) SafeSend(ctx context.Context, m Message, opts ...SendOption) (ok bool) {
	if c == nil {
		slog.Default().Warn("safe send failed: no client", "destination", m.Destination())
		return false
	}
	logger := c.logger
	if logger == nil {
		logger = slog.Default()
	}
	defer func() {
		if r := recover(); r != nil {
			logger.Error("safe send panicked", "destination", m.Destination(), "panic", fmt.Sprint(r))
			ok = false
		}
	}()
	if _, err := c.send(ctx, "safe_send_message", m, opts); err != nil {
		logger.Warn("safe send failed", "destination", m.Destination(), "error", err.Error())
		return false
	}
	return true
}
