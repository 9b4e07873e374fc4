//go:build linux

package main

import "syscall"

// sysProcAttr puts a child in its own process group, so a Ctrl-C in the
// terminal reaches only the benchmark, which then stops the bridge and Redis
// in order (and still measures the shutdown). Pdeathsig makes the kernel kill
// the child if the benchmark dies without cleaning up (kill -9), so no
// redis-server or bridge is left behind.
//
// Pdeathsig fires when the forking OS thread exits; the Go runtime only
// retires threads locked with runtime.LockOSThread, which this program does
// not use.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
