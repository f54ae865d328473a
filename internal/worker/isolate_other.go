//go:build !linux

package worker

import "syscall"

// procSelfExe: no such file here; selfExe falls back to os.Executable.
const procSelfExe = ""

// childAttr: elsewhere an isolated delivery process that outlives its
// worker stops when it sees its input close.
func childAttr() *syscall.SysProcAttr { return nil }
