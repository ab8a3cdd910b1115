package stack_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/server"
)

// Fault injection is off unless asked for: the authorization server of
// `evergrant serve` has none.
func TestFaults_NilUnlessEnabled(t *testing.T) {
	off, err := stack.New(stack.Config{BaseURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if off.Faults != nil {
		t.Fatalf("Faults = %v without Config.Faults, want nil", off.Faults)
	}
	on, err := stack.New(stack.Config{BaseURL: "http://127.0.0.1:1", Faults: true})
	if err != nil {
		t.Fatal(err)
	}
	if on.Faults == nil {
		t.Fatal("Faults = nil with Config.Faults")
	}
}

// What internal/fixture and `evergrant check client` build on: a custom
// handler behind the bearer middleware, the layers in front of the
// authorization server and the MCP endpoint, fault injection, and
// introspection, which sees a revocation at once.
func TestOptions_HandlerWrapsFaultsIntrospect(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	var tokenPosts, mcpRequests atomic.Int32
	st, err := stack.New(stack.Config{
		BaseURL: "http://" + ts.Listener.Addr().String(), AutoApprove: true, Faults: true, Introspect: true,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello "+server.TokenInfoFromContext(r.Context()).Subject)
		}),
		WrapAuthServer: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost && r.URL.Path == authserver.PathToken {
					tokenPosts.Add(1)
				}
				next.ServeHTTP(w, r)
			})
		},
		WrapMCP: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mcpRequests.Add(1)
				next.ServeHTTP(w, r)
			})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = st.Handler
	ts.Start()
	defer ts.Close()

	tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}, RefreshMargin: -1})
	if err := tr.Authorize(t.Context(), st.MCPURL); err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	hc := &http.Client{Transport: tr}
	call := func() (string, error) {
		resp, err := hc.Post(st.MCPURL, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	if body, err := call(); err != nil || body != "hello demo-user" {
		t.Fatalf("first call: %q, %v", body, err)
	}
	if tokenPosts.Load() == 0 || mcpRequests.Load() == 0 {
		t.Fatalf("the layers in front saw %d token requests and %d MCP requests, want some of each", tokenPosts.Load(), mcpRequests.Load())
	}

	// A fault refuses the refresh, and the revoked access token is refused
	// by the MCP endpoint at once: the user must sign in again.
	st.Faults.RefuseRefresh(true)
	if _, err := st.AS.RevokeGrants(context.Background(), authserver.GrantFilter{}); err != nil {
		t.Fatal(err)
	}
	before := tokenPosts.Load()
	_, err = call()
	if !errors.Is(err, client.ErrNeedsReauth) || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("after revocation: %v, want needs_reauth from the refused refresh", err)
	}
	if tokenPosts.Load() != before+1 {
		t.Fatalf("%d refresh grants after revocation, want 1", tokenPosts.Load()-before)
	}
}
