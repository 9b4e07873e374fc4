//go:build !linux

package main

import "syscall"

// sysProcAttr: without Pdeathsig, children are stopped only by the
// benchmark's own cleanup.
func sysProcAttr() *syscall.SysProcAttr { return nil }
