package client_test

// Integration with mcp-go (docs/design.md#client-integration): its
// streamable HTTP client, with a client.Transport through
// transport.WithHTTPBasicClient, against the official SDK's server behind
// the fixture's token check. mcp-go is a test (and example) dependency
// only (docs/design.md#layout).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	mcpclient "github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcpgo "github.com/mark3labs/mcp-go/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
)

// mcpgoModes are sdkModes less "stateful/latest": mcp-go v1.2.1 does not
// interoperate there with the official SDK's server (v1.8.0), for reasons
// that have nothing to do with authorization. The stateful server answers
// server/discover with supportedVersions lacking 2026-07-28; mcp-go ignores
// that list, goes on with 2026-07-28, and its next call is refused with
// "unsupported protocol version". (mcp-go's own fallback to initialize
// only happens when server/discover fails.)
var mcpgoModes = []struct {
	name      string
	stateless bool
	proto     string
}{
	{"stateless/latest", true, sdkProtoLatest},
	{"stateful/2025-11-25", false, sdkProto251125},
	{"stateless/2025-11-25", true, sdkProto251125},
}

// mcpgoConnect starts and initializes an mcp-go streamable HTTP client for
// st.URL whose requests go through rt. proto "" is mcp-go's default (the
// 2026-07-28 revision, falling back to initialize).
func mcpgoConnect(t *testing.T, st *fixture.Stack, rt http.RoundTripper, proto string, opts ...transport.StreamableHTTPCOption) *mcpclient.Client {
	t.Helper()
	c, err := mcpgoStart(t, st, rt, proto, opts...)
	if err != nil {
		t.Fatalf("mcp-go connect: %v", err)
	}
	return c
}

func mcpgoStart(t *testing.T, st *fixture.Stack, rt http.RoundTripper, proto string, opts ...transport.StreamableHTTPCOption) (*mcpclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	opts = append([]transport.StreamableHTTPCOption{
		transport.WithHTTPBasicClient(&http.Client{Transport: rt}),
		transport.WithHTTPLogger(slog.New(slog.DiscardHandler)),
	}, opts...)
	c, err := mcpclient.NewStreamableHttpClient(st.URL, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	// Start's context lives as long as the continuous listening does.
	if err := c.Start(t.Context()); err != nil {
		return nil, err
	}
	_, err = c.Initialize(ctx, mcpgo.InitializeRequest{Params: mcpgo.InitializeParams{
		ProtocolVersion: proto,
		ClientInfo:      mcpgo.Implementation{Name: "evergrant-test-mcpgo", Version: "1"},
	}})
	return c, err
}

// mcpgoEcho calls the echo tool and checks its answer.
func mcpgoEcho(ctx context.Context, c *mcpclient.Client, text string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := c.CallTool(ctx, mcpgo.CallToolRequest{Params: mcpgo.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}}})
	if err != nil {
		return err
	}
	if res.IsError || len(res.Content) != 1 {
		return fmt.Errorf("echo %q: unexpected result %+v", text, res)
	}
	if tc, ok := mcpgo.AsTextContent(res.Content[0]); !ok || tc.Text != text {
		return fmt.Errorf("echo %q: got %+v", text, res.Content[0])
	}
	return nil
}

// TestMCPGo_Rule1_RefreshOn401AcrossExpiry: mcp-go's CallTool keeps
// succeeding across access-token expiry, through the 401 invalid_token
// path (proactive refresh off) (docs/design.md#client-rule-1).
func TestMCPGo_Rule1_RefreshOn401AcrossExpiry(t *testing.T) {
	t.Parallel()
	for _, m := range mcpgoModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			clock := testclock.New(time.Now())
			st := sdkStack(t, clock, m.stateless, nil)
			tr, _ := sdkTransport(client.Config{Now: clock.Now, RefreshMargin: -1})
			c := mcpgoConnect(t, st, tr, m.proto)
			if err := mcpgoEcho(t.Context(), c, "before"); err != nil {
				t.Fatal(err)
			}
			refreshes, unauthorized := st.Refreshes(), st.Unauthorized()
			for i := range 2 {
				expire(t, clock, tr, st.URL)
				if err := mcpgoEcho(t.Context(), c, fmt.Sprintf("after expiry %d", i+1)); err != nil {
					t.Fatalf("after expiry %d: %v", i+1, err)
				}
			}
			if got := st.Refreshes() - refreshes; got != 2 {
				t.Errorf("refreshes: got %d, want 2", got)
			}
			if got := st.Unauthorized() - unauthorized; got != 2 {
				t.Errorf("401s: got %d, want 2", got)
			}
		})
	}
}

// TestMCPGo_Rule3_RevokedRefreshTokenSurfacesNeedsReauth: after the grant
// is revoked, mcp-go's CallTool fails with an error in which errors.As
// finds the *client.NeedsReauthError (mcp-go wraps with %w on the request
// path) (docs/design.md#client-rule-3, docs/design.md#client-integration).
func TestMCPGo_Rule3_RevokedRefreshTokenSurfacesNeedsReauth(t *testing.T) {
	t.Parallel()
	for _, m := range mcpgoModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			tr := sdkSignedIn(t, st, client.Config{})
			c := mcpgoConnect(t, st, tr, m.proto)
			if err := mcpgoEcho(t.Context(), c, "before"); err != nil {
				t.Fatal(err)
			}
			if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
				t.Fatal(err)
			}
			err := mcpgoEcho(t.Context(), c, "after revocation")
			ne := checkNeedsReauth(t, err, client.ReasonRefreshRejected)
			if ne.ErrorCode != "invalid_grant" {
				t.Errorf("error code: got %q, want invalid_grant", ne.ErrorCode)
			}
			// The grant stays refused, and says why
			// (docs/design.md#client-rule-3).
			err = mcpgoEcho(t.Context(), c, "again")
			if ne := checkNeedsReauth(t, err, client.ReasonRefreshRejected); ne.ErrorCode != "invalid_grant" {
				t.Errorf("error code again: got %q, want invalid_grant", ne.ErrorCode)
			}
			if got := st.Refreshes(); got != 1 {
				t.Errorf("refreshes: got %d, want 1", got)
			}
		})
	}
}

// TestMCPGo_NoGrantSurfacesNeedsReauthFromInitialize: without a grant and
// without an Authorizer, Initialize fails with the NeedsReauthError
// (docs/design.md#client-rule-6, docs/design.md#client-integration).
func TestMCPGo_NoGrantSurfacesNeedsReauthFromInitialize(t *testing.T) {
	t.Parallel()
	for _, m := range mcpgoModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			_, err := mcpgoStart(t, st, client.NewTransport(client.Config{}), m.proto)
			checkNeedsReauth(t, err, client.ReasonNoGrant)
		})
	}
}

// TestMCPGo_Rule5_ListeningStreamAfterRevocation: mcp-go's continuous
// listening (the GET stream, re-opened every second when it fails) on a
// stateful server: after the grant is revoked and the stream ends, the
// Transport refreshes at most once, however often mcp-go reconnects
// (docs/design.md#client-rule-5).
func TestMCPGo_Rule5_ListeningStreamAfterRevocation(t *testing.T) {
	t.Parallel()
	cutter := newStreamCutter()
	st := sdkStack(t, nil, false, func(h http.Handler) http.Handler { cutter.h = h; return cutter })
	tr := sdkSignedIn(t, st, client.Config{})
	// getFailed receives a value each time a GET mcp-go sends through the
	// Transport fails: each attempt to reopen the stream.
	getFailed := make(chan struct{}, 16)
	counted := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := tr.RoundTrip(r)
		if r.Method == http.MethodGet && (err != nil || resp.StatusCode != http.StatusOK) {
			select {
			case getFailed <- struct{}{}:
			default:
			}
		}
		return resp, err
	})
	//lint:ignore SA1019 the test is about the standalone GET stream of the 2025-11-25 revision, which this option opens.
	c := mcpgoConnect(t, st, counted, sdkProto251125, transport.WithContinuousListening())
	if err := mcpgoEcho(t.Context(), c, "before"); err != nil {
		t.Fatal(err)
	}
	hdRecv(t, cutter.opened, "the listening GET stream")
	if n := cutter.open(); n != 1 {
		t.Fatalf("%d GET streams open, want 1", n)
	}
	if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
		t.Fatal(err)
	}
	cutter.cut()
	// mcp-go retries the GET every second: give it three tries.
	for i := range 3 {
		hdRecv(t, getFailed, fmt.Sprintf("GET attempt %d after the revocation", i+1))
	}
	waitIdle(t, tr)
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refreshes: got %d, want 1", got)
	}
	gets := 0
	for _, r := range st.Requests() {
		if r.Method == http.MethodGet && r.Status == http.StatusUnauthorized {
			gets++
		}
	}
	// The first attempt meets the revocation; the later ones (mcp-go
	// retries, counted above) fail at the Transport, which sends no token
	// for a refused grant (docs/design.md#client-rule-3).
	if gets != 1 {
		t.Errorf("GET attempts answered 401 at the server: %d, want 1", gets)
	}
	// The POST path still reports the lost grant.
	err := mcpgoEcho(t.Context(), c, "after revocation")
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) {
		t.Fatalf("errors.As(*client.NeedsReauthError) fails: %v", err)
	}
}
