// Package monitor is courier's operator UI: asynqmon over courier's queues,
// with send tasks shown with inline file contents elided. cmd/monitor
// serves it for a fleet of workers; cmd/dev mounts it on the dev worker's
// admin server. cmd/worker leaves it out: asynqmon embeds its web UI, about
// 15 MB of the binary, and every worker carrying it cost each replica
// about 3 MB of resident memory for a UI that one instance serves for all.
package monitor

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"

	"github.com/courier-dev/courier/pkg/tasks"
)

// Path is where the UI is mounted.
const Path = "/monitoring/"

// Handler serves asynqmon at Path over redis, read-only unless writable
// (re-run and delete tasks); close releases its Redis connections.
func Handler(redis asynq.RedisConnOpt, writable bool) (h http.Handler, closeFn func() error) {
	mon := asynqmon.New(asynqmon.Options{
		RootPath:         Path,
		RedisConnOpt:     redis,
		ReadOnly:         !writable,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatPayload),
	})
	return mon, mon.Close
}

// FormatPayload shows a send task's payload in asynqmon with inline file
// contents elided (name and size only). Other payloads show as they are.
func FormatPayload(taskType string, payload []byte) string {
	if taskType != tasks.TypeSend {
		return string(payload)
	}
	p, err := tasks.DecodePayload(payload)
	if p == nil {
		return fmt.Sprintf("(unreadable payload, %d bytes: %v)", len(payload), err)
	}
	type elided struct {
		Name        string `json:"name"`
		ContentType string `json:"contentType,omitempty"`
		Size        int    `json:"size"`
	}
	files := make([]elided, len(p.Message.Uploads))
	for i, f := range p.Message.Uploads {
		files[i] = elided{f.Name, f.ContentType, len(f.Data)}
	}
	p.Message.Uploads = nil
	out := struct {
		*tasks.Payload
		Uploads []elided `json:"uploads,omitempty"`
	}{p, files}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Sprintf("(payload, %d bytes)", len(payload))
	}
	return string(b)
}
