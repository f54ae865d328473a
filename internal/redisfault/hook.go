package redisfault

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrInjected is the error a [Hook] gives a command it fails.
var ErrInjected = errors.New("redisfault: injected Redis failure")

// Match says whether a command is one a rule fails. Name is the command
// (case-insensitive: "hset", "evalsha"); each of Args must appear in the
// command's arguments (a key, a field, a script's SHA), in any position.
type Match struct {
	Name string
	Args []string
}

// Matches reports whether cmd is one m names.
func (m Match) Matches(cmd redis.Cmder) bool {
	if m.Name != "" && !strings.EqualFold(cmd.Name(), m.Name) {
		return false
	}
	args := cmd.Args()
	for _, want := range m.Args {
		found := false
		for _, a := range args[1:] {
			if s, ok := a.(string); ok && s == want {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Rule fails matching commands: from the Nth match (1 = the first), Count of
// them (0: one; negative: every one from then on).
type Rule struct {
	Match Match
	Nth   int
	Count int
	// After runs the command before failing it: Redis did the work, the
	// client never hears of it (a lost answer).
	After bool
	// Do, when set, is run in place of failing the command, which then goes
	// on (to meet, say, a Proxy that Do cut).
	Do func()

	mu      sync.Mutex
	seen    int
	failed  int
	removed bool
}

// take reports whether this match is one to fail.
func (r *Rule) take(cmd redis.Cmder) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed || !r.Match.Matches(cmd) {
		return false
	}
	r.seen++
	count := r.Count
	if count == 0 {
		count = 1
	}
	if r.seen < max(r.Nth, 1) || (count > 0 && r.failed >= count) {
		return false
	}
	r.failed++
	return true
}

// Failed is how many commands the rule has failed so far.
func (r *Rule) Failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// Seen is how many commands matched the rule so far (failed or not).
func (r *Rule) Seen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen
}

// Remove stops the rule.
func (r *Rule) Remove() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = true
}

// Hook is a go-redis hook that fails the commands its rules match. Add it
// with client.AddHook(hook); it does nothing until a rule is added.
type Hook struct {
	mu    sync.Mutex
	rules []*Rule
}

var _ redis.Hook = (*Hook)(nil)

// Add starts failing what r matches and returns r.
func (h *Hook) Add(r *Rule) *Rule {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = append(h.rules, r)
	return r
}

// FailNth fails the nth command (from 1) matching m, once, before it runs.
func (h *Hook) FailNth(m Match, n int) *Rule { return h.Add(&Rule{Match: m, Nth: n}) }

// fail reports whether any rule fails cmd (and which, for After).
func (h *Hook) fail(cmd redis.Cmder) *Rule {
	h.mu.Lock()
	rules := append([]*Rule(nil), h.rules...)
	h.mu.Unlock()
	for _, r := range rules {
		if r.take(cmd) {
			return r
		}
	}
	return nil
}

// DialHook passes dials through.
func (h *Hook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

// ProcessHook fails single commands.
func (h *Hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r := h.fail(cmd)
		if r != nil && r.Do != nil {
			r.Do()
			r = nil
		}
		if r == nil {
			return next(ctx, cmd)
		}
		if r.After {
			_ = next(ctx, cmd)
		}
		cmd.SetErr(ErrInjected)
		return ErrInjected
	}
}

// ProcessPipelineHook fails a whole pipeline (or transaction) when a rule
// matches any of its commands.
func (h *Hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var r *Rule
		for _, c := range cmds {
			if r = h.fail(c); r != nil {
				break
			}
		}
		if r != nil && r.Do != nil {
			r.Do()
			r = nil
		}
		if r == nil {
			return next(ctx, cmds)
		}
		if r.After {
			_ = next(ctx, cmds)
		}
		for _, c := range cmds {
			c.SetErr(ErrInjected)
		}
		return ErrInjected
	}
}
