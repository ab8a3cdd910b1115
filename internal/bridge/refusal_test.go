package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/internal/astest"
)

// rawHost drives a Bridge over pipes as a host would, collecting the
// answers by id.
type rawHost struct {
	t      *testing.T
	in     *io.PipeWriter
	stderr *astest.SyncBuffer
	done   chan error // Serve's result
	mu     sync.Mutex
	got    map[string]map[string]any
	cond   chan struct{} // closed and replaced on each line
}

// startRawHost runs a Bridge for serverURL, on an empty grant store, at
// the command's default log level (warn).
func startRawHost(t *testing.T, ctx context.Context, serverURL string) *rawHost {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &rawHost{t: t, in: inW, stderr: &astest.SyncBuffer{}, done: make(chan error, 1), got: map[string]map[string]any{}, cond: make(chan struct{})}
	dir := t.TempDir()
	go func() {
		h.done <- serveStdio(ctx, serverURL, dir, slog.LevelWarn, inR, outW, h.stderr)
		outW.Close()
	}()
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			raw, _ := json.Marshal(m["id"])
			h.mu.Lock()
			h.got[string(raw)] = m
			close(h.cond)
			h.cond = make(chan struct{})
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		inW.Close()
		select {
		case <-h.done:
		case <-time.After(15 * time.Second):
			t.Error("the bridge did not exit on EOF")
		}
	})
	return h
}

func (h *rawHost) send(line string) {
	h.t.Helper()
	if _, err := io.WriteString(h.in, line+"\n"); err != nil {
		h.t.Fatal(err)
	}
}

// answer waits for the answer with the given id (as JSON).
func (h *rawHost) answer(id string) map[string]any {
	h.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		h.mu.Lock()
		m, ok := h.got[id]
		c := h.cond
		h.mu.Unlock()
		if ok {
			return m
		}
		select {
		case <-c:
		case <-deadline:
			h.t.Fatalf("no answer for id %s\nbridge stderr:\n%s", id, h.stderr.String())
		}
	}
}

func errorMessage(m map[string]any) (code float64, msg string) {
	eo, _ := m["error"].(map[string]any)
	code, _ = eo["code"].(float64)
	msg, _ = eo["message"].(string)
	return code, msg
}

const rawInitialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`

// A plain-text 400 to one tools/call (a proxy, a firewall) fails that call
// only: a call in flight on the same session still gets its answer, the
// session is not replaced, and a refused notification does not end it
// either. Without keepSession the SDK's connection fails as a whole.
func TestRefusedPostFailsOnlyThatMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	started, release := make(chan struct{}), make(chan struct{})
	srv := mcp.NewServer(&mcp.Implementation{Name: "refusals", Version: "1"}, nil)
	type none struct{}
	mcp.AddTool(srv, &mcp.Tool{Name: "slow"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, any, error) {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "slow done"}}}, nil, nil
	})
	mcp.AddTool(srv, &mcp.Tool{Name: "bad"}, func(context.Context, *mcp.CallToolRequest, none) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "not reached"}}}, nil, nil
	})
	sdk := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	var mu sync.Mutex
	var inits, deletes int
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		s := string(body)
		mu.Lock()
		if strings.Contains(s, `"method":"initialize"`) {
			inits++
		}
		if r.Method == http.MethodDelete {
			deletes++
		}
		mu.Unlock()
		switch {
		case strings.Contains(s, `"name":"bad"`):
			http.Error(w, "bad thing\nfrom the proxy", http.StatusBadRequest)
			return
		case strings.Contains(s, `"method":"notifications/roots/list_changed"`):
			http.Error(w, "<html>no</html>", http.StatusForbidden)
			return
		}
		sdk.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close) // after the bridge has exited (cleanups run last first)

	h := startRawHost(t, ctx, hs.URL+"/mcp")
	h.send(rawInitialize)
	if m := h.answer("1"); m["result"] == nil {
		t.Fatalf("initialize: %v", m)
	}
	h.send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	h.send(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{}}}`)
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("slow never started")
	}
	h.send(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"bad","arguments":{}}}`)
	m := h.answer("3")
	if code, msg := errorMessage(m); code != -32603 || !strings.Contains(msg, "400 Bad Request: bad thing from the proxy") {
		t.Errorf("refused call: %v", m)
	}
	h.send(`{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`)
	h.send(`{"jsonrpc":"2.0","id":4,"method":"ping"}`)
	if m := h.answer("4"); m["result"] == nil {
		t.Errorf("ping after a refused notification: %v", m)
	}
	close(release)
	m = h.answer("2")
	res, _ := m["result"].(map[string]any)
	if content, _ := json.Marshal(res["content"]); !strings.Contains(string(content), "slow done") {
		t.Errorf("the call in flight lost its answer: %v\nbridge stderr:\n%s", m, h.stderr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if inits != 1 || deletes != 0 {
		t.Errorf("%d initializes and %d DELETEs: the session was replaced", inits, deletes)
	}
	if !strings.Contains(h.stderr.String(), "the server refused a message") {
		t.Errorf("the refused notification was not logged:\n%s", h.stderr.String())
	}
}

// With the server down, the host's error says why, not only the SDK's
// "rejected by transport".
func TestServerDownErrorSaysWhy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/mcp"
	ln.Close()
	h := startRawHost(t, ctx, url)
	h.send(rawInitialize)
	m := h.answer("1")
	if code, msg := errorMessage(m); code == codeRejectedByTransport || !strings.Contains(msg, "connection refused") {
		t.Errorf("initialize with the server down: %v", m)
	}
}

// A 503 on the event stream (GET) is an outage, not the end of the stream:
// the bridge reconnects, and what the server sends outside of a request
// reaches the host afterwards.
func TestEventStreamSurvives503(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := mcp.NewServer(&mcp.Implementation{Name: "outage", Version: "1"}, nil)
	type none struct{}
	mcp.AddTool(srv, &mcp.Tool{Name: "first"}, func(context.Context, *mcp.CallToolRequest, none) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{}, nil, nil
	})
	sdk := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	var mu sync.Mutex
	gets := 0
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			gets++
			n := gets
			mu.Unlock()
			if n == 1 {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "down for a moment", http.StatusServiceUnavailable)
				return
			}
		}
		sdk.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)

	h := startRawHost(t, ctx, hs.URL+"/mcp")
	h.send(rawInitialize)
	if m := h.answer("1"); m["result"] == nil {
		t.Fatalf("initialize: %v", m)
	}
	h.send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	// Notifications have no id: they land under "null".
	for i := 0; ; i++ {
		h.mu.Lock()
		m := h.got["null"]
		h.mu.Unlock()
		if m != nil && m["method"] == "notifications/tools/list_changed" {
			break
		}
		if i == 100 {
			mu.Lock()
			t.Fatalf("no list_changed reached the host after %d GETs\nbridge stderr:\n%s", gets, h.stderr.String())
		}
		mcp.AddTool(srv, &mcp.Tool{Name: fmt.Sprintf("t%d", i)}, func(context.Context, *mcp.CallToolRequest, none) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{}, nil, nil
		})
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if gets < 2 {
		t.Errorf("%d GETs: the stream was not reopened after the 503", gets)
	}
}
