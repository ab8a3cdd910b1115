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

// Store keeps the authorization server's state. It is split into small
// interfaces, one per kind of record, so that a backend can be written and
// read piece by piece (as ory/fosite does); Store is their union, and what
// Config.Store takes. Package storetest checks an implementation against
// the contracts documented here and on each part.
//
// Every method must be safe for concurrent use, store a copy of what it is
// given and return copies (callers never mutate stored records in place),
// and report a missing record with an error that matches ErrNotFound.
// A persistent store must have made what a method stores durable by the
// time it returns: the server has already acted on it (sent a code, a
// token, a client secret) or is about to. Times round-trip as the same
// instant; their location need not survive.
type Store interface {
	ClientStore
	GrantStore
	CodeStore
	RefreshTokenStore
	AccessTokenStore
	KeyStore

	// DeleteExpired forgets the codes, refresh tokens, access tokens and
	// grants whose ExpiresAt is before t, and keeps every other record.
	// Clients do not expire. The server calls it at most once a minute
	// with a t an hour in the past, so that a late replay of an expired
	// token or code is still recognised.
	DeleteExpired(ctx context.Context, t time.Time) error
}

// ClientStore keeps registered clients: pre-registered ones (saved by New
// on every start) and dynamically registered ones (RFC 7591), which must
// survive restarts or their holders get invalid_client. Clients described
// by a Client ID Metadata Document are not stored.
type ClientStore interface {
	// SaveClient inserts the client c.ID, or replaces it.
	SaveClient(ctx context.Context, c *Client) error
	// Client returns the client with that ID, or ErrNotFound.
	Client(ctx context.Context, id string) (*Client, error)
}

// GrantStore keeps grants: what a user authorized for a client and a
// resource. Revocation is final: once RevokeGrant or RevokeGrants has
// returned, the grant reads as revoked forever, whatever SaveGrant calls
// run at the same time or later (the server saves a grant after issuing
// tokens, and a concurrent revocation must win).
type GrantStore interface {
	// SaveGrant inserts the grant g.ID, or updates it. It never clears
	// Revoked: a revoked grant stays revoked.
	SaveGrant(ctx context.Context, g *Grant) error
	// Grant returns the grant with that ID, or ErrNotFound.
	Grant(ctx context.Context, id string) (*Grant, error)
	// RevokeGrant marks the grant revoked; it returns ErrNotFound if there
	// is none. Revoking a revoked grant is not an error.
	RevokeGrant(ctx context.Context, id string) error
	// RevokeGrants revokes every unrevoked grant f matches and reports how
	// many it revoked (grants already revoked are not counted).
	RevokeGrants(ctx context.Context, f GrantFilter) (int, error)
}

// CodeStore keeps authorization codes, by the SHA-256 of their value.
// A code is good once: TakeCode is atomic, so of any number of calls with
// one hash, concurrent or not, on one store or on several sharing storage,
// exactly one succeeds, and the used mark is durable before it returns.
type CodeStore interface {
	// SaveCode stores a new code.
	SaveCode(ctx context.Context, c *Code) error
	// TakeCode returns the code with that hash and marks it used, or
	// ErrNotFound. A code taken before is returned again together with
	// ErrCodeUsed, so the caller can revoke the grant it created.
	// TakeCode does not check ExpiresAt; the caller does.
	TakeCode(ctx context.Context, hash string) (*Code, error)
}

// RefreshTokenStore keeps refresh tokens, by the SHA-256 of their value.
// Rotation is a compare-and-set: RotateRefreshToken succeeds for at most
// one caller per token, ever, and that success (old token retired, its
// successor saved) is one atomic, durable step. A store that let two
// rotations of one token succeed would hand out two live refresh tokens of
// one grant and defeat reuse detection (RFC 9700 §4.14.2).
type RefreshTokenStore interface {
	// SaveRefreshToken stores a new refresh token (the first of a grant).
	SaveRefreshToken(ctx context.Context, t *RefreshToken) error
	// RefreshToken returns the token with that hash, rotated or not, or
	// ErrNotFound.
	RefreshToken(ctx context.Context, hash string) (*RefreshToken, error)
	// RotateRefreshToken marks the token oldHash rotated at "at", sets its
	// Successor to next.Hash and saves next, atomically. If oldHash was
	// already rotated it changes nothing (next is not saved) and returns
	// ErrRefreshTokenRotated; if there is no such token, ErrNotFound.
	RotateRefreshToken(ctx context.Context, oldHash string, at time.Time, next *RefreshToken) error
}

// RefreshTokenPruner is implemented by a Store that can bound the history
// of a grant's retired refresh tokens. After each rotation the server
// calls PruneRefreshTokens with Config.RefreshTokenHistory, so that one
// grant refreshed often keeps a bounded number of records instead of one
// per refresh until they expire (docs/design.md#as-rule-22).
type RefreshTokenPruner interface {
	// PruneRefreshTokens deletes the rotated refresh tokens of grant
	// grantID except the keep most recently rotated ones. It never deletes
	// an unrotated (live) token, nor the tokens of another grant.
	PruneRefreshTokens(ctx context.Context, grantID string, keep int) error
}

// AccessTokenStore keeps the records of issued JWT access tokens, by jti,
// for introspection and revocation. The tokens themselves are not stored.
type AccessTokenStore interface {
	// SaveAccessToken stores a new access token record.
	SaveAccessToken(ctx context.Context, t *AccessToken) error
	// AccessToken returns the record with that jti, or ErrNotFound.
	AccessToken(ctx context.Context, jti string) (*AccessToken, error)
	// RevokeAccessToken marks the record revoked; it returns ErrNotFound
	// if there is none. Revocation is final, like a grant's.
	RevokeAccessToken(ctx context.Context, jti string) error
}

// SigningKeys is the authorization server's set of access token signing
// keys as a KeyStore keeps it: the current key, the one before it (which
// stays published so the tokens it signed keep verifying) and when the
// current one became current.
//
// The keys are opaque to a store: the Server encodes them (as PKCS#8 today)
// and decodes what it loads, so a store may keep them as given, or a
// wrapping store may encrypt them before passing them on, and decrypt them
// on the way back.
type SigningKeys struct {
	// Current is the signing key.
	Current []byte
	// Previous is the key before it; nil if there is none.
	Previous []byte
	// RotatedAt is when Current became the signing key.
	RotatedAt time.Time
}

// KeyStore keeps the signing keys, so that a restarted server (or another
// replica) signs with the same key and verifies the tokens issued before.
// The key material is secret: a store must never log it, and should keep
// it where only the server can read it.
type KeyStore interface {
	// InitKeys saves k if no keys are saved, and returns the saved keys:
	// k, or the keys saved before, untouched. It is atomic, so of several
	// servers starting at once on shared storage, all end up with the keys
	// of one of them.
	InitKeys(ctx context.Context, k *SigningKeys) (*SigningKeys, error)
	// SaveKeys replaces the saved keys with k.
	SaveKeys(ctx context.Context, k *SigningKeys) error
}
