package client_test

// Discovery and first authorization (docs/design.md#client-discovery).
// Small httptest servers stand in for resource servers (and, where a
// document must be wrong, for authorization servers); the fixture's real
// authorization server issues the tokens.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

const dcPRM = oauth.WellKnownProtectedResource

// dcServer is an httptest server with routes set by exact path, a fallback
// handler, 404 for the rest, and a record of the paths it was asked for.
type dcServer struct {
	*httptest.Server
	mu       sync.Mutex
	routes   map[string]http.HandlerFunc
	fallback http.Handler
	hits     []string
}

func dcNewServer(t *testing.T) *dcServer {
	s := &dcServer{routes: map[string]http.HandlerFunc{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits = append(s.hits, r.URL.Path)
		h, fb := s.routes[r.URL.Path], s.fallback
		s.mu.Unlock()
		switch {
		case h != nil:
			h(w, r)
		case fb != nil:
			fb.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *dcServer) handle(path string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[path] = h
}

func (s *dcServer) setFallback(h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fallback = h
}

// json serves v as a JSON document at path.
func (s *dcServer) json(path string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	s.handle(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(data)
	})
}

func (s *dcServer) paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hits)
}

// count returns how often path was asked for.
func (s *dcServer) count(path string) int {
	n := 0
	for _, p := range s.paths() {
		if p == path {
			n++
		}
	}
	return n
}

// mcp serves an MCP endpoint at /mcp that answers a request without a
// token with 401 and challenge, and echoes requests with one.
func (s *dcServer) mcp(challenge string) {
	s.handle("/mcp", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", challenge)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fixture.Echo(w, r)
	})
}

// dcWithResource lets the fixture's authorization server issue tokens for
// more resources.
func dcWithResource(res ...string) func(*authserver.Config) {
	return func(c *authserver.Config) { c.Resources = append(c.Resources, res...) }
}

// dcRecorder records the requests a Transport sends (discovery,
// registration, token and MCP requests; not the authorizer's).
type dcRecorder struct {
	mu   sync.Mutex
	reqs []string // "METHOD URL"
}

func (r *dcRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.String())
	r.mu.Unlock()
	if req.URL.Hostname() != "127.0.0.1" {
		// Tests stay on loopback.
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("dcRecorder: refusing to contact %s", req.URL.Host)
	}
	return http.DefaultTransport.RoundTrip(req)
}

// hosts returns the hosts of the recorded requests.
func (r *dcRecorder) hosts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var hs []string
	for _, s := range r.reqs {
		_, u, _ := strings.Cut(s, " ")
		if pu, err := url.Parse(u); err == nil && !slices.Contains(hs, pu.Host) {
			hs = append(hs, pu.Host)
		}
	}
	return hs
}

// count returns how many recorded requests have this method and path.
func (r *dcRecorder) count(method, path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.reqs {
		m, u, _ := strings.Cut(s, " ")
		if pu, err := url.Parse(u); err == nil && m == method && pu.Path == path {
			n++
		}
	}
	return n
}

// dcAuthorizer wraps an Authorizer: it records the authorization URLs,
// can stop before the authorization server is visited, and can alter the
// redirect's parameters.
type dcAuthorizer struct {
	inner  client.Authorizer
	stop   bool
	mutate func(url.Values)
	mu     sync.Mutex
	urls   []*url.URL
}

var errDCStop = errors.New("dcAuthorizer: stopped before the authorization server")

func (a *dcAuthorizer) RedirectURI() string {
	if a.inner == nil {
		return "http://127.0.0.1/callback"
	}
	return a.inner.RedirectURI()
}

func (a *dcAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.urls = append(a.urls, u)
	a.mu.Unlock()
	if a.stop || a.inner == nil {
		return nil, errDCStop
	}
	v, err := a.inner.Authorize(ctx, authURL)
	if err == nil && a.mutate != nil {
		a.mutate(v)
	}
	return v, err
}

func (a *dcAuthorizer) calls() []*url.URL {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.urls)
}

// dcCheckRefused checks that err is an authorization refused before the
// user was sent anywhere: a NeedsReauthError with reason
// authorization_failed that wraps ErrAuthorization and, when discovery is
// set, ErrDiscovery.
func dcCheckRefused(t *testing.T, err error, discovery bool, authz *dcAuthorizer) {
	t.Helper()
	if err == nil {
		t.Fatal("authorization succeeded, want it refused")
	}
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonAuthorizationFailed {
		t.Errorf("error %v (%T), want a NeedsReauthError with reason %s", err, err, client.ReasonAuthorizationFailed)
	}
	if !errors.Is(err, client.ErrNeedsReauth) || !errors.Is(err, client.ErrAuthorization) {
		t.Errorf("error %v: errors.Is ErrNeedsReauth %v, ErrAuthorization %v; want both", err,
			errors.Is(err, client.ErrNeedsReauth), errors.Is(err, client.ErrAuthorization))
	}
	if discovery && !errors.Is(err, client.ErrDiscovery) {
		t.Errorf("error %v does not wrap ErrDiscovery", err)
	}
	if authz != nil && len(authz.calls()) != 0 {
		t.Errorf("the user was sent to %v", authz.calls())
	}
}

// dcGrantInfo describes a grant without its token material, for failure
// messages.
func dcGrantInfo(g *store.Grant) string {
	if g == nil {
		return "no grant"
	}
	return fmt.Sprintf("grant{key %s, resource %s, issuer %s, token endpoint %s, client %s (%s), scopes %q, access token %v, refresh token %v}",
		g.Key, g.Resource, g.Issuer, g.TokenEndpoint, g.ClientID, g.AuthMethod, g.Scopes, g.AccessToken != "", g.RefreshToken != "")
}

// dcPRMDoc is protected resource metadata.
func dcPRMDoc(resource string, as ...string) oauth.ProtectedResourceMetadata {
	return oauth.ProtectedResourceMetadata{Resource: resource, AuthorizationServers: as, ScopesSupported: []string{"mcp:tools"}}
}

// dcASDoc is authorization server metadata for issuer, with endpoints
// under it.
func dcASDoc(issuer string) oauth.AuthServerMetadata {
	return oauth.AuthServerMetadata{
		Issuer:                        issuer,
		AuthorizationEndpoint:         issuer + "/authorize",
		TokenEndpoint:                 issuer + "/token",
		RegistrationEndpoint:          issuer + "/register",
		ScopesSupported:               []string{"mcp:tools", "offline_access"},
		ResponseTypesSupported:        []string{"code"},
		CodeChallengeMethodsSupported: []string{"S256"},
	}
}

// TestDiscovery_PRMFromChallengeResourceMetadata: the protected resource
// metadata is read from the challenge's resource_metadata URL, and not from
// the well-known URLs (docs/design.md#client-discovery).
func TestDiscovery_PRMFromChallengeResourceMetadata(t *testing.T) {
	rs := dcNewServer(t)
	st := fixture.New(t, fixture.Options{AuthServer: dcWithResource(rs.URL + "/mcp")})
	rs.mcp(`Bearer resource_metadata="` + rs.URL + `/meta/prm.json"`)
	rs.json("/meta/prm.json", dcPRMDoc(rs.URL+"/mcp", st.Issuer))
	// The well-known locations name an authorization server that does not
	// exist: using them would fail.
	rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", "http://127.0.0.1:1"))
	rs.json(dcPRM, dcPRMDoc(rs.URL+"/mcp", "http://127.0.0.1:1"))

	tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}})
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, rs.URL+"/mcp", 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 5); err != nil {
		t.Fatal(err)
	}
	if rs.count("/meta/prm.json") != 1 || rs.count(dcPRM+"/mcp") != 0 || rs.count(dcPRM) != 0 {
		t.Errorf("resource server paths %v: want the challenge's resource_metadata only", rs.paths())
	}
	g, _ := tr.Grant(t.Context(), rs.URL+"/mcp")
	if g == nil || g.Issuer != st.Issuer || g.Resource != rs.URL+"/mcp" {
		t.Errorf("%s: want issuer %s and resource %s", dcGrantInfo(g), st.Issuer, rs.URL+"/mcp")
	}
}

// TestDiscovery_PRMPathInsertedWellKnown: without resource_metadata in the
// challenge, the metadata is read from the well-known URL with the server's
// path inserted, and not from the root one
// (docs/design.md#client-discovery).
func TestDiscovery_PRMPathInsertedWellKnown(t *testing.T) {
	rs := dcNewServer(t)
	st := fixture.New(t, fixture.Options{AuthServer: dcWithResource(rs.URL + "/mcp")})
	rs.mcp(`Bearer`)
	rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", st.Issuer))
	rs.json(dcPRM, dcPRMDoc(rs.URL+"/mcp", "http://127.0.0.1:1"))

	tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}})
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, rs.URL+"/mcp", 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 6); err != nil {
		t.Fatal(err)
	}
	if rs.count(dcPRM+"/mcp") != 1 || rs.count(dcPRM) != 0 {
		t.Errorf("resource server paths %v: want the path-inserted well-known URL only", rs.paths())
	}
}

// TestDiscovery_PRMRootWellKnownFallback: when the path-inserted well-known
// URL answers 404, the root well-known URL is read; its resource may name
// the endpoint or its origin (docs/design.md#client-discovery).
func TestDiscovery_PRMRootWellKnownFallback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resource func(rs *dcServer) string
	}{
		{"document names the endpoint", func(rs *dcServer) string { return rs.URL + "/mcp" }},
		{"document names the origin", func(rs *dcServer) string { return rs.URL }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := dcNewServer(t)
			res := tc.resource(rs)
			st := fixture.New(t, fixture.Options{AuthServer: dcWithResource(res)})
			rs.mcp(`Bearer`)
			rs.json(dcPRM, dcPRMDoc(res, st.Issuer))

			tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}})
			if err := tr.Authorize(t.Context(), rs.URL+"/mcp"); err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			var prm []string
			for _, p := range rs.paths() {
				if strings.HasPrefix(p, dcPRM) {
					prm = append(prm, p)
				}
			}
			if want := []string{dcPRM + "/mcp", dcPRM}; !slices.Equal(prm, want) {
				t.Errorf("metadata fetched %v, want %v", prm, want)
			}
			g, _ := tr.Grant(t.Context(), rs.URL+"/mcp")
			if g == nil || g.Resource != res {
				t.Errorf("%s: want resource %s", dcGrantInfo(g), res)
			}
			resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, rs.URL+"/mcp", 7)
			if err != nil {
				t.Fatal(err)
			}
			if err := ccCheckEcho(resp, data, 7); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDiscovery_PRMForAnotherResourceRefused: metadata whose resource is not
// the server (nor a path prefix of it) stops the authorization before
// anything is sent to an authorization server
// (docs/design.md#client-discovery).
func TestDiscovery_PRMForAnotherResourceRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resource func(rs *dcServer) string
	}{
		{"another origin", func(*dcServer) string { return "http://127.0.0.1:1/mcp" }},
		{"another path", func(rs *dcServer) string { return rs.URL + "/other" }},
		{"a string prefix that is not a path prefix", func(rs *dcServer) string { return rs.URL + "/mc" }},
		{"a longer path", func(rs *dcServer) string { return rs.URL + "/mcp/v2" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := dcNewServer(t)
			rec := &dcRecorder{}
			st := fixture.New(t, fixture.Options{AuthServer: dcWithResource(tc.resource(rs))})
			rs.mcp(`Bearer resource_metadata="` + rs.URL + dcPRM + `/mcp"`)
			rs.json(dcPRM+"/mcp", dcPRMDoc(tc.resource(rs), st.Issuer))
			authz := &dcAuthorizer{inner: &client.HeadlessAuthorizer{}}
			tr := client.NewTransport(client.Config{Base: rec, Authorizer: authz})

			err := tr.Authorize(t.Context(), rs.URL+"/mcp")
			dcCheckRefused(t, err, true, authz)

			// The same on the 401 path.
			_, _, err = ccPost(t.Context(), &http.Client{Transport: tr}, rs.URL+"/mcp", 1)
			dcCheckRefused(t, err, true, authz)
			if n := rec.count(http.MethodGet, oauth.WellKnownAuthServer) + rec.count(http.MethodPost, "/register"); n != 0 {
				t.Errorf("%d requests reached the authorization server", n)
			}
			if g, _ := tr.Grant(t.Context(), rs.URL+"/mcp"); g != nil {
				t.Errorf("a grant was stored")
			}
		})
	}
}

// TestDiscovery_ASIssuerMismatchRefused: authorization server metadata whose
// issuer is not the one asked for stops the authorization before the user is
// sent anywhere (docs/design.md#client-discovery).
func TestDiscovery_ASIssuerMismatchRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		issuer func(as *dcServer) string
	}{
		{"another origin", func(*dcServer) string { return "http://127.0.0.1:1" }},
		{"a path added", func(as *dcServer) string { return as.URL + "/tenant" }},
		{"a trailing slash", func(as *dcServer) string { return as.URL + "/" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, as := dcNewServer(t), dcNewServer(t)
			rs.mcp(`Bearer`)
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.Issuer = tc.issuer(as)
			as.json(oauth.WellKnownAuthServer, md)
			authz := &dcAuthorizer{stop: true}
			tr := client.NewTransport(client.Config{Authorizer: authz, ClientID: "dc-client"})
			err := tr.Authorize(t.Context(), rs.URL+"/mcp")
			dcCheckRefused(t, err, true, authz)
			if as.count(oauth.WellKnownAuthServer) != 1 {
				t.Errorf("authorization server paths %v", as.paths())
			}
		})
	}
}

// TestDiscovery_ASWithoutS256Refused: an authorization server that does not
// list PKCE S256 is refused, and the error says so
// (docs/design.md#client-discovery).
func TestDiscovery_ASWithoutS256Refused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		methods []string
	}{
		{"plain only", []string{"plain"}},
		{"none listed", nil},
		{"lower case", []string{"s256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, as := dcNewServer(t), dcNewServer(t)
			rs.mcp(`Bearer`)
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.CodeChallengeMethodsSupported = tc.methods
			as.json(oauth.WellKnownAuthServer, md)
			authz := &dcAuthorizer{stop: true}
			tr := client.NewTransport(client.Config{Authorizer: authz, ClientID: "dc-client"})
			err := tr.Authorize(t.Context(), rs.URL+"/mcp")
			dcCheckRefused(t, err, true, authz)
			if err != nil && !strings.Contains(err.Error(), "S256") {
				t.Errorf("error %q does not say S256 is missing", err)
			}
		})
	}
}

// TestDiscovery_ASMetadataURLOrder: for an issuer with a path, the RFC 8414
// path-inserted URL, then the OpenID path-inserted URL, then the OpenID
// path-appended URL (docs/design.md#client-discovery).
func TestDiscovery_ASMetadataURLOrder(t *testing.T) {
	rs, as := dcNewServer(t), dcNewServer(t)
	issuer := as.URL + "/tenant1"
	rs.mcp(`Bearer`)
	rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", issuer))
	as.json("/tenant1/.well-known/openid-configuration", dcASDoc(issuer))
	authz := &dcAuthorizer{stop: true}
	tr := client.NewTransport(client.Config{Authorizer: authz, ClientID: "dc-client"})
	err := tr.Authorize(t.Context(), rs.URL+"/mcp")
	if !errors.Is(err, errDCStop) {
		t.Fatalf("Authorize = %v, want it to reach the authorizer", err)
	}
	want := []string{
		oauth.WellKnownAuthServer + "/tenant1",
		oauth.WellKnownOpenIDConfiguration + "/tenant1",
		"/tenant1" + oauth.WellKnownOpenIDConfiguration,
	}
	if got := as.paths(); !slices.Equal(got, want) {
		t.Errorf("metadata fetched %v, want %v", got, want)
	}
	if c := authz.calls(); len(c) != 1 || !strings.HasPrefix(c[0].String(), issuer+"/authorize?") {
		t.Errorf("authorization URL %v, want the endpoint of the OpenID document", c)
	}
}

// TestAuthorize_OfflineAccessOnlyWhenListed: offline_access is asked for
// when the authorization server lists it (SEP-2207), and never when it does
// not, even if configured (docs/design.md#client-discovery).
func TestAuthorize_OfflineAccessOnlyWhenListed(t *testing.T) {
	t.Run("listed", func(t *testing.T) {
		st := fixture.New(t, fixture.Options{})
		authz := &dcAuthorizer{inner: &client.HeadlessAuthorizer{}}
		tr := client.NewTransport(client.Config{Authorizer: authz})
		if err := tr.Authorize(t.Context(), st.URL); err != nil {
			t.Fatal(err)
		}
		c := authz.calls()
		if len(c) != 1 {
			t.Fatalf("%d authorizations", len(c))
		}
		scope := oauth.ParseScope(c[0].Query().Get("scope"))
		if !slices.Contains(scope, "offline_access") || !slices.Contains(scope, "mcp:tools") {
			t.Errorf("scope %q: want mcp:tools (from the resource metadata) and offline_access", scope)
		}
		if g, _ := tr.Grant(t.Context(), st.URL); g == nil || g.RefreshToken == "" {
			t.Errorf("no refresh token granted")
		}
	})
	for _, tc := range []struct {
		name       string
		supported  []string
		configured []string
		want       []string
	}{
		{"not listed", []string{"mcp:tools"}, nil, []string{"mcp:tools"}},
		{"not listed but configured", []string{"mcp:tools", "extra"}, []string{"offline_access", "extra"}, []string{"mcp:tools", "extra"}},
		{"no scopes_supported", nil, []string{"offline_access"}, []string{"mcp:tools"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, as := dcNewServer(t), dcNewServer(t)
			rs.mcp(`Bearer`)
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.ScopesSupported = tc.supported
			as.json(oauth.WellKnownAuthServer, md)
			authz := &dcAuthorizer{stop: true}
			tr := client.NewTransport(client.Config{Authorizer: authz, ClientID: "dc-client", Scopes: tc.configured})
			if err := tr.Authorize(t.Context(), rs.URL+"/mcp"); !errors.Is(err, errDCStop) {
				t.Fatalf("Authorize = %v, want it to reach the authorizer", err)
			}
			c := authz.calls()
			if got := oauth.ParseScope(c[0].Query().Get("scope")); !slices.Equal(got, tc.want) {
				t.Errorf("scope %q, want %q", got, tc.want)
			}
		})
	}
}

// TestAuthorize_AuthorizationResponseChecked: a response with another state,
// another iss, or no iss from a server that promised one is refused before
// the code is exchanged (docs/design.md#client-discovery).
func TestAuthorize_AuthorizationResponseChecked(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(url.Values)
	}{
		{"iss of another server", func(v url.Values) { v.Set("iss", "http://127.0.0.1:1") }},
		{"iss with a trailing slash", func(v url.Values) { v.Set("iss", v.Get("iss")+"/") }},
		{"iss missing though promised", func(v url.Values) { v.Del("iss") }},
		{"state of another request", func(v url.Values) { v.Set("state", "not-the-state-we-sent") }},
		{"state missing", func(v url.Values) { v.Del("state") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := fixture.New(t, fixture.Options{})
			authz := &dcAuthorizer{inner: &client.HeadlessAuthorizer{}, mutate: tc.mutate}
			tr := client.NewTransport(client.Config{Authorizer: authz})
			err := tr.Authorize(t.Context(), st.URL)
			dcCheckRefused(t, err, false, nil)
			if n := len(st.TokenRequests("")); n != 0 {
				t.Errorf("%d token requests, want the code never exchanged", n)
			}
			if g, _ := tr.Grant(t.Context(), st.URL); g != nil {
				t.Errorf("a grant was stored")
			}
		})
	}
}

// TestAuthorize_PreRegisteredClientUsed: configured client credentials are
// used instead of registering, with the configured authentication, on the
// code exchange and on refreshes (docs/design.md#client-discovery).
func TestAuthorize_PreRegisteredClientUsed(t *testing.T) {
	for _, method := range []string{oauth.AuthMethodClientSecretBasic, oauth.AuthMethodClientSecretPost} {
		t.Run(method, func(t *testing.T) {
			const id, secret = "dc-pre-registered", "dc-pre-registered-secret-0123456789"
			st := fixture.New(t, fixture.Options{Clients: []authserver.ClientConfig{{
				ID: id, Secret: secret, AuthMethod: method, RedirectURIs: []string{"http://127.0.0.1/callback"},
			}}})
			rec := &dcRecorder{}
			tr := client.NewTransport(client.Config{
				Base: rec, Authorizer: &client.HeadlessAuthorizer{},
				ClientID: id, ClientSecret: secret, ClientAuthMethod: method,
			})
			if err := tr.Authorize(t.Context(), st.URL); err != nil {
				t.Fatal(err)
			}
			if n := rec.count(http.MethodPost, authserver.PathRegister); n != 0 {
				t.Errorf("%d registrations, want none", n)
			}
			st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
			resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 3)
			if err != nil {
				t.Fatal(err)
			}
			if err := ccCheckEcho(resp, data, 3); err != nil {
				t.Fatal(err)
			}
			reqs := st.TokenRequests("")
			if len(reqs) != 2 {
				t.Fatalf("%d token requests, want a code exchange and a refresh", len(reqs))
			}
			for _, r := range reqs {
				var ok bool
				if method == oauth.AuthMethodClientSecretBasic {
					ok = r.Basic && r.BasicID == id && r.Form.Get("client_secret") == ""
				} else {
					ok = !r.Basic && r.Form.Get("client_id") == id && r.Form.Get("client_secret") == secret
				}
				if !ok || r.Status != http.StatusOK {
					t.Errorf("%s request: basic %v (id %q), form client_id %q, client_secret set %v, status %d; want %s as %s",
						r.GrantType, r.Basic, r.BasicID, r.Form.Get("client_id"), r.Form.Get("client_secret") != "", r.Status, method, id)
				}
			}
			if g, _ := tr.Grant(t.Context(), st.URL); g == nil || g.ClientID != id || g.AuthMethod != method {
				t.Errorf("%s: want client %s with %s", dcGrantInfo(g), id, method)
			}
		})
	}
}

// TestAuthorize_ClientIDMetadataDocument: with a Client ID Metadata Document
// URL configured and an authorization server that supports them, the URL is
// the client_id and nothing is registered; without that support, the client
// registers (docs/design.md#client-discovery).
func TestAuthorize_ClientIDMetadataDocument(t *testing.T) {
	for _, supported := range []bool{true, false} {
		t.Run(fmt.Sprintf("supported=%v", supported), func(t *testing.T) {
			doc := dcNewServer(t)
			docURL := doc.URL + "/oauth/client.json"
			doc.handle("/oauth/client.json", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				json.NewEncoder(w).Encode(oauth.ClientMetadata{
					ClientID: docURL, ClientName: "evergrant test", RedirectURIs: []string{"http://127.0.0.1/callback"},
					GrantTypes:              []string{oauth.GrantTypeAuthorizationCode, oauth.GrantTypeRefreshToken},
					ResponseTypes:           []string{"code"},
					TokenEndpointAuthMethod: oauth.AuthMethodNone,
				})
			})
			st := fixture.New(t, fixture.Options{AuthServer: func(c *authserver.Config) {
				c.InsecureAllowLoopbackClientMetadata = true
				c.DisableClientIDMetadata = !supported
			}})
			rec := &dcRecorder{}
			tr := client.NewTransport(client.Config{Base: rec, Authorizer: &client.HeadlessAuthorizer{}, ClientMetadataURL: docURL})
			if err := tr.Authorize(t.Context(), st.URL); err != nil {
				t.Fatal(err)
			}
			g, _ := tr.Grant(t.Context(), st.URL)
			if g == nil {
				t.Fatal("no grant stored")
			}
			code := st.TokenRequests(oauth.GrantTypeAuthorizationCode)
			if len(code) != 1 {
				t.Fatalf("%d code exchanges", len(code))
			}
			regs := rec.count(http.MethodPost, authserver.PathRegister)
			if supported {
				if regs != 0 || g.ClientID != docURL || code[0].Form.Get("client_id") != docURL || code[0].Basic {
					t.Errorf("registrations %d, grant client %q, code exchange client_id %q; want none and %s", regs, g.ClientID, code[0].Form.Get("client_id"), docURL)
				}
				if doc.count("/oauth/client.json") == 0 {
					t.Errorf("the authorization server never fetched the document")
				}
			} else {
				if regs != 1 || g.ClientID == docURL {
					t.Errorf("registrations %d, grant client %q; want one registration and its client_id", regs, g.ClientID)
				}
				if n := doc.count("/oauth/client.json"); n != 0 {
					t.Errorf("the document was fetched %d times", n)
				}
			}
		})
	}
}

// TestAuthorize_StoredRegistrationReused: a second authorization with a new
// Transport on the same store (in memory, or on disk after a restart)
// registers no second client (docs/design.md#client-discovery).
func TestAuthorize_StoredRegistrationReused(t *testing.T) {
	for _, kind := range []string{"memory", "file"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			open := func() store.Store {
				if kind == "memory" {
					return nil
				}
				fs, err := store.OpenFile(dir)
				if err != nil {
					t.Fatal(err)
				}
				return fs
			}
			mem := new(store.Memory)
			st := fixture.New(t, fixture.Options{})
			rec := &dcRecorder{}
			var ids []string
			for range 2 {
				s := open()
				if s == nil {
					s = mem
				}
				tr := client.NewTransport(client.Config{Base: rec, Store: s, Authorizer: &client.HeadlessAuthorizer{}})
				if err := tr.Authorize(t.Context(), st.URL); err != nil {
					t.Fatal(err)
				}
				g, _ := tr.Grant(t.Context(), st.URL)
				if g == nil {
					t.Fatal("no grant stored")
				}
				ids = append(ids, g.ClientID)
			}
			if n := rec.count(http.MethodPost, authserver.PathRegister); n != 1 {
				t.Errorf("%d registrations, want 1", n)
			}
			if ids[0] != ids[1] {
				t.Errorf("client ids %q, want the same registration twice", ids)
			}
			if code := st.TokenRequests(oauth.GrantTypeAuthorizationCode); len(code) != 2 || code[1].Form.Get("client_id") != ids[0] || code[1].Status != 200 {
				t.Errorf("%d code exchanges; want 2, the second by client %s with status 200", len(code), ids[0])
			}
		})
	}
}

// TestDiscovery_LegacyServerWithoutPRM: a server of the 2025-03-26 revision
// publishes no protected resource metadata (404 on both URLs); the
// authorization server is at its origin, found through its metadata or,
// without that, at the default paths (docs/design.md#client-discovery).
func TestDiscovery_LegacyServerWithoutPRM(t *testing.T) {
	for _, withMetadata := range []bool{true, false} {
		t.Run(fmt.Sprintf("metadata=%v", withMetadata), func(t *testing.T) {
			srv := dcNewServer(t)
			as, err := authserver.New(authserver.Config{
				Issuer: srv.URL, Resources: []string{srv.URL + "/mcp"}, Scopes: []string{"mcp:tools"}, AutoApprove: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			srv.setFallback(as)
			srv.mcp(`Bearer`)
			if !withMetadata {
				srv.handle(oauth.WellKnownAuthServer, http.NotFound)
			}
			tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}})
			resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, srv.URL+"/mcp", 9)
			if err != nil {
				t.Fatal(err)
			}
			if err := ccCheckEcho(resp, data, 9); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range srv.paths() {
				if strings.HasPrefix(p, "/.well-known/") || p == authserver.PathRegister || p == authserver.PathToken {
					got = append(got, p)
				}
			}
			want := []string{dcPRM + "/mcp", dcPRM, oauth.WellKnownAuthServer, authserver.PathRegister, authserver.PathToken}
			if !slices.Equal(got, want) {
				t.Errorf("paths %v, want %v", got, want)
			}
			g, _ := tr.Grant(t.Context(), srv.URL+"/mcp")
			if g == nil || g.Issuer != srv.URL || g.Resource != srv.URL+"/mcp" || g.TokenEndpoint != srv.URL+authserver.PathToken {
				t.Errorf("%s: want issuer %s, resource %s/mcp, token endpoint %s%s", dcGrantInfo(g), srv.URL, srv.URL, srv.URL, authserver.PathToken)
			}
		})
	}
}

// TestDiscovery_HTTPSAndSizeRequired: a discovery document or endpoint on
// plain http off loopback is refused without being contacted, and so is a
// metadata document larger than the bound (docs/design.md#client-discovery).
func TestDiscovery_HTTPSAndSizeRequired(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(rs, as *dcServer) (challenge string)
	}{
		{"resource_metadata on http", func(rs, as *dcServer) string {
			return `Bearer resource_metadata="http://mcp.example.com/.well-known/oauth-protected-resource"`
		}},
		{"authorization server on http", func(rs, as *dcServer) string {
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", "http://as.example.com"))
			return "Bearer"
		}},
		{"authorization endpoint on http", func(rs, as *dcServer) string {
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.AuthorizationEndpoint = "http://as.example.com/authorize"
			as.json(oauth.WellKnownAuthServer, md)
			return "Bearer"
		}},
		{"token endpoint on http", func(rs, as *dcServer) string {
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.TokenEndpoint = "http://as.example.com/token"
			as.json(oauth.WellKnownAuthServer, md)
			return "Bearer"
		}},
		{"resource metadata too large", func(rs, as *dcServer) string {
			doc := dcPRMDoc(rs.URL+"/mcp", as.URL)
			doc.ResourceName = strings.Repeat("x", oauth.MaxDocumentSize)
			rs.json(dcPRM+"/mcp", doc)
			as.json(oauth.WellKnownAuthServer, dcASDoc(as.URL))
			return "Bearer"
		}},
		{"authorization server metadata too large", func(rs, as *dcServer) string {
			rs.json(dcPRM+"/mcp", dcPRMDoc(rs.URL+"/mcp", as.URL))
			md := dcASDoc(as.URL)
			md.ServiceDocumentation = "https://as.example.com/" + strings.Repeat("x", oauth.MaxDocumentSize)
			as.json(oauth.WellKnownAuthServer, md)
			return "Bearer"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, as := dcNewServer(t), dcNewServer(t)
			rs.mcp(tc.setup(rs, as))
			rec := &dcRecorder{}
			authz := &dcAuthorizer{stop: true}
			tr := client.NewTransport(client.Config{Base: rec, Authorizer: authz, ClientID: "dc-client"})
			_, _, err := ccPost(t.Context(), &http.Client{Transport: tr}, rs.URL+"/mcp", 1)
			dcCheckRefused(t, err, true, authz)
			for _, h := range rec.hosts() {
				if !strings.HasPrefix(h, "127.0.0.1:") {
					t.Errorf("the Transport contacted %s", h)
				}
			}
		})
	}
}

// TestRoundTrip_RefusesPlainHTTPOffLoopback: tokens never go to a plain-HTTP
// server off loopback; the request fails before anything is sent
// (docs/design.md#client-discovery, transport security).
func TestRoundTrip_RefusesPlainHTTPOffLoopback(t *testing.T) {
	sent := false
	base := ccRoundTripFunc(func(*http.Request) (*http.Response, error) { sent = true; return nil, errors.New("no") })
	hc := &http.Client{Transport: client.NewTransport(client.Config{Base: base})}
	_, err := hc.Post("http://mcp.example.test/mcp", "application/json", bytes.NewReader(rpcBody(1)))
	if !errors.Is(err, oauth.ErrInsecureURL) || sent {
		t.Fatalf("err = %v, sent = %v; want ErrInsecureURL before anything is sent", err, sent)
	}
}

// TestAuthorize_ScopesAndResource: the scopes asked for are the challenge's,
// else the resource metadata's scopes_supported (plus offline_access, which
// the fixture lists); the resource indicator is sent on the authorization
// and token requests (docs/design.md#client-discovery).
func TestAuthorize_ScopesAndResource(t *testing.T) {
	for _, tc := range []struct {
		name      string
		challenge string // for the first request; "" means Authorize
		want      []string
	}{
		{"from the challenge", `Bearer scope="files.read files.write", resource_metadata="%s"`, []string{"files.read", "files.write", "offline_access"}},
		{"from the resource metadata", `Bearer resource_metadata="%s"`, []string{"mcp:tools", "offline_access"}},
		{"Authorize without a challenge", "", []string{"mcp:tools", "offline_access"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := fixture.New(t, fixture.Options{})
			authz := &dcAuthorizer{inner: &client.HeadlessAuthorizer{}}
			tr := client.NewTransport(client.Config{Authorizer: authz})
			if tc.challenge == "" {
				if err := tr.Authorize(t.Context(), st.URL); err != nil {
					t.Fatal(err)
				}
			} else {
				st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: fmt.Sprintf(tc.challenge, st.MetadataURL)})
				resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 1)
				if err != nil {
					t.Fatal(err)
				}
				if err := ccCheckEcho(resp, data, 1); err != nil {
					t.Fatal(err)
				}
			}
			c := authz.calls()
			if len(c) != 1 {
				t.Fatalf("%d authorizations, want 1", len(c))
			}
			q := c[0].Query()
			if got := oauth.ParseScope(q.Get("scope")); !slices.Equal(got, tc.want) {
				t.Errorf("scope %q, want %q", got, tc.want)
			}
			if q.Get("resource") != st.URL || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" {
				t.Errorf("authorization request %v: want resource %s, S256 PKCE and a state", q, st.URL)
			}
			code := st.TokenRequests(oauth.GrantTypeAuthorizationCode)
			if len(code) != 1 || code[0].Form.Get("resource") != st.URL || code[0].Form.Get("code_verifier") == "" {
				t.Errorf("%d code exchanges; want 1 with resource %s and a code_verifier", len(code), st.URL)
			}
		})
	}
}

// TestAuthorize_StoredRegistrationReusedAcrossLoopbackPorts: the default
// interactive authorizer listens on a new random port each time (RFC 8252
// §7.3), and authorization servers accept any port on a loopback redirect
// URI, so a sign-in from a new process must reuse the stored registration
// rather than register a new client each time
// (docs/design.md#client-discovery).
func TestAuthorize_StoredRegistrationReusedAcrossLoopbackPorts(t *testing.T) {
	st := fixture.New(t, fixture.Options{})
	dir := t.TempDir()
	rec := &dcRecorder{}
	var redirects []string
	for range 2 {
		fs, err := store.OpenFile(dir) // a new process
		if err != nil {
			t.Fatal(err)
		}
		la, err := client.NewLoopbackAuthorizer("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The "browser" follows the redirects to the loopback listener.
		la.Open = func(u string) error {
			go func() {
				if resp, err := http.Get(u); err == nil {
					resp.Body.Close()
				}
			}()
			return nil
		}
		redirects = append(redirects, la.RedirectURI())
		tr := client.NewTransport(client.Config{Base: rec, Store: fs, Authorizer: la})
		err = tr.Authorize(t.Context(), st.URL)
		la.Close()
		if err != nil {
			t.Fatalf("Authorize: %v", err)
		}
	}
	if redirects[0] == redirects[1] {
		t.Fatalf("test setup: both authorizers use %s", redirects[0])
	}
	if n := rec.count(http.MethodPost, authserver.PathRegister); n != 1 {
		t.Errorf("%d dynamic registrations for two sign-ins with the loopback authorizer (redirect URIs %v), want 1: "+
			"a registration stored under the redirect URI with its random port is never reused", n, redirects)
	}
}

// TestLoopbackAuthorizer_CloseWithoutAuthorizeReleasesListener: the loopback
// authorizer releases its listener on Close even when it never served, and
// refuses to authorize after Close (docs/design.md#client-discovery).
func TestLoopbackAuthorizer_CloseWithoutAuthorizeReleasesListener(t *testing.T) {
	a, err := client.NewLoopbackAuthorizer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(a.RedirectURI())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		t.Fatalf("listening on %s after Close: %v (the listener leaked)", u.Host, err)
	}
	ln.Close()
	a.Open = func(string) error { t.Error("Authorize after Close opened the browser"); return nil }
	ctx, cancel := context.WithTimeout(t.Context(), hdBound)
	defer cancel()
	if _, err := a.Authorize(ctx, "http://127.0.0.1/authorize?state=x"); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Authorize after Close: %v, want an immediate error", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
