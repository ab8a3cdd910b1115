package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/oauth"
)

// The host's error for each way a request can fail: a new sign-in
// (invalid_client asks the login command for a new client registration), a
// scope the sign-in lacks (the login command gets the union of the granted
// and required scopes), the server's own JSON-RPC error, and anything else
// as an internal error that says what went wrong.
func TestWireError(t *testing.T) {
	const u = "https://mcp.example.com/mcp"
	b := New(Config{URL: u, LoginCommand: func(s SignIn) string {
		switch {
		case s.NewClient:
			return "login --new-client " + u
		case len(s.Scopes) > 0:
			return "login --scope '" + strings.Join(s.Scopes, " ") + "' " + u
		}
		return "login " + u
	}})
	data := func(we *jsonrpc.Error) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(we.Data, &m); err != nil {
			t.Fatalf("data %s: %v", we.Data, err)
		}
		return m
	}

	ne := &client.NeedsReauthError{Server: u, Issuer: "https://as.example.com", Reason: client.ReasonRefreshRejected,
		ErrorCode: oauth.ErrorInvalidGrant, ErrorDescription: "revoked", Scopes: []string{"a"}}
	we := b.wireError(fmt.Errorf("call: %w", ne))
	if we.Code != CodeNeedsReauth || we.Message != "needs_reauth: "+u+" needs a new sign-in (refresh_rejected); sign in again with: login "+u {
		t.Errorf("needs_reauth: %d %q", we.Code, we.Message)
	}
	if d := data(we); d["reason"] != "needs_reauth" || d["cause"] != "refresh_rejected" || d["error"] != "invalid_grant" ||
		d["error_description"] != "revoked" || d["issuer"] != "https://as.example.com" || d["server"] != u || d["login"] != "login "+u {
		t.Errorf("needs_reauth data %s", we.Data)
	}

	ne.ErrorCode = oauth.ErrorInvalidClient
	we = b.wireError(ne)
	if !strings.HasSuffix(we.Message, "sign in again with: login --new-client "+u) || data(we)["login"] != "login --new-client "+u {
		t.Errorf("invalid_client: %q %s", we.Message, we.Data)
	}

	se := &client.InsufficientScopeError{Server: u, Granted: []string{"a", "b"}, Required: []string{"b", "c"}}
	we = b.wireError(se)
	if we.Code != CodeNeedsReauth || we.Message != "insufficient_scope: "+u+" needs scopes the sign-in lacks (b c); sign in again with: login --scope 'a b c' "+u {
		t.Errorf("insufficient_scope: %d %q", we.Code, we.Message)
	}
	if d := data(we); d["reason"] != "insufficient_scope" || fmt.Sprint(d["scopes"]) != "[a b]" || fmt.Sprint(d["required_scopes"]) != "[b c]" {
		t.Errorf("insufficient_scope data %s", we.Data)
	}

	own := &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "bad params"}
	if we := b.wireError(fmt.Errorf("write: %w", own)); we != own {
		t.Errorf("the server's own error became %+v", we)
	}
	rejected := &jsonrpc.Error{Code: codeRejectedByTransport, Message: "rejected by transport"}
	we = b.wireError(fmt.Errorf("%w: dial tcp: connection refused", rejected))
	if we.Code != jsonrpc.CodeInternalError || !strings.Contains(we.Message, "connection refused") || !strings.Contains(we.Message, u) {
		t.Errorf("rejected by transport: %+v", we)
	}
}

// Without a LoginCommand, the errors say to sign in again without naming a
// command.
func TestWireError_NoLoginCommand(t *testing.T) {
	const u = "https://mcp.example.com/mcp"
	we := New(Config{URL: u}).wireError(&client.NeedsReauthError{Server: u, Reason: client.ReasonNoGrant})
	if we.Code != CodeNeedsReauth || !strings.HasSuffix(we.Message, "(no_grant); sign in again") {
		t.Errorf("%d %q", we.Code, we.Message)
	}
	var d map[string]any
	if json.Unmarshal(we.Data, &d) != nil || d["login"] != "" {
		t.Errorf("data %s", we.Data)
	}
}

// Serve returns nil when stdin ends, ctx.Err() when ctx is done, the read
// error for a line over the limit, and refuses to run twice.
func TestServe_Returns(t *testing.T) {
	b := New(Config{URL: "http://127.0.0.1:1/mcp"})
	if err := b.Serve(context.Background(), strings.NewReader(""), io.Discard); err != nil {
		t.Errorf("Serve at EOF: %v", err)
	}
	if err := b.Serve(context.Background(), strings.NewReader(""), io.Discard); err == nil {
		t.Error("a second Serve ran")
	}

	ctx, cancel := context.WithCancel(context.Background())
	inR, inW := io.Pipe()
	defer inW.Close()
	done := make(chan error, 1)
	go func() { done <- New(Config{URL: "http://127.0.0.1:1/mcp"}).Serve(ctx, inR, io.Discard) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Serve after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context was cancelled")
	}

	long := bytes.Repeat([]byte("x"), maxMessage+1)
	err := New(Config{URL: "http://127.0.0.1:1/mcp"}).Serve(context.Background(), bytes.NewReader(long), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "reading stdin") {
		t.Errorf("Serve with a line over the limit: %v", err)
	}
}
