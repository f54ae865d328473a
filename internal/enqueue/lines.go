package enqueue

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/courier-dev/courier/pkg/tasks"
)

const (
	// MaxLineBytes bounds one JSON line: a longer line is reported as
	// invalid and reading goes on with the next.
	MaxLineBytes = 16 << 20
	// batchSize bounds how many JSON lines are enqueued at once.
	batchSize = 500
)

// ErrLineTooLong matches a JSON line over MaxLineBytes.
var ErrLineTooLong = fmt.Errorf("the line is over %d bytes", MaxLineBytes)

// rawLine is one line of input, numbered from 1.
type rawLine struct {
	n    int
	data []byte
	err  error // ErrLineTooLong
}

// readLine reads up to '\n' (or the end), keeping at most max bytes; a
// longer line is consumed whole and reported as ErrLineTooLong.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	over := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !over && len(line)+len(chunk) > max+1 { // +1: the newline
			over, line = true, nil
		}
		if !over {
			line = append(line, chunk...)
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case over && (err == nil || errors.Is(err, io.EOF)):
			return nil, ErrLineTooLong
		case err != nil:
			return line, err
		}
		return line, nil
	}
}

// readLines sends every line of r to out until r ends, fails or stop
// closes; it closes out and returns why it stopped (nil at the end).
func readLines(r io.Reader, out chan<- rawLine, stop <-chan struct{}) error {
	defer close(out)
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(br, MaxLineBytes)
		l := rawLine{n: n, data: line}
		if errors.Is(err, ErrLineTooLong) {
			l, err = rawLine{n: n, err: err}, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read line %d: %w", n, err)
		}
		if len(l.data) > 0 || l.err != nil || err == nil {
			select {
			case out <- l:
			case <-stop:
				return nil
			}
		}
		if err != nil {
			return nil
		}
	}
}

// collect waits for a line, then takes the lines that have arrived with
// it, up to a full batch, without waiting for more: a line that comes alone
// is enqueued at once, and lines that arrive while a batch is enqueued make
// the next batch (a file is read in batches of batchSize). ok is false once
// the input has ended (the batch may still hold lines) or ctx ended.
func collect(ctx context.Context, lines <-chan rawLine) (batch []rawLine, ok bool) {
	select {
	case l, more := <-lines:
		if !more {
			return nil, false
		}
		batch = append(batch, l)
	case <-ctx.Done():
		return nil, false
	}
	for len(batch) < batchSize {
		select {
		case l, more := <-lines:
			if !more {
				return batch, false
			}
			batch = append(batch, l)
		case <-ctx.Done():
			return batch, false
		default:
			return batch, true
		}
	}
	return batch, true
}

// decodeLine reads one message object; anything after it on the line is
// refused, since each line must get its own verdict.
func decodeLine(raw []byte) (Line, error) {
	var l Line
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return l, fmt.Errorf("not a message object: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return l, errors.New("not a message object: more follows the first JSON object (one message per line)")
	}
	return l, nil
}

// stream reads JSON lines and enqueues them as they arrive: what has
// arrived is enqueued as soon as the input pauses, and each line's outcome
// is printed once known. When ctx ends, reading stops and the lines already
// read are still enqueued.
func (pr *printer) stream(ctx context.Context, p *tasks.Producer, o *options, stdin io.Reader, files *fileReader) error {
	r := stdin
	if o.jsonl != "-" {
		// A FIFO blocks here until its writer opens it, as a pipe should;
		// a second signal ends the process if none ever does.
		f, err := os.Open(o.jsonl)
		if err != nil {
			return fmt.Errorf("--jsonl: %w", err)
		}
		defer f.Close()
		r = f
	}
	lines := make(chan rawLine, batchSize)
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	go func() { readErr <- readLines(r, lines, stop) }()
	defer func() {
		close(stop)
		if c, ok := r.(io.Closer); ok && ctx.Err() != nil { // unblock a read that waits on a silent pipe
			_ = c.Close()
		}
	}()
	// Enqueueing outlives a signal: lines read are answered, not dropped.
	enqCtx := context.WithoutCancel(ctx)
	for {
		batch, more := collect(ctx, lines)
		pending := make([]pending, 0, len(batch))
		for _, l := range batch {
			raw := bytes.TrimSpace(l.data)
			switch line, err := decodeLine(raw); {
			case l.err != nil:
				pending = append(pending, pendingErr(l.n, l.err))
			case len(raw) == 0 || raw[0] == '#':
			case err != nil:
				pending = append(pending, pendingErr(l.n, err))
			default:
				line.Queue, line.Bot = cmp.Or(line.Queue, o.line.Queue), cmp.Or(line.Bot, o.line.Bot)
				pending = append(pending, build(l.n, line, nil, "", files))
			}
		}
		pr.run(enqCtx, p, o.timeout, pending)
		if !more {
			break
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped reading: %w", context.Cause(ctx))
	}
	return <-readErr
}

func pendingErr(n int, err error) pending { return pending{line: n, err: err} }
