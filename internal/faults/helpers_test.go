package faults_test

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
	"github.com/evergrant/evergrant/internal/faults"
)

// testResource is the MCP server tokens are issued for in these tests.
const testResource = "https://mcp.example.test/mcp"

// The resource server's credentials (for introspection) and the redirect
// URI of the public clients.
const (
	rsClientID     = "resource-server"
	rsClientSecret = "rs-secret-0123456789abcdef"
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

// env is an authorization server behind an Injector on loopback, and a
// client that does not follow redirects.
type env struct {
	t    *testing.T
	as   *authserver.Server
	inj  *faults.Injector
	ts   *httptest.Server
	hc   *http.Client
	logs *syncBuffer
}

// newEnv starts a server.
func newEnv(t *testing.T) *env {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	t.Cleanup(ts.Close)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	as, err := authserver.New(authserver.Config{
		Issuer:      "http://" + ts.Listener.Addr().String(),
		Resources:   []string{testResource},
		Scopes:      []string{"mcp:tools"},
		AutoApprove: true,
		Logger:      logger,
		Clients: []authserver.ClientConfig{
			{ID: rsClientID, Secret: rsClientSecret, RedirectURIs: []string{"https://rs.example.test/cb"}},
		},
	})
	if err != nil {
		t.Fatalf("authserver.New: %v", err)
	}
	inj := faults.New(as, logger)
	ts.Config.Handler = inj
	ts.Start()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &env{t: t, as: as, inj: inj, ts: ts, hc: hc, logs: logs}
}

// registerPublic registers a public client with refresh and returns its id.
func (e *env) registerPublic() string {
	e.t.Helper()
	b, _ := json.Marshal(map[string]any{
		"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none",
		"grant_types": []string{"authorization_code", "refresh_token"}, "client_name": "test client",
	})
	r, err := e.hc.Post(e.ts.URL+authserver.PathRegister, "application/json", bytes.NewReader(b))
	if err != nil {
		e.t.Fatal(err)
	}
	st, m := decode(e.t, r)
	if st != http.StatusCreated {
		e.t.Fatalf("register: %d %v", st, m)
	}
	return str(m, "client_id")
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

// code runs an auto-approved authorization and returns the code.
func (e *env) code(clientID, challenge string) string {
	e.t.Helper()
	q := url.Values{
		"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {loopbackRedir},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"st-123"},
		"resource": {testResource}, "scope": {"mcp:tools"},
	}
	r, err := e.hc.Get(e.ts.URL + authserver.PathAuthorize + "?" + q.Encode())
	if err != nil {
		e.t.Fatal(err)
	}
	r.Body.Close()
	loc, err := url.Parse(r.Header.Get("Location"))
	if r.StatusCode != http.StatusFound || err != nil || loc.Query().Get("code") == "" {
		e.t.Fatalf("authorization: %d, Location %q", r.StatusCode, r.Header.Get("Location"))
	}
	return loc.Query().Get("code")
}

// post posts a form; basic, when non-nil, is {id, secret} for
// client_secret_basic. It returns the body unparsed too.
func (e *env) post(path string, form url.Values, basic []string) (int, map[string]any, http.Header, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.ts.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic != nil {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	r, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	var m map[string]any
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &m); err != nil {
			e.t.Fatalf("decode %q: %v", b, err)
		}
	}
	return r.StatusCode, m, r.Header, string(b)
}

// exchange redeems a code for a public client.
func (e *env) exchange(clientID, code, verifier string) (int, map[string]any) {
	e.t.Helper()
	st, m, _, _ := e.post(authserver.PathToken, url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {loopbackRedir},
		"code_verifier": {verifier}, "client_id": {clientID}, "resource": {testResource},
	}, nil)
	return st, m
}

// refresh uses a refresh token for a public client.
func (e *env) refresh(clientID, rt string) (int, map[string]any) {
	e.t.Helper()
	st, m, _, _ := e.post(authserver.PathToken, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {clientID}, "resource": {testResource},
	}, nil)
	return st, m
}

// tokens runs the whole public-client flow and returns the token response.
func (e *env) tokens(clientID string) map[string]any {
	e.t.Helper()
	v, c := pkce()
	st, m := e.exchange(clientID, e.code(clientID, c), v)
	if st != http.StatusOK {
		e.t.Fatalf("exchange: %d %v", st, m)
	}
	return m
}

// introspect asks, as the resource server, whether token is active.
func (e *env) introspect(token string) map[string]any {
	e.t.Helper()
	st, m, _, _ := e.post(authserver.PathIntrospect, url.Values{"token": {token}}, []string{rsClientID, rsClientSecret})
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

// wantTokenError checks an error answer of the token endpoint.
func wantTokenError(t *testing.T, what string, st int, m map[string]any, status int, code string) {
	t.Helper()
	if st != status || str(m, "error") != code {
		t.Fatalf("%s: got %d %v, want %d %s", what, st, m, status, code)
	}
	if str(m, "access_token") != "" || str(m, "refresh_token") != "" {
		t.Fatalf("%s: error response carries tokens: %v", what, m)
	}
}
