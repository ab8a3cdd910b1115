package authserver_test

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/evergrant/evergrant/authserver"
)

const (
	webRedir    = "https://app.example.test/cb" // a redirect URI off loopback
	nativeRedir = "com.example.app:/oauth"      // a private-use scheme
	// preRegWeb is a pre-registered public client with webRedir.
	preRegWeb = "operator-web-client"
)

// trustEnv is a server with AutoApprove and a real (non-default) user, a
// pre-registered client on webRedir, and Client ID Metadata Documents on
// loopback allowed.
func trustEnv(t *testing.T, mods ...func(*authserver.Config)) *env {
	t.Helper()
	return cimdEnv(t, func(c *authserver.Config) {
		c.Authenticate = authserver.StaticUser("alice")
		c.Clients = append(c.Clients, authserver.ClientConfig{ID: preRegWeb, RedirectURIs: []string{webRedir}, Name: "operator's app"})
		for _, m := range mods {
			m(c)
		}
	})
}

// registerWith registers a public client with the given redirect URIs.
func (e *env) registerWith(redirects ...string) string {
	e.T.Helper()
	st, resp := e.Register(map[string]any{"redirect_uris": redirects, "token_endpoint_auth_method": "none", "client_name": "self-registered"})
	if st != http.StatusCreated {
		e.T.Fatalf("register: %d %v", st, resp)
	}
	return resp["client_id"].(string)
}

// AutoApprove approves without a page only where the redirect is trusted:
// pre-registered clients and loopback redirect URIs. A client anyone can
// create with a redirect URI of its choosing gets the consent page, or a
// victim's click on an attacker's link would send the victim's code to the
// attacker.
func TestAutoApprove_OnlyForTrustedRedirects(t *testing.T) {
	e := trustEnv(t)
	d := newDocServer(t, false, serveDoc(func(doc map[string]any) { doc["redirect_uris"] = []string{webRedir, loopbackRedir} }))
	web := e.registerWith(webRedir, nativeRedir, loopbackRedir, "http://localhost/cb", "http://[::1]/cb")
	for _, tt := range []struct {
		name, client, redirect string
		auto                   bool
	}{
		{"pre-registered, https", preRegWeb, webRedir, true},
		{"self-registered, 127.0.0.1", web, loopbackRedir, true},
		{"self-registered, 127.0.0.1 other port", web, "http://127.0.0.1:5000/callback", true},
		{"self-registered, localhost", web, "http://localhost/cb", true},
		{"self-registered, [::1]", web, "http://[::1]/cb", true},
		{"document, loopback", d.url, loopbackRedir, true},
		{"self-registered, https", web, webRedir, false},
		{"self-registered, private-use scheme", web, nativeRedir, false},
		{"document, https", d.url, webRedir, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, c := pkce()
			q := authParams(tt.client, tt.redirect, c)
			if tt.auto {
				p := redirectParams(t, e.Authorize(q), tt.redirect)
				if p.Get("code") == "" {
					t.Fatalf("auto-approval: %v, want a code", p)
				}
				return
			}
			p := getConsent(t, e, q) // fails unless the consent page is shown
			if !strings.Contains(p.body, "alice") {
				t.Errorf("consent page does not name the user")
			}
			r, _ := submitConsent(t, e, p.form("approve"), p.cookie)
			if q := redirectParams(t, r, tt.redirect); q.Get("code") == "" {
				t.Fatalf("approval: %v, want a code", q)
			}
		})
	}
}

// Errors found before the user acted are redirected only to trusted
// redirect URIs; for a client anyone can create with an https redirect URI
// they are shown on the error page, or the server would be an open
// redirector (RFC 9700 §4.11.2). After the user acted (deny), the error is
// redirected.
func TestAuthorizeErrors_NoOpenRedirect(t *testing.T) {
	var failAuth atomic.Bool
	e := trustEnv(t, func(c *authserver.Config) {
		c.Authenticate = func(http.ResponseWriter, *http.Request) (string, error) {
			if failAuth.Load() {
				return "", errors.New("no session")
			}
			return "alice", nil
		}
	})
	d := newDocServer(t, false, serveDoc(func(doc map[string]any) { doc["redirect_uris"] = []string{webRedir, loopbackRedir} }))
	web := e.registerWith(webRedir, nativeRedir, loopbackRedir)
	bad := map[string]func(url.Values){
		"response_type=token":  func(q url.Values) { q.Set("response_type", "token") },
		"no PKCE":              func(q url.Values) { q.Del("code_challenge") },
		"unknown scope":        func(q url.Values) { q.Set("scope", "admin") },
		"unknown resource":     func(q url.Values) { q.Set("resource", "https://other.example.test/mcp") },
		"authentication fails": func(url.Values) { failAuth.Store(true) },
	}
	for _, tt := range []struct {
		name, client, redirect string
		redirects              bool
	}{
		{"pre-registered, https", preRegWeb, webRedir, true},
		{"self-registered, loopback", web, loopbackRedir, true},
		{"document, loopback", d.url, loopbackRedir, true},
		{"self-registered, https", web, webRedir, false},
		{"self-registered, private-use scheme", web, nativeRedir, false},
		{"document, https", d.url, webRedir, false},
	} {
		for what, mod := range bad {
			t.Run(tt.name+"/"+what, func(t *testing.T) {
				failAuth.Store(false)
				_, c := pkce()
				q := authParams(tt.client, tt.redirect, c)
				mod(q)
				r, body := authorizePage(t, e, q)
				if tt.redirects {
					if p := redirectParams(t, r, tt.redirect); p.Get("error") == "" || p.Get("state") != "st-123" {
						t.Fatalf("error redirect %v, want error and state", p)
					}
					return
				}
				wantErrorPage(t, what, r, body)
			})
		}
	}
	failAuth.Store(false)

	// Deny on the consent page: the user acted, so the client hears of it.
	e2 := trustEnv(t, func(c *authserver.Config) { c.AutoApprove = false })
	web2 := e2.registerWith(webRedir)
	_, c := pkce()
	p := getConsent(t, e2, authParams(web2, webRedir, c))
	r, _ := submitConsent(t, e2, p.form("deny"), p.cookie)
	if q := redirectParams(t, r, webRedir); q.Get("error") != "access_denied" {
		t.Fatalf("deny: %v, want access_denied", q)
	}
}
