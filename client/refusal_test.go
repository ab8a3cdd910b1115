package client_test

// A refresh the authorization server refuses discards the refresh token,
// fails the request with a NeedsReauthError and fires OnNeedsReauth once
// per grant (docs/design.md#client-rule-3).

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// TestRule3_InvalidGrantDiscardsRefreshTokenAndFiresHookOnce: invalid_grant
// discards the refresh token, fires the hook once and sends no further
// grants (docs/design.md#client-rule-3).
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

// TestRule3_HookFiresAgainForANewGrant: OnNeedsReauth fires once per grant:
// again for a new grant that dies too (docs/design.md#client-rule-3).
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

// TestRule3_InvalidClientForgetsTheRegistration: a refresh refused with
// invalid_client means the authorization server forgot the client: the
// stored registration goes, and the next sign-in registers again (evergrant
// serve restarted, then evergrant login) (docs/design.md#client-rule-3).
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
