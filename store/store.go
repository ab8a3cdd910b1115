// Package store keeps the grants and client registrations of evergrant's
// client, and the lock that makes one refresh per grant hold across
// goroutines (Memory), processes (File) and hosts (Postgres, a lease).
//
// The refresh protocol of docs/design.md#client-rule-7 is: Lock the grant's key,
// Load it again, refresh only if nobody else did (its access token is still
// the one that failed), Save, unlock.
package store

import (
	"context"
	"errors"
	"slices"
	"time"
)

// ErrNotFound is returned by Load and LoadRegistration when nothing is
// stored under the key.
var ErrNotFound = errors.New("store: not found")

// Grant is what one user authorized for one MCP server: tokens, the
// authorization server that issued them and how to refresh them.
//
// Grant holds token material; never log or print one.
type Grant struct {
	// Key is the canonical URL of the MCP server (the store key).
	Key string `json:"key"`
	// Resource is the RFC 8707 resource indicator sent with token requests:
	// the resource of the server's protected resource metadata.
	Resource string `json:"resource"`
	// Issuer is the authorization server's issuer identifier.
	Issuer string `json:"issuer"`
	// TokenEndpoint and RevocationEndpoint come from the authorization
	// server's metadata, so refreshing needs no rediscovery.
	TokenEndpoint      string `json:"token_endpoint"`
	RevocationEndpoint string `json:"revocation_endpoint,omitempty"`

	// ClientID, ClientSecret and AuthMethod are the client registration the
	// tokens were issued to; refreshes authenticate the same way.
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret,omitempty"`
	AuthMethod   string `json:"auth_method,omitempty"`

	AccessToken string `json:"access_token,omitempty"`
	TokenType   string `json:"token_type,omitempty"`
	// Expiry is when the access token expires, as an absolute time so it
	// survives restarts; zero means unknown.
	Expiry       time.Time `json:"expiry,omitzero"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	// Scopes are the scopes granted.
	Scopes []string `json:"scopes,omitempty"`

	// UpdatedAt is when the client last changed the grant (set by the
	// client; stores keep it as given).
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Clone returns a deep copy of g.
func (g *Grant) Clone() *Grant {
	if g == nil {
		return nil
	}
	c := *g
	c.Scopes = slices.Clone(g.Scopes)
	return &c
}

// Registration is a client registration at one authorization server,
// reused across authorizations (dynamic registration, RFC 7591).
type Registration struct {
	// Issuer is the authorization server's issuer identifier.
	Issuer string `json:"issuer"`
	// RedirectURI is the redirect URI the registration was made for.
	RedirectURI  string   `json:"redirect_uri"`
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret,omitempty"`
	AuthMethod   string   `json:"auth_method,omitempty"`
	RedirectURIs []string `json:"redirect_uris,omitempty"`
	// SecretExpiresAt is when the client secret expires; zero means never.
	SecretExpiresAt time.Time `json:"secret_expires_at,omitzero"`
	CreatedAt       time.Time `json:"created_at,omitzero"`
}

// Clone returns a deep copy of r.
func (r *Registration) Clone() *Registration {
	if r == nil {
		return nil
	}
	c := *r
	c.RedirectURIs = slices.Clone(r.RedirectURIs)
	return &c
}

// Store keeps grants by key and registrations by (issuer, redirect URI).
// Implementations are safe for concurrent use, store and return copies
// (never aliases of the caller's values), and fail every operation with
// ctx.Err() once ctx is done. Package storetest checks an implementation
// against this documentation.
type Store interface {
	// Load returns the grant stored under key, or ErrNotFound.
	Load(ctx context.Context, key string) (*Grant, error)
	// Save stores g under g.Key, replacing what was there.
	Save(ctx context.Context, g *Grant) error
	// Delete removes the grant under key; deleting nothing is not an error.
	Delete(ctx context.Context, key string) error
	// List returns every grant, in key order.
	List(ctx context.Context) ([]*Grant, error)

	// LoadRegistration returns the registration for (issuer, redirectURI),
	// or ErrNotFound.
	LoadRegistration(ctx context.Context, issuer, redirectURI string) (*Registration, error)
	// SaveRegistration stores r under (r.Issuer, r.RedirectURI).
	SaveRegistration(ctx context.Context, r *Registration) error
	// DeleteRegistration forgets every registration at issuer with that
	// client ID (the authorization server no longer knows it); deleting
	// nothing is not an error.
	DeleteRegistration(ctx context.Context, issuer, clientID string) error

	// Lock takes the exclusive lock of key, waiting until it is free or ctx
	// is done (then it returns ctx.Err()), and returns the function that
	// releases it. The lock excludes every holder that shares the store:
	// goroutines, and for File other processes. ctx bounds only the wait:
	// the lock is held until unlock is called, which may happen on any
	// goroutine, and calling unlock again does nothing. The lock is
	// advisory: it excludes other Lock calls on key, not Load, Save or
	// Delete. The key need not have a grant.
	Lock(ctx context.Context, key string) (unlock func(), err error)
}
