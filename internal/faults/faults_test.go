package faults_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/astest"
)

func TestRefuseRefresh(t *testing.T) {
	e := newEnv(t)
	id := e.RegisterPublic(astest.LoopbackRedirect)
	rt := astest.Str(e.Tokens(id, astest.LoopbackRedirect), "refresh_token")

	e.inj.RefuseRefresh(true)
	for i := range 2 { // refused every time, not just once
		st, m := e.Refresh(id, rt)
		astest.WantTokenError(t, fmt.Sprintf("refresh #%d while refused", i+1), st, m, http.StatusBadRequest, "invalid_grant")
	}
	// Only refreshes are refused: a sign-in still works.
	if m := e.Tokens(id, astest.LoopbackRedirect); astest.Str(m, "access_token") == "" {
		t.Fatalf("code exchange while refreshes are refused: %v", m)
	}

	e.inj.RefuseRefresh(false)
	st, m := e.Refresh(id, rt)
	if st != http.StatusOK || astest.Str(m, "access_token") == "" || astest.Str(m, "refresh_token") == "" {
		t.Fatalf("refresh with the same token after RefuseRefresh(false): %d %v", st, m)
	}
	if !e.Active(astest.Str(m, "access_token")) {
		t.Fatal("access token issued after the fault is not active")
	}
}

func TestFailTokenEndpoint(t *testing.T) {
	for _, tt := range []struct {
		status int
		code   string
	}{
		{http.StatusServiceUnavailable, "temporarily_unavailable"},
		{http.StatusInternalServerError, "server_error"},
	} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			e := newEnv(t)
			id := e.RegisterPublic(astest.LoopbackRedirect)
			rt := astest.Str(e.Tokens(id, astest.LoopbackRedirect), "refresh_token")
			verifier, challenge := astest.PKCE()
			code := e.Code(id, astest.LoopbackRedirect, challenge)

			e.inj.FailTokenEndpoint(tt.status)
			form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {id}}
			st, m, h, _ := e.Post(authserver.PathToken, form, nil)
			astest.WantTokenError(t, "refresh during fault", st, m, tt.status, tt.code)
			if cc := h.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
			if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			st, m = e.Exchange(id, astest.LoopbackRedirect, code, verifier)
			astest.WantTokenError(t, "code exchange during fault", st, m, tt.status, tt.code)

			// The failed requests had no effect: neither the refresh token
			// nor the code was consumed.
			e.inj.FailTokenEndpoint(0)
			st, m = e.Refresh(id, rt)
			if st != http.StatusOK || astest.Str(m, "refresh_token") == "" {
				t.Fatalf("refresh after the fault with the same token: %d %v", st, m)
			}
			st, m = e.Exchange(id, astest.LoopbackRedirect, code, verifier)
			if st != http.StatusOK || astest.Str(m, "access_token") == "" {
				t.Fatalf("code exchange after the fault with the same code: %d %v", st, m)
			}
		})
	}
}

// An injected failure is logged, and neither its answer nor the log holds
// what the request carried (client secret, code, code verifier). This was
// part of authserver's TestLogs when the faults lived there.
func TestFailTokenEndpoint_LoggedWithoutSecrets(t *testing.T) {
	e := newEnv(t)
	verifier, _ := astest.PKCE()
	const code = "a-code-that-must-not-be-logged"
	e.inj.FailTokenEndpoint(http.StatusServiceUnavailable)
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {astest.LoopbackRedirect}, "code_verifier": {verifier}}
	st, m, _, body := e.Post(authserver.PathToken, form, []string{astest.RSClientID, astest.RSClientSecret})
	astest.WantTokenError(t, "injected 503", st, m, http.StatusServiceUnavailable, "temporarily_unavailable")
	e.inj.FailTokenEndpoint(0)

	logs := e.Logs.String()
	if !strings.Contains(logs, `"msg":"token request failed by fault injection"`) {
		t.Errorf("no log record %q; got\n%s", "token request failed by fault injection", logs)
	}
	for what, v := range map[string]string{"client secret": astest.RSClientSecret, "code": code, "code verifier": verifier} {
		if strings.Contains(logs, v) {
			t.Errorf("the logs contain the %s", what)
		}
		if strings.Contains(body, v) {
			t.Errorf("the error response contains the %s: %s", what, body)
		}
	}
}

func TestDelayToken(t *testing.T) {
	e := newEnv(t)
	id := e.RegisterPublic(astest.LoopbackRedirect)
	rt := astest.Str(e.Tokens(id, astest.LoopbackRedirect), "refresh_token")
	const d = 300 * time.Millisecond
	e.inj.DelayToken(d)
	start := time.Now()
	st, m := e.Refresh(id, rt)
	if el := time.Since(start); el < d {
		t.Errorf("refresh answered after %v, want at least %v", el, d)
	}
	if st != http.StatusOK {
		t.Fatalf("delayed refresh: %d %v", st, m)
	}
	e.inj.DelayToken(0)
	if st, m := e.Refresh(id, astest.Str(m, "refresh_token")); st != http.StatusOK {
		t.Fatalf("refresh after DelayToken(0): %d %v", st, m)
	}
}

// SetAccessTokenTTL is the authorization server's own control (its tests
// are authserver's TestSetAccessTokenTTL*); the Injector passes it on.
func TestSetAccessTokenTTL(t *testing.T) {
	e := newEnv(t)
	id := e.RegisterPublic(astest.LoopbackRedirect)
	e.inj.SetAccessTokenTTL(2 * time.Second)
	m := e.Tokens(id, astest.LoopbackRedirect)
	if got := m["expires_in"]; got != float64(2) {
		t.Errorf("expires_in = %v, want 2", got)
	}
	e.inj.SetAccessTokenTTL(0)
	st, m := e.Refresh(id, astest.Str(m, "refresh_token"))
	if want := float64(authserver.DefaultAccessTokenTTL / time.Second); st != http.StatusOK || m["expires_in"] != want {
		t.Fatalf("refresh after SetAccessTokenTTL(0): %d expires_in=%v, want %v", st, m["expires_in"], want)
	}
}
