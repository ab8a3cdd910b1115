package client_test

// An authorization server that is unreachable, times out or fails keeps
// the refresh token: the request fails with a RefreshUnavailableError,
// without a loop or a sign-in (docs/design.md#client-rule-4).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

// TestRule4_UnavailableKeepsRefreshTokenNoLoop: 5xx and timeouts keep the
// refresh token and do not loop (docs/design.md#client-rule-4).
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

// TestRule4_NonOAuthAnswerKeepsRefreshToken: a token endpoint answer that is
// not an OAuth error (a proxy's page) does not count as a refusal: the
// refresh token is kept (docs/design.md#client-rule-4, not
// docs/design.md#client-rule-3).
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
