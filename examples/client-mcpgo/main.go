// Command client-mcpgo lists the tools of an OAuth-protected MCP server
// with mcp-go and evergrant's client.Transport:
//
//	go run ./examples/client-mcpgo https://mcp.example.com/mcp
//
// The first run opens the browser to sign in (the redirect comes back to a
// listener on 127.0.0.1). The grant is kept where the evergrant CLI keeps
// it (store.DefaultDir, e.g. ~/.config/evergrant), so later runs and the
// CLI reuse it, and an expired access token is refreshed silently. When
// the grant is gone for good (its refresh token was revoked or expired) the
// program says so and exits with status 3.
//
// mcp-go gets the Transport through transport.WithHTTPBasicClient; do not
// also configure mcp-go's own OAuth (WithHTTPOAuth). mcp-go wraps the
// Transport's errors with %w, so errors.As finds a NeedsReauthError. The
// ReauthRecorder around the Transport only makes the reason precise: when
// server/discover fails, mcp-go falls back to initialize, whose error
// (no_refresh_token) hides the cause (refresh_rejected) that rec.Err keeps.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	mcpclient "github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/browser"
	"github.com/evergrant/evergrant/store"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitNeedsReauth = 3
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: client-mcpgo MCP-SERVER-URL\n\nLists the tools of an OAuth-protected MCP server (mcp-go).\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(exitUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := start(ctx, flag.Arg(0))
	stop()
	os.Exit(code)
}

// start opens the grant store and the browser sign-in, then runs.
func start(ctx context.Context, serverURL string) int {
	dir, err := store.DefaultDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return exitError
	}
	grants, err := store.OpenFile(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return exitError
	}
	signin, err := client.NewLoopbackAuthorizer("127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return exitError
	}
	defer signin.Close()
	signin.Open = func(authURL string) error {
		fmt.Fprintf(os.Stderr, "Sign in with your browser. If it does not open, visit:\n\n  %s\n\n", authURL)
		if err := browser.Open(authURL); err != nil {
			fmt.Fprintln(os.Stderr, "(could not open a browser:", err, ")")
		}
		return nil
	}
	return run(ctx, serverURL, client.Config{Store: grants, Authorizer: signin}, os.Stdout, os.Stderr)
}

// run connects to serverURL, prints one line per tool and returns the exit
// code.
func run(ctx context.Context, serverURL string, cfg client.Config, stdout, stderr io.Writer) int {
	t := client.NewTransport(cfg)
	// Runs last: a refresh the Transport started in the background must be
	// saved before the program exits, or a rotated refresh token is lost.
	defer t.Wait(context.WithoutCancel(ctx))
	rec := client.NewReauthRecorder(t)

	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute) // room for the sign-in
	defer cancel()
	c, err := mcpclient.NewStreamableHttpClient(serverURL,
		transport.WithHTTPBasicClient(&http.Client{Transport: rec}),
		transport.WithHTTPLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		return report(stderr, "client", err)
	}
	defer c.Close()
	if err := c.Start(ctx); err != nil {
		return report(stderr, "start", rec.Err(err))
	}
	if _, err := c.Initialize(ctx, mcp.InitializeRequest{Params: mcp.InitializeParams{
		ClientInfo: mcp.Implementation{Name: "evergrant-example-mcpgo", Version: "0.1.0"},
	}}); err != nil {
		return report(stderr, "initialize", rec.Err(err))
	}
	tools, err := c.ListTools(ctx, mcp.ListToolsRequest{})
	if err != nil {
		return report(stderr, "list tools", rec.Err(err))
	}
	for _, tool := range tools.Tools {
		fmt.Fprintf(stdout, "%s\t%s\n", tool.Name, tool.Description)
	}
	return exitOK
}

// report prints err, telling a lost grant apart from other failures.
func report(w io.Writer, what string, err error) int {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		fmt.Fprintf(w, "You need to sign in to %s again (%s", ne.Server, ne.Reason)
		if ne.ErrorCode != "" {
			fmt.Fprintf(w, ": %s", ne.ErrorCode)
		}
		fmt.Fprintln(w, "). Run this program again to sign in.")
		return exitNeedsReauth
	}
	fmt.Fprintf(w, "error: %s: %v\n", what, err)
	return exitError
}
