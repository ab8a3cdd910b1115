package client_test

// Integration with the official Go SDK (docs/design.md#client-integration):
// its streamable HTTP client, with a client.Transport as the http.Client's
// Transport, against its streamable HTTP server behind the fixture's token
// check. The shared pieces (sdkStack, sdkModes, streamCutter, …) are in
// helpers_test.go; mcpgo_test.go uses them too.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
)

// sdkConnect connects the official SDK client to st.URL through rt.
func sdkConnect(t *testing.T, st *fixture.Stack, rt http.RoundTripper, proto string, maxRetries int) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-test-client", Version: "1"}, nil)
	tr := &mcp.StreamableClientTransport{Endpoint: st.URL, HTTPClient: &http.Client{Transport: rt}, MaxRetries: maxRetries}
	cs, err := c.Connect(ctx, tr, &mcp.ClientSessionOptions{ProtocolVersion: proto})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// sdkEcho calls the echo tool and checks its answer.
func sdkEcho(ctx context.Context, cs *mcp.ClientSession, text string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
	if err != nil {
		return err
	}
	if res.IsError || len(res.Content) != 1 {
		return fmt.Errorf("echo %q: unexpected result %+v", text, res)
	}
	if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != text {
		return fmt.Errorf("echo %q: got %+v", text, res.Content[0])
	}
	return nil
}

// untilBeforeExpiry moves clock to d before the stored access token
// expires.
func untilBeforeExpiry(t *testing.T, clock *testclock.Clock, tr *client.Transport, serverURL string, d time.Duration) {
	t.Helper()
	g, err := tr.Grant(t.Context(), serverURL)
	if err != nil || g == nil || g.Expiry.IsZero() {
		t.Fatalf("grant: %v, %+v", err, g != nil)
	}
	clock.Set(g.Expiry.Add(-d))
}

// TestSDK_Rule1_RefreshOn401AcrossExpiry: with proactive refresh off, each
// expired access token is answered 401 invalid_token; the Transport
// refreshes and retries, and session.CallTool never sees it
// (docs/design.md#client-rule-1).
func TestSDK_Rule1_RefreshOn401AcrossExpiry(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			clock := testclock.New(time.Now())
			st := sdkStack(t, clock, m.stateless, nil)
			tr, _ := sdkTransport(client.Config{Now: clock.Now, RefreshMargin: -1})
			cs := sdkConnect(t, st, tr, m.proto, 0)
			if err := sdkEcho(t.Context(), cs, "before"); err != nil {
				t.Fatal(err)
			}
			refreshes, unauthorized := st.Refreshes(), st.Unauthorized()
			for i := range 2 {
				expire(t, clock, tr, st.URL)
				if err := sdkEcho(t.Context(), cs, fmt.Sprintf("after expiry %d", i+1)); err != nil {
					t.Fatalf("after expiry %d: %v", i+1, err)
				}
			}
			if got := st.Refreshes() - refreshes; got != 2 {
				t.Errorf("refreshes: got %d, want 2", got)
			}
			if got := st.Unauthorized() - unauthorized; got != 2 {
				t.Errorf("401s: got %d, want 2 (one per expiry)", got)
			}
			if s := tr.Stats(); s.NeedsReauth != 0 || s.RefreshFailure != 0 {
				t.Errorf("stats: %+v", s)
			}
		})
	}
}

// TestSDK_Rule8_ProactiveRefreshAcrossExpiry: with a refresh margin, the
// Transport refreshes before the token expires and the server never answers
// 401 (docs/design.md#client-rule-8).
func TestSDK_Rule8_ProactiveRefreshAcrossExpiry(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			// Margin 1 min (jittered up to 72 s), lifetime 10 min: a fresh
			// token is sent as is; one within 30 s of expiry is refreshed
			// ahead of its expiry.
			clock := testclock.New(time.Now())
			st := sdkStack(t, clock, m.stateless, nil)
			tr, _ := sdkTransport(client.Config{Now: clock.Now, RefreshMargin: time.Minute})
			cs := sdkConnect(t, st, tr, m.proto, 0)
			if err := sdkEcho(t.Context(), cs, "before"); err != nil {
				t.Fatal(err)
			}
			refreshes, unauthorized := st.Refreshes(), st.Unauthorized()
			for i := range 2 {
				untilBeforeExpiry(t, clock, tr, st.URL, 30*time.Second)
				if err := sdkEcho(t.Context(), cs, fmt.Sprintf("near expiry %d", i+1)); err != nil {
					t.Fatalf("near expiry %d: %v", i+1, err)
				}
				// The token was still valid: the refresh it started runs
				// in the background. Let it finish before reading the
				// next expiry.
				if err := tr.Wait(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			if got := st.Refreshes() - refreshes; got != 2 {
				t.Errorf("refreshes: got %d, want 2", got)
			}
			if got := st.Unauthorized() - unauthorized; got != 0 {
				t.Errorf("401s: got %d, want none", got)
			}
		})
	}
}

// revokeAccessToken revokes only the stored access token at the
// authorization server (RFC 7009), as the grant's client; the refresh token
// stays good.
func revokeAccessToken(t *testing.T, tr *client.Transport, serverURL string) {
	t.Helper()
	g, err := tr.Grant(t.Context(), serverURL)
	if err != nil || g == nil || g.RevocationEndpoint == "" {
		t.Fatalf("grant: %v (have grant: %v)", err, g != nil)
	}
	form := url.Values{"token": {g.AccessToken}, "token_type_hint": {"access_token"}}
	if g.ClientSecret == "" || g.AuthMethod == "client_secret_post" {
		form.Set("client_id", g.ClientID)
		if g.ClientSecret != "" {
			form.Set("client_secret", g.ClientSecret)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, g.RevocationEndpoint, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if g.ClientSecret != "" && g.AuthMethod != "client_secret_post" {
		req.SetBasicAuth(url.QueryEscape(g.ClientID), url.QueryEscape(g.ClientSecret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: HTTP %d", resp.StatusCode)
	}
}

// TestSDK_Rule1_RefreshAfterAccessTokenRevoked: the server revokes the
// access token (not the grant); the next call gets 401 invalid_token, the
// Transport refreshes once and the call succeeds
// (docs/design.md#client-rule-1).
func TestSDK_Rule1_RefreshAfterAccessTokenRevoked(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			tr, _ := sdkTransport(client.Config{})
			cs := sdkConnect(t, st, tr, m.proto, 0)
			if err := sdkEcho(t.Context(), cs, "before"); err != nil {
				t.Fatal(err)
			}
			refreshes, unauthorized := st.Refreshes(), st.Unauthorized()
			for i := range 2 {
				revokeAccessToken(t, tr, st.URL)
				if err := sdkEcho(t.Context(), cs, fmt.Sprintf("after revocation %d", i+1)); err != nil {
					t.Fatalf("after revocation %d: %v", i+1, err)
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

// TestSDK_Rule3_RevokedRefreshTokenSurfacesNeedsReauth: the grant is
// revoked at the authorization server; the next CallTool fails with an
// error in which errors.As finds the *client.NeedsReauthError (the SDK
// wraps the RoundTripper's error with %w on the request path). The session
// is not broken by it: after a new sign-in the same session works
// (docs/design.md#client-rule-3, docs/design.md#client-integration).
func TestSDK_Rule3_RevokedRefreshTokenSurfacesNeedsReauth(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			var hooked atomic.Int32
			tr, _ := sdkTransport(client.Config{OnNeedsReauth: func(*client.NeedsReauthError) { hooked.Add(1) }})
			cs := sdkConnect(t, st, tr, m.proto, 0)
			if err := sdkEcho(t.Context(), cs, "before"); err != nil {
				t.Fatal(err)
			}
			if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
				t.Fatal(err)
			}
			refreshes := st.Refreshes()
			err := sdkEcho(t.Context(), cs, "after revocation")
			ne := checkNeedsReauth(t, err, client.ReasonRefreshRejected)
			if ne.ErrorCode != "invalid_grant" {
				t.Errorf("error code: got %q, want invalid_grant", ne.ErrorCode)
			}
			if errors.Is(err, mcp.ErrConnectionClosed) {
				t.Errorf("the SDK closed the connection: %v", err)
			}
			if got := st.Refreshes() - refreshes; got != 1 {
				t.Errorf("refreshes: got %d, want 1", got)
			}
			if hooked.Load() != 1 {
				t.Errorf("OnNeedsReauth fired %d times, want 1", hooked.Load())
			}
			// The grant stays refused: the next call gets the refusal
			// again and starts no sign-in by itself
			// (docs/design.md#client-rule-3).
			err = sdkEcho(t.Context(), cs, "still refused")
			if ne := checkNeedsReauth(t, err, client.ReasonRefreshRejected); ne.ErrorCode != "invalid_grant" {
				t.Errorf("error code after the refusal: got %q, want invalid_grant", ne.ErrorCode)
			}
			if s := tr.Stats(); s.Authorizations != 1 {
				t.Errorf("authorizations before the explicit sign-in: got %d, want 1", s.Authorizations)
			}
			// The error was a rejected request, not a broken connection:
			// after an explicit sign-in the same session goes on.
			if err := tr.Authorize(t.Context(), st.URL); err != nil {
				t.Fatalf("sign-in: %v", err)
			}
			if err := sdkEcho(t.Context(), cs, "after sign-in"); err != nil {
				t.Fatalf("after sign-in: %v", err)
			}
			if s := tr.Stats(); s.Authorizations != 2 {
				t.Errorf("authorizations: got %d, want 2", s.Authorizations)
			}
		})
	}
}

// TestSDK_NoGrantSurfacesNeedsReauthFromConnect: without a grant and
// without an Authorizer, client.Connect fails with the NeedsReauthError
// (docs/design.md#client-rule-6, docs/design.md#client-integration).
func TestSDK_NoGrantSurfacesNeedsReauthFromConnect(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			tr := client.NewTransport(client.Config{})
			c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-test-client", Version: "1"}, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: st.URL, HTTPClient: &http.Client{Transport: tr}},
				&mcp.ClientSessionOptions{ProtocolVersion: m.proto})
			if err == nil {
				cs.Close()
				t.Fatal("connected without a grant")
			}
			checkNeedsReauth(t, err, client.ReasonNoGrant)
		})
	}
}

// TestSDK_Rule5_StandaloneStreamAfterRevocation: a stateful server and the
// 2025-11-25 protocol, so the SDK holds a standalone GET event stream. The
// grant is revoked: the open stream is left alone (no refresh), and when
// the server ends it, the SDK's reconnections cost one refused refresh and
// no more: the Transport does not loop (docs/design.md#client-rule-5). The
// SDK then breaks the session with an error that has lost the
// NeedsReauthError (streamable.go, handleSSE "failed to reconnect … %v");
// ReauthRecorder.Err gives it back (docs/design.md#client-integration).
func TestSDK_Rule5_StandaloneStreamAfterRevocation(t *testing.T) {
	t.Parallel()
	cutter := newStreamCutter()
	st := sdkStack(t, nil, false, func(h http.Handler) http.Handler { cutter.h = h; return cutter })
	tr := sdkSignedIn(t, st, client.Config{})
	rec := client.NewReauthRecorder(tr)
	// MaxRetries 2 bounds the SDK's reconnection backoff (1 s, then 1.5 s,
	// each with up to as much jitter) to a few seconds.
	cs := sdkConnect(t, st, rec, sdkProto251125, 2)
	if err := sdkEcho(t.Context(), cs, "before"); err != nil {
		t.Fatal(err)
	}
	hdRecv(t, cutter.opened, "the standalone GET stream")
	if n := cutter.open(); n != 1 {
		t.Fatalf("%d GET streams open, want 1", n)
	}
	sent := tr.Stats().Requests

	if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
		t.Fatal(err)
	}
	refreshes := st.Refreshes()
	// Nothing happens while the stream stays open: no request reaches the
	// Transport, and the Transport does no work of its own.
	waitIdle(t, tr)
	if got := st.Refreshes() - refreshes; got != 0 {
		t.Errorf("refreshes while the stream stays open: got %d, want 0", got)
	}
	if got := tr.Stats().Requests - sent; got != 0 || cutter.open() != 1 {
		t.Errorf("after the revocation: %d requests, %d GET streams open; want none and the one stream", got, cutter.open())
	}

	cutter.cut()
	// The SDK reconnects (after 1–2 s), the Transport refreshes once and is
	// refused; the next attempt (after 1.5–3 s more) has no token to send
	// and fails without a refresh; then the SDK gives up and breaks the
	// session. No call is made meanwhile, so only the GET path runs.
	waited := make(chan error, 1)
	go func() { waited <- cs.Wait() }()
	select {
	case <-waited:
	case <-time.After(15 * time.Second):
		t.Fatal("the session did not end after its stream failed")
	}
	if got := st.Refreshes() - refreshes; got != 1 {
		t.Errorf("refreshes after the stream was cut: got %d, want 1", got)
	}
	if gets := cutter.gets.Load(); gets > 1 {
		t.Errorf("GETs reached the SDK server after revocation: %d", gets-1)
	}
	err := sdkEcho(t.Context(), cs, "after revocation")
	if err == nil {
		t.Fatal("the call succeeded on a failed session")
	}
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		t.Logf("the SDK kept the NeedsReauthError (it did not in v1.8.0): %v", err)
	} else {
		t.Logf("as documented, the SDK lost the NeedsReauthError: %v", err)
	}
	ne = checkNeedsReauth(t, rec.Err(err), client.ReasonRefreshRejected)
	if ne.ErrorCode != "invalid_grant" {
		t.Errorf("recorded error code: got %q, want invalid_grant", ne.ErrorCode)
	}
	if !errors.Is(rec.Err(err), mcp.ErrConnectionClosed) && errors.Is(err, mcp.ErrConnectionClosed) {
		t.Error("ReauthRecorder.Err hides what the SDK's error wrapped")
	}
	if rec.Err(err).Error() != err.Error() {
		t.Errorf("ReauthRecorder.Err changed the text: %q", rec.Err(err))
	}
	waitIdle(t, tr)
	if got := st.Refreshes() - refreshes; got > 1 {
		t.Errorf("refreshes after the session failed: got %d, want at most 1", got)
	}
}

// TestSDK_Rule5_StandaloneStreamRejectedAfterRefresh: the server rejects
// the standalone GET stream's token even after a refresh (here: forced),
// the SDK's first-connection path. One refresh, then NeedsReauth
// (rejected_after_refresh) on every attempt without another refresh
// (docs/design.md#client-rule-5); the SDK fails Connect with an error that
// lost it (connectStandaloneSSE "standalone SSE request failed … %v"), and
// ReauthRecorder.Err gives it back (docs/design.md#client-integration).
func TestSDK_Rule5_StandaloneStreamRejectedAfterRefresh(t *testing.T) {
	t.Parallel()
	st := sdkStack(t, nil, false, nil)
	tr := sdkSignedIn(t, st, client.Config{})
	st.ForceFunc(func(r *http.Request, _ string) *fixture.Forced {
		if r.Method == http.MethodGet {
			return &fixture.Forced{Status: http.StatusUnauthorized, Challenge: `Bearer error="invalid_token"`}
		}
		return nil
	})
	rec := client.NewReauthRecorder(tr)
	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-test-client", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: st.URL, HTTPClient: &http.Client{Transport: rec}, MaxRetries: 1},
		&mcp.ClientSessionOptions{ProtocolVersion: sdkProto251125})
	if err == nil {
		// A later SDK may connect and fail the session instead.
		defer cs.Close()
		err = sdkEcho(ctx, cs, "x")
		if err == nil {
			t.Fatal("no error although the GET stream is refused")
		}
	}
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		t.Logf("the SDK kept the NeedsReauthError (it did not in v1.8.0): %v", err)
	} else {
		t.Logf("as documented, the SDK lost the NeedsReauthError: %v", err)
	}
	checkNeedsReauth(t, rec.Err(err), client.ReasonRejectedAfterRefresh)
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refreshes: got %d, want 1", got)
	}
}

// TestSDK_Rule3_ConnectAfterRevocation: a new session on a revoked grant
// (no Authorizer). Connect fails with a NeedsReauthError
// (docs/design.md#client-rule-3). With the default protocol the SDK's
// server/discover fails with refresh_rejected and the SDK falls back to
// initialize, which fails with no_refresh_token and is the error returned;
// ReauthRecorder.Err gives back the cause
// (docs/design.md#client-integration).
func TestSDK_Rule3_ConnectAfterRevocation(t *testing.T) {
	t.Parallel()
	for _, m := range sdkModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			st := sdkStack(t, nil, m.stateless, nil)
			tr := sdkSignedIn(t, st, client.Config{})
			if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
				t.Fatal(err)
			}
			rec := client.NewReauthRecorder(tr)
			c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-test-client", Version: "1"}, nil)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: st.URL, HTTPClient: &http.Client{Transport: rec}},
				&mcp.ClientSessionOptions{ProtocolVersion: m.proto})
			if err == nil {
				cs.Close()
				t.Fatal("connected on a revoked grant")
			}
			// Every request after the refusal gets the refusal itself
			// (docs/design.md#client-rule-3), the SDK's fallback request
			// included.
			checkNeedsReauth(t, err, client.ReasonRefreshRejected)
			ne := checkNeedsReauth(t, rec.Err(err), client.ReasonRefreshRejected)
			if ne.ErrorCode != "invalid_grant" {
				t.Errorf("error code: got %q, want invalid_grant", ne.ErrorCode)
			}
			if st.Refreshes() != 1 {
				t.Errorf("refreshes: got %d, want 1", st.Refreshes())
			}
		})
	}
}

// TestReauthRecorder: what it records, what clears it, and what Err
// returns (docs/design.md#client-integration).
func TestReauthRecorder(t *testing.T) {
	t.Parallel()
	const server = "https://mcp.example.test/mcp"
	first := &client.NeedsReauthError{Server: server, Reason: client.ReasonRefreshRejected, ErrorCode: "invalid_grant"}
	later := &client.NeedsReauthError{Server: server, Reason: client.ReasonNoRefreshToken}
	var next error
	status := http.StatusOK
	rec := client.NewReauthRecorder(ccRoundTripFunc(func(*http.Request) (*http.Response, error) {
		if next != nil {
			return nil, next
		}
		return &http.Response{StatusCode: status, Body: http.NoBody}, nil
	}))
	send := func(method string) {
		t.Helper()
		req, _ := http.NewRequest(method, server, nil)
		resp, err := rec.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
	}
	lost := errors.New("standalone SSE request failed: needs_reauth: …") // an SDK error formatted with %v

	if got := rec.Err(lost); got != lost {
		t.Errorf("nothing recorded: Err changed the error: %v", got)
	}
	if rec.Err(nil) != nil {
		t.Error("Err(nil) != nil")
	}
	next = first
	send(http.MethodGet)
	next = later
	send(http.MethodPost)
	if got := rec.NeedsReauth(server); got != first {
		t.Errorf("NeedsReauth: got %v, want the first one", got)
	}
	if got := rec.NeedsReauth(""); got != first {
		t.Errorf("NeedsReauth(\"\"): got %v, want the first one", got)
	}
	if got := rec.NeedsReauth("https://other.example.test/mcp"); got != nil {
		t.Errorf("another server: %v", got)
	}
	err := rec.Err(lost)
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne != first || !errors.Is(err, client.ErrNeedsReauth) || !errors.Is(err, lost) || err.Error() != lost.Error() {
		t.Errorf("Err(lost) = %v (found %v)", err, ne)
	}
	// An error that carries a later NeedsReauthError gets the first one in
	// front; one that carries the first is returned as is.
	wrapped := fmt.Errorf("calling: %w", later)
	if err := rec.Err(wrapped); !errors.As(err, &ne) || ne != first || !errors.Is(err, wrapped) {
		t.Errorf("Err(later) = %v (found %v)", err, ne)
	}
	same := fmt.Errorf("calling: %w", first)
	if err := rec.Err(same); err != same {
		t.Errorf("Err(first) = %v, want it unchanged", err)
	}

	// A DELETE answered 200 (the SDK ends the session) and 401/403 answers
	// keep the record; any other answer clears it.
	next = nil
	send(http.MethodDelete)
	status = http.StatusUnauthorized
	send(http.MethodPost)
	status = http.StatusForbidden
	send(http.MethodGet)
	if rec.NeedsReauth(server) != first {
		t.Fatal("the record was cleared by a DELETE, a 401 or a 403")
	}
	status = http.StatusNotFound
	send(http.MethodPost)
	if got := rec.NeedsReauth(server); got != nil {
		t.Errorf("an accepted request did not clear the record: %v", got)
	}
	if got := rec.Err(lost); got != lost {
		t.Errorf("after clearing, Err changed the error: %v", got)
	}
}
