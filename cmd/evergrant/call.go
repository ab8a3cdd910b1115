package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
)

// defaultCallTimeout bounds tools and call, sign-in excluded (they never
// sign in).
const defaultCallTimeout = 2 * time.Minute

func runTools(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	fs := flag.NewFlagSet("tools", flag.ContinueOnError)
	var g globalFlags
	g.register(fs)
	asJSON := fs.Bool("json", false, "print the tools as a JSON array of MCP Tool objects (with their input schemas)")
	timeout := fs.Duration("timeout", defaultCallTimeout, "give up after this long (0: never)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: evergrant tools [flags] URL

Lists the tools of the MCP server at URL (name and description), with the
grant stored by "evergrant login URL", refreshing it silently when needed.
It never opens a browser: when a new sign-in is needed it says which
command to run and exits 3.

Exit codes: 0 success, 1 failure, 2 usage error, 3 sign in again.

Flags:
`)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 1, 1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL := pos[0]
	ctx, cfg, cancel, code, ok := prepareSession(ctx, "tools", serverURL, &g, *timeout, stderr)
	if !ok {
		return code
	}
	defer cancel()
	sess, err := connectSession(ctx, serverURL, cfg)
	if err != nil {
		return reportSessionError(stderr, "tools", serverURL, &g, err)
	}
	defer func() { code = closeSession(sess, stderr, "tools", code) }()
	var tools []*mcp.Tool
	for t, err := range sess.Tools(ctx, nil) {
		if err != nil {
			return reportSessionError(stderr, "tools", serverURL, &g, sess.Err(err))
		}
		tools = append(tools, t)
	}
	if *asJSON {
		if tools == nil {
			tools = []*mcp.Tool{}
		}
		return writeJSON(stdout, stderr, "tools", tools)
	}
	if len(tools) == 0 {
		fmt.Fprintf(stdout, "%s has no tools.\n", serverURL)
		return exitOK
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tDESCRIPTION")
	for _, t := range tools {
		desc, _, _ := strings.Cut(strings.TrimSpace(t.Description), "\n")
		fmt.Fprintf(w, "%s\t%s\n", t.Name, orDash(desc))
	}
	w.Flush()
	return exitOK
}

func runCall(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	var g globalFlags
	g.register(fs)
	asJSON := fs.Bool("json", false, "print the whole result as JSON (content, structuredContent, isError)")
	argsJSON := fs.String("args", "", "the tool's arguments as a JSON object; key=value arguments are added to it and win")
	timeout := fs.Duration("timeout", defaultCallTimeout, "give up after this long (0: never)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: evergrant call [flags] URL TOOL [key=value…]

Calls TOOL on the MCP server at URL with the grant stored by
"evergrant login URL", refreshing it silently when needed. It never opens a
browser: when a new sign-in is needed it says which command to run and
exits 3.

Arguments: each key=value sets one argument. The value is taken as JSON
when it parses as JSON (n=3, ok=true, tags='["a","b"]', x=null), else as a
string (query=hello); but a value for an argument the tool's input schema
declares a string stays a string (query=2024). To force a string anyway,
quote it as a JSON string: n='"3"'.
--args '{"k":…}' gives the arguments as one JSON object; key=value pairs
are added to it and win.

Prints the text of the result's content; a result with only structured
content prints that as JSON. --json prints the whole result. A tool that
reports an error (isError) exits 1 with its text on stderr.

Exit codes: 0 success, 1 failure or tool error, 2 usage error, 3 sign in again.

Flags:
`)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 2, -1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL, tool := pos[0], pos[1]
	arguments, err := toolArguments(*argsJSON, pos[2:])
	if err != nil {
		fmt.Fprintf(stderr, "evergrant call: %v\n", err)
		return exitUsage
	}
	ctx, cfg, cancel, code, ok := prepareSession(ctx, "call", serverURL, &g, *timeout, stderr)
	if !ok {
		return code
	}
	defer cancel()
	sess, err := connectSession(ctx, serverURL, cfg)
	if err != nil {
		return reportSessionError(stderr, "call", serverURL, &g, err)
	}
	defer func() { code = closeSession(sess, stderr, "call", code) }()
	// A key=value value that parses as JSON but is meant as a string
	// (query=2024) is sent as the string when the tool's input schema says
	// the argument is a string. That takes the tool list: one more request,
	// made only when some value is not a string.
	if raw := nonStringPairs(pos[2:], arguments); len(raw) > 0 {
		for t, err := range sess.Tools(ctx, nil) {
			if err != nil {
				if err := sess.Err(err); errors.Is(err, client.ErrNeedsReauth) {
					return reportSessionError(stderr, "call", serverURL, &g, err)
				}
				break // the call itself will tell
			}
			if t.Name == tool {
				coerceToSchema(arguments, raw, t.InputSchema)
				break
			}
		}
	}
	res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: arguments})
	if err != nil {
		return reportSessionError(stderr, "call", serverURL, &g, sess.Err(err))
	}
	if *asJSON {
		if code := writeJSON(stdout, stderr, "call", res); code != exitOK {
			return code
		}
	}
	if res.IsError {
		text := strings.TrimSpace(contentText(res.Content))
		if text == "" {
			text = "(no message)"
		}
		fmt.Fprintf(stderr, "evergrant call: %s failed: %s\n", tool, text)
		return exitError
	}
	if *asJSON {
		return exitOK
	}
	if text := contentText(res.Content); text != "" {
		io.WriteString(stdout, text)
		if !strings.HasSuffix(text, "\n") {
			io.WriteString(stdout, "\n")
		}
	} else if res.StructuredContent != nil {
		return writeJSON(stdout, stderr, "call", res.StructuredContent)
	}
	return exitOK
}

// prepareSession does what tools and call share before connecting: check
// the URL, set up logging, open the store, apply the timeout. The session
// has no Authorizer: these commands never sign in.
func prepareSession(ctx context.Context, cmd, serverURL string, g *globalFlags, timeout time.Duration, stderr io.Writer) (context.Context, sessionConfig, context.CancelFunc, int, bool) {
	cancel := context.CancelFunc(func() {})
	if err := checkServerURL(serverURL); err != nil {
		fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
		return ctx, sessionConfig{}, cancel, exitUsage, false
	}
	logger, err := g.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
		return ctx, sessionConfig{}, cancel, exitUsage, false
	}
	st, err := g.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
		return ctx, sessionConfig{}, cancel, exitError, false
	}
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	stop := cancel
	cancel = func() { stop(); st.Close() }
	return ctx, sessionConfig{Store: st, Logger: logger, Where: st.where}, cancel, exitOK, true
}

// toolArguments builds a tool call's arguments from --args (a JSON object,
// or empty) and key=value pairs, whose values are JSON when they parse as
// JSON and strings otherwise.
func toolArguments(argsJSON string, pairs []string) (map[string]any, error) {
	args := map[string]any{}
	if strings.TrimSpace(argsJSON) != "" {
		d := json.NewDecoder(strings.NewReader(argsJSON))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("--args: not JSON: %v", err)
		}
		if d.More() {
			return nil, errors.New("--args: more than one JSON value")
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("--args: want a JSON object, such as {\"query\":\"x\"}")
		}
		args = obj
	}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("argument %q: want key=value", p)
		}
		args[k] = jsonOrString(v)
	}
	return args, nil
}

// jsonOrString returns s decoded as one JSON value if it is one, else s.
// Numbers keep their exact text.
func jsonOrString(s string) any {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil || d.More() {
		return s
	}
	// Decode reads one value; reject trailing garbage such as "1 2" or "1x".
	if _, err := d.Token(); err != io.EOF {
		return s
	}
	return v
}

// nonStringPairs returns, by key, the raw text of the key=value pairs
// whose value in args is not a string.
func nonStringPairs(pairs []string, args map[string]any) map[string]string {
	raw := map[string]string{}
	for _, p := range pairs {
		k, v, _ := strings.Cut(p, "=")
		if _, isString := args[k].(string); !isString {
			raw[k] = v
		} else {
			delete(raw, k) // a later pair for k wins
		}
	}
	return raw
}

// coerceToSchema replaces args[k] with raw[k], as a string, for each key
// whose property in the JSON Schema schema accepts a string but not the
// JSON type the value was parsed as.
func coerceToSchema(args map[string]any, raw map[string]string, schema any) {
	obj, _ := schema.(map[string]any)
	props, _ := obj["properties"].(map[string]any)
	for k, text := range raw {
		prop, _ := props[k].(map[string]any)
		var types []string
		switch t := prop["type"].(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				if s, ok := x.(string); ok {
					types = append(types, s)
				}
			}
		}
		if slices.Contains(types, "string") && !slices.Contains(types, jsonType(args[k])) &&
			!(jsonType(args[k]) == "integer" && slices.Contains(types, "number")) {
			args[k] = text
		}
	}
}

// jsonType is the JSON Schema type of a value decoded with UseNumber.
func jsonType(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		if _, err := v.Int64(); err == nil {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	default:
		return "object"
	}
}

// contentText renders a result's content for a terminal: text parts as
// they are, other parts as a one-line note.
func contentText(content []mcp.Content) string {
	var b bytes.Buffer
	for _, c := range content {
		if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
			b.WriteByte('\n')
		}
		switch c := c.(type) {
		case *mcp.TextContent:
			b.WriteString(c.Text)
		case *mcp.ImageContent:
			fmt.Fprintf(&b, "[image %s, %d bytes]", c.MIMEType, len(c.Data))
		case *mcp.AudioContent:
			fmt.Fprintf(&b, "[audio %s, %d bytes]", c.MIMEType, len(c.Data))
		case *mcp.ResourceLink:
			fmt.Fprintf(&b, "[resource link %s]", c.URI)
		case *mcp.EmbeddedResource:
			switch {
			case c.Resource == nil:
				b.WriteString("[embedded resource]")
			case c.Resource.Text != "":
				b.WriteString(c.Resource.Text)
			default:
				fmt.Fprintf(&b, "[resource %s, %d bytes]", c.Resource.URI, len(c.Resource.Blob))
			}
		default:
			fmt.Fprintf(&b, "[%T content]", c)
		}
	}
	return b.String()
}
