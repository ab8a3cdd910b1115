package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

const (
	testResource = "https://mcp.example.test/mcp"
	testIssuer   = "https://as.example.test"
)

// fakeVerifier accepts tokens "tok-<letters>" (t: mcp:tools, w: files.write,
// r: files.read), says
// "unavailable" for "down", and rejects everything else.
var fakeVerifier = server.VerifierFunc(func(_ context.Context, tok string) (*server.TokenInfo, error) {
	if tok == "down" {
		return nil, fmt.Errorf("%w: introspection endpoint unreachable", server.ErrVerifierUnavailable)
	}
	rest, ok := strings.CutPrefix(tok, "tok-")
	if !ok {
		return nil, fmt.Errorf("%w: token \"signature\" \\ does not verify", server.ErrInvalidToken)
	}
	names := map[rune]string{'t': "mcp:tools", 'w': "files.write", 'r': "files.read"}
	var scopes []string
	for _, c := range rest {
		if n, ok := names[c]; ok {
			scopes = append(scopes, n)
		}
	}
	return &server.TokenInfo{Subject: "user-" + rest, ClientID: "c1", Scopes: scopes, Expiry: time.Now().Add(time.Hour)}, nil
})

// protect returns a ServeMux on which Protect has mounted h, with defaults
// for what cfg leaves out: testResource, fakeVerifier and an authorization
// server.
func protect(t testing.TB, cfg server.Config, h http.Handler) http.Handler {
	t.Helper()
	return protectServer(t, nil, cfg, h)
}

// protectServer is protect with an mcp.Server for Protect.
func protectServer(t testing.TB, srv *mcp.Server, cfg server.Config, h http.Handler) http.Handler {
	t.Helper()
	if cfg.Resource == "" {
		cfg.Resource = testResource
	}
	if cfg.Verifier == nil {
		cfg.Verifier = fakeVerifier
	}
	if len(cfg.Metadata.AuthorizationServers) == 0 {
		cfg.Metadata.AuthorizationServers = []string{testIssuer}
	}
	mux := http.NewServeMux()
	if err := server.Protect(mux, srv, h, cfg); err != nil {
		t.Fatal(err)
	}
	return mux
}

// Every answer of docs/design.md#server-rule-1 to #server-rule-7, with the
// exact challenge.
func TestChallenges_RFC6750(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti := server.TokenInfoFromContext(r.Context())
		fmt.Fprintf(w, "hello %s", ti.Subject)
	})
	const md = `resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"`
	cases := []struct {
		name       string
		cfg        server.Config
		header     []string
		query      string
		status     int
		challenge  string
		bodyHasErr string
	}{
		{name: "no token", status: 401, challenge: `Bearer ` + md},
		{name: "no token, scopes configured", cfg: server.Config{Scopes: []string{"mcp:tools"}}, status: 401,
			challenge: `Bearer scope="mcp:tools", ` + md},
		{name: "other scheme is no token", header: []string{"Basic dXNlcjpwYXNz"}, status: 401, challenge: `Bearer ` + md},
		{name: "invalid token, description escaped", header: []string{"Bearer garbage"}, status: 401,
			challenge:  `Bearer error="invalid_token", error_description="token 'signature' / does not verify", ` + md,
			bodyHasErr: "invalid_token"},
		{name: "scheme case-insensitive", header: []string{"bEaReR tok-t"}, status: 200},
		{name: "missing scope", cfg: server.Config{Scopes: []string{"mcp:tools", "files.write"}}, header: []string{"Bearer tok-t"}, status: 403,
			challenge:  `Bearer error="insufficient_scope", error_description="the access token lacks a required scope", scope="mcp:tools files.write", ` + md,
			bodyHasErr: "insufficient_scope"},
		{name: "two Authorization headers", header: []string{"Bearer tok-a", "Bearer tok-b"}, status: 400,
			challenge: `Bearer error="invalid_request", error_description="more than one Authorization header", ` + md},
		{name: "token in query", header: []string{"Bearer tok-a"}, query: "?access_token=tok-a", status: 400,
			challenge: `Bearer error="invalid_request", error_description="access tokens are accepted only in the Authorization header", ` + md},
		{name: "Bearer without token", header: []string{"Bearer "}, status: 400,
			challenge: `Bearer error="invalid_request", error_description="malformed Bearer credentials", ` + md},
		{name: "Bearer with bad characters", header: []string{"Bearer a,b"}, status: 400,
			challenge: `Bearer error="invalid_request", error_description="malformed Bearer credentials", ` + md},
		{name: "verifier unavailable is 503, not 401", header: []string{"Bearer down"}, status: 503, bodyHasErr: "temporarily_unavailable"},
		{name: "realm", cfg: server.Config{Realm: "mcp"}, status: 401, challenge: `Bearer realm="mcp", ` + md},
		{name: "good token", header: []string{"Bearer tok-t"}, status: 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := protect(t, tc.cfg, ok)
			req := httptest.NewRequest(http.MethodGet, "https://mcp.example.test/mcp"+tc.query, nil)
			for _, v := range tc.header {
				req.Header.Add("Authorization", v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tc.status, rec.Body)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tc.challenge {
				t.Fatalf("WWW-Authenticate\n got %s\nwant %s", got, tc.challenge)
			}
			if tc.challenge != "" {
				ch, ok := oauth.ParseBearerChallenge(rec.Header())
				if !ok {
					t.Fatal("challenge does not parse as Bearer")
				}
				if tc.bodyHasErr == "" && ch.Error != "" && tc.status == 401 {
					t.Errorf("no-token challenge carries error %q", ch.Error)
				}
			}
			if tc.bodyHasErr != "" && !strings.Contains(rec.Body.String(), `"error":"`+tc.bodyHasErr+`"`) {
				t.Errorf("body %q lacks error %s", rec.Body, tc.bodyHasErr)
			}
			if tc.status == 200 && !strings.HasPrefix(rec.Body.String(), "hello user-") {
				t.Errorf("handler did not see the token info: %q", rec.Body)
			}
		})
	}
}

// retryErr is a verifier error that carries a retry delay.
type retryErr struct{ after time.Duration }

func (e retryErr) Error() string             { return "JWKS refetch rate-limited" }
func (e retryErr) RetryAfter() time.Duration { return e.after }

// A verifier outage is 503 temporarily_unavailable with Retry-After: the
// delay the verifier's error reports, rounded up to seconds and clamped to
// [1 s, 1 h], or 5 s (docs/design.md#server-rule-6; RFC 9110 §10.2.3).
func TestUnavailable_RetryAfter(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"no delay given", fmt.Errorf("%w: down", server.ErrVerifierUnavailable), "5"},
		{"whole seconds", fmt.Errorf("%w: %w", server.ErrVerifierUnavailable, retryErr{7 * time.Second}), "7"},
		{"rounded up", fmt.Errorf("%w: %w", server.ErrVerifierUnavailable, retryErr{1200 * time.Millisecond}), "2"},
		{"at least 1 s", fmt.Errorf("%w: %w", server.ErrVerifierUnavailable, retryErr{time.Millisecond}), "1"},
		{"zero means the default", fmt.Errorf("%w: %w", server.ErrVerifierUnavailable, retryErr{0}), "5"},
		{"at most 1 h", fmt.Errorf("%w: %w", server.ErrVerifierUnavailable, retryErr{48 * time.Hour}), "3600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := server.VerifierFunc(func(context.Context, string) (*server.TokenInfo, error) { return nil, tt.err })
			h := protect(t, server.Config{Verifier: v}, http.NotFoundHandler())
			req := httptest.NewRequest(http.MethodGet, testResource, nil)
			req.Header.Set("Authorization", "Bearer tok")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "temporarily_unavailable") {
				t.Fatalf("status %d, body %q", rec.Code, rec.Body)
			}
			if got := rec.Header().Get("Retry-After"); got != tt.want {
				t.Errorf("Retry-After %q, want %q", got, tt.want)
			}
		})
	}
}

// Right after the authorization server rotates its key, a token signed
// with the new key meets a JWKS cache that may not hold it yet: the
// middleware answers 503 with Retry-After until the refetch is allowed
// (not 401 invalid_token, on which the client would refresh and then sign
// the user in again), and then admits it.
func TestProtect_KeyRotation503NotInvalidToken(t *testing.T) {
	clock := testclock.New(time.Now())
	e := newVTAS(t, func(c *authserver.Config) { c.Now = clock.Now })
	v := e.jwtVerifier(func(c *server.JWTConfig) { c.Now = clock.Now; c.RequireATJWT = true })
	h := protect(t, server.Config{Resource: vtResource, Verifier: v, Now: clock.Now},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	get := func(tok string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, vtResource, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := get(e.token()); rec.Code != http.StatusOK {
		t.Fatalf("before the rotation: %d %q", rec.Code, rec.Body)
	}
	clock.Advance(4 * time.Second)
	if _, err := e.as.RotateKey(); err != nil {
		t.Fatal(err)
	}
	tok := e.token()
	rec := get(tok)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "6" {
		t.Fatalf("new key within the refetch interval: %d, Retry-After %q, WWW-Authenticate %q; want 503, 6",
			rec.Code, rec.Header().Get("Retry-After"), rec.Header().Get("WWW-Authenticate"))
	}
	clock.Advance(6 * time.Second)
	if rec := get(tok); rec.Code != http.StatusOK {
		t.Fatalf("after Retry-After: %d %q", rec.Code, rec.Body)
	}
}

// The official Go SDK's TokenInfo carries the verified subject as UserID
// and the verified client_id and issuer in Extra; a claim of the same name
// among the token's other claims does not override them.
func TestProtect_SDKTokenInfoKeepsVerifiedValues(t *testing.T) {
	clock := testclock.New(time.Now())
	c := vtClaims(clock.Now())
	c["issuer"] = "https://evil.example.test"
	c["tenant"] = "acme"
	jwtTok := vtSign(t, jose.ES256, vtKeys().ec, "ec1", "at+jwt", c)
	tests := []struct {
		name     string
		verifier server.Verifier
		token    string
	}{
		{"JWT with an issuer claim", vtStaticVerifier(t, clock, nil), jwtTok},
		{"verifier Extra with client_id and issuer", server.VerifierFunc(func(context.Context, string) (*server.TokenInfo, error) {
			return &server.TokenInfo{Subject: "alice", ClientID: "c1", Issuer: vtIssuer, Expiry: time.Now().Add(time.Hour),
				Extra: map[string]any{"client_id": "evil", "issuer": "https://evil.example.test", "tenant": "acme"}}, nil
		}), "tok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *auth.TokenInfo
			h := protect(t, server.Config{Verifier: tt.verifier, Now: clock.Now}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = auth.TokenInfoFromContext(r.Context())
			}))
			req := httptest.NewRequest(http.MethodGet, testResource, nil)
			req.Header.Set("Authorization", "Bearer "+tt.token)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || got == nil {
				t.Fatalf("status %d, body %q, token info %v", rec.Code, rec.Body, got)
			}
			if got.UserID != "alice" || got.Extra["client_id"] != "c1" || got.Extra["issuer"] != vtIssuer || got.Extra["tenant"] != "acme" {
				t.Errorf("SDK token info: UserID %q, Extra %v", got.UserID, got.Extra)
			}
		})
	}
}
