package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redistest"
	"github.com/courier-dev/courier/internal/relay"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

const (
	relayToken  = "relay-token-alerts"
	otherToken  = "relay-token-reports"
	sameBotTok  = "relay-token-alerts-2" // a second token of relayToken's bot
	pngBytes    = "\x89PNG\r\n\x1a\nnot-really-an-image"
	pythonBound = "6f1d3c0e9b2a4d7f8e5c1b0a9d8e7f6a"                   // uuid4().hex, as requests_toolbelt's MultipartEncoder
	jsBound     = "--------------------------418239573650122876345902" // as the form-data package
)

type env struct {
	srv   *httptest.Server
	queue string
	insp  *asynq.Inspector
	prod  *tasks.Producer
	t     *testing.T
}

func newEnv(t *testing.T, maxBody int64) *env {
	t.Helper()
	rdb := redistest.Client(t)
	queue := redistest.Name(t)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	redistest.DeleteKeys(t, rdb, "asynq:{"+queue+"}:*", "courier:{"+queue+"}:*")
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, RelayKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	rl := relay.New(relay.Config{Tokens: map[string]string{relayToken: "", sameBotTok: "", otherToken: "reports"}, Producer: p, Inspector: insp,
		Queue: queue, MaxBodyBytes: maxBody, Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(rl)
	t.Cleanup(srv.Close)
	return &env{srv: srv, queue: queue, insp: insp, prod: p, t: t}
}

func (e *env) do(method, path, token, contentType string, body []byte, header map[string]string) (int, http.Header, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// multipart builds a body the way the SDKs' encoders do.
func multipart(boundary string, fields [][2]string, fileName, fileType, data string) []byte {
	var b strings.Builder
	for _, f := range fields {
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=%q\r\n\r\n%s\r\n", boundary, f[0], f[1])
	}
	if fileName != "" {
		fmt.Fprintf(&b, "--%s\r\nContent-Disposition: form-data; name=\"files\"; filename=%q\r\nContent-Type: %s\r\n\r\n%s\r\n", boundary, fileName, fileType, data)
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return []byte(b.String())
}

type answer struct {
	ID, RoomID, ToPersonEmail, Text, Markdown, Created string
	Files                                              []string
	Attachments                                        []map[string]any
}

func decodeAnswer(t *testing.T, b []byte) answer {
	t.Helper()
	var a answer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return a
}

func (e *env) payload(id string) *tasks.Payload {
	e.t.Helper()
	queue, taskID, ok := relay.ParseRelayID(id)
	if !ok || queue != e.queue {
		e.t.Fatalf("relay id %q names %q/%q", id, queue, taskID)
	}
	if p, err := e.prod.Waiting(context.Background(), queue, taskID); err == nil { // ordered, behind another message
		return p
	}
	info, err := e.insp.GetTaskInfo(queue, taskID)
	if err != nil {
		e.t.Fatal(err)
	}
	p, err := tasks.DecodePayload(info.Payload)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func TestSDKRequestForms(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	card := `{"contentType":"application/vnd.microsoft.card.adaptive","content":{"type":"AdaptiveCard","version":"1.3","body":[]}}`
	tests := []struct {
		name, ct string
		body     []byte
		check    func(*tasks.Payload) bool
	}{
		{"python json", "application/json;charset=utf-8",
			[]byte(`{"roomId": "room-1", "markdown": "**Build failed**", "attachments": [` + card + `], "parentId": "p-1"}`),
			func(p *tasks.Payload) bool {
				return p.Message.RoomID == "room-1" && p.Message.Markdown == "**Build failed**" && len(p.Message.Attachments) == 1 && p.Message.ParentID == "p-1"
			}},
		{"python multipart", "multipart/form-data; boundary=" + pythonBound,
			multipart(pythonBound, [][2]string{{"roomId", "room-1"}, {"text", "chart"}}, "chart.png", "image/png", pngBytes),
			func(p *tasks.Payload) bool {
				u := p.Message.Uploads
				return len(u) == 1 && u[0].Name == "chart.png" && u[0].ContentType == "image/png" && string(u[0].Data) == pngBytes && p.Message.Text == "chart"
			}},
		{"js json", "application/json",
			[]byte(`{"toPersonEmail":"ana@example.com","text":"hi","files":["https://example.com/r.pdf"]}`),
			func(p *tasks.Payload) bool {
				return p.Message.ToPersonEmail == "ana@example.com" && len(p.Message.Files) == 1 && p.Message.Files[0] == "https://example.com/r.pdf"
			}},
		{"js multipart", "multipart/form-data; boundary=" + jsBound,
			multipart(jsBound, [][2]string{{"toPersonEmail", "ana@example.com"}, {"markdown", "report"}}, "report.pdf", "application/pdf", "%PDF-1.7"),
			func(p *tasks.Payload) bool {
				u := p.Message.Uploads
				return len(u) == 1 && u[0].Name == "report.pdf" && string(u[0].Data) == "%PDF-1.7" && p.Message.Markdown == "report"
			}},
		// The JS SDK sends files: [Buffer] as a part without a filename.
		{"js sdk buffer", "multipart/form-data; boundary=" + jsBound,
			[]byte("--" + jsBound + "\r\nContent-Disposition: form-data; name=\"roomId\"\r\n\r\nroom-1\r\n" +
				"--" + jsBound + "\r\nContent-Disposition: form-data; name=\"files\"\r\nContent-Type: application/octet-stream\r\n\r\n" + pngBytes + "\r\n" +
				"--" + jsBound + "--\r\n"),
			func(p *tasks.Payload) bool {
				u := p.Message.Uploads
				return len(p.Message.Files) == 0 && len(u) == 1 && u[0].Name != "" && string(u[0].Data) == pngBytes
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := e.do("POST", "/v1/messages", relayToken, tt.ct, tt.body, nil)
			if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
				t.Fatalf("%d %s", code, body)
			}
			a := decodeAnswer(t, body)
			if _, err := time.Parse(time.RFC3339, a.Created); err != nil || a.ID == "" {
				t.Fatalf("answer %+v", a)
			}
			p := e.payload(a.ID)
			if !tt.check(p) || p.Bot != "" || p.Source != "relay/"+relay.TokenID(relayToken) {
				t.Fatalf("payload %+v", p)
			}
		})
	}
}

func TestValidationAnswers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	tests := []struct {
		name, ct string
		body     []byte
		want     string
	}{
		{"no destination", "application/json", []byte(`{"text":"x"}`), "roomId: exactly one of roomId, toPersonId, toPersonEmail is required, got 0"},
		{"two destinations", "application/json", []byte(`{"roomId":"r","toPersonEmail":"a@b.c","text":"x"}`), "got 2"},
		{"too long", "application/json", []byte(`{"roomId":"r","markdown":"` + strings.Repeat("x", 7440) + `"}`), "markdown: is 7440 bytes, the limit is 7439"},
		{"two file urls", "application/json", []byte(`{"roomId":"r","files":["https://a/1","https://a/2"]}`), "files: has 2 files, the limit is 1 per message"},
		{"card without fallback", "application/json", []byte(`{"roomId":"r","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":{}}]}`), "text: a card needs a text or markdown fallback"},
		{"not json", "application/json", []byte(`{"roomId":`), "Unable to parse the request body"},
		{"two objects", "application/json", []byte(`{"roomId":"r","text":"x"}{"roomId":"s","text":"y"}`), "data after the JSON object"},
		{"trailing garbage", "application/json", []byte(`{"roomId":"r","text":"x"} rm -rf`), "data after the JSON object"},
		{"local path", "application/json", []byte(`{"roomId":"r","files":["/tmp/report.pdf"]}`), `files: \"/tmp/report.pdf\" is not an http(s) URL`},
		{"file scheme", "application/json", []byte(`{"roomId":"r","files":["file:///etc/passwd"]}`), "is not an http(s) URL"},
		{"multipart local path", "multipart/form-data; boundary=" + jsBound, multipart(jsBound, [][2]string{{"roomId", "r"}, {"text", "t"}, {"files", "https://a/1"}}, "x.txt", "text/plain", "x"),
			"files: has 2 files, the limit is 1 per message"},
		{"two uploads", "multipart/form-data; boundary=" + jsBound, []byte("--" + jsBound + "\r\nContent-Disposition: form-data; name=\"roomId\"\r\n\r\nr\r\n" +
			"--" + jsBound + "\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\na\r\n" +
			"--" + jsBound + "\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\"\r\nContent-Type: image/png\r\n\r\nb\r\n" +
			"--" + jsBound + "--\r\n"), "files: has 2 files, the limit is 1 per message"},
		{"parent is another queue's relay id", "application/json", []byte(`{"roomId":"r","text":"x","parentId":"` + relay.RelayID("default", "abc") + `"}`),
			"parentId: names a message this relay does not hold for this token"},
		{"parent is an unknown relay id", "application/json", []byte(`{"roomId":"r","text":"x","parentId":"` + relay.RelayID(e.queue, "abc") + `"}`),
			"parentId: names a message this relay does not hold for this token"},
	}
	for _, tt := range tests {
		code, h, body := e.do("POST", "/v1/messages", relayToken, tt.ct, tt.body, nil)
		var werr struct {
			Message    string
			Errors     []struct{ Description string }
			TrackingID string
		}
		_ = json.Unmarshal(body, &werr)
		// Only the caller's real problems: no echo of an internal stand-in.
		if code != 400 || !strings.Contains(string(body), tt.want) || strings.Contains(string(body), "scheme") || werr.TrackingID == "" || h.Get("TrackingID") != werr.TrackingID || len(werr.Errors) == 0 {
			t.Errorf("%s: %d %s", tt.name, code, body)
		}
	}
	if q, err := e.insp.GetQueueInfo(e.queue); err == nil && q.Size != 0 {
		t.Fatalf("%d invalid messages queued", q.Size)
	}
}

func TestAuthAndRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	for _, tok := range []string{"", "wrong"} {
		code, _, body := e.do("POST", "/v1/messages", tok, "application/json", []byte(`{"roomId":"r","text":"x"}`), nil)
		if code != 401 || !strings.Contains(string(body), "valid access token") {
			t.Errorf("token %q: %d %s", tok, code, body)
		}
	}
	if code, _, _ := e.do("GET", "/v1/rooms", relayToken, "", nil, nil); code != 404 {
		t.Errorf("unproxied path: %d", code)
	}
	if code, _, _ := e.do("GET", "/v1/messages/not-a-relay-id", relayToken, "", nil, nil); code != 404 {
		t.Errorf("unknown id: %d", code)
	}
}

// A body over the limit is refused by its Content-Length, before it is read.
func TestOversizedBody(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1<<10)
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{", relayToken)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer without the body: %v", err)
	}
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// And a chunked body that grows past the limit.
	code, _, _ := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"`+strings.Repeat("x", 2000)+`"}`), nil)
	if code != 413 {
		t.Fatalf("over-limit body: %d", code)
	}
}

func TestIdempotentRepeat(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	h := map[string]string{"Idempotency-Key": "build-4711"}
	c1, _, b1 := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"once"}`), h)
	c2, _, b2 := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"once"}`), h)
	if c1 != 200 || c2 != 200 || string(b1) != string(b2) {
		t.Fatalf("%d %s / %d %s", c1, b1, c2, b2)
	}
	q, _ := e.insp.GetQueueInfo(e.queue)
	if q.Size != 1 {
		t.Fatalf("%d tasks for one key", q.Size)
	}
	// The same key from another bot's token is another message.
	c3, _, b3 := e.do("POST", "/v1/messages", otherToken, "application/json", []byte(`{"roomId":"r","text":"once"}`), h)
	if c3 != 200 || string(b3) == string(b1) {
		t.Fatalf("other bot: %d %s", c3, b3)
	}
}

// Tokens of one bot do not see each other: a key is scoped to its token, a
// reused key with another message is refused, and GET reads only the
// token's own messages in the relay's queue.
func TestTokensAreIsolated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	h := map[string]string{"Idempotency-Key": "build-4711"}
	ca, _, ba := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"room-a","markdown":"secret of A"}`), h)
	cb, _, bb := e.do("POST", "/v1/messages", sameBotTok, "application/json", []byte(`{"roomId":"room-b","markdown":"message of B"}`), h)
	if ca != 200 || cb != 200 {
		t.Fatalf("%d %s / %d %s", ca, ba, cb, bb)
	}
	a, b := decodeAnswer(t, ba), decodeAnswer(t, bb)
	if b.ID == a.ID || b.RoomID != "room-b" || strings.Contains(string(bb), "secret of A") {
		t.Fatalf("the second token got %s", bb)
	}
	if p := e.payload(b.ID); p.Message.Markdown != "message of B" || strings.Contains(p.Key+p.Source, sameBotTok) {
		t.Fatalf("B's message not queued as sent, or its token in the payload: %+v", p)
	}
	// The same key and token with another message.
	c, _, body := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"room-a","markdown":"changed"}`), h)
	if c != 422 || !strings.Contains(string(body), "different message") {
		t.Fatalf("reused key, other message: %d %s", c, body)
	}
	get := func(tok, id string) int {
		c, _, _ := e.do("GET", "/v1/messages/"+id, tok, "", nil, nil)
		return c
	}
	if get(relayToken, a.ID) != 200 || get(sameBotTok, a.ID) != 404 || get(otherToken, a.ID) != 404 {
		t.Fatal("a message is readable by its own token only")
	}
	// A message another producer queued (cmd/enqueue) under a guessable key.
	if _, err := e.prod.Enqueue(context.Background(), tasks.Message{Message: webex.Message{RoomID: "r", Text: "private"}},
		tasks.Key("nightly"), tasks.Source("enqueue")); err != nil {
		t.Fatal(err)
	}
	if c := get(relayToken, relay.RelayID(e.queue, "nightly")); c != 404 {
		t.Fatalf("another producer's message: %d", c)
	}
	// A relay id naming another queue.
	if c := get(relayToken, relay.RelayID("critical", strings.SplitN(a.ID, "/", 2)[0])); c != 404 {
		t.Fatalf("another queue: %d", c)
	}
}

// The Authorization scheme is case-insensitive.
func TestBearerSchemeCaseInsensitive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		c, _, body := e.do("POST", "/v1/messages", "", "application/json", []byte(`{"roomId":"r","text":"x"}`),
			map[string]string{"Authorization": scheme + " " + relayToken})
		if c != 200 {
			t.Errorf("%s: %d %s", scheme, c, body)
		}
	}
}

// End to end: relay → Redis → worker → simulator, and the relay reports the
// delivered message's Webex id.
func TestEndToEndStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	code, _, body := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"room-e2e","markdown":"**via relay**"}`), nil)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	id := decodeAnswer(t, body).ID
	var st relay.Status
	status := func(tok string) int {
		c, _, b := e.do("GET", "/v1/messages/"+id, tok, "", nil, nil)
		_ = json.Unmarshal(b, &st)
		return c
	}
	if status(relayToken) != 200 || st.State != "queued" {
		t.Fatalf("before delivery: %+v", st)
	}
	if status(otherToken) != 404 {
		t.Fatal("another bot's token may not read this message")
	}
	sim := webextest.NewServer(t, webextest.Options{})
	rdb := redistest.Client(t)
	w, err := tasks.NewWorker(rdb, tasks.WorkerConfig{Bots: map[string]tasks.Sender{"": sim.Client(t, webextest.DefaultToken)},
		Queues: map[string]int{e.queue: 1}, TaskCheckInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		Gate: tasks.GateConfig{Namespace: "courier:{" + e.queue + "}"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	deadline := time.Now().Add(15 * time.Second)
	for status(relayToken) == 200 && st.State != "delivered" {
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs := sim.Messages("room-e2e")
	if len(msgs) != 1 || msgs[0].Markdown != "**via relay**" || len(st.MessageIDs) != 1 || st.MessageIDs[0] != msgs[0].ID {
		t.Fatalf("status %+v, simulator %+v", st, msgs)
	}
}

// BenchmarkRelayCreate measures accepted relay requests per second (JSON,
// real HTTP and Redis): go test -bench RelayCreate -run ^$ ./internal/relay
func BenchmarkRelayCreate(b *testing.B) {
	rdb := redistest.Client(b)
	queue := redistest.Name(b)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	b.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
	p, _ := tasks.NewProducer(rdb, tasks.ProducerConfig{Queue: queue, Retention: -1, RelayKeys: true})
	srv := httptest.NewServer(relay.New(relay.Config{Tokens: map[string]string{relayToken: ""}, Producer: p, Inspector: insp, Queue: queue,
		Logger: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	body := []byte(`{"roomId":"room-1","markdown":"**load**"}`)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequestWithContext(context.Background(), "POST", srv.URL+"/v1/messages", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+relayToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// Any request method, even before auth, is counted under GET, POST or
// other: callers cannot grow the metric's series.
func TestMethodLabelIsBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(relay.New(relay.Config{Tokens: map[string]string{relayToken: ""}, Registerer: reg,
		Logger: slog.New(slog.DiscardHandler)}))
	t.Cleanup(srv.Close)
	for i := range 50 {
		req, _ := http.NewRequest(fmt.Sprintf("M%d%s", i, strings.Repeat("X", 200)), srv.URL+"/anything", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" {
					methods[l.GetValue()] = true
				}
			}
		}
	}
	if len(methods) != 1 || !methods["other"] {
		t.Fatalf("method labels %v, want only other", methods)
	}
}

// A 503 (Redis down) tells the bot when to retry, and an answer carries the
// SDK's own tracking id so that its logs and the relay's match.
func TestUnavailableAndTrackingID(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	p, err := tasks.NewProducer(rdb, tasks.ProducerConfig{RelayKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(relay.New(relay.Config{Tokens: map[string]string{relayToken: ""}, Producer: p,
		Inspector: asynq.NewInspectorFromRedisClient(rdb), Logger: slog.New(slog.DiscardHandler)}))
	t.Cleanup(srv.Close)
	e := &env{srv: srv, t: t}
	const tid = "webex-js-sdk_6f1d3c0e-9b2a-4d7f-8e5c-1b0a9d8e7f6a_1"
	code, h, body := e.do("POST", "/v1/messages", relayToken, "application/json", []byte(`{"roomId":"r","text":"x"}`), map[string]string{"trackingid": tid})
	if code != 503 || h.Get("Retry-After") == "" || h.Get("TrackingID") != tid || !strings.Contains(string(body), `"trackingId":"`+tid+`"`) {
		t.Fatalf("%d Retry-After %q TrackingID %q %s", code, h.Get("Retry-After"), h.Get("TrackingID"), body)
	}
	// A hostile tracking id is not echoed.
	_, h, _ = e.do("POST", "/v1/messages", relayToken, "application/json", nil, map[string]string{"trackingid": strings.Repeat("x", 300)})
	if !strings.HasPrefix(h.Get("TrackingID"), "COURIER_RELAY_") {
		t.Fatalf("tracking id %q", h.Get("TrackingID"))
	}
}
