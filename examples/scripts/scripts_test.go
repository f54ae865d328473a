// Package scripts holds the producer examples for other languages; this test
// runs them against a real Redis through the enqueue binary.
package scripts

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/internal/enqueue"
	"github.com/courier-dev/courier/internal/redistest"
)

// TestMain lets the test binary stand in for the enqueue command: building
// cmd/enqueue separately (without -race, so sharing nothing with the test
// build) took most of this package's time in CI.
func TestMain(m *testing.M) {
	if os.Getenv("COURIER_TEST_AS_ENQUEUE") == "1" {
		os.Exit(enqueue.Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil))
	}
	os.Exit(m.Run())
}

func TestScripts(t *testing.T) {
	dir := t.TempDir()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rdb := redistest.Client(t)
	opt := redistest.Options(t)
	url := fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB)
	if u := os.Getenv("REDIS_URL"); u != "" {
		url = u
	}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	alerts := filepath.Join(dir, "alerts.json")
	for _, tc := range []struct{ name, tool, pkg string }{{"notify.sh", "jq", "jq"}, {"notify.py", "python3", "python3"}} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("%s not installed (Debian package %s)", tc.tool, tc.pkg)
			}
			queue := redistest.Name(t)
			t.Cleanup(func() { _ = insp.DeleteQueue(queue, true) })
			data := `[{"id":"a1","room":"ops","title":"Disk full","detail":"/var at 98%"},
			          {"id":"a2","room":"","title":"No room","detail":"invalid"},
			          {"id":"a3","room":"ops","title":"Backup late","detail":"3h behind"}]`
			if err := os.WriteFile(alerts, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			runScript := func() (int, string) {
				var cmd *exec.Cmd
				if tc.tool == "jq" {
					cmd = exec.Command("sh", tc.name, alerts)
				} else {
					cmd = exec.Command("python3", tc.name, alerts)
				}
				// The test's queue goes in through enqueue's --queue default: wrap the binary.
				wrapper := filepath.Join(t.TempDir(), "enqueue-q")
				_ = os.WriteFile(wrapper, []byte("#!/bin/sh\nCOURIER_TEST_AS_ENQUEUE=1 exec "+bin+" --queue "+queue+" \"$@\"\n"), 0o755)
				cmd.Env = append(os.Environ(), "ENQUEUE="+wrapper, "REDIS_URL="+url)
				out, err := cmd.CombinedOutput()
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				return code, string(out)
			}
			code, out := runScript()
			if code != 2 || !strings.Contains(out, "line 2") {
				t.Fatalf("first run: exit %d\n%s", code, out)
			}
			q, err := insp.GetQueueInfo(queue)
			if err != nil || q.Pending != 2 {
				t.Fatalf("pending %+v %v", q, err)
			}
			// A re-run posts nothing twice: the two valid alerts are duplicates.
			code, out = runScript()
			if code != 2 || !(strings.Contains(out, "duplicate alert/a1") || strings.Contains(out, `"duplicates": 2`)) {
				t.Fatalf("re-run: exit %d\n%s", code, out)
			}
			if q, _ := insp.GetQueueInfo(queue); q.Pending != 2 {
				t.Fatalf("re-run enqueued more: %+v", q)
			}
			var payload map[string]any
			tasks, _ := insp.ListPendingTasks(queue)
			_ = json.Unmarshal(tasks[0].Payload, &payload)
			if !strings.Contains(fmt.Sprint(payload), "**") {
				t.Fatalf("payload %v", payload)
			}
		})
	}
}
