//go:build unix

package webdriver

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts chromedriver in a process group of its own, so
// Close can stop the Chromium processes it started as well.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// killProcessGroup kills chromedriver's process group.
func killProcessGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		cmd.Process.Kill()
	}
}
