package authserver_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

func TestMetadata_RFC8414(t *testing.T) {
	e := newEnv(t, nil)
	r, err := http.Get(e.URL(oauth.WellKnownAuthServer))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || r.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("status %d, CORS %q", r.StatusCode, r.Header.Get("Access-Control-Allow-Origin"))
	}
	md, err := oauth.ParseAuthServerMetadata(body, e.Server.URL)
	if err != nil {
		t.Fatalf("metadata does not validate: %v", err)
	}
	if !slices.Equal(md.CodeChallengeMethodsSupported, []string{"S256"}) {
		t.Errorf("code_challenge_methods_supported = %v, want only S256", md.CodeChallengeMethodsSupported)
	}
	if !md.AuthorizationResponseIssParameterSupported || !md.ClientIDMetadataDocumentSupported {
		t.Errorf("iss parameter / CIMD support not advertised: %+v", md)
	}
	if !slices.Contains(md.ScopesSupported, "offline_access") || !slices.Contains(md.ScopesSupported, "mcp:tools") {
		t.Errorf("scopes_supported = %v", md.ScopesSupported)
	}
	for _, u := range []string{md.AuthorizationEndpoint, md.TokenEndpoint, md.RegistrationEndpoint, md.RevocationEndpoint, md.IntrospectionEndpoint, md.JWKSURI} {
		if !strings.HasPrefix(u, e.Server.URL+"/") {
			t.Errorf("endpoint %q not under the issuer", u)
		}
	}
}

func TestMetadata_IssuerWithPathUsesPathInsertion(t *testing.T) {
	e := newEnv(t, func(c *authserver.Config) { c.Issuer += "/tenant1" })
	r, err := http.Get(e.URL(oauth.WellKnownAuthServer + "/tenant1"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	md, err := oauth.ParseAuthServerMetadata(body, e.Server.URL+"/tenant1")
	if err != nil {
		t.Fatalf("status %d: %v", r.StatusCode, err)
	}
	if md.TokenEndpoint != e.Server.URL+"/tenant1/token" {
		t.Errorf("token endpoint %q", md.TokenEndpoint)
	}
	// The flow works under the prefix.
	id := e.registerPublicAt("/tenant1", loopbackRedir)
	v, c := pkce()
	r, err = e.Client.Get(e.URL("/tenant1/authorize?" + authParams(id, loopbackRedir, c).Encode()))
	if err != nil {
		t.Fatal(err)
	}
	q := redirectParams(t, r, loopbackRedir)
	if q.Get("iss") != e.Server.URL+"/tenant1" {
		t.Errorf("iss = %q", q.Get("iss"))
	}
	st, m, _, _ := e.Post("/tenant1/token", url.Values{"grant_type": {"authorization_code"}, "code": {q.Get("code")},
		"redirect_uri": {loopbackRedir}, "code_verifier": {v}, "client_id": {id}}, nil)
	if st != 200 || str(m, "access_token") == "" {
		t.Fatalf("exchange under prefix: %d %v", st, m)
	}
}

func (e *env) registerPublicAt(prefix, redirect string) string {
	e.T.Helper()
	b, _ := json.Marshal(map[string]any{"redirect_uris": []string{redirect}, "token_endpoint_auth_method": "none"})
	r, err := e.Client.Post(e.URL(prefix+authserver.PathRegister), "application/json", strings.NewReader(string(b)))
	if err != nil {
		e.T.Fatal(err)
	}
	st, m := decode(e.T, r)
	if st != 201 {
		e.T.Fatalf("register: %d %v", st, m)
	}
	return str(m, "client_id")
}

// A public client does code + PKCE, then refreshes twice; each refresh
// rotates the refresh token.
func TestPublicClient_CodePKCERefreshRotation(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	v, c := pkce()
	q := redirectParams(t, e.Authorize(authParams(id, loopbackRedir, c)), loopbackRedir)
	if q.Get("state") != "st-123" || q.Get("iss") != e.Server.URL {
		t.Fatalf("state %q iss %q (RFC 9207 wants the issuer)", q.Get("state"), q.Get("iss"))
	}
	st, tok := e.Exchange(id, loopbackRedir, q.Get("code"), v)
	if st != 200 {
		t.Fatalf("exchange: %d %v", st, tok)
	}
	if str(tok, "token_type") != "Bearer" || str(tok, "access_token") == "" || str(tok, "refresh_token") == "" || tok["expires_in"] == nil {
		t.Fatalf("token response %v", tok)
	}
	if str(tok, "scope") != "mcp:tools" {
		t.Errorf("scope %q", str(tok, "scope"))
	}
	rt1 := str(tok, "refresh_token")
	st, tok2 := e.Refresh(id, rt1)
	if st != 200 {
		t.Fatalf("refresh: %d %v", st, tok2)
	}
	rt2 := str(tok2, "refresh_token")
	if rt2 == "" || rt2 == rt1 {
		t.Fatal("refresh token not rotated")
	}
	st, tok3 := e.Refresh(id, rt2)
	if st != 200 || str(tok3, "refresh_token") == rt2 {
		t.Fatalf("second refresh: %d, rotated=%v", st, str(tok3, "refresh_token") != rt2)
	}
	if !e.Active(str(tok3, "access_token")) || !e.Active(str(tok3, "refresh_token")) {
		t.Fatal("newest tokens inactive")
	}
	if e.Active(rt1) {
		t.Fatal("rotated refresh token still active")
	}
}

// RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the family,
// including the tokens rotated in after it.
func TestRefreshReuse_RevokesFamily(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	rt1 := str(tok, "refresh_token")
	_, tok2 := e.Refresh(id, rt1)
	at2, rt2 := str(tok2, "access_token"), str(tok2, "refresh_token")
	if !e.Active(at2) || !e.Active(rt2) {
		t.Fatal("rotated-in tokens should be active before the reuse")
	}
	st, m := e.Refresh(id, rt1) // the attacker (or a buggy client) replays rt1
	if st != 400 || str(m, "error") != "invalid_grant" {
		t.Fatalf("reuse: %d %v, want 400 invalid_grant", st, m)
	}
	for name, tk := range map[string]string{"first access token": str(tok, "access_token"), "rotated-in access token": at2, "rotated-in refresh token": rt2} {
		if e.Active(tk) {
			t.Errorf("%s still active after reuse", name)
		}
	}
	if st, m := e.Refresh(id, rt2); st != 400 || str(m, "error") != "invalid_grant" {
		t.Errorf("refresh with rotated-in token after reuse: %d %v", st, m)
	}
}

// A replayed authorization code is refused and revokes what it issued.
func TestCodeReplay_RevokesIssuedTokens(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	v, c := pkce()
	code := e.Code(id, loopbackRedir, c)
	st, tok := e.Exchange(id, loopbackRedir, code, v)
	if st != 200 {
		t.Fatalf("first exchange %d %v", st, tok)
	}
	st, m := e.Exchange(id, loopbackRedir, code, v)
	if st != 400 || str(m, "error") != "invalid_grant" {
		t.Fatalf("replay: %d %v", st, m)
	}
	if e.Active(str(tok, "access_token")) || e.Active(str(tok, "refresh_token")) {
		t.Fatal("tokens issued from a replayed code are still active")
	}
	if st, _ := e.Refresh(id, str(tok, "refresh_token")); st != 400 {
		t.Fatalf("refresh after replay: %d", st)
	}
}

func TestPKCE_S256Required(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	_, c := pkce()
	cases := []struct {
		name string
		mod  func(url.Values)
	}{
		{"missing challenge", func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") }},
		{"plain method", func(q url.Values) { q.Set("code_challenge_method", "plain") }},
		{"missing method means plain", func(q url.Values) { q.Del("code_challenge_method") }},
		{"challenge not a SHA-256", func(q url.Values) { q.Set("code_challenge", "short") }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := authParams(id, loopbackRedir, c)
			tc.mod(q)
			p := redirectParams(t, e.Authorize(q), loopbackRedir)
			if p.Get("error") != "invalid_request" || p.Get("code") != "" {
				t.Fatalf("got %v, want error=invalid_request and no code", p)
			}
			if p.Get("state") != "st-123" || p.Get("iss") != e.Server.URL {
				t.Errorf("error redirect lacks state/iss: %v", p)
			}
		})
	}
	t.Run("wrong verifier", func(t *testing.T) {
		_, c := pkce()
		other, _ := pkce()
		st, m := e.Exchange(id, loopbackRedir, e.Code(id, loopbackRedir, c), other)
		if st != 400 || str(m, "error") != "invalid_grant" {
			t.Fatalf("%d %v", st, m)
		}
	})
	t.Run("missing verifier", func(t *testing.T) {
		_, c := pkce()
		st, m := e.Exchange(id, loopbackRedir, e.Code(id, loopbackRedir, c), "")
		if st != 400 || str(m, "error") != "invalid_request" {
			t.Fatalf("%d %v", st, m)
		}
	})
}

// An invalid client or redirect URI is shown to the user, never redirected
// (RFC 6749 §4.1.2.1).
func TestRedirectURI_MismatchAnsweredWithoutRedirect(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic("http://127.0.0.1:4000/callback")
	https := e.RegisterPublic("https://app.example.test/cb")
	_, c := pkce()
	// ok: the request is accepted. Auto-approval sends the loopback ones
	// straight back; the self-registered https client gets the consent page
	// (auto-approval is only for trusted redirects).
	cases := []struct {
		name, client, redirect string
		ok                     bool
	}{
		{"exact loopback", id, "http://127.0.0.1:4000/callback", true},
		{"loopback any port (RFC 8252 §7.3)", id, "http://127.0.0.1:51234/callback", true},
		{"loopback other path", id, "http://127.0.0.1:4000/other", false},
		{"loopback other host", id, "http://localhost:4000/callback", false},
		{"loopback extra query", id, "http://127.0.0.1:4000/callback?x=1", false},
		{"https exact", https, "https://app.example.test/cb", true},
		{"https other port", https, "https://app.example.test:8443/cb", false},
		{"https trailing slash", https, "https://app.example.test/cb/", false},
		{"https attacker", https, "https://evil.example.test/cb", false},
		{"missing", https, "", false},
		{"unknown client", "no-such-client", "https://app.example.test/cb", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.Authorize(authParams(tc.client, tc.redirect, c))
			if tc.ok && strings.HasPrefix(tc.redirect, "https:") {
				if r.StatusCode != http.StatusOK || r.Header.Get("Location") != "" {
					t.Fatalf("status %d Location %q, want the consent page", r.StatusCode, r.Header.Get("Location"))
				}
				return
			}
			if tc.ok {
				redirectParams(t, r, tc.redirect)
				return
			}
			if r.StatusCode != 400 || r.Header.Get("Location") != "" {
				t.Fatalf("status %d Location %q, want 400 and no redirect", r.StatusCode, r.Header.Get("Location"))
			}
			if !strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") {
				t.Errorf("content type %q, want an HTML error page", r.Header.Get("Content-Type"))
			}
		})
	}
}

// RFC 8707: the requested resource becomes the token audience; others are
// refused.
func TestResource_BecomesAudience(t *testing.T) {
	e := newEnv(t, func(c *authserver.Config) {
		c.Resources = []string{testResource, "https://other.example.test/mcp"}
	})
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	claims := parseUnverified(t, str(tok, "access_token"))
	if claims["aud"] != testResource {
		t.Fatalf("aud = %v, want %s", claims["aud"], testResource)
	}
	for _, k := range []string{"iss", "sub", "exp", "iat", "jti", "client_id", "scope"} {
		if claims[k] == nil {
			t.Errorf("claim %s missing (RFC 9068 §2.2)", k)
		}
	}
	if got := e.Introspect(str(tok, "access_token"))["aud"]; got != testResource {
		t.Errorf("introspection aud = %v", got)
	}

	_, c := pkce()
	q := authParams(id, loopbackRedir, c)
	q.Set("resource", "https://unknown.example.test/mcp")
	if p := redirectParams(t, e.Authorize(q), loopbackRedir); p.Get("error") != "invalid_target" {
		t.Errorf("unknown resource: %v", p)
	}
	q.Del("resource") // two resources configured: it must be named
	if p := redirectParams(t, e.Authorize(q), loopbackRedir); p.Get("error") != "invalid_target" {
		t.Errorf("missing resource with several configured: %v", p)
	}
	// The refresh token is bound to its resource.
	st, m, _, _ := e.Post(authserver.PathToken, url.Values{"grant_type": {"refresh_token"}, "client_id": {id},
		"refresh_token": {str(tok, "refresh_token")}, "resource": {"https://other.example.test/mcp"}}, nil)
	if st != 400 || str(m, "error") != "invalid_target" {
		t.Errorf("refresh for another resource: %d %v", st, m)
	}
	// Canonical forms are the same resource.
	v, c := pkce()
	q = authParams(id, loopbackRedir, c)
	q.Set("resource", "HTTPS://MCP.example.test:443/mcp/")
	p := redirectParams(t, e.Authorize(q), loopbackRedir)
	if st, tok := e.Exchange(id, loopbackRedir, p.Get("code"), v); st != 200 || parseUnverified(t, str(tok, "access_token"))["aud"] != testResource {
		t.Errorf("canonical resource: %d %v", st, tok)
	}
}

func TestResource_DefaultsToTheOnlyResource(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	v, c := pkce()
	q := authParams(id, loopbackRedir, c)
	q.Del("resource")
	p := redirectParams(t, e.Authorize(q), loopbackRedir)
	st, tok, _, _ := e.Post(authserver.PathToken, url.Values{"grant_type": {"authorization_code"}, "code": {p.Get("code")},
		"redirect_uri": {loopbackRedir}, "code_verifier": {v}, "client_id": {id}}, nil)
	if st != 200 || parseUnverified(t, str(tok, "access_token"))["aud"] != testResource {
		t.Fatalf("%d %v", st, tok)
	}
}

func parseUnverified(t *testing.T, token string) map[string]any {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("parse JWT: %v", err)
	}
	var m map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func fetchJWKS(t *testing.T, e *env) jose.JSONWebKeySet {
	t.Helper()
	r, err := http.Get(e.URL(authserver.PathJWKS))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(r.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	return set
}

// verifyWithJWKS verifies an access token as an outside resource server
// would: the published key set, the kid, typ at+jwt (RFC 9068 §4).
func verifyWithJWKS(t *testing.T, set jose.JSONWebKeySet, token string) error {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return err
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders["typ"].(string); typ != "at+jwt" {
		t.Fatalf("typ = %q, want at+jwt", typ)
	}
	keys := set.Key(h.KeyID)
	if len(keys) == 0 {
		return jose.ErrJWKSKidNotFound
	}
	var c jwt.Claims
	return tok.Claims(keys[0].Key, &c)
}

func TestAccessToken_VerifiesAgainstJWKSAcrossKeyRotation(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	old := str(e.Tokens(id, loopbackRedir), "access_token")
	if err := verifyWithJWKS(t, fetchJWKS(t, e), old); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	kid, err := e.AS.RotateKey()
	if err != nil {
		t.Fatal(err)
	}
	fresh := str(e.Tokens(id, loopbackRedir), "access_token")
	set := fetchJWKS(t, e)
	if len(set.Keys) != 2 || set.Keys[0].KeyID != kid {
		t.Fatalf("JWKS after rotation has %d keys, first %q; want 2 with the new one first", len(set.Keys), set.Keys[0].KeyID)
	}
	if err := verifyWithJWKS(t, set, fresh); err != nil {
		t.Fatalf("new token: %v", err)
	}
	if err := verifyWithJWKS(t, set, old); err != nil {
		t.Fatalf("token signed before the rotation must verify while its key is published: %v", err)
	}
	if !e.Active(old) {
		t.Fatal("old token inactive after one rotation")
	}
	if _, err := e.AS.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if err := verifyWithJWKS(t, fetchJWKS(t, e), old); err == nil {
		t.Fatal("token of a key rotated out twice still verifies")
	}
	for _, k := range fetchJWKS(t, e).Keys {
		if !k.IsPublic() {
			t.Fatal("JWKS publishes a private key")
		}
	}
}

func TestDynamicRegistration_Validation(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name    string
		md      map[string]any
		wantErr string
	}{
		{"http non-loopback redirect", map[string]any{"redirect_uris": []string{"http://app.example.test/cb"}}, "invalid_redirect_uri"},
		{"fragment", map[string]any{"redirect_uris": []string{"https://app.example.test/cb#x"}}, "invalid_redirect_uri"},
		{"javascript", map[string]any{"redirect_uris": []string{"javascript:alert(1)"}}, "invalid_redirect_uri"},
		{"relative", map[string]any{"redirect_uris": []string{"/cb"}}, "invalid_redirect_uri"},
		{"no redirect uris", map[string]any{"client_name": "x"}, "invalid_redirect_uri"},
		{"private scheme without dot", map[string]any{"redirect_uris": []string{"myapp:/cb"}}, "invalid_redirect_uri"},
		{"unknown auth method", map[string]any{"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"},
		{"bogus auth method", map[string]any{"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "magic"}, "invalid_client_metadata"},
		{"client credentials grant", map[string]any{"redirect_uris": []string{loopbackRedir}, "grant_types": []string{"client_credentials"}}, "invalid_client_metadata"},
		{"implicit response type", map[string]any{"redirect_uris": []string{loopbackRedir}, "response_types": []string{"token"}}, "invalid_client_metadata"},
		{"too long name", map[string]any{"redirect_uris": []string{loopbackRedir}, "client_name": strings.Repeat("a", 600)}, "invalid_client_metadata"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, m := e.Register(tc.md)
			if st != 400 || str(m, "error") != tc.wantErr {
				t.Fatalf("%d %v, want 400 %s", st, m, tc.wantErr)
			}
		})
	}
	t.Run("not JSON", func(t *testing.T) {
		r, err := http.Post(e.URL(authserver.PathRegister), "application/json", strings.NewReader("{"))
		if err != nil {
			t.Fatal(err)
		}
		if st, m := decode(t, r); st != 400 || str(m, "error") != "invalid_client_metadata" {
			t.Fatalf("%d %v", st, m)
		}
	})
	t.Run("confidential client gets a secret", func(t *testing.T) {
		st, m := e.Register(map[string]any{"redirect_uris": []string{"https://app.example.test/cb", "com.example.app:/cb"}, "client_id": "chosen-by-client"})
		if st != 201 || str(m, "client_secret") == "" || str(m, "token_endpoint_auth_method") != "client_secret_basic" {
			t.Fatalf("%d %v", st, m)
		}
		if str(m, "client_id") == "chosen-by-client" {
			t.Fatal("the client chose its own client_id")
		}
		if m["client_secret_expires_at"] != float64(0) || m["client_id_issued_at"] == nil {
			t.Errorf("timestamps: %v", m)
		}
	})
	t.Run("public client gets no secret", func(t *testing.T) {
		st, m := e.Register(map[string]any{"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none"})
		if st != 201 || m["client_secret"] != nil {
			t.Fatalf("%d %v", st, m)
		}
	})
}

func TestClientAuthentication_Methods(t *testing.T) {
	e := newEnv(t, nil)
	_, basic := e.Register(map[string]any{"redirect_uris": []string{loopbackRedir}})
	bid, bsecret := str(basic, "client_id"), str(basic, "client_secret")
	get := func(id string) (string, string) {
		v, c := pkce()
		return e.Code(id, loopbackRedir, c), v
	}
	form := func(id, code, v string) url.Values {
		return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {loopbackRedir}, "code_verifier": {v}}
	}
	t.Run("client_secret_basic", func(t *testing.T) {
		code, v := get(bid)
		if st, m, _, _ := e.Post(authserver.PathToken, form(bid, code, v), []string{bid, bsecret}); st != 200 {
			t.Fatalf("%d %v", st, m)
		}
	})
	t.Run("client_secret_basic wrong secret", func(t *testing.T) {
		code, v := get(bid)
		st, m, h, _ := e.Post(authserver.PathToken, form(bid, code, v), []string{bid, "wrong"})
		if st != 401 || str(m, "error") != "invalid_client" || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("%d %v %q", st, m, h.Get("WWW-Authenticate"))
		}
	})
	t.Run("registered basic, tries post", func(t *testing.T) {
		code, v := get(bid)
		f := form(bid, code, v)
		f.Set("client_id", bid)
		f.Set("client_secret", bsecret)
		if st, m, _, _ := e.Post(authserver.PathToken, f, nil); st != 401 || str(m, "error") != "invalid_client" {
			t.Fatalf("%d %v", st, m)
		}
	})
	t.Run("registered basic, sends no secret", func(t *testing.T) {
		code, v := get(bid)
		f := form(bid, code, v)
		f.Set("client_id", bid)
		if st, _, _, _ := e.Post(authserver.PathToken, f, nil); st != 401 {
			t.Fatalf("confidential client without secret: %d", st)
		}
	})
	t.Run("client_secret_post", func(t *testing.T) {
		code, v := get(postClientID)
		f := form(postClientID, code, v)
		f.Set("client_id", postClientID)
		f.Set("client_secret", postSecret)
		if st, m, _, _ := e.Post(authserver.PathToken, f, nil); st != 200 {
			t.Fatalf("%d %v", st, m)
		}
	})
	t.Run("two methods at once", func(t *testing.T) {
		code, v := get(bid)
		f := form(bid, code, v)
		f.Set("client_secret", bsecret)
		if st, m, _, _ := e.Post(authserver.PathToken, f, []string{bid, bsecret}); st != 400 || str(m, "error") != "invalid_request" {
			t.Fatalf("%d %v", st, m)
		}
	})
}

// A refresh token works only for the client it was issued to.
func TestRefresh_BoundToClient(t *testing.T) {
	e := newEnv(t, nil)
	a := e.RegisterPublic(loopbackRedir)
	b := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(a, loopbackRedir)
	if st, m := e.Refresh(b, str(tok, "refresh_token")); st != 400 || str(m, "error") != "invalid_grant" {
		t.Fatalf("other client's refresh: %d %v", st, m)
	}
	// The code is bound to the client too.
	v, c := pkce()
	code := e.Code(a, loopbackRedir, c)
	if st, m := e.Exchange(b, loopbackRedir, code, v); st != 400 || str(m, "error") != "invalid_grant" {
		t.Fatalf("other client's code: %d %v", st, m)
	}
}

func TestScopes(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	_, c := pkce()
	q := authParams(id, loopbackRedir, c)
	q.Set("scope", "mcp:tools admin")
	if p := redirectParams(t, e.Authorize(q), loopbackRedir); p.Get("error") != "invalid_scope" {
		t.Errorf("unknown scope: %v", p)
	}
	v, c := pkce()
	q = authParams(id, loopbackRedir, c)
	q.Del("scope")
	p := redirectParams(t, e.Authorize(q), loopbackRedir)
	_, tok := e.Exchange(id, loopbackRedir, p.Get("code"), v)
	if got := str(tok, "scope"); got != "mcp:tools files.read files.write" {
		t.Errorf("default scope %q", got)
	}
	// Refresh may narrow the scope but not widen it (RFC 6749 §6).
	st, m, _, _ := e.Post(authserver.PathToken, url.Values{"grant_type": {"refresh_token"}, "client_id": {id},
		"refresh_token": {str(tok, "refresh_token")}, "scope": {"files.read"}}, nil)
	if st != 200 || str(m, "scope") != "files.read" {
		t.Fatalf("narrowing: %d %v", st, m)
	}
	one := e.Tokens(id, loopbackRedir) // scope mcp:tools
	st, m, _, _ = e.Post(authserver.PathToken, url.Values{"grant_type": {"refresh_token"}, "client_id": {id},
		"refresh_token": {str(one, "refresh_token")}, "scope": {"mcp:tools files.write"}}, nil)
	if st != 400 || str(m, "error") != "invalid_scope" {
		t.Fatalf("widening: %d %v", st, m)
	}
}

func TestRevocation_RFC7009(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	other := e.RegisterPublic(loopbackRedir)

	tok := e.Tokens(id, loopbackRedir)
	if st, _, _, _ := e.Post(authserver.PathRevoke, url.Values{"token": {str(tok, "access_token")}, "client_id": {id}}, nil); st != 200 {
		t.Fatalf("revoke access token: %d", st)
	}
	if e.Active(str(tok, "access_token")) {
		t.Fatal("revoked access token active")
	}
	if st, _ := e.Refresh(id, str(tok, "refresh_token")); st != 200 {
		t.Fatal("revoking an access token must not revoke the refresh token")
	}

	tok = e.Tokens(id, loopbackRedir)
	if st, m, _, _ := e.Post(authserver.PathRevoke, url.Values{"token": {str(tok, "refresh_token")}, "client_id": {other}}, nil); st == 200 {
		t.Fatalf("another client revoked the token: %v", m)
	}
	if st, _, _, _ := e.Post(authserver.PathRevoke, url.Values{"token": {str(tok, "refresh_token")}, "token_type_hint": {"refresh_token"}, "client_id": {id}}, nil); st != 200 {
		t.Fatalf("revoke refresh token: %d", st)
	}
	if e.Active(str(tok, "access_token")) || e.Active(str(tok, "refresh_token")) {
		t.Fatal("revoking the refresh token must revoke its grant's access token too")
	}
	if st, _, _, _ := e.Post(authserver.PathRevoke, url.Values{"token": {"no-such-token"}, "client_id": {id}}, nil); st != 200 {
		t.Fatalf("unknown token: %d, want 200 (RFC 7009 §2.2)", st)
	}
}

func TestIntrospection_RFC7662(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	m := e.Introspect(str(tok, "access_token"))
	if m["active"] != true || str(m, "sub") != "demo-user" || str(m, "client_id") != id || str(m, "scope") != "mcp:tools" || str(m, "iss") != e.Server.URL || m["exp"] == nil {
		t.Fatalf("introspection %v", m)
	}
	if e.Active("garbage") || e.Active("a.b.c") {
		t.Fatal("garbage is active")
	}
	st, m, _, _ := e.Post(authserver.PathIntrospect, url.Values{"token": {str(tok, "access_token")}, "client_id": {id}}, nil)
	if st != 401 || str(m, "error") != "invalid_client" {
		t.Fatalf("public client introspecting: %d %v", st, m)
	}
	if st, _, _, _ := e.Post(authserver.PathIntrospect, url.Values{"token": {str(tok, "access_token")}}, []string{rsClientID, "wrong"}); st != 401 {
		t.Fatalf("wrong secret: %d", st)
	}
}

func TestNew_RefusesInsecureIssuer(t *testing.T) {
	for _, iss := range []string{"http://auth.example.test", "auth.example.test", "https://auth.example.test/?x=1", ""} {
		if _, err := authserver.New(authserver.Config{Issuer: iss}); err == nil {
			t.Errorf("issuer %q accepted", iss)
		}
	}
	for _, iss := range []string{"http://127.0.0.1:8400", "http://localhost:1", "https://auth.example.test/tenant"} {
		if _, err := authserver.New(authserver.Config{Issuer: iss}); err != nil {
			t.Errorf("issuer %q refused: %v", iss, err)
		}
	}
}

func TestRevokeGrants_ByFilter(t *testing.T) {
	e := newEnv(t, nil)
	a := e.RegisterPublic(loopbackRedir)
	b := e.RegisterPublic(loopbackRedir)
	ta, tb := e.Tokens(a, loopbackRedir), e.Tokens(b, loopbackRedir)
	n, err := e.AS.RevokeGrants(context.Background(), authserver.GrantFilter{ClientID: a})
	if err != nil || n != 1 {
		t.Fatalf("RevokeGrants = %d, %v", n, err)
	}
	if e.Active(str(ta, "access_token")) || !e.Active(str(tb, "access_token")) {
		t.Fatal("filter revoked the wrong grants")
	}
}

var _ = time.Second

// RFC 7662 §4: a client that registered itself cannot introspect.
func TestIntrospection_RefusesSelfRegisteredClients(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	_, reg := e.Register(map[string]any{"redirect_uris": []string{loopbackRedir}})
	st, m, _, _ := e.Post(authserver.PathIntrospect, url.Values{"token": {str(tok, "access_token")}},
		[]string{str(reg, "client_id"), str(reg, "client_secret")})
	if st != 401 || m["active"] != nil {
		t.Fatalf("self-registered confidential client introspecting: %d %v", st, m)
	}
}

func TestNew_DoesNotWriteIntoTheCallersConfig(t *testing.T) {
	res := []string{"HTTPS://MCP.example.test:443/mcp/"}
	if _, err := authserver.New(authserver.Config{Issuer: "http://127.0.0.1:1", Resources: res}); err != nil {
		t.Fatal(err)
	}
	if res[0] != "HTTPS://MCP.example.test:443/mcp/" {
		t.Fatalf("caller's Resources changed to %q", res[0])
	}
}
