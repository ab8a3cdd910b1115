//go:build unix

package check

import (
	"os/exec"
	"syscall"
)

// setProcessGroup runs the client in its own process group, so that a
// client started through a wrapper (npx, a shell script) is killed whole.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// killProcessGroup kills the client and everything in its process group.
func killProcessGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		cmd.Process.Kill()
	}
}
