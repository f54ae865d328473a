package tasks

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

// Queue names become Redis keys and metric labels: a producer cannot make
// up long or odd ones (a queue no worker serves never delivers).
func TestEnqueueRefusesOddQueueNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, webextest.Options{})
	for _, tt := range []struct{ queue, want string }{
		{"", "queue: must not be empty"},
		{strings.Repeat("q", 3000), "queue: is 3000 bytes, the limit is 64"},
		{"has space", "queue: contains ' '"},
		{"slash/es", "queue: contains '/'"},
		{"nul\x00", "queue: contains '\\x00'"},
		{"é", "queue: contains 'é'"},
	} {
		_, err := e.producer.Enqueue(context.Background(), text("r", "x"), Queue(tt.queue))
		var ve *webex.ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("queue %.20q: err = %v, want %q", tt.queue, err, tt.want)
		}
	}
	for _, ok := range []string{e.queue + "-Bulk.low_prio:a", e.queue + strings.Repeat("q", MaxQueueBytes-len(e.queue))} {
		if _, err := e.producer.Enqueue(context.Background(), text("r", "x"), Queue(ok)); err != nil {
			t.Errorf("queue %q: %v", ok, err)
		}
		_ = e.inspector.DeleteQueue(ok, true)
	}
}
