package main

import (
	"strings"
	"testing"
)

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-tokens", "no-equals"}, {"-tokens", "=bot"}, {"-addr", "256.0.0.1:x"}} {
		if err := run(args); err == nil {
			t.Errorf("run(%q) accepted", strings.Join(args, " "))
		}
	}
}
