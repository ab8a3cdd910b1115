package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// ErrNoRevocationEndpoint is returned by Revoke for a grant whose
// authorization server offers no token revocation: its tokens stay valid
// there until they expire.
var ErrNoRevocationEndpoint = errors.New("client: the authorization server offers no token revocation")

// Revoked says which of a grant's tokens Revoke revoked.
type Revoked struct {
	RefreshToken bool
	AccessToken  bool
}

// Revoke revokes g's tokens at g's revocation endpoint (RFC 7009): first
// its refresh token, which ends the whole grant at authorization servers
// that revoke a grant with its refresh token (RFC 7009 §2.1; evergrant's
// does, docs/design.md#as-rule-12), then its access token unless it is
// known to have expired. Each request
// authenticates as the grant's client, the way its refreshes do
// (docs/design.md#client-rule-2).
//
// hc sends the requests; nil means a client with a 30 s timeout that
// follows no redirect (the requests carry tokens and maybe a client
// secret).
//
// Revoke reports what it revoked and returns the first failure, wrapped
// with the name of the token; a refusal by the authorization server is an
// *oauth.Error. An access token the server cannot revoke
// (unsupported_token_type) is not a failure: revoking the refresh token is
// what ends the grant. A grant without a revocation endpoint gives
// ErrNoRevocationEndpoint; a grant without tokens, nothing to do.
//
// Revoke changes neither g nor a store. A caller signing out deletes the
// grant after it, holding the store's lock for the grant throughout, so
// that no other process refreshes it in between.
func Revoke(ctx context.Context, hc *http.Client, g *store.Grant) (Revoked, error) {
	var done Revoked
	if g.RefreshToken == "" && g.AccessToken == "" {
		return done, nil
	}
	if g.RevocationEndpoint == "" {
		return done, ErrNoRevocationEndpoint
	}
	if err := oauth.CheckEndpointURL(g.RevocationEndpoint); err != nil {
		return done, fmt.Errorf("revocation endpoint: %w", err)
	}
	if hc == nil {
		hc = &http.Client{
			Timeout:       authHTTPTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	var first error
	if g.RefreshToken != "" {
		err := revokeToken(ctx, hc, g, g.RefreshToken, "refresh_token")
		if err == nil {
			done.RefreshToken = true
		} else {
			first = fmt.Errorf("refresh token: %w", err)
		}
	}
	if g.AccessToken != "" && (g.Expiry.IsZero() || time.Now().Before(g.Expiry)) {
		err := revokeToken(ctx, hc, g, g.AccessToken, "access_token")
		var oe *oauth.Error
		switch {
		case err == nil:
			done.AccessToken = true
		case errors.As(err, &oe) && oe.Code == oauth.ErrorUnsupportedTokenType:
			// RFC 7009 §2.2.1: the server revokes no access tokens;
			// revoking the refresh token is what ends the grant.
		case first == nil:
			first = fmt.Errorf("access token: %w", err)
		}
	}
	return done, first
}

// revokeToken is one RFC 7009 revocation request for token, one of g's,
// at g's revocation endpoint with the client authentication of g's
// registration.
func revokeToken(ctx context.Context, hc *http.Client, g *store.Grant, token, hint string) error {
	auth := oauth.ClientAuth{ID: g.ClientID, Secret: g.ClientSecret, Method: g.AuthMethod}
	req, err := oauth.NewFormRequest(ctx, g.RevocationEndpoint, url.Values{"token": {token}, "token_type_hint": {hint}}, auth)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("revocation request: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, oauth.MaxErrorBody))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	if oe, perr := oauth.ParseError(resp.StatusCode, body); perr == nil {
		return oe
	}
	return fmt.Errorf("the revocation endpoint answered HTTP %d", resp.StatusCode)
}
