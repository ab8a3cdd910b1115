package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// Pre-registered clients of the revocation tests. The identifiers and the
// secret hold the characters RFC 6749 §2.3.1's form-urlencoding changes,
// so a Basic header built without it fails at the authorization server.
const (
	rvBasicID     = "revoke:basic +%"
	rvPostID      = "revoke:post +%"
	rvSecret      = "s:e%cr+t &=x y"
	rvIntrospect  = "revoke-introspector"
	rvIntroSecret = "introspector-secret"
	rvRedirect    = "http://127.0.0.1/callback"
)

// rvEnv is the fixture stack (evergrant's authorization server and an MCP
// resource server on loopback) with the clients above, and a recording
// front for its authorization server that can also fail on demand.
type rvEnv struct {
	t  *testing.T
	st *fixture.Stack
	// front serves the authorization server's handler on another listener;
	// a grant whose RevocationEndpoint points there is revoked through it.
	front *httptest.Server

	mu       sync.Mutex
	revokes  []url.Values // forms of the revocation requests through front
	status   int          // when set, front answers every request with it
	noAccess bool         // front refuses to revoke access tokens
}

func newRevokeEnv(t *testing.T) *rvEnv {
	t.Helper()
	e := &rvEnv{t: t}
	e.st = fixture.New(t, fixture.Options{Clients: []authserver.ClientConfig{
		{ID: rvBasicID, Secret: rvSecret, AuthMethod: oauth.AuthMethodClientSecretBasic, RedirectURIs: []string{rvRedirect}},
		{ID: rvPostID, Secret: rvSecret, AuthMethod: oauth.AuthMethodClientSecretPost, RedirectURIs: []string{rvRedirect}},
		{ID: rvIntrospect, Secret: rvIntroSecret, RedirectURIs: []string{"https://rs.invalid/cb"}},
	}})
	e.front = httptest.NewServer(http.HandlerFunc(e.serveFront))
	t.Cleanup(e.front.Close)
	return e
}

func (e *rvEnv) serveFront(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == authserver.PathRevoke {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		form, _ := url.ParseQuery(string(body))
		e.mu.Lock()
		e.revokes = append(e.revokes, form)
		status, noAccess := e.status, e.noAccess
		e.mu.Unlock()
		switch {
		case status != 0:
			http.Error(w, "down for maintenance", status)
			return
		case noAccess && form.Get("token_type_hint") == "access_token":
			// An authorization server that revokes refresh tokens only
			// (RFC 7009 §2.2.1).
			oauth.WriteError(w, oauth.NewError(oauth.ErrorUnsupportedTokenType, "access tokens are not revocable"))
			return
		}
	}
	e.st.AS.ServeHTTP(w, r)
}

// signIn returns a new grant for the fixture's MCP server, signed in with
// the given client (empty id: a dynamically registered public client).
func (e *rvEnv) signIn(id, secret, method string) *store.Grant {
	e.t.Helper()
	ctx := context.Background()
	tr := client.NewTransport(client.Config{
		Store: &store.Memory{}, Authorizer: client.NewHeadlessAuthorizer(rvRedirect, nil),
		ClientID: id, ClientSecret: secret, ClientAuthMethod: method,
	})
	if err := tr.Authorize(ctx, e.st.URL); err != nil {
		e.t.Fatalf("sign in as %q: %v", id, err)
	}
	g, err := tr.Grant(ctx, e.st.URL)
	if err != nil || g == nil {
		e.t.Fatalf("grant: %v", err)
	}
	if g.AccessToken == "" || g.RefreshToken == "" || g.RevocationEndpoint == "" {
		e.t.Fatalf("the grant lacks a token or the revocation endpoint (has access token %v, refresh token %v, endpoint %q)",
			g.AccessToken != "", g.RefreshToken != "", g.RevocationEndpoint)
	}
	return g
}

// refreshStatus is the status of a refresh with g's refresh token and the
// OAuth error code, sent as g's client.
func (e *rvEnv) refreshStatus(g *store.Grant) (int, string) {
	e.t.Helper()
	req, err := oauth.NewFormRequest(context.Background(), g.TokenEndpoint, url.Values{
		"grant_type": {oauth.GrantTypeRefreshToken}, "refresh_token": {g.RefreshToken}, "resource": {g.Resource},
	}, oauth.ClientAuth{ID: g.ClientID, Secret: g.ClientSecret, Method: g.AuthMethod})
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	code := ""
	if oe, err := oauth.ParseError(resp.StatusCode, body); err == nil {
		code = oe.Code
	}
	return resp.StatusCode, code
}

// active asks the authorization server (RFC 7662) whether token is active.
func (e *rvEnv) active(token string) bool {
	e.t.Helper()
	req, err := oauth.NewFormRequest(context.Background(), e.st.Issuer+authserver.PathIntrospect,
		url.Values{"token": {token}}, oauth.ClientAuth{ID: rvIntrospect, Secret: rvIntroSecret})
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var ir oauth.IntrospectionResponse
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&ir) != nil {
		e.t.Fatalf("introspection answered %d", resp.StatusCode)
	}
	return ir.Active
}

// through returns a copy of g whose revocation endpoint is the front.
func (e *rvEnv) through(g *store.Grant) *store.Grant {
	c := g.Clone()
	c.RevocationEndpoint = e.front.URL + authserver.PathRevoke
	return c
}

func (e *rvEnv) requests() []url.Values {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]url.Values(nil), e.revokes...)
}

// noTokens fails if an error's text holds one of g's secrets.
func noTokens(t *testing.T, g *store.Grant, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{g.AccessToken, g.RefreshToken, g.ClientSecret} {
		if s != "" && strings.Contains(err.Error(), s) {
			t.Fatalf("the error holds token material or a secret: %v", err)
		}
	}
}

// Revoke ends the grant at evergrant's authorization server, authenticating
// as the grant's client with each method a registration may name (RFC 7009
// §2.1): the refresh token no longer refreshes, the access token is no
// longer active.
func TestRevoke_EachClientAuthMethod(t *testing.T) {
	e := newRevokeEnv(t)
	for _, c := range []struct{ name, id, secret, method string }{
		{"client_secret_basic", rvBasicID, rvSecret, oauth.AuthMethodClientSecretBasic},
		{"client_secret_post", rvPostID, rvSecret, oauth.AuthMethodClientSecretPost},
		{"none (dynamic registration)", "", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := e.signIn(c.id, c.secret, c.method)
			if c.method != "" && g.AuthMethod != c.method {
				t.Fatalf("grant auth method %q, want %q", g.AuthMethod, c.method)
			}
			if !e.active(g.AccessToken) {
				t.Fatal("the access token is not active before the revocation")
			}
			done, err := client.Revoke(context.Background(), nil, g)
			if err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if done != (client.Revoked{RefreshToken: true, AccessToken: true}) {
				t.Errorf("revoked %+v, want both tokens", done)
			}
			if status, code := e.refreshStatus(g); status != http.StatusBadRequest || code != oauth.ErrorInvalidGrant {
				t.Errorf("refresh after Revoke: %d %q, want 400 invalid_grant", status, code)
			}
			if e.active(g.AccessToken) {
				t.Error("the access token is still active after Revoke")
			}
		})
	}
}

// The refresh token goes first (it ends the grant), then the access token,
// each with its token_type_hint; an expired access token is not sent.
func TestRevoke_OrderAndExpiredAccessToken(t *testing.T) {
	e := newRevokeEnv(t)
	g := e.through(e.signIn(rvBasicID, rvSecret, oauth.AuthMethodClientSecretBasic))
	done, err := client.Revoke(context.Background(), nil, g)
	if err != nil || done != (client.Revoked{RefreshToken: true, AccessToken: true}) {
		t.Fatalf("Revoke: %+v %v", done, err)
	}
	got := e.requests()
	if len(got) != 2 ||
		got[0].Get("token") != g.RefreshToken || got[0].Get("token_type_hint") != "refresh_token" ||
		got[1].Get("token") != g.AccessToken || got[1].Get("token_type_hint") != "access_token" {
		t.Errorf("%d revocation requests, want the refresh token then the access token", len(got))
	}
	for _, f := range got {
		if f.Get("client_secret") != "" || f.Get("client_id") != "" {
			t.Error("client_secret_basic sent credentials in the body")
		}
	}

	g = e.through(e.signIn(rvPostID, rvSecret, oauth.AuthMethodClientSecretPost))
	g.Expiry = time.Now().Add(-time.Minute)
	n := len(e.requests())
	done, err = client.Revoke(context.Background(), nil, g)
	if err != nil || done != (client.Revoked{RefreshToken: true}) {
		t.Fatalf("Revoke with an expired access token: %+v %v", done, err)
	}
	if got := e.requests()[n:]; len(got) != 1 || got[0].Get("token_type_hint") != "refresh_token" ||
		got[0].Get("client_id") != rvPostID || got[0].Get("client_secret") != rvSecret {
		t.Errorf("revocation requests %d, want one for the refresh token with client_secret_post", len(got))
	}
}

// An authorization server that cannot revoke access tokens
// (unsupported_token_type) is no failure: the refresh token is revoked,
// and with it the grant.
func TestRevoke_UnsupportedTokenTypeForAccessToken(t *testing.T) {
	e := newRevokeEnv(t)
	e.mu.Lock()
	e.noAccess = true
	e.mu.Unlock()
	g := e.through(e.signIn(rvBasicID, rvSecret, oauth.AuthMethodClientSecretBasic))
	done, err := client.Revoke(context.Background(), nil, g)
	if err != nil || done != (client.Revoked{RefreshToken: true}) {
		t.Fatalf("Revoke: %+v %v, want the refresh token revoked and no error", done, err)
	}
	if status, _ := e.refreshStatus(g); status != http.StatusBadRequest {
		t.Errorf("refresh after Revoke: %d", status)
	}
}

// Failures: an authorization server that is down gives an error naming the
// token and the status, and the grant stays; a refusal is an *oauth.Error;
// neither holds token material.
func TestRevoke_Failures(t *testing.T) {
	e := newRevokeEnv(t)
	g := e.through(e.signIn(rvBasicID, rvSecret, oauth.AuthMethodClientSecretBasic))

	e.mu.Lock()
	e.status = http.StatusServiceUnavailable
	e.mu.Unlock()
	done, err := client.Revoke(context.Background(), nil, g)
	if err == nil || done != (client.Revoked{}) || !strings.HasPrefix(err.Error(), "refresh token: ") || !strings.Contains(err.Error(), "503") {
		t.Errorf("Revoke with the server down: %+v %v", done, err)
	}
	noTokens(t, g, err)
	if status, _ := e.refreshStatus(g); status != http.StatusOK {
		t.Errorf("refresh after a failed revocation: %d, want 200", status)
	}
	e.mu.Lock()
	e.status = 0
	e.mu.Unlock()

	// Tokens of another client: the authorization server refuses.
	g = e.signIn(rvBasicID, rvSecret, oauth.AuthMethodClientSecretBasic)
	other := g.Clone()
	other.ClientID, other.ClientSecret, other.AuthMethod = rvPostID, rvSecret, oauth.AuthMethodClientSecretPost
	done, err = client.Revoke(context.Background(), nil, other)
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Code != oauth.ErrorUnauthorizedClient || done != (client.Revoked{}) {
		t.Errorf("Revoke as another client: %+v %v, want unauthorized_client", done, err)
	}
	noTokens(t, g, err)

	// Wrong credentials: invalid_client.
	bad := g.Clone()
	bad.ClientSecret = "wrong"
	if _, err := client.Revoke(context.Background(), nil, bad); !errors.As(err, &oe) || oe.Code != oauth.ErrorInvalidClient {
		t.Errorf("Revoke with a wrong secret: %v, want invalid_client", err)
	}
}

// A grant without a revocation endpoint, without tokens, or with an
// endpoint that would send its tokens in clear text to another machine.
func TestRevoke_NothingToSend(t *testing.T) {
	g := &store.Grant{Key: "https://mcp.example.com/mcp", ClientID: "c", RefreshToken: "RT-secret", AccessToken: "AT-secret"}
	if _, err := client.Revoke(context.Background(), nil, g); !errors.Is(err, client.ErrNoRevocationEndpoint) {
		t.Errorf("no endpoint: %v, want ErrNoRevocationEndpoint", err)
	}
	if done, err := client.Revoke(context.Background(), nil, &store.Grant{RevocationEndpoint: "https://as.invalid/revoke"}); err != nil || done != (client.Revoked{}) {
		t.Errorf("no tokens: %+v %v, want nothing to do", done, err)
	}
	g.RevocationEndpoint = "http://as.example.com/revoke"
	_, err := client.Revoke(context.Background(), nil, g)
	if err == nil || !strings.Contains(err.Error(), "revocation endpoint") {
		t.Errorf("http endpoint off loopback: %v", err)
	}
	noTokens(t, g, err)
}
