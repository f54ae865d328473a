package metrics_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/courier-dev/courier/internal/metrics"
	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// series counts the label sets of a metric family.
func series(t *testing.T, reg *prometheus.Registry, name string) map[string]int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "bot" {
					out[l.GetValue()]++
				}
			}
		}
	}
	return out
}

// A payload may name any bot: names the worker does not know share one
// label, so the number of series stays bounded whatever producers send.
func TestUnknownBotsShareOneLabel(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, nil, nil)
	m.Bot("")
	m.Bot("alerts")
	for i := range 500 {
		bot := fmt.Sprintf("bot-%d-%060d", i, i)
		m.Outcome(bot, tasks.Outcome("permanent"))
		m.Attempt(bot, &webex.APIError{StatusCode: 1000 + i})
		m.Throttled(bot, "cooldown")
		m.TokenRejected(bot, true)
	}
	m.Outcome("alerts", tasks.Delivered)
	m.Outcome("", tasks.Delivered)
	m.Attempt("alerts", errors.New("boom"))
	for _, name := range []string{"courier_deliveries_total", "courier_webex_attempts_total", "courier_gate_held_total", "courier_bot_token_rejected"} {
		got := series(t, reg, name)
		for bot := range got {
			if bot != "default" && bot != "alerts" && bot != metrics.UnknownBot {
				t.Errorf("%s: bot label %q", name, bot)
			}
		}
	}
	if got := series(t, reg, "courier_webex_attempts_total"); got[metrics.UnknownBot] != 1 {
		t.Errorf("attempts of unknown bots: %d series, want 1 (status codes out of range are \"other\")", got[metrics.UnknownBot])
	}
}
