package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/server"
)

// Test fixtures of the verifier tests (prefixed vt to stay clear of the
// other tests of this package).
const (
	vtResource     = "https://mcp.example.test/mcp"
	vtOtherRes     = "https://other.example.test/mcp"
	vtPublicClient = "vt-public"
	vtRedirect     = "http://127.0.0.1/callback"
	vtRSClient     = "vt-resource-server"
	vtRSSecret     = "vt-rs-secret-0123456789abcdef"
	vtIssuer       = "https://as.example.test" // issuer of self-signed tokens
)

// vtAS is the embedded authorization server on loopback, with counters of
// JWKS fetches and introspection requests and an optional interceptor.
type vtAS struct {
	t              testing.TB
	as             *authserver.Server
	ts             *httptest.Server
	issuer         string
	hc             *http.Client
	jwksFetches    atomic.Int64
	introspections atomic.Int64
	// intercept, when set, may answer a request itself (returns true).
	intercept atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

func newVTAS(t testing.TB, mod func(*authserver.Config)) *vtAS {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	e := &vtAS{t: t, ts: ts, issuer: "http://" + ts.Listener.Addr().String()}
	cfg := authserver.Config{
		Issuer:      e.issuer,
		Resources:   []string{vtResource},
		Scopes:      []string{"mcp:tools", "files.read"},
		AutoApprove: true,
		Clients: []authserver.ClientConfig{
			{ID: vtPublicClient, RedirectURIs: []string{vtRedirect}},
			{ID: vtRSClient, Secret: vtRSSecret, RedirectURIs: []string{"https://rs.example.test/cb"}},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	as, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("authserver.New: %v", err)
	}
	e.as = as
	ts.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case authserver.PathJWKS:
			e.jwksFetches.Add(1)
		case authserver.PathIntrospect:
			e.introspections.Add(1)
		}
		if f := e.intercept.Load(); f != nil && (*f)(w, r) {
			return
		}
		as.ServeHTTP(w, r)
	})
	ts.Start()
	t.Cleanup(ts.Close)
	e.hc = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return e
}

func (e *vtAS) jwksURL() string       { return e.issuer + authserver.PathJWKS }
func (e *vtAS) introspectURL() string { return e.issuer + authserver.PathIntrospect }

// setIntercept installs (or, with nil, removes) the interceptor.
func (e *vtAS) setIntercept(f func(w http.ResponseWriter, r *http.Request) bool) {
	if f == nil {
		e.intercept.Store(nil)
		return
	}
	e.intercept.Store(&f)
}

// mint runs the authorization code flow for the public client and returns
// the access and refresh tokens.
func (e *vtAS) mint() (access, refresh string) {
	e.t.Helper()
	vb := make([]byte, 32)
	rand.Read(vb)
	verifier := base64.RawURLEncoding.EncodeToString(vb)
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{
		"response_type": {"code"}, "client_id": {vtPublicClient}, "redirect_uri": {vtRedirect},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
		"state": {"st"}, "resource": {vtResource}, "scope": {"mcp:tools files.read"},
	}
	resp, err := e.hc.Get(e.issuer + authserver.PathAuthorize + "?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		e.t.Fatalf("authorize: status %d, location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	form := url.Values{
		"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")}, "redirect_uri": {vtRedirect},
		"code_verifier": {verifier}, "client_id": {vtPublicClient}, "resource": {vtResource},
	}
	resp, err = e.hc.PostForm(e.issuer+authserver.PathToken, form)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusOK || tr.AccessToken == "" {
		e.t.Fatalf("token: status %d, %v", resp.StatusCode, err)
	}
	return tr.AccessToken, tr.RefreshToken
}

func (e *vtAS) token() string {
	e.t.Helper()
	at, _ := e.mint()
	return at
}

// jwtVerifier returns a verifier of e's tokens; mod may adjust the config.
func (e *vtAS) jwtVerifier(mod func(*server.JWTConfig)) *server.JWTVerifier {
	e.t.Helper()
	cfg := server.JWTConfig{Issuer: e.issuer, Audience: vtResource, JWKSURL: e.jwksURL()}
	if mod != nil {
		mod(&cfg)
	}
	v, err := server.NewJWTVerifier(cfg)
	if err != nil {
		e.t.Fatalf("NewJWTVerifier: %v", err)
	}
	return v
}

// vtKeys are signing keys for self-made tokens, published as a JWKS with
// kids "ec1", "ec384", "rsa1" and "ed1".
type vtKeySet struct {
	ec    *ecdsa.PrivateKey
	ec384 *ecdsa.PrivateKey
	rsa   *rsa.PrivateKey
	ed    ed25519.PrivateKey
	other *ecdsa.PrivateKey // not published
	jwks  []byte
	one   []byte // a JWKS with only ec1
}

var vtKeys = sync.OnceValue(func() *vtKeySet {
	k := &vtKeySet{}
	k.ec, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ec384, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	k.rsa, _ = rsa.GenerateKey(rand.Reader, 2048)
	_, k.ed, _ = ed25519.GenerateKey(rand.Reader)
	k.other, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: k.ec.Public(), KeyID: "ec1", Use: "sig"},
		{Key: k.ec384.Public(), KeyID: "ec384", Use: "sig"},
		{Key: k.rsa.Public(), KeyID: "rsa1", Use: "sig"},
		{Key: k.ed.Public(), KeyID: "ed1", Use: "sig"},
	}}
	k.jwks, _ = json.Marshal(set)
	k.one, _ = json.Marshal(jose.JSONWebKeySet{Keys: set.Keys[:1]})
	return k
})

// vtClaims are good claims for a self-signed token at now.
func vtClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": vtIssuer, "aud": vtResource, "sub": "alice", "client_id": "c1", "jti": "j1",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(), "scope": "mcp:tools files.read",
	}
}

// vtSign signs claims; typ and kid are left out when empty.
func vtSign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid, typ string, claims map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return tok
}

// vtRaw builds a compact JWS from a header, claims and a signature, unsigned.
func vtRaw(header, claims map[string]any, sig []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "." + enc(sig)
}

// vtStaticVerifier verifies self-signed tokens with the fixed key set.
func vtStaticVerifier(t testing.TB, clock *testclock.Clock, mod func(*server.JWTConfig)) *server.JWTVerifier {
	t.Helper()
	cfg := server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: vtKeys().jwks, Now: clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	v, err := server.NewJWTVerifier(cfg)
	if err != nil {
		t.Fatalf("NewJWTVerifier: %v", err)
	}
	return v
}

// A token issued by the embedded authorization server verifies, with the
// claims carried over into TokenInfo (docs/design.md#server-rule-11, RFC 9068).
func TestJWTVerify_AuthserverToken(t *testing.T) {
	e := newVTAS(t, nil)
	tok := e.token()
	for _, strict := range []bool{false, true} {
		v := e.jwtVerifier(func(c *server.JWTConfig) { c.RequireATJWT = strict })
		info, err := v.Verify(context.Background(), tok)
		if err != nil {
			t.Fatalf("strict=%v: Verify: %v", strict, err)
		}
		if info.Subject != "demo-user" || info.ClientID != vtPublicClient || info.Issuer != e.issuer || info.ID == "" {
			t.Errorf("info = %+v", info)
		}
		if strings.Join(info.Scopes, " ") != "mcp:tools files.read" {
			t.Errorf("scopes = %q", info.Scopes)
		}
		if len(info.Audience) != 1 || info.Audience[0] != vtResource {
			t.Errorf("audience = %q", info.Audience)
		}
		if d := time.Until(info.Expiry); d < 59*time.Minute || d > time.Hour+time.Second {
			t.Errorf("expiry in %v", d)
		}
	}
	if n := e.jwksFetches.Load(); n != 2 {
		t.Errorf("JWKS fetched %d times by two verifiers, want 2", n)
	}
}

// Tokens of the real authorization server that must be refused.
func TestJWTVerify_AuthserverRejects(t *testing.T) {
	e := newVTAS(t, nil)
	tok := e.token()
	parts := strings.Split(tok, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	json.Unmarshal(payload, &claims)
	claims["scope"] = "mcp:tools files.read files.write admin"
	forged, _ := json.Marshal(claims)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(forged) + "." + parts[2]

	tests := []struct {
		name  string
		token string
		mod   func(*server.JWTConfig)
		why   string
	}{
		{"wrong audience", tok, func(c *server.JWTConfig) { c.Audience = vtOtherRes }, "audience"},
		{"wrong issuer", tok, func(c *server.JWTConfig) { c.Issuer = e.issuer + "/other" }, "issuer"},
		{"issuer differs by a trailing slash", tok, func(c *server.JWTConfig) { c.Issuer = e.issuer + "/" }, "issuer"},
		{"expired", tok, func(c *server.JWTConfig) {
			c.Now = testclock.New(time.Now().Add(time.Hour + time.Minute)).Now
		}, "expired"},
		{"not yet valid (nbf)", tok, func(c *server.JWTConfig) {
			c.Now = testclock.New(time.Now().Add(-time.Minute)).Now
		}, "not valid yet"},
		{"tampered payload", tampered, nil, "signature"},
		{"algorithm not in the allow-list", tok, func(c *server.JWTConfig) { c.Algorithms = []string{"RS256"} }, "algorithm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := e.jwtVerifier(tt.mod)
			info, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, server.ErrInvalidToken) || info != nil {
				t.Fatalf("Verify = %v, %v; want ErrInvalidToken", info, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

// Self-signed tokens that are good, with the variants RFC 9068 and common
// issuers produce.
func TestJWTVerify_Accepts(t *testing.T) {
	k := vtKeys()
	clock := testclock.New(time.Now())
	now := clock.Now()
	with := func(f func(map[string]any)) map[string]any {
		c := vtClaims(now)
		f(c)
		return c
	}
	tests := []struct {
		name   string
		token  string
		mod    func(*server.JWTConfig)
		scopes string
	}{
		{"ES256 at+jwt", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", vtClaims(now)), nil, "mcp:tools files.read"},
		{"typ application/at+jwt, strict", vtSign(t, jose.ES256, k.ec, "ec1", "application/at+jwt", vtClaims(now)),
			func(c *server.JWTConfig) { c.RequireATJWT = true }, "mcp:tools files.read"},
		{"typ AT+JWT, strict", vtSign(t, jose.ES256, k.ec, "ec1", "AT+JWT", vtClaims(now)),
			func(c *server.JWTConfig) { c.RequireATJWT = true }, "mcp:tools files.read"},
		{"typ absent, lenient", vtSign(t, jose.ES256, k.ec, "ec1", "", vtClaims(now)), nil, "mcp:tools files.read"},
		{"typ JWT, lenient", vtSign(t, jose.ES256, k.ec, "ec1", "JWT", vtClaims(now)), nil, "mcp:tools files.read"},
		{"RS256", vtSign(t, jose.RS256, k.rsa, "rsa1", "at+jwt", vtClaims(now)), nil, "mcp:tools files.read"},
		{"PS256", vtSign(t, jose.PS256, k.rsa, "rsa1", "at+jwt", vtClaims(now)), nil, "mcp:tools files.read"},
		{"EdDSA", vtSign(t, jose.EdDSA, k.ed, "ed1", "at+jwt", vtClaims(now)), nil, "mcp:tools files.read"},
		{"ES384 when listed", vtSign(t, jose.ES384, k.ec384, "ec384", "at+jwt", vtClaims(now)),
			func(c *server.JWTConfig) { c.Algorithms = []string{"ES384"} }, "mcp:tools files.read"},
		{"aud array", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["aud"] = []string{vtOtherRes, vtResource}
		})), nil, "mcp:tools files.read"},
		{"aud not canonical", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["aud"] = "HTTPS://MCP.example.test:443/mcp/"
		})), nil, "mcp:tools files.read"},
		{"scp array", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			delete(c, "scope")
			c["scp"] = []string{"a", "b", "a"}
		})), nil, "a b"},
		{"scp string", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			delete(c, "scope")
			c["scp"] = "a b"
		})), nil, "a b"},
		{"no scope", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			delete(c, "scope")
		})), nil, ""},
		{"expired within leeway", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["exp"] = now.Add(-20 * time.Second).Unix()
		})), nil, "mcp:tools files.read"},
		{"nbf within leeway", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["nbf"] = now.Add(20 * time.Second).Unix()
			c["iat"] = now.Add(20 * time.Second).Unix()
		})), nil, "mcp:tools files.read"},
		{"fractional exp", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["exp"] = float64(now.Add(time.Hour).Unix()) + 0.5
		})), nil, "mcp:tools files.read"},
		{"no kid, one key in the set", vtSign(t, jose.ES256, k.ec, "", "at+jwt", vtClaims(now)),
			func(c *server.JWTConfig) { c.Keys = k.one }, "mcp:tools files.read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := vtStaticVerifier(t, clock, tt.mod).Verify(context.Background(), tt.token)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got := strings.Join(info.Scopes, " "); got != tt.scopes {
				t.Errorf("scopes = %q, want %q", got, tt.scopes)
			}
			if info.Subject != "alice" || info.ClientID != "c1" || info.ID != "j1" || info.Issuer != vtIssuer {
				t.Errorf("info = %+v", info)
			}
		})
	}
}

// Extra carries the claims that have no field of TokenInfo.
func TestJWTVerify_ExtraClaims(t *testing.T) {
	clock := testclock.New(time.Now())
	c := vtClaims(clock.Now())
	c["tenant"] = "acme"
	info, err := vtStaticVerifier(t, clock, nil).Verify(context.Background(), vtSign(t, jose.ES256, vtKeys().ec, "ec1", "at+jwt", c))
	if err != nil {
		t.Fatal(err)
	}
	if info.Extra["tenant"] != "acme" || len(info.Extra) != 1 {
		t.Errorf("Extra = %v", info.Extra)
	}
}

// Self-signed tokens that must be refused: each names the check that fires.
func TestJWTVerify_Rejects(t *testing.T) {
	k := vtKeys()
	clock := testclock.New(time.Now())
	now := clock.Now()
	with := func(f func(map[string]any)) map[string]any {
		c := vtClaims(now)
		f(c)
		return c
	}
	good := vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", vtClaims(now))
	goodParts := strings.Split(good, ".")

	// Algorithm confusion: HS256 keyed with the bytes of the public key, in
	// the forms an attacker would try.
	pubDER, _ := x509.MarshalPKIXPublicKey(k.ec.Public())
	pubJWK, _ := json.Marshal(jose.JSONWebKey{Key: k.ec.Public(), KeyID: "ec1", Use: "sig"})
	rsaDER, _ := x509.MarshalPKIXPublicKey(k.rsa.Public())

	hdr := func(alg string) map[string]any { return map[string]any{"alg": alg, "typ": "at+jwt", "kid": "ec1"} }

	tests := []struct {
		name  string
		token string
		mod   func(*server.JWTConfig)
		why   string
	}{
		{"alg none", vtRaw(hdr("none"), vtClaims(now), nil), nil, "algorithm"},
		{"alg None", vtRaw(hdr("None"), vtClaims(now), nil), nil, "algorithm"},
		{"HS256 with the public key DER", vtSign(t, jose.HS256, pubDER, "ec1", "at+jwt", vtClaims(now)), nil, "algorithm"},
		{"HS256 with the public JWK", vtSign(t, jose.HS256, pubJWK, "ec1", "at+jwt", vtClaims(now)), nil, "algorithm"},
		{"HS256 with the RSA public key", vtSign(t, jose.HS256, rsaDER, "rsa1", "at+jwt", vtClaims(now)), nil, "algorithm"},
		{"unlisted algorithm ES384", vtSign(t, jose.ES384, k.ec384, "ec384", "at+jwt", vtClaims(now)), nil, "algorithm"},
		{"RS256 when only ES256 is allowed", vtSign(t, jose.RS256, k.rsa, "rsa1", "at+jwt", vtClaims(now)),
			func(c *server.JWTConfig) { c.Algorithms = []string{"ES256"} }, "algorithm"},
		{"RS256 header on an EC key id", vtSign(t, jose.RS256, k.rsa, "ec1", "at+jwt", vtClaims(now)), nil, "does not fit"},
		{"ES256 header on an RSA key id", vtSign(t, jose.ES256, k.ec, "rsa1", "at+jwt", vtClaims(now)), nil, "does not fit"},
		{"signed by an unpublished key", vtSign(t, jose.ES256, k.other, "ec1", "at+jwt", vtClaims(now)), nil, "signature"},
		{"unknown kid", vtSign(t, jose.ES256, k.other, "nope", "at+jwt", vtClaims(now)), nil, "key id"},
		{"no kid, several keys", vtSign(t, jose.ES256, k.ec, "", "at+jwt", vtClaims(now)), nil, "no key id"},
		{"typ JWT when strict", vtSign(t, jose.ES256, k.ec, "ec1", "JWT", vtClaims(now)),
			func(c *server.JWTConfig) { c.RequireATJWT = true }, "typ"},
		{"typ absent when strict", vtSign(t, jose.ES256, k.ec, "ec1", "", vtClaims(now)),
			func(c *server.JWTConfig) { c.RequireATJWT = true }, "typ"},
		{"typ dpop+jwt, lenient", vtSign(t, jose.ES256, k.ec, "ec1", "dpop+jwt", vtClaims(now)), nil, "typ"},
		{"typ logout+jwt, lenient", vtSign(t, jose.ES256, k.ec, "ec1", "logout+jwt", vtClaims(now)), nil, "typ"},
		{"missing exp", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) { delete(c, "exp") })), nil, "no expiry"},
		{"null exp", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) { c["exp"] = nil })), nil, "no expiry"},
		{"exp as a string", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["exp"] = fmt.Sprint(now.Add(time.Hour).Unix())
		})), nil, "malformed claim"},
		{"expired beyond leeway", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["exp"] = now.Add(-31 * time.Second).Unix()
		})), nil, "expired"},
		{"expired, no leeway", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["exp"] = now.Add(-time.Second).Unix()
		})), func(c *server.JWTConfig) { c.Leeway = -1 }, "expired"},
		{"nbf in the future", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["nbf"] = now.Add(time.Minute).Unix()
		})), nil, "not valid yet"},
		{"iat in the future", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["iat"] = now.Add(time.Minute).Unix()
		})), nil, "issued in the future"},
		{"wrong issuer", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["iss"] = "https://evil.example.test"
		})), nil, "issuer"},
		{"no issuer", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) { delete(c, "iss") })), nil, "issuer"},
		{"wrong audience", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["aud"] = []string{vtOtherRes}
		})), nil, "audience"},
		{"audience is a prefix", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["aud"] = "https://mcp.example.test"
		})), nil, "audience"},
		{"no audience", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) { delete(c, "aud") })), nil, "audience"},
		{"aud of the wrong type", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) { c["aud"] = 7 })), nil, "malformed claim"},
		{"scope of the wrong type", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["scope"] = []string{"a"}
		})), nil, "malformed claim"},
		{"sender-constrained (cnf)", vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", with(func(c map[string]any) {
			c["cnf"] = map[string]any{"jkt": "abc"}
		})), nil, "cnf"},
		{"tampered payload", goodParts[0] + "." + base64.RawURLEncoding.EncodeToString(mustJSON(with(func(c map[string]any) {
			c["sub"] = "mallory"
		}))) + "." + goodParts[2], nil, "signature"},
		{"signature removed", goodParts[0] + "." + goodParts[1] + ".", nil, "signature"},
		{"crit header", vtRaw(map[string]any{"alg": "ES256", "kid": "ec1", "crit": []string{"exp"}, "exp": 1}, vtClaims(now), nil), nil, "critical"},
		{"not a JWT", "opaque-token-value", nil, "not a signed JWT"},
		{"JSON serialization", `{"payload":"e30","signatures":[]}`, nil, "not a signed JWT"},
		{"empty", "", nil, "malformed"},
		{"huge", strings.Repeat("a", 70<<10), nil, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := vtStaticVerifier(t, clock, tt.mod).Verify(context.Background(), tt.token)
			if !errors.Is(err, server.ErrInvalidToken) || info != nil {
				t.Fatalf("Verify = %+v, %v; want ErrInvalidToken", info, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

// RFC 9068 §2.2 claims: "sub" is always required (it becomes the user the
// official Go SDK binds sessions to); with RequireATJWT, "client_id",
// "iat" and "jti" are too.
func TestJWTVerify_RFC9068RequiredClaims(t *testing.T) {
	k := vtKeys()
	clock := testclock.New(time.Now())
	tests := []struct {
		name   string
		strict bool
		set    map[string]any // nil value: claim removed
		why    string         // "": accepted
	}{
		{name: "all present, strict", strict: true},
		{name: "no sub", set: map[string]any{"sub": nil}, why: "no subject"},
		{name: "no sub, strict", strict: true, set: map[string]any{"sub": nil}, why: "no subject"},
		{name: "empty sub", set: map[string]any{"sub": ""}, why: "no subject"},
		{name: "null sub", set: map[string]any{"sub": json.RawMessage("null")}, why: "no subject"},
		{name: "no client_id, strict", strict: true, set: map[string]any{"client_id": nil}, why: "client_id"},
		{name: "empty client_id, strict", strict: true, set: map[string]any{"client_id": ""}, why: "client_id"},
		{name: "no iat, strict", strict: true, set: map[string]any{"iat": nil}, why: "iat"},
		{name: "no jti, strict", strict: true, set: map[string]any{"jti": nil}, why: "jti"},
		{name: "no client_id, lenient", set: map[string]any{"client_id": nil}},
		{name: "no iat, lenient", set: map[string]any{"iat": nil}},
		{name: "no jti, lenient", set: map[string]any{"jti": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := vtClaims(clock.Now())
			for name, val := range tt.set {
				if val == nil {
					delete(c, name)
				} else {
					c[name] = val
				}
			}
			v := vtStaticVerifier(t, clock, func(cfg *server.JWTConfig) { cfg.RequireATJWT = tt.strict })
			info, err := v.Verify(context.Background(), vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", c))
			if tt.why == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, server.ErrInvalidToken) || info != nil {
				t.Fatalf("Verify = %+v, %v; want ErrInvalidToken", info, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestNewJWTVerifier_ConfigErrors(t *testing.T) {
	k := vtKeys()
	tests := []struct {
		name string
		cfg  server.JWTConfig
	}{
		{"no issuer", server.JWTConfig{Audience: vtResource, Keys: k.jwks}},
		{"no audience", server.JWTConfig{Issuer: vtIssuer, Keys: k.jwks}},
		{"audience with fragment", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource + "#x", Keys: k.jwks}},
		{"no keys", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource}},
		{"keys and URL", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: k.jwks, JWKSURL: "https://as.example.test/jwks"}},
		{"http JWKS URL", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, JWKSURL: "http://as.example.test/jwks"}},
		{"alg none", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: k.jwks, Algorithms: []string{"none"}}},
		{"HS256", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: k.jwks, Algorithms: []string{"ES256", "HS256"}}},
		{"unknown alg", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: k.jwks, Algorithms: []string{"ES257"}}},
		{"keys not a JWKS", server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, Keys: []byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := server.NewJWTVerifier(tt.cfg); err == nil {
				t.Fatal("NewJWTVerifier accepted the config")
			}
		})
	}
	for _, u := range []string{"https://as.example.test/jwks", "http://127.0.0.1:1/jwks", "http://localhost/jwks", "http://[::1]/jwks"} {
		if _, err := server.NewJWTVerifier(server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, JWKSURL: u}); err != nil {
			t.Errorf("JWKSURL %s: %v", u, err)
		}
	}
}

// vtRetryAfter is the retry delay an error carries for the middleware's
// Retry-After, or 0.
func vtRetryAfter(err error) time.Duration {
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		return ra.RetryAfter()
	}
	return 0
}

// vtSleeps makes v wait for the JWKS rate limit by moving clock instead of
// sleeping, and records the times it waited for.
func vtSleeps(v *server.JWTVerifier, clock *testclock.Clock) func() []time.Time {
	var mu sync.Mutex
	var untils []time.Time
	server.SetJWKSSleep(v, func(_ context.Context, until time.Time) error {
		mu.Lock()
		untils = append(untils, until)
		mu.Unlock()
		clock.AdvanceTo(until)
		return nil
	})
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(untils)
	}
}

// After the authorization server rotates its key, a token signed with the
// new key is not refused while the rate limit holds back the refetch: the
// verifier is "unavailable" for the rest of the interval (503 with
// Retry-After, so the client does not throw the token away), then verifies
// it. A token of the previous key (still published) keeps verifying; a key
// dropped from the set stops verifying once a set fetched Leeway after the
// token's iat lacks it (docs/design.md#server-rule-12).
func TestJWKS_FollowsKeyRotation(t *testing.T) {
	clock := testclock.New(time.Now())
	e := newVTAS(t, func(c *authserver.Config) { c.Now = clock.Now })
	v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
	ctx := context.Background()

	tokA := e.token()
	if _, err := v.Verify(ctx, tokA); err != nil {
		t.Fatalf("token A: %v", err)
	}
	if _, err := e.as.RotateKey(); err != nil {
		t.Fatal(err)
	}
	tokB := e.token()

	// Within MinRefetchInterval of the first fetch: no refetch, and no
	// verdict either: the cached set predates the token.
	clock.Advance(3 * time.Second)
	_, err := v.Verify(ctx, tokB)
	if !errors.Is(err, server.ErrVerifierUnavailable) || errors.Is(err, server.ErrInvalidToken) {
		t.Fatalf("token B within the rate limit: %v, want ErrVerifierUnavailable", err)
	}
	if d := vtRetryAfter(err); d != server.DefaultMinRefetchInterval-3*time.Second {
		t.Errorf("retry after %v, want %v", d, server.DefaultMinRefetchInterval-3*time.Second)
	}
	if n := e.jwksFetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	clock.Advance(server.DefaultMinRefetchInterval - 3*time.Second)
	if _, err := v.Verify(ctx, tokB); err != nil {
		t.Fatalf("token B after the interval: %v", err)
	}
	if _, err := v.Verify(ctx, tokA); err != nil {
		t.Fatalf("token A after the rotation: %v", err)
	}
	if n := e.jwksFetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}

	// A second rotation drops A's key from the published set.
	if _, err := e.as.RotateKey(); err != nil {
		t.Fatal(err)
	}
	tokC := e.token()
	clock.Advance(server.DefaultLeeway + time.Second)
	if _, err := v.Verify(ctx, tokC); err != nil {
		t.Fatalf("token C: %v", err)
	}
	if _, err := v.Verify(ctx, tokB); err != nil {
		t.Fatalf("token B after the second rotation: %v", err)
	}
	if _, err := v.Verify(ctx, tokA); !errors.Is(err, server.ErrInvalidToken) {
		t.Fatalf("token A after its key was dropped: %v, want ErrInvalidToken", err)
	}
	if n := e.jwksFetches.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
}

// A token signed with a key rotated in just after the last JWKS fetch:
// Verify waits for the next fetch the rate limit allows when that fits in
// MaxWait and the caller's context, and otherwise says "unavailable" with
// the time until that fetch, never invalid_token
// (docs/design.md#server-rule-12).
func TestJWKS_KeyRotationWithinRefetchInterval(t *testing.T) {
	tests := []struct {
		name        string
		maxWait     time.Duration
		ctxTimeout  time.Duration
		wantOK      bool
		wantRetry   time.Duration // when not OK
		wantFetches int64
	}{
		{name: "MaxWait covers the interval: waits and verifies", maxWait: 15 * time.Second, wantOK: true, wantFetches: 2},
		{name: "default MaxWait: unavailable until the next fetch", wantRetry: 7 * time.Second, wantFetches: 1},
		{name: "context ends first: unavailable", maxWait: 15 * time.Second, ctxTimeout: time.Second, wantRetry: 7 * time.Second, wantFetches: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := testclock.New(time.Now())
			e := newVTAS(t, func(c *authserver.Config) { c.Now = clock.Now })
			v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now; c.MaxWait = tt.maxWait })
			sleeps := vtSleeps(v, clock)
			t0 := clock.Now()
			if _, err := v.Verify(context.Background(), e.token()); err != nil {
				t.Fatal(err)
			}
			clock.Advance(3 * time.Second)
			if _, err := e.as.RotateKey(); err != nil {
				t.Fatal(err)
			}
			tok := e.token()
			ctx := context.Background()
			if tt.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
				defer cancel()
			}
			info, err := v.Verify(ctx, tok)
			switch {
			case tt.wantOK && err != nil:
				t.Fatalf("Verify: %v", err)
			case tt.wantOK:
				if info.Subject != "demo-user" {
					t.Errorf("info = %+v", info)
				}
				if got := sleeps(); len(got) != 1 || !got[0].Equal(t0.Add(server.DefaultMinRefetchInterval)) {
					t.Errorf("waited until %v, want once until the interval ended", got)
				}
			case !errors.Is(err, server.ErrVerifierUnavailable) || errors.Is(err, server.ErrInvalidToken):
				t.Fatalf("Verify: %v, want ErrVerifierUnavailable", err)
			default:
				if d := vtRetryAfter(err); d != tt.wantRetry {
					t.Errorf("retry after %v, want %v", d, tt.wantRetry)
				}
				if got := sleeps(); len(got) != 0 {
					t.Errorf("waited until %v, want no wait", got)
				}
			}
			if n := e.jwksFetches.Load(); n != tt.wantFetches {
				t.Errorf("%d fetches, want %d", n, tt.wantFetches)
			}
		})
	}
}

// A caller whose token has a new key joins a JWKS fetch that started before
// the key was published: the set that fetch brings lacks the key, which
// says nothing about the token, so the caller waits for the next fetch
// instead of answering invalid_token.
func TestJWKS_JoinedFetchPredatesKey(t *testing.T) {
	clock := testclock.New(time.Now())
	e := newVTAS(t, func(c *authserver.Config) { c.Now = clock.Now })
	v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now; c.MaxWait = 15 * time.Second })
	sleeps := vtSleeps(v, clock)
	var armed atomic.Bool
	joined := make(chan struct{}, 2)
	server.SetJWKSFetchWaitHook(v, func() {
		if armed.Load() {
			joined <- struct{}{}
		}
	})
	if _, err := v.Verify(context.Background(), e.token()); err != nil {
		t.Fatal(err)
	}
	oldSet := e.as.JWKS()

	// The next fetch stalls and then serves the set of before the rotation.
	var stall atomic.Bool
	stall.Store(true)
	entered, release := make(chan struct{}), make(chan struct{})
	e.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != authserver.PathJWKS || !stall.CompareAndSwap(true, false) {
			return false
		}
		close(entered)
		<-release
		w.Header().Set("Content-Type", "application/json")
		w.Write(oldSet)
		return true
	})
	clock.Advance(server.DefaultMinRefetchInterval + time.Second)
	k := vtKeys()
	forgedDone := make(chan error, 1)
	go func() { // starts that fetch
		c := vtClaims(clock.Now())
		c["iss"], c["aud"] = e.issuer, vtResource
		_, err := v.Verify(context.Background(), vtSign(t, jose.ES256, k.other, "forged", "at+jwt", c))
		forgedDone <- err
	}()
	<-entered

	clock.Advance(time.Second)
	if _, err := e.as.RotateKey(); err != nil {
		t.Fatal(err)
	}
	tok := e.token()
	armed.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := v.Verify(context.Background(), tok)
		done <- err
	}()
	<-joined // the new-key caller waits for the stalled fetch
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("new-key token after joining a fetch that predates its key: %v", err)
	}
	if err := <-forgedDone; !errors.Is(err, server.ErrInvalidToken) {
		t.Errorf("forged kid: %v, want ErrInvalidToken", err)
	}
	if n := e.jwksFetches.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
	if len(sleeps()) != 1 {
		t.Errorf("waited %d times for the rate limit, want 1", len(sleeps()))
	}
}

// How an unknown kid is decided from the token's iat and the start S of the
// fetch that produced the cached set (self-signed tokens, a JWKS on
// loopback, one fetch at S, then 1 s later the forged token).
func TestJWKS_UnknownKidDecidedByIssuedAt(t *testing.T) {
	k := vtKeys()
	tests := []struct {
		name        string
		iat         time.Duration // relative to S; -1 ns: no iat
		leeway      time.Duration
		maxWait     time.Duration
		want        error
		wantRetry   time.Duration
		wantFetches int64 // including the one at S
		wantSleeps  int
	}{
		{name: "issued an hour before S: invalid at once", iat: -time.Hour, want: server.ErrInvalidToken, wantFetches: 1},
		{name: "S is exactly iat+Leeway: invalid at once", iat: -server.DefaultLeeway, want: server.ErrInvalidToken, wantFetches: 1},
		{name: "S is just under iat+Leeway: unavailable", iat: -server.DefaultLeeway + time.Second, want: server.ErrVerifierUnavailable,
			wantRetry: server.DefaultMinRefetchInterval - time.Second, wantFetches: 1},
		{name: "custom Leeway", iat: -6 * time.Second, leeway: 5 * time.Second, want: server.ErrInvalidToken, wantFetches: 1},
		{name: "issued after S: unavailable", iat: time.Second, want: server.ErrVerifierUnavailable,
			wantRetry: server.DefaultMinRefetchInterval - time.Second, wantFetches: 1},
		{name: "issued after S, MaxWait covers the interval: waits, refetches, invalid", iat: time.Second, maxWait: time.Minute,
			want: server.ErrInvalidToken, wantFetches: 2, wantSleeps: 1},
		{name: "issued beyond Leeway in the future: invalid at once", iat: server.DefaultLeeway + 2*time.Second, maxWait: time.Minute,
			want: server.ErrInvalidToken, wantFetches: 1},
		{name: "no iat: refetch rate-limited, invalid as before", iat: -1, want: server.ErrInvalidToken, wantFetches: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var fetches atomic.Int64
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fetches.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.Write(k.jwks)
			}))
			defer ts.Close()
			clock := testclock.New(time.Now().Truncate(time.Second)) // iat is whole seconds
			v, err := server.NewJWTVerifier(server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, JWKSURL: ts.URL,
				Now: clock.Now, Leeway: tt.leeway, MaxWait: tt.maxWait})
			if err != nil {
				t.Fatal(err)
			}
			sleeps := vtSleeps(v, clock)
			s := clock.Now()
			if _, err := v.Verify(context.Background(), vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", vtClaims(s))); err != nil {
				t.Fatal(err)
			}
			clock.Advance(time.Second)
			c := vtClaims(clock.Now())
			if tt.iat == -1 {
				delete(c, "iat")
			} else {
				c["iat"] = s.Add(tt.iat).Unix()
				c["nbf"] = c["iat"]
			}
			_, err = v.Verify(context.Background(), vtSign(t, jose.ES256, k.other, "forged", "at+jwt", c))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify: %v, want %v", err, tt.want)
			}
			if d := vtRetryAfter(err); d != tt.wantRetry {
				t.Errorf("retry after %v, want %v", d, tt.wantRetry)
			}
			if n := fetches.Load(); n != tt.wantFetches {
				t.Errorf("%d fetches, want %d", n, tt.wantFetches)
			}
			if n := len(sleeps()); n != tt.wantSleeps {
				t.Errorf("%d waits for the rate limit, want %d", n, tt.wantSleeps)
			}
		})
	}
}

// A burst of tokens with forged key ids, whatever their iat, causes at most
// one JWKS fetch per MinRefetchInterval, shared by all, and none of them
// verifies. Tokens issued an hour ago are refused at once; tokens issued
// now, whose key the cached set might predate, are refused after a fetch
// or answered "unavailable" until the next one.
func TestJWKS_ForgedKidBurstFetchesOnce(t *testing.T) {
	e := newVTAS(t, nil)
	k := vtKeys()
	const size = 100
	// burst verifies size forged tokens issued at iat at once; unavailable
	// says whether ErrVerifierUnavailable may be among the answers
	// (ErrInvalidToken always may).
	burst := func(t *testing.T, v *server.JWTVerifier, now, iat time.Time, unavailable bool) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, size)
		for i := range errs {
			c := vtClaims(now)
			c["iat"] = iat.Unix()
			tok := vtSign(t, jose.ES256, k.other, fmt.Sprintf("forged-%d", i), "at+jwt", c)
			wg.Go(func() {
				_, errs[i] = v.Verify(context.Background(), tok)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, server.ErrInvalidToken) && !(unavailable && errors.Is(err, server.ErrVerifierUnavailable)) {
				t.Fatalf("token %d: %v, want ErrInvalidToken (or, here, ErrVerifierUnavailable: %v)", i, err, unavailable)
			}
		}
	}
	fetches := func(t *testing.T, want int64) {
		t.Helper()
		if n := e.jwksFetches.Load(); n != want {
			t.Fatalf("%d fetches, want %d", n, want)
		}
	}
	for _, age := range []struct {
		name string
		age  time.Duration
	}{{"iat an hour ago", time.Hour}, {"iat now", 0}} {
		fresh := age.age == 0
		t.Run(age.name, func(t *testing.T) {
			t.Run("cold cache", func(t *testing.T) {
				e.jwksFetches.Store(0)
				clock := testclock.New(time.Now())
				v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
				// Callers that joined the first fetch after it started
				// cannot tell whether it predates their key.
				burst(t, v, clock.Now(), clock.Now().Add(-age.age), fresh)
				fetches(t, 1)
			})
			t.Run("warm cache, interval passed, then within it", func(t *testing.T) {
				e.jwksFetches.Store(0)
				clock := testclock.New(time.Now())
				v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
				if _, err := v.Verify(context.Background(), e.token()); err != nil {
					t.Fatal(err)
				}
				clock.Advance(server.DefaultMinRefetchInterval)
				burst(t, v, clock.Now(), clock.Now().Add(-age.age), fresh)
				if fresh {
					fetches(t, 2) // warm-up and one refetch
				} else {
					fetches(t, 1) // the set is younger than the tokens
				}
				// Again within the interval: no fetch at all.
				clock.Advance(server.DefaultMinRefetchInterval / 2)
				burst(t, v, clock.Now(), clock.Now().Add(-age.age), fresh)
				if fresh {
					fetches(t, 2)
				} else {
					fetches(t, 1)
				}
			})
			t.Run("within the interval, MaxWait covers it", func(t *testing.T) {
				e.jwksFetches.Store(0)
				clock := testclock.New(time.Now())
				v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now; c.MaxWait = time.Minute })
				// Every waiting caller arrives before the clock moves on.
				arrived, release := make(chan struct{}, size), make(chan struct{})
				server.SetJWKSSleep(v, func(_ context.Context, until time.Time) error {
					arrived <- struct{}{}
					<-release
					clock.AdvanceTo(until)
					return nil
				})
				if _, err := v.Verify(context.Background(), e.token()); err != nil {
					t.Fatal(err)
				}
				clock.Advance(server.DefaultMinRefetchInterval / 2)
				done := make(chan struct{})
				go func() {
					defer close(done)
					burst(t, v, clock.Now(), clock.Now().Add(-age.age), false)
				}()
				if fresh {
					for range size {
						select {
						case <-arrived:
						case <-done:
							t.Fatal("the burst ended before every caller waited for the rate limit")
						}
					}
				}
				close(release)
				<-done
				if fresh {
					fetches(t, 2) // warm-up and the one fetch all waited for
				} else {
					fetches(t, 1)
				}
			})
		})
	}
}

// With nothing cached and the JWKS unreachable, the verifier says it is
// unavailable (the middleware answers 503), not that the token is bad.
func TestJWKS_UnreachableNothingCached(t *testing.T) {
	e := newVTAS(t, nil)
	tok := e.token()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/jwks.json"
	dead.Close()

	tests := []struct {
		name string
		url  string
		fail func(w http.ResponseWriter, r *http.Request) bool
	}{
		{"connection refused", deadURL, nil},
		{"status 500", "", func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, "down", http.StatusInternalServerError)
			return true
		}},
		{"not a JWK Set", "", func(w http.ResponseWriter, r *http.Request) bool {
			io.WriteString(w, `<html>maintenance</html>`)
			return true
		}},
		{"no usable key", "", func(w http.ResponseWriter, r *http.Request) bool {
			io.WriteString(w, `{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`)
			return true
		}},
		{"larger than 1 MiB", "", func(w http.ResponseWriter, r *http.Request) bool {
			w.Write(e.as.JWKS()[:len(e.as.JWKS())-2])
			io.WriteString(w, `,"pad":"`+strings.Repeat("x", 1<<20)+`"}`)
			return true
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.setIntercept(tt.fail)
			defer e.setIntercept(nil)
			v := e.jwtVerifier(func(c *server.JWTConfig) {
				if tt.url != "" {
					c.JWKSURL = tt.url
				}
			})
			if _, err := v.Verify(context.Background(), tok); !errors.Is(err, server.ErrVerifierUnavailable) {
				t.Fatalf("Verify: %v, want ErrVerifierUnavailable", err)
			}
			// Recovery: once the JWKS answers, the same verifier works.
			if tt.url == "" {
				e.setIntercept(nil)
				if _, err := v.Verify(context.Background(), tok); err != nil {
					t.Fatalf("after recovery: %v", err)
				}
			}
		})
	}
}

// A JWKS endpoint that hangs: Verify gives up after MaxWait, on its own (the
// context has no deadline) and before the handler was released, with
// ErrVerifierUnavailable.
func TestJWKS_MaxWaitHonoured(t *testing.T) {
	e := newVTAS(t, nil)
	tok := e.token()
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	var handlerDone atomic.Bool
	e.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != authserver.PathJWKS {
			return false
		}
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		handlerDone.Store(true)
		http.Error(w, "late", http.StatusServiceUnavailable)
		return true
	})
	defer close(release)

	v := e.jwtVerifier(func(c *server.JWTConfig) { c.MaxWait = 50 * time.Millisecond })
	_, err := v.Verify(context.Background(), tok)
	if !errors.Is(err, server.ErrVerifierUnavailable) {
		t.Fatalf("Verify: %v, want ErrVerifierUnavailable", err)
	}
	if handlerDone.Load() {
		t.Fatal("Verify returned only after the JWKS handler did; MaxWait was not honoured")
	}
	<-entered // the fetch did reach the hanging handler

	// A second caller joins the same in-flight fetch rather than starting
	// another, and gives up the same way.
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, server.ErrVerifierUnavailable) {
		t.Fatalf("second Verify: %v, want ErrVerifierUnavailable", err)
	}
	if handlerDone.Load() {
		t.Fatal("second Verify waited for the handler")
	}
	if n := e.jwksFetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1 shared fetch", n)
	}

	// The caller's context is honoured too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v2 := e.jwtVerifier(func(c *server.JWTConfig) { c.MaxWait = time.Hour })
	if _, err := v2.Verify(ctx, tok); !errors.Is(err, server.ErrVerifierUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Verify: %v, want ErrVerifierUnavailable wrapping context.Canceled", err)
	}
}

// Once keys are cached, a failing JWKS does not stop known keys from
// verifying; an unknown kid then cannot be decided and is "unavailable"
// until a fetch succeeds.
func TestJWKS_KeepsKeysWhenRefetchFails(t *testing.T) {
	e := newVTAS(t, nil)
	clock := testclock.New(time.Now())
	v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
	ctx := context.Background()
	tokA := e.token()
	if _, err := v.Verify(ctx, tokA); err != nil {
		t.Fatal(err)
	}
	e.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != authserver.PathJWKS {
			return false
		}
		http.Error(w, "down", http.StatusBadGateway)
		return true
	})
	e.as.RotateKey()
	tokB := e.token()
	clock.Advance(2 * time.Minute) // past max-age and the rate limit

	if _, err := v.Verify(ctx, tokB); !errors.Is(err, server.ErrVerifierUnavailable) {
		t.Fatalf("new kid while the JWKS fails: %v, want ErrVerifierUnavailable", err)
	}
	for range 3 {
		if _, err := v.Verify(ctx, tokA); err != nil {
			t.Fatalf("known kid while the JWKS fails: %v", err)
		}
	}
	// Within the interval of the failed attempt: still unavailable, no fetch.
	n := e.jwksFetches.Load()
	if _, err := v.Verify(ctx, tokB); !errors.Is(err, server.ErrVerifierUnavailable) {
		t.Fatalf("new kid within the interval: %v", err)
	}
	if e.jwksFetches.Load() != n {
		t.Fatal("refetched within MinRefetchInterval")
	}

	e.setIntercept(nil)
	clock.Advance(server.DefaultMinRefetchInterval)
	if _, err := v.Verify(ctx, tokB); err != nil {
		t.Fatalf("new kid after recovery: %v", err)
	}
}

// The JWKS is refetched in the background once its Cache-Control max-age
// (clamped to [1 min, 24 h], 1 h without one) has passed, not before.
func TestJWKS_MaxAgeRefresh(t *testing.T) {
	k := vtKeys()
	tests := []struct {
		cacheControl  string
		before, after time.Duration
		wantRefreshIn string
	}{
		{"public, max-age=60", 59 * time.Second, 61 * time.Second, "60s"},
		{"max-age=5", 59 * time.Second, 61 * time.Second, "the 1 min floor"},
		{"no-store", 59 * time.Second, 61 * time.Second, "the 1 min floor"},
		{"", 59 * time.Minute, 61 * time.Minute, "the 1 h default"},
		{"max-age=999999", 23 * time.Hour, 25 * time.Hour, "the 24 h cap"},
		{"max-age=7200", 119 * time.Minute, 121 * time.Minute, "2 h"},
	}
	for _, tt := range tests {
		t.Run(tt.cacheControl, func(t *testing.T) {
			var fetches atomic.Int64
			fetched := make(chan struct{}, 10)
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fetches.Add(1)
				if tt.cacheControl != "" {
					w.Header().Set("Cache-Control", tt.cacheControl)
				}
				w.Header().Set("Content-Type", "application/json")
				w.Write(k.jwks)
				fetched <- struct{}{}
			}))
			defer ts.Close()
			clock := testclock.New(time.Now())
			t0 := clock.Now()
			v, err := server.NewJWTVerifier(server.JWTConfig{Issuer: vtIssuer, Audience: vtResource, JWKSURL: ts.URL, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			c := vtClaims(t0)
			c["exp"] = t0.Add(48 * time.Hour).Unix()
			tok := vtSign(t, jose.ES256, k.ec, "ec1", "at+jwt", c)
			verify := func() {
				t.Helper()
				if _, err := v.Verify(context.Background(), tok); err != nil {
					t.Fatal(err)
				}
			}
			verify()
			<-fetched
			clock.Advance(tt.before)
			verify()
			// No background fetch may start; give one the time to show.
			select {
			case <-fetched:
				t.Fatalf("refetched before %s", tt.wantRefreshIn)
			case <-time.After(100 * time.Millisecond):
			}
			clock.Advance(tt.after - tt.before)
			verify() // answers from the cache, refreshes in the background
			<-fetched
			if n := fetches.Load(); n != 2 {
				t.Fatalf("%d fetches, want 2", n)
			}
		})
	}
}

// FuzzJWTVerify: arbitrary strings never panic the verifier and never
// verify. The seeds are validly signed tokens that fail other checks, so a
// mutation that "verifies" would be a real hole.
func FuzzJWTVerify(f *testing.F) {
	k := vtKeys()
	clock := testclock.New(time.Now())
	now := clock.Now()
	expired := vtClaims(now)
	expired["exp"] = now.Add(-time.Hour).Unix()
	otherAud := vtClaims(now)
	otherAud["aud"] = vtOtherRes
	f.Add(vtSign(f, jose.ES256, k.ec, "ec1", "at+jwt", expired))
	f.Add(vtSign(f, jose.EdDSA, k.ed, "ed1", "at+jwt", otherAud))
	f.Add(vtSign(f, jose.RS256, k.rsa, "rsa1", "", expired))
	f.Add(vtSign(f, jose.ES256, k.other, "ec1", "at+jwt", vtClaims(now)))
	f.Add(vtRaw(map[string]any{"alg": "none", "kid": "ec1"}, vtClaims(now), nil))
	f.Add("a.b.c")
	f.Add("..")
	f.Add("")
	v := vtStaticVerifier(f, clock, nil)
	f.Fuzz(func(t *testing.T, tok string) {
		info, err := v.Verify(context.Background(), tok)
		if err == nil || info != nil {
			t.Fatalf("Verify(%q) = %+v, %v", tok, info, err)
		}
		if !errors.Is(err, server.ErrInvalidToken) {
			t.Fatalf("Verify(%q): %v, want ErrInvalidToken", tok, err)
		}
	})
}
