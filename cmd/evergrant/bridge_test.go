package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/astest"
	"github.com/evergrant/evergrant/internal/bridge"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/store"
)

// Tests of the bridge command end to end: a host drives the built binary on
// stdio. The bridge's own behaviour (forwarding, sessions, event streams,
// refusals, errors) is tested in internal/bridge.

// bridgeEnv is the serve stack on httptest with a grant store and counters
// of what the servers saw (fixture.Serve).
//
// Clock is the stack's clock. The bridge runs on the real clock (it is
// another process), so moving Clock makes the server see the bridge's
// token as expired or old without waiting.
type bridgeEnv struct {
	*fixture.Serve
	t *testing.T
}

func newBridgeEnv(t *testing.T, cfg stack.Config) *bridgeEnv {
	t.Helper()
	return &bridgeEnv{Serve: fixture.NewServe(t, cfg), t: t}
}

// grant is the stored grant.
func (e *bridgeEnv) grant() *store.Grant {
	e.t.Helper()
	fs, err := store.OpenFile(e.Dir)
	if err != nil {
		e.t.Fatal(err)
	}
	key, _ := client.ServerKey(e.URL)
	g, err := fs.Load(context.Background(), key)
	if err != nil {
		e.t.Fatalf("load grant: %v", err)
	}
	return g
}

// bridgeBinary builds evergrant once per test.
func bridgeBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "evergrant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// startHost runs "evergrant bridge" as a host would (the official Go
// SDK's CommandTransport) and connects to it.
func (e *bridgeEnv) startHost(ctx context.Context, bin string, opts *mcp.ClientOptions) (*mcp.ClientSession, *exec.Cmd, *astest.SyncBuffer) {
	e.t.Helper()
	cmd := exec.Command(bin, "bridge", "--config-dir", e.Dir, "--log-level", "debug", e.URL)
	stderr := &astest.SyncBuffer{}
	cmd.Stderr = stderr
	cl := mcp.NewClient(&mcp.Implementation{Name: "test-host", Version: "1"}, opts)
	sess, err := cl.Connect(ctx, &mcp.CommandTransport{Command: cmd, TerminateDuration: 10 * time.Second}, nil)
	if err != nil {
		e.t.Fatalf("host connect: %v\nbridge stderr:\n%s", err, stderr.String())
	}
	return sess, cmd, stderr
}

// bridgeReauthError checks that err is the bridge's needs_reauth answer and
// returns its data.
func bridgeReauthError(t *testing.T, e *bridgeEnv, err error) map[string]any {
	t.Helper()
	var we *jsonrpc.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T), want a JSON-RPC error", err, err)
	}
	if we.Code != bridge.CodeNeedsReauth {
		t.Errorf("code %d, want %d (%s)", we.Code, bridge.CodeNeedsReauth, we.Message)
	}
	wantHint := "sign in again with: evergrant login --config-dir " + e.Dir + " " + e.URL
	if !strings.Contains(we.Message, wantHint) {
		t.Errorf("message %q lacks %q", we.Message, wantHint)
	}
	var data map[string]any
	if err := json.Unmarshal(we.Data, &data); err != nil {
		t.Fatalf("data %s: %v", we.Data, err)
	}
	if data["reason"] != "needs_reauth" || data["server"] != e.URL || data["login"] != strings.TrimPrefix(wantHint, "sign in again with: ") {
		t.Errorf("data %s", we.Data)
	}
	return data
}

// A host drives the bridge binary on stdio across an access-token expiry
// and an upstream-signaled 401 without seeing an error; then across a
// refresh token revoked at the authorization server, where the pending
// request gets the needs_reauth error and the bridge keeps serving; after a
// new sign-in from "another terminal" the same host session works again.
// Closing stdin ends the bridge with exit 0.
func TestBridge_HostThroughExpiryUpstreamSignalAndRevocation(t *testing.T) {
	bin := bridgeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newBridgeEnv(t, stack.Config{UpstreamTokenMaxAge: 10 * time.Minute})
	e.Login(ctx)
	secrets := map[string]bool{}
	keep := func() {
		g := e.grant()
		secrets[g.AccessToken], secrets[g.RefreshToken] = true, true
	}
	keep()

	sess, cmd, stderr := e.startHost(ctx, bin, nil)
	defer func() {
		if t.Failed() {
			t.Logf("bridge stderr:\n%s", stderr.String())
		}
	}()
	search := func(q string) {
		t.Helper()
		res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "upstream_search", Arguments: map[string]any{"query": q}})
		if err != nil {
			t.Fatalf("CallTool(%s): %v", q, err)
		}
		if res.IsError || !strings.Contains(fixture.ToolText(res), "result 1 for "+q) {
			t.Fatalf("CallTool(%s): %s", q, fixture.ToolText(res))
		}
	}
	if got := sess.InitializeResult().ServerInfo; got == nil || got.Name == "" {
		t.Fatalf("server info %+v", got)
	}
	search("first")
	who, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "whoami"})
	if err != nil || !strings.Contains(fixture.ToolText(who), "demo-user") {
		t.Fatalf("whoami: %v %v", err, who)
	}
	if n := e.Refreshes.Load(); n != 0 {
		t.Fatalf("%d refreshes before any expiry", n)
	}

	// The access token expires (server side): a 401, one refresh, the call
	// succeeds.
	e.Clock.Advance(2 * time.Hour)
	search("expired")
	if n, u := e.Refreshes.Load(), e.Unauthorized.Load(); n != 1 || u != 1 {
		t.Fatalf("after expiry: %d refreshes, %d 401s; want 1 and 1", n, u)
	}
	keep()

	// The upstream rejects the 11-minute-old token: upstream_search
	// signals, the MCP endpoint answers 401, one refresh, the call
	// succeeds.
	e.Clock.Advance(11 * time.Minute)
	search("signal")
	if n, u := e.Refreshes.Load(), e.Unauthorized.Load(); n != 2 || u != 2 {
		t.Fatalf("after the upstream's signal: %d refreshes, %d 401s; want 2 and 2", n, u)
	}
	keep()

	// The grant is revoked and the access token expires: the refresh is
	// refused, the pending call gets the needs_reauth error.
	if n, err := e.Stack.AS.RevokeGrants(ctx, authserver.GrantFilter{}); err != nil || n != 1 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	e.Clock.Advance(2 * time.Hour)
	_, err = sess.CallTool(ctx, &mcp.CallToolParams{Name: "upstream_search", Arguments: map[string]any{"query": "revoked"}})
	data := bridgeReauthError(t, e, err)
	if data["cause"] != string(client.ReasonRefreshRejected) || data["error"] != "invalid_grant" || data["issuer"] != e.Stack.Issuer {
		t.Errorf("data %v", data)
	}
	var we *jsonrpc.Error
	errors.As(err, &we)
	for s := range secrets {
		if strings.Contains(we.Message, s) || bytes.Contains(we.Data, []byte(s)) {
			t.Fatal("the needs_reauth error holds token material")
		}
	}

	// The bridge keeps serving: later requests get answers (needs_reauth
	// too: they need the grant).
	for i := range 3 {
		err := sess.Ping(ctx, nil)
		bridgeReauthError(t, e, err)
		if _, err := sess.ListTools(ctx, nil); err == nil {
			t.Fatalf("ListTools %d succeeded without a grant", i)
		} else {
			bridgeReauthError(t, e, err)
		}
	}
	if cmd.ProcessState != nil {
		t.Fatal("the bridge exited")
	}

	// The user signs in again from a terminal: the same host session works.
	e.Login(ctx)
	keep()
	search("again")

	// The host closes stdin: the bridge exits 0 on its own.
	start := time.Now()
	if err := sess.Close(); err != nil {
		t.Fatalf("close: %v\n%s", err, stderr.String())
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the bridge took %v to exit", d)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := stderr.String()
	if !strings.Contains(logs, "stdin closed") || !strings.Contains(logs, "needs_reauth: sign in again with: evergrant login") {
		t.Errorf("stderr lacks the expected records:\n%s", logs)
	}
	for s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Fatal("stderr holds token material")
		}
	}
}

// Two bridge processes on one grant (one config dir), both holding the
// same expired access token: exactly one refresh grant at the
// authorization server, and both hosts' calls succeed.
func TestBridge_TwoProcessesRefreshOnce(t *testing.T) {
	bin := bridgeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newBridgeEnv(t, stack.Config{})
	e.Login(ctx)
	var sessions []*mcp.ClientSession
	var cmds []*exec.Cmd
	var stderrs []*astest.SyncBuffer
	for range 2 {
		sess, cmd, stderr := e.startHost(ctx, bin, nil)
		defer func() {
			if t.Failed() {
				t.Logf("bridge stderr:\n%s", stderr.String())
			}
		}()
		sessions, cmds, stderrs = append(sessions, sess), append(cmds, cmd), append(stderrs, stderr)
	}
	whoami := func(sess *mcp.ClientSession) error {
		res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "whoami"})
		if err != nil {
			return err
		}
		if res.IsError || !strings.Contains(fixture.ToolText(res), "demo-user") {
			return fmt.Errorf("whoami: %s", fixture.ToolText(res))
		}
		return nil
	}
	for _, s := range sessions {
		if err := whoami(s); err != nil {
			t.Fatal(err)
		}
	}
	rt0 := e.grant().RefreshToken
	for round := range 2 {
		e.Clock.Advance(2 * time.Hour)
		u0 := e.Unauthorized.Load()
		errs := make(chan error, len(sessions))
		for _, s := range sessions {
			go func() { errs <- whoami(s) }()
		}
		for range sessions {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if u := e.Unauthorized.Load() - u0; u != 2 {
			t.Errorf("round %d: %d 401s, want 2 (both bridges held the expired token)", round, u)
		}
		if n := e.Refreshes.Load(); n != int64(round+1) {
			t.Fatalf("round %d: %d refresh grants in all, want %d", round, n, round+1)
		}
	}
	if e.grant().RefreshToken == rt0 {
		t.Error("the refresh token did not rotate")
	}
	// One ends on stdin's EOF, the other on SIGTERM: both exit 0.
	if err := sessions[0].Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	cmds[1].Process.Signal(syscall.SIGTERM)
	fixture.WaitFor(t, "the bridge to see SIGTERM", func() bool { return strings.Contains(stderrs[1].String(), "interrupted") })
	if err := sessions[1].Close(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

func TestBridge_Usage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"bridge", "--help"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "Usage: evergrant bridge [flags] URL") || !strings.Contains(out.String(), `"args": ["bridge", "https://mcp.example.com/mcp"]`) ||
		!strings.Contains(out.String(), "-config-dir") {
		t.Errorf("--help: exit %d\n%s%s", code, out.String(), errb.String())
	}
	for _, args := range [][]string{
		{"bridge"},
		{"bridge", "https://a.example/mcp", "https://b.example/mcp"},
		{"bridge", "ftp://a.example/mcp"},
		{"bridge", "http://a.example/mcp"}, // http only for loopback
		{"bridge", "--log-level", "loud", "https://a.example/mcp"},
		{"bridge", "--bogus", "https://a.example/mcp"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUsage || errb.Len() == 0 || out.Len() != 0 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
}

func TestBridgeLoginHint(t *testing.T) {
	for _, c := range []struct {
		dir   string
		flags []string
		want  string
	}{
		{"", nil, "sign in again with: evergrant login https://a.example/mcp"},
		{"/tmp/x", nil, "sign in again with: evergrant login --config-dir /tmp/x https://a.example/mcp"},
		{"/tmp/my dir", []string{"--new-client"}, "sign in again with: evergrant login --new-client --config-dir '/tmp/my dir' https://a.example/mcp"},
		{"", []string{"--scope", shellQuote("a b")}, "sign in again with: evergrant login --scope 'a b' https://a.example/mcp"},
	} {
		if got := loginHint("https://a.example/mcp", &globalFlags{configDir: c.dir}, c.flags...); got != c.want {
			t.Errorf("loginHint(%q, %q) = %q, want %q", c.dir, c.flags, got, c.want)
		}
	}
}

// The bridge's sign-in command is the other commands' hint: --new-client
// when the authorization server forgot the registration, --scope with
// every scope the sign-in needs, and --config-dir when it is not the
// default.
func TestBridgeLoginCommand(t *testing.T) {
	const u = "https://a.example/mcp"
	for _, c := range []struct {
		dir  string
		in   bridge.SignIn
		want string
	}{
		{"", bridge.SignIn{}, "evergrant login " + u},
		{"/tmp/x", bridge.SignIn{}, "evergrant login --config-dir /tmp/x " + u},
		{"/tmp/my dir", bridge.SignIn{NewClient: true}, "evergrant login --new-client --config-dir '/tmp/my dir' " + u},
		{"", bridge.SignIn{Scopes: []string{"a", "b"}}, "evergrant login --scope 'a b' " + u},
		{"/tmp/x", bridge.SignIn{Scopes: []string{"a"}}, "evergrant login --scope a --config-dir /tmp/x " + u},
	} {
		if got := bridgeLoginCommand(u, &globalFlags{configDir: c.dir})(c.in); got != c.want {
			t.Errorf("bridgeLoginCommand(%q)(%+v) = %q, want %q", c.dir, c.in, got, c.want)
		}
	}
}
