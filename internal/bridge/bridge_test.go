package bridge

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/astest"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
	"github.com/evergrant/evergrant/store"
)

// env is the serve stack on httptest with a grant store and counters
// (fixture.Serve), and a record of the MCP endpoint's requests.
//
// Clock is the stack's clock. The bridge runs on the real clock (it has its
// own Transport), so moving Clock makes the server see the bridge's token
// as expired or old without waiting.
type env struct {
	*fixture.Serve
	t *testing.T

	mcp  atomic.Pointer[http.Handler] // replaces the stack's MCP server when set
	gets atomic.Int64                 // GETs of the MCP endpoint (event streams)

	mu      sync.Mutex
	headers []http.Header // of the MCP endpoint's requests
	methods []string
}

func newEnv(t *testing.T, cfg stack.Config) *env {
	t.Helper()
	e := &env{Serve: fixture.NewServe(t, cfg), t: t}
	e.HandleMCP(http.HandlerFunc(e.serveMCP))
	return e
}

// serveMCP records a request to the MCP endpoint and serves it.
func (e *env) serveMCP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.headers = append(e.headers, r.Header.Clone())
	e.methods = append(e.methods, r.Method)
	e.mu.Unlock()
	if r.Method == http.MethodGet {
		e.gets.Add(1)
	}
	if h := e.mcp.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	e.Stack.Handler.ServeHTTP(w, r)
}

// useMCPServer puts srv, protected as the stack's MCP server is, in place
// of the stack's MCP server.
func (e *env) useMCPServer(srv *mcp.Server, opts *mcp.StreamableHTTPOptions) {
	e.t.Helper()
	base := e.Stack.Issuer
	v, err := server.NewJWTVerifier(server.JWTConfig{Issuer: base, Audience: e.URL, JWKSURL: base + authserver.PathJWKS, RequireATJWT: true, Now: e.Clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	mux := http.NewServeMux()
	err = server.Protect(mux, srv, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, opts), server.Config{
		Resource: e.URL, Verifier: v, Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{base}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	var h http.Handler = mux
	e.mcp.Store(&h)
}

// loginCommand is the Config.LoginCommand of the tests: the one
// "evergrant bridge --config-dir dir" gives.
func loginCommand(serverURL, dir string) func(SignIn) string {
	return func(s SignIn) string {
		cmd := "evergrant login "
		if s.NewClient {
			cmd += "--new-client "
		}
		if len(s.Scopes) > 0 {
			cmd += "--scope '" + strings.Join(s.Scopes, " ") + "' "
		}
		return cmd + "--config-dir " + dir + " " + serverURL
	}
}

// serveStdio runs a Bridge for serverURL on the grant store in dir, with
// what "evergrant bridge --config-dir dir --log-level level serverURL"
// configures: a Transport on that store, a text logger on stderr, the
// login command. After Serve, it waits for a refresh running in the
// background, as the command does.
func serveStdio(ctx context.Context, serverURL, dir string, level slog.Level, stdin io.Reader, stdout, stderr io.Writer) error {
	st, err := store.OpenFile(dir)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	tr := client.NewTransport(client.Config{Store: st, Logger: logger})
	err = New(Config{
		URL:          serverURL,
		Transport:    tr,
		Logger:       logger.With("server", serverURL),
		LoginCommand: loginCommand(serverURL, dir),
	}).Serve(ctx, stdin, stdout)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), client.DefaultRefreshTimeout)
	defer cancel()
	tr.Wait(wctx)
	return err
}

// running is a bridge run in this process (so the race detector sees it)
// for a host made of the official Go SDK's client on pipes.
type running struct {
	done   chan error // Serve's result
	stderr *astest.SyncBuffer
}

// startInProcess runs the bridge for cl (nil: a plain client) and
// connects cl to it.
func (e *env) startInProcess(ctx context.Context, cl *mcp.Client) (*mcp.ClientSession, *running) {
	e.t.Helper()
	if cl == nil {
		cl = mcp.NewClient(&mcp.Implementation{Name: "test-host", Version: "1"}, nil)
	}
	inR, inW := io.Pipe()   // host -> bridge
	outR, outW := io.Pipe() // bridge -> host
	p := &running{done: make(chan error, 1), stderr: &astest.SyncBuffer{}}
	go func() {
		p.done <- serveStdio(ctx, e.URL, e.Dir, slog.LevelDebug, inR, outW, p.stderr)
		outW.Close()
	}()
	sess, err := cl.Connect(ctx, &mcp.IOTransport{Reader: outR, Writer: inW}, nil)
	if err != nil {
		e.t.Fatalf("host connect: %v\nbridge stderr:\n%s", err, p.stderr.String())
	}
	return sess, p
}

func (p *running) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("Serve: %v\n%s", err, p.stderr.String())
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
func TestForwardsServerMessagesBothWays(t *testing.T) {
	for _, jsonResp := range []bool{false, true} {
		name := "SSE"
		if jsonResp {
			name = "JSON"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			e := newEnv(t, stack.Config{})
			e.Login(ctx)

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
				// roots/list is the server's request the test forwards: a
				// request of the server to the host, as elicitation is.
				//lint:ignore SA1019 roots, deprecated but in the protocol, is the server-to-client request the SDK's client answers by itself.
				var res *mcp.ListRootsResult
				//lint:ignore SA1019 roots, as above.
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
			//lint:ignore SA1019 roots, as above.
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
			if err != nil || res.IsError || fixture.ToolText(res) != "file:///work" {
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
			fixture.WaitFor(t, "the bridge's GET stream", func() bool { return e.gets.Load() > 0 })
			//lint:ignore SA1019 roots, as above.
			var roots *mcp.ListRootsResult
			fixture.WaitFor(t, "roots/list over the GET stream", func() bool {
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				//lint:ignore SA1019 roots, as above.
				roots, err = ss.ListRoots(rctx, nil)
				return err == nil
			})
			if len(roots.Roots) != 1 || roots.Roots[0].URI != "file:///work" {
				t.Errorf("roots %+v", roots)
			}
			fixture.WaitFor(t, "a notification over the GET stream", func() bool {
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
				if h.Get(headerSession) == "" {
					continue // server/discover and initialize
				}
				if got := h.Get(headerProtocol); got != version {
					t.Errorf("%s #%d: %s %q, want %q", e.methods[i], i, headerProtocol, got, version)
				}
			}
			e.mu.Unlock()

			start := time.Now()
			sess.Close()
			p.wait(t)
			if d := time.Since(start); d > drainTimeout/2 {
				t.Errorf("the bridge took %v to exit: it waited for the cancelled call", d)
			}
		})
	}
}

// When the server forgets the session (it restarted), the bridge opens a
// new one, replaying the host's initialize, and sends the request again:
// the host sees nothing.
func TestReopensSessionTheServerForgot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newEnv(t, stack.Config{})
	e.Login(ctx)
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
		return fixture.ToolText(res)
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
func TestStatelessServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newEnv(t, stack.Config{})
	e.Login(ctx)
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
	if version < statelessProtocol {
		t.Fatalf("negotiated %q", version)
	}
	e.Clock.Advance(2 * time.Hour) // and across an expiry
	res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "hi"}})
	if err != nil || fixture.ToolText(res) != "hi" {
		t.Fatalf("CallTool: %v %v", err, res)
	}
	if n := e.Refreshes.Load(); n != 1 {
		t.Errorf("%d refreshes", n)
	}
	if n := e.gets.Load(); n != 0 {
		t.Errorf("%d GETs on a stateless server", n)
	}
	e.mu.Lock()
	for i, h := range e.headers {
		if got := h.Get(headerProtocol); got != version {
			t.Errorf("%s #%d: %s %q, want %q", e.methods[i], i, headerProtocol, got, version)
		}
	}
	e.mu.Unlock()
	sess.Close()
	p.wait(t)
}

// Raw stdio: without a grant, a request gets the needs_reauth error (no
// browser, no hang); a line that is not JSON-RPC gets a JSON-RPC error and
// the bridge goes on; EOF on stdin ends Serve with nil.
func TestRawStdioWithoutGrant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newEnv(t, stack.Config{})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	stderr := &astest.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- serveStdio(ctx, e.URL, e.Dir, slog.LevelWarn, inR, outW, stderr)
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
	if m["id"] != float64(7) || c != CodeNeedsReauth || data["reason"] != "needs_reauth" || data["cause"] != string(client.ReasonNoGrant) ||
		!strings.HasSuffix(msg, "sign in again with: evergrant login --config-dir "+e.Dir+" "+e.URL) {
		t.Errorf("initialize without a grant: %v", m)
	}
	if data["login"] != "evergrant login --config-dir "+e.Dir+" "+e.URL {
		t.Errorf("data.login %q", data["login"])
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
	if c, _, _ := errOf(m); m["id"] != "s-1" || c != CodeNeedsReauth {
		t.Errorf("ping: %v", m)
	}
	inW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the bridge did not exit on EOF")
	}
	if lines.Scan() {
		t.Errorf("unexpected output %q", lines.Text())
	}
}
