package tasks_test

import (
	"errors"
	"testing"

	"github.com/courier-dev/courier/pkg/tasks"
)

// FuzzDecodePayload: any bytes decode to a payload or fail with
// ErrCorruptPayload or ErrNewerPayload, never a panic.
// go test -run '^$' -fuzz '^FuzzDecodePayload$' -fuzztime 5s ./pkg/tasks
func FuzzDecodePayload(f *testing.F) {
	f.Add([]byte(`{"v":1,"message":{"roomId":"r","text":"x"},"enqueued_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":1,"message":{"roomId":"r","uploads":[{"name":"a.png","data":"iVBORw=="}]},"bot":"b","key":"k","expires_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":2,"message":{}}`))
	f.Add([]byte(`{"v":0}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := tasks.DecodePayload(b)
		switch {
		case err == nil && p == nil:
			t.Fatal("no payload and no error")
		case err != nil && !errors.Is(err, tasks.ErrCorruptPayload) && !errors.Is(err, tasks.ErrNewerPayload):
			t.Fatalf("unclassified error: %v", err)
		}
	})
}
