package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courier-dev/courier/internal/redisurl"
)

// DeadLetterStream is the Redis stream that keeps courier's dead letters.
const DeadLetterStream = "courier:deadletters"

// DefaultDeadLetterMax bounds the stream (trimmed approximately, oldest first).
const DefaultDeadLetterMax = 10_000

// DeadLetters keeps a durable record of every dead letter in a Redis stream,
// beside asynq's archive, which keeps at most 10,000 tasks per queue for 90
// days and then drops them silently. Each entry holds the task id, queue,
// outcome, error and the whole payload, so it can be re-enqueued after the
// archive has let it go.
type DeadLetters struct {
	rdb    redis.UniversalClient
	stream string
	max    int64
}

// NewDeadLetters returns the record kept in stream ("": DeadLetterStream),
// bounded to max entries (0: 10,000).
func NewDeadLetters(rdb redis.UniversalClient, stream string, max int) *DeadLetters {
	redisurl.FollowFailovers(rdb)
	return &DeadLetters{rdb: rdb, stream: cmp.Or(stream, DeadLetterStream), max: int64(cmp.Or(max, DefaultDeadLetterMax))}
}

// DeadLetter is one entry of the record.
type DeadLetter struct {
	ID      string    `json:"id"` // the stream entry id
	TaskID  string    `json:"task_id"`
	Queue   string    `json:"queue"`
	Outcome string    `json:"outcome"`
	Error   string    `json:"error"`
	Time    time.Time `json:"time"`
	// Result names the parts Webex accepted before the task was
	// dead-lettered (nil: none); Requeue does not send them again.
	Result  *TaskResult `json:"result,omitempty"`
	Payload []byte      `json:"-"`
	// Behind lists the ordered messages (task ids, the first 100) that were
	// waiting behind this one in its sequence when it was dead-lettered;
	// the first of them was released in its place.
	Behind []string `json:"behind,omitempty"`
}

// Add appends a dead letter.
func (d *DeadLetters) Add(ctx context.Context, dl DeadLetter) error {
	values := []any{"task_id", dl.TaskID, "queue", dl.Queue, "outcome", dl.Outcome, "error", dl.Error,
		"time", strconv.FormatInt(dl.Time.UnixMilli(), 10), "payload", dl.Payload}
	if len(dl.Behind) > 0 {
		values = append(values, "behind", strings.Join(dl.Behind, " "))
	}
	if dl.Result != nil {
		b, err := json.Marshal(dl.Result)
		if err != nil {
			return fmt.Errorf("record dead letter: %w", err)
		}
		values = append(values, "result", b)
	}
	err := d.rdb.XAdd(ctx, &redis.XAddArgs{Stream: d.stream, MaxLen: d.max, Approx: true, Values: values}).Err()
	if err != nil {
		return fmt.Errorf("record dead letter: %w", err)
	}
	return nil
}

// List returns up to count dead letters, newest first.
func (d *DeadLetters) List(ctx context.Context, count int64) ([]DeadLetter, error) {
	msgs, err := d.rdb.XRevRangeN(ctx, d.stream, "+", "-", count).Result()
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	out := make([]DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, fromStream(m))
	}
	return out, nil
}

// Get returns one dead letter by its stream id.
func (d *DeadLetters) Get(ctx context.Context, id string) (*DeadLetter, error) {
	msgs, err := d.rdb.XRange(ctx, d.stream, id, id).Result()
	if err != nil {
		return nil, fmt.Errorf("get dead letter %s: %w", id, err)
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("dead letter %s: %w", id, ErrDeadLetterNotFound)
	}
	dl := fromStream(msgs[0])
	return &dl, nil
}

// ErrDeadLetterNotFound matches a dead letter that is not in the record
// (DeadLetters.Get and Requeue with an unknown or trimmed id).
var ErrDeadLetterNotFound = errors.New("not found")

// Requeue enqueues a recorded dead letter again with p, under its original
// key, bot, queue, ordering key and parent (an expiry is dropped: re-running means "send it now"),
// without the parts Webex had accepted. If asynq's archive still holds the
// task, the key is taken: re-run it from the archive instead (asynqmon, or
// Inspector.RunArchivedTask).
func (d *DeadLetters) Requeue(ctx context.Context, id string, p *Producer) (*Enqueued, error) {
	dl, err := d.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	pl, err := DecodePayload(dl.Payload)
	if err != nil {
		return nil, fmt.Errorf("requeue %s: %w", id, err)
	}
	m := pl.Message
	if dl.Result != nil {
		if m, err = m.without(dl.Result.sent()); err != nil {
			return nil, fmt.Errorf("requeue %s: %w", id, err)
		}
	}
	opts := []Option{Queue(dl.Queue), Bot(pl.Bot), Source(pl.Source)}
	if pl.Key != "" {
		opts = append(opts, Key(pl.Key))
	}
	if pl.OrderingKey != "" { // re-enters at the end of its sequence
		opts = append(opts, OrderingKey(pl.OrderingKey))
	}
	if pl.ParentTask != "" { // still a reply: threaded under its parent's Webex id
		opts = append(opts, ReplyTo(pl.ParentTask))
	}
	return p.Enqueue(ctx, m, opts...)
}

// ErrAllDelivered: every part of a dead letter was delivered; nothing to
// send again.
var ErrAllDelivered = errors.New("every part was delivered")

// without is m less the parts sent names as delivered. The text, markdown
// and card ride on the first part: they go with it, or stay on the first
// part still to send.
func (m Message) without(sent []string) (Message, error) {
	parts := m.Parts()
	if len(sent) != len(parts) || delivered(sent) == 0 {
		return m, nil
	}
	if delivered(sent) == len(parts) {
		return m, ErrAllDelivered
	}
	out := m
	out.Files, out.Uploads = nil, nil
	if sent[0] != "" {
		out.Text, out.Markdown, out.Attachments = "", "", nil
	}
	for i, s := range sent {
		switch {
		case s != "":
		case i < len(m.Files):
			out.Files = append(out.Files, m.Files[i])
		default:
			out.Uploads = append(out.Uploads, m.Uploads[i-len(m.Files)])
		}
	}
	return out, nil
}

func fromStream(m redis.XMessage) DeadLetter {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	ms, _ := strconv.ParseInt(str("time"), 10, 64)
	dl := DeadLetter{ID: m.ID, TaskID: str("task_id"), Queue: str("queue"), Outcome: str("outcome"), Error: str("error"),
		Time: time.UnixMilli(ms).UTC(), Payload: []byte(str("payload")), Behind: strings.Fields(str("behind"))}
	if r := str("result"); r != "" {
		var tr TaskResult
		if json.Unmarshal([]byte(r), &tr) == nil {
			dl.Result = &tr
		}
	}
	return dl
}
