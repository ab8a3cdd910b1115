// Command client-gosdk lists the tools of an OAuth-protected MCP server
// with the official Go SDK and evergrant's client.Transport:
//
//	go run ./examples/client-gosdk https://mcp.example.com/mcp
//
// The first run opens the browser to sign in (the redirect comes back to a
// listener on 127.0.0.1). The grant is kept where the evergrant CLI keeps
// it (store.DefaultDir, e.g. ~/.config/evergrant), so later runs and the
// CLI reuse it, and an expired access token is refreshed silently. When
// the grant is gone for good (its refresh token was revoked or expired) the
// program says so and exits with status 3.
//
// The one line that matters is the http.Client the SDK gets:
// &http.Client{Transport: t}. The ReauthRecorder around t is only needed
// to read a NeedsReauthError that the SDK lost on its background event
// stream, and to keep the first reason of a failure (when server/discover
// fails the SDK falls back to initialize, whose error hides the cause); on
// the request path (Connect, ListTools, CallTool) errors.As finds a
// NeedsReauthError without help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

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
		fmt.Fprintf(flag.CommandLine.Output(), "usage: client-gosdk MCP-SERVER-URL\n\nLists the tools of an OAuth-protected MCP server (official Go SDK).\n")
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
	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-example-gosdk", Version: "0.1.0"}, nil)
	session, err := c.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint:   serverURL,
		HTTPClient: &http.Client{Transport: rec},
	}, nil)
	if err != nil {
		return report(stderr, "connect", rec.Err(err))
	}
	defer session.Close()

	for tool, err := range session.Tools(ctx, nil) {
		if err != nil {
			return report(stderr, "list tools", rec.Err(err))
		}
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
