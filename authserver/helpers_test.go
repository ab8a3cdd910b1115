package authserver_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/evergrant/evergrant/authserver"
)

// testResource is the MCP server tokens are issued for in these tests.
const testResource = "https://mcp.example.test/mcp"

// Pre-registered clients every test server has.
const (
	rsClientID     = "resource-server" // confidential, for introspection
	rsClientSecret = "rs-secret-0123456789abcdef"
	postClientID   = "post-client"
	postSecret     = "post-secret-0123456789abcdef"
	loopbackRedir  = "http://127.0.0.1/callback"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is an authorization server on loopback plus a client that does not
// follow redirects.
type env struct {
	t    *testing.T
	as   *authserver.Server
	ts   *httptest.Server
	hc   *http.Client
	logs *syncBuffer
}

// newEnv starts a server; mod may adjust the config (Issuer is set already).
func newEnv(t *testing.T, mod func(*authserver.Config)) *env {
	t.Helper()
	// Start only once the handler is set: the issuer URL is known from the
	// listener before the server runs, and no request races the handler.
	ts := httptest.NewUnstartedServer(nil)
	t.Cleanup(ts.Close)
	issuer := "http://" + ts.Listener.Addr().String()
	logs := &syncBuffer{}
	cfg := authserver.Config{
		Issuer:      issuer,
		Resources:   []string{testResource},
		Scopes:      []string{"mcp:tools", "files.read", "files.write"},
		AutoApprove: true,
		Logger:      slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clients: []authserver.ClientConfig{
			{ID: rsClientID, Secret: rsClientSecret, RedirectURIs: []string{"https://rs.example.test/cb"}},
			{ID: postClientID, Secret: postSecret, AuthMethod: "client_secret_post", RedirectURIs: []string{loopbackRedir}},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	as, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("authserver.New: %v", err)
	}
	ts.Config.Handler = as
	ts.Start()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &env{t: t, as: as, ts: ts, hc: hc, logs: logs}
}

func (e *env) url(path string) string { return e.ts.URL + path }

// register registers a client dynamically and returns the response.
func (e *env) register(md map[string]any) (status int, resp map[string]any) {
	e.t.Helper()
	b, _ := json.Marshal(md)
	r, err := e.hc.Post(e.url(authserver.PathRegister), "application/json", bytes.NewReader(b))
	if err != nil {
		e.t.Fatal(err)
	}
	return decode(e.t, r)
}

// registerPublic registers a public client with refresh and returns its id.
func (e *env) registerPublic(redirect string) string {
	e.t.Helper()
	st, resp := e.register(map[string]any{
		"redirect_uris": []string{redirect}, "token_endpoint_auth_method": "none",
		"grant_types": []string{"authorization_code", "refresh_token"}, "client_name": "test client",
	})
	if st != http.StatusCreated {
		e.t.Fatalf("register: %d %v", st, resp)
	}
	return resp["client_id"].(string)
}

func decode(t *testing.T, r *http.Response) (int, map[string]any) {
	t.Helper()
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	var m map[string]any
	if len(b) > 0 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
	}
	return r.StatusCode, m
}

// pkce returns a fresh verifier and its S256 challenge.
func pkce() (verifier, challenge string) {
	b := make([]byte, 32)
	rand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// authParams returns a valid authorization request for the client.
func authParams(clientID, redirect, challenge string) url.Values {
	return url.Values{
		"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirect},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"st-123"},
		"resource": {testResource}, "scope": {"mcp:tools"},
	}
}

// authorize sends an authorization request and returns the raw response.
func (e *env) authorize(q url.Values) *http.Response {
	e.t.Helper()
	r, err := e.hc.Get(e.url(authserver.PathAuthorize) + "?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	r.Body.Close()
	return r
}

// redirectParams checks the response is a redirect to redirect and returns
// its query.
func redirectParams(t *testing.T, r *http.Response, redirect string) url.Values {
	t.Helper()
	if r.StatusCode != http.StatusFound && r.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d, want a redirect", r.StatusCode)
	}
	loc, err := url.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	base := *loc
	base.RawQuery = ""
	want, _ := url.Parse(redirect)
	if base.Host != want.Host || base.Path != want.Path || base.Scheme != want.Scheme {
		t.Fatalf("redirected to %s, want %s", &base, redirect)
	}
	return loc.Query()
}

// code runs an auto-approved authorization and returns the code.
func (e *env) code(clientID, redirect, challenge string) string {
	e.t.Helper()
	q := redirectParams(e.t, e.authorize(authParams(clientID, redirect, challenge)), redirect)
	if q.Get("error") != "" {
		e.t.Fatalf("authorization error %s: %s", q.Get("error"), q.Get("error_description"))
	}
	return q.Get("code")
}

// token posts a token (or other form) request; basic, when non-nil, is
// {id, secret} for client_secret_basic.
func (e *env) post(path string, form url.Values, basic []string) (int, map[string]any, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url(path), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic != nil {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	r, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	st, m := decode(e.t, r)
	return st, m, r.Header
}

// exchange redeems a code for a public client.
func (e *env) exchange(clientID, redirect, code, verifier string) (int, map[string]any) {
	e.t.Helper()
	st, m, _ := e.post(authserver.PathToken, url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"code_verifier": {verifier}, "client_id": {clientID}, "resource": {testResource},
	}, nil)
	return st, m
}

// refresh uses a refresh token for a public client.
func (e *env) refresh(clientID, rt string) (int, map[string]any) {
	e.t.Helper()
	st, m, _ := e.post(authserver.PathToken, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {clientID}, "resource": {testResource},
	}, nil)
	return st, m
}

// tokens runs the whole public-client flow and returns the token response.
func (e *env) tokens(clientID, redirect string) map[string]any {
	e.t.Helper()
	v, c := pkce()
	st, m := e.exchange(clientID, redirect, e.code(clientID, redirect, c), v)
	if st != http.StatusOK {
		e.t.Fatalf("exchange: %d %v", st, m)
	}
	return m
}

// introspect asks, as the resource server, whether token is active.
func (e *env) introspect(token string) map[string]any {
	e.t.Helper()
	st, m, _ := e.post(authserver.PathIntrospect, url.Values{"token": {token}}, []string{rsClientID, rsClientSecret})
	if st != http.StatusOK {
		e.t.Fatalf("introspect: %d %v", st, m)
	}
	return m
}

func (e *env) active(token string) bool {
	return e.introspect(token)["active"] == true
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}
