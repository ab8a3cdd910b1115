package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/bridge"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

const bridgeUsage = `Usage: evergrant bridge [flags] URL

Serves the remote MCP server at URL (streamable HTTP) to a host on stdio
(newline-delimited JSON-RPC on stdin and stdout), forwarding every message
both ways: requests, responses and notifications, including the server's own
requests and notifications on its event streams.

It uses the grant "evergrant login URL" stored, and refreshes it silently
when the access token expires or the server rejects it; it never opens a
browser. When a new sign-in is needed, the pending request gets a JSON-RPC
error (code -32061) whose message says which command to run and whose data
is {"reason": "needs_reauth", ...}; the bridge keeps running, and requests
succeed again once you have signed in from a terminal. Several bridges for
the same server share one grant and refresh it once.

If the server forgets the session (it restarted, say), the bridge opens a
new one, initializing it as the host did. Logs go to stderr only.

Exit codes: 0 stdin closed (or interrupted), 1 stdin could not be read (a
line over 16 MiB), 2 usage error.

In a host's configuration (Claude Desktop and most others):

  {
    "mcpServers": {
      "example": {
        "command": "evergrant",
        "args": ["bridge", "https://mcp.example.com/mcp"]
      }
    }
  }

Flags:
`

func runBridge(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return bridgeMain(ctx, args, os.Stdin, stdout, stderr)
}

// bridgeMain is the bridge command with its stdin as a parameter, so tests
// can run it in-process.
func bridgeMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	var g globalFlags
	// The bridge's stderr is the host's log, and the only place where a
	// missing sign-in or an unreadable grant shows before a request fails.
	g.registerLevel(fs, "warn")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), bridgeUsage)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 1, 1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL := pos[0]
	if err := checkServerURL(serverURL); err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	logger, err := g.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	key, err := client.ServerKey(serverURL)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	st, err := g.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitError
	}
	defer st.Close()
	hint := loginHint(serverURL, &g)
	tlog := logger // the Transport names the server itself
	logger = logger.With("server", serverURL)
	if gr, err := st.Load(ctx, key); errors.Is(err, store.ErrNotFound) || err == nil && gr.AccessToken == "" && gr.RefreshToken == "" {
		logger.Warn("no sign-in stored for this server: requests will fail until you sign in", "hint", hint)
	} else if err != nil {
		logger.Warn("cannot read the stored grant", "error", err)
	}

	tr := client.NewTransport(client.Config{
		Store:  st,
		Logger: tlog,
		OnNeedsReauth: func(e *client.NeedsReauthError) {
			logger.Error("needs_reauth: "+hint, "reason", e.Reason, "error_code", e.ErrorCode)
		},
	})
	err = bridge.New(bridge.Config{
		URL:          serverURL,
		Transport:    tr,
		Logger:       logger,
		LoginCommand: bridgeLoginCommand(serverURL, &g),
	}).Serve(ctx, stdin, stdout)
	code = exitOK
	if err != nil && ctx.Err() == nil {
		code = exitError // the bridge logged why
	}
	// A refresh still running in the background must be saved before the
	// process exits, or a rotated refresh token is lost.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionWaitTimeout)
	defer cancel()
	switch err := tr.Wait(wctx); {
	case errors.Is(err, client.ErrGrantNotSaved):
		logger.Warn("the refreshed tokens could not be written to the grant store; they are lost as the bridge exits",
			"store", st.where, "error", err)
	case err != nil:
		logger.Warn("exiting while a refresh is still running; its result may be lost", "error", err)
	}
	return code
}

// bridgeLoginCommand returns the bridge's bridge.Config.LoginCommand: the
// "evergrant login" command of the sign-in hints of the other commands
// (reportSessionError), naming the config dir when it is not the default.
func bridgeLoginCommand(serverURL string, g *globalFlags) func(bridge.SignIn) string {
	return func(s bridge.SignIn) string {
		var flags []string
		if s.NewClient {
			flags = append(flags, "--new-client")
		}
		if len(s.Scopes) > 0 {
			flags = append(flags, "--scope", shellQuote(oauth.FormatScope(s.Scopes)))
		}
		return strings.TrimPrefix(loginHint(serverURL, g, flags...), "sign in again with: ")
	}
}
