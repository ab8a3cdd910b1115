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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/evergrant/evergrant/authserver"
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

// vtClock is a settable clock.
type vtClock struct {
	mu sync.Mutex
	t  time.Time
}

func newVTClock() *vtClock { return &vtClock{t: time.Now()} }

func (c *vtClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *vtClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

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
func vtStaticVerifier(t testing.TB, clock *vtClock, mod func(*server.JWTConfig)) *server.JWTVerifier {
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
// claims carried over into TokenInfo (DESIGN §4.1, RFC 9068).
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
			c.Now = func() time.Time { return time.Now().Add(time.Hour + time.Minute) }
		}, "expired"},
		{"not yet valid (nbf)", tok, func(c *server.JWTConfig) {
			c.Now = func() time.Time { return time.Now().Add(-time.Minute) }
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
	clock := newVTClock()
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
	clock := newVTClock()
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
	clock := newVTClock()
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

// After the authorization server rotates its key, a token signed with the
// new key verifies once the rate limit lets the verifier refetch, and a
// token of the previous key (still published) keeps verifying. A key
// dropped from the set stops verifying.
func TestJWKS_FollowsKeyRotation(t *testing.T) {
	e := newVTAS(t, nil)
	clock := newVTClock()
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

	// Within MinRefetchInterval of the first fetch: no refetch, refused.
	if _, err := v.Verify(ctx, tokB); !errors.Is(err, server.ErrInvalidToken) {
		t.Fatalf("token B within the rate limit: %v, want ErrInvalidToken", err)
	}
	if n := e.jwksFetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	clock.Advance(server.DefaultMinRefetchInterval + time.Second)
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
	clock.Advance(server.DefaultMinRefetchInterval + time.Second)
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

// A burst of tokens with forged key ids causes at most one JWKS fetch per
// MinRefetchInterval, shared by all, and every one of them is refused.
func TestJWKS_ForgedKidBurstFetchesOnce(t *testing.T) {
	e := newVTAS(t, nil)
	k := vtKeys()
	burst := func(v *server.JWTVerifier, now time.Time) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, 100)
		for i := range errs {
			tok := vtSign(t, jose.ES256, k.other, fmt.Sprintf("forged-%d", i), "at+jwt", vtClaims(now))
			wg.Go(func() {
				_, errs[i] = v.Verify(context.Background(), tok)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, server.ErrInvalidToken) {
				t.Fatalf("token %d: %v, want ErrInvalidToken", i, err)
			}
		}
	}

	t.Run("cold cache", func(t *testing.T) {
		e.jwksFetches.Store(0)
		clock := newVTClock()
		v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
		burst(v, clock.Now())
		if n := e.jwksFetches.Load(); n != 1 {
			t.Fatalf("%d fetches, want 1", n)
		}
	})
	t.Run("warm cache, interval passed", func(t *testing.T) {
		e.jwksFetches.Store(0)
		clock := newVTClock()
		v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now })
		if _, err := v.Verify(context.Background(), e.token()); err != nil {
			t.Fatal(err)
		}
		clock.Advance(server.DefaultMinRefetchInterval)
		burst(v, clock.Now())
		if n := e.jwksFetches.Load(); n != 2 {
			t.Fatalf("%d fetches, want 2 (warm-up and one refetch)", n)
		}
		// Again within the interval: no fetch at all.
		clock.Advance(server.DefaultMinRefetchInterval / 2)
		burst(v, clock.Now())
		if n := e.jwksFetches.Load(); n != 2 {
			t.Fatalf("%d fetches, want still 2", n)
		}
	})
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
	clock := newVTClock()
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
			clock := newVTClock()
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
	clock := newVTClock()
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
