package authserver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// accessClaims are the claims of a JWT access token (RFC 9068 §2.2).
type accessClaims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Audience  string `json:"aud"`
	Expiry    int64  `json:"exp"`
	IssuedAt  int64  `json:"iat"`
	NotBefore int64  `json:"nbf"`
	ID        string `json:"jti"`
	ClientID  string `json:"client_id"`
	Scope     string `json:"scope,omitempty"`
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func writeJSONCacheable(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// handleToken is the token endpoint (RFC 6749 §3.2).
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if allowCORS(w, r, "POST") {
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "the request body could not be parsed as a form"))
		return
	}
	for k, vs := range r.PostForm {
		if len(vs) > 1 {
			oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "parameter %s is repeated", clip(k)))
			return
		}
	}
	client := s.authenticateClient(w, r)
	if client == nil {
		return
	}
	gt := r.PostForm.Get("grant_type")
	if gt != oauth.GrantTypeAuthorizationCode && gt != oauth.GrantTypeRefreshToken {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorUnsupportedGrantType, "unsupported grant_type"))
		return
	}
	if !client.AllowsGrant(gt) {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorUnauthorizedClient, "the client may not use the %s grant", gt))
		return
	}
	var resp *oauth.TokenResponse
	var e *oauth.Error
	if gt == oauth.GrantTypeAuthorizationCode {
		resp, e = s.exchangeCode(r.Context(), client, r)
	} else {
		resp, e = s.refresh(r.Context(), client, r)
	}
	if e != nil {
		writeError(w, e)
		return
	}
	oauth.WriteJSON(w, http.StatusOK, resp)
}

var errServer = oauth.NewError(oauth.ErrorServerError, "internal error")

// errUnavailable answers a request that failed because the Store did: an
// outage, not a refusal. Clients keep their tokens and retry
// (docs/design.md#as-rule-21, #client-rule-4).
var errUnavailable = &oauth.Error{
	Code:        oauth.ErrorTemporarilyUnavailable,
	Description: "the authorization server's storage is unavailable; try again later",
	StatusCode:  http.StatusServiceUnavailable,
}

// retryAfter is the Retry-After, in seconds, of a 503 answer.
const retryAfter = "5"

// writeError writes e like oauth.WriteError, with Retry-After when e is
// an outage (RFC 9110 §10.2.3).
func writeError(w http.ResponseWriter, e *oauth.Error) {
	if e.Status() == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	oauth.WriteError(w, e)
}

// storeFailed logs a Store error other than ErrNotFound and returns the
// outage answer for it.
func (s *Server) storeFailed(msg string, err error, args ...any) *oauth.Error {
	s.log.Error(msg, append(args, "error", err)...)
	return errUnavailable
}

// exchangeCode is the authorization code grant (RFC 6749 §4.1.3) with PKCE
// verification (RFC 7636 §4.6). A code is good once; presenting it again
// revokes the grant it created (RFC 6749 §4.1.2, RFC 9700 §4.5).
func (s *Server) exchangeCode(ctx context.Context, client *Client, r *http.Request) (*oauth.TokenResponse, *oauth.Error) {
	raw := r.PostForm.Get("code")
	if raw == "" {
		return nil, oauth.NewError(oauth.ErrorInvalidRequest, "code is required")
	}
	code, err := s.store.TakeCode(ctx, hashSecret(raw))
	switch {
	case errors.Is(err, ErrCodeUsed):
		if err := s.store.RevokeGrant(ctx, code.GrantID); err != nil && !errors.Is(err, ErrNotFound) {
			// Answer the outage, so that the replay is retried and
			// revokes the grant once the store is back.
			return nil, s.storeFailed("revoke grant after code replay", err, "grant_id", code.GrantID)
		}
		s.log.Warn("authorization code replayed; grant revoked", "client_id", clip(client.ID), "grant_id", code.GrantID)
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the authorization code was already used")
	case errors.Is(err, ErrNotFound):
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "unknown authorization code")
	case err != nil:
		return nil, s.storeFailed("take code", err)
	}
	now := s.now()
	switch {
	case code.ClientID != client.ID:
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the authorization code was issued to another client")
	case now.After(code.ExpiresAt):
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the authorization code has expired")
	case r.PostForm.Get("redirect_uri") != code.RedirectURI:
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "redirect_uri does not match the authorization request")
	}
	verifier := r.PostForm.Get("code_verifier")
	if verifier == "" {
		return nil, oauth.NewError(oauth.ErrorInvalidRequest, "code_verifier is required (PKCE)")
	}
	if !validVerifier(verifier) || subtle.ConstantTimeCompare([]byte(s256(verifier)), []byte(code.CodeChallenge)) != 1 {
		s.log.Info("token request refused", "reason", "PKCE verification failed", "client_id", clip(client.ID))
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "PKCE verification failed")
	}
	if res := r.PostForm.Get("resource"); res != "" && !oauth.SameResource(res, code.Resource) {
		return nil, oauth.NewError(oauth.ErrorInvalidTarget, "resource does not match the authorization request")
	}
	g, e := s.grant(ctx, code.GrantID)
	if e != nil {
		return nil, e
	}
	return s.issue(ctx, client, g, g.Scopes, nil, "authorization_code")
}

// refresh is the refresh token grant (RFC 6749 §6) with rotation: every use
// returns a new refresh token and retires the old one. Presenting a retired
// token again revokes the whole grant (RFC 9700 §4.14.2), unless it comes
// within Config.RefreshReuseGrace of the rotation and its successor was not
// used yet: then the successor is retired in its place (see reused).
func (s *Server) refresh(ctx context.Context, client *Client, r *http.Request) (*oauth.TokenResponse, *oauth.Error) {
	raw := r.PostForm.Get("refresh_token")
	if raw == "" {
		return nil, oauth.NewError(oauth.ErrorInvalidRequest, "refresh_token is required")
	}
	rt, err := s.store.RefreshToken(ctx, hashSecret(raw))
	if errors.Is(err, ErrNotFound) {
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "unknown refresh token")
	}
	if err != nil {
		return nil, s.storeFailed("load refresh token", err)
	}
	now := s.now()
	if rt.ClientID != client.ID {
		s.log.Warn("refresh token presented by another client", "client_id", clip(client.ID), "grant_id", rt.GrantID)
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the refresh token was issued to another client")
	}
	g, e := s.grant(ctx, rt.GrantID)
	if e != nil {
		return nil, e
	}
	if now.After(rt.ExpiresAt) {
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the refresh token has expired")
	}
	if !rt.RotatedAt.IsZero() {
		if e := s.reused(ctx, rt, now); e != nil {
			return nil, e
		}
	}
	if res := r.PostForm.Get("resource"); res != "" && !oauth.SameResource(res, g.Resource) {
		return nil, oauth.NewError(oauth.ErrorInvalidTarget, "the refresh token is bound to another resource")
	}
	scopes := g.Scopes
	if raw := r.PostForm.Get("scope"); raw != "" {
		scopes = oauth.ParseScope(raw)
		for _, sc := range scopes {
			if !slices.Contains(g.Scopes, sc) {
				return nil, oauth.NewError(oauth.ErrorInvalidScope, "scope %q exceeds the grant", clip(sc))
			}
		}
	}
	return s.issue(ctx, client, g, scopes, rt, "refresh_token")
}

// grant loads the grant id for issuing tokens of it: a revoked or unknown
// grant is invalid_grant, a Store failure an outage.
func (s *Server) grant(ctx context.Context, id string) (*Grant, *oauth.Error) {
	g, err := s.store.Grant(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the grant was revoked")
	case err != nil:
		return nil, s.storeFailed("load grant", err, "grant_id", id)
	case g.Revoked:
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the grant was revoked")
	}
	return g, nil
}

// pruneRefreshTokens bounds the retired refresh tokens kept for grant id
// to Config.RefreshTokenHistory, when the Store can. A failure is logged
// only: the rotation it follows has committed.
func (s *Server) pruneRefreshTokens(ctx context.Context, id string) {
	p, ok := s.store.(RefreshTokenPruner)
	if !ok || s.cfg.RefreshTokenHistory < 0 {
		return
	}
	if err := p.PruneRefreshTokens(ctx, id, s.cfg.RefreshTokenHistory); err != nil {
		s.log.Warn("prune retired refresh tokens", "grant_id", id, "error", err)
	}
}

// reused decides about a refresh token that was already rotated. Inside
// Config.RefreshReuseGrace it accepts the reuse when the token's successor
// is still live and was really issued for it (not a retired one); issue then
// retires that successor in favour of the token it mints, so the grant never
// has more than one live refresh token. Anything else revokes the grant.
func (s *Server) reused(ctx context.Context, rt *RefreshToken, now time.Time) *oauth.Error {
	reason := "outside the grace window"
	if g := s.cfg.RefreshReuseGrace; g > 0 && now.Sub(rt.RotatedAt) <= g {
		var e *oauth.Error
		if reason, e = s.graceReuse(ctx, rt); e != nil {
			return e
		}
		if reason == "" {
			s.log.Info("rotated refresh token reused within the grace window; its successor is retired", "grant_id", rt.GrantID)
			return nil
		}
	}
	return s.revokeForReuse(ctx, rt, reason)
}

// graceReuse checks whether a reuse of rt inside the grace window may be
// served: it returns "" if so, or why not.
func (s *Server) graceReuse(ctx context.Context, rt *RefreshToken) (reason string, e *oauth.Error) {
	if rt.Successor == "" {
		return "no successor recorded", nil
	}
	succ, err := s.store.RefreshToken(ctx, rt.Successor)
	switch {
	case errors.Is(err, ErrNotFound):
		return "the successor is gone", nil
	case err != nil:
		return "", s.storeFailed("load successor refresh token", err, "grant_id", rt.GrantID)
	case succ.ReplacedUnused:
		// rt was retired unused when its predecessor was replayed: two
		// parties hold tokens of this grant.
		return "the token was retired unused", nil
	case !succ.RotatedAt.IsZero():
		return "the successor was used already", nil
	}
	return "", nil
}

// retireSuccessor serves an accepted reuse of the rotated token prev: it
// rotates prev's successor, which its holder never exchanged, into next.
// If the successor was used meanwhile, the grant is revoked.
func (s *Server) retireSuccessor(ctx context.Context, prev *RefreshToken, now time.Time, next *RefreshToken) *oauth.Error {
	next.ReplacedUnused = true
	err := s.store.RotateRefreshToken(ctx, prev.Successor, now, next)
	switch {
	case errors.Is(err, ErrRefreshTokenRotated), errors.Is(err, ErrNotFound):
		return s.revokeForReuse(ctx, prev, "the successor was used meanwhile")
	case err != nil:
		return s.storeFailed("retire successor refresh token", err, "grant_id", prev.GrantID)
	}
	return nil
}

// revokeForReuse revokes the grant of a rotated refresh token that was
// presented again (RFC 9700 §4.14.2).
func (s *Server) revokeForReuse(ctx context.Context, rt *RefreshToken, reason string) *oauth.Error {
	if err := s.store.RevokeGrant(ctx, rt.GrantID); err != nil && !errors.Is(err, ErrNotFound) {
		// Answer the outage, so that the reuse is retried and revokes
		// the grant once the store is back.
		return s.storeFailed("revoke grant after refresh token reuse", err, "grant_id", rt.GrantID)
	}
	s.log.Warn("rotated refresh token reused; grant revoked", "client_id", clip(rt.ClientID), "grant_id", rt.GrantID, "reason", reason)
	return oauth.NewError(oauth.ErrorInvalidGrant, "the refresh token was already used; the grant is revoked")
}

// issue mints an access token and, when the client may refresh, a refresh
// token. With prev set and unrotated, prev is rotated to the new refresh
// token atomically; with prev already rotated (a reuse that reused
// accepted), prev's successor is retired in favour of the new token.
func (s *Server) issue(ctx context.Context, client *Client, g *Grant, scopes []string, prev *RefreshToken, via string) (*oauth.TokenResponse, *oauth.Error) {
	now := s.now()
	ttl := s.cfg.AccessTokenTTL
	if d := time.Duration(s.accessTTL.Load()); d > 0 {
		ttl = d
	}
	// Whole seconds, rounded up: the token lives at least expires_in from
	// now (exp is rounded up too), so a client that computes its expiry
	// from expires_in never holds a token that expired earlier.
	secs := int64((ttl + time.Second - 1) / time.Second)
	ttl = time.Duration(secs) * time.Second
	expUnix := now.Add(ttl).Unix()
	if now.Add(ttl).After(time.Unix(expUnix, 0)) {
		expUnix++
	}
	expiresAt := time.Unix(expUnix, 0)
	resp := &oauth.TokenResponse{TokenType: oauth.TokenTypeBearer, ExpiresIn: secs, Scope: oauth.FormatScope(scopes)}

	var next *RefreshToken
	if client.AllowsGrant(oauth.GrantTypeRefreshToken) {
		resp.RefreshToken = randomToken(32)
		next = &RefreshToken{
			Hash: hashSecret(resp.RefreshToken), GrantID: g.ID, ClientID: client.ID, Scopes: g.Scopes,
			IssuedAt: now, ExpiresAt: now.Add(s.cfg.RefreshTokenTTL),
		}
	}

	jti := randomToken(16)
	claims := accessClaims{
		Issuer: s.cfg.Issuer, Subject: g.Subject, Audience: g.Resource, Expiry: expUnix,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), ID: jti, ClientID: client.ID, Scope: oauth.FormatScope(scopes),
	}
	at, err := s.keys.sign(claims)
	if err != nil {
		s.log.Error("sign access token", "error", err)
		return nil, errServer
	}
	// Everything that may fail is written before the refresh token is
	// rotated: a request that fails on the way leaves the presented
	// refresh token as it was, so that the client, told the server is
	// unavailable, can retry with it (docs/design.md#as-rule-21).
	rec := &AccessToken{JTI: jti, GrantID: g.ID, ClientID: client.ID, Subject: g.Subject, Resource: g.Resource,
		Scopes: scopes, IssuedAt: now, ExpiresAt: expiresAt}
	if err := s.store.SaveAccessToken(ctx, rec); err != nil {
		return nil, s.storeFailed("save access token", err, "grant_id", g.ID)
	}
	resp.AccessToken = at
	g.ExpiresAt = expiresAt
	if next != nil {
		g.ExpiresAt = next.ExpiresAt
	}
	if err := s.store.SaveGrant(ctx, g); err != nil {
		return nil, s.storeFailed("save grant", err, "grant_id", g.ID)
	}

	rotated := false
	if next != nil {
		var e *oauth.Error
		switch {
		case prev == nil: // first issuance
			if err := s.store.SaveRefreshToken(ctx, next); err != nil {
				e = s.storeFailed("save refresh token", err, "grant_id", g.ID)
			}
		case prev.RotatedAt.IsZero():
			err := s.store.RotateRefreshToken(ctx, prev.Hash, now, next)
			if errors.Is(err, ErrRefreshTokenRotated) {
				// Lost a race with another use of the same token: this use
				// is a reuse, decided on like any other.
				cur, lerr := s.store.RefreshToken(ctx, prev.Hash)
				if lerr != nil {
					return nil, s.storeFailed("reload refresh token", lerr, "grant_id", g.ID)
				}
				if e = s.reused(ctx, cur, now); e == nil {
					e = s.retireSuccessor(ctx, cur, now, next)
				}
			} else if err != nil {
				e = s.storeFailed("rotate refresh token", err, "grant_id", g.ID)
			}
			rotated = e == nil
		default: // a reuse inside the grace window, accepted by reused
			e = s.retireSuccessor(ctx, prev, now, next)
			rotated = e == nil
		}
		if e != nil {
			return nil, e
		}
		if rotated {
			s.pruneRefreshTokens(ctx, g.ID)
		}
	}

	// A revocation may have landed while we issued; do not hand out tokens
	// of a revoked grant.
	cur, err := s.store.Grant(ctx, g.ID)
	switch {
	case errors.Is(err, ErrNotFound) || err == nil && cur.Revoked:
		return nil, oauth.NewError(oauth.ErrorInvalidGrant, "the grant was revoked")
	case err != nil && !rotated:
		return nil, s.storeFailed("reload grant", err, "grant_id", g.ID)
	case err != nil:
		// The presented refresh token is retired already: answering the
		// outage would cost the client its grant. The check is for a
		// revocation racing this request; the grant was live when read.
		s.log.Warn("reload grant after rotation failed; tokens issued unchecked", "grant_id", g.ID, "error", err)
	}
	s.log.Info("tokens issued", "grant_type", via, "client_id", clip(client.ID), "grant_id", g.ID,
		"rotated", prev != nil && next != nil, "refresh_token", next != nil, "expires_in", resp.ExpiresIn)
	return resp, nil
}
