package server_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/server"
)

// introspectionVerifier returns a verifier that introspects at e as the
// pre-registered resource server; mod may adjust the config.
func (e *vtAS) introspectionVerifier(mod func(*server.IntrospectionConfig)) *server.IntrospectionVerifier {
	e.t.Helper()
	cfg := server.IntrospectionConfig{
		Endpoint: e.introspectURL(), ClientID: vtRSClient, ClientSecret: vtRSSecret,
		Resource: vtResource, Issuer: e.issuer,
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := server.NewIntrospectionVerifier(cfg)
	if err != nil {
		e.t.Fatalf("NewIntrospectionVerifier: %v", err)
	}
	return v
}

// revoke revokes a token of the public client at e (RFC 7009).
func (e *vtAS) revoke(token string) {
	e.t.Helper()
	resp, err := e.hc.PostForm(e.issuer+authserver.PathRevoke, url.Values{"token": {token}, "client_id": {vtPublicClient}})
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("revoke: status %d", resp.StatusCode)
	}
}

// Active and inactive tokens, asked of the real authorization server.
func TestIntrospect_ActiveInactive(t *testing.T) {
	e := newVTAS(t, nil)
	v := e.introspectionVerifier(func(c *server.IntrospectionConfig) { c.CacheTTL = -1 })
	ctx := context.Background()
	at, rt := e.mint()

	info, err := v.Verify(ctx, at)
	if err != nil {
		t.Fatalf("active token: %v", err)
	}
	if info.Subject != "demo-user" || info.ClientID != vtPublicClient || info.Issuer != e.issuer || info.ID == "" {
		t.Errorf("info = %+v", info)
	}
	if strings.Join(info.Scopes, " ") != "mcp:tools files.read" || len(info.Audience) != 1 || info.Audience[0] != vtResource {
		t.Errorf("scopes %q, audience %q", info.Scopes, info.Audience)
	}
	if d := time.Until(info.Expiry); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Errorf("expiry in %v", d)
	}

	tests := []struct {
		name  string
		token func() string
		why   string
	}{
		{"unknown token", func() string { return "no-such-token" }, "not active"},
		{"refresh token presented as an access token", func() string { return rt }, "refresh token"},
		{"revoked access token", func() string { e.revoke(at); return at }, "not active"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := v.Verify(ctx, tt.token())
			if !errors.Is(err, server.ErrInvalidToken) || info != nil {
				t.Fatalf("Verify = %+v, %v; want ErrInvalidToken", info, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
		})
	}
}

// A cached answer is reused: the second Verify sends no request, and
// concurrent first requests share one. Negative answers are not cached.
func TestIntrospect_Cache(t *testing.T) {
	e := newVTAS(t, nil)
	v := e.introspectionVerifier(nil)
	ctx := context.Background()
	at := e.token()

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := v.Verify(ctx, at); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := e.introspections.Load(); n != 1 {
		t.Fatalf("%d introspection requests for 20 concurrent calls, want 1", n)
	}
	info, err := v.Verify(ctx, at)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.introspections.Load(); n != 1 {
		t.Fatalf("%d introspection requests after a cache hit, want 1", n)
	}
	// Callers get their own copy.
	info.Scopes[0] = "changed"
	if again, _ := v.Verify(ctx, at); again.Scopes[0] != "mcp:tools" {
		t.Fatal("a caller's change reached the cache")
	}

	for range 2 {
		if _, err := v.Verify(ctx, "no-such-token"); !errors.Is(err, server.ErrInvalidToken) {
			t.Fatal(err)
		}
	}
	if n := e.introspections.Load(); n != 3 {
		t.Fatalf("%d introspection requests, want 3 (negative answers are not cached)", n)
	}
}

// A cached answer lives min(CacheTTL, exp - now).
func TestIntrospect_CacheExpiry(t *testing.T) {
	tests := []struct {
		name      string
		tokenTTL  time.Duration
		cacheTTL  time.Duration
		hit, miss time.Duration // clock advances (from the first call) that hit and miss
	}{
		{"bounded by the token's exp", 30 * time.Second, 10 * time.Minute, 25 * time.Second, 31 * time.Second},
		{"bounded by CacheTTL", time.Hour, time.Minute, 59 * time.Second, 61 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newVTAS(t, func(c *authserver.Config) { c.AccessTokenTTL = tt.tokenTTL })
			clock := testclock.New(time.Now())
			v := e.introspectionVerifier(func(c *server.IntrospectionConfig) {
				c.CacheTTL = tt.cacheTTL
				c.Now = clock.Now
			})
			ctx := context.Background()
			at := e.token()
			t0 := clock.Now()
			for _, step := range []struct {
				at   time.Duration
				want int64
			}{{0, 1}, {tt.hit, 1}, {tt.miss, 2}} {
				clock.Advance(t0.Add(step.at).Sub(clock.Now()))
				if _, err := v.Verify(ctx, at); err != nil {
					t.Fatalf("at +%v: %v", step.at, err)
				}
				if n := e.introspections.Load(); n != step.want {
					t.Fatalf("at +%v: %d requests, want %d", step.at, n, step.want)
				}
			}
		})
	}
}

// The cache is bounded: beyond MaxCacheEntries the least recently used
// token is asked about again.
func TestIntrospect_CacheBounded(t *testing.T) {
	e := newVTAS(t, nil)
	v := e.introspectionVerifier(func(c *server.IntrospectionConfig) { c.MaxCacheEntries = 2 })
	ctx := context.Background()
	a, b, c := e.token(), e.token(), e.token()
	for _, tok := range []string{a, b, a, c} { // c evicts b, the least recently used
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.introspections.Load(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	v.Verify(ctx, a)
	if n := e.introspections.Load(); n != 3 {
		t.Fatalf("a was evicted: %d requests", n)
	}
	v.Verify(ctx, b)
	if n := e.introspections.Load(); n != 4 {
		t.Fatalf("b was not evicted: %d requests", n)
	}
}

// When the authorization server cannot give an answer, or refuses our own
// credentials, the verifier is unavailable (503), never "invalid token".
func TestIntrospect_Unavailable(t *testing.T) {
	e := newVTAS(t, nil)
	at := e.token()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + authserver.PathIntrospect
	dead.Close()
	answer := func(status int, body string) func(http.ResponseWriter, *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			io.WriteString(w, body)
			return true
		}
	}
	tests := []struct {
		name      string
		mod       func(*server.IntrospectionConfig)
		intercept func(http.ResponseWriter, *http.Request) bool
	}{
		{"authorization server down", func(c *server.IntrospectionConfig) { c.Endpoint = deadURL }, nil},
		{"status 500", nil, answer(500, `{"error":"server_error"}`)},
		{"status 503", nil, answer(503, ``)},
		{"wrong credentials (401)", func(c *server.IntrospectionConfig) { c.ClientSecret = "wrong" }, nil},
		{"unknown client (401)", func(c *server.IntrospectionConfig) { c.ClientID = "nobody" }, nil},
		{"public client may not introspect", func(c *server.IntrospectionConfig) { c.ClientID = vtPublicClient }, nil},
		{"not JSON", nil, answer(200, `<html>`)},
		{"no active member", nil, answer(200, `{"sub":"x"}`)},
		{"active not a boolean", nil, answer(200, `{"active":"true"}`)},
		{"malformed claims", nil, answer(200, `{"active":true,"exp":"soon"}`)},
		{"too large", nil, answer(200, `{"active":true,"x":"`+strings.Repeat("x", 1<<20)+`"}`)},
		{"redirect", nil, func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, "http://example.com/introspect", http.StatusTemporaryRedirect)
			return true
		}},
		{"timeout", func(c *server.IntrospectionConfig) {
			c.HTTPClient = &http.Client{Timeout: 50 * time.Millisecond}
		}, func(w http.ResponseWriter, r *http.Request) bool {
			io.Copy(io.Discard, r.Body) // so the server notices the client hang up
			<-r.Context().Done()
			return true
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.setIntercept(tt.intercept)
			defer e.setIntercept(nil)
			v := e.introspectionVerifier(tt.mod)
			info, err := v.Verify(context.Background(), at)
			if !errors.Is(err, server.ErrVerifierUnavailable) || info != nil {
				t.Fatalf("Verify = %+v, %v; want ErrVerifierUnavailable", info, err)
			}
			if errors.Is(err, server.ErrInvalidToken) {
				t.Fatal("error is also ErrInvalidToken")
			}
		})
	}

	t.Run("caller's context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := e.introspectionVerifier(nil).Verify(ctx, at); !errors.Is(err, server.ErrVerifierUnavailable) {
			t.Fatalf("Verify: %v", err)
		}
	})
	t.Run("failures are not cached", func(t *testing.T) {
		v := e.introspectionVerifier(nil)
		e.setIntercept(answer(500, ``))
		v.Verify(context.Background(), at)
		e.setIntercept(nil)
		if _, err := v.Verify(context.Background(), at); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
}

// Answers of a stub introspection endpoint: audience (string or array),
// issuer, token type and confirmation checks, and what is sent.
func TestIntrospect_Answers(t *testing.T) {
	var body atomic.Pointer[string]
	var bad atomic.Value
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		switch {
		case r.Method != http.MethodPost || !ok || id != "rs%3Aone" || secret != "s+e%26cret":
			bad.Store("method or credentials: " + r.Method + " " + id + " " + secret)
		case r.PostFormValue("token") != "tok" || r.PostFormValue("token_type_hint") != "access_token":
			bad.Store("form: " + r.PostForm.Encode())
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, *body.Load())
	}))
	defer ts.Close()
	exp := time.Now().Add(time.Hour).Unix()
	expS := strconv.FormatInt(exp, 10)

	tests := []struct {
		name   string
		answer string
		issuer string
		ok     bool
		why    string
	}{
		{"aud string", `{"active":true,"aud":"` + vtResource + `","sub":"u"}`, "", true, ""},
		{"aud array", `{"active":true,"aud":["` + vtOtherRes + `","` + vtResource + `/"],"sub":"u"}`, "", true, ""},
		{"no aud is refused by default", `{"active":true,"sub":"u"}`, "", false, "no audience"},
		{"aud mismatch", `{"active":true,"aud":"` + vtOtherRes + `"}`, "", false, "audience"},
		{"aud array mismatch", `{"active":true,"aud":["` + vtOtherRes + `"]}`, "", false, "audience"},
		{"inactive", `{"active":false}`, "", false, "not active"},
		{"issuer matches", `{"active":true,"aud":"` + vtResource + `","iss":"https://as.example.test","sub":"u"}`, "https://as.example.test", true, ""},
		{"issuer absent", `{"active":true,"aud":"` + vtResource + `","sub":"u"}`, "https://as.example.test", true, ""},
		{"issuer mismatch", `{"active":true,"iss":"https://evil.example.test"}`, "https://as.example.test", false, "issuer"},
		{"refresh token", `{"active":true,"token_type":"refresh_token"}`, "", false, "refresh token"},
		{"sender-constrained", `{"active":true,"cnf":{"jkt":"x"}}`, "", false, "cnf"},
		{"scp and username", `{"active":true,"aud":"` + vtResource + `","sub":"u","scp":["a","b"],"username":"alice","exp":` + expS + `}`, "", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body.Store(&tt.answer)
			v, err := server.NewIntrospectionVerifier(server.IntrospectionConfig{
				Endpoint: ts.URL, ClientID: "rs:one", ClientSecret: "s e&cret", Resource: vtResource, Issuer: tt.issuer,
			})
			if err != nil {
				t.Fatal(err)
			}
			info, err := v.Verify(context.Background(), "tok")
			if b := bad.Load(); b != nil {
				t.Fatalf("bad request: %v", b)
			}
			if tt.ok {
				if err != nil || info.Subject != "u" {
					t.Fatalf("Verify = %+v, %v", info, err)
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

	t.Run("no aud accepted when allowed", func(t *testing.T) {
		a := `{"active":true,"sub":"u"}`
		body.Store(&a)
		v, _ := server.NewIntrospectionVerifier(server.IntrospectionConfig{
			Endpoint: ts.URL, ClientID: "rs:one", ClientSecret: "s e&cret", Resource: vtResource, AllowMissingAudience: true,
		})
		if _, err := v.Verify(context.Background(), "tok"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("scp, username and exp reach TokenInfo", func(t *testing.T) {
		a := `{"active":true,"aud":"` + vtResource + `","sub":"u","scp":["a","b"],"username":"alice","exp":` + expS + `}`
		body.Store(&a)
		v, _ := server.NewIntrospectionVerifier(server.IntrospectionConfig{
			Endpoint: ts.URL, ClientID: "rs:one", ClientSecret: "s e&cret", Resource: vtResource,
		})
		info, err := v.Verify(context.Background(), "tok")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(info.Scopes, " ") != "a b" || info.Extra["username"] != "alice" || info.Expiry.Unix() != exp {
			t.Errorf("info = %+v", info)
		}
	})
}

func TestNewIntrospectionVerifier_ConfigErrors(t *testing.T) {
	good := server.IntrospectionConfig{Endpoint: "https://as.example.test/introspect", ClientID: "rs", ClientSecret: "s", Resource: vtResource}
	if _, err := server.NewIntrospectionVerifier(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*server.IntrospectionConfig)
	}{
		{"no endpoint", func(c *server.IntrospectionConfig) { c.Endpoint = "" }},
		{"http endpoint", func(c *server.IntrospectionConfig) { c.Endpoint = "http://as.example.test/introspect" }},
		{"no client id", func(c *server.IntrospectionConfig) { c.ClientID = "" }},
		{"no secret", func(c *server.IntrospectionConfig) { c.ClientSecret = "" }},
		{"no resource", func(c *server.IntrospectionConfig) { c.Resource = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			if _, err := server.NewIntrospectionVerifier(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
