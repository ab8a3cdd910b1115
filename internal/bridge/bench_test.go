package bridge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/astest"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/store"
)

// Bridge overhead against a direct call (docs/design.md#proof): the same
// official Go SDK client calls the stack's whoami tool either directly
// (streamable HTTP through client.Transport) or through an in-process
// bridge on in-memory stdio pipes. Both go through one HTTP hop to the same
// kind of stack with the same stored grant, so the ratio of the two ns/op
// is what the bridge adds: a JSON-RPC round trip over the pipes, its
// decoding and re-encoding, and its bookkeeping.
//
//	go test -run '^$' -bench CallTool -benchtime 200x ./internal/bridge

// benchEnv is the setup both benchmarks share: the serve stack on httptest
// (real clock, no recording wrapper, unlike env, which takes a *testing.T)
// and a grant stored in a temp config dir, as "evergrant login" would.
type benchEnv struct {
	ctx   context.Context
	url   string      // the MCP server
	dir   string      // the grant store, as evergrant's --config-dir
	store *store.File // the grant store of dir
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	ts := httptest.NewUnstartedServer(nil)
	st, err := stack.New(stack.Config{BaseURL: "http://" + ts.Listener.Addr().String(), AutoApprove: true})
	if err != nil {
		b.Fatal(err)
	}
	ts.Config.Handler = st.Handler
	ts.Start()
	b.Cleanup(ts.Close) // runs after the sessions' cleanups (LIFO)
	e := &benchEnv{ctx: ctx, url: st.MCPURL, dir: filepath.Join(b.TempDir(), "config")}
	if e.store, err = store.OpenFile(e.dir); err != nil {
		b.Fatal(err)
	}
	login := client.NewTransport(client.Config{Store: e.store, Authorizer: &client.HeadlessAuthorizer{}})
	if err := login.Authorize(ctx, e.url); err != nil {
		b.Fatalf("login: %v", err)
	}
	return e
}

func benchClient() *mcp.Client {
	return mcp.NewClient(&mcp.Implementation{Name: "bench-host", Version: "1"}, nil)
}

// direct connects a client to the server with client.Transport on the
// stored grant, as "evergrant call" does.
func (e *benchEnv) direct(b *testing.B) *mcp.ClientSession {
	b.Helper()
	tr := client.NewTransport(client.Config{Store: e.store})
	sess, err := benchClient().Connect(e.ctx, &mcp.StreamableClientTransport{Endpoint: e.url, HTTPClient: &http.Client{Transport: tr}}, nil)
	if err != nil {
		b.Fatalf("connect: %v", err)
	}
	b.Cleanup(func() { sess.Close() })
	return sess
}

// bridged runs the bridge in-process, as startInProcess does, at the
// command's default log level (warn), and connects a client to it over
// pipes.
func (e *benchEnv) bridged(b *testing.B) *mcp.ClientSession {
	b.Helper()
	inR, inW := io.Pipe()   // host -> bridge
	outR, outW := io.Pipe() // bridge -> host
	stderr := &astest.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- serveStdio(e.ctx, e.url, e.dir, slog.LevelWarn, inR, outW, stderr)
		outW.Close()
	}()
	wait := func() {
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("Serve: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			b.Errorf("the bridge did not stop after stdin closed\n%s", stderr.String())
		}
	}
	sess, err := benchClient().Connect(e.ctx, &mcp.IOTransport{Reader: outR, Writer: inW}, nil)
	if err != nil {
		inW.Close()
		wait()
		b.Fatalf("host connect: %v\nbridge stderr:\n%s", err, stderr.String())
	}
	b.Cleanup(func() {
		sess.Close() // closes stdin: the bridge ends the session and exits
		wait()
	})
	return sess
}

// benchWhoami calls whoami on sess once per iteration. A first call,
// outside the timed part, checks the answer and warms the connection up.
func benchWhoami(b *testing.B, ctx context.Context, sess *mcp.ClientSession) {
	b.Helper()
	whoami := func() (string, error) {
		res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "whoami"})
		if err != nil {
			return "", err
		}
		if res.IsError {
			return "", fmt.Errorf("whoami: tool error: %s", fixture.ToolText(res))
		}
		return fixture.ToolText(res), nil
	}
	if text, err := whoami(); err != nil {
		b.Fatal(err)
	} else if !strings.Contains(text, "demo-user") {
		b.Fatalf("whoami: %q", text)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := whoami(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirectCallTool is the baseline of BenchmarkBridgeCallTool: the
// client talks streamable HTTP to the server itself.
func BenchmarkDirectCallTool(b *testing.B) {
	e := newBenchEnv(b)
	benchWhoami(b, e.ctx, e.direct(b))
}

// BenchmarkBridgeCallTool is the same call through the bridge on stdio.
func BenchmarkBridgeCallTool(b *testing.B) {
	e := newBenchEnv(b)
	benchWhoami(b, e.ctx, e.bridged(b))
}
