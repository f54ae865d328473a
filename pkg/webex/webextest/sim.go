// Package webextest is a Webex Messages API simulator for tests, the dev
// mode and load tests: in-process with NewServer, or served by cmd/webexsim.
//
// It behaves like Webex for what courier uses: bearer-token auth (401 in
// Webex's error shape), POST /messages (JSON and multipart) with Webex's
// validation and error bodies carrying trackingId and a TrackingID header,
// GET /messages?roomId=, GET /messages/{id}, GET /people/me. Paths are served
// at the root and under /v1. Rooms are open (any id) unless declared.
//
// Faults are injected per room or globally (AddFault): a status for the next
// N requests or with a probability, a Retry-After, a dropped connection
// before or after the message is accepted, a slow answer; SetRateLimit adds a
// token bucket answering 429. A request log with timestamps and per-room
// counts let tests check exactly-once delivery and back-off timing. The same
// controls are served over HTTP under /_sim/ (see ControlHandler).
package webextest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/courier-dev/courier/pkg/webex"
)

// DefaultToken is accepted, as bot "bot", when Options.Tokens is empty.
const DefaultToken = "test-token"

// maxBody bounds a request body the simulator reads.
const maxBody = 16 << 20

// Options configures a simulator.
type Options struct {
	// Tokens maps each accepted token to its bot's name. Default:
	// DefaultToken as "bot".
	Tokens map[string]string
	// Rooms, when not empty, is the set of rooms that exist; a message to
	// another room gets 404. Empty: every room exists.
	Rooms []string
	// Logger receives a warning per message whose markdown Webex would
	// show literally (see FindLiterals). Default: slog.Default().
	Logger *slog.Logger
}

// Stored is a message the simulator accepted.
type Stored struct {
	webex.Sent
	// Bot is the name of the token that posted it.
	Bot         string             `json:"bot"`
	Attachments []webex.Attachment `json:"attachments,omitempty"`
	// FileName, FileType and FileData describe an uploaded (multipart) file.
	FileName string `json:"fileName,omitempty"`
	FileType string `json:"fileType,omitempty"`
	FileData []byte `json:"-"`
	// Literals is the markdown Webex would show as typed (tables, raw
	// HTML, images); empty when Webex renders all of it.
	Literals []Literal `json:"literals,omitempty"`
}

// Outcomes of a request, in the log.
const (
	Accepted      = "accepted"
	Rejected      = "rejected"       // answered with an error status
	DroppedBefore = "dropped_before" // connection closed before accepting
	DroppedAfter  = "dropped_after"  // accepted, then connection closed
)

// Request is one entry of the request log.
type Request struct {
	Start     time.Time `json:"start"` // when the request arrived
	Time      time.Time `json:"time"`  // when it was answered
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Room      string    `json:"room,omitempty"`
	Bot       string    `json:"bot,omitempty"`
	Status    int       `json:"status"`
	Outcome   string    `json:"outcome"`
	MessageID string    `json:"messageId,omitempty"`
}

// Fault is an injected failure of POST /messages.
type Fault struct {
	// Room limits the fault to one destination; empty means every one.
	Room string `json:"room,omitempty"`
	// Status answers with this status and Webex's error body (0: none).
	Status int `json:"status,omitempty"`
	// RetryAfter is sent as the Retry-After header, in whole seconds.
	RetryAfter Duration `json:"retryAfter,omitempty"`
	// Drop closes the connection: "before" accepting the message, or
	// "after" accepting it (the lost-response case that can duplicate).
	Drop string `json:"drop,omitempty"`
	// Delay holds the answer this long first.
	Delay Duration `json:"delay,omitempty"`
	// Count applies the fault to the next Count matching requests; 0 means
	// until cleared.
	Count int `json:"count,omitempty"`
	// Probability applies the fault to this share of matching requests
	// (0 means all).
	Probability float64 `json:"probability,omitempty"`
}

// Duration is a time.Duration that reads and writes JSON as "1.5s" (and
// reads a number as seconds).
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "1.5s" or 1.5.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := time.ParseDuration(s)
		*d = Duration(v)
		return err
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("duration: want \"1.5s\" or seconds, got %s", b)
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}

// Sim is the simulator; it is an http.Handler.
type Sim struct {
	mux *http.ServeMux

	mu        sync.Mutex
	tokens    map[string]string
	rooms     map[string]bool
	messages  []*Stored
	byID      map[string]*Stored
	log       []Request
	faults    []*Fault
	limiter   *rate.Limiter
	limitWait time.Duration
	seq       int
	requests  int // POST /messages answered or dropped
	accepted  int
	latency   time.Duration
	logger    *slog.Logger
}

// New returns a simulator.
func New(opts Options) *Sim {
	s := &Sim{tokens: opts.Tokens, byID: map[string]*Stored{}, logger: cmp.Or(opts.Logger, slog.Default())}
	if len(s.tokens) == 0 {
		s.tokens = map[string]string{DefaultToken: "bot"}
	}
	if len(opts.Rooms) > 0 {
		s.rooms = map[string]bool{}
		for _, r := range opts.Rooms {
			s.rooms[r] = true
		}
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /messages", s.auth(s.createMessage))
	s.mux.HandleFunc("GET /messages", s.auth(s.listMessages))
	s.mux.HandleFunc("GET /messages/{id}", s.auth(s.getMessage))
	s.mux.HandleFunc("GET /people/me", s.auth(s.me))
	s.mux.Handle("/_sim/", s.ControlHandler())
	return s
}

// ServeHTTP serves the API at the root and under /v1.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p, ok := strings.CutPrefix(r.URL.Path, "/v1/"); ok {
		r.URL.Path = "/" + p
	}
	s.mux.ServeHTTP(w, r)
}

// Server is a simulator behind an httptest server.
type Server struct {
	*Sim
	// URL is the base URL to give webex.Config.BaseURL.
	URL string
	srv *httptest.Server
}

// NewServer starts a simulator on a loopback port, closed at cleanup.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	sim := New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &Server{Sim: sim, URL: srv.URL, srv: srv}
}

// Client returns a webex client of the server for token.
func (s *Server) Client(t testing.TB, token string) *webex.Client {
	t.Helper()
	c, err := webex.New(webex.Config{BaseURL: s.URL, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Close stops the server: later requests are refused.
func (s *Server) Close() { s.srv.Close() }

// AddFault injects a fault; the first matching fault applies to a request.
func (s *Sim) AddFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault and the rate limit.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults, s.limiter = nil, nil
}

// SetRateLimit answers POST /messages over rps per second (with burst) with
// 429 and a Retry-After of retryAfter. rps 0 turns it off.
func (s *Sim) SetRateLimit(rps float64, burst int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limiter, s.limitWait = nil, retryAfter
	if rps > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(rps), max(burst, 1))
	}
}

// SetLatency holds every POST /messages answer d before anything else
// (a slower Webex, for load and chaos runs); 0 turns it off.
func (s *Sim) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetTokens replaces the accepted tokens (token → bot name), e.g. to revoke
// one or fix it.
func (s *Sim) SetTokens(tokens map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = tokens
}

// Reset forgets messages, the request log, faults and the rate limit.
func (s *Sim) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages, s.byID, s.log, s.faults, s.limiter = nil, map[string]*Stored{}, nil, nil, nil
	s.requests, s.accepted = 0, 0
}

// Messages returns the accepted messages to a destination (room, person id
// or email) in order; "" returns all.
func (s *Sim) Messages(dest string) []Stored {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Stored
	for _, m := range s.messages {
		if dest == "" || m.RoomID == dest || m.ToPersonID == dest || m.ToPersonEmail == dest {
			out = append(out, *m)
		}
	}
	return out
}

// Requests returns the request log for a destination; "" returns all.
func (s *Sim) Requests(dest string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.log {
		if dest == "" || r.Room == dest {
			out = append(out, r)
		}
	}
	return out
}

// Counts returns how many POST /messages requests a destination received
// and how many messages it accepted; "" counts all.
func (s *Sim) Counts(dest string) (requests, accepted int) {
	for _, r := range s.Requests(dest) {
		if r.Method == http.MethodPost {
			requests++
			if r.Outcome == Accepted || r.Outcome == DroppedAfter {
				accepted++
			}
		}
	}
	return requests, accepted
}

func (s *Sim) record(r Request) {
	r.Time = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, r)
	if r.Method == http.MethodPost {
		s.requests++
		if r.Outcome == Accepted || r.Outcome == DroppedAfter {
			s.accepted++
		}
	}
}

// Totals returns the POST /messages requests and accepted messages so far,
// in constant time (for load tools that poll).
func (s *Sim) Totals() (requests, accepted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.accepted
}

func (s *Sim) nextID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s%d", prefix, s.seq)
}

type ctxKey struct{}

func (s *Sim) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		s.mu.Lock()
		bot, known := s.tokens[token]
		s.mu.Unlock()
		if !ok || !known {
			start := time.Now()
			s.writeError(w, http.StatusUnauthorized, 0, "The request requires a valid access token set in the Authorization request header.")
			s.record(Request{Start: start, Method: r.Method, Path: r.URL.Path, Status: http.StatusUnauthorized, Outcome: Rejected})
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, bot)))
	}
}

func botOf(r *http.Request) string { s, _ := r.Context().Value(ctxKey{}).(string); return s }

func (s *Sim) writeError(w http.ResponseWriter, status int, retryAfter time.Duration, msg string, details ...string) {
	tid := s.nextID("SIM_")
	if len(details) == 0 {
		details = []string{msg}
	}
	body := map[string]any{"message": msg, "trackingId": tid}
	var errs []map[string]string
	for _, d := range details {
		errs = append(errs, map[string]string{"description": d})
	}
	body["errors"] = errs
	w.Header().Set("TrackingID", tid)
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decodeMessage reads a JSON or multipart POST /messages body; a second
// file part is counted (as a name) so that validation refuses it.
func decodeMessage(r *http.Request) (webex.Message, error) {
	r.Body = http.MaxBytesReader(nil, r.Body, maxBody)
	m, files, err := webex.DecodeRequest(r, maxBody)
	for i := range files {
		if i == 0 {
			m.File = &files[0]
		} else {
			m.Files = append(m.Files, files[i].Name)
		}
	}
	return m, err
}

func (s *Sim) createMessage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	entry := Request{Start: start, Method: r.Method, Path: "/messages", Bot: botOf(r)}
	m, err := decodeMessage(r)
	entry.Room = m.Destination()
	reject := func(status int, retryAfter time.Duration, msg string, details ...string) {
		s.writeError(w, status, retryAfter, msg, details...)
		entry.Status, entry.Outcome = status, Rejected
		s.record(entry)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			reject(http.StatusRequestEntityTooLarge, 0, "The request body is too large.")
			return
		}
		reject(http.StatusBadRequest, 0, "Unable to parse the request body: "+err.Error())
		return
	}
	if verr := m.Validate(); verr != nil {
		details := strings.Split(verr.Error(), "\n")
		reject(http.StatusBadRequest, 0, details[0], details...)
		return
	}
	if s.rooms != nil && m.RoomID != "" && !s.rooms[m.RoomID] {
		reject(http.StatusNotFound, 0, "Could not find a room with provided ID.")
		return
	}
	s.mu.Lock()
	limiter, limitWait, latency := s.limiter, s.limitWait, s.latency
	s.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			entry.Outcome = DroppedBefore
			s.record(entry)
			return
		}
	}
	if limiter != nil && !limiter.Allow() {
		reject(http.StatusTooManyRequests, limitWait, "Too Many Requests")
		return
	}
	f := s.takeFault(entry.Room)
	if f != nil && f.Delay > 0 {
		t := time.NewTimer(time.Duration(f.Delay))
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			entry.Outcome = DroppedBefore
			s.record(entry)
			return
		}
	}
	if f != nil && f.Drop == "before" {
		entry.Outcome = DroppedBefore
		s.record(entry)
		hangUp(w)
		return
	}
	if f != nil && f.Status != 0 {
		reject(f.Status, time.Duration(f.RetryAfter), fmt.Sprintf("Simulated %d %s", f.Status, http.StatusText(f.Status)))
		return
	}
	stored := s.store(m, entry.Bot)
	entry.MessageID = stored.ID
	if f != nil && f.Drop == "after" {
		entry.Outcome = DroppedAfter
		s.record(entry)
		hangUp(w)
		return
	}
	w.Header().Set("TrackingID", s.nextID("SIM_"))
	entry.Status, entry.Outcome = http.StatusOK, Accepted
	s.record(entry)
	writeJSON(w, http.StatusOK, stored)
}

// takeFault returns the first fault that applies to a request to room.
func (s *Sim) takeFault(room string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.Room != "" && f.Room != room {
			continue
		}
		if f.Probability > 0 && rand.Float64() >= f.Probability {
			continue
		}
		applied := *f
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return &applied
	}
	return nil
}

func (s *Sim) store(m webex.Message, bot string) *Stored {
	id := s.nextID("sim-msg-")
	st := &Stored{
		Sent: webex.Sent{
			ID: id, RoomID: m.RoomID, ToPersonID: m.ToPersonID, ToPersonEmail: m.ToPersonEmail,
			ParentID: m.ParentID, Text: m.Text, Markdown: m.Markdown, Files: m.Files,
			PersonEmail: bot + "@webex.bot", Created: time.Now().UTC(),
		},
		Bot: bot, Attachments: m.Attachments,
	}
	if st.RoomID == "" {
		st.RoomType = "direct"
	} else {
		st.RoomType = "group"
	}
	if m.File != nil {
		st.FileName, st.FileType, st.FileData = m.File.Name, m.File.ContentType, m.File.Data
		st.Files = append(st.Files, "sim://files/"+id+"/"+m.File.Name)
	}
	st.Literals = s.findLiterals(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, st)
	s.byID[id] = st
	return st
}

// hangUp closes the connection without an answer.
func hangUp(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler) // HTTP/2 or a recorder: abort the stream
}

func (s *Sim) listMessages(w http.ResponseWriter, r *http.Request) {
	room := r.URL.Query().Get("roomId")
	if room == "" {
		s.writeError(w, http.StatusBadRequest, 0, "roomId is required.")
		return
	}
	items := s.Messages(room)
	if items == nil {
		items = []Stored{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
}

func (s *Sim) getMessage(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m, ok := s.byID[r.PathValue("id")]
	s.mu.Unlock()
	if !ok {
		s.writeError(w, http.StatusNotFound, 0, "The requested resource could not be found.")
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Sim) me(w http.ResponseWriter, r *http.Request) {
	bot := botOf(r)
	writeJSON(w, http.StatusOK, webex.Person{ID: "sim-person-" + bot, DisplayName: bot, Emails: []string{bot + "@webex.bot"}})
}
