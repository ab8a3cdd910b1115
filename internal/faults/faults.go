// Package faults injects failures into an embedded authorization server
// (package authserver) from the outside, for tests and `evergrant check`.
//
// An Injector is an http.Handler in front of an *authserver.Server. When a
// fault is set, it answers requests to the token endpoint itself: it
// refuses refresh grants with invalid_grant, as if the refresh token had
// been revoked; answers every token request with a 5xx status; or holds
// token requests before passing them on. A request it answers never
// reaches the server, so it has no effect there: no code or refresh token
// is consumed.
//
// Shortening the lifetime of access tokens cannot be done from the outside
// (the lifetime is signed into the token). It goes through the server's
// own public Server.SetAccessTokenTTL, and revoking a grant through
// Server.RevokeGrants: the production server has no fault injection of its
// own, and no option that turns one on (docs/design.md#as-rule-20).
// internal/stack puts an Injector in front of the authorization server
// when asked to.
package faults

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

// maxFormBytes bounds the token request body the Injector reads, as the
// authorization server bounds it.
const maxFormBytes = 64 << 10

// Injector serves an authorization server with faults injected into its
// token endpoint. The zero value is not usable; call New. All methods are
// safe for concurrent use.
type Injector struct {
	as            *authserver.Server
	tokenPath     string
	authorizePath string
	log           *slog.Logger

	mu            sync.Mutex
	refuseRefresh bool
	tokenStatus   int
	tokenDelay    time.Duration
	// openIDOffline is set by OpenIDOfflineAccess; noRefresh holds, by
	// state and then by code, the authorizations that get no refresh
	// token.
	openIDOffline bool
	noRefresh     map[string]bool
	// withhold is set by WithholdRefreshTokens.
	withhold bool
}

// maxTracked bounds the authorizations OpenIDOfflineAccess remembers.
const maxTracked = 1000

// New returns an Injector in front of as, with no fault set. logger
// receives one record per injected failure; nil discards.
func New(as *authserver.Server, logger *slog.Logger) *Injector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Injector{as: as, log: logger, noRefresh: map[string]bool{}}
	md := as.Metadata()
	if u, err := url.Parse(md.TokenEndpoint); err == nil {
		f.tokenPath = u.Path
	}
	if u, err := url.Parse(md.AuthorizationEndpoint); err == nil {
		f.authorizePath = u.Path
	}
	return f
}

// RefuseRefresh makes every refresh_token grant fail with invalid_grant
// while on is true, as if the refresh token had been revoked. The refresh
// token is not consumed: it works again once on is false.
func (f *Injector) RefuseRefresh(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuseRefresh = on
}

// FailTokenEndpoint makes the token endpoint answer every request with the
// given HTTP status (for example 503, with the OAuth error
// temporarily_unavailable; server_error for other statuses) and no effect.
// Zero turns it off.
func (f *Injector) FailTokenEndpoint(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenStatus = status
}

// DelayToken makes the token endpoint wait d before answering (or until
// the request is cancelled). Zero turns it off.
func (f *Injector) DelayToken(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenDelay = d
}

// SetAccessTokenTTL overrides the lifetime of access tokens issued from now
// on. Zero restores the configured lifetime. It is the authorization
// server's own Server.SetAccessTokenTTL.
func (f *Injector) SetAccessTokenTTL(d time.Duration) {
	f.as.SetAccessTokenTTL(d)
}

// OpenIDOfflineAccess makes the server behave, while on is true, like an
// OpenID provider that follows OpenID Connect Core 1.0 §11: an
// authorization request that asks for offline_access without
// prompt=consent yields tokens without a refresh token (the server keeps
// the one it issued; the client never sees it). panva's oidc-provider, for
// one, does this by default.
func (f *Injector) OpenIDOfflineAccess(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.openIDOffline = on
	clear(f.noRefresh)
}

// WithholdRefreshTokens makes every code exchange answer without a refresh
// token while on is true, as an authorization server that issues none
// would (the server keeps the one it issued; the client never sees it).
func (f *Injector) WithholdRefreshTokens(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.withhold = on
}

// track remembers that the authorization under key (a state, then a code)
// gets no refresh token.
func (f *Injector) track(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.noRefresh) >= maxTracked {
		clear(f.noRefresh)
	}
	f.noRefresh[key] = true
}

// tracked reports whether the authorization under key gets no refresh
// token.
func (f *Injector) tracked(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.noRefresh[key]
}

// ServeHTTP serves the authorization server, with the faults that are set.
func (f *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	openID := f.openIDOffline
	f.mu.Unlock()
	if openID && (r.Method != http.MethodPost || r.URL.Path != f.tokenPath) {
		f.serveOpenID(w, r)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != f.tokenPath {
		f.as.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	refuse, status, delay := f.refuseRefresh, f.tokenStatus, f.tokenDelay
	f.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	if status != 0 {
		code := oauth.ErrorServerError
		if status == http.StatusServiceUnavailable {
			code = oauth.ErrorTemporarilyUnavailable
		}
		f.log.Info("token request failed by fault injection", "status", status)
		writeError(w, &oauth.Error{Code: code, Description: "injected fault", StatusCode: status})
		return
	}
	form := tokenForm(r)
	if refuse && form.Get("grant_type") == oauth.GrantTypeRefreshToken {
		f.log.Info("refresh refused by fault injection")
		writeError(w, oauth.NewError(oauth.ErrorInvalidGrant, "the refresh token was refused (injected fault)"))
		return
	}
	f.mu.Lock()
	withhold := f.withhold
	f.mu.Unlock()
	if form.Get("grant_type") == oauth.GrantTypeAuthorizationCode && (withhold || f.tracked("code:"+form.Get("code"))) {
		f.withoutRefreshToken(w, r)
		return
	}
	f.as.ServeHTTP(w, r)
}

// serveOpenID serves a request other than a token request while
// OpenIDOfflineAccess is on: it notes the authorization requests that ask
// for offline_access without prompt=consent (by state), and the codes the
// server then issues for them (from the redirect's Location).
func (f *Injector) serveOpenID(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == f.authorizePath {
		q := r.URL.Query()
		if slices.Contains(oauth.ParseScope(q.Get("scope")), oauth.ScopeOfflineAccess) && q.Get("prompt") != "consent" && q.Get("state") != "" {
			f.track("state:" + q.Get("state"))
		}
	}
	f.as.ServeHTTP(&codeWatcher{ResponseWriter: w, f: f}, r)
}

// codeWatcher passes a response through, noting the code of a redirect
// that ends an authorization OpenIDOfflineAccess tracks.
type codeWatcher struct {
	http.ResponseWriter
	f *Injector
}

func (c *codeWatcher) WriteHeader(status int) {
	if loc := c.Header().Get("Location"); loc != "" {
		if u, err := url.Parse(loc); err == nil {
			q := u.Query()
			if code, state := q.Get("code"), q.Get("state"); code != "" && c.f.tracked("state:"+state) {
				c.f.track("code:" + code)
			}
		}
	}
	c.ResponseWriter.WriteHeader(status)
}

func (c *codeWatcher) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// withoutRefreshToken serves a code exchange and drops the refresh token
// from a successful answer.
func (f *Injector) withoutRefreshToken(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	f.as.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err == nil {
			delete(m, "refresh_token")
			if b, err := json.Marshal(m); err == nil {
				body = b
				f.log.Info("refresh token withheld: offline_access without prompt=consent")
			}
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.Code)
	w.Write(body)
}

// tokenForm returns the form of a token request, leaving its body readable
// for the authorization server.
func tokenForm(r *http.Request) url.Values {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
	if err != nil {
		return nil
	}
	form, _ := url.ParseQuery(string(body))
	return form
}

// writeError answers as the token endpoint does, CORS header included.
func writeError(w http.ResponseWriter, e *oauth.Error) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	oauth.WriteError(w, e)
}
