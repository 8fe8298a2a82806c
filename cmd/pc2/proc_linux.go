package main

import "syscall"

// childProcAttr puts a devnet child in its own process group and asks the
// kernel to stop it if the devnet dies without cleaning up (kill -9).
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
