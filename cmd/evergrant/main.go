// Command evergrant is OAuth for the Model Context Protocol that keeps
// working through token expiry.
//
// Usage:
//
//	evergrant <command> [flags]
//
// Commands:
//
//	demo     play the whole refresh story on this machine
//	serve    run the authorization server, an MCP server and a fake upstream on loopback
//	login    sign in to an MCP server and keep the grant
//	logout   revoke and forget the grant for an MCP server
//	status   list the grants on disk (never the tokens)
//	tools    list the tools of an MCP server
//	call     call a tool of an MCP server
//	bridge   serve a remote MCP server on stdio, refreshing silently
//	check    test an MCP client or server against the refresh and challenge rules
//	version  print the version
//
// Exit codes: 0 success, 1 failure, 2 usage error, 3 a new sign-in is
// needed. Run "evergrant <command> --help" for a command's flags.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"demo", "play the whole refresh story on this machine", runDemo},
		{"serve", "run the authorization server, an MCP server and a fake upstream on loopback", runServe},
		{"login", "sign in to an MCP server and keep the grant", runLogin},
		{"logout", "revoke and forget the grant for an MCP server", runLogout},
		{"status", "list the grants on disk (never the tokens)", runStatus},
		{"tools", "list the tools of an MCP server", runTools},
		{"call", "call a tool of an MCP server", runCall},
		{"bridge", "serve a remote MCP server on stdio, refreshing silently", runBridge},
		{"check", "test an MCP client or server against the refresh and challenge rules", runCheck},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "evergrant: OAuth for MCP that keeps working.\n\nUsage:\n  evergrant <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nExit codes: 0 success, 1 failure, 2 usage error, 3 a new sign-in is needed.\n")
	fmt.Fprintf(w, "\nRun \"evergrant <command> --help\" for a command's flags.\n")
}

// run is the whole program, without process globals, so tests can call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	case "-version", "--version":
		return runVersion(ctx, args[1:], stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "evergrant: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

// parseFlags parses args with fs, printing errors and help to stderr. It
// returns ok=false with the exit code to use when the program should stop.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	// The flag package prints usage and errors itself; send help to stdout
	// and errors to stderr.
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		stdout.Write(buf.Bytes())
		return exitOK, false
	case err != nil:
		stderr.Write(buf.Bytes())
		return exitUsage, false
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "evergrant %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return 0, true
}
