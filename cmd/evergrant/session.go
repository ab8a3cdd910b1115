package main

// Helpers shared by the commands that talk to an MCP server with a stored
// grant (tools, call, and bridge may reuse them): argument parsing with
// flags anywhere on the line, the server URL check, and an official-Go-SDK
// session whose HTTP client is evergrant's refreshing Transport on the
// file store.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// parseArgs parses args with fs, allowing flags before, between and after
// the positional arguments (evergrant call URL TOOL q=x --json); after
// "--" everything is positional. It checks that there are between min and
// max positional arguments (max < 0: no limit) and prints help (on stdout)
// or errors (on stderr) itself. It returns ok=false with the exit code to
// use when the command should stop.
func parseArgs(fs *flag.FlagSet, args []string, min, max int, stdout, stderr io.Writer) (pos []string, code int, ok bool) {
	var buf strings.Builder
	fs.SetOutput(&buf)
	defer fs.SetOutput(stderr)
	for {
		err := fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			io.WriteString(stdout, buf.String())
			return nil, exitOK, false
		case err != nil:
			io.WriteString(stderr, buf.String())
			return nil, exitUsage, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// Parse stops at the first non-flag, or after consuming "--".
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch {
	case len(pos) < min:
		// The first line of the command's help is its synopsis.
		var help strings.Builder
		fs.SetOutput(&help)
		fs.Usage()
		synopsis, _, _ := strings.Cut(help.String(), "\n")
		fmt.Fprintf(stderr, "evergrant %s: missing arguments\n%s\nRun \"evergrant %s --help\" for more.\n", fs.Name(), synopsis, fs.Name())
		return nil, exitUsage, false
	case max >= 0 && len(pos) > max:
		fmt.Fprintf(stderr, "evergrant %s: unexpected argument %q\n", fs.Name(), pos[max])
		return nil, exitUsage, false
	}
	return pos, exitOK, true
}

// checkServerURL checks that raw is the URL of an MCP server the client
// can talk to: absolute, https or http on a loopback host, without
// userinfo or fragment.
func checkServerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("server URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("server URL %q: want an http:// or https:// URL, such as https://mcp.example.com/mcp", raw)
	}
	if err := oauth.CheckEndpointURL(raw); err != nil {
		return fmt.Errorf("server URL: %w", err)
	}
	return nil
}

// sessionConfig says how to connect to an MCP server.
type sessionConfig struct {
	// Store keeps the grants: the --config-dir file store.
	Store store.Store
	// Authorizer signs in interactively when there is no usable grant.
	// Nil (tools, call, bridge) means never: a missing or dead grant gives
	// a *client.NeedsReauthError, reported with the "evergrant login" hint.
	Authorizer client.Authorizer
	// Logger receives the Transport's records (refreshes, sign-ins).
	Logger *slog.Logger
	// Where names the store in messages (never with a password).
	Where string
	// Scopes are asked for in addition to the ones the server names, when
	// Authorizer signs in.
	Scopes []string
	// StandaloneStream keeps the SDK's GET event stream open for
	// server-initiated messages. One-shot commands leave it off: they
	// want only the answers to their own requests.
	StandaloneStream bool
	// ClientOptions are the SDK client's options (handlers for
	// server-initiated requests and notifications); nil means none.
	ClientOptions *mcp.ClientOptions
	// Base sends the HTTP requests; nil means http.DefaultTransport.
	Base http.RoundTripper
}

// newTransport returns the refreshing Transport for cfg and a
// ReauthRecorder on top of it (see client.ReauthRecorder: the SDK loses
// the NeedsReauthError of a failed background stream; the recorder keeps
// it). Use the recorder as the http.Client's Transport.
func newTransport(cfg sessionConfig) (*client.Transport, *client.ReauthRecorder) {
	tr := client.NewTransport(client.Config{
		Base:       cfg.Base,
		Store:      cfg.Store,
		Authorizer: cfg.Authorizer,
		Scopes:     cfg.Scopes,
		Logger:     cfg.Logger,
	})
	return tr, client.NewReauthRecorder(tr)
}

// session is an official-Go-SDK client session to one MCP server, with
// the Transport and ReauthRecorder under it.
type session struct {
	*mcp.ClientSession
	Transport *client.Transport
	Recorder  *client.ReauthRecorder
	where     string // the grant store, for messages
}

// connectSession connects to the MCP server at serverURL with cfg. Errors,
// of the connection and of s.Err, keep a NeedsReauthError findable with
// errors.As even where the SDK formatted it away, so reportSessionError
// can print the sign-in hint. Close the session when done.
func connectSession(ctx context.Context, serverURL string, cfg sessionConfig) (*session, error) {
	tr, rec := newTransport(cfg)
	t := &mcp.StreamableClientTransport{
		Endpoint:             serverURL,
		HTTPClient:           &http.Client{Transport: rec},
		DisableStandaloneSSE: !cfg.StandaloneStream,
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant", Version: version}, cfg.ClientOptions)
	cs, err := c.Connect(ctx, t, nil)
	if err != nil {
		return nil, rec.Err(err)
	}
	return &session{ClientSession: cs, Transport: tr, Recorder: rec, where: cfg.Where}, nil
}

// sessionWaitTimeout bounds how long a command waits, when it is done, for
// a refresh the Transport started in the background: as long as such a
// refresh may take (client.DefaultRefreshTimeout) and its save after it.
// Giving up earlier could lose a refresh token the authorization server
// has already rotated.
const sessionWaitTimeout = client.DefaultRefreshTimeout + 15*time.Second

// Close ends the MCP session, then waits (at most sessionWaitTimeout) for
// a refresh the Transport runs in the background, so that a refresh token
// the authorization server rotated is saved before the command exits.
//
// When a refreshed grant could not be saved (client.ErrGrantNotSaved),
// Close returns that error: the new tokens are lost when the process
// exits.
func (s *session) Close() error {
	err := s.ClientSession.Close()
	ctx, cancel := context.WithTimeout(context.Background(), sessionWaitTimeout)
	defer cancel()
	if werr := s.Transport.Wait(ctx); errors.Is(werr, client.ErrGrantNotSaved) {
		return werr
	}
	return err
}

// closeSession closes sess at the end of cmd, whose exit code is code: a
// refreshed grant that could not be saved turns success into failure,
// with a message that says so and where the store is.
func closeSession(sess *session, stderr io.Writer, cmd string, code int) int {
	err := sess.Close()
	if !errors.Is(err, client.ErrGrantNotSaved) {
		return code
	}
	fmt.Fprintf(stderr, "evergrant %s: the refreshed tokens could not be written to %s: %v\n"+
		"evergrant %s: they are lost when this command exits; the next command may need a new sign-in\n", cmd, sess.where, err, cmd)
	if code == exitOK {
		return exitError
	}
	return code
}

// Err returns err with the NeedsReauthError the session recorded, if any,
// findable with errors.As (see client.ReauthRecorder.Err).
func (s *session) Err(err error) error { return s.Recorder.Err(err) }

// reportSessionError prints err for cmd and returns the exit code. Like
// reportError (3 with the sign-in hint for a NeedsReauthError, 1
// otherwise), with two more precise hints: for a refresh refused with
// invalid_client (the authorization server forgot the registration) the
// hint adds --new-client, and a 403 insufficient_scope is also 3, with a
// hint that asks for the missing scopes.
func reportSessionError(stderr io.Writer, cmd, serverURL string, g *globalFlags, err error) int {
	var ne *client.NeedsReauthError
	var se *client.InsufficientScopeError
	if errors.As(err, &ne) && ne.ErrorCode == oauth.ErrorInvalidClient {
		// The authorization server no longer knows the client
		// registration: a plain login would reuse it and fail.
		fmt.Fprintf(stderr, "evergrant %s: needs_reauth: %s (%s: the authorization server no longer knows this client)\n%s\n",
			cmd, ne.Server, ne.Reason, loginHint(serverURL, g, "--new-client"))
		return exitNeedsReauth
	}
	if !errors.As(err, &ne) && errors.As(err, &se) {
		fmt.Fprintf(stderr, "evergrant %s: %v\n%s\n",
			cmd, se, loginHint(serverURL, g, "--scope", shellQuote(oauth.FormatScope(union(se.Granted, se.Required)))))
		return exitNeedsReauth
	}
	return reportError(stderr, cmd, serverURL, g, err)
}

// union returns a followed by the elements of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
