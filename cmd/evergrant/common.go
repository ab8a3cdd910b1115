package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
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
	// storeURL selects another grant store than the config dir's files:
	// a postgres:// URL shares grants between hosts.
	storeURL string
	logLevel string
}

// register adds the common flags to fs, with the log level "error": a
// command reports its own failures, and the Transport's warnings would only
// repeat them.
func (g *globalFlags) register(fs *flag.FlagSet) { g.registerLevel(fs, "error") }

// registerLevel adds the common flags to fs with the given default log
// level.
func (g *globalFlags) registerLevel(fs *flag.FlagSet, level string) {
	fs.StringVar(&g.configDir, "config-dir", os.Getenv("EVERGRANT_CONFIG_DIR"), "where grants are kept (default: the user config dir/evergrant; env EVERGRANT_CONFIG_DIR)")
	fs.StringVar(&g.storeURL, "store", os.Getenv("EVERGRANT_STORE"), "where grants are kept instead of --config-dir: a postgres:// URL shares them, and one refresh per grant, between hosts (env EVERGRANT_STORE)")
	fs.StringVar(&g.logLevel, "log-level", level, "log level on stderr: debug, info, warn or error")
}

// grantStore is the store a command keeps grants in.
type grantStore struct {
	store.Store
	// where names it in messages, never with a password.
	where string
	close func()
}

// Close releases the store.
func (s *grantStore) Close() {
	if s.close != nil {
		s.close()
	}
}

// openStore opens the grant store: --store when set, else the files of
// the config dir.
func (g *globalFlags) openStore(ctx context.Context) (*grantStore, error) {
	if g.storeURL != "" {
		u, err := url.Parse(g.storeURL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, errors.New("--store: want a postgres:// URL")
		}
		pg, err := store.OpenPostgres(ctx, g.storeURL, nil)
		if err != nil {
			return nil, fmt.Errorf("--store: %w", err)
		}
		return &grantStore{Store: pg, where: redactURL(u), close: func() { pg.Close() }}, nil
	}
	dir := g.configDir
	if dir == "" {
		var err error
		if dir, err = store.DefaultDir(); err != nil {
			return nil, fmt.Errorf("config dir: %w", err)
		}
	}
	f, err := store.OpenFile(dir)
	if err != nil {
		return nil, err
	}
	return &grantStore{Store: f, where: f.Dir()}, nil
}

// redactURL is u without its password, for messages and hints.
func redactURL(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User(c.User.Username())
	}
	return c.String()
}

// hintFlags are the global flags a sign-in hint repeats, so that the
// command signs in to the same store: --config-dir when it is not the
// default, --store (without its password) when set.
func (g *globalFlags) hintFlags() []string {
	var flags []string
	if g.storeURL != "" {
		where := "postgres://…"
		if u, err := url.Parse(g.storeURL); err == nil {
			where = redactURL(u)
		}
		flags = append(flags, "--store", shellQuote(where))
	}
	if g.configDir != "" && g.storeURL == "" {
		flags = append(flags, "--config-dir", shellQuote(g.configDir))
	}
	return flags
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

// loginHint is the sign-in command for serverURL with extra flags, naming
// the grant store (g.hintFlags) when it is not the default one: the
// terminal the user types it in may not have the host's environment.
func loginHint(serverURL string, g *globalFlags, flags ...string) string {
	flags = append(flags, g.hintFlags()...)
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
// the sign-in hint for a NeedsReauthError, 1 otherwise. g holds the
// global flags the command ran with, repeated in the hint.
func reportError(stderr io.Writer, cmd, serverURL string, g *globalFlags, err error) int {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		fmt.Fprintf(stderr, "evergrant %s: needs_reauth: %s (%s)\n%s\n", cmd, ne.Server, ne.Reason, loginHint(serverURL, g))
		return exitNeedsReauth
	}
	fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
	return exitError
}
