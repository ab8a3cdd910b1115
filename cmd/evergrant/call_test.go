package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
)

// The user's path: login, status, tools, calls across an access-token
// expiry and an upstream-signaled expiry (silent refreshes), a grant
// revoked at the authorization server (exit 3 with the exact sign-in
// command), login again, logout.
func TestToolsAndCall_Lifecycle(t *testing.T) {
	e := newCLIEnv(t, stack.Config{UpstreamTokenMaxAge: 10 * time.Minute})
	hint := "\nsign in again with: evergrant login --config-dir " + e.Dir + " " + e.URL + "\n"

	// No grant yet: tools and call never open a browser, they say how to
	// sign in and exit 3.
	for _, args := range [][]string{{"tools", e.URL}, {"call", e.URL, "whoami"}} {
		_, errs := e.mustRun(exitNeedsReauth, args[0], args[1:]...)
		if !strings.Contains(errs, hint) {
			t.Errorf("%s without a grant: stderr lacks %q:\n%s", args[0], hint, errs)
		}
	}
	if n := e.calls.Load(); n != 0 {
		t.Fatalf("tools/call opened %d authorization URLs", n)
	}

	e.mustRun(0, "login", e.URL)
	logins := e.calls.Load()
	g0 := e.grant()

	out, errs := e.mustRun(0, "tools", e.URL)
	if errs != "" {
		t.Errorf("tools stderr:\n%s", errs)
	}
	if !regexpLine(out, `^NAME\s+DESCRIPTION$`) || !regexpLine(out, `^whoami\s+Who the caller is`) || !regexpLine(out, `^upstream_search\s+Search the upstream`) {
		t.Errorf("tools:\n%s", out)
	}
	jout, _ := e.mustRun(0, "tools", "--json", e.URL)
	var tools []*mcp.Tool
	if err := json.Unmarshal([]byte(jout), &tools); err != nil || len(tools) != 3 {
		t.Fatalf("tools --json: %v\n%s", err, jout)
	}
	names := map[string]bool{}
	for _, tl := range tools {
		names[tl.Name] = tl.InputSchema != nil
	}
	if !names["whoami"] || !names["upstream_search"] {
		t.Errorf("tools --json: %v", names)
	}

	out, _ = e.mustRun(0, "call", e.URL, "whoami")
	if !strings.Contains(out, `"subject":"demo-user"`) {
		t.Errorf("call whoami: %s", out)
	}
	jout, _ = e.mustRun(0, "call", "--json", e.URL, "whoami")
	var res struct {
		Content           []map[string]any `json:"content"`
		StructuredContent map[string]any   `json:"structuredContent"`
		IsError           bool             `json:"isError"`
	}
	if err := json.Unmarshal([]byte(jout), &res); err != nil || res.StructuredContent["subject"] != "demo-user" || res.IsError || len(res.Content) == 0 {
		t.Errorf("call --json whoami: %v\n%s", err, jout)
	}
	// query=2024 parses as a JSON number, but the schema says string.
	out, _ = e.mustRun(0, "call", e.URL, "upstream_search", "query=2024")
	if !strings.Contains(out, "result 1 for 2024") {
		t.Errorf("call upstream_search query=2024: %s", out)
	}
	out, _ = e.mustRun(0, "call", e.URL, "upstream_search", "--args", `{"query":"a"}`, "query=b c")
	if !strings.Contains(out, "result 1 for b c") {
		t.Errorf("key=value over --args: %s", out)
	}

	// The access token expires: the next call refreshes silently.
	at1 := e.grant().AccessToken
	e.Clock.Advance(2 * time.Hour)
	out, errs = e.mustRun(0, "call", e.URL, "whoami")
	if !strings.Contains(out, "demo-user") || errs != "" {
		t.Errorf("call after expiry:\n%s\n%s", out, errs)
	}
	at2 := e.grant().AccessToken
	if at2 == at1 {
		t.Fatal("the access token was not refreshed")
	}
	// The upstream rejects a token older than 10 minutes: upstream_search
	// signals, the client refreshes and the call succeeds.
	e.Clock.Advance(11 * time.Minute)
	out, errs = e.mustRun(0, "call", e.URL, "upstream_search", "query=signal")
	if !strings.Contains(out, "result 1 for signal") || errs != "" {
		t.Errorf("call after the upstream's signal:\n%s\n%s", out, errs)
	}
	if e.grant().AccessToken == at2 {
		t.Fatal("the upstream's signal did not refresh the token")
	}
	if n := e.calls.Load(); n != logins {
		t.Fatalf("refreshes opened the browser (%d sign-ins, want %d)", n, logins)
	}

	// The grant is revoked at the authorization server: once the access
	// token expires, the refresh is refused and the user is told exactly
	// what to run.
	if n, err := e.Stack.AS.RevokeGrants(context.Background(), authserver.GrantFilter{}); err != nil || n == 0 {
		t.Fatalf("RevokeGrants = %d, %v", n, err)
	}
	e.Clock.Advance(2 * time.Hour)
	_, errs = e.mustRun(exitNeedsReauth, "call", e.URL, "whoami")
	if !strings.Contains(errs, hint) || !strings.Contains(errs, "needs_reauth") {
		t.Errorf("call after revocation: stderr lacks %q:\n%s", hint, errs)
	}
	_, errs = e.mustRun(exitNeedsReauth, "tools", e.URL)
	if !strings.Contains(errs, hint) {
		t.Errorf("tools after revocation: stderr lacks %q:\n%s", hint, errs)
	}
	out, errs = e.mustRun(0, "status")
	if !regexpLine(out, `none: sign in again\s+no$`) || !strings.Contains(errs, hint[1:]) {
		t.Errorf("status after revocation:\n%s\n%s", out, errs)
	}

	e.mustRun(0, "login", e.URL)
	out, _ = e.mustRun(0, "call", e.URL, "whoami")
	if !strings.Contains(out, "demo-user") {
		t.Errorf("call after signing in again: %s", out)
	}
	g := e.grant()
	out, _ = e.mustRun(0, "logout", e.URL)
	if !strings.Contains(out, "Revoked the refresh token") {
		t.Errorf("logout: %s", out)
	}
	_, errs = e.mustRun(exitNeedsReauth, "call", e.URL, "whoami")
	if !strings.Contains(errs, hint) {
		t.Errorf("call after logout:\n%s", errs)
	}
	noSecrets(t, g0, out, errs)
	noSecrets(t, g, out, errs)
	checkPerms(t, e.Dir)
}

// regexpLine reports whether a line of s matches the regular expression.
func regexpLine(s, expr string) bool {
	return regexp.MustCompile("(?m)" + expr).MatchString(s)
}

// A tool's isError result exits 1 with its text; an unknown tool exits 1;
// content that is not text is summarized. The server here needs no
// authorization, which the client handles by sending no token.
func TestCall_ToolErrorsAndContent(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "plain", Version: "1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "fail", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "boom: the disk is full"}}}, nil
		})
	srv.AddTool(&mcp.Tool{Name: "echo", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{
				&mcp.TextContent{Text: string(req.Params.Arguments)},
				&mcp.ImageContent{MIMEType: "image/png", Data: []byte{1, 2, 3}},
			}}, nil
		})
	srv.AddTool(&mcp.Tool{Name: "structured", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{StructuredContent: map[string]any{"n": 1}}, nil
		})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	defer hs.Close()
	u := hs.URL + "/mcp"
	dir := t.TempDir()
	call := func(args ...string) (int, string, string) {
		var out, errs bytes.Buffer
		code := run(context.Background(), append([]string{"call", "--config-dir", dir}, args...), &out, &errs)
		return code, out.String(), errs.String()
	}

	code, out, errs := call(u, "fail")
	if code != exitError || out != "" || errs != "evergrant call: fail failed: boom: the disk is full\n" {
		t.Errorf("isError: exit %d\nstdout %q\nstderr %q", code, out, errs)
	}
	code, out, _ = call("--json", u, "fail")
	if code != exitError || !strings.Contains(out, `"isError": true`) {
		t.Errorf("isError --json: exit %d\n%s", code, out)
	}
	code, _, errs = call(u, "nosuch")
	if code != exitError || !strings.Contains(errs, "nosuch") {
		t.Errorf("unknown tool: exit %d\n%s", code, errs)
	}
	code, out, errs = call(u, "echo", "n=3", "s=x y", `q="3"`, "ok=true", `l=[1,2]`)
	if code != 0 {
		t.Fatalf("echo: exit %d: %s", code, errs)
	}
	first, rest, _ := strings.Cut(out, "\n")
	var got map[string]any
	if err := json.Unmarshal([]byte(first), &got); err != nil {
		t.Fatalf("echo: %v: %q", err, out)
	}
	want := map[string]any{"n": 3.0, "s": "x y", "q": "3", "ok": true, "l": []any{1.0, 2.0}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("arguments sent %v, want %v", got, want)
	}
	if rest != "[image image/png, 3 bytes]\n" {
		t.Errorf("image content printed as %q", rest)
	}
	code, out, _ = call(u, "structured")
	if code != 0 || !strings.Contains(out, `"n": 1`) {
		t.Errorf("structured-only result: exit %d\n%s", code, out)
	}
}

func TestCall_UsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"https://mcp.example.com/mcp"}, "missing arguments"},
		{[]string{"https://mcp.example.com/mcp", "t", "novalue"}, `argument "novalue": want key=value`},
		{[]string{"https://mcp.example.com/mcp", "t", "=x"}, "want key=value"},
		{[]string{"--args", "[1]", "https://mcp.example.com/mcp", "t"}, "want a JSON object"},
		{[]string{"--args", "{", "https://mcp.example.com/mcp", "t"}, "--args: not JSON"},
		{[]string{"mcp.example.com", "t"}, "http:// or https://"},
	} {
		var out, errs bytes.Buffer
		code := run(context.Background(), append([]string{"call", "--config-dir", t.TempDir()}, c.args...), &out, &errs)
		if code != exitUsage || !strings.Contains(errs.String(), c.want) {
			t.Errorf("call %q: exit %d, stderr %q; want 2 and %q", c.args, code, errs.String(), c.want)
		}
	}
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"tools", "--config-dir", t.TempDir()}, &out, &errs); code != exitUsage {
		t.Errorf("tools without URL: exit %d", code)
	}
}

func TestToolArguments(t *testing.T) {
	for _, c := range []struct {
		args  string
		pairs []string
		want  string // JSON
	}{
		{"", nil, `{}`},
		{"", []string{"a=1", "b=x", "c=", "d=null", "e={\"k\":[1]}", "f=1 2", "g=1x", "h=a=b", `i="1"`}, `{"a":1,"b":"x","c":"","d":null,"e":{"k":[1]},"f":"1 2","g":"1x","h":"a=b","i":"1"}`},
		{`{"a":1,"b":2}`, []string{"b=3"}, `{"a":1,"b":3}`},
		{"", []string{"big=123456789012345678901234567890"}, `{"big":123456789012345678901234567890}`},
	} {
		got, err := toolArguments(c.args, c.pairs)
		if err != nil {
			t.Errorf("%q %q: %v", c.args, c.pairs, err)
			continue
		}
		b, _ := json.Marshal(got)
		if string(b) != c.want {
			t.Errorf("%q %q = %s, want %s", c.args, c.pairs, b, c.want)
		}
	}
	for _, bad := range []string{"[]", `"x"`, "{} {}", "{"} {
		if _, err := toolArguments(bad, nil); err == nil {
			t.Errorf("--args %q accepted", bad)
		}
	}
}

func TestCoerceToSchema(t *testing.T) {
	schema := map[string]any{"properties": map[string]any{
		"s":   map[string]any{"type": "string"},
		"n":   map[string]any{"type": "number"},
		"sn":  map[string]any{"type": []any{"string", "number"}},
		"any": map[string]any{},
	}}
	pairs := []string{"s=2024", "n=2024", "sn=2024", "any=2024", "x=2024"}
	args, err := toolArguments("", pairs)
	if err != nil {
		t.Fatal(err)
	}
	coerceToSchema(args, nonStringPairs(pairs, args), schema)
	b, _ := json.Marshal(args)
	if want := `{"any":2024,"n":2024,"s":"2024","sn":2024,"x":2024}`; string(b) != want {
		t.Errorf("coerced %s, want %s", b, want)
	}
}

func TestParseArgs_Interspersed(t *testing.T) {
	for _, c := range []struct {
		args []string
		pos  []string
		json bool
	}{
		{[]string{"u", "t", "a=1", "--json"}, []string{"u", "t", "a=1"}, true},
		{[]string{"--json", "u", "t"}, []string{"u", "t"}, true},
		{[]string{"u", "--json", "t", "a=1"}, []string{"u", "t", "a=1"}, true},
		{[]string{"u", "t", "--", "--json"}, []string{"u", "t", "--json"}, false},
	} {
		fs := flag.NewFlagSet("call", flag.ContinueOnError)
		j := fs.Bool("json", false, "")
		pos, code, ok := parseArgs(fs, c.args, 2, -1, io.Discard, io.Discard)
		if !ok || code != 0 || !reflect.DeepEqual(pos, c.pos) || *j != c.json {
			t.Errorf("%q: pos %q json %v (ok %v), want %q %v", c.args, pos, *j, ok, c.pos, c.json)
		}
	}
}

// The session helper keeps a NeedsReauthError findable through the SDK.
func TestConnectSession_NoGrant(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	st, err := (&globalFlags{configDir: e.Dir}).openStore(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, err = connectSession(context.Background(), e.URL, sessionConfig{Store: st})
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonNoGrant {
		t.Fatalf("connect without a grant: %v", err)
	}
}
