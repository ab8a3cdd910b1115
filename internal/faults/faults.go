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
	"io"
	"log/slog"
	"net/http"
	"net/url"
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
	as        *authserver.Server
	tokenPath string
	log       *slog.Logger

	mu            sync.Mutex
	refuseRefresh bool
	tokenStatus   int
	tokenDelay    time.Duration
}

// New returns an Injector in front of as, with no fault set. logger
// receives one record per injected failure; nil discards.
func New(as *authserver.Server, logger *slog.Logger) *Injector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Injector{as: as, log: logger}
	if u, err := url.Parse(as.Metadata().TokenEndpoint); err == nil {
		f.tokenPath = u.Path
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

// ServeHTTP serves the authorization server, with the faults that are set.
func (f *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	if refuse && grantType(r) == oauth.GrantTypeRefreshToken {
		f.log.Info("refresh refused by fault injection")
		writeError(w, oauth.NewError(oauth.ErrorInvalidGrant, "the refresh token was refused (injected fault)"))
		return
	}
	f.as.ServeHTTP(w, r)
}

// grantType returns the grant_type of a token request, leaving its body
// readable for the authorization server.
func grantType(r *http.Request) string {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
	if err != nil {
		return ""
	}
	form, _ := url.ParseQuery(string(body))
	return form.Get("grant_type")
}

// writeError answers as the token endpoint does, CORS header included.
func writeError(w http.ResponseWriter, e *oauth.Error) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	oauth.WriteError(w, e)
}
