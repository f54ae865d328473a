// Package relay serves a Webex-compatible POST /v1/messages so that existing
// bots get durable delivery by changing their SDK's base URL and token: each
// valid request is enqueued with pkg/tasks and answered at once with a
// Webex-shaped message whose id names the courier task. GET
// /v1/messages/{id} answers the delivery state. Nothing else is proxied.
//
// Callers authenticate with relay tokens, each mapped to a bot; the bot's
// real Webex token stays in the worker's configuration and never enters
// Redis. Answers never wait on Webex, only on Redis.
package relay

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// Config configures the relay.
type Config struct {
	// Tokens maps each relay token to the bot it sends as ("" is the
	// default bot).
	Tokens map[string]string
	// Producer enqueues; Inspector reads delivery state.
	Producer  *tasks.Producer
	Inspector *asynq.Inspector
	// Queue is where messages go. Default tasks.DefaultQueue.
	Queue string
	// Unordered delivers without per-destination order. By default every
	// message is ordered by its destination (tasks.Ordered), as a bot that
	// called Webex synchronously saw its messages arrive.
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
		Help: "Relay requests by method and answered status.",
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
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	s.requests.WithLabelValues(r.Method, fmt.Sprint(rec.status)).Inc()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

type botKey struct{}

// auth maps the relay token to its bot; an unknown token gets Webex's 401.
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok {
			for known, bot := range s.cfg.Tokens {
				if subtle.ConstantTimeCompare([]byte(tok), []byte(known)) == 1 {
					h(w, r.WithContext(context.WithValue(r.Context(), botKey{}, bot)))
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

func botOf(r *http.Request) string { b, _ := r.Context().Value(botKey{}).(string); return b }

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	bot := botOf(r)
	if r.ContentLength > s.cfg.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("The request body is %d bytes; the limit is %d.", r.ContentLength, s.cfg.MaxBodyBytes))
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
	opts := []tasks.Option{tasks.Queue(s.cfg.Queue), tasks.Bot(bot), tasks.Source("relay"), tasks.EnqueuedAt(at)}
	if !s.cfg.Unordered {
		opts = append(opts, tasks.Ordered())
	}
	if queue, parent, ok := ParseRelayID(msg.ParentID); ok && queue == s.cfg.Queue {
		opts = append(opts, tasks.ReplyTo(parent)) // sent with the parent's Webex id once it is delivered
	}
	key := r.Header.Get("Idempotency-Key")
	if key != "" {
		key = "relay/" + cmp.Or(bot, "default") + "/" + key
		opts = append(opts, tasks.Key(key))
	}
	res, err := s.cfg.Producer.Enqueue(r.Context(), msg, opts...)
	var dup *tasks.DuplicateError
	var ve *webex.ValidationError
	switch {
	case errors.As(err, &dup):
		s.repeat(r.Context(), w, dup)
		return
	case errors.As(err, &ve):
		writeValidation(w, err)
		return
	case err != nil:
		s.cfg.Logger.Error("relay: enqueue failed", "bot", cmp.Or(bot, "default"), "error", err.Error())
		writeError(w, http.StatusServiceUnavailable, "The message could not be queued; try again.")
		return
	}
	s.cfg.Logger.Info("relay: queued", "task_id", res.TaskID, "queue", res.Queue, "bot", cmp.Or(bot, "default"), "keyed", key != "")
	writeJSON(w, http.StatusOK, answer(RelayID(res.Queue, res.TaskID), &tasks.Payload{Message: msg, EnqueuedAt: at}))
}

// repeat answers a repeated Idempotency-Key with the first request's answer.
func (s *Server) repeat(ctx context.Context, w http.ResponseWriter, dup *tasks.DuplicateError) {
	p, err := s.cfg.Producer.Waiting(ctx, dup.Queue, dup.Key)
	if errors.Is(err, tasks.ErrNotWaiting) {
		var info *asynq.TaskInfo
		if info, err = s.cfg.Inspector.GetTaskInfo(dup.Queue, dup.Key); err != nil {
			writeError(w, http.StatusConflict, "This Idempotency-Key was used, and its message is no longer retained.")
			return
		}
		p, err = tasks.DecodePayload(info.Payload)
	}
	if err != nil {
		writeError(w, http.StatusConflict, "This Idempotency-Key names an unreadable message.")
		return
	}
	writeJSON(w, http.StatusOK, answer(RelayID(dup.Queue, dup.Key), p))
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
	if p, err := s.cfg.Producer.Waiting(r.Context(), queue, taskID); err == nil && p.Bot == botOf(r) { // ordered, behind others
		writeJSON(w, http.StatusOK, Status{ID: id, TaskID: taskID, Queue: queue, State: "queued", Created: p.EnqueuedAt.UTC().Format("2006-01-02T15:04:05.000Z")})
		return
	}
	info, err := s.cfg.Inspector.GetTaskInfo(queue, taskID)
	if err != nil {
		writeError(w, http.StatusNotFound, "The requested resource could not be found (or is no longer retained).")
		return
	}
	p, err := tasks.DecodePayload(info.Payload)
	if err != nil || p.Bot != botOf(r) { // another bot's message is none of this token's business
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
	wm := m.Message
	for i := range m.Uploads {
		if wm.File == nil {
			wm.File = &m.Uploads[i]
		} else {
			wm.Files = append(wm.Files, m.Uploads[i].Name)
		}
	}
	if err := wm.Validate(); err != nil {
		return err
	}
	return m.Validate(maxInline)
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

// writeError answers in Webex's error shape, with a tracking id.
func writeError(w http.ResponseWriter, status int, msg string, details ...string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	tid := "COURIER_RELAY_" + hex.EncodeToString(b)
	if len(details) == 0 {
		details = []string{msg}
	}
	errs := make([]map[string]string, len(details))
	for i, d := range details {
		errs[i] = map[string]string{"description": d}
	}
	w.Header().Set("TrackingID", tid)
	writeJSON(w, status, map[string]any{"message": msg, "errors": errs, "trackingId": tid})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
