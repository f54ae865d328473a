package worker

import "syscall"

// procSelfExe names the running executable's own file (see selfExe).
const procSelfExe = "/proc/self/exe"

// childAttr makes the kernel kill an isolated delivery process when the
// worker that started it dies, even one that is stopped (SIGSTOP, a frozen
// cgroup) or stuck in a request, so that it never outlives the worker's
// lease. The signal follows the thread that started the process: the
// handler keeps that goroutine locked to its thread until the process ends
// (tasks' isolate).
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
