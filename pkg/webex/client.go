package webex

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"
)

// DefaultBaseURL is the Webex API's public base.
const DefaultBaseURL = "https://webexapis.com/v1"

// DefaultTimeout bounds one request, from dial to the last byte of the
// answer. It stays below the worker's default shutdown timeout, so an
// in-flight request finishes before the worker has to give up on it.
const DefaultTimeout = 20 * time.Second

// maxResponseBody bounds how much of a success answer is read.
const maxResponseBody = 1 << 20

// Config configures a Client.
type Config struct {
	// BaseURL is the API base, without a trailing slash. Default
	// DefaultBaseURL; any base works (http://127.0.0.1:3210 for a local
	// simulator serving /messages at its root).
	BaseURL string
	// Token is the bot's access token. Required. It is sent only in the
	// Authorization header and never appears in errors or logs.
	Token string
	// HTTPClient sends the requests. Default: a client with DefaultTimeout
	// per request, 5s to connect, 5s for the TLS handshake, 15s to the
	// response headers.
	HTTPClient *http.Client
	// UserAgent is sent with every request. Default "courier".
	UserAgent string
	// Logger receives a debug record per request. Nil: nothing is logged.
	Logger *slog.Logger
}

// Client talks to the Webex API as one bot.
type Client struct {
	base   string
	token  string
	http   *http.Client
	ua     string
	logger *slog.Logger
}

// New returns a client, or an error naming what is wrong with cfg.
func New(cfg Config) (*Client, error) {
	if cfg.Token == "" {
		return nil, errors.New("webex: Token is required")
	}
	base := strings.TrimRight(cmp.Or(cfg.BaseURL, DefaultBaseURL), "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		return nil, fmt.Errorf("webex: BaseURL %q must start with http:// or https://", cfg.BaseURL)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = DefaultHTTPClient()
	}
	return &Client{base: base, token: cfg.Token, http: hc, ua: cmp.Or(cfg.UserAgent, "courier"), logger: cfg.Logger}, nil
}

// DefaultHTTPClient is the HTTP client New uses when none is given.
func DefaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = 15 * time.Second
	t.MaxIdleConnsPerHost = 64
	return &http.Client{Timeout: DefaultTimeout, Transport: t}
}

// BaseURL is the API base the client talks to.
func (c *Client) BaseURL() string { return c.base }

// Sent is a message Webex created.
type Sent struct {
	ID            string       `json:"id"`
	RoomID        string       `json:"roomId,omitempty"`
	RoomType      string       `json:"roomType,omitempty"`
	ToPersonID    string       `json:"toPersonId,omitempty"`
	ToPersonEmail string       `json:"toPersonEmail,omitempty"`
	ParentID      string       `json:"parentId,omitempty"`
	Text          string       `json:"text,omitempty"`
	Markdown      string       `json:"markdown,omitempty"`
	Files         []string     `json:"files,omitempty"`
	Attachments   []Attachment `json:"attachments,omitempty"`
	PersonID      string       `json:"personId,omitempty"`
	PersonEmail   string       `json:"personEmail,omitempty"`
	Created       time.Time    `json:"created"`
}

// Person is the identity behind a token.
type Person struct {
	ID          string   `json:"id"`
	DisplayName string   `json:"displayName"`
	Emails      []string `json:"emails"`
}

// Me checks the token: GET /people/me. A rejected token gives an error
// matching ErrUnauthorized.
func (c *Client) Me(ctx context.Context) (*Person, error) {
	var p Person
	if err := c.do(ctx, http.MethodGet, "/people/me", nil, "", &p); err != nil {
		return nil, fmt.Errorf("check token: %w", err)
	}
	return &p, nil
}

// CreateMessage posts one message, once: JSON, or multipart/form-data when
// m.File is set. An invalid message fails before any request.
func (c *Client) CreateMessage(ctx context.Context, m Message) (*Sent, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	body, ct, err := encodeMessage(&m)
	if err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	var s Sent
	if err := c.do(ctx, http.MethodPost, "/messages", body, ct, &s); err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	return &s, nil
}

// GetMessage reads one message by id.
func (c *Client) GetMessage(ctx context.Context, id string) (*Sent, error) {
	var s Sent
	if err := c.do(ctx, http.MethodGet, "/messages/"+id, nil, "", &s); err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	return &s, nil
}

func encodeMessage(m *Message) ([]byte, string, error) {
	if m.File == nil {
		b, err := json.Marshal(m)
		return b, "application/json", err
	}
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range [][2]string{
		{"roomId", m.RoomID}, {"toPersonId", m.ToPersonID}, {"toPersonEmail", m.ToPersonEmail},
		{"parentId", m.ParentID}, {"text", m.Text}, {"markdown", m.Markdown},
	} {
		if f[1] != "" {
			if err := w.WriteField(f[0], f[1]); err != nil {
				return nil, "", err
			}
		}
	}
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", multipart.FileContentDisposition("files", m.File.Name))
	h.Set("Content-Type", cmp.Or(m.File.ContentType, "application/octet-stream"))
	part, err := w.CreatePart(h)
	if err != nil {
		return nil, "", err
	}
	if _, err := part.Write(m.File.Data); err != nil {
		return nil, "", err
	}
	if err := w.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), w.FormDataContentType(), nil
}

// do sends one request and decodes a 2xx JSON answer into out.
func (c *Client) do(ctx context.Context, method, path string, body []byte, ct string, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.debug(ctx, method, path, 0, start, "", err)
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		apiErr := parseAPIError(resp, time.Now())
		c.debug(ctx, method, path, resp.StatusCode, start, apiErr.TrackingID, nil)
		return apiErr
	}
	tracking := resp.Header.Get("TrackingID")
	c.debug(ctx, method, path, resp.StatusCode, start, tracking, nil)
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBody)).Decode(out); err != nil {
		return &UnconfirmedError{StatusCode: resp.StatusCode, TrackingID: tracking, Err: err}
	}
	return nil
}

func (c *Client) debug(ctx context.Context, method, path string, status int, start time.Time, tracking string, err error) {
	if c.logger == nil || !c.logger.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs := []any{"method", method, "path", path, "status", status, "duration", time.Since(start)}
	if tracking != "" {
		attrs = append(attrs, "tracking_id", tracking)
	}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	c.logger.DebugContext(ctx, "webex request", attrs...)
}
