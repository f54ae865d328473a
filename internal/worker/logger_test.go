package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	log := NewLogger(&b, "auto", "warn") // a buffer is not a terminal: JSON
	log.Info("hidden")
	log.Warn("shown", "bot", "default")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["msg"] != "shown" || rec["bot"] != "default" {
		t.Fatalf("%v: %q", err, b.String())
	}
	b.Reset()
	NewLogger(&b, "text", "debug").Debug("colour text")
	if json.Valid(b.Bytes()) || !strings.Contains(b.String(), "colour text") {
		t.Fatalf("text: %q", b.String())
	}
}

func TestParseLevelNamesTheSetting(t *testing.T) {
	t.Parallel()
	if _, err := parseLevel("loud"); err == nil || err.Error() != `COURIER_LOG_LEVEL "loud": want debug, info, warn or error` {
		t.Fatalf("%v", err)
	}
}

func TestRedisLoggerWritesStructuredRecords(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	redisLogger{NewLogger(&b, "json", "info")}.Printf(context.Background(), "redis: dial %s\n", "refused")
	if !strings.Contains(b.String(), `"msg":"redis client","detail":"redis: dial refused"`) {
		t.Fatalf("%q", b.String())
	}
}
