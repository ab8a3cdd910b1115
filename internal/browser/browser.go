// Package browser opens URLs in the user's system browser. It is a concern
// of programs that sign people in (the CLI, the examples), not of the
// client library, whose LoopbackAuthorizer uses it only when its host
// gives no other way to show the authorization URL.
package browser

import (
	"fmt"
	"os/exec"
	"runtime"
)

// Open opens u in the system browser and returns without waiting for it.
func Open(u string) error {
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("open the browser: %w", err)
	}
	go cmd.Wait()
	return nil
}
