// Package astest is test support: an authorization server on loopback and
// the raw OAuth flows tests drive against it (registration, PKCE
// authorization, code exchange, refresh, introspection), with no client
// library in between. The tests of authserver and of internal/faults use
// it; its SyncBuffer serves any test that reads a log or a stderr while
// something writes it. It is never part of a command.
package astest

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

// Resource is the MCP server the authorization server issues tokens for.
const Resource = "https://mcp.example.test/mcp"

// The clients every Env's server has pre-registered, and the redirect URI
// of the public clients tests register.
const (
	// RSClientID and RSClientSecret are the resource server's credentials
	// (client_secret_basic), for introspection.
	RSClientID     = "resource-server"
	RSClientSecret = "rs-secret-0123456789abcdef"
	// PostClientID and PostClientSecret are a confidential client that
	// authenticates with client_secret_post and redirects to
	// LoopbackRedirect.
	PostClientID     = "post-client"
	PostClientSecret = "post-secret-0123456789abcdef"
	// LoopbackRedirect is the redirect URI of the public clients.
	LoopbackRedirect = "http://127.0.0.1/callback"
)

// SyncBuffer is a bytes.Buffer a writer and a reader may use at once: the
// log sink of an Env, or a log or stderr a test reads while something
// still writes it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Env is an authorization server on loopback plus an HTTP client that does
// not follow redirects.
type Env struct {
	T *testing.T
	// AS is the authorization server; Server serves it (or what New put in
	// front of it) on loopback, and its URL is the issuer.
	AS     *authserver.Server
	Server *httptest.Server
	// Client does not follow redirects: an authorization's answer is the
	// redirect itself.
	Client *http.Client
	// Logs receives the server's log, as JSON at debug level.
	Logs *SyncBuffer
}

// New starts an authorization server that serves Resource with the scopes
// "mcp:tools", "files.read" and "files.write", approves every
// authorization, and has the clients RSClientID and PostClientID. mod, when
// non-nil, adjusts that configuration (Issuer is set already). front, when
// non-nil, returns the handler the listener serves instead of the server
// itself (for example a fault injector in front of it); logger is the
// server's.
func New(t *testing.T, mod func(*authserver.Config), front func(as *authserver.Server, logger *slog.Logger) http.Handler) *Env {
	t.Helper()
	// Start only once the handler is set: the issuer URL is known from the
	// listener before the server runs, and no request races the handler.
	ts := httptest.NewUnstartedServer(nil)
	t.Cleanup(ts.Close)
	logs := &SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := authserver.Config{
		Issuer:      "http://" + ts.Listener.Addr().String(),
		Resources:   []string{Resource},
		Scopes:      []string{"mcp:tools", "files.read", "files.write"},
		AutoApprove: true,
		Logger:      logger,
		Clients: []authserver.ClientConfig{
			{ID: RSClientID, Secret: RSClientSecret, RedirectURIs: []string{"https://rs.example.test/cb"}},
			{ID: PostClientID, Secret: PostClientSecret, AuthMethod: "client_secret_post", RedirectURIs: []string{LoopbackRedirect}},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	as, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("authserver.New: %v", err)
	}
	var h http.Handler = as
	if front != nil {
		h = front(as, logger)
	}
	ts.Config.Handler = h
	ts.Start()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &Env{T: t, AS: as, Server: ts, Client: hc, Logs: logs}
}

// URL returns the URL of path on the server.
func (e *Env) URL(path string) string { return e.Server.URL + path }

// Register registers a client dynamically with the metadata md and returns
// the answer.
func (e *Env) Register(md map[string]any) (status int, resp map[string]any) {
	e.T.Helper()
	b, _ := json.Marshal(md)
	r, err := e.Client.Post(e.URL(authserver.PathRegister), "application/json", bytes.NewReader(b))
	if err != nil {
		e.T.Fatal(err)
	}
	return Decode(e.T, r)
}

// RegisterPublic registers a public client with refresh that redirects to
// redirect, and returns its id.
func (e *Env) RegisterPublic(redirect string) string {
	e.T.Helper()
	st, resp := e.Register(map[string]any{
		"redirect_uris": []string{redirect}, "token_endpoint_auth_method": "none",
		"grant_types": []string{"authorization_code", "refresh_token"}, "client_name": "test client",
	})
	if st != http.StatusCreated {
		e.T.Fatalf("register: %d %v", st, resp)
	}
	return resp["client_id"].(string)
}

// Decode reads and closes r's body and returns its status and, when the
// body is JSON, its members.
func Decode(t *testing.T, r *http.Response) (int, map[string]any) {
	t.Helper()
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, decodeJSON(t, r.Header, b)
}

// decodeJSON returns the members of b when h says it is JSON, and fails
// the test when it is not.
func decodeJSON(t *testing.T, h http.Header, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if len(b) > 0 && strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
	}
	return m
}

// PKCE returns a fresh verifier and its S256 challenge.
func PKCE() (verifier, challenge string) {
	b := make([]byte, 32)
	rand.Read(b)
	verifier = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// AuthParams returns a valid authorization request for the client: scope
// "mcp:tools" for Resource, state "st-123".
func AuthParams(clientID, redirect, challenge string) url.Values {
	return url.Values{
		"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirect},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "state": {"st-123"},
		"resource": {Resource}, "scope": {"mcp:tools"},
	}
}

// Authorize sends an authorization request and returns the raw response,
// its body closed.
func (e *Env) Authorize(q url.Values) *http.Response {
	e.T.Helper()
	r, err := e.Client.Get(e.URL(authserver.PathAuthorize) + "?" + q.Encode())
	if err != nil {
		e.T.Fatal(err)
	}
	r.Body.Close()
	return r
}

// RedirectParams checks that r redirects to redirect and returns the
// redirect's query.
func RedirectParams(t *testing.T, r *http.Response, redirect string) url.Values {
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

// Code runs an auto-approved authorization and returns the code.
func (e *Env) Code(clientID, redirect, challenge string) string {
	e.T.Helper()
	q := RedirectParams(e.T, e.Authorize(AuthParams(clientID, redirect, challenge)), redirect)
	if q.Get("error") != "" {
		e.T.Fatalf("authorization error %s: %s", q.Get("error"), q.Get("error_description"))
	}
	return q.Get("code")
}

// Post posts a form (a token, revocation or introspection request); basic,
// when non-nil, is {id, secret} for client_secret_basic. It returns the
// status, the JSON members of the answer, its header, and its body as
// text.
func (e *Env) Post(path string, form url.Values, basic []string) (int, map[string]any, http.Header, string) {
	e.T.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.URL(path), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic != nil {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	r, err := e.Client.Do(req)
	if err != nil {
		e.T.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, decodeJSON(e.T, r.Header, b), r.Header, string(b)
}

// Exchange redeems a code for a public client.
func (e *Env) Exchange(clientID, redirect, code, verifier string) (int, map[string]any) {
	e.T.Helper()
	st, m, _, _ := e.Post(authserver.PathToken, url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"code_verifier": {verifier}, "client_id": {clientID}, "resource": {Resource},
	}, nil)
	return st, m
}

// Refresh uses a refresh token for a public client.
func (e *Env) Refresh(clientID, rt string) (int, map[string]any) {
	e.T.Helper()
	st, m, _, _ := e.Post(authserver.PathToken, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {clientID}, "resource": {Resource},
	}, nil)
	return st, m
}

// Tokens runs the whole public-client flow (authorization with PKCE, code
// exchange) and returns the token response.
func (e *Env) Tokens(clientID, redirect string) map[string]any {
	e.T.Helper()
	v, c := PKCE()
	st, m := e.Exchange(clientID, redirect, e.Code(clientID, redirect, c), v)
	if st != http.StatusOK {
		e.T.Fatalf("exchange: %d %v", st, m)
	}
	return m
}

// Introspect asks, as the resource server, about token, and returns the
// answer.
func (e *Env) Introspect(token string) map[string]any {
	e.T.Helper()
	st, m, _, _ := e.Post(authserver.PathIntrospect, url.Values{"token": {token}}, []string{RSClientID, RSClientSecret})
	if st != http.StatusOK {
		e.T.Fatalf("introspect: %d %v", st, m)
	}
	return m
}

// Active reports whether introspection says token is active.
func (e *Env) Active(token string) bool {
	return e.Introspect(token)["active"] == true
}

// Str returns the string member k of m, or "".
func Str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// WantTokenError checks that the token endpoint's answer (st, m) to what is
// an error status with the OAuth error code, and carries no token.
func WantTokenError(t *testing.T, what string, st int, m map[string]any, status int, code string) {
	t.Helper()
	if st != status || Str(m, "error") != code {
		t.Fatalf("%s: got %d %v, want %d %s", what, st, m, status, code)
	}
	if Str(m, "access_token") != "" || Str(m, "refresh_token") != "" {
		t.Fatalf("%s: error response carries tokens: %v", what, m)
	}
}
