package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

const invalidToken = `Bearer error="invalid_token", error_description="expired"`

// rig is a fixture stack plus a transport that holds a grant for it.
type rig struct {
	t     *testing.T
	st    *fixture.Stack
	store *store.Memory
	tr    *client.Transport
	hc    *http.Client
	hooks atomic.Int32
	reau  atomic.Pointer[client.NeedsReauthError]
}

// newRig authorizes once with a headless authorizer, then returns a rig
// whose transport has the given authorizer (nil: none) and no proactive
// refresh unless cfg says otherwise.
func newRig(t *testing.T, opts fixture.Options, cfg client.Config) *rig {
	t.Helper()
	r := &rig{t: t, st: fixture.New(t, opts), store: &store.Memory{}}
	boot := client.NewTransport(client.Config{Store: r.store, Authorizer: &client.HeadlessAuthorizer{},
		ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, ClientAuthMethod: cfg.ClientAuthMethod})
	if err := boot.Authorize(context.Background(), r.st.URL); err != nil {
		t.Fatalf("initial authorization: %v", err)
	}
	cfg.Store = r.store
	if cfg.RefreshMargin == 0 {
		cfg.RefreshMargin = -1
	}
	cfg.OnNeedsReauth = func(e *client.NeedsReauthError) { r.hooks.Add(1); r.reau.Store(e) }
	r.tr = client.NewTransport(cfg)
	r.hc = &http.Client{Transport: r.tr}
	return r
}

func (r *rig) grant() *store.Grant {
	r.t.Helper()
	key, _ := client.ServerKey(r.st.URL)
	g, err := r.store.Load(context.Background(), key)
	if err != nil {
		r.t.Fatalf("load grant: %v", err)
	}
	return g
}

func rpcBody(id int) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}`, id))
}

// call sends a JSON-RPC POST and returns the response (body read) or error.
func (r *rig) call(method string, id int) (*http.Response, []byte, error) {
	r.t.Helper()
	var body io.Reader
	if method == http.MethodPost {
		body = bytes.NewReader(rpcBody(id))
	}
	req, _ := http.NewRequest(method, r.st.URL, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b, nil
}

func responseID(t *testing.T, b []byte) int {
	t.Helper()
	var m struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("response %q: %v", b, err)
	}
	return m.ID
}

// Rule 1: 401 invalid_token with a refresh token → refresh, then the same
// request again, once, byte-identical (same JSON-RPC id).
func TestRule1_RefreshAndRetryByteIdentical(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	old := r.grant().AccessToken
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	resp, b, err := r.call(http.MethodPost, 42)
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if resp.StatusCode != 200 || responseID(t, b) != 42 {
		t.Fatalf("status %d body %s", resp.StatusCode, b)
	}
	reqs := r.st.Requests()
	if len(reqs) != 2 {
		t.Fatalf("server saw %d requests, want 2 (original + one retry)", len(reqs))
	}
	if !bytes.Equal(reqs[0].Body, rpcBody(42)) || !bytes.Equal(reqs[1].Body, reqs[0].Body) {
		t.Fatalf("retried body differs:\n%s\n%s", reqs[0].Body, reqs[1].Body)
	}
	if reqs[0].Token != old || reqs[1].Token == old || reqs[1].Token == "" {
		t.Fatal("the retry must carry the refreshed token, the first the old one")
	}
	if n := r.st.Refreshes(); n != 1 {
		t.Fatalf("refreshes = %d, want 1", n)
	}
	if s := r.tr.Stats(); s.Refreshes != 1 || s.Retries != 1 || s.Unauthorized != 1 {
		t.Errorf("stats %+v", s)
	}
}

// Rule 2: the refresh sends resource and the registration's client
// authentication.
func TestRule2_RefreshSendsResourceAndClientAuthentication(t *testing.T) {
	cases := []struct {
		name          string
		clients       []authserver.ClientConfig
		cfg           client.Config
		wantBasic     bool
		wantFormID    bool
		wantFormSecre bool
	}{
		{name: "public client (dynamic registration, none)", wantFormID: true},
		{name: "client_secret_basic",
			clients:   []authserver.ClientConfig{{ID: "cb", Secret: "cb-secret-0123456789", RedirectURIs: []string{"http://127.0.0.1/callback"}}},
			cfg:       client.Config{ClientID: "cb", ClientSecret: "cb-secret-0123456789", ClientAuthMethod: "client_secret_basic"},
			wantBasic: true},
		{name: "client_secret_post",
			clients:    []authserver.ClientConfig{{ID: "cp", Secret: "cp-secret-0123456789", AuthMethod: "client_secret_post", RedirectURIs: []string{"http://127.0.0.1/callback"}}},
			cfg:        client.Config{ClientID: "cp", ClientSecret: "cp-secret-0123456789", ClientAuthMethod: "client_secret_post"},
			wantFormID: true, wantFormSecre: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, fixture.Options{Clients: tc.clients}, tc.cfg)
			r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
			if resp, _, err := r.call(http.MethodPost, 1); err != nil || resp.StatusCode != 200 {
				t.Fatalf("call: %v", err)
			}
			refs := r.st.TokenRequests(oauth.GrantTypeRefreshToken)
			if len(refs) != 1 || refs[0].Status != 200 {
				t.Fatalf("refresh requests %+v", refs)
			}
			f := refs[0].Form
			if f.Get("resource") != r.st.URL {
				t.Errorf("resource = %q, want %q (RFC 8707)", f.Get("resource"), r.st.URL)
			}
			if refs[0].Basic != tc.wantBasic || (f.Get("client_id") != "") != tc.wantFormID || (f.Get("client_secret") != "") != tc.wantFormSecre {
				t.Errorf("client authentication: basic=%v form client_id=%q secret=%v", refs[0].Basic, f.Get("client_id"), f.Get("client_secret") != "")
			}
		})
	}
}

// Rule 2: rotation replaces the refresh token; an answer without one keeps
// it.
func TestRule2_RotationReplacesAbsenceKeeps(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	rt0 := r.grant().RefreshToken
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	r.call(http.MethodPost, 1)
	rt1 := r.grant().RefreshToken
	if rt1 == "" || rt1 == rt0 {
		t.Fatal("rotated refresh token was not stored")
	}
	r.st.StripRotation(true)
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if resp, _, err := r.call(http.MethodPost, 2); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call: %v", err)
	}
	if r.grant().RefreshToken != rt1 {
		t.Fatal("an answer without refresh_token must keep the old refresh token")
	}
}

// Rule 2: the new grant is in the store before the retry is sent.
func TestRule2_StoreWrittenBeforeRetry(t *testing.T) {
	var r *rig
	var sawStored atomic.Bool
	calls := 0
	st := fixture.Options{}
	r = newRig(t, st, client.Config{})
	r.st.ForceFunc(func(req *http.Request, token string) *fixture.Forced {
		calls++
		if calls == 1 {
			return &fixture.Forced{Status: 401, Challenge: invalidToken}
		}
		key, _ := client.ServerKey(r.st.URL)
		if g, err := r.store.Load(context.Background(), key); err == nil && g.AccessToken == token {
			sawStored.Store(true)
		}
		return nil
	})
	if resp, _, err := r.call(http.MethodPost, 1); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call: %v", err)
	}
	if !sawStored.Load() {
		t.Fatal("when the retry arrived, the store did not hold the token it carried")
	}
}

// Rule 3: invalid_grant discards the refresh token, fires the hook once and
// sends no further grants.
func TestRule3_InvalidGrantDiscardsRefreshTokenAndFiresHookOnce(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	r.st.Faults().RefuseRefresh(true)
	r.st.ForceFunc(func(*http.Request, string) *fixture.Forced {
		return &fixture.Forced{Status: 401, Challenge: invalidToken}
	})
	for i := range 4 {
		_, _, err := r.call(http.MethodPost, i)
		var ne *client.NeedsReauthError
		if !errors.As(err, &ne) || !errors.Is(err, client.ErrNeedsReauth) {
			t.Fatalf("call %d: %v, want NeedsReauthError", i, err)
		}
		if i == 0 && (ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant" || ne.Issuer != r.st.Issuer || len(ne.Scopes) == 0) {
			t.Errorf("first error %+v", ne)
		}
		if i > 0 && ne.Reason != client.ReasonNoRefreshToken {
			t.Errorf("call %d reason %q, want %q", i, ne.Reason, client.ReasonNoRefreshToken)
		}
	}
	if n := r.st.Refreshes(); n != 1 {
		t.Fatalf("refresh grants sent = %d, want exactly 1", n)
	}
	if r.hooks.Load() != 1 {
		t.Fatalf("OnNeedsReauth fired %d times, want 1", r.hooks.Load())
	}
	if g := r.grant(); g.RefreshToken != "" || g.ClientID == "" || g.TokenEndpoint == "" {
		t.Fatalf("grant after invalid_grant: refresh token kept=%v, client kept=%v", g.RefreshToken != "", g.ClientID != "")
	}
}

// Rule 4: 5xx and timeouts keep the refresh token and do not loop.
func TestRule4_UnavailableKeepsRefreshTokenNoLoop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(*fixture.Stack)
		cfg   client.Config
	}{
		{"503", func(st *fixture.Stack) { st.Faults().FailTokenEndpoint(503) }, client.Config{}},
		{"500", func(st *fixture.Stack) { st.Faults().FailTokenEndpoint(500) }, client.Config{}},
		{"timeout", func(st *fixture.Stack) { st.Faults().DelayToken(3 * time.Second) }, client.Config{RefreshTimeout: 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, fixture.Options{}, tc.cfg)
			rt := r.grant().RefreshToken
			tc.fault(r.st)
			r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
			_, _, err := r.call(http.MethodPost, 1)
			if !errors.Is(err, client.ErrRefreshUnavailable) || errors.Is(err, client.ErrNeedsReauth) {
				t.Fatalf("err = %v, want ErrRefreshUnavailable and not needs_reauth", err)
			}
			if r.grant().RefreshToken != rt {
				t.Fatal("refresh token was not kept")
			}
			if n := len(r.st.Requests()); n != 1 {
				t.Fatalf("resource server saw %d requests, want 1 (no retry without a new token)", n)
			}
			if r.hooks.Load() != 0 {
				t.Fatal("OnNeedsReauth fired for an unavailable authorization server")
			}
			// Healthy again: the kept refresh token works.
			r.st.Faults().FailTokenEndpoint(0)
			r.st.Faults().DelayToken(0)
			r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
			if resp, _, err := r.call(http.MethodPost, 2); err != nil || resp.StatusCode != 200 {
				t.Fatalf("after recovery: %v", err)
			}
		})
	}
}

// Rule 5: at most one refresh and one retry per logical request, on every
// method; a token rejected after refresh is not refreshed again.
func TestRule5_RetryCap(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			r := newRig(t, fixture.Options{}, client.Config{})
			r.st.ForceFunc(func(*http.Request, string) *fixture.Forced {
				return &fixture.Forced{Status: 401, Challenge: invalidToken}
			})
			_, _, err := r.call(method, 1)
			var ne *client.NeedsReauthError
			if !errors.As(err, &ne) || ne.Reason != client.ReasonRejectedAfterRefresh {
				t.Fatalf("err = %v, want needs_reauth rejected_after_refresh", err)
			}
			if n, m := r.st.Refreshes(), len(r.st.Requests()); n != 1 || m != 2 {
				t.Fatalf("refreshes %d, requests %d; want 1 and 2", n, m)
			}
			// A reconnect (a new logical request) with the rejected token does
			// not start another refresh.
			r.call(method, 2)
			if n, m := r.st.Refreshes(), len(r.st.Requests()); n != 1 || m != 3 {
				t.Fatalf("after reconnect: refreshes %d, requests %d; want 1 and 3", n, m)
			}
		})
	}
}

// Rule 6: never refresh on anything but 401 invalid_token.
func TestRule6_NoRefreshOnOtherAnswers(t *testing.T) {
	cases := []struct {
		name   string
		forced fixture.Forced
		status int // the response the caller gets; 0 means an error
	}{
		{"401 without error", fixture.Forced{Status: 401, Challenge: `Bearer resource_metadata="x"`}, 401},
		{"401 invalid_request", fixture.Forced{Status: 401, Challenge: `Bearer error="invalid_request"`}, 401},
		{"401 no challenge", fixture.Forced{Status: 401}, 401},
		{"401 Basic invalid_token", fixture.Forced{Status: 401, Challenge: `Basic realm="x", error="invalid_token"`}, 401},
		{"403 insufficient_scope", fixture.Forced{Status: 403, Challenge: `Bearer error="insufficient_scope", scope="files.write"`}, 0},
		{"403 plain", fixture.Forced{Status: 403}, 403},
		{"400", fixture.Forced{Status: 400, Challenge: `Bearer error="invalid_token"`}, 400},
		{"500", fixture.Forced{Status: 500}, 500},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, fixture.Options{}, client.Config{})
			r.st.Force(tc.forced)
			resp, _, err := r.call(http.MethodPost, 1)
			if tc.status == 0 {
				var se *client.InsufficientScopeError
				if !errors.As(err, &se) || !slices.Equal(se.Required, []string{"files.write"}) || !errors.Is(err, client.ErrInsufficientScope) {
					t.Fatalf("err = %v, want InsufficientScopeError for files.write", err)
				}
			} else if err != nil || resp.StatusCode != tc.status {
				t.Fatalf("got %v %v, want status %d passed through", resp, err, tc.status)
			}
			if n := r.st.Refreshes(); n != 0 {
				t.Fatalf("refreshed %d times", n)
			}
		})
	}
}

// Rule 6: step-up authorizes again for the union of granted and
// challenged scopes, once.
func TestRule6_StepUpForScopeUnionOnce(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{Authorizer: &client.HeadlessAuthorizer{}})
	if g := r.grant(); !slices.Contains(g.Scopes, "mcp:tools") || slices.Contains(g.Scopes, "files.write") {
		t.Fatalf("initial scopes %v", g.Scopes)
	}
	r.st.RequireScopes("mcp:tools", "files.write")
	resp, b, err := r.call(http.MethodPost, 9)
	if err != nil || resp.StatusCode != 200 || responseID(t, b) != 9 {
		t.Fatalf("step-up call: %v", err)
	}
	g := r.grant()
	if !slices.Contains(g.Scopes, "mcp:tools") || !slices.Contains(g.Scopes, "files.write") {
		t.Fatalf("scopes after step-up %v, want the union", g.Scopes)
	}
	if s := r.tr.Stats(); s.Authorizations != 1 || s.Refreshes != 0 {
		t.Fatalf("stats %+v: want one authorization (the step-up) and no refresh", s)
	}

	// A server that keeps saying insufficient_scope gets one step-up per
	// request, then an error.
	r.st.ForceFunc(func(*http.Request, string) *fixture.Forced {
		return &fixture.Forced{Status: 403, Challenge: `Bearer error="insufficient_scope", scope="files.read"`}
	})
	_, _, err = r.call(http.MethodPost, 10)
	if !errors.Is(err, client.ErrInsufficientScope) {
		t.Fatalf("err = %v, want insufficient scope", err)
	}
	if s := r.tr.Stats(); s.Authorizations != 2 {
		t.Fatalf("authorizations = %d, want 2 (one step-up for this request)", s.Authorizations)
	}
}

// Rule 6: a 401 with no grant starts the interactive authorization when one
// is configured, else NeedsReauthError.
func TestRule6_NoGrantAuthorizesOrNeedsReauth(t *testing.T) {
	st := fixture.New(t, fixture.Options{})
	hc := &http.Client{Transport: client.NewTransport(client.Config{})}
	_, err := hc.Post(st.URL, "application/json", bytes.NewReader(rpcBody(1)))
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonNoGrant {
		t.Fatalf("without authorizer: %v, want needs_reauth no_grant", err)
	}
	tr := client.NewTransport(client.Config{Authorizer: &client.HeadlessAuthorizer{}})
	hc = &http.Client{Transport: tr}
	resp, err := hc.Post(st.URL, "application/json", bytes.NewReader(rpcBody(5)))
	if err != nil {
		t.Fatalf("with authorizer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || responseID(t, b) != 5 {
		t.Fatalf("status %d body %s", resp.StatusCode, b)
	}
	reqs := st.Requests()[1:] // after the first transport's request
	if len(reqs) != 2 || reqs[0].Token != "" || reqs[1].Token == "" || !bytes.Equal(reqs[0].Body, reqs[1].Body) {
		t.Fatalf("want an unauthenticated request then the same request with a token; got %d requests", len(reqs))
	}
	if s := tr.Stats(); s.Authorizations != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// The caller's request is not modified (net/http RoundTripper contract).
func TestRoundTrip_DoesNotModifyRequest(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	req, _ := http.NewRequest(http.MethodPost, r.st.URL, bytes.NewReader(rpcBody(3)))
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	resp, err := r.tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if req.Header.Get("Authorization") != "" {
		t.Fatal("RoundTrip set a header on the caller's request")
	}
	if !strings.Contains(r.st.Requests()[1].Token, ".") {
		t.Fatal("retry carried no JWT")
	}
}
