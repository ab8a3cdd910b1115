package stack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
)

// clock is a time source tests can move forward.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time            { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration)   { c.off.Add(int64(d)) }
func (c *clock) NowFunc() func() time.Time { return c.Now }

// exchange is one POST to the MCP endpoint.
type exchange struct {
	body   []byte
	status int
}

// recordMCP wraps the stack's handler and records POSTs to /mcp.
type recordMCP struct {
	h  http.Handler
	mu sync.Mutex
	ex []exchange
}

// statusWriter records the status into the exchange as soon as it is
// written (a streaming handler may return long after).
type statusWriter struct {
	http.ResponseWriter
	rec *recordMCP
	i   int
}

func (w *statusWriter) set(c int) {
	w.rec.mu.Lock()
	if w.rec.ex[w.i].status == 0 {
		w.rec.ex[w.i].status = c
	}
	w.rec.mu.Unlock()
}

func (w *statusWriter) WriteHeader(c int) {
	w.set(c)
	w.ResponseWriter.WriteHeader(c)
}
func (w *statusWriter) Write(b []byte) (int, error) {
	w.set(200)
	return w.ResponseWriter.Write(b)
}
func (w *statusWriter) Flush()                      { http.NewResponseController(w.ResponseWriter).Flush() }
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (r *recordMCP) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != stack.MCPPath {
		r.h.ServeHTTP(w, req)
		return
	}
	body, _ := io.ReadAll(req.Body)
	req.Body = io.NopCloser(bytes.NewReader(body))
	r.mu.Lock() // record in arrival order
	i := len(r.ex)
	r.ex = append(r.ex, exchange{body: body})
	r.mu.Unlock()
	r.h.ServeHTTP(&statusWriter{ResponseWriter: w, rec: r, i: i}, req)
}

// The whole story of DESIGN §4.2: the fake upstream starts rejecting,
// upstream_search signals, the client refreshes once, and the retried call
// (same JSON-RPC id) succeeds — with this project's client and the official
// Go SDK on both sides.
func TestStory_UpstreamSignalRecoveredWithSameID(t *testing.T) {
	for _, jsonResp := range []bool{false, true} {
		name := "SSE"
		if jsonResp {
			name = "JSON"
		}
		t.Run(name, func(t *testing.T) {
			clk := &clock{}
			ts := httptest.NewUnstartedServer(nil)
			base := "http://" + ts.Listener.Addr().String()
			st, err := stack.New(stack.Config{BaseURL: base, AutoApprove: true, UpstreamTokenMaxAge: 10 * time.Minute,
				JSONResponse: jsonResp, Now: clk.NowFunc()})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordMCP{h: st.Handler}
			ts.Config.Handler = rec
			ts.Start()
			defer ts.Close()

			tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}, RefreshMargin: -1, Now: clk.NowFunc()})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cl := mcp.NewClient(&mcp.Implementation{Name: "story", Version: "1"}, nil)
			sess, err := cl.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: st.MCPURL, HTTPClient: &http.Client{Transport: tr}}, nil)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer sess.Close()
			search := func() *mcp.CallToolResult {
				t.Helper()
				res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "upstream_search", Arguments: map[string]any{"query": "refresh"}})
				if err != nil {
					t.Fatalf("CallTool: %v", err)
				}
				if res.IsError {
					t.Fatalf("tool error: %v", res.Content)
				}
				return res
			}
			search()
			who, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "whoami"})
			if err != nil || who.IsError {
				t.Fatalf("whoami: %v %v", err, who)
			}
			if b, _ := json.Marshal(who.StructuredContent); !bytes.Contains(b, []byte(`"subject":"demo-user"`)) {
				t.Fatalf("whoami: %s", b)
			}
			if n := tr.Stats().Refreshes; n != 0 {
				t.Fatalf("refreshes before the upstream rejects: %d", n)
			}

			s0 := tr.Stats()
			clk.Advance(11 * time.Minute) // the upstream now finds the token too old
			rec.mu.Lock()
			before := len(rec.ex)
			rec.mu.Unlock()
			res := search()
			if b, _ := json.Marshal(res.StructuredContent); !bytes.Contains(b, []byte("result 1 for refresh")) {
				t.Fatalf("result %s", b)
			}
			if s := tr.Stats(); s.Refreshes-s0.Refreshes != 1 || s.Retries-s0.Retries != 1 || s.Unauthorized-s0.Unauthorized != 1 {
				t.Fatalf("stats %+v (before %+v), want one 401, one refresh and one retry", s, s0)
			}
			rec.mu.Lock()
			ex := append([]exchange(nil), rec.ex[before:]...)
			rec.mu.Unlock()
			if len(ex) != 2 || ex[0].status != 401 || ex[1].status != 200 {
				t.Fatalf("MCP endpoint saw %d POSTs (statuses %v), want the signalled 401 then 200", len(ex), statuses(ex))
			}
			if !bytes.Equal(ex[0].body, ex[1].body) {
				t.Fatalf("retried call differs:\n%s\n%s", ex[0].body, ex[1].body)
			}
		})
	}
}

func statuses(ex []exchange) []int {
	var s []int
	for _, e := range ex {
		s = append(s, e.status)
	}
	return s
}
