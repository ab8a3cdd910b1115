package authserver

import (
	"context"
	"errors"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// Errors a Store returns. Callers test them with errors.Is.
var (
	// ErrNotFound means no record has that key.
	ErrNotFound = errors.New("authserver: not found")
	// ErrCodeUsed is returned by TakeCode for a code that was taken before.
	ErrCodeUsed = errors.New("authserver: authorization code already used")
	// ErrRefreshTokenRotated is returned by RotateRefreshToken when the old
	// token was already rotated.
	ErrRefreshTokenRotated = errors.New("authserver: refresh token already rotated")
)

// Client is a registered OAuth client: pre-registered, dynamically
// registered (RFC 7591), or described by a Client ID Metadata Document.
type Client struct {
	// ID is the client_id.
	ID string
	// SecretHash is the SHA-256 of the client secret; nil for public clients.
	SecretHash []byte
	// Metadata is the client metadata as registered, with ClientSecret empty.
	Metadata oauth.ClientMetadata
	// CreatedAt is when the client was registered or its document fetched.
	CreatedAt time.Time
	// FromDocument is true for a client described by a Client ID Metadata
	// Document; such clients are public and are not kept in the Store.
	FromDocument bool
	// Dynamic is true for a client that registered itself (RFC 7591).
	// Such a client may not introspect tokens: anyone can become one.
	Dynamic bool
}

// AuthMethod returns the client's token endpoint authentication method.
func (c *Client) AuthMethod() string {
	if c.Metadata.TokenEndpointAuthMethod == "" {
		return oauth.AuthMethodClientSecretBasic
	}
	return c.Metadata.TokenEndpointAuthMethod
}

// AllowsGrant reports whether the client registered grant type gt.
func (c *Client) AllowsGrant(gt string) bool {
	gts := c.Metadata.GrantTypes
	if len(gts) == 0 {
		gts = []string{oauth.GrantTypeAuthorizationCode}
	}
	for _, g := range gts {
		if g == gt {
			return true
		}
	}
	return false
}

// Grant is what one user authorized for one client and one resource. Every
// authorization code, refresh token and access token belongs to a grant, and
// revoking the grant revokes all of them (the "family" of RFC 9700 §4.14.2).
type Grant struct {
	ID        string
	ClientID  string
	Subject   string
	Resource  string
	Scopes    []string
	CreatedAt time.Time
	// ExpiresAt is when the grant's last token expires; stores may forget
	// the grant after it.
	ExpiresAt time.Time
	Revoked   bool
}

// Code is an issued authorization code, stored by the SHA-256 of its value.
type Code struct {
	Hash          string
	GrantID       string
	ClientID      string
	RedirectURI   string
	CodeChallenge string
	Scopes        []string
	Resource      string
	Subject       string
	ExpiresAt     time.Time
}

// RefreshToken is an issued refresh token, stored by the SHA-256 of its
// value. RotatedAt and Successor are set once it has been exchanged for (or,
// inside Config.RefreshReuseGrace, retired in favour of) a successor. Of the
// refresh tokens of one grant, at most one is unrotated: the live one.
type RefreshToken struct {
	Hash      string
	GrantID   string
	ClientID  string
	Scopes    []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	RotatedAt time.Time
	// Successor is the hash of the token that replaced this one; set by
	// RotateRefreshToken together with RotatedAt.
	Successor string
	// ReplacedUnused is set on a token issued for a reuse, inside
	// Config.RefreshReuseGrace, of an already rotated token. The token it
	// replaced (the one whose Successor it is) was issued but never
	// exchanged: it was retired so that the grant keeps a single live
	// refresh token. Whoever presents that retired token received it, while
	// someone else replayed the token before it: the grant is revoked.
	ReplacedUnused bool
}

// AccessToken is the record of an issued JWT access token, by its jti.
type AccessToken struct {
	JTI       string
	GrantID   string
	ClientID  string
	Subject   string
	Resource  string
	Scopes    []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	Revoked   bool
}

// GrantFilter selects grants; empty fields match anything.
type GrantFilter struct {
	ClientID string
	Subject  string
	Resource string
}

func (f GrantFilter) match(g *Grant) bool {
	return (f.ClientID == "" || f.ClientID == g.ClientID) &&
		(f.Subject == "" || f.Subject == g.Subject) &&
		(f.Resource == "" || f.Resource == g.Resource)
}

// Store keeps the authorization server's state. Implementations must be
// safe for concurrent use, and TakeCode and RotateRefreshToken must be
// atomic: of two concurrent calls with the same key, exactly one succeeds.
// Methods return copies; callers may not mutate stored records in place.
type Store interface {
	SaveClient(ctx context.Context, c *Client) error
	Client(ctx context.Context, id string) (*Client, error)

	// SaveGrant inserts or updates a grant. A revoked grant stays revoked.
	SaveGrant(ctx context.Context, g *Grant) error
	Grant(ctx context.Context, id string) (*Grant, error)
	RevokeGrant(ctx context.Context, id string) error
	// RevokeGrants revokes every grant f matches and reports how many.
	RevokeGrants(ctx context.Context, f GrantFilter) (int, error)

	SaveCode(ctx context.Context, c *Code) error
	// TakeCode returns the code with that hash and marks it used. A code
	// taken before is returned again together with ErrCodeUsed, so the
	// caller can revoke what it issued.
	TakeCode(ctx context.Context, hash string) (*Code, error)

	SaveRefreshToken(ctx context.Context, t *RefreshToken) error
	RefreshToken(ctx context.Context, hash string) (*RefreshToken, error)
	// RotateRefreshToken marks the token oldHash rotated at "at", sets its
	// Successor to next.Hash and saves next, atomically. If oldHash was
	// already rotated it changes nothing and returns ErrRefreshTokenRotated.
	RotateRefreshToken(ctx context.Context, oldHash string, at time.Time, next *RefreshToken) error

	SaveAccessToken(ctx context.Context, t *AccessToken) error
	AccessToken(ctx context.Context, jti string) (*AccessToken, error)
	RevokeAccessToken(ctx context.Context, jti string) error

	// DeleteExpired forgets codes, tokens and grants that expired before t.
	DeleteExpired(ctx context.Context, t time.Time) error
}
