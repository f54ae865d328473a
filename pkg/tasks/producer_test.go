package tasks

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

func TestEnqueueRejectsInvalid(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	big := webex.File{Name: "big.bin", Data: make([]byte, DefaultMaxInlineBytes+1)}
	tests := []struct {
		name string
		m    Message
		opts []Option
		want []string
	}{
		{"no destination", Message{Message: webex.Message{Text: "x"}}, nil, []string{"roomId: exactly one of"}},
		{"too long", text("r", strings.Repeat("x", 7440)), nil, []string{"text: is 7440 bytes, the limit is 7439"}},
		{"inline cap", Message{Message: webex.Message{RoomID: "r"}, Uploads: []webex.File{big}}, nil, []string{"uploads: files total 1048577 bytes, the inline limit is 1048576"}},
		{"bad key", text("r", "x"), []Option{Key("has space")}, []string{"key: contains ' '"}},
		{"long key", text("r", "x"), []Option{Key(strings.Repeat("k", 201))}, []string{"key: is 201 bytes, the limit is 200"}},
		{"past expiry", text("r", "x"), []Option{ExpiresAt(time.Now().Add(-time.Minute))}, []string{"expires_at: "}},
		{"negative redeliveries", text("r", "x"), []Option{MaxRedeliveries(-1)}, []string{"max_redeliveries: is -1"}},
		{"several problems", Message{Message: webex.Message{Markdown: strings.Repeat("x", 8000)}}, []Option{Key("a b")}, []string{"roomId: ", "markdown: is 8000 bytes", "key: "}},
		{"streamed file", Message{Message: webex.Message{RoomID: "r"}, Uploads: []webex.File{{Name: "a", Size: 1, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("a")), nil }}}}, nil, []string{"uploads[0]: a streamed file (Open) cannot be queued"}},
		{"relay key", text("r", "x"), []Option{Key("relay/543cae55ff12/build-1")}, []string{`key: "relay/543cae55ff12/build-1": keys starting with relay/ are reserved for the relay`}},
		{"control in text", text("r", "a\x00b"), nil, []string{`text: contains the control character '\x00' at byte 1: only tab, CR and LF are allowed`}},
		{"control in markdown", Message{Message: webex.Message{RoomID: "r", Markdown: "**x**\x1b[2J"}}, nil, []string{`markdown: contains the control character '\x1b' at byte 5`}},
		{"second file invalid", Message{Message: webex.Message{RoomID: "r", Text: "x"}, Uploads: []webex.File{{Name: "a", Data: []byte("a")}, {Data: []byte("b")}}}, nil, []string{"file 2: files: a local file needs a name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.producer.Enqueue(context.Background(), tt.m, tt.opts...)
			var ve *webex.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a ValidationError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want %q", err, w)
				}
			}
		})
	}
	q, err := e.inspector.GetQueueInfo(e.queue)
	if err == nil && q.Size != 0 {
		t.Fatalf("%d invalid tasks reached Redis", q.Size)
	}
}

func TestEnqueueOptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	r, err := e.producer.Enqueue(context.Background(), text("r", "x"), ProcessAt(at), MaxRedeliveries(5), Retention(2*time.Hour), Source("cron"), ExpiresIn(3*time.Hour), Bot("reports"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.inspector.GetTaskInfo(e.queue, r.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(at) || info.MaxRetry != 5+retryHeadroom || info.Retention != 2*time.Hour {
		t.Fatalf("info = state %v at %v maxretry %d retention %v", info.State, info.NextProcessAt, info.MaxRetry, info.Retention)
	}
	p, err := DecodePayload(info.Payload)
	if err != nil || p.Source != "cron" || p.Bot != "reports" || p.ExpiresAt == nil || p.Version != PayloadVersion || p.EnqueuedAt.IsZero() {
		t.Fatalf("payload %+v, %v", p, err)
	}
}

func TestEnqueueMany(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	reqs := []Request{
		{Message: text("r", "one")},
		{Message: text("", "bad")},
		{Message: text("r", "keyed"), Options: []Option{Key("bulk-1")}},
		{Message: text("r", "keyed again"), Options: []Option{Key("bulk-1")}},
	}
	res := e.producer.EnqueueMany(context.Background(), reqs)
	if len(res) != 4 || res[0].Err != nil || res[1].Err == nil {
		t.Fatalf("results %+v", res)
	}
	// Exactly one of the two keyed requests wins, the other is a duplicate.
	if (res[2].Err == nil) == (res[3].Err == nil) || !(errors.Is(res[2].Err, ErrDuplicate) || errors.Is(res[3].Err, ErrDuplicate)) {
		t.Fatalf("keyed results %v / %v", res[2].Err, res[3].Err)
	}
	q, _ := e.inspector.GetQueueInfo(e.queue)
	if q.Pending != 2 {
		t.Fatalf("%d pending, want 2", q.Pending)
	}
}

// Issue 16: the relay's key space is refused to every producer but the
// relay's own, with an error that says so (errors.Is ErrReservedKey); tab,
// CR and LF are text, not control characters.
func TestProducerReservesRelayKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, webextest.Options{})
	_, err := e.producer.Enqueue(ctx, text("r", "x"), Key("relay/543cae55ff12/build-1"))
	if !errors.Is(err, ErrReservedKey) {
		t.Fatalf("err = %v, want ErrReservedKey", err)
	}
	relay, err := NewProducer(e.rdb, ProducerConfig{Queue: e.queue, RelayKeys: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Enqueue(ctx, text("r", "x"), Key("relay/543cae55ff12/build-1")); err != nil {
		t.Fatalf("the relay's producer: %v", err)
	}
	if _, err := e.producer.Enqueue(ctx, text("r", "tab\tCR\rLF\n")); err != nil {
		t.Fatalf("tab, CR, LF: %v", err)
	}
}

// NewProducer reports every problem at once, naming each field.
func TestNewProducerReportsEachProblem(t *testing.T) {
	t.Parallel()
	_, err := NewProducer(nil, ProducerConfig{MaxRedeliveries: -1, MaxInlineBytes: -2, KeyedRetention: -time.Hour})
	for _, want := range []string{"producer config: ", "MaxRedeliveries is -1: must not be negative", "MaxInlineBytes is -2: must not be negative",
		"KeyedRetention is -1h0m0s: must not be negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

// After an ordered message of EnqueueMany fails, the rest of its ordering
// key's messages are not attempted (they would skip the gap); other keys
// go on.
func TestEnqueueManyStopsBrokenChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	res := e.producer.EnqueueMany(context.Background(), []Request{
		{Message: text("r", "first"), Options: []Option{Ordered()}},
		{Message: text("r", ""), Options: []Option{Ordered()}}, // invalid: nothing to send
		{Message: text("r", "third"), Options: []Option{Ordered()}},
		{Message: text("other", "fine"), Options: []Option{Ordered()}},
	})
	var ve *webex.ValidationError
	if res[0].Err != nil || !errors.As(res[1].Err, &ve) || res[3].Err != nil {
		t.Fatalf("results %+v", res)
	}
	if !errors.Is(res[2].Err, ErrChainBroken) || res[2].Enqueued != nil || !strings.Contains(res[2].Err.Error(), "not attempted") {
		t.Fatalf("third of the broken chain: %+v", res[2])
	}
}
