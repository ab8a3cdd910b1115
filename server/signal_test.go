package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

// mode is one way the official Go SDK's handler can answer.
type mode struct {
	name       string
	stateless  bool
	json       bool
	eventStore bool
}

var modes = []mode{
	{name: "stateful/SSE"},
	{name: "stateful/JSON", json: true},
	{name: "stateless/SSE", stateless: true},
	{name: "stateless/JSON", stateless: true, json: true},
	{name: "stateful/SSE+eventstore", eventStore: true},
}

type empty struct{}

// newSignalServer serves an official-SDK MCP server with tools that
// signal, given to Protect (which adds the signal middleware to it), and
// returns the URL of its endpoint.
func newSignalServer(t *testing.T, m mode, cfg server.Config) (endpoint string) {
	t.Helper()
	srv := mcp.NewServer(&mcp.Implementation{Name: "signals", Version: "1"}, nil)
	tool := func(name string, h func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, any, error)) {
		mcp.AddTool(srv, &mcp.Tool{Name: name}, func(ctx context.Context, req *mcp.CallToolRequest, _ empty) (*mcp.CallToolResult, any, error) {
			return h(ctx, req)
		})
	}
	text := func(s string) *mcp.CallToolResult {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
	}
	tool("ok", func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		return text("fine for " + req.Extra.TokenInfo.UserID), nil, nil
	})
	tool("expire", func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		return nil, nil, server.TokenExpired(`upstream said "no"`)
	})
	tool("wrapped", func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		return nil, nil, fmt.Errorf("calling the upstream: %w", server.TokenExpired("upstream rejected the token"))
	})
	tool("scope", func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		return nil, nil, server.InsufficientScope("files.write")
	})
	tool("plain", func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		return nil, nil, errors.New("boom")
	})
	tool("progress_then_expire", func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: req.Params.GetProgressToken(), Progress: 1, Message: "working"})
		return nil, nil, server.TokenExpired("upstream rejected the token")
	})
	tool("progress_wait_expire", func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: req.Params.GetProgressToken(), Progress: 1, Message: "working"})
		time.Sleep(300 * time.Millisecond) // longer than HoldNotifications below
		return nil, nil, server.TokenExpired("upstream rejected the token")
	})
	tool("elicit", func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, any, error) {
		res, err := req.Session.Elicit(ctx, &mcp.ElicitParams{Message: "proceed?", RequestedSchema: &jsonschemaObject})
		if err != nil {
			return nil, nil, err
		}
		return text("elicited " + res.Action), nil, nil
	})
	opts := &mcp.StreamableHTTPOptions{Stateless: m.stateless, JSONResponse: m.json}
	if m.eventStore {
		opts.EventStore = mcp.NewMemoryEventStore(nil)
	}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, opts)
	if cfg.HoldNotifications == 0 {
		cfg.HoldNotifications = 100 * time.Millisecond
	}
	ts := httptest.NewServer(protectServer(t, srv, cfg, h))
	t.Cleanup(ts.Close)
	return ts.URL + "/mcp"
}

// rawClient speaks streamable HTTP by hand, to see statuses and headers.
type rawClient struct {
	t       *testing.T
	url     string
	token   string
	session string
}

func (c *rawClient) post(body string) *http.Response {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
		req.Header.Set("MCP-Protocol-Version", "2025-11-25")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp
}

func (c *rawClient) initialize() {
	c.t.Helper()
	resp := c.post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{}},"clientInfo":{"name":"raw","version":"1"}}}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		c.t.Fatalf("initialize: %d", resp.StatusCode)
	}
	c.session = resp.Header.Get("Mcp-Session-Id")
	resp = c.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	resp.Body.Close()
}

// messages reads every JSON-RPC message of a response (JSON or SSE).
func messages(t *testing.T, resp *http.Response) []map[string]any {
	t.Helper()
	defer resp.Body.Close()
	var out []map[string]any
	add := func(b []byte) {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("message %q: %v", b, err)
		}
		out = append(out, m)
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data:"); ok && strings.TrimSpace(d) != "" {
				add([]byte(strings.TrimSpace(d)))
			}
		}
		return out
	}
	b, _ := io.ReadAll(resp.Body)
	if len(strings.TrimSpace(string(b))) > 0 {
		add(b)
	}
	return out
}

func callTool(name string, id int) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":{},"_meta":{"progressToken":"p%d"}}}`, id, name, id)
}

func TestSignals_TokenExpiredIs401WithSameID(t *testing.T) {
	for _, m := range modes {
		for _, tool := range []string{"expire", "wrapped", "progress_then_expire"} {
			t.Run(m.name+"/"+tool, func(t *testing.T) {
				endpoint := newSignalServer(t, m, server.Config{})
				c := &rawClient{t: t, url: endpoint, token: "tok-t"}
				c.initialize()
				resp := c.post(callTool(tool, 77))
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401", resp.StatusCode)
				}
				ch, ok := oauth.ParseBearerChallenge(resp.Header)
				if !ok || ch.Error != "invalid_token" || ch.ResourceMetadata == "" || !strings.Contains(ch.ErrorDescription, "upstream") {
					t.Fatalf("challenge %q", resp.Header.Get("WWW-Authenticate"))
				}
				msgs := messages(t, resp)
				if len(msgs) != 1 || msgs[0]["id"] != float64(77) || msgs[0]["error"].(map[string]any)["code"] != float64(-32060) {
					t.Fatalf("body %v, want the JSON-RPC error with id 77", msgs)
				}
				// The same token is refused from now on.
				resp = c.post(callTool("ok", 78))
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("next request with the signalled token: %d, want 401", resp.StatusCode)
				}
			})
		}
	}
}

func TestSignals_InsufficientScopeIs403(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			endpoint := newSignalServer(t, m, server.Config{})
			c := &rawClient{t: t, url: endpoint, token: "tok-t"}
			c.initialize()
			resp := c.post(callTool("scope", 5))
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("status %d, want 403", resp.StatusCode)
			}
			ch, _ := oauth.ParseBearerChallenge(resp.Header)
			if ch.Error != "insufficient_scope" || len(ch.Scope) != 1 || ch.Scope[0] != "files.write" {
				t.Fatalf("challenge %q", resp.Header.Get("WWW-Authenticate"))
			}
			if msgs := messages(t, resp); len(msgs) != 1 || msgs[0]["id"] != float64(5) {
				t.Fatalf("body %v", msgs)
			}
			// The token itself is still good.
			resp = c.post(callTool("ok", 6))
			if resp.StatusCode != 200 {
				t.Fatalf("after 403: %d", resp.StatusCode)
			}
			resp.Body.Close()
		})
	}
}

// Ordinary tool errors keep the SDK's behaviour: an isError result in 200.
func TestSignals_OrdinaryErrorsUnchanged(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			endpoint := newSignalServer(t, m, server.Config{})
			c := &rawClient{t: t, url: endpoint, token: "tok-t"}
			c.initialize()
			for _, tool := range []string{"plain", "ok"} {
				resp := c.post(callTool(tool, 9))
				if resp.StatusCode != 200 {
					t.Fatalf("%s: status %d", tool, resp.StatusCode)
				}
				msgs := messages(t, resp)
				res, _ := msgs[len(msgs)-1]["result"].(map[string]any)
				if res == nil || (res["isError"] == true) != (tool == "plain") {
					t.Fatalf("%s: %v", tool, msgs)
				}
			}
		})
	}
}

// Given no mcp.Server, Protect adds no signal middleware: a signal is an
// ordinary tool error, and the token stays good.
func TestSignals_WithoutServerAreToolErrors(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "signals", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "expire"}, func(context.Context, *mcp.CallToolRequest, empty) (*mcp.CallToolResult, any, error) {
		return nil, nil, server.TokenExpired("upstream rejected the token")
	})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
	ts := httptest.NewServer(protectServer(t, nil, server.Config{}, h))
	t.Cleanup(ts.Close)
	c := &rawClient{t: t, url: ts.URL + "/mcp", token: "tok-t"}
	c.initialize()
	for id := range 2 {
		resp := c.post(callTool("expire", id+1))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("call %d: status %d, want 200", id+1, resp.StatusCode)
		}
		msgs := messages(t, resp)
		if res, _ := msgs[len(msgs)-1]["result"].(map[string]any); res == nil || res["isError"] != true {
			t.Fatalf("call %d: %v, want an isError result", id+1, msgs)
		}
	}
}

// Too late: a progress event went out before the signal (SSE only): the
// error stays in the stream and the token's next request gets 401.
func TestSignals_TooLateStaysInStreamAndRejectsToken(t *testing.T) {
	for _, m := range modes {
		if m.json {
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			endpoint := newSignalServer(t, m, server.Config{HoldNotifications: 50 * time.Millisecond})
			c := &rawClient{t: t, url: endpoint, token: "tok-tlate"}
			c.initialize()
			resp := c.post(callTool("progress_wait_expire", 11))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200 (the stream had started)", resp.StatusCode)
			}
			msgs := messages(t, resp)
			last := msgs[len(msgs)-1]
			if len(msgs) < 2 || msgs[0]["method"] != "notifications/progress" || last["id"] != float64(11) || last["error"] == nil {
				t.Fatalf("stream %v, want progress then the JSON-RPC error", msgs)
			}
			resp = c.post(callTool("ok", 12))
			resp.Body.Close()
			if resp.StatusCode != 401 {
				t.Fatalf("next request: %d, want 401", resp.StatusCode)
			}
		})
	}
}

var jsonschemaObject = mustSchema(`{"type":"object","properties":{"ok":{"type":"boolean"}}}`)

// Server-to-client requests during a tool call are released at once, so an
// elicitation completes (stateful modes; stateless cannot send requests).
func TestSignals_ElicitationDuringToolCall(t *testing.T) {
	for _, m := range modes {
		if m.stateless {
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			endpoint := newSignalServer(t, m, server.Config{HoldNotifications: 5 * time.Second})
			var asked atomic.Int32
			cl := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, &mcp.ClientOptions{
				ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
					asked.Add(1)
					return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"ok": true}}, nil
				},
			})
			hc := &http.Client{Transport: bearer("tok-t")}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sess, err := cl.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: hc}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "elicit"})
			if err != nil {
				t.Fatalf("CallTool: %v (did the holder deadlock the elicitation?)", err)
			}
			if asked.Load() != 1 || res.Content[0].(*mcp.TextContent).Text != "elicited accept" {
				t.Fatalf("result %v, asked %d", res.Content, asked.Load())
			}
		})
	}
}

// bearer adds a fixed token to requests.
type bearer string

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}
