package webex

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// DefaultBaseURL is the Webex API's public base.
const DefaultBaseURL = "https://webexapis.com/v1"

// DefaultTimeout bounds one request without a body to upload, from dial to
// the last byte of the answer (Config.Timeout). It stays below the worker's
// default shutdown timeout, so an in-flight request finishes before the
// worker has to give up on it.
const DefaultTimeout = 20 * time.Second

// DefaultMinUploadRate is the slowest upload the client waits for, in bytes
// per second (Config.MinUploadRate): 128 KiB/s, about 1 Mbit/s. A request
// gets Timeout plus its body's size at this rate: a 100 MiB file 20s + 13m20s.
const DefaultMinUploadRate = 128 << 10

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
	// Timeout bounds one request, from dial to the last byte of the answer,
	// plus the time to send its body at MinUploadRate: a whole-request
	// bound that grows with the upload, so a large file on a slow link is
	// not cut off at a fixed time. Default DefaultTimeout (20s); negative:
	// no bound but ctx and the HTTPClient's own.
	Timeout time.Duration
	// MinUploadRate is the slowest upload, in bytes per second, that
	// Timeout makes room for. Default DefaultMinUploadRate (128 KiB/s).
	MinUploadRate int64
	// HTTPClient sends the requests. Default DefaultHTTPClient: 5s to
	// connect, 5s for the TLS handshake, 15s to the response headers once
	// the body is sent, and no whole-request timeout of its own (Timeout
	// bounds each request). An HTTPClient with its own Timeout bounds
	// uploads too: leave it 0 to upload large files. Redirects are never followed (a 3xx answer is an
	// *APIError): a client without CheckRedirect gets one that refuses them,
	// since a 301 would silently turn a POST into a GET.
	HTTPClient *http.Client
	// UserAgent is sent with every request. Default "courier/<module
	// version>", e.g. "courier/v1.4.0" ("courier/devel" in a development
	// build).
	UserAgent string
	// Logger receives a debug record per request. Nil: nothing is logged.
	Logger *slog.Logger
}

// Client talks to the Webex API as one bot.
type Client struct {
	base    string
	token   string
	http    *http.Client
	ua      string
	logger  *slog.Logger
	timeout time.Duration // <0: none
	rate    int64         // bytes per second
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
	hc := DefaultHTTPClient()
	if cfg.HTTPClient != nil {
		own := *cfg.HTTPClient // a copy: the caller's client is left as it is
		if own.CheckRedirect == nil {
			own.CheckRedirect = noRedirects
		}
		hc = &own
	}
	if cfg.MinUploadRate < 0 {
		return nil, fmt.Errorf("webex: MinUploadRate %d must not be negative (bytes per second, 0 for the default)", cfg.MinUploadRate)
	}
	return &Client{base: base, token: cfg.Token, http: hc, ua: cmp.Or(cfg.UserAgent, defaultUserAgent()), logger: cfg.Logger,
		timeout: cmp.Or(cfg.Timeout, DefaultTimeout), rate: cmp.Or(cfg.MinUploadRate, DefaultMinUploadRate)}, nil
}

// noRedirects makes the HTTP client return a 3xx answer as it is.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// modulePath is courier's module, whose version goes into the User-Agent.
const modulePath = "github.com/courier-dev/courier"

// defaultUserAgent is "courier/" and the module's version from the build
// information (the main module's, or courier's as a dependency).
func defaultUserAgent() string {
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path == modulePath {
			version = bi.Main.Version
		}
		for _, d := range bi.Deps {
			if d.Path == modulePath {
				version = d.Version
			}
		}
	}
	if version == "" || version == "(devel)" {
		version = "devel"
	}
	return "courier/" + version
}

// DefaultHTTPClient is the HTTP client New uses when none is given. It has
// no whole-request timeout (Config.Timeout bounds each request, scaled by
// its upload); it bounds connecting, the TLS handshake, and the wait for the
// answer's headers once the body is sent.
func DefaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = 15 * time.Second
	t.MaxIdleConnsPerHost = 64
	return &http.Client{Transport: t, CheckRedirect: noRedirects}
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
	// Response is what the answer said besides its body.
	Response Response `json:"-"`
}

// Response is what a successful answer says in its headers.
type Response struct {
	// StatusCode is the 2xx status.
	StatusCode int
	// TrackingID is the TrackingID header: quote it to Webex support.
	TrackingID string
	// RateLimit is the answer's X-RateLimit-* headers, when it sent them.
	RateLimit RateLimit
}

// RateLimit is the X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset headers of an answer.
type RateLimit struct {
	// Known is true when the answer carried X-RateLimit-Limit or
	// X-RateLimit-Remaining; the other fields are zero otherwise.
	Known bool
	// Limit is the number of requests allowed in the current window.
	Limit int
	// Remaining is the number of requests left in the current window.
	Remaining int
	// Reset is the time until the window resets (the header's seconds).
	Reset time.Duration
}

func parseResponse(resp *http.Response) Response {
	r := Response{StatusCode: resp.StatusCode, TrackingID: resp.Header.Get("TrackingID")}
	header := func(k string) (int, bool) {
		n, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get(k)))
		return max(n, 0), err == nil
	}
	limit, okLimit := header("X-RateLimit-Limit")
	remaining, okRemaining := header("X-RateLimit-Remaining")
	if okLimit || okRemaining {
		reset, _ := header("X-RateLimit-Reset")
		r.RateLimit = RateLimit{Known: true, Limit: limit, Remaining: remaining, Reset: time.Duration(reset) * time.Second}
	}
	return r
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
	if _, err := c.do(ctx, http.MethodGet, "/people/me", nil, &p); err != nil {
		return nil, fmt.Errorf("check token: %w", err)
	}
	return &p, nil
}

// CreateMessage posts one message, once: JSON, or multipart/form-data when
// m.File is set (streamed from m.File.Open when given). An invalid message,
// or a local file over MaxFileBytes, fails before any request.
//
// A 2xx answer whose body cannot be read or decoded, or names no message id,
// gives an *UnconfirmedError: the message exists, and must not be posted
// again.
func (c *Client) CreateMessage(ctx context.Context, m Message) (*Sent, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	body, err := encodeMessage(&m)
	if err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	var s Sent
	resp, err := c.do(ctx, http.MethodPost, "/messages", body, &s)
	if err != nil {
		return nil, fmt.Errorf("create message: %w", err)
	}
	if s.ID == "" {
		// An empty id would read as "not sent yet" to whoever stores it.
		return nil, fmt.Errorf("create message: %w",
			&UnconfirmedError{StatusCode: resp.StatusCode, TrackingID: resp.TrackingID, Err: ErrNoMessageID})
	}
	s.Response = resp
	return &s, nil
}

// GetMessage reads one message by id.
func (c *Client) GetMessage(ctx context.Context, id string) (*Sent, error) {
	if id == "" {
		return nil, errors.New("get message: the message id is required")
	}
	var s Sent
	resp, err := c.do(ctx, http.MethodGet, "/messages/"+url.PathEscape(id), nil, &s)
	if err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	s.Response = resp
	return &s, nil
}

// DeleteMessage deletes one message by id (Webex answers 204). A message
// that does not exist (any more) gives an *APIError with status 404.
func (c *Client) DeleteMessage(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("delete message: the message id is required")
	}
	if _, err := c.do(ctx, http.MethodDelete, "/messages/"+url.PathEscape(id), nil, nil); err != nil {
		return fmt.Errorf("delete message: %w", err)
	}
	return nil
}

// do sends one request and decodes a 2xx JSON answer into out (nil: the
// answer's body is ignored).
func (c *Client) do(ctx context.Context, method, path string, body *requestBody, out any) (Response, error) {
	return c.doURL(ctx, method, c.base+path, path, body, out, nil)
}

// doURL is do for a full URL; path names the request in logs; headers, when
// given, sees a 2xx answer's headers.
func (c *Client) doURL(ctx context.Context, method, target, path string, body *requestBody, out any, headers func(http.Header)) (Response, error) {
	if limit := c.requestTimeout(body); limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel() // after the answer is read: it is read here
	}
	var rd io.Reader
	if body != nil {
		r, err := body.open()
		if err != nil {
			return Response{}, err
		}
		rd = r
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		if closer, ok := rd.(io.Closer); ok {
			closer.Close()
		}
		return Response{}, err
	}
	if body != nil {
		req.ContentLength = body.size
		req.GetBody = func() (io.ReadCloser, error) { return &lazyBody{open: body.open}, nil }
		req.Header.Set("Content-Type", body.contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	start := time.Now()
	resp, err := c.http.Do(req)
	if body != nil && body.wrongSize.Load() && !errors.Is(err, ErrFileSize) {
		// The upload was cut short: a server's answer to it (a 503, say)
		// says nothing about the message, and retrying cannot help.
		if resp != nil {
			resp.Body.Close()
		}
		err, resp = ErrFileSize, nil
	}
	if err != nil {
		c.debug(ctx, method, path, 0, start, "", err)
		return Response{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		apiErr := parseAPIError(resp, time.Now())
		c.debug(ctx, method, path, resp.StatusCode, start, apiErr.TrackingID, nil)
		return Response{}, apiErr
	}
	r := parseResponse(resp)
	c.debug(ctx, method, path, resp.StatusCode, start, r.TrackingID, nil)
	if headers != nil {
		headers(resp.Header)
	}
	if out == nil {
		return r, nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBody)).Decode(out); err != nil {
		if method == http.MethodPost {
			return r, &UnconfirmedError{StatusCode: resp.StatusCode, TrackingID: r.TrackingID, Err: err}
		}
		return r, fmt.Errorf("read %d answer: %w", resp.StatusCode, err)
	}
	return r, nil
}

// requestTimeout is the bound of one request: Timeout plus the time to send
// its body at the minimum upload rate (0: none).
func (c *Client) requestTimeout(body *requestBody) time.Duration {
	if c.timeout < 0 {
		return 0
	}
	if body == nil {
		return c.timeout
	}
	upload := float64(body.size) / float64(c.rate) * float64(time.Second)
	if upload >= float64(math.MaxInt64-c.timeout) {
		return 0
	}
	return c.timeout + time.Duration(upload)
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
