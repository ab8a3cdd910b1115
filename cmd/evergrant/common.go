package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

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

// register adds the common flags to fs, with the log level "error": a
// command reports its own failures, and the Transport's warnings would only
// repeat them.
func (g *globalFlags) register(fs *flag.FlagSet) { g.registerLevel(fs, "error") }

// registerLevel adds the common flags to fs with the given default log
// level.
func (g *globalFlags) registerLevel(fs *flag.FlagSet, level string) {
	fs.StringVar(&g.configDir, "config-dir", os.Getenv("EVERGRANT_CONFIG_DIR"), "where grants are kept (default: the user config dir/evergrant; env EVERGRANT_CONFIG_DIR)")
	fs.StringVar(&g.logLevel, "log-level", level, "log level on stderr: debug, info, warn or error")
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

// loginHint is the sign-in command for serverURL with extra flags,
// naming the config dir when it is not the default one: the terminal the
// user types it in may not have the host's environment.
func loginHint(serverURL, configDir string, flags ...string) string {
	if configDir != "" {
		flags = append(flags, "--config-dir", shellQuote(configDir))
	}
	h := reauthHint(serverURL) // "sign in again with: evergrant login URL"
	if len(flags) == 0 {
		return h
	}
	return strings.Replace(h, "evergrant login ", "evergrant login "+strings.Join(flags, " ")+" ", 1)
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// reportError prints err for a command and returns the exit code: 3 with
// the sign-in hint for a NeedsReauthError, 1 otherwise. configDir is the
// --config-dir the command ran with, repeated in the hint.
func reportError(stderr io.Writer, cmd, serverURL, configDir string, err error) int {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		fmt.Fprintf(stderr, "evergrant %s: needs_reauth: %s (%s)\n%s\n", cmd, ne.Server, ne.Reason, loginHint(serverURL, configDir))
		return exitNeedsReauth
	}
	fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
	return exitError
}
