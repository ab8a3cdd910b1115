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
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
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
		// The grant stays refused: later calls get the same reason and
		// OAuth error, not a bare no_refresh_token.
		if i > 0 && (ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant") {
			t.Errorf("call %d reason %q (%q), want %q (invalid_grant)", i, ne.Reason, ne.ErrorCode, client.ReasonRefreshRejected)
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

// TestRule3_RefusedGrantStaysRefusedUntilSignIn: once the authorization
// server refused the refresh, by a request's refresh or by a background
// one, every later request fails with that refusal (same reason and OAuth
// error), sends no token, starts no sign-in, and OnNeedsReauth fires once;
// an explicit Authorize ends it.
func TestRule3_RefusedGrantStaysRefusedUntilSignIn(t *testing.T) {
	for _, background := range []bool{false, true} {
		name := map[bool]string{false: "request", true: "background"}[background]
		t.Run(name, func(t *testing.T) {
			r := newRFRig(t, client.Config{})
			r.st.Faults().RefuseRefresh(true)
			if background {
				// Within the refresh margin, still valid: the request goes
				// out with its token and the refresh, in the background,
				// meets the refusal.
				r.clock.Advance(10*time.Minute - 30*time.Second)
				if err := r.call(1); err != nil {
					t.Fatalf("call 1 with a still valid token: %v", err)
				}
				r.wait()
			} else {
				// Expired: the request's refresh meets the refusal.
				r.clock.Advance(10*time.Minute + time.Second)
				wantRefused(t, r.call(1), "call 1")
			}
			if n := r.st.Refreshes(); n != 1 {
				t.Fatalf("refresh grants = %d, want 1", n)
			}
			sent := len(r.st.Requests())
			for id := 2; id <= 4; id++ {
				wantRefused(t, r.call(id), "a later call")
				if id == 3 {
					// Past the kept token's expiry too.
					r.clock.Advance(time.Hour)
				}
			}
			if n := len(r.st.Requests()) - sent; n != 0 {
				t.Errorf("the MCP server received %d requests after the refusal, want none (no dead token sent)", n)
			}
			if n := r.authz.calls.Load(); n != 1 {
				t.Errorf("interactive sign-ins = %d, want 1 (the first): none may start implicitly", n)
			}
			if n := r.st.Refreshes(); n != 1 {
				t.Errorf("refresh grants = %d, want 1", n)
			}
			if n := r.hooks.Load(); n != 1 {
				t.Errorf("OnNeedsReauth fired %d times, want 1", n)
			}
			// An explicit sign-in ends the refusal.
			r.st.Faults().RefuseRefresh(false)
			if err := r.tr.Authorize(t.Context(), r.st.URL); err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			if err := r.call(5); err != nil {
				t.Fatalf("call after a new sign-in: %v", err)
			}
		})
	}
}

// TestRule3_RefusalEndsWithAnotherProcessesSignIn: a sign-in saved to the
// shared store by another process (evergrant login beside a running
// bridge) ends the refusal, without a sign-in here.
func TestRule3_RefusalEndsWithAnotherProcessesSignIn(t *testing.T) {
	st := fixture.New(t, fixture.Options{AccessTokenTTL: 10 * time.Minute})
	clock := testclock.New(time.Now())
	shared := &store.Memory{}
	var hooks atomic.Int32
	tr := client.NewTransport(client.Config{Store: shared, Authorizer: &client.HeadlessAuthorizer{}, Now: clock.Now,
		OnNeedsReauth: func(*client.NeedsReauthError) { hooks.Add(1) }})
	if err := tr.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	st.Faults().RefuseRefresh(true)
	clock.Advance(10*time.Minute + time.Second)
	call := func(id int) error {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, st.URL, bytes.NewReader(rpcBody(id)))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	wantRefused(t, call(1), "call 1")
	st.Faults().RefuseRefresh(false)
	other := client.NewTransport(client.Config{Store: shared, Authorizer: &client.HeadlessAuthorizer{}, Now: clock.Now})
	if err := other.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	if err := call(2); err != nil {
		t.Fatalf("call after another process signed in: %v", err)
	}
	if s := tr.Stats(); s.Authorizations != 1 {
		t.Errorf("authorizations here = %d, want 1 (the first)", s.Authorizations)
	}
}
