package stack_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/internal/testclock"
)

// The whole story of docs/design.md#signal-rule-1 and #client-rule-1: the
// fake upstream starts rejecting, upstream_search signals, the client
// refreshes once, and the retried call (same JSON-RPC id) succeeds — with
// this project's client and the official Go SDK on both sides.
func TestStory_UpstreamSignalRecoveredWithSameID(t *testing.T) {
	for _, jsonResp := range []bool{false, true} {
		name := "SSE"
		if jsonResp {
			name = "JSON"
		}
		t.Run(name, func(t *testing.T) {
			clk := testclock.New(time.Now())
			ts := httptest.NewUnstartedServer(nil)
			base := "http://" + ts.Listener.Addr().String()
			st, err := stack.New(stack.Config{BaseURL: base, AutoApprove: true, UpstreamTokenMaxAge: 10 * time.Minute,
				JSONResponse: jsonResp, Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{h: st.Handler}
			ts.Config.Handler = rec
			ts.Start()
			defer ts.Close()

			tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}, RefreshMargin: -1, Now: clk.Now})
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
