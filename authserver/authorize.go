package authserver

import (
	"container/list"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

const (
	pendingTTL = 10 * time.Minute
	// maxPending bounds the consent requests waiting for an answer; when
	// full, the oldest is dropped so that a new sign-in always gets a page.
	maxPending     = 10000
	csrfCookieName = "evergrant_csrf"
)

// authRequest is a validated authorization request (RFC 6749 §4.1.1 with
// RFC 7636 §4.3 and RFC 8707 §2).
type authRequest struct {
	client      *Client
	redirectURI string
	state       string
	challenge   string
	scopes      []string
	resource    string
}

// pendingAuth is an authorization request waiting for the user's consent.
type pendingAuth struct {
	req     authRequest
	subject string
	csrf    string
	expires time.Time
	elem    *list.Element // in Server.pendingOrder
}

// handleAuthorize is the authorization endpoint (RFC 6749 §3.1). Errors
// about the client or the redirect URI are shown to the user and never
// redirected (RFC 6749 §4.1.2.1). Other errors found before the user acted
// are sent to the redirect URI with state and iss only when the redirect is
// trusted (see trustedRedirect); otherwise they are shown too, so the
// endpoint is no open redirector (RFC 9700 §4.11.2).
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		s.errorPage(w, http.StatusMethodNotAllowed, "This endpoint accepts GET and POST only.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, http.StatusBadRequest, "The authorization request could not be read.")
		return
	}
	q := r.Form
	for _, p := range []string{"client_id", "redirect_uri"} {
		if len(q[p]) > 1 {
			s.errorPage(w, http.StatusBadRequest, "The parameter "+p+" is repeated.")
			return
		}
	}
	client, err := s.lookupClient(r.Context(), q.Get("client_id"))
	if errors.Is(err, errStoreFailed) {
		s.storeFailed("authorization: load client", err)
		s.unavailablePage(w)
		return
	}
	if err != nil {
		s.log.Info("authorization refused", "reason", "client", "error", err)
		// The detail (which may describe this server's network) goes to the
		// log only.
		s.errorPage(w, http.StatusBadRequest, "The application that sent you here is not known to this server, or its description could not be loaded.")
		return
	}
	redirectURI := q.Get("redirect_uri")
	if !redirectAllowed(client, redirectURI) {
		s.log.Info("authorization refused", "reason", "redirect_uri mismatch", "client_id", clip(client.ID))
		s.errorPage(w, http.StatusBadRequest, "The redirect URI of this request is not registered for the application, so this server will not send you back to it.")
		return
	}
	req := authRequest{client: client, redirectURI: redirectURI, state: q.Get("state")}
	if e := s.parseAuthRequest(q, &req); e != nil {
		s.log.Info("authorization refused", "reason", e.Code, "client_id", clip(client.ID))
		s.requestError(w, r, &req, e)
		return
	}
	subject, err := s.cfg.Authenticate(w, r)
	if errors.Is(err, ErrResponseWritten) {
		return
	}
	if err != nil || subject == "" {
		s.log.Info("authorization refused", "reason", "authentication failed", "client_id", clip(client.ID))
		s.requestError(w, r, &req, oauth.NewError(oauth.ErrorAccessDenied, "the user could not be authenticated"))
		return
	}
	if s.cfg.AutoApprove && trustedRedirect(client, redirectURI) {
		s.approve(w, r, &req, subject)
		return
	}
	s.showConsent(w, r, &req, subject)
}

// parseAuthRequest checks everything after client and redirect URI.
func (s *Server) parseAuthRequest(q url.Values, req *authRequest) *oauth.Error {
	for _, p := range []string{"response_type", "state", "code_challenge", "code_challenge_method", "scope", "resource"} {
		if len(q[p]) > 1 {
			return oauth.NewError(oauth.ErrorInvalidRequest, "parameter %s is repeated", p) // RFC 6749 §3.1
		}
	}
	if q.Get("response_type") != "code" {
		return oauth.NewError(oauth.ErrorUnsupportedResponseType, "only response_type=code is supported")
	}
	if !req.client.AllowsGrant(oauth.GrantTypeAuthorizationCode) {
		return oauth.NewError(oauth.ErrorUnauthorizedClient, "the client may not use the authorization code grant")
	}
	// PKCE S256 only (RFC 7636 §4.3; OAuth 2.1 §4.1.1). A missing method
	// means "plain", which is refused too.
	challenge := q.Get("code_challenge")
	if challenge == "" {
		return oauth.NewError(oauth.ErrorInvalidRequest, "code_challenge is required (PKCE)")
	}
	if m := q.Get("code_challenge_method"); m != oauth.CodeChallengeMethodS256 {
		return oauth.NewError(oauth.ErrorInvalidRequest, "code_challenge_method must be S256")
	}
	if len(challenge) != 43 || !isBase64URL(challenge) {
		return oauth.NewError(oauth.ErrorInvalidRequest, "code_challenge is not a base64url SHA-256 value")
	}
	req.challenge = challenge
	scopes, e := s.requestedScopes(q.Get("scope"))
	if e != nil {
		return e
	}
	req.scopes = scopes
	res, e := s.requestedResource(q.Get("resource"))
	if e != nil {
		return e
	}
	req.resource = res
	return nil
}

// requestedScopes validates a scope parameter against the supported scopes;
// empty gives the default scopes.
func (s *Server) requestedScopes(raw string) ([]string, *oauth.Error) {
	scopes := oauth.ParseScope(raw)
	if len(scopes) == 0 {
		return slices.Clone(s.defaults), nil
	}
	for _, sc := range scopes {
		if !s.scopeSupported(sc) {
			return nil, oauth.NewError(oauth.ErrorInvalidScope, "scope %q is not supported", clip(sc))
		}
	}
	return scopes, nil
}

func (s *Server) scopeSupported(sc string) bool {
	return sc == oauth.ScopeOfflineAccess || slices.Contains(s.scopes, sc)
}

// requestedResource applies RFC 8707: the resource must be one this server
// issues tokens for.
func (s *Server) requestedResource(raw string) (string, *oauth.Error) {
	if raw == "" {
		if len(s.cfg.Resources) == 1 {
			return s.cfg.Resources[0], nil
		}
		return "", oauth.NewError(oauth.ErrorInvalidTarget, "the resource parameter is required")
	}
	c, err := oauth.CanonicalResource(raw)
	if err != nil {
		return "", oauth.NewError(oauth.ErrorInvalidTarget, "the resource is not a valid resource URI")
	}
	if len(s.cfg.Resources) == 0 {
		if err := oauth.CheckEndpointURL(c); err != nil {
			return "", oauth.NewError(oauth.ErrorInvalidTarget, "the resource must use https")
		}
		return c, nil
	}
	if !slices.Contains(s.cfg.Resources, c) {
		return "", oauth.NewError(oauth.ErrorInvalidTarget, "this server does not issue tokens for that resource")
	}
	return c, nil
}

// trustedRedirect reports whether the browser may be sent to redirectURI
// without the user having acted on a page of this server: the client was
// pre-registered by the operator, or redirectURI is on a loopback host, so it
// reaches the user's own machine (RFC 8252 §7.3). A self-registered or
// document client chose its redirect URIs itself, and anyone can create one.
func trustedRedirect(c *Client, redirectURI string) bool {
	if !c.Dynamic && !c.FromDocument {
		return true
	}
	u, err := url.Parse(redirectURI)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && oauth.IsLoopbackHost(u.Hostname())
}

// requestError answers an error in an authorization request found before
// the user acted: sent to the redirect URI when that is trusted, otherwise
// shown on the error page (RFC 9700 §4.11.2: an error redirect to a URI
// anyone may register would make this server an open redirector).
func (s *Server) requestError(w http.ResponseWriter, r *http.Request, req *authRequest, e *oauth.Error) {
	if trustedRedirect(req.client, req.redirectURI) {
		s.redirectError(w, r, req, e)
		return
	}
	msg := "The application's authorization request was refused (" + e.Code + ")"
	if e.Description != "" {
		msg += ": " + e.Description
	}
	s.errorPage(w, http.StatusBadRequest, msg+".")
}

// redirectError sends an error to the client's redirect URI with state and
// iss (RFC 6749 §4.1.2.1, RFC 9207 §2).
func (s *Server) redirectError(w http.ResponseWriter, r *http.Request, req *authRequest, e *oauth.Error) {
	v := url.Values{"error": {e.Code}}
	if e.Description != "" {
		v.Set("error_description", e.Description)
	}
	s.redirect(w, r, req, v)
}

func (s *Server) redirect(w http.ResponseWriter, r *http.Request, req *authRequest, v url.Values) {
	if req.state != "" {
		v.Set("state", req.state)
	}
	v.Set("iss", s.cfg.Issuer)
	u, _ := url.Parse(req.redirectURI) // validated before
	q := u.Query()
	for k, vs := range v {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	status := http.StatusFound
	if r.Method == http.MethodPost {
		status = http.StatusSeeOther
	}
	http.Redirect(w, r, u.String(), status)
}

// approve issues an authorization code for req and redirects to the client.
func (s *Server) approve(w http.ResponseWriter, r *http.Request, req *authRequest, subject string) {
	now := s.now()
	g := &Grant{
		ID: randomToken(16), ClientID: req.client.ID, Subject: subject, Resource: req.resource,
		Scopes: req.scopes, CreatedAt: now, ExpiresAt: now.Add(s.cfg.CodeTTL),
	}
	code := randomToken(32)
	c := &Code{
		Hash: hashSecret(code), GrantID: g.ID, ClientID: req.client.ID, RedirectURI: req.redirectURI,
		CodeChallenge: req.challenge, Scopes: req.scopes, Resource: req.resource, Subject: subject,
		ExpiresAt: now.Add(s.cfg.CodeTTL),
	}
	// A Store failure is shown, not sent to the client: the user can
	// retry from the page they came from (docs/design.md#as-rule-21).
	if err := s.store.SaveGrant(r.Context(), g); err != nil {
		s.storeFailed("save grant", err, "grant_id", g.ID)
		s.unavailablePage(w)
		return
	}
	if err := s.store.SaveCode(r.Context(), c); err != nil {
		s.storeFailed("save code", err, "grant_id", g.ID)
		s.unavailablePage(w)
		return
	}
	s.log.Info("authorization code issued", "client_id", clip(req.client.ID), "grant_id", g.ID, "subject", subject,
		"scope", oauth.FormatScope(req.scopes), "resource", req.resource)
	s.redirect(w, r, req, url.Values{"code": {code}})
}

var consentPage = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Authorize {{.ClientName}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:3em auto;padding:0 1em;color:#222}
code{background:#f3f3f3;padding:0 .2em}ul{padding-left:1.2em}.actions{margin-top:2em;display:flex;gap:1em}
button{font:inherit;padding:.5em 1.2em;border-radius:.3em;border:1px solid #888;background:#fff;cursor:pointer}
button.primary{background:#1a5fd0;border-color:#1a5fd0;color:#fff}.muted{color:#666;font-size:.9em}</style></head>
<body><h1>Authorize {{.ClientName}}?</h1>
<p><strong>{{.ClientName}}</strong> wants to act as <strong>{{.Subject}}</strong> on <code>{{.Resource}}</code>.</p>
{{if .Scopes}}<p>It asks for:</p><ul>{{range .Scopes}}<li><code>{{.Name}}</code>{{if .Meaning}} — {{.Meaning}}{{end}}</li>{{end}}</ul>{{end}}
<p class="muted">{{if .Verified}}The application is described at <code>{{.Verified}}</code>.{{else}}The application chose its name itself; this server has not verified it.{{end}}
After you decide you will be sent back to <code>{{.RedirectHost}}</code>. You are signing in at <code>{{.Issuer}}</code>.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="request" value="{{.Request}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<div class="actions"><button class="primary" id="approve" type="submit" name="action" value="approve">Approve</button>
<button id="deny" type="submit" name="action" value="deny">Deny</button></div></form></body></html>
`))

var errorPageTmpl = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Authorization error</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:3em auto;padding:0 1em;color:#222}</style></head>
<body><h1>Authorization error</h1><p id="message">{{.}}</p></body></html>
`))

// setPageHeaders forbids framing (clickjacking), caching and referrers on
// the HTML pages.
func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
}

// unavailablePage answers an authorization request that failed because
// the Store did: 503 with Retry-After, and no redirect to the client.
func (s *Server) unavailablePage(w http.ResponseWriter) {
	w.Header().Set("Retry-After", retryAfter)
	s.errorPage(w, http.StatusServiceUnavailable, "The authorization server is temporarily unavailable. Try again in a moment.")
}

func (s *Server) errorPage(w http.ResponseWriter, status int, msg string) {
	setPageHeaders(w)
	w.WriteHeader(status)
	errorPageTmpl.Execute(w, msg)
}

func (s *Server) showConsent(w http.ResponseWriter, r *http.Request, req *authRequest, subject string) {
	now := s.now()
	id, csrf := randomToken(24), randomToken(24)
	p := &pendingAuth{req: *req, subject: subject, csrf: csrf, expires: now.Add(pendingTTL)}
	s.mu.Lock()
	evicted := 0
	for len(s.pending) >= max(s.maxPending, 1) {
		s.removePendingLocked(s.pendingOrder.Front().Value.(string))
		evicted++
	}
	p.elem = s.pendingOrder.PushBack(id)
	s.pending[id] = p
	logEviction := evicted > 0 && now.Sub(s.lastEvictLog) >= time.Minute
	if logEviction {
		s.lastEvictLog = now
	}
	s.mu.Unlock()
	if logEviction {
		s.log.Warn("too many pending consent requests; the oldest were dropped", "max", s.maxPending)
	}

	http.SetCookie(w, &http.Cookie{
		Name: csrfCookie(id), Value: csrf, Path: s.prefix + PathConsent, HttpOnly: true,
		Secure: s.issuer.Scheme == "https", SameSite: http.SameSiteStrictMode, MaxAge: int(pendingTTL.Seconds()),
	})
	name := req.client.Metadata.ClientName
	if name == "" {
		name = "An application"
	}
	ru, _ := url.Parse(req.redirectURI)
	redirectHost := ru.Scheme + "://" + ru.Host
	if ru.Host == "" {
		redirectHost = ru.Scheme + ":"
	}
	type scope struct{ Name, Meaning string }
	var scopes []scope
	for _, sc := range req.scopes {
		m := ""
		if sc == oauth.ScopeOfflineAccess {
			m = "stay connected: renew access without asking you again, until you sign out"
		}
		scopes = append(scopes, scope{sc, m})
	}
	verified := ""
	if req.client.FromDocument {
		verified = req.client.ID // the client ID metadata document's URL
	}
	data := map[string]any{
		"ClientName": name, "Verified": verified, "Subject": subject, "Resource": req.resource,
		"Scopes": scopes, "RedirectHost": redirectHost, "Issuer": s.cfg.Issuer, "Action": s.prefix + PathConsent,
		"Request": id, "CSRF": csrf,
	}
	setPageHeaders(w)
	if err := consentPage.Execute(w, data); err != nil {
		s.log.Error("render consent page", "error", err)
	}
}

// handleConsent receives the consent form. The form must carry the pending
// request id and a CSRF token equal to the cookie set with the page.
func (s *Server) handleConsent(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.errorPage(w, http.StatusMethodNotAllowed, "This endpoint accepts POST only.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, http.StatusBadRequest, "The form could not be read.")
		return
	}
	id, csrf := r.PostForm.Get("request"), r.PostForm.Get("csrf")
	cookie, err := r.Cookie(csrfCookie(id))
	s.mu.Lock()
	p, ok := s.pending[id]
	valid := ok && err == nil && csrf != "" &&
		subtle.ConstantTimeCompare([]byte(csrf), []byte(p.csrf)) == 1 &&
		subtle.ConstantTimeCompare([]byte(cookie.Value), []byte(p.csrf)) == 1 &&
		s.now().Before(p.expires)
	if valid {
		s.removePendingLocked(id) // single use
	}
	s.mu.Unlock()
	if !valid {
		s.log.Info("consent refused", "reason", "missing or invalid CSRF token or request")
		s.errorPage(w, http.StatusForbidden, "This consent form is invalid or has expired. Start the sign-in again from the application.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: csrfCookie(id), Path: s.prefix + PathConsent, MaxAge: -1})
	switch r.PostForm.Get("action") {
	case "approve":
		s.approve(w, r, &p.req, p.subject)
	default:
		s.log.Info("authorization denied by user", "client_id", clip(p.req.client.ID))
		s.redirectError(w, r, &p.req, oauth.NewError(oauth.ErrorAccessDenied, "the user denied the request"))
	}
}

// removePendingLocked forgets the pending consent request id. s.mu must be
// held.
func (s *Server) removePendingLocked(id string) {
	if p, ok := s.pending[id]; ok {
		s.pendingOrder.Remove(p.elem)
		delete(s.pending, id)
	}
}

// dropExpiredPendingLocked forgets expired pending consent requests. They
// all live pendingTTL, so the oldest expire first and the walk stops at the
// first live one. s.mu must be held.
func (s *Server) dropExpiredPendingLocked(now time.Time) {
	for e := s.pendingOrder.Front(); e != nil; e = s.pendingOrder.Front() {
		id := e.Value.(string)
		if !now.After(s.pending[id].expires) {
			return
		}
		s.removePendingLocked(id)
	}
}

// csrfCookie names the CSRF cookie of one consent page, so several pages
// open in one browser do not overwrite each other's cookie.
func csrfCookie(requestID string) string {
	if len(requestID) > 12 {
		requestID = requestID[:12]
	}
	return csrfCookieName + "_" + requestID
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validVerifier checks RFC 7636 §4.1: 43 to 128 unreserved characters.
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0) {
			return false
		}
	}
	return true
}

// s256 is the RFC 7636 §4.2 S256 transformation.
func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// validScopeToken checks RFC 6749 §3.3 scope-token syntax.
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
