package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// Rule 5 and rule 7 together: after rejected_after_refresh, a grant another
// process saved (evergrant login in a terminal) is used, not the memo.
func TestRule5_RejectedTokenGivesWayToANewSignIn(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	// Every token seen before the new sign-in is rejected, for good.
	var reject atomic.Bool
	reject.Store(true)
	var mu sync.Mutex
	bad := map[string]bool{}
	r.st.ForceFunc(func(_ *http.Request, tok string) *fixture.Forced {
		mu.Lock()
		defer mu.Unlock()
		if reject.Load() {
			bad[tok] = true
		}
		if bad[tok] {
			return &fixture.Forced{Status: 401, Challenge: invalidToken}
		}
		return nil
	})
	if _, _, err := r.call(http.MethodPost, 1); !errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("first call: %v, want needs_reauth (rejected after refresh)", err)
	}
	// Another process signs in and saves a new grant in the shared store.
	reject.Store(false)
	other := client.NewTransport(client.Config{Store: r.store, Authorizer: &client.HeadlessAuthorizer{}})
	if err := other.Authorize(context.Background(), r.st.URL); err != nil {
		t.Fatal(err)
	}
	resp, b, err := r.call(http.MethodPost, 2)
	if err != nil || resp.StatusCode != 200 || responseID(t, b) != 2 {
		t.Fatalf("after the new sign-in: %v", err)
	}
	if n := r.st.Refreshes(); n != 1 {
		t.Fatalf("refreshes = %d, want 1: the new grant is used without refreshing the rejected one", n)
	}
}

// OnNeedsReauth fires once per grant: again for a new grant that dies too.
func TestRule3_HookFiresAgainForANewGrant(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	r.st.Faults().RefuseRefresh(true)
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	r.call(http.MethodPost, 1)
	if r.hooks.Load() != 1 {
		t.Fatalf("hook fired %d times, want 1", r.hooks.Load())
	}
	other := client.NewTransport(client.Config{Store: r.store, Authorizer: &client.HeadlessAuthorizer{}})
	if err := other.Authorize(context.Background(), r.st.URL); err != nil {
		t.Fatal(err)
	}
	if resp, _, err := r.call(http.MethodPost, 2); err != nil || resp.StatusCode != 200 {
		t.Fatalf("with the new grant: %v", err)
	}
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	r.call(http.MethodPost, 3)
	if r.hooks.Load() != 2 {
		t.Fatalf("hook fired %d times, want 2 (once per grant)", r.hooks.Load())
	}
}

// Hooks run after the grant's lock is released, so a hook that takes its
// time (routing to a UI) does not hold up other processes' refreshes.
func TestRule7_HooksRunOutsideTheGrantLock(t *testing.T) {
	var lockFree atomic.Bool
	var ms *store.Memory
	var key string
	check := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if unlock, err := ms.Lock(ctx, key); err == nil {
			lockFree.Store(true)
			unlock()
		}
	}
	r := newRig(t, fixture.Options{}, client.Config{OnRefresh: func(client.RefreshEvent) { check() }})
	ms, key = r.store, r.grant().Key
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if _, _, err := r.call(http.MethodPost, 1); err != nil {
		t.Fatal(err)
	}
	if !lockFree.Load() {
		t.Fatal("OnRefresh ran while the grant's lock was held")
	}
}

// A token endpoint answer that is not an OAuth error (a proxy's page) does
// not count as a refusal: the refresh token is kept (rule 4, not rule 3).
func TestRule4_NonOAuthAnswerKeepsRefreshToken(t *testing.T) {
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, "<html>blocked by the firewall</html>")
	}))
	defer as.Close()
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", invalidToken)
		w.WriteHeader(401)
	}))
	defer rs.Close()
	ms := &store.Memory{}
	key, _ := client.ServerKey(rs.URL + "/mcp")
	ms.Save(context.Background(), &store.Grant{Key: key, Resource: key, Issuer: as.URL, TokenEndpoint: as.URL + "/token",
		ClientID: "c", AccessToken: "at", RefreshToken: "rt"})
	hc := &http.Client{Transport: client.NewTransport(client.Config{Store: ms, RefreshMargin: -1})}
	_, err := hc.Post(rs.URL+"/mcp", "application/json", bytes.NewReader(rpcBody(1)))
	var ue *client.RefreshUnavailableError
	if !errors.As(err, &ue) || ue.StatusCode != 403 || errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("err = %v, want refresh unavailable (HTTP 403), not needs_reauth", err)
	}
	if g, _ := ms.Load(context.Background(), key); g.RefreshToken != "rt" {
		t.Fatal("the refresh token was discarded on a non-OAuth answer")
	}
}

// Tokens never go to a plain-HTTP server off loopback.
func TestRoundTrip_RefusesPlainHTTPOffLoopback(t *testing.T) {
	sent := false
	base := roundTripFunc(func(*http.Request) (*http.Response, error) { sent = true; return nil, errors.New("no") })
	hc := &http.Client{Transport: client.NewTransport(client.Config{Base: base})}
	_, err := hc.Post("http://mcp.example.test/mcp", "application/json", bytes.NewReader(rpcBody(1)))
	if !errors.Is(err, oauth.ErrInsecureURL) || sent {
		t.Fatalf("err = %v, sent = %v; want ErrInsecureURL before anything is sent", err, sent)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Neither the event stream (GET) nor a closing DELETE starts a sign-in,
// whether the answer is a 401 or a step-up 403.
func TestRule6_OnlyPOSTStartsASignIn(t *testing.T) {
	for _, forced := range []fixture.Forced{
		{Status: 401, Challenge: `Bearer resource_metadata="x"`},
		{Status: 403, Challenge: `Bearer error="insufficient_scope", scope="files.write"`},
	} {
		for _, method := range []string{http.MethodGet, http.MethodDelete} {
			r := newRig(t, fixture.Options{}, client.Config{Authorizer: &client.HeadlessAuthorizer{}})
			r.st.Force(forced)
			r.call(method, 1)
			if n := r.tr.Stats().Authorizations; n != 0 {
				t.Errorf("%s answered %d: %d sign-ins, want none", method, forced.Status, n)
			}
		}
	}
}

// A refresh refused with invalid_client means the authorization server
// forgot the client: the stored registration goes, and the next sign-in
// registers again (evergrant serve restarted, then evergrant login).
func TestRule3_InvalidClientForgetsTheRegistration(t *testing.T) {
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		oauth.WriteError(w, &oauth.Error{Code: oauth.ErrorInvalidClient, Description: "unknown client", StatusCode: 401})
	}))
	defer as.Close()
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", invalidToken)
		w.WriteHeader(401)
	}))
	defer rs.Close()
	ms := &store.Memory{}
	ctx := context.Background()
	key, _ := client.ServerKey(rs.URL + "/mcp")
	ms.Save(ctx, &store.Grant{Key: key, Resource: key, Issuer: as.URL, TokenEndpoint: as.URL + "/token",
		ClientID: "gone", AccessToken: "at", RefreshToken: "rt"})
	ms.SaveRegistration(ctx, &store.Registration{Issuer: as.URL, RedirectURI: "http://127.0.0.1/callback", ClientID: "gone"})
	hc := &http.Client{Transport: client.NewTransport(client.Config{Store: ms, RefreshMargin: -1})}
	_, err := hc.Post(rs.URL+"/mcp", "application/json", bytes.NewReader(rpcBody(1)))
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.ErrorCode != oauth.ErrorInvalidClient {
		t.Fatalf("err = %v, want needs_reauth invalid_client", err)
	}
	if _, err := ms.LoadRegistration(ctx, as.URL, "http://127.0.0.1/callback"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the stale registration is still stored: %v", err)
	}
}
