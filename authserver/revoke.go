package authserver

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// tokenRecord is what a presented token turned out to be.
type tokenRecord struct {
	access  *AccessToken
	refresh *RefreshToken
	grant   *Grant
}

// findToken identifies a presented token as one of our access tokens (by
// signature and jti) or refresh tokens (by hash). hint orders the lookups
// (RFC 7009 §2.1, RFC 7662 §2.1); an unknown hint is ignored.
func (s *Server) findToken(ctx context.Context, token, hint string) (*tokenRecord, error) {
	lookups := []func() (*tokenRecord, error){s.findAccess(ctx, token), s.findRefresh(ctx, token)}
	if hint == "refresh_token" {
		lookups[0], lookups[1] = lookups[1], lookups[0]
	}
	for _, f := range lookups {
		rec, err := f()
		if err == nil {
			g, gerr := s.store.Grant(ctx, grantIDOf(rec))
			if gerr != nil && !errors.Is(gerr, ErrNotFound) {
				return nil, gerr
			}
			rec.grant = g
			return rec, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	return nil, ErrNotFound
}

func grantIDOf(r *tokenRecord) string {
	if r.access != nil {
		return r.access.GrantID
	}
	return r.refresh.GrantID
}

func (s *Server) findAccess(ctx context.Context, token string) func() (*tokenRecord, error) {
	return func() (*tokenRecord, error) {
		if strings.Count(token, ".") != 2 {
			return nil, ErrNotFound
		}
		var c accessClaims
		if err := s.keys.verify(token, &c); err != nil || c.Issuer != s.cfg.Issuer || c.ID == "" {
			return nil, ErrNotFound
		}
		at, err := s.store.AccessToken(ctx, c.ID)
		if err != nil {
			return nil, err
		}
		return &tokenRecord{access: at}, nil
	}
}

func (s *Server) findRefresh(ctx context.Context, token string) func() (*tokenRecord, error) {
	return func() (*tokenRecord, error) {
		rt, err := s.store.RefreshToken(ctx, hashSecret(token))
		if err != nil {
			return nil, err
		}
		return &tokenRecord{refresh: rt}, nil
	}
}

// active reports whether a token is currently good.
func (s *Server) active(rec *tokenRecord, now time.Time) bool {
	if rec.grant == nil || rec.grant.Revoked {
		return false
	}
	if rec.access != nil {
		return !rec.access.Revoked && now.Before(rec.access.ExpiresAt)
	}
	return rec.refresh.RotatedAt.IsZero() && now.Before(rec.refresh.ExpiresAt)
}

// parseTokenRequest reads the form of a revocation or introspection request
// and authenticates the client; it writes an error and returns false on
// failure.
func (s *Server) parseTokenRequest(w http.ResponseWriter, r *http.Request) (*Client, bool) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return nil, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "the request body could not be parsed as a form"))
		return nil, false
	}
	c := s.authenticateClient(w, r)
	if c == nil {
		return nil, false
	}
	if r.PostForm.Get("token") == "" {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "token is required"))
		return nil, false
	}
	return c, true
}

// handleRevoke is token revocation (RFC 7009 §2). Revoking a refresh token
// revokes its grant, with every token of it; revoking an access token
// revokes that token. Unknown tokens get 200 as §2.2 requires.
func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	if allowCORS(w, r, "POST") {
		return
	}
	client, ok := s.parseTokenRequest(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	rec, err := s.findToken(ctx, r.PostForm.Get("token"), r.PostForm.Get("token_type_hint"))
	if errors.Is(err, ErrNotFound) {
		w.WriteHeader(http.StatusOK)
		return
	}
	if err != nil {
		writeError(w, s.storeFailed("revocation lookup", err))
		return
	}
	owner := ""
	if rec.access != nil {
		owner = rec.access.ClientID
	} else {
		owner = rec.refresh.ClientID
	}
	if owner != client.ID {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorUnauthorizedClient, "the token was not issued to this client"))
		return
	}
	if rec.refresh != nil {
		err = s.store.RevokeGrant(ctx, rec.refresh.GrantID)
	} else {
		err = s.store.RevokeAccessToken(ctx, rec.access.JTI)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		writeError(w, s.storeFailed("revoke", err, "grant_id", grantIDOf(rec)))
		return
	}
	if rec.refresh != nil {
		s.log.Info("refresh token revoked; grant revoked", "client_id", clip(client.ID), "grant_id", rec.refresh.GrantID)
	} else {
		s.log.Info("access token revoked", "client_id", clip(client.ID), "grant_id", rec.access.GrantID)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

// handleIntrospect is token introspection (RFC 7662 §2). Only confidential
// clients (resource servers) may introspect.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	client, ok := s.parseTokenRequest(w, r)
	if !ok {
		return
	}
	if client.AuthMethod() == oauth.AuthMethodNone || client.Dynamic {
		// RFC 7662 §4: only the resource servers this server knows (its
		// pre-registered confidential clients) may ask; a self-registered
		// client would turn introspection into a token oracle.
		writeClientAuthError(w, false, "introspection requires a pre-registered confidential client")
		return
	}
	now := s.now()
	rec, err := s.findToken(r.Context(), r.PostForm.Get("token"), r.PostForm.Get("token_type_hint"))
	if err != nil && !errors.Is(err, ErrNotFound) {
		writeError(w, s.storeFailed("introspection lookup", err))
		return
	}
	if err != nil || !s.active(rec, now) {
		oauth.WriteJSON(w, http.StatusOK, oauth.IntrospectionResponse{Active: false})
		return
	}
	resp := oauth.IntrospectionResponse{Active: true, Iss: s.cfg.Issuer, Sub: rec.grant.Subject, Aud: oauth.Audience{rec.grant.Resource}}
	if a := rec.access; a != nil {
		resp.TokenType = oauth.TokenTypeBearer
		resp.ClientID, resp.Scope, resp.Jti = a.ClientID, oauth.FormatScope(a.Scopes), a.JTI
		resp.Exp, resp.Iat, resp.Nbf = a.ExpiresAt.Unix(), a.IssuedAt.Unix(), a.IssuedAt.Unix()
	} else {
		t := rec.refresh
		resp.TokenType = "refresh_token"
		resp.ClientID, resp.Scope = t.ClientID, oauth.FormatScope(t.Scopes)
		resp.Exp, resp.Iat = t.ExpiresAt.Unix(), t.IssuedAt.Unix()
	}
	oauth.WriteJSON(w, http.StatusOK, resp)
}
