package oidcinterop_test

// evergrant's client and resource server against panva's oidc-provider:
// sign-in through its own login and consent pages, then the refresh story
// across real 5-second access-token expiries (docs/interop.md). Needs
// scripts/setup-node.sh.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/oidcinterop"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
	"github.com/evergrant/evergrant/store"
)

const (
	// accessTokenTTL is oidc-provider's access token lifetime.
	accessTokenTTL = 5 * time.Second
	// mcpScope is the scope the MCP servers require.
	mcpScope = "mcp:tools"
	// login is the user who signs in on oidc-provider's login page.
	login = "alice"
	// callEvery is the pause between two calls of a stretch of calls.
	callEvery = 250 * time.Millisecond
)

// TestOIDCProvider runs evergrant against oidc-provider: an MCP server whose
// JWT access tokens are checked with server.JWTVerifier and one whose opaque
// tokens are checked with server.IntrospectionVerifier, both protected
// with server.Protect, and clients of the official Go SDK on a
// client.Transport with a store.File, signing in with a FormAuthorizer.
// Each subtest has its own user agent, client registration and grant.
func TestOIDCProvider(t *testing.T) {
	jwtMCP, opaqueMCP := newMCPServer(t), newMCPServer(t)
	p := oidcinterop.Start(t, oidcinterop.Options{
		JWTResources:    []string{jwtMCP.URL},
		OpaqueResources: []string{opaqueMCP.URL},
		AccessTokenTTL:  accessTokenTTL,
	})
	t.Logf("oidc-provider %s at %s", p.Version, p.Issuer)
	jwtV, err := server.NewJWTVerifier(server.JWTConfig{
		Issuer: p.Issuer, Audience: jwtMCP.URL, JWKSURL: p.Metadata.JWKSURI, RequireATJWT: true,
		// The tokens live 5 s: the default leeway (30 s) would let an
		// expired token through for six lifetimes, and a client that never
		// refreshed would pass.
		Leeway: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	introV, err := server.NewIntrospectionVerifier(server.IntrospectionConfig{
		Endpoint: p.Metadata.IntrospectionEndpoint, ClientID: oidcinterop.ResourceServerClientID,
		ClientSecret: p.ResourceServerSecret, Resource: opaqueMCP.URL, Issuer: p.Issuer,
	})
	if err != nil {
		t.Fatal(err)
	}
	jwtMCP.start(t, p.Issuer, jwtV)
	opaqueMCP.start(t, p.Issuer, introV)

	// Each kind of token: sign-in, then calls across expiries.
	for _, tc := range []struct {
		name   string
		srv    *mcpServer
		opaque bool
		calls  time.Duration
	}{
		{"JWT", jwtMCP, false, 12 * time.Second},
		{"Introspection", opaqueMCP, true, 8 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			owner := t
			var u *user
			if !t.Run("SignIn", func(t *testing.T) {
				u = signIn(t, owner, tc.srv.URL)
				checkSignIn(t, p, tc.srv, u, tc.opaque)
			}) {
				return
			}
			t.Run("AcrossExpiries", func(t *testing.T) {
				acrossExpiries(t, p, tc.srv, u, tc.calls)
			})
		})
	}

	t.Run("RevokedRefreshToken", func(t *testing.T) {
		t.Parallel()
		revokedRefreshToken(t, p, jwtMCP)
	})
	t.Run("ReplayedRefreshToken", func(t *testing.T) {
		t.Parallel()
		replayedRefreshToken(t, p, jwtMCP)
	})
	t.Run("TwoProcesses", func(t *testing.T) {
		t.Parallel()
		twoProcesses(t, p, jwtMCP)
	})
}

// mcpServer is an MCP server of the official Go SDK with one tool, whoami,
// protected with server.Protect. It records, by client, which access tokens
// (their SHA-256) it accepted.
type mcpServer struct {
	URL string
	ts  *httptest.Server

	mu     sync.Mutex
	tokens map[string]map[[sha256.Size]byte]bool
}

// newMCPServer reserves the server's address; start serves it.
func newMCPServer(t *testing.T) *mcpServer {
	ts := httptest.NewUnstartedServer(nil)
	t.Cleanup(ts.Close)
	return &mcpServer{URL: "http://" + ts.Listener.Addr().String() + "/mcp", ts: ts, tokens: map[string]map[[sha256.Size]byte]bool{}}
}

// start serves the MCP endpoint behind v and the protected resource
// metadata naming issuer.
func (m *mcpServer) start(t *testing.T, issuer string, v server.Verifier) {
	t.Helper()
	srv := mcp.NewServer(&mcp.Implementation{Name: "evergrant-oidc-interop", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "whoami", Description: "says who the access token is for"}, whoamiTool)
	sdk := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	mux := http.NewServeMux()
	err := server.Protect(mux, srv, m.record(sdk), server.Config{
		Resource: m.URL, Verifier: v, Scopes: []string{mcpScope},
		Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{issuer}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.ts.Config.Handler = mux
	m.ts.Start()
}

// record notes the accepted token of each request.
func (m *mcpServer) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ti := server.TokenInfoFromContext(r.Context()); ti != nil {
			h := sha256.Sum256([]byte(server.BearerToken(r.Header)))
			m.mu.Lock()
			if m.tokens[ti.ClientID] == nil {
				m.tokens[ti.ClientID] = map[[sha256.Size]byte]bool{}
			}
			m.tokens[ti.ClientID][h] = true
			m.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

// accessTokens returns how many different access tokens of clientID the
// server accepted.
func (m *mcpServer) accessTokens(clientID string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tokens[clientID])
}

type noArgs struct{}

// identity is what whoami answers: the verified token's facts.
type identity struct {
	Subject  string   `json:"subject"`
	ClientID string   `json:"client_id"`
	Issuer   string   `json:"issuer"`
	Scopes   []string `json:"scopes"`
}

func whoamiTool(_ context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, identity, error) {
	ti := req.Extra.TokenInfo
	if ti == nil {
		return nil, identity{}, errors.New("no verified token")
	}
	id := identity{Subject: ti.UserID, Scopes: ti.Scopes}
	id.ClientID, _ = ti.Extra["client_id"].(string)
	id.Issuer, _ = ti.Extra["issuer"].(string)
	return nil, id, nil
}

// whoami calls the whoami tool.
func whoami(ctx context.Context, cs *mcp.ClientSession) (identity, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "whoami", Arguments: map[string]any{}})
	if err != nil {
		return identity{}, err
	}
	if res.IsError {
		return identity{}, fmt.Errorf("whoami answered a tool error: %+v", res.Content)
	}
	var id identity
	data, err := json.Marshal(res.StructuredContent)
	if err == nil {
		err = json.Unmarshal(data, &id)
	}
	return id, err
}

// user is one person's MCP host: a user agent for oidc-provider's pages, a
// Transport with a file store, and an SDK session.
type user struct {
	url  string
	dir  string // the store's directory
	auth *oidcinterop.FormAuthorizer
	tr   *client.Transport
	cs   *mcp.ClientSession
}

// signIn connects a new user's SDK client to mcpURL; the connection's
// first request is refused, and the Transport signs in through
// oidc-provider's pages. The user (its store, session and background
// work) lasts as long as owner, t itself or a parent of t.
func signIn(t, owner *testing.T, mcpURL string) *user {
	t.Helper()
	u := &user{url: mcpURL, dir: owner.TempDir(), auth: oidcinterop.NewFormAuthorizer(login, "any password")}
	fs, err := store.OpenFile(u.dir)
	if err != nil {
		t.Fatal(err)
	}
	u.tr = client.NewTransport(client.Config{Store: fs, Authorizer: u.auth, ClientName: "evergrant oidc-provider interop"})
	owner.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u.tr.Wait(ctx)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if u.cs, err = connect(ctx, mcpURL, u.tr); err != nil {
		t.Fatalf("connect (and sign in through oidc-provider's pages): %v", err)
	}
	owner.Cleanup(func() { u.cs.Close() })
	return u
}

// connect connects the official Go SDK's client to mcpURL through rt.
func connect(ctx context.Context, mcpURL string, rt http.RoundTripper) (*mcp.ClientSession, error) {
	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-oidc-interop-client", Version: "1"}, nil)
	return c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: mcpURL, HTTPClient: &http.Client{Transport: rt}}, nil)
}

// grant returns the user's stored grant. It holds tokens: never log it.
func (u *user) grant(t *testing.T) *store.Grant {
	t.Helper()
	g, err := u.tr.Grant(t.Context(), u.url)
	switch {
	case err != nil:
		t.Fatalf("stored grant: %v", err)
	case g == nil:
		t.Fatal("no grant is stored")
	}
	return g
}

// requireRefreshToken checks that oidc-provider issued a refresh token,
// which every refresh-dependent check needs; the message says what was
// asked for and granted. fatal stops the test.
func requireRefreshToken(t *testing.T, u *user, fatal bool) {
	t.Helper()
	g := u.grant(t)
	if g.RefreshToken != "" {
		return
	}
	scope, prompt := u.auth.LastRequest()
	msg := fmt.Sprintf("no refresh token was issued: the client asked for scope %q with prompt %q and the grant holds scope %q; "+
		"oidc-provider grants offline_access, and so a refresh token, only to an authorization request with prompt=consent",
		scope, prompt, oauth.FormatScope(g.Scopes))
	if fatal {
		t.Fatal(msg)
	}
	t.Error(msg)
}

// signInWithRefreshToken signs a new user in for the test (signIn), makes
// a first call, waits for the Transport's background work, and requires a
// refresh token: where the checks of what happens to a grant start.
func signInWithRefreshToken(t *testing.T, mcpURL string) *user {
	t.Helper()
	u := signIn(t, t, mcpURL)
	if _, err := whoami(t.Context(), u.cs); err != nil {
		t.Fatalf("whoami after the sign-in: %v", err)
	}
	if err := u.tr.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	requireRefreshToken(t, u, true)
	return u
}

// checkSignIn checks a fresh sign-in: one pass through oidc-provider's login
// and consent pages, a token of the expected kind for the MCP server, and a
// call that sees who signed in.
func checkSignIn(t *testing.T, p *oidcinterop.Provider, m *mcpServer, u *user, opaque bool) {
	id, err := whoami(t.Context(), u.cs)
	if err != nil {
		t.Fatalf("whoami after the sign-in: %v", err)
	}
	g := u.grant(t)
	if id.Subject != login || id.Issuer != p.Issuer || id.ClientID != g.ClientID || !slices.Contains(id.Scopes, mcpScope) {
		t.Errorf("whoami = %+v; want subject %q, issuer %q, client %q, scope %q", id, login, p.Issuer, g.ClientID, mcpScope)
	}
	if want, _ := client.ServerKey(m.URL); g.Issuer != p.Issuer || g.Resource != want || g.TokenEndpoint != p.Metadata.TokenEndpoint {
		t.Errorf("grant: issuer %q, resource %q, token endpoint %q; want %q, %q, %q",
			g.Issuer, g.Resource, g.TokenEndpoint, p.Issuer, want, p.Metadata.TokenEndpoint)
	}
	kind, want := "a JWT", 2
	if opaque {
		kind, want = "an opaque token", 0
	}
	if dots := strings.Count(g.AccessToken, "."); dots != want {
		t.Errorf("the access token has %d dots; want %s", dots, kind)
	}
	if c := u.auth.Counts(); c.Authorizations != 1 || c.LoginForms != 1 || c.OtherForms != 1 {
		t.Errorf("user agent: %+v; want one authorization through one login form and one consent form", c)
	}
	if s := u.tr.Stats(); s.Authorizations != 1 || s.NeedsReauth != 0 {
		t.Errorf("transport stats %+v; want one authorization, no needs-reauth", s)
	}
	st, err := p.Stats(t.Context(), g.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Authorizations != 1 || st.AuthorizationCode != 1 || st.LoginPrompts != 1 || st.ConsentPrompts != 1 {
		t.Errorf("oidc-provider counted %+v; want one login prompt, one consent prompt, one code, one code exchange", st)
	}
	scope, prompt := u.auth.LastRequest()
	t.Logf("signed in as %s through oidc-provider's login and consent pages; asked for scope %q with prompt %q; granted %q; refresh token issued: %v",
		id.Subject, scope, prompt, oauth.FormatScope(g.Scopes), g.RefreshToken != "")
}

// acrossExpiries calls whoami for d, across several access-token expiries,
// and checks the story: no call fails, the client refreshes (once per token),
// oidc-provider accepts each refresh, and nobody signs in again.
func acrossExpiries(t *testing.T, p *oidcinterop.Provider, m *mcpServer, u *user, d time.Duration) {
	requireRefreshToken(t, u, false)
	clientID := u.grant(t).ClientID
	calls, failed, first := callFor(t.Context(), u.cs, d)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	u.tr.Wait(ctx)
	s := u.tr.Stats()
	c := u.auth.Counts()
	st, err := p.Stats(t.Context(), clientID)
	if err != nil {
		t.Fatal(err)
	}
	tokens := m.accessTokens(clientID)
	t.Logf("%d calls in %v: %d failed; client: %d refreshes, %d 401s, %d retries, %d authorizations (%d login and %d other forms); "+
		"oidc-provider: %d refresh grants, %d codes, errors %v, %d grants revoked; %d access tokens used",
		calls, d, failed, s.Refreshes, s.Unauthorized, s.Retries, s.Authorizations, c.LoginForms, c.OtherForms,
		st.RefreshToken, st.AuthorizationCode, st.GrantErrors, st.GrantsRevoked, tokens)

	if failed > 0 {
		t.Errorf("%d of %d calls failed; the first: %v", failed, calls, first)
	}
	if s.Authorizations > 1 || c.Authorizations > 1 {
		t.Errorf("%d authorizations (%d through oidc-provider's pages); want at most one interactive sign-in: the client signed in again instead of refreshing",
			s.Authorizations, c.Authorizations)
	}
	lo, hi := refreshBounds(d)
	if s.Refreshes < int64(lo) || s.Refreshes > int64(hi) {
		t.Errorf("%d refreshes in %v; want between %d and %d", s.Refreshes, d, lo, hi)
	}
	if int64(st.RefreshToken) != s.Refreshes || len(st.GrantErrors) != 0 || st.GrantsRevoked != 0 {
		t.Errorf("oidc-provider: %d successful refresh grants, errors %v, %d grants revoked; want %d, none, none",
			st.RefreshToken, st.GrantErrors, st.GrantsRevoked, s.Refreshes)
	}
	if tokens < lo+1 {
		t.Errorf("the MCP server accepted %d different access tokens; want at least %d", tokens, lo+1)
	}
}

// refreshBounds returns how many refreshes calls spread over d need at
// least (one per access-token lifetime) and may make at most. The client
// refreshes a token once it is past half its life (the default margin,
// 60 s, is capped at half of a 5 s lifetime), less the margin's jitter of
// up to a fifth: at most one refresh per 40% of a lifetime, plus one.
func refreshBounds(d time.Duration) (lo, hi int) {
	return int(d / accessTokenTTL), int(d/(accessTokenTTL*2/5)) + 1
}

// callFor calls whoami every callEvery for d and counts the calls and the
// failures.
func callFor(ctx context.Context, cs *mcp.ClientSession, d time.Duration) (calls, failed int, first error) {
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		calls++
		if _, err := whoami(ctx, cs); err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(callEvery):
		}
	}
	return calls, failed, first
}

// sleepPastExpiry waits, without a request, until the stored access token
// has expired by the client's clock (and by the resource server's).
func sleepPastExpiry(t *testing.T, u *user) {
	t.Helper()
	exp := u.grant(t).Expiry
	if exp.IsZero() {
		t.Fatal("the grant has no expiry")
	}
	select {
	case <-t.Context().Done():
	case <-time.After(time.Until(exp) + 200*time.Millisecond):
	}
}

// wantNeedsReauth checks that err, from CallTool, is a refused refresh.
func wantNeedsReauth(t *testing.T, err error) {
	t.Helper()
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) {
		t.Fatalf("the call after the access token expired: %v; want a *client.NeedsReauthError", err)
	}
	if ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant" {
		t.Errorf("NeedsReauthError reason %q, error %q; want %q, invalid_grant", ne.Reason, ne.ErrorCode, client.ReasonRefreshRejected)
	}
}

// revokedRefreshToken: the refresh token is revoked at oidc-provider (RFC
// 7009, with the client's registration); once the access token has
// expired, the next call fails with a NeedsReauthError whose reason is a
// refused refresh, and no sign-in is tried.
func revokedRefreshToken(t *testing.T, p *oidcinterop.Provider, m *mcpServer) {
	u := signInWithRefreshToken(t, m.URL)
	g := u.grant(t)
	status, code, err := p.PostForm(t.Context(), p.Metadata.RevocationEndpoint, g.ClientID,
		url.Values{"token": {g.RefreshToken}, "token_type_hint": {"refresh_token"}})
	if err != nil || status != http.StatusOK {
		t.Fatalf("revoking the refresh token: HTTP %d %s %v", status, code, err)
	}
	st, err := p.Stats(t.Context(), g.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if st.GrantsRevoked != 1 {
		t.Errorf("oidc-provider revoked %d grants; want the grant of the refresh token", st.GrantsRevoked)
	}
	sleepPastExpiry(t, u)
	_, err = whoami(t.Context(), u.cs)
	wantNeedsReauth(t, err)
	if c := u.auth.Counts(); c.Authorizations != 1 {
		t.Errorf("%d authorizations; want only the first: a refused refresh is the host's to report", c.Authorizations)
	}
	if st, err = p.Stats(t.Context(), g.ClientID); err != nil {
		t.Fatal(err)
	}
	if st.RefreshToken != 0 || st.GrantErrors["invalid_grant"] != 1 {
		t.Errorf("oidc-provider: %d refresh grants, errors %v; want none, one invalid_grant", st.RefreshToken, st.GrantErrors)
	}
}

// replayedRefreshToken: after a refresh has rotated the refresh token, the
// old one is presented again at the token endpoint with the client's
// registration; oidc-provider takes it for theft and revokes the grant, and
// the client's next refresh is refused: NeedsReauthError.
func replayedRefreshToken(t *testing.T, p *oidcinterop.Provider, m *mcpServer) {
	u := signInWithRefreshToken(t, m.URL)
	g := u.grant(t)
	old := g.RefreshToken
	refreshes := u.tr.Stats().Refreshes
	sleepPastExpiry(t, u)
	if _, err := whoami(t.Context(), u.cs); err != nil {
		t.Fatalf("whoami after the first expiry: %v", err)
	}
	if err := u.tr.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := u.tr.Stats().Refreshes - refreshes; n != 1 {
		t.Fatalf("%d refreshes at the expiry; want 1", n)
	}
	if u.grant(t).RefreshToken == old {
		t.Fatal("the refresh did not rotate the refresh token")
	}
	status, code, err := p.PostForm(t.Context(), p.Metadata.TokenEndpoint, g.ClientID,
		url.Values{"grant_type": {"refresh_token"}, "refresh_token": {old}, "resource": {g.Resource}})
	if err != nil || status != http.StatusBadRequest || code != "invalid_grant" {
		t.Fatalf("replaying the rotated refresh token: HTTP %d %q %v; want 400 invalid_grant", status, code, err)
	}
	st, err := p.Stats(t.Context(), g.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	if st.GrantsRevoked != 1 {
		t.Errorf("oidc-provider revoked %d grants after the replay; want 1", st.GrantsRevoked)
	}
	sleepPastExpiry(t, u)
	_, err = whoami(t.Context(), u.cs)
	wantNeedsReauth(t, err)
	if st, err = p.Stats(t.Context(), g.ClientID); err != nil {
		t.Fatal(err)
	}
	if st.GrantErrors["invalid_grant"] != 2 {
		t.Errorf("oidc-provider counted errors %v; want two invalid_grant (the replay, then the client's refresh)", st.GrantErrors)
	}
}

// Environment of the child processes of twoProcesses.
const (
	envHelper   = "EVERGRANT_OIDC_HELPER"
	envURL      = "EVERGRANT_OIDC_MCP_URL"
	envDir      = "EVERGRANT_OIDC_STORE_DIR"
	envDuration = "EVERGRANT_OIDC_DURATION"
)

// childReport is what a child process prints when it is done.
type childReport struct {
	Calls      int    `json:"calls"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error,omitempty"`
	client.Stats
}

// twoProcesses: two OS processes share one store.File and call the MCP
// server across expiries. Between them they refresh once per access token:
// oidc-provider never sees a refresh token twice (which it would take for
// theft and revoke the grant), and no call fails.
func twoProcesses(t *testing.T, p *oidcinterop.Provider, m *mcpServer) {
	u := signInWithRefreshToken(t, m.URL)
	clientID := u.grant(t).ClientID
	before, err := p.Stats(t.Context(), clientID)
	if err != nil {
		t.Fatal(err)
	}

	const d = 9 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), d+45*time.Second)
	defer cancel()
	type child struct {
		cmd            *exec.Cmd
		stdout, stderr bytes.Buffer
	}
	var children []*child
	for range 2 {
		c := &child{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcessOIDCClient$", "-test.count=1")}
		c.cmd.Env = append(os.Environ(), envHelper+"=1", envURL+"="+m.URL, envDir+"="+u.dir, envDuration+"="+d.String())
		c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
	}
	var refreshes int64
	for i, c := range children {
		err := c.cmd.Wait()
		var r childReport
		lines := strings.Split(strings.TrimSpace(c.stdout.String()), "\n")
		if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil || jerr != nil {
			t.Errorf("child %d: %v; stdout:\n%s\nstderr:\n%s", i, err, c.stdout.Bytes(), c.stderr.Bytes())
			continue
		}
		t.Logf("child %d: %d calls, %d failed; %d refreshes, %d 401s, %d retries, %d needs-reauth",
			i, r.Calls, r.Failed, r.Refreshes, r.Unauthorized, r.Retries, r.NeedsReauth)
		if r.Failed != 0 || r.NeedsReauth != 0 {
			t.Errorf("child %d: %d of %d calls failed, %d needs-reauth; the first: %s", i, r.Failed, r.Calls, r.NeedsReauth, r.FirstError)
		}
		refreshes += r.Refreshes
	}
	st, err := p.Stats(t.Context(), clientID)
	if err != nil {
		t.Fatal(err)
	}
	got := st.RefreshToken - before.RefreshToken
	t.Logf("oidc-provider: %d refresh grants, errors %v, %d grants revoked", got, st.GrantErrors, st.GrantsRevoked)
	if len(st.GrantErrors) != 0 || st.GrantsRevoked != 0 {
		t.Errorf("oidc-provider saw errors %v and revoked %d grants; want neither (a refresh token used twice is revoked as stolen)", st.GrantErrors, st.GrantsRevoked)
	}
	if int64(got) != refreshes {
		t.Errorf("oidc-provider answered %d refresh grants; the children sent %d", got, refreshes)
	}
	if lo, hi := refreshBounds(d); got < lo || got > hi {
		t.Errorf("%d refreshes in %v between the two processes; want between %d and %d: one per access token", got, d, lo, hi)
	}
}

// TestHelperProcessOIDCClient is a child process of TestOIDCProvider's
// TwoProcesses; it does nothing in a normal test run.
func TestHelperProcessOIDCClient(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		t.Skip("helper process")
	}
	r, err := childMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// childMain calls whoami through a Transport on the shared store, without
// an Authorizer (it must never sign in), for the given duration.
func childMain() (*childReport, error) {
	d, err := time.ParseDuration(os.Getenv(envDuration))
	if err != nil {
		return nil, err
	}
	fs, err := store.OpenFile(os.Getenv(envDir))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	tr := client.NewTransport(client.Config{Store: fs})
	cs, err := connect(ctx, os.Getenv(envURL), tr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	r := &childReport{}
	var first error
	r.Calls, r.Failed, first = callFor(ctx, cs, d)
	if first != nil {
		r.FirstError = first.Error()
	}
	// Closing the session sends a request too (DELETE), which may refresh.
	if err := cs.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
	}
	// A refresh running in the background must be saved before the
	// process exits.
	if err := tr.Wait(ctx); err != nil {
		return nil, err
	}
	r.Stats = tr.Stats()
	return r, nil
}
