package server

import (
	"context"
	"errors"
	"time"
)

// Errors a Verifier returns; the middleware maps them to answers.
var (
	// ErrInvalidToken: the token is not good for this resource (malformed,
	// bad signature, expired, not yet valid, wrong issuer or audience,
	// inactive). The middleware answers 401 invalid_token.
	ErrInvalidToken = errors.New("invalid_token")
	// ErrVerifierUnavailable: the token could not be checked because
	// something this server depends on (the JWKS, the introspection
	// endpoint) failed. The fault is not the client's, so the middleware
	// answers 503, never 401: a 401 would make a compliant client throw
	// away a good token.
	ErrVerifierUnavailable = errors.New("token verification unavailable")
)

// TokenInfo is what a Verifier learned about a valid access token.
type TokenInfo struct {
	// Subject is the user ("sub").
	Subject string
	// ClientID is the OAuth client the token was issued to ("client_id").
	ClientID string
	// Scopes are the scopes granted.
	Scopes []string
	// Expiry is when the token expires; zero when unknown.
	Expiry time.Time
	// Issuer is the authorization server ("iss").
	Issuer string
	// Audience lists the token's audiences ("aud").
	Audience []string
	// ID is the token identifier ("jti"), when there is one.
	ID string
	// Extra holds other claims a Verifier chose to keep.
	Extra map[string]any
}

// Verifier checks an access token presented to this resource server. Its
// errors wrap ErrInvalidToken or ErrVerifierUnavailable.
type Verifier interface {
	Verify(ctx context.Context, token string) (*TokenInfo, error)
}

// VerifierFunc adapts a function to a Verifier.
type VerifierFunc func(ctx context.Context, token string) (*TokenInfo, error)

// Verify implements Verifier.
func (f VerifierFunc) Verify(ctx context.Context, token string) (*TokenInfo, error) {
	return f(ctx, token)
}
