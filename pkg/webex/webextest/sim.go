// Package webextest is a Webex Messages API simulator for tests, the dev
// mode and load tests: in-process with NewServer, or served by cmd/webexsim.
//
// It behaves like Webex for what courier uses: bearer-token auth (401 in
// Webex's error shape), POST /messages (JSON and multipart) with Webex's
// validation and error bodies carrying trackingId and a TrackingID header,
// GET /messages?roomId=, GET /messages/{id}, GET /people/me. Paths are served
// at the root and under /v1. Rooms are open (any id) unless declared.
//
// It checks Webex's rules with its own code, not pkg/webex's, so a bug in the
// client's validation shows up as a 400 here: text and markdown at most 7439
// bytes each, one destination, one file (URL or upload, an upload at most
// 100 MiB, a larger one gets 413), http(s) file URLs, one card with a
// fallback, a parentId shaped like an id. DELETE /messages/{id} deletes;
// GET /messages lists newest first, max per page, with a Link header to the
// next page.
//
// Faults are injected per room or globally (AddFault): a status for the next
// N requests or with a probability, a Retry-After, a dropped connection
// before or after the message is accepted or in the middle of the answer, a
// slow answer; SetRateLimit adds a token bucket answering 429. A request log
// with timestamps and per-room counts let tests check exactly-once delivery
// and back-off timing. The same controls are served over HTTP under /_sim/
// (see ControlHandler).
//
// Memory is bounded: the newest Options.MaxMessages messages,
// Options.MaxRequests log entries and Options.MaxUploadBytes of uploaded
// bytes are kept (older file bytes are dropped first; their size stays).
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
	"net/url"
	"slices"
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

// Defaults of the memory bounds.
const (
	DefaultMaxMessages    = 100_000
	DefaultMaxRequests    = 200_000
	DefaultMaxUploadBytes = 256 << 20
)

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
	// MaxMessages is how many accepted messages are kept (the newest).
	// Default DefaultMaxMessages (100,000).
	MaxMessages int
	// MaxRequests is how many request log entries are kept (the newest);
	// Counts and Totals count every request regardless. Default
	// DefaultMaxRequests (200,000).
	MaxRequests int
	// MaxUploadBytes is how many bytes of uploaded files are kept, over all
	// messages; the oldest files' bytes are dropped first (FileSize stays).
	// Default DefaultMaxUploadBytes (256 MiB).
	MaxUploadBytes int64
}

// Stored is a message the simulator accepted.
type Stored struct {
	webex.Sent
	// Bot is the name of the token that posted it.
	Bot         string             `json:"bot"`
	Attachments []webex.Attachment `json:"attachments,omitempty"`
	// FileName, FileType, FileSize and FileData describe an uploaded
	// (multipart) file. FileData is nil once the memory bound dropped it.
	FileName string `json:"fileName,omitempty"`
	FileType string `json:"fileType,omitempty"`
	FileSize int64  `json:"fileSize,omitempty"`
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
	CutOff        = "cut_off"        // accepted, answer cut off after its headers
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
	// Drop closes the connection: "before" accepting the message, "after"
	// accepting it (the lost-response case that can duplicate), or
	// "partial": accepted, a 200 with its headers (TrackingID included) and
	// the start of the body, then closed (an accepted message whose answer
	// cannot be read).
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
	max Options // the memory bounds, defaults filled

	mu          sync.Mutex
	tokens      map[string]string
	rooms       map[string]bool
	messages    []*Stored // oldest first, at most max.MaxMessages
	byID        map[string]*Stored
	withData    []*Stored // messages holding file bytes, oldest first
	uploadBytes int64     // bytes held in withData
	log         []Request // oldest first, at most max.MaxRequests
	counts      map[string]*Stats
	total       Stats
	faults      []*Fault
	limiter     *rate.Limiter
	limitWait   time.Duration
	seq         int
	latency     time.Duration
	logger      *slog.Logger
}

// New returns a simulator.
func New(opts Options) *Sim {
	s := &Sim{tokens: opts.Tokens, byID: map[string]*Stored{}, counts: map[string]*Stats{}, logger: cmp.Or(opts.Logger, slog.Default())}
	s.max = Options{
		MaxMessages:    cmp.Or(max(opts.MaxMessages, 0), DefaultMaxMessages),
		MaxRequests:    cmp.Or(max(opts.MaxRequests, 0), DefaultMaxRequests),
		MaxUploadBytes: cmp.Or(max(opts.MaxUploadBytes, 0), DefaultMaxUploadBytes),
	}
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
	s.mux.HandleFunc("DELETE /messages/{id}", s.auth(s.deleteMessage))
	s.mux.HandleFunc("GET /people/me", s.auth(s.me))
	s.mux.Handle("/_sim/", s.ControlHandler())
	return s
}

// ServeHTTP serves the API at the root and under /v1.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Header.Del(prefixHeader)
	if p, ok := strings.CutPrefix(r.URL.Path, "/v1/"); ok {
		r.URL.Path = "/" + p
		r.Header.Set(prefixHeader, "/v1")
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

// Reset forgets messages, the request log and counts, and clears every
// fault control: faults, the rate limit and the latency. Tokens and rooms
// stay.
func (s *Sim) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages, s.byID, s.withData, s.uploadBytes = nil, map[string]*Stored{}, nil, 0
	s.log, s.counts, s.total = nil, map[string]*Stats{}, Stats{}
	s.faults, s.limiter, s.limitWait, s.latency = nil, nil, 0, 0
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
// and how many messages it accepted; "" counts all. It counts every request
// since the last Reset, including those the log no longer holds.
func (s *Sim) Counts(dest string) (requests, accepted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.total
	if dest != "" {
		if st = s.counts[dest]; st == nil {
			return 0, 0
		}
	}
	return st.Requests, st.Accepted
}

// Stats returns the counts per destination (as Counts) and in total.
func (s *Sim) Stats() (total Stats, rooms map[string]Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rooms = make(map[string]Stats, len(s.counts))
	for d, st := range s.counts {
		rooms[d] = *st
	}
	return s.total, rooms
}

func (s *Sim) record(r Request) {
	r.Time = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = appendBounded(s.log, r, s.max.MaxRequests)
	if r.Method != http.MethodPost {
		return
	}
	st := s.counts[r.Room]
	if st == nil {
		st = &Stats{}
		s.counts[r.Room] = st
	}
	st.Requests++
	s.total.Requests++
	if r.Outcome == Accepted || r.Outcome == DroppedAfter || r.Outcome == CutOff {
		st.Accepted++
		s.total.Accepted++
	}
}

// appendBounded appends v and drops the oldest entries beyond limit.
func appendBounded[T any](list []T, v T, limit int) []T {
	list = append(list, v)
	if over := len(list) - limit; over > 0 {
		clear(list[:over]) // let the dropped entries be collected
		list = list[over:]
	}
	return list
}

// Totals returns the POST /messages requests and accepted messages so far,
// in constant time (for load tools that poll).
func (s *Sim) Totals() (requests, accepted int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total.Requests, s.total.Accepted
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

// maxBody bounds a POST /messages body: one file at Webex's limit plus the
// other fields.
const maxBody = maxFileBytes + 2*maxFieldBytes

func (s *Sim) createMessage(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	entry := Request{Start: start, Method: r.Method, Path: "/messages", Bot: botOf(r)}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	s.mu.Lock()
	keep := s.max.MaxUploadBytes
	s.mu.Unlock()
	q, err := readRequest(r, keep)
	if q != nil {
		entry.Room = q.destination()
	}
	reject := func(status int, retryAfter time.Duration, msg string, details ...string) {
		s.writeError(w, status, retryAfter, msg, details...)
		entry.Status, entry.Outcome = status, Rejected
		s.record(entry)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) || errors.Is(err, errTooLarge) {
			reject(http.StatusRequestEntityTooLarge, 0, "The request body is too large.")
			return
		}
		reject(http.StatusBadRequest, 0, "Unable to parse the request body: "+err.Error())
		return
	}
	if problems := q.check(); len(problems) > 0 {
		reject(http.StatusBadRequest, 0, problems[0], problems...)
		return
	}
	if s.rooms != nil && q.RoomID != "" && !s.rooms[q.RoomID] {
		reject(http.StatusNotFound, 0, "Could not find a room with provided ID.")
		return
	}
	s.mu.Lock()
	limiter, limitWait, latency := s.limiter, s.limitWait, s.latency
	s.mu.Unlock()
	if latency > 0 && !wait(r.Context(), latency) {
		entry.Outcome = DroppedBefore
		s.record(entry)
		return
	}
	if limiter != nil && !limiter.Allow() {
		reject(http.StatusTooManyRequests, limitWait, "Too Many Requests")
		return
	}
	f := s.takeFault(entry.Room)
	if f != nil && f.Delay > 0 && !wait(r.Context(), time.Duration(f.Delay)) {
		entry.Outcome = DroppedBefore
		s.record(entry)
		return
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
	stored := s.store(q, entry.Bot)
	entry.MessageID = stored.ID
	if f != nil && f.Drop == "after" {
		entry.Outcome = DroppedAfter
		s.record(entry)
		hangUp(w)
		return
	}
	tracking := s.nextID("SIM_")
	if f != nil && f.Drop == "partial" {
		entry.Status, entry.Outcome = http.StatusOK, CutOff
		s.record(entry)
		cutOff(w, tracking)
		return
	}
	w.Header().Set("TrackingID", tracking)
	entry.Status, entry.Outcome = http.StatusOK, Accepted
	s.record(entry)
	writeJSON(w, http.StatusOK, stored)
}

// wait holds a request d; false when the client went away first.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
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

func (s *Sim) store(q *request, bot string) *Stored {
	id := s.nextID("sim-msg-")
	st := &Stored{
		Sent: webex.Sent{
			ID: id, RoomID: q.RoomID, ToPersonID: q.ToPersonID, ToPersonEmail: q.ToPersonEmail,
			ParentID: q.ParentID, Text: q.Text, Markdown: q.Markdown, Files: q.Files,
			PersonEmail: bot + "@webex.bot", Created: time.Now().UTC(),
		},
		Bot: bot,
	}
	for _, a := range q.Attachments {
		st.Attachments = append(st.Attachments, webex.Attachment{ContentType: a.ContentType, Content: a.Content})
	}
	if st.RoomID == "" {
		st.RoomType = "direct"
	} else {
		st.RoomType = "group"
	}
	if len(q.uploads) == 1 {
		u := q.uploads[0]
		st.FileName, st.FileType, st.FileSize, st.FileData = u.name, u.contentType, u.size, u.data
		st.Files = append(st.Files, "sim://files/"+id+"/"+u.name)
	}
	st.Literals = s.findLiterals(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.messages) == s.max.MaxMessages {
		old := s.messages[0]
		delete(s.byID, old.ID)
		s.dropData(old)
	}
	s.messages = appendBounded(s.messages, st, s.max.MaxMessages)
	s.byID[id] = st
	if st.FileData != nil {
		s.withData = append(s.withData, st)
		s.uploadBytes += int64(len(st.FileData))
		for s.uploadBytes > s.max.MaxUploadBytes && len(s.withData) > 0 {
			s.dropData(s.withData[0])
		}
	}
	return st
}

// dropData forgets a stored message's file bytes (it keeps their size).
// Callers hold s.mu.
func (s *Sim) dropData(m *Stored) {
	if m.FileData == nil {
		return
	}
	s.uploadBytes -= int64(len(m.FileData))
	m.FileData = nil
	if i := slices.Index(s.withData, m); i >= 0 {
		s.withData = slices.Delete(s.withData, i, i+1)
	}
}

// cutOff answers 200 with the TrackingID header and the start of a body
// that promises more, then closes the connection.
func cutOff(w http.ResponseWriter, tracking string) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	defer conn.Close()
	_, _ = fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTrackingID: %s\r\nContent-Length: 4096\r\n\r\n{\"id\":\"", tracking)
	_ = buf.Flush()
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

// listMessages serves GET /messages?roomId=[&parentId=][&before=]
// [&beforeMessage=][&max=]: newest first, with a Link header to the next page
// when there is one. parentId keeps one thread's replies, before (RFC 3339)
// the messages created before that time.
func (s *Sim) listMessages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	room := q.Get("roomId")
	if room == "" {
		s.writeError(w, http.StatusBadRequest, 0, "roomId is required.")
		return
	}
	limit := 50
	if v := q.Get("max"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, http.StatusBadRequest, 0, "max must be a number from 1 to 1000.")
			return
		}
		limit = n
	}
	var before time.Time
	if v := q.Get("before"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			s.writeError(w, http.StatusBadRequest, 0, "before must be an RFC 3339 time.")
			return
		}
		before = t
	}
	parent := q.Get("parentId")
	all := slices.DeleteFunc(s.Messages(room), func(m Stored) bool {
		return (parent != "" && m.ParentID != parent) || (!before.IsZero() && !m.Created.Before(before))
	})
	slices.Reverse(all)
	if before := q.Get("beforeMessage"); before != "" {
		i := slices.IndexFunc(all, func(m Stored) bool { return m.ID == before })
		if i < 0 {
			s.writeError(w, http.StatusNotFound, 0, "The beforeMessage could not be found.")
			return
		}
		all = all[i+1:]
	}
	page := all[:min(limit, len(all))]
	if len(all) > limit {
		next := url.Values{"roomId": {room}, "max": {strconv.Itoa(limit)}, "beforeMessage": {page[len(page)-1].ID}}
		for _, k := range []string{"parentId", "before"} {
			if v := q.Get(k); v != "" {
				next.Set(k, v)
			}
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s%s?%s>; rel="next"`, baseOf(r), r.URL.Path, next.Encode()))
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": nonNil(page)})
}

// baseOf is the scheme and host the request was sent to.
func baseOf(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + strings.TrimSuffix(r.Header.Get(prefixHeader), "/")
}

// prefixHeader carries the path prefix (/v1) that ServeHTTP stripped.
const prefixHeader = "X-Sim-Prefix"

func (s *Sim) getMessage(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m, ok := s.byID[r.PathValue("id")]
	var copied Stored
	if ok {
		copied = *m
	}
	s.mu.Unlock()
	if !ok {
		s.writeError(w, http.StatusNotFound, 0, "The requested resource could not be found.")
		return
	}
	writeJSON(w, http.StatusOK, copied)
}

func (s *Sim) deleteMessage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	m, ok := s.byID[id]
	if ok {
		delete(s.byID, id)
		s.dropData(m)
		s.messages = slices.DeleteFunc(s.messages, func(x *Stored) bool { return x == m })
	}
	s.mu.Unlock()
	if !ok {
		s.writeError(w, http.StatusNotFound, 0, "The requested resource could not be found.")
		return
	}
	w.Header().Set("TrackingID", s.nextID("SIM_"))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Sim) me(w http.ResponseWriter, r *http.Request) {
	bot := botOf(r)
	writeJSON(w, http.StatusOK, webex.Person{ID: "sim-person-" + bot, DisplayName: bot, Emails: []string{bot + "@webex.bot"}})
}
