//go:build linux

package redistest

import "syscall"

// sysProcAttr asks the kernel to kill redis-server if the test binary dies
// without running its cleanups (a -timeout panic, a SIGKILL), so CI machines
// are not left with orphan servers.
//
// Pdeathsig fires when the OS thread that forked the child exits, not the
// process; Go only ends a thread when a goroutine exits while locked to it
// (runtime.LockOSThread), which tests here do not do.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
