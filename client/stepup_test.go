package client_test

// Never refresh on anything but 401 invalid_token; a 403
// insufficient_scope is a step-up; a 401 without a grant starts the
// interactive authorization, from a POST only
// (docs/design.md#client-rule-6).

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
)

// TestRule6_NoRefreshOnOtherAnswers: never refresh on anything but 401
// invalid_token (docs/design.md#client-rule-6).
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

// TestRule6_StepUpForScopeUnionOnce: step-up authorizes again for the union
// of granted and challenged scopes, once (docs/design.md#client-rule-6).
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

// TestRule6_StepUpOnNonPOSTIsInsufficientScope: a step-up 403 on the event
// stream (GET) or a DELETE, which may not start a sign-in, is the
// InsufficientScopeError, not a needs-reauth (docs/design.md#client-rule-6).
func TestRule6_StepUpOnNonPOSTIsInsufficientScope(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			r := newRig(t, fixture.Options{}, client.Config{Authorizer: &client.HeadlessAuthorizer{}})
			r.st.Force(fixture.Forced{Status: 403, Challenge: `Bearer error="insufficient_scope", scope="files.write"`})
			_, _, err := r.call(method, 1)
			var se *client.InsufficientScopeError
			if !errors.As(err, &se) || errors.Is(err, client.ErrNeedsReauth) || len(se.Required) != 1 || se.Required[0] != "files.write" {
				t.Fatalf("err = %v, want InsufficientScopeError for files.write", err)
			}
			if s := r.tr.Stats(); s.NeedsReauth != 0 || s.Authorizations != 0 {
				t.Errorf("Stats = %+v, want no needs-reauth and no sign-in", s)
			}
			if n := r.hooks.Load(); n != 0 {
				t.Errorf("OnNeedsReauth fired %d times, want 0", n)
			}
		})
	}
}

// TestRule6_NoGrantAuthorizesOrNeedsReauth: a 401 with no grant starts the
// interactive authorization when one is configured, else NeedsReauthError
// (docs/design.md#client-rule-6).
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

// TestRule6_OnlyPOSTStartsASignIn: neither the event stream (GET) nor a
// closing DELETE starts a sign-in, whether the answer is a 401 or a step-up
// 403 (docs/design.md#client-rule-6).
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

// TestRule6_FailedStepUpIsAScopeError: a 403 insufficient_scope whose
// interactive authorization fails surfaces an InsufficientScopeError that
// wraps the failure, not a NeedsReauthError; the grant still works for all
// it covers.
func TestRule6_FailedStepUpIsAScopeError(t *testing.T) {
	r := newRFRig(t, client.Config{RefreshMargin: -1})
	r.st.Force(fixture.Forced{Status: http.StatusForbidden,
		Challenge: `Bearer error="insufficient_scope", scope="files.write", error_description="needs files.write"`})
	r.authz.fail.Store(true)
	err := r.call(1)
	var se *client.InsufficientScopeError
	if !errors.As(err, &se) {
		t.Fatalf("step-up declined: %v (%T), want an InsufficientScopeError", err, err)
	}
	if errors.Is(err, client.ErrNeedsReauth) {
		t.Errorf("step-up declined: %v matches ErrNeedsReauth; the grant still works", err)
	}
	if !errors.Is(err, client.ErrAuthorization) || !errors.Is(err, errDeclined) {
		t.Errorf("step-up declined: %v does not wrap the failed authorization", err)
	}
	if len(se.Required) != 1 || se.Required[0] != "files.write" {
		t.Errorf("Required = %q, want [files.write]", se.Required)
	}
	if n := r.hooks.Load(); n != 0 {
		t.Errorf("OnNeedsReauth fired %d times, want 0", n)
	}
	if n := r.events(client.EventNeedsReauth); n != 0 {
		t.Errorf("%d needs_reauth events, want 0", n)
	}
	if err := r.call(2); err != nil {
		t.Fatalf("a call the grant covers after the declined step-up: %v", err)
	}
}
