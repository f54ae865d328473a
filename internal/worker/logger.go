package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"github.com/redis/go-redis/v9"
)

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("COURIER_LOG_LEVEL %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// CheckLogSettings reports what is wrong with COURIER_LOG_FORMAT and
// COURIER_LOG_LEVEL's values, naming each.
func CheckLogSettings(format, level string) []error {
	var errs []error
	switch format {
	case "auto", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("COURIER_LOG_FORMAT %q: want auto, text or json", format))
	}
	if _, err := parseLevel(level); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// NewLogger builds the process logger: colour text (tint) when format is
// "text", or "auto" and w is a terminal; JSON otherwise. An unknown level
// (Load refuses one) logs at info.
func NewLogger(w io.Writer, format, level string) *slog.Logger {
	l, _ := parseLevel(level)
	if format == "text" || (format == "auto" && isTerminal(w)) {
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: l, TimeFormat: time.TimeOnly}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// LogRedisClient routes go-redis's own log lines (pool and dial problems),
// process-wide, through log as "redis client" records, so that JSON logs
// stay JSON (cmd/worker, cmd/dev, cmd/monitor).
func LogRedisClient(log *slog.Logger) { redis.SetLogger(redisLogger{log}) }

// redisLogger routes go-redis's own log lines through slog.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)))
}
