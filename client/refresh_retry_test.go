package client_test

// The refresh and the retry after a 401 invalid_token: one refresh, then
// the same request once more (docs/design.md#client-rule-1); the refresh
// request, rotation and the save before the retry
// (docs/design.md#client-rule-2); at most one refresh and one retry per
// logical request (docs/design.md#client-rule-5).

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// TestRule1_RefreshAndRetryByteIdentical: a 401 invalid_token with a refresh
// token is refreshed, then the same request is sent again, once,
// byte-identical (same JSON-RPC id) (docs/design.md#client-rule-1).
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

// TestRule2_RefreshSendsResourceAndClientAuthentication: the refresh sends
// resource and the registration's client authentication
// (docs/design.md#client-rule-2).
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

// TestRule2_RotationReplacesAbsenceKeeps: rotation replaces the refresh
// token; an answer without one keeps it (docs/design.md#client-rule-2).
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

// TestRule2_StoreWrittenBeforeRetry: the new grant is in the store before
// the retry is sent (docs/design.md#client-rule-2).
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

// TestRule2_RotatedRefreshTokenSavedPastTheRefreshDeadline: a refresh whose
// deadline passes between the token endpoint's answer and the save still
// saves the rotated refresh token (docs/design.md#client-rule-2).
func TestRule2_RotatedRefreshTokenSavedPastTheRefreshDeadline(t *testing.T) {
	var armed atomic.Bool
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		if !armed.Load() || !strings.HasSuffix(r.URL.Path, authserver.PathToken) {
			return http.DefaultTransport.RoundTrip(r)
		}
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(data))
		// The answer is in; the refresh's deadline passes before it is
		// saved.
		<-r.Context().Done()
		return resp, nil
	})
	ms := new(store.Memory)
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{Store: ms, Base: base, RefreshMargin: -1, RefreshTimeout: 300 * time.Millisecond})
	key, _ := client.ServerKey(st.URL)
	before, err := ms.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	st.Force(fixture.Forced{Status: 401, Challenge: ccInvalidToken})
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 1); err != nil {
		t.Fatal(err)
	}
	after, err := ms.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	reqs := st.Requests()
	if after.RefreshToken == before.RefreshToken || after.AccessToken != reqs[len(reqs)-1].Token {
		t.Fatal("the refreshed grant (rotated refresh token) was not saved")
	}
}

// TestRule5_RetryCap: at most one refresh and one retry per logical request,
// on every method; a token rejected after refresh is not refreshed again
// (docs/design.md#client-rule-5).
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

// TestRule5_RejectedTokenGivesWayToANewSignIn: after rejected_after_refresh
// (docs/design.md#client-rule-5), a grant another process saved (evergrant
// login in a terminal) is used, not the memo (docs/design.md#client-rule-7).
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

// TestRule5_FailureMemoryClearedWhenTheGrantRecovers: a
// rejected-after-refresh token (docs/design.md#client-rule-5) that the
// server accepts again is refreshed on its next 401, and the once-per-grant
// hook (docs/design.md#client-rule-3) fires again after a successful
// refresh.
func TestRule5_FailureMemoryClearedWhenTheGrantRecovers(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	var mode atomic.Int32 // 0 reject every token, 1 accept every token, 2 reject rejectedTok
	var rejectedTok atomic.Value
	rejectedTok.Store("")
	r.st.ForceFunc(func(_ *http.Request, tok string) *fixture.Forced {
		switch m := mode.Load(); {
		case m == 0, m == 2 && tok == rejectedTok.Load().(string):
			return &fixture.Forced{Status: 401, Challenge: invalidToken}
		}
		return nil
	})
	// A server glitch rejects the refreshed token too.
	_, _, err := r.call(http.MethodPost, 1)
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonRejectedAfterRefresh {
		t.Fatalf("call 1: %v, want rejected_after_refresh", err)
	}
	if r.hooks.Load() != 1 {
		t.Fatalf("hook fired %d times, want 1", r.hooks.Load())
	}
	t1 := r.grant().AccessToken
	// The server recovers and accepts that token.
	mode.Store(1)
	if resp, _, err := r.call(http.MethodPost, 2); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call 2: %v", err)
	}
	// Later the token expires: a genuine failure, refreshed (the refresh
	// token is good).
	rejectedTok.Store(t1)
	mode.Store(2)
	resp, b, err := r.call(http.MethodPost, 3)
	if err != nil || resp.StatusCode != 200 || responseID(t, b) != 3 {
		t.Fatalf("call 3: %v, want a refresh and a retry", err)
	}
	if n := r.st.Refreshes(); n != 2 {
		t.Fatalf("refreshes = %d, want 2", n)
	}
	// Then the refresh token is revoked: reported again.
	r.st.Faults().RefuseRefresh(true)
	mode.Store(0)
	_, _, err = r.call(http.MethodPost, 4)
	if !errors.As(err, &ne) || ne.Reason != client.ReasonRefreshRejected {
		t.Fatalf("call 4: %v, want refresh_rejected", err)
	}
	if r.hooks.Load() != 2 {
		t.Fatalf("OnNeedsReauth fired %d times, want 2: the grant recovered by a refresh in between", r.hooks.Load())
	}
}

// TestRule5_ProactiveRefreshIsTheRequestsOneRefresh: the refresh started
// before sending (docs/design.md#client-rule-8) is the request's one refresh
// (docs/design.md#client-rule-5). When the token has expired, the request
// waits for it and a failure (refused, docs/design.md#client-rule-3, or
// unavailable, docs/design.md#client-rule-4) is the answer, without sending
// the dead token; when the token is still valid, the request goes out and a
// 401 waits for that refresh instead of starting a second one.
func TestRule5_ProactiveRefreshIsTheRequestsOneRefresh(t *testing.T) {
	for _, expired := range []bool{true, false} {
		for _, refused := range []bool{true, false} {
			name := map[bool]string{true: "expired", false: "valid"}[expired] + "/" +
				map[bool]string{true: "refused", false: "unavailable"}[refused]
			t.Run(name, func(t *testing.T) {
				clock := testclock.New(time.Now())
				r := newRig(t, fixture.Options{AccessTokenTTL: 10 * time.Minute},
					client.Config{Now: clock.Now, RefreshMargin: client.DefaultRefreshMargin})
				if refused {
					r.st.Faults().RefuseRefresh(true)
				} else {
					r.st.Faults().FailTokenEndpoint(http.StatusServiceUnavailable)
				}
				// The resource server rejects the token (revoked, or the
				// clocks disagree).
				r.st.ForceFunc(func(*http.Request, string) *fixture.Forced {
					return &fixture.Forced{Status: 401, Challenge: invalidToken}
				})
				if expired {
					clock.Advance(10*time.Minute + time.Second)
				} else {
					clock.Advance(10*time.Minute - 30*time.Second)
				}
				_, _, err := r.call(http.MethodPost, 1)
				// Hooks of a refresh run after its waiters have the result
				// (in the background when the refresh did): wait for them.
				wctx, cancel := context.WithTimeout(context.Background(), hdBound)
				defer cancel()
				if err := r.tr.Wait(wctx); err != nil {
					t.Fatalf("Wait: %v", err)
				}
				if refused {
					var ne *client.NeedsReauthError
					if !errors.As(err, &ne) || ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant" {
						t.Fatalf("err = %v, want needs_reauth refresh_rejected (invalid_grant)", err)
					}
					if n := r.hooks.Load(); n != 1 {
						t.Errorf("OnNeedsReauth fired %d times, want 1", n)
					}
					if s := r.tr.Stats(); s.NeedsReauth != 1 {
						t.Errorf("Stats.NeedsReauth = %d, want 1", s.NeedsReauth)
					}
				} else {
					var ue *client.RefreshUnavailableError
					if !errors.As(err, &ue) || errors.Is(err, client.ErrNeedsReauth) {
						t.Fatalf("err = %v, want refresh unavailable", err)
					}
				}
				if n := r.st.Refreshes(); n != 1 {
					t.Errorf("refresh grants = %d, want 1 for one logical request", n)
				}
				want := 1 // a valid token is sent while the refresh runs
				if expired {
					want = 0 // a dead token is not sent
				}
				if n := len(r.st.Requests()); n != want {
					t.Errorf("the resource server saw %d requests, want %d", n, want)
				}
			})
		}
	}
}
