package worker_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The production worker stays lean (the memory goal): its binary links
// neither asynqmon's web app nor dev mode's embedded Redis and simulator;
// cmd/monitor and cmd/dev carry them.
func TestWorkerBinaryLeavesOutUIAndDevMode(t *testing.T) {
	t.Parallel()
	deps := func(pkg string) string {
		out, err := exec.Command("go", "list", "-deps", "github.com/courier-dev/courier/"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		return string(out)
	}
	heavy := []string{"github.com/hibiken/asynqmon", "github.com/alicebob/miniredis/v2",
		"github.com/courier-dev/courier/pkg/webex/webextest", "github.com/courier-dev/courier/internal/monitor", "github.com/courier-dev/courier/internal/devmode"}
	worker, dev := deps("cmd/worker"), deps("cmd/dev")
	for _, p := range heavy {
		if strings.Contains(worker, p+"\n") {
			t.Errorf("cmd/worker links %s", p)
		}
		if !strings.Contains(dev, p+"\n") {
			t.Errorf("cmd/dev does not link %s: is this list still the heavy parts?", p)
		}
	}
	if !strings.Contains(deps("cmd/monitor"), "github.com/hibiken/asynqmon\n") {
		t.Error("cmd/monitor does not link asynqmon")
	}
}
