package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/store"
)

// exitNeedsReauth is the exit code of a command that cannot go on until
// the user signs in again.
const exitNeedsReauth = 3

// globalFlags are the flags every command that touches grants has.
type globalFlags struct {
	configDir string
	logLevel  string
}

// register adds the common flags to fs.
func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.configDir, "config-dir", os.Getenv("EVERGRANT_CONFIG_DIR"), "where grants are kept (default: the user config dir/evergrant; env EVERGRANT_CONFIG_DIR)")
	fs.StringVar(&g.logLevel, "log-level", "error", "log level on stderr: debug, info, warn or error")
}

// openStore opens the grant store of the config dir.
func (g *globalFlags) openStore() (*store.File, error) {
	dir := g.configDir
	if dir == "" {
		var err error
		if dir, err = store.DefaultDir(); err != nil {
			return nil, fmt.Errorf("config dir: %w", err)
		}
	}
	return store.OpenFile(dir)
}

// logger returns a text logger on stderr at the chosen level.
func (g *globalFlags) logger(stderr io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})), nil
}

// reauthHint is what to tell a person whose grant for serverURL is gone.
func reauthHint(serverURL string) string {
	return "sign in again with: evergrant login " + serverURL
}

// reportError prints err for a command and returns the exit code: 3 with
// the sign-in hint for a NeedsReauthError, 1 otherwise.
func reportError(stderr io.Writer, cmd, serverURL string, err error) int {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		fmt.Fprintf(stderr, "evergrant %s: needs_reauth: %s (%s)\n%s\n", cmd, ne.Server, ne.Reason, reauthHint(serverURL))
		return exitNeedsReauth
	}
	fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
	return exitError
}
