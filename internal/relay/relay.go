// Package relay serves a Webex-compatible POST /v1/messages so that existing
// bots get durable delivery by changing their SDK's base URL and token: each
// valid request is enqueued with pkg/tasks and answered at once with a
// Webex-shaped message whose id names the courier task. GET
// /v1/messages/{id} answers the delivery state. Nothing else is proxied.
//
// Callers authenticate with relay tokens, each mapped to a bot; the bot's
// real Webex token stays in the worker's configuration and never enters
// Redis. Each token sees only its own messages: idempotency keys and GET are
// scoped to the token (by TokenID, never the token itself) and to the
// relay's queue. Answers never wait on Webex, only on Redis.
package relay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Config configures the relay.
type Config struct {
	// Tokens maps each relay token to the bot it sends as ("" is the
	// default bot). Several tokens may share a bot; they do not see each
	// other's messages.
	Tokens map[string]string
	// Producer enqueues; Inspector reads delivery state.
	Producer  *tasks.Producer
	Inspector *asynq.Inspector
	// Queue is where messages go. Default tasks.DefaultQueue.
	Queue string
	// Unordered delivers without per-destination order. By default every
	// message is ordered by its relay token and destination (ordering key
	// "<TokenID>/<destination>"), as a caller that called Webex
	// synchronously saw its messages arrive; different tokens' messages to
	// one room are not ordered with each other.
	Unordered bool
	// MaxBodyBytes refuses larger bodies with 413 before reading them.
	// Default: the inline file cap plus 256 KiB.
	MaxBodyBytes int64
	// MaxInlineBytes is the producer's inline file cap (for the default
	// above). Default tasks.DefaultMaxInlineBytes.
	MaxInlineBytes int
	Logger         *slog.Logger
	// Registerer, when set, receives courier_relay_requests_total.
	Registerer prometheus.Registerer
	// Now reads the clock. Default time.Now.
	Now func() time.Time
}

// Server is the relay's HTTP handler.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	requests *prometheus.CounterVec
}

// New builds the relay.
func New(cfg Config) *Server {
	cfg.Queue = cmp.Or(cfg.Queue, tasks.DefaultQueue)
	cfg.MaxInlineBytes = cmp.Or(cfg.MaxInlineBytes, tasks.DefaultMaxInlineBytes)
	cfg.MaxBodyBytes = cmp.Or(cfg.MaxBodyBytes, int64(cfg.MaxInlineBytes)+256<<10)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "courier_relay_requests_total",
		Help: "Relay requests by method (GET, POST, other) and answered status.",
	}, []string{"method", "status"})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests)
	}
	for _, prefix := range []string{"/v1", ""} {
		s.mux.HandleFunc("POST "+prefix+"/messages", s.auth(s.create))
		s.mux.HandleFunc("GET "+prefix+"/messages/{id}", s.auth(s.status))
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "courier's relay serves only POST /v1/messages and GET /v1/messages/{id}.")
	})
	return s
}

// ServeHTTP counts and serves a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("TrackingID", trackingID(r))
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	s.requests.WithLabelValues(methodLabel(r.Method), strconv.Itoa(rec.status)).Inc()
}

// trackingID is the request's own trackingid header (Webex's SDKs send one),
// so that the bot's logs and the relay's match; else a new one. A header
// that is too long or not printable ASCII is replaced.
func trackingID(r *http.Request) string {
	tid := r.Header.Get("Trackingid")
	if tid != "" && len(tid) <= 256 && strings.IndexFunc(tid, func(c rune) bool { return c <= ' ' || c > '~' }) < 0 {
		return tid
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "COURIER_RELAY_" + hex.EncodeToString(b)
}

// methodLabel maps any request method onto a closed set, so that a caller
// cannot grow the metric's series (the 404 is counted before any auth).
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost:
		return m
	}
	return "other"
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

type callerKey struct{}

// caller is the relay token a request came with: the bot it sends as and
// the token's id, which scopes idempotency keys and what the caller may read.
type caller struct {
	bot string
	id  string
}

// source is the payload's Source of the caller's messages: the relay and the
// token's id (never the token itself: payloads show in asynqmon).
func (c caller) source() string { return "relay/" + c.id }

// TokenID names a relay token without revealing it: the first 12 hex
// digits of its SHA-256. Task ids and payloads carry this, never the token.
func TokenID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:6])
}

// bearer reads the token of an "Authorization: Bearer <token>" header; the
// scheme is case-insensitive (RFC 9110).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "Bearer") && tok != ""
}

// auth maps the relay token to its caller; an unknown token gets Webex's 401.
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := bearer(r.Header.Get("Authorization")); ok {
			for known, bot := range s.cfg.Tokens {
				if subtle.ConstantTimeCompare([]byte(tok), []byte(known)) == 1 {
					c := caller{bot: bot, id: TokenID(known)}
					h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
					return
				}
			}
		}
		writeError(w, http.StatusUnauthorized, "The request requires a valid access token set in the Authorization request header.")
	}
}

// answer is the Webex-shaped message a create is answered with: the
// message as queued, its id naming the courier task.
func answer(id string, p *tasks.Payload) webex.Sent {
	m := p.Message
	files := m.Files
	for _, f := range m.Uploads {
		files = append(files, f.Name)
	}
	return webex.Sent{ID: id, RoomID: m.RoomID, ToPersonID: m.ToPersonID, ToPersonEmail: m.ToPersonEmail, ParentID: m.ParentID,
		Text: m.Text, Markdown: m.Markdown, Files: files, Attachments: m.Attachments, Created: p.EnqueuedAt.UTC().Truncate(time.Millisecond)}
}

// RelayID names a courier task as a Webex-looking message id.
func RelayID(queue, taskID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("courier/" + queue + "/" + taskID))
}

// ParseRelayID reverses RelayID.
func ParseRelayID(id string) (queue, taskID string, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(string(b), "courier/")
	if !ok {
		return "", "", false
	}
	queue, taskID, ok = strings.Cut(rest, "/")
	return queue, taskID, ok && queue != "" && taskID != ""
}

func callerOf(r *http.Request) caller { c, _ := r.Context().Value(callerKey{}).(caller); return c }

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	c := callerOf(r)
	bot := c.bot
	if r.ContentLength > s.cfg.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("The request body is %d bytes; the limit is %d.", r.ContentLength, s.cfg.MaxBodyBytes))
		return
	}
	if _, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && !webex.IsUTF8Charset(params["charset"]) {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("The request body's charset is %q: send UTF-8.", clip(params["charset"])))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	msg, err := decode(r, s.cfg.MaxBodyBytes)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("The request body is over the limit of %d bytes.", s.cfg.MaxBodyBytes))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "Unable to parse the request body: "+err.Error())
		return
	}
	if err := validate(msg, s.cfg.MaxInlineBytes); err != nil {
		writeValidation(w, err)
		return
	}
	at := s.cfg.Now().UTC().Truncate(time.Millisecond)
	opts := []tasks.Option{tasks.Queue(s.cfg.Queue), tasks.Bot(bot), tasks.Source(c.source()), tasks.EnqueuedAt(at)}
	if !s.cfg.Unordered { // a sequence per token and destination: one caller's held messages never hold another's
		opts = append(opts, tasks.OrderingKey(c.id+"/"+tasks.Destination(&msg)))
	}
	if parent, ok := s.parentTask(r.Context(), c, msg.ParentID); ok {
		opts = append(opts, tasks.ReplyTo(parent)) // sent with the parent's Webex id once it is delivered
	} else if parent != "" {
		writeValidation(w, &webex.ValidationError{Field: "parentId", Problem: "names a message this relay does not hold for this token " +
			"(another token's, or no longer retained): reply with the Webex id from GET /v1/messages/{id} (messageIds)"})
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if err := checkIdempotencyKey(key); err != nil {
		writeValidation(w, err)
		return
	}
	if key != "" { // scoped to the token: another token's key is another message
		key = c.source() + "/" + key
		opts = append(opts, tasks.Key(key))
	}
	res, err := s.cfg.Producer.Enqueue(r.Context(), msg, opts...)
	var dup *tasks.DuplicateError
	var ve *webex.ValidationError
	switch {
	case errors.As(err, &dup):
		s.repeat(r.Context(), w, c, dup, msg)
		return
	case errors.As(err, &ve):
		writeValidation(w, err)
		return
	case err != nil:
		s.cfg.Logger.Error("relay: enqueue failed", "bot", cmp.Or(bot, "default"), "tracking_id", w.Header().Get("TrackingID"), "error", err.Error())
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSeconds))
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("The message could not be queued: retry the request after %d seconds.", RetryAfterSeconds))
		return
	}
	s.cfg.Logger.Info("relay: queued", "task_id", res.TaskID, "queue", res.Queue, "bot", cmp.Or(bot, "default"), "keyed", key != "",
		"tracking_id", w.Header().Get("TrackingID"))
	writeJSON(w, http.StatusOK, answer(RelayID(res.Queue, res.TaskID), &tasks.Payload{Message: msg, EnqueuedAt: at}))
}

// repeat answers a repeated Idempotency-Key with the first request's
// answer; the key with another message is refused with 422.
func (s *Server) repeat(ctx context.Context, w http.ResponseWriter, c caller, dup *tasks.DuplicateError, msg tasks.Message) {
	p, err := s.payload(ctx, dup.Queue, dup.Key)
	if errors.Is(err, errGone) {
		writeError(w, http.StatusConflict, "This Idempotency-Key was used, and its message is no longer retained.")
		return
	}
	if err != nil || p.Source != c.source() {
		writeError(w, http.StatusConflict, "This Idempotency-Key names a message this token cannot read.")
		return
	}
	if !sameMessage(p.Message, msg) {
		writeError(w, http.StatusUnprocessableEntity, "This Idempotency-Key was used for a different message: use a new key for a new message.")
		return
	}
	writeJSON(w, http.StatusOK, answer(RelayID(dup.Queue, dup.Key), p))
}

// sameMessage compares two messages as they are stored: each goes through
// the payload's JSON and back, so that what storing changes does not count.
func sameMessage(a, b tasks.Message) bool {
	na, erra := normalized(a)
	nb, errb := normalized(b)
	return erra == nil && errb == nil && bytes.Equal(na, nb)
}

func normalized(m tasks.Message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var back tasks.Message
	if err := json.Unmarshal(b, &back); err != nil {
		return nil, err
	}
	return json.Marshal(back)
}

// Status is the answer of GET /v1/messages/{id}.
type Status struct {
	ID     string `json:"id"`
	TaskID string `json:"taskId"`
	Queue  string `json:"queue"`
	// State is queued, scheduled, sending, retrying, delivered or
	// dead_lettered.
	State string `json:"state"`
	// Redeliveries counts failed deliveries so far.
	Redeliveries int `json:"redeliveries"`
	// LastError is the last failure (retrying) or the reason (dead_lettered).
	LastError string `json:"lastError,omitempty"`
	// MessageIDs are Webex's ids of the delivered message(s).
	MessageIDs []string `json:"messageIds,omitempty"`
	Created    string   `json:"created,omitempty"`
}

var states = map[asynq.TaskState]string{
	asynq.TaskStatePending: "queued", asynq.TaskStateAggregating: "queued", asynq.TaskStateScheduled: "scheduled",
	asynq.TaskStateActive: "sending", asynq.TaskStateRetry: "retrying", asynq.TaskStateCompleted: "delivered",
	asynq.TaskStateArchived: "dead_lettered",
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	queue, taskID, ok := ParseRelayID(id)
	if !ok {
		writeError(w, http.StatusNotFound, "The requested resource could not be found.")
		return
	}
	if queue != s.cfg.Queue {
		writeError(w, http.StatusNotFound, "The requested resource could not be found.")
		return
	}
	if p, err := s.cfg.Producer.Waiting(r.Context(), queue, taskID); err == nil && p.Source == callerOf(r).source() { // ordered, behind others
		writeJSON(w, http.StatusOK, Status{ID: id, TaskID: taskID, Queue: queue, State: "queued", Created: p.EnqueuedAt.UTC().Format("2006-01-02T15:04:05.000Z")})
		return
	}
	info, err := s.cfg.Inspector.GetTaskInfo(queue, taskID)
	if err != nil {
		writeError(w, http.StatusNotFound, "The requested resource could not be found (or is no longer retained).")
		return
	}
	p, err := tasks.DecodePayload(info.Payload)
	// Only the relay's queue, and only this token's messages: another
	// token's (even of the same bot) or another producer's are none of its
	// business.
	if err != nil || p.Source != callerOf(r).source() {
		writeError(w, http.StatusNotFound, "The requested resource could not be found.")
		return
	}
	st := Status{ID: id, TaskID: taskID, Queue: queue, State: states[info.State], Redeliveries: info.Retried,
		Created: p.EnqueuedAt.UTC().Format("2006-01-02T15:04:05.000Z")}
	if info.State != asynq.TaskStateCompleted {
		st.LastError = info.LastErr
	}
	var res tasks.TaskResult
	if info.State == asynq.TaskStateCompleted && json.Unmarshal(info.Result, &res) == nil {
		st.MessageIDs = res.MessageIDs
	}
	writeJSON(w, http.StatusOK, st)
}

// validate applies Webex's rules to the message exactly as sent (one file per
// message, where courier's own producers may send several), then courier's
// inline cap.
func validate(m tasks.Message, maxInline int) error {
	var errs []error
	// Webex takes one file per message, whether a URL or an upload: the
	// count is checked here, each URL below (quoted for the caller), and the
	// rest by Validate on the message with its first file only.
	if n := len(m.Files) + len(m.Uploads); n > 1 {
		errs = append(errs, &webex.ValidationError{Field: "files", Problem: fmt.Sprintf("has %d files, the limit is 1 per message", n)})
	}
	wm := m.Message
	wm.Files, wm.File = nil, nil
	switch {
	case len(m.Uploads) > 0:
		wm.File = &m.Uploads[0]
	case len(m.Files) > 0:
		wm.Files = []string{"https://file.invalid/"} // stands for m.Files, checked below
	}
	for _, f := range m.Files { // Webex fetches file URLs itself: a path or another scheme gets its 400
		if !webex.IsHTTPURL(f) {
			errs = append(errs, &webex.ValidationError{Field: "files", Problem: fmt.Sprintf("%q is not an http(s) URL: send a local file as a multipart part", clip(f))})
		}
	}
	if err := wm.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return m.Validate(maxInline)
}

// MaxIdempotencyKeyBytes is the longest Idempotency-Key header the relay
// takes: the producer's key limit less the token's scope the relay adds.
const MaxIdempotencyKeyBytes = tasks.MaxKeyBytes - len("relay/123456789abc/")

// checkIdempotencyKey refuses an Idempotency-Key header the task key could
// not hold, naming the header and its own limit.
func checkIdempotencyKey(key string) error {
	if len(key) > MaxIdempotencyKeyBytes {
		return &webex.ValidationError{Field: "Idempotency-Key", Problem: fmt.Sprintf("header is %d bytes, the limit is %d", len(key), MaxIdempotencyKeyBytes)}
	}
	if i := strings.IndexFunc(key, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(key[i:])
		return &webex.ValidationError{Field: "Idempotency-Key", Problem: fmt.Sprintf("header contains %q: use printable characters without spaces", r)}
	}
	return nil
}

// RetryAfterSeconds is the Retry-After of a 503 (Redis unreachable).
const RetryAfterSeconds = 5

// clip shortens a caller's value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// decode reads Webex's JSON or multipart form of a message.
func decode(r *http.Request, limit int64) (tasks.Message, error) {
	m, files, err := webex.DecodeRequest(r, limit)
	return tasks.Message{Message: m, Uploads: files}, err
}

func writeValidation(w http.ResponseWriter, err error) {
	lines := strings.Split(err.Error(), "\n")
	writeError(w, http.StatusBadRequest, lines[0], lines...)
}

// writeError answers in Webex's error shape, with the request's tracking id.
func writeError(w http.ResponseWriter, status int, msg string, details ...string) {
	tid := w.Header().Get("TrackingID")
	if len(details) == 0 {
		details = []string{msg}
	}
	errs := make([]map[string]string, len(details))
	for i, d := range details {
		errs[i] = map[string]string{"description": d}
	}
	writeJSON(w, status, map[string]any{"message": msg, "errors": errs, "trackingId": tid})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// errGone matches a relayed message no longer held (delivered and past its
// retention, or deleted).
var errGone = errors.New("message no longer held")

// payload reads a relayed message's payload, whether it waits behind another
// ordered message or is an asynq task; errGone when neither.
func (s *Server) payload(ctx context.Context, queue, taskID string) (*tasks.Payload, error) {
	p, err := s.cfg.Producer.Waiting(ctx, queue, taskID)
	if !errors.Is(err, tasks.ErrNotWaiting) {
		return p, err
	}
	info, err := s.cfg.Inspector.GetTaskInfo(queue, taskID)
	if err != nil {
		return nil, errGone
	}
	return tasks.DecodePayload(info.Payload)
}

// parentTask reads a parentId that is a relay id: the task id of a message
// this caller relayed to this queue (ok), or the id it names that the
// caller may not reply to (not ok). An ordinary Webex id gives "", false.
func (s *Server) parentTask(ctx context.Context, c caller, parentID string) (string, bool) {
	queue, taskID, isRelay := ParseRelayID(parentID)
	if !isRelay {
		return "", false
	}
	if queue != s.cfg.Queue {
		return taskID, false
	}
	p, err := s.payload(ctx, queue, taskID)
	return taskID, err == nil && p.Source == c.source()
}
