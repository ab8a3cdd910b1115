package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/server"
	"github.com/evergrant/evergrant/store"
)

// bridgeClock is the stack's clock. The bridge runs on the real clock (it
// is another process, or has its own Transport), so moving this one makes
// the server see the bridge's token as expired or old without waiting.
type bridgeClock struct{ off atomic.Int64 }

func (c *bridgeClock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *bridgeClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// bridgeEnv is the serve stack on httptest, a grant store, and counters of
// what the servers saw.
type bridgeEnv struct {
	t   *testing.T
	st  *stack.Stack
	ts  *httptest.Server
	clk *bridgeClock
	dir string // --config-dir
	url string // the MCP server

	mcp       atomic.Pointer[http.Handler] // replaces the stack's MCP server when set
	refreshes atomic.Int64                 // refresh grants at the token endpoint
	mcp401    atomic.Int64                 // 401s of the MCP endpoint
	gets      atomic.Int64                 // GETs of the MCP endpoint (event streams)

	mu      sync.Mutex
	headers []http.Header // of the MCP endpoint's requests
	methods []string
}

func newBridgeEnv(t *testing.T, cfg stack.Config) *bridgeEnv {
	t.Helper()
	e := &bridgeEnv{t: t, clk: &bridgeClock{}, dir: filepath.Join(t.TempDir(), "config")}
	e.ts = httptest.NewUnstartedServer(nil)
	base := "http://" + e.ts.Listener.Addr().String()
	cfg.BaseURL, cfg.AutoApprove, cfg.Now = base, true, e.clk.Now
	st, err := stack.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.st, e.url = st, st.MCPURL
	e.ts.Config.Handler = http.HandlerFunc(e.serve)
	e.ts.Start()
	t.Cleanup(e.ts.Close)
	return e
}

func (e *bridgeEnv) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == authserver.PathToken {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if f, err := url.ParseQuery(string(body)); err == nil && f.Get("grant_type") == "refresh_token" {
			e.refreshes.Add(1)
		}
	}
	if r.URL.Path != stack.MCPPath {
		e.st.Handler.ServeHTTP(w, r)
		return
	}
	e.mu.Lock()
	e.headers = append(e.headers, r.Header.Clone())
	e.methods = append(e.methods, r.Method)
	e.mu.Unlock()
	if r.Method == http.MethodGet {
		e.gets.Add(1)
	}
	w = &bridgeStatusWriter{ResponseWriter: w, e: e}
	if h := e.mcp.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	e.st.Handler.ServeHTTP(w, r)
}

// bridgeStatusWriter counts the MCP endpoint's 401s.
type bridgeStatusWriter struct {
	http.ResponseWriter
	e    *bridgeEnv
	once sync.Once
}

func (w *bridgeStatusWriter) WriteHeader(c int) {
	w.once.Do(func() {
		if c == http.StatusUnauthorized {
			w.e.mcp401.Add(1)
		}
	})
	w.ResponseWriter.WriteHeader(c)
}

func (w *bridgeStatusWriter) Write(b []byte) (int, error) {
	w.once.Do(func() {})
	return w.ResponseWriter.Write(b)
}
func (w *bridgeStatusWriter) Flush()                      { http.NewResponseController(w.ResponseWriter).Flush() }
func (w *bridgeStatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// useMCPServer puts srv, behind the stack's bearer middleware, in place of
// the stack's MCP server.
func (e *bridgeEnv) useMCPServer(srv *mcp.Server, opts *mcp.StreamableHTTPOptions) {
	e.t.Helper()
	base := e.st.Issuer
	v, err := server.NewJWTVerifier(server.JWTConfig{Issuer: base, Audience: e.url, JWKSURL: base + authserver.PathJWKS, RequireATJWT: true, Now: e.clk.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	mw, err := server.RequireToken(server.Config{Resource: e.url, ResourceMetadataURL: e.st.MetadataURL, Verifier: v})
	if err != nil {
		e.t.Fatal(err)
	}
	h := mw(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, opts))
	e.mcp.Store(&h)
}

// login stores a grant in the config dir, as "evergrant login" would.
func (e *bridgeEnv) login(ctx context.Context) {
	e.t.Helper()
	fs, err := store.OpenFile(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	tr := client.NewTransport(client.Config{Store: fs, Authorizer: &client.HeadlessAuthorizer{}})
	if err := tr.Authorize(ctx, e.url); err != nil {
		e.t.Fatalf("login: %v", err)
	}
}

// grant is the stored grant.
func (e *bridgeEnv) grant() *store.Grant {
	e.t.Helper()
	fs, err := store.OpenFile(e.dir)
	if err != nil {
		e.t.Fatal(err)
	}
	key, _ := client.ServerKey(e.url)
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

// bridgeBuffer is a goroutine-safe buffer for a process's stderr.
type bridgeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *bridgeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *bridgeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startHost runs "evergrant bridge" as a host would (the official Go
// SDK's CommandTransport) and connects to it.
func (e *bridgeEnv) startHost(ctx context.Context, bin string, opts *mcp.ClientOptions) (*mcp.ClientSession, *exec.Cmd, *bridgeBuffer) {
	e.t.Helper()
	cmd := exec.Command(bin, "bridge", "--config-dir", e.dir, "--log-level", "debug", e.url)
	stderr := &bridgeBuffer{}
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
	if we.Code != codeNeedsReauth {
		t.Errorf("code %d, want %d (%s)", we.Code, codeNeedsReauth, we.Message)
	}
	wantHint := "sign in again with: evergrant login --config-dir " + e.dir + " " + e.url
	if !strings.Contains(we.Message, wantHint) {
		t.Errorf("message %q lacks %q", we.Message, wantHint)
	}
	var data map[string]any
	if err := json.Unmarshal(we.Data, &data); err != nil {
		t.Fatalf("data %s: %v", we.Data, err)
	}
	if data["reason"] != "needs_reauth" || data["server"] != e.url || data["login"] != strings.TrimPrefix(wantHint, "sign in again with: ") {
		t.Errorf("data %s", we.Data)
	}
	return data
}

func bridgeText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
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
	e.login(ctx)
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
		if res.IsError || !strings.Contains(bridgeText(res), "result 1 for "+q) {
			t.Fatalf("CallTool(%s): %s", q, bridgeText(res))
		}
	}
	if got := sess.InitializeResult().ServerInfo; got == nil || got.Name == "" {
		t.Fatalf("server info %+v", got)
	}
	search("first")
	who, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "whoami"})
	if err != nil || !strings.Contains(bridgeText(who), "demo-user") {
		t.Fatalf("whoami: %v %v", err, who)
	}
	if n := e.refreshes.Load(); n != 0 {
		t.Fatalf("%d refreshes before any expiry", n)
	}

	// The access token expires (server side): a 401, one refresh, the call
	// succeeds.
	e.clk.Advance(2 * time.Hour)
	search("expired")
	if n, u := e.refreshes.Load(), e.mcp401.Load(); n != 1 || u != 1 {
		t.Fatalf("after expiry: %d refreshes, %d 401s; want 1 and 1", n, u)
	}
	keep()

	// The upstream rejects the 11-minute-old token: upstream_search
	// signals, the MCP endpoint answers 401, one refresh, the call
	// succeeds.
	e.clk.Advance(11 * time.Minute)
	search("signal")
	if n, u := e.refreshes.Load(), e.mcp401.Load(); n != 2 || u != 2 {
		t.Fatalf("after the upstream's signal: %d refreshes, %d 401s; want 2 and 2", n, u)
	}
	keep()

	// The grant is revoked and the access token expires: the refresh is
	// refused, the pending call gets the needs_reauth error.
	if n, err := e.st.AS.RevokeGrants(ctx, authserver.GrantFilter{}); err != nil || n != 1 {
		t.Fatalf("revoke: %d %v", n, err)
	}
	e.clk.Advance(2 * time.Hour)
	_, err = sess.CallTool(ctx, &mcp.CallToolParams{Name: "upstream_search", Arguments: map[string]any{"query": "revoked"}})
	data := bridgeReauthError(t, e, err)
	if data["cause"] != client.ReasonRefreshRejected || data["error"] != "invalid_grant" || data["issuer"] != e.st.Issuer {
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
	e.login(ctx)
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
	e.login(ctx)
	var sessions []*mcp.ClientSession
	var cmds []*exec.Cmd
	var stderrs []*bridgeBuffer
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
		if res.IsError || !strings.Contains(bridgeText(res), "demo-user") {
			return fmt.Errorf("whoami: %s", bridgeText(res))
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
		e.clk.Advance(2 * time.Hour)
		u0 := e.mcp401.Load()
		errs := make(chan error, len(sessions))
		for _, s := range sessions {
			go func() { errs <- whoami(s) }()
		}
		for range sessions {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if u := e.mcp401.Load() - u0; u != 2 {
			t.Errorf("round %d: %d 401s, want 2 (both bridges held the expired token)", round, u)
		}
		if n := e.refreshes.Load(); n != int64(round+1) {
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
	bridgeWaitFor(t, "the bridge to see SIGTERM", func() bool { return strings.Contains(stderrs[1].String(), "interrupted") })
	if err := sessions[1].Close(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// bridgeInProcess runs the bridge in this process (so the race detector
// sees it) with a host made of the official Go SDK's client on pipes.
type bridgeInProcess struct {
	code   chan int
	stderr *bridgeBuffer
}

// startInProcess runs the bridge for cl (nil: a plain client) and
// connects cl to it.
func (e *bridgeEnv) startInProcess(ctx context.Context, cl *mcp.Client) (*mcp.ClientSession, *bridgeInProcess) {
	e.t.Helper()
	if cl == nil {
		cl = mcp.NewClient(&mcp.Implementation{Name: "test-host", Version: "1"}, nil)
	}
	inR, inW := io.Pipe()   // host -> bridge
	outR, outW := io.Pipe() // bridge -> host
	p := &bridgeInProcess{code: make(chan int, 1), stderr: &bridgeBuffer{}}
	go func() {
		p.code <- bridgeMain(ctx, []string{"--config-dir", e.dir, "--log-level", "debug", e.url}, inR, outW, p.stderr)
		outW.Close()
	}()
	sess, err := cl.Connect(ctx, &mcp.IOTransport{Reader: outR, Writer: inW}, nil)
	if err != nil {
		e.t.Fatalf("host connect: %v\nbridge stderr:\n%s", err, p.stderr.String())
	}
	return sess, p
}

func (p *bridgeInProcess) wait(t *testing.T) {
	t.Helper()
	select {
	case code := <-p.code:
		if code != 0 {
			t.Errorf("bridge exit %d\n%s", code, p.stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the bridge did not stop after stdin closed")
	}
}

// The server's requests and notifications reach the host, and the host's
// answers reach the server: during a call (on the POST's event stream, or
// on the GET stream when the server answers POSTs with JSON) and outside of
// any call (on the GET stream, which the bridge opens itself). Requests
// after initialize carry the session id and the negotiated protocol version.
func TestBridge_ForwardsServerMessagesBothWays(t *testing.T) {
	for _, jsonResp := range []bool{false, true} {
		name := "SSE"
		if jsonResp {
			name = "JSON"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newBridgeEnv(t, stack.Config{})
			e.login(ctx)

			srv := mcp.NewServer(&mcp.Implementation{Name: "forwarding", Version: "1"}, nil)
			sessions := make(chan *mcp.ServerSession, 1)
			mcp.AddTool(srv, &mcp.Tool{Name: "roots"}, func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
				select {
				case sessions <- req.Session:
				default:
				}
				// With JSON answers, these go on the GET stream, which the
				// server may not have attached yet right after initialize.
				retry := func(f func() error) (err error) {
					for range 40 {
						if err = f(); err == nil || ctx.Err() != nil {
							return err
						}
						time.Sleep(50 * time.Millisecond)
					}
					return err
				}
				if tok := req.Params.GetProgressToken(); tok != nil {
					if err := retry(func() error {
						return req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: 1, Total: 2, Message: "asking"})
					}); err != nil {
						return nil, nil, err
					}
				}
				var res *mcp.ListRootsResult
				if err := retry(func() (err error) { res, err = req.Session.ListRoots(ctx, nil); return err }); err != nil {
					return nil, nil, fmt.Errorf("roots/list: %w", err)
				}
				var uris []string
				for _, r := range res.Roots {
					uris = append(uris, r.URI)
				}
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Join(uris, ",")}}}, nil, nil
			})
			cancelled := make(chan struct{}, 1)
			mcp.AddTool(srv, &mcp.Tool{Name: "slow"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
				select {
				case <-ctx.Done():
					cancelled <- struct{}{}
				case <-time.After(20 * time.Second):
				}
				return nil, nil, errors.New("slow")
			})
			e.useMCPServer(srv, &mcp.StreamableHTTPOptions{JSONResponse: jsonResp})

			progress := make(chan *mcp.ProgressNotificationParams, 10)
			cl := &mcp.ClientOptions{ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
				progress <- r.Params
			}}
			host := mcp.NewClient(&mcp.Implementation{Name: "test-host", Version: "1"}, cl)
			host.AddRoots(&mcp.Root{URI: "file:///work", Name: "work"})
			sess, p := e.startInProcess(ctx, host)
			defer func() {
				if t.Failed() {
					t.Logf("bridge stderr:\n%s", p.stderr.String())
				}
			}()

			// During a call: a progress notification and roots/list from the
			// server, the host's answer back.
			params := &mcp.CallToolParams{Name: "roots"}
			params.SetProgressToken("tok-1")
			res, err := sess.CallTool(ctx, params)
			if err != nil || res.IsError || bridgeText(res) != "file:///work" {
				t.Fatalf("CallTool(roots): %v %v", err, res)
			}
			select {
			case pr := <-progress:
				if pr.ProgressToken != "tok-1" || pr.Message != "asking" {
					t.Errorf("progress %+v", pr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no progress notification")
			}

			// Outside of any call: on the GET stream.
			ss := <-sessions
			bridgeWaitFor(t, "the bridge's GET stream", func() bool { return e.gets.Load() > 0 })
			var roots *mcp.ListRootsResult
			bridgeWaitFor(t, "roots/list over the GET stream", func() bool {
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				roots, err = ss.ListRoots(rctx, nil)
				return err == nil
			})
			if len(roots.Roots) != 1 || roots.Roots[0].URI != "file:///work" {
				t.Errorf("roots %+v", roots)
			}
			bridgeWaitFor(t, "a notification over the GET stream", func() bool {
				return ss.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: "tok-2", Progress: 2, Message: "out of band"}) == nil
			})
			select {
			case pr := <-progress:
				if pr.ProgressToken != "tok-2" {
					t.Errorf("progress %+v", pr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no progress notification on the GET stream")
			}

			// The host gives up on a call: its notifications/cancelled
			// reaches the server, and the bridge stops waiting for the
			// answer.
			cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = sess.CallTool(cctx, &mcp.CallToolParams{Name: "slow"})
			ccancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("slow call: %v", err)
			}
			select {
			case <-cancelled:
			case <-time.After(5 * time.Second):
				t.Error("the server did not see the cancellation")
			}

			// Headers: every request after initialize names the session and
			// the negotiated version.
			version := sess.InitializeResult().ProtocolVersion
			e.mu.Lock()
			for i, h := range e.headers {
				if h.Get(bridgeSessionHeader) == "" {
					continue // server/discover and initialize
				}
				if got := h.Get(bridgeProtocolHeader); got != version {
					t.Errorf("%s #%d: %s %q, want %q", e.methods[i], i, bridgeProtocolHeader, got, version)
				}
			}
			e.mu.Unlock()

			start := time.Now()
			sess.Close()
			p.wait(t)
			if d := time.Since(start); d > bridgeDrainTimeout/2 {
				t.Errorf("the bridge took %v to exit: it waited for the cancelled call", d)
			}
		})
	}
}

func bridgeWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// When the server forgets the session (it restarted), the bridge opens a
// new one, replaying the host's initialize, and sends the request again:
// the host sees nothing.
func TestBridge_ReopensSessionTheServerForgot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newBridgeEnv(t, stack.Config{})
	e.login(ctx)
	newServer := func(gen string) *mcp.Server {
		srv := mcp.NewServer(&mcp.Implementation{Name: "restarting", Version: gen}, nil)
		mcp.AddTool(srv, &mcp.Tool{Name: "gen"}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: gen}}}, nil, nil
		})
		return srv
	}
	e.useMCPServer(newServer("1"), nil)
	sess, p := e.startInProcess(ctx, nil)
	defer func() {
		if t.Failed() {
			t.Logf("bridge stderr:\n%s", p.stderr.String())
		}
	}()
	gen := func() string {
		t.Helper()
		res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "gen"})
		if err != nil {
			t.Fatalf("CallTool: %v", err)
		}
		return bridgeText(res)
	}
	if g := gen(); g != "1" {
		t.Fatalf("gen %q", g)
	}
	e.useMCPServer(newServer("2"), nil) // a new handler knows no sessions
	for range 3 {
		if g := gen(); g != "2" {
			t.Fatalf("gen %q after the restart", g)
		}
	}
	if !strings.Contains(p.stderr.String(), "opened a new session with the server") {
		t.Errorf("stderr:\n%s", p.stderr.String())
	}
	sess.Close()
	p.wait(t)
}

// A stateless server (protocol 2026-07-28: server/discover, no
// initialize, no session, no GET stream) works through the bridge too: the
// SDK's connection takes the version header from each request's _meta.
func TestBridge_StatelessServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newBridgeEnv(t, stack.Config{})
	e.login(ctx)
	srv := mcp.NewServer(&mcp.Implementation{Name: "stateless", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo"}, func(_ context.Context, _ *mcp.CallToolRequest, in struct {
		Text string `json:"text"`
	}) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
	})
	e.useMCPServer(srv, &mcp.StreamableHTTPOptions{Stateless: true})

	sess, p := e.startInProcess(ctx, nil)
	defer func() {
		if t.Failed() {
			t.Logf("bridge stderr:\n%s", p.stderr.String())
		}
	}()
	version := sess.InitializeResult().ProtocolVersion
	if version < bridgeStatelessProtocol {
		t.Fatalf("negotiated %q", version)
	}
	e.clk.Advance(2 * time.Hour) // and across an expiry
	res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "hi"}})
	if err != nil || bridgeText(res) != "hi" {
		t.Fatalf("CallTool: %v %v", err, res)
	}
	if n := e.refreshes.Load(); n != 1 {
		t.Errorf("%d refreshes", n)
	}
	if n := e.gets.Load(); n != 0 {
		t.Errorf("%d GETs on a stateless server", n)
	}
	e.mu.Lock()
	for i, h := range e.headers {
		if got := h.Get(bridgeProtocolHeader); got != version {
			t.Errorf("%s #%d: %s %q, want %q", e.methods[i], i, bridgeProtocolHeader, got, version)
		}
	}
	e.mu.Unlock()
	sess.Close()
	p.wait(t)
}

// Raw stdio: without a grant, a request gets the needs_reauth error (no
// browser, no hang); a line that is not JSON-RPC gets a JSON-RPC error and
// the bridge goes on; EOF on stdin ends it with exit 0.
func TestBridge_RawStdioWithoutGrant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newBridgeEnv(t, stack.Config{})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	stderr := &bridgeBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- bridgeMain(ctx, []string{e.url, "--config-dir", e.dir}, inR, outW, stderr)
		outW.Close()
	}()
	lines := bufio.NewScanner(outR)
	exchange := func(in string) map[string]any {
		t.Helper()
		if _, err := io.WriteString(inW, in+"\n"); err != nil {
			t.Fatal(err)
		}
		if !lines.Scan() {
			t.Fatalf("no answer to %s: %v\n%s", in, lines.Err(), stderr.String())
		}
		var m map[string]any
		if err := json.Unmarshal(lines.Bytes(), &m); err != nil {
			t.Fatalf("answer %q: %v", lines.Text(), err)
		}
		return m
	}
	errOf := func(m map[string]any) (float64, string, map[string]any) {
		eo, _ := m["error"].(map[string]any)
		c, _ := eo["code"].(float64)
		msg, _ := eo["message"].(string)
		d, _ := eo["data"].(map[string]any)
		return c, msg, d
	}

	m := exchange(`{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	c, msg, data := errOf(m)
	if m["id"] != float64(7) || c != codeNeedsReauth || data["reason"] != "needs_reauth" || data["cause"] != client.ReasonNoGrant ||
		!strings.HasSuffix(msg, "sign in again with: evergrant login --config-dir "+e.dir+" "+e.url) {
		t.Errorf("initialize without a grant: %v", m)
	}
	m = exchange(`this is not json`)
	if c, _, _ := errOf(m); m["id"] != nil || c != jsonrpc.CodeParseError {
		t.Errorf("garbage: %v", m)
	}
	m = exchange(`{"hello":"world"}`)
	if c, _, _ := errOf(m); m["id"] != nil || c != jsonrpc.CodeInvalidRequest {
		t.Errorf("not JSON-RPC: %v", m)
	}
	m = exchange(`{"jsonrpc":"2.0","id":"s-1","method":"ping"}`)
	if c, _, _ := errOf(m); m["id"] != "s-1" || c != codeNeedsReauth {
		t.Errorf("ping: %v", m)
	}
	inW.Close()
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit %d", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the bridge did not exit on EOF")
	}
	if lines.Scan() {
		t.Errorf("unexpected output %q", lines.Text())
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
		if got := loginHint("https://a.example/mcp", c.dir, c.flags...); got != c.want {
			t.Errorf("loginHint(%q, %q) = %q, want %q", c.dir, c.flags, got, c.want)
		}
	}
}
