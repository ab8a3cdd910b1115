package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/evergrant/evergrant/internal/check"
)

// runCheck is `evergrant check client|server`.
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const usageText = `Usage:
  evergrant check client [flags] -- CMD [ARGS...]
  evergrant check server [flags] URL

check client runs CMD as the official MCP conformance suite runs clients
(the server URL appended as the last argument, MCP_CONFORMANCE_SCENARIO and
MCP_CONFORMANCE_CONTEXT in the environment, authorization by following the
redirect of the authorization URL) against a test server per refresh rule
(docs/design.md#client-rules), and judges what it did from the outside.

check server probes a live MCP server: its challenges (RFC 6750 §3, RFC 9728
§5.1), its metadata, and with --token what it answers to a good token.

Both print a table (--json for data) and exit 1 when a scenario fails. The
RULE column names what a scenario checks: for check client, the rule's
anchor in docs/design.md (client-rule-1 is docs/design.md#client-rule-1); for
check server, the sections of the RFCs.

Run "evergrant check client --help" or "evergrant check server --help".
`
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "client":
		return runCheckClient(ctx, args[1:], stdout, stderr)
	case "server":
		return runCheckServer(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	fmt.Fprintf(stderr, "evergrant check: unknown target %q (want client or server)\n\n%s", args[0], usageText)
	return exitUsage
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func writeReport(rep *check.Report, asJSON bool, stdout io.Writer) int {
	var err error
	if asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return exitError
	}
	if rep.Failed() {
		return exitError
	}
	return exitOK
}

func runCheckClient(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check client", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	var scenarios listFlag
	fs.Var(&scenarios, "scenario", "run only this scenario (repeatable); see --list")
	timeout := fs.Duration("timeout", check.DefaultClientTimeout, "time limit for the client in each scenario")
	parallel := fs.Int("parallel", 2, "scenarios run at once")
	verbose := fs.Bool("verbose", false, "show the client's output, prefixed with the scenario")
	list := fs.Bool("list", false, "list the scenarios and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: evergrant check client [flags] -- CMD [ARGS...]\n\nRuns CMD against a test server per refresh rule and judges it from the outside.\nThe RULE column names anchors in docs/design.md (client-rule-1 is docs/design.md#client-rule-1).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	// Everything after "--" is the command.
	var command []string
	for i, a := range args {
		if a == "--" {
			command, args = args[i+1:], args[:i]
			break
		}
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *list {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SCENARIO\tRULE\tCHECKS")
		for _, s := range check.ClientScenarios() {
			summary := s.Summary
			if s.Informational {
				summary += " (informational)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Rule, summary)
		}
		tw.Flush()
		return exitOK
	}
	if len(command) == 0 {
		fmt.Fprintln(stderr, "evergrant check client: give the client command after --, e.g. evergrant check client -- ./my-client --flag")
		return exitUsage
	}
	opts := check.ClientOptions{
		Command: command, Scenarios: scenarios, Timeout: *timeout, Parallel: *parallel,
		OnResult: func(r check.Result) {
			fmt.Fprintf(stderr, "%-4s %s\n", strings.ToUpper(string(r.Outcome)), r.Scenario)
		},
	}
	if *verbose {
		opts.Stderr = stderr
	}
	rep, err := check.CheckClient(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant check client: %v\n", err)
		return exitUsage
	}
	return writeReport(rep, *asJSON, stdout)
}

func runCheckServer(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check server", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	var scenarios listFlag
	fs.Var(&scenarios, "scenario", "run only this scenario or group (challenge, metadata, token); repeatable; see --list")
	token := fs.String("token", "", "a valid access token for the token/* probes (better: the EVERGRANT_CHECK_TOKEN environment variable, which stays out of shell history)")
	scopeProbe := fs.String("scope-probe", "", "a tool name, or a JSON-RPC request {\"method\":…,\"params\":…}, that needs a scope the token lacks")
	timeout := fs.Duration("timeout", check.DefaultServerTimeout, "time limit for each request")
	list := fs.Bool("list", false, "list the scenarios and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: evergrant check server [flags] URL\n\nProbes the MCP server at URL from the outside.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 0, 1, stdout, stderr)
	if !ok {
		return code
	}
	if *list {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SCENARIO\tRULE\tCHECKS")
		for _, s := range check.ServerScenarios() {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Rule, s.Summary)
		}
		tw.Flush()
		return exitOK
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "evergrant check server: give the MCP server URL, e.g. evergrant check server http://127.0.0.1:8400/mcp")
		return exitUsage
	}
	tok := *token
	if tok == "" {
		tok = os.Getenv("EVERGRANT_CHECK_TOKEN")
	}
	rep, err := check.CheckServer(ctx, check.ServerOptions{
		URL: pos[0], Token: tok, ScopeProbe: *scopeProbe, Scenarios: scenarios, Timeout: *timeout,
	})
	if err != nil && rep == nil {
		fmt.Fprintf(stderr, "evergrant check server: %v\n", err)
		return exitUsage
	}
	return writeReport(rep, *asJSON, stdout)
}
