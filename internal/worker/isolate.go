package worker

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

// IsolatedEnv, set in a worker process's environment, makes it an isolated
// delivery process: it serves one delivery over its standard input and
// output (tasks.Worker.ServeIsolated) and exits. The worker sets it on the
// copy of itself it starts for a suspect task (tasks.WorkerConfig.Isolate).
const IsolatedEnv = "COURIER_ISOLATED_DELIVERY"

// CrashRoomEnv is a test hook: a worker process (or isolated delivery
// process) that is about to send to this room crashes at once, as a
// message that kills its worker would make it. Unset in production.
const CrashRoomEnv = "COURIER_TEST_CRASH_ROOM"

// Isolation sets up isolated deliveries for the worker binary: a suspect
// task is delivered by a copy of this executable run with args and
// IsolatedEnv. It reads IsolatedEnv and CrashRoomEnv from lookupEnv. Dev
// mode delivers every task in the worker.
func (c *Config) Isolation(args []string, lookupEnv func(string) (string, bool)) {
	if v, ok := lookupEnv(IsolatedEnv); ok && v != "" {
		c.isolated = true
	}
	c.crashRoom, _ = lookupEnv(CrashRoomEnv)
	if c.Dev || c.isolated {
		return
	}
	exe := selfExe()
	c.isolate = func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = isolatedEnv(os.Environ())
		cmd.Stderr = os.Stderr // its records join the worker's
		cmd.SysProcAttr = childAttr()
		return cmd
	}
}

// isolatedEnv is an isolated delivery's environment: the worker's, with
// IsolatedEnv set and without the secrets of the parts it does not run
// (the admin server's password, the relay's tokens), so that a message that
// takes over its process finds only what delivering needs.
func isolatedEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(isolatedLeaveOut, k) && k != IsolatedEnv {
			out = append(out, kv)
		}
	}
	return append(out, IsolatedEnv+"=1")
}

// isolatedLeaveOut are the variables an isolated delivery does not get.
var isolatedLeaveOut = []string{"COURIER_ADMIN_PASSWORD", "COURIER_ADMIN_PASSWORD_FILE", "COURIER_RELAY_TOKENS", "COURIER_RELAY_TOKENS_FILE"}

// selfExe is the running worker's own executable. Where the kernel offers
// it (Linux's /proc/self/exe) that is the very file this process runs, even
// after an upgrade replaced or removed the file at its path: an isolated
// delivery is always the same version as its worker, speaking the same
// protocol and taking the same flags.
func selfExe() string {
	if procSelfExe != "" {
		if _, err := os.Stat(procSelfExe); err == nil {
			return procSelfExe
		}
	}
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return exe
}

// crashSender is the CrashRoomEnv hook.
type crashSender struct {
	tasks.Sender
	room string
}

func (s crashSender) CreateMessage(ctx context.Context, m webex.Message) (*webex.Sent, error) {
	if m.RoomID == s.room {
		crashed := make(chan struct{})
		go func() { panic("test hook: a message to " + s.room + " crashes its worker") }()
		<-crashed
	}
	return s.Sender.CreateMessage(ctx, m)
}
