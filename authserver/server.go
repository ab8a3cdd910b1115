// Package authserver is an embedded OAuth 2.1 authorization server for MCP:
// the default for evergrant's demo, its tests and small deployments.
//
// It implements RFC 8414 metadata, a JWKS with key rotation, dynamic client
// registration (RFC 7591), Client ID Metadata Documents, pre-registered
// clients, the authorization code grant with PKCE S256 only (RFC 7636),
// RFC 9207 "iss" in every authorization response, RFC 8707 resource
// indicators that become the token audience, JWT access tokens (RFC 9068),
// opaque rotating refresh tokens whose reuse revokes the whole grant
// (RFC 9700 §4.14.2), revocation (RFC 7009) and introspection (RFC 7662).
//
// A Server is an http.Handler; mount it at the root of the issuer's origin.
package authserver

import (
	"container/list"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evergrant/evergrant/internal/safefetch"
	"github.com/evergrant/evergrant/oauth"
)

// Defaults for the zero values of Config.
const (
	DefaultAccessTokenTTL  = time.Hour
	DefaultRefreshTokenTTL = 30 * 24 * time.Hour
	DefaultCodeTTL         = time.Minute
	// DefaultRefreshTokenHistory is how many retired refresh tokens of a
	// grant a store that can prune them keeps (see
	// Config.RefreshTokenHistory).
	DefaultRefreshTokenHistory = 100
)

// Endpoint paths, relative to the issuer URL.
const (
	PathAuthorize  = "/authorize"
	PathConsent    = "/authorize/consent"
	PathToken      = "/token"
	PathRegister   = "/register"
	PathRevoke     = "/revoke"
	PathIntrospect = "/introspect"
	PathJWKS       = "/jwks.json"
)

// maxFormBytes bounds request bodies of every endpoint.
const maxFormBytes = 64 << 10

// Config configures a Server. Only Issuer is required.
type Config struct {
	// Issuer is the authorization server's issuer identifier (RFC 8414 §2):
	// an https URL, or http on a loopback host, without query or fragment.
	Issuer string

	// Resources lists the canonical URIs of the protected resources (MCP
	// servers) tokens may be issued for (RFC 8707). A request naming another
	// resource gets invalid_target. With exactly one entry, a request that
	// names none gets that one. Empty means any https (or loopback http)
	// resource is accepted, and requests must name one: for development.
	Resources []string

	// Scopes are the scopes clients may ask for; offline_access is always
	// supported in addition.
	Scopes []string
	// DefaultScopes are granted when a request asks for none. Empty means
	// all of Scopes.
	DefaultScopes []string

	// AccessTokenTTL, RefreshTokenTTL and CodeTTL are lifetimes; zero means
	// DefaultAccessTokenTTL, DefaultRefreshTokenTTL and DefaultCodeTTL.
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	CodeTTL         time.Duration

	// RefreshReuseGrace is how long after its rotation a refresh token may
	// be presented again without the reuse being taken as theft, for a
	// client whose token response was lost and that retried with the old
	// token. Such a reuse gets a new refresh token, and the successor the
	// client never received is retired: a grant never has more than one
	// live refresh token. The reuse revokes the grant instead if the
	// successor was used already (the family moved on), if the presented
	// token is itself a successor retired this way, or if it comes later
	// than RefreshReuseGrace after the rotation. A client that refreshes
	// with one token several times at once may thus keep a retired token;
	// it should refresh one at a time. Zero, the default, means every reuse
	// revokes the grant.
	RefreshReuseGrace time.Duration

	// RefreshTokenHistory bounds how many retired (rotated) refresh tokens
	// of one grant are kept for reuse detection, when the Store implements
	// RefreshTokenPruner; zero means DefaultRefreshTokenHistory, a
	// negative value keeps them all until they expire. A reuse of one of
	// the kept tokens revokes the grant; an older one is unknown, refused
	// with invalid_grant without revoking (docs/design.md#as-rule-22).
	RefreshTokenHistory int

	// AutoApprove skips the consent page for requests whose redirect is
	// trusted: those of pre-registered clients (Clients) and those whose
	// redirect URI is an http or https URL on a loopback host (127.0.0.1,
	// [::1], localhost), which reaches the user's own machine. Such requests
	// are approved for the authenticated user without a page. Requests of
	// dynamically registered clients and Client ID Metadata Document clients
	// to any other redirect URI still get the consent page: anyone can create
	// such a client with a redirect URI of their choosing, and approving it
	// unseen would send a user's code to whoever made the link they clicked.
	AutoApprove bool

	// Authenticate identifies the user of an authorization request. Nil
	// means every request is from the user "demo-user".
	Authenticate Authenticator

	// Store keeps clients, grants, codes, tokens and the signing keys. Nil
	// means a new MemoryStore.
	Store Store

	// Clients are pre-registered clients.
	Clients []ClientConfig

	// DisableRegistration turns off dynamic client registration.
	DisableRegistration bool
	// DisableClientIDMetadata turns off Client ID Metadata Documents.
	DisableClientIDMetadata bool
	// InsecureAllowLoopbackClientMetadata lets Client ID Metadata Document
	// URLs use http and point at loopback addresses. For tests only.
	InsecureAllowLoopbackClientMetadata bool

	// SigningKey is the initial ECDSA P-256 key for access tokens, saved in
	// Store when it holds no keys yet; nil means a fresh random key. When
	// Store holds keys already (a restart on a durable store), New uses
	// those and ignores SigningKey.
	SigningKey *ecdsa.PrivateKey

	// Logger receives one record per security-relevant event. It never
	// contains tokens, codes, secrets or code verifiers. Nil discards.
	Logger *slog.Logger

	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// ClientConfig is a pre-registered client.
type ClientConfig struct {
	ID string
	// Secret is the client secret; empty means a public client
	// (token_endpoint_auth_method "none").
	Secret string
	// AuthMethod is client_secret_basic (the default for clients with a
	// secret) or client_secret_post.
	AuthMethod   string
	RedirectURIs []string
	// GrantTypes defaults to authorization_code and refresh_token.
	GrantTypes []string
	Name       string
}

// Authenticator identifies the user behind an authorization request and
// returns the user's subject identifier. An authenticator that needs to
// interact with the user (a login form, say) writes its own response and
// returns ErrResponseWritten; the browser is expected to come back to the
// same authorization URL later.
type Authenticator func(w http.ResponseWriter, r *http.Request) (subject string, err error)

// ErrResponseWritten is returned by an Authenticator that wrote the response.
var ErrResponseWritten = errors.New("authserver: authenticator wrote the response")

// StaticUser returns an Authenticator that says every request is from the
// user with the given subject.
func StaticUser(subject string) Authenticator {
	return func(http.ResponseWriter, *http.Request) (string, error) { return subject, nil }
}

// Server is an authorization server. It is an http.Handler.
type Server struct {
	cfg      Config
	issuer   *url.URL
	prefix   string // issuer path, without trailing slash
	store    Store
	keys     keySet
	log      *slog.Logger
	now      func() time.Time
	mux      *http.ServeMux
	fetch    *safefetch.Fetcher
	scopes   []string
	defaults []string

	mu           sync.Mutex
	pending      map[string]*pendingAuth // consent requests by id
	pendingOrder list.List               // of pending ids, oldest first
	maxPending   int
	lastEvictLog time.Time
	lastGC       time.Time

	docs docCache // Client ID Metadata Documents

	accessTTL atomic.Int64 // SetAccessTokenTTL's lifetime; 0: Config.AccessTokenTTL
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	iss, err := url.Parse(cfg.Issuer)
	if err != nil || iss.Scheme == "" || iss.Host == "" {
		return nil, fmt.Errorf("authserver: issuer %q is not an absolute URL", cfg.Issuer)
	}
	if err := oauth.CheckEndpointURL(cfg.Issuer); err != nil {
		return nil, fmt.Errorf("authserver: issuer: %w", err)
	}
	if iss.RawQuery != "" || iss.Fragment != "" {
		return nil, fmt.Errorf("authserver: issuer %q must have no query or fragment (RFC 8414 §2)", cfg.Issuer)
	}
	s := &Server{
		cfg:        cfg,
		issuer:     iss,
		prefix:     strings.TrimSuffix(iss.Path, "/"),
		store:      cfg.Store,
		log:        cfg.Logger,
		now:        cfg.Now,
		pending:    map[string]*pendingAuth{},
		maxPending: maxPending,
		docs:       docCache{max: maxCachedDocuments},
		fetch: &safefetch.Fetcher{
			AllowLoopback: cfg.InsecureAllowLoopbackClientMetadata,
			MaxBytes:      clientDocumentMaxBytes,
			UserAgent:     "evergrant-authserver",
		},
	}
	if s.store == nil {
		s.store = &MemoryStore{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.AccessTokenTTL <= 0 {
		s.cfg.AccessTokenTTL = DefaultAccessTokenTTL
	}
	if s.cfg.RefreshTokenTTL <= 0 {
		s.cfg.RefreshTokenTTL = DefaultRefreshTokenTTL
	}
	if s.cfg.CodeTTL <= 0 {
		s.cfg.CodeTTL = DefaultCodeTTL
	}
	if s.cfg.RefreshTokenHistory == 0 {
		s.cfg.RefreshTokenHistory = DefaultRefreshTokenHistory
	}
	if s.cfg.Authenticate == nil {
		s.cfg.Authenticate = StaticUser("demo-user")
	}
	s.cfg.Resources = slices.Clone(cfg.Resources) // never write into the caller's slice
	for i, r := range s.cfg.Resources {
		c, err := oauth.CanonicalResource(r)
		if err != nil {
			return nil, fmt.Errorf("authserver: resource %q: %w", r, err)
		}
		s.cfg.Resources[i] = c
	}
	for _, sc := range cfg.Scopes {
		if !validScopeToken(sc) {
			return nil, fmt.Errorf("authserver: invalid scope %q", sc)
		}
		if sc != oauth.ScopeOfflineAccess {
			s.scopes = append(s.scopes, sc)
		}
	}
	s.defaults = cfg.DefaultScopes
	if len(s.defaults) == 0 {
		s.defaults = s.scopes
	}
	for _, d := range s.defaults {
		if !s.scopeSupported(d) {
			return nil, fmt.Errorf("authserver: default scope %q is not in Scopes", d)
		}
	}
	if err := s.keys.init(context.Background(), s.store, cfg.SigningKey, s.now()); err != nil {
		return nil, fmt.Errorf("authserver: %w", err)
	}
	for _, cc := range cfg.Clients {
		c, err := preRegisteredClient(cc, s.now())
		if err != nil {
			return nil, fmt.Errorf("authserver: client %q: %w", cc.ID, err)
		}
		if err := s.store.SaveClient(context.Background(), c); err != nil {
			return nil, fmt.Errorf("authserver: save client %q: %w", cc.ID, err)
		}
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	mux := http.NewServeMux()
	p := s.prefix
	mux.HandleFunc(oauth.WellKnownAuthServer+p, s.handleMetadata)
	mux.HandleFunc(p+PathJWKS, s.handleJWKS)
	mux.HandleFunc(p+PathAuthorize, s.handleAuthorize)
	mux.HandleFunc(p+PathConsent, s.handleConsent)
	mux.HandleFunc(p+PathToken, s.handleToken)
	if !s.cfg.DisableRegistration {
		mux.HandleFunc(p+PathRegister, s.handleRegister)
	}
	mux.HandleFunc(p+PathRevoke, s.handleRevoke)
	mux.HandleFunc(p+PathIntrospect, s.handleIntrospect)
	s.mux = mux
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.gc(r.Context())
	s.mux.ServeHTTP(w, r)
}

// Issuer returns the issuer identifier.
func (s *Server) Issuer() string { return s.cfg.Issuer }

// endpoint returns the absolute URL of an endpoint path.
func (s *Server) endpoint(path string) string {
	u := *s.issuer
	u.Path = s.prefix + path
	u.RawPath = ""
	return u.String()
}

// Metadata returns the RFC 8414 authorization server metadata.
func (s *Server) Metadata() oauth.AuthServerMetadata {
	m := oauth.AuthServerMetadata{
		Issuer:                                     s.cfg.Issuer,
		AuthorizationEndpoint:                      s.endpoint(PathAuthorize),
		TokenEndpoint:                              s.endpoint(PathToken),
		JWKSURI:                                    s.endpoint(PathJWKS),
		ScopesSupported:                            append(append([]string(nil), s.scopes...), oauth.ScopeOfflineAccess),
		ResponseTypesSupported:                     []string{"code"},
		ResponseModesSupported:                     []string{"query"},
		GrantTypesSupported:                        []string{oauth.GrantTypeAuthorizationCode, oauth.GrantTypeRefreshToken},
		TokenEndpointAuthMethodsSupported:          supportedAuthMethods(),
		RevocationEndpoint:                         s.endpoint(PathRevoke),
		RevocationEndpointAuthMethodsSupported:     supportedAuthMethods(),
		IntrospectionEndpoint:                      s.endpoint(PathIntrospect),
		IntrospectionEndpointAuthMethodsSupported:  []string{oauth.AuthMethodClientSecretBasic, oauth.AuthMethodClientSecretPost},
		CodeChallengeMethodsSupported:              []string{oauth.CodeChallengeMethodS256},
		AuthorizationResponseIssParameterSupported: true,
		ClientIDMetadataDocumentSupported:          !s.cfg.DisableClientIDMetadata,
	}
	if !s.cfg.DisableRegistration {
		m.RegistrationEndpoint = s.endpoint(PathRegister)
	}
	return m
}

func supportedAuthMethods() []string {
	return []string{oauth.AuthMethodNone, oauth.AuthMethodClientSecretBasic, oauth.AuthMethodClientSecretPost}
}

// allowCORS lets browser-based clients call the endpoints that are meant
// for them (metadata, JWKS, token, registration, revocation). It answers
// preflight requests and reports whether the request was one.
func allowCORS(w http.ResponseWriter, r *http.Request, methods string) (preflight bool) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", methods+", OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, MCP-Protocol-Version")
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	return false
}

func (s *Server) handleMetadata(w http.ResponseWriter, r *http.Request) {
	if allowCORS(w, r, "GET") {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSONCacheable(w, s.Metadata())
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if allowCORS(w, r, "GET") {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	// Short caching: verifiers refetch on an unknown kid anyway.
	w.Header().Set("Cache-Control", "public, max-age=60")
	writeJSONCacheable(w, s.keys.jwks())
}

// JWKS returns the published key set: the current signing key and the one
// before it.
func (s *Server) JWKS() []byte {
	b, _ := jsonMarshal(s.keys.jwks())
	return b
}

// RotateKey makes a fresh key the signing key. The previous signing key stays
// in the JWKS so tokens it signed keep verifying; the one before it is
// dropped. The new key set is saved in the Store before it is used. It
// returns the new key id.
func (s *Server) RotateKey() (string, error) {
	kid, err := s.keys.rotate(context.Background(), s.store, s.now())
	if err != nil {
		return "", fmt.Errorf("authserver: rotate key: %w", err)
	}
	s.log.Info("signing key rotated", "kid", kid)
	return kid, nil
}

// SetAccessTokenTTL changes the lifetime of the access tokens issued from
// now on, for example to shorten it after an incident, or to make tokens
// expire within a test; zero or less restores Config.AccessTokenTTL.
// Tokens already issued keep their lifetime. It is the server's one control
// of that kind: faults are injected in front of it, never inside
// (docs/design.md#as-rule-20).
func (s *Server) SetAccessTokenTTL(d time.Duration) {
	s.accessTTL.Store(int64(max(d, 0)))
	s.log.Info("access token lifetime changed", "ttl", d)
}

// RevokeGrants revokes every grant f matches, with all of its refresh and
// access tokens, and reports how many it revoked.
func (s *Server) RevokeGrants(ctx context.Context, f GrantFilter) (int, error) {
	n, err := s.store.RevokeGrants(ctx, f)
	if err != nil {
		return 0, fmt.Errorf("authserver: revoke grants: %w", err)
	}
	s.log.Info("grants revoked", "count", n, "client_id", f.ClientID, "subject", f.Subject)
	return n, nil
}

// Maintain deletes expired state (codes, tokens, grants past their
// lifetime, pending consent requests, cached client documents) every
// interval until ctx is done; zero means every minute. ServeHTTP does
// the same at most once a minute, on the request it serves; Maintain
// keeps a server that is idle, or that other replicas serve, from
// keeping expired records, and keeps the deletions off the requests.
func (s *Server) Maintain(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.gc(ctx)
		}
	}
}

// gc drops expired state at most once a minute.
func (s *Server) gc(ctx context.Context) {
	now := s.now()
	s.mu.Lock()
	if now.Sub(s.lastGC) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.lastGC = now
	s.dropExpiredPendingLocked(now)
	s.mu.Unlock()
	s.docs.dropExpired(now)
	// Keep records a little past expiry so a late replay is still recognised.
	if err := s.store.DeleteExpired(ctx, now.Add(-time.Hour)); err != nil && ctx.Err() == nil {
		s.log.Warn("delete expired state", "error", err)
	}
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	oauth.WriteError(w, &oauth.Error{Code: oauth.ErrorInvalidRequest, Description: "method not allowed", StatusCode: http.StatusMethodNotAllowed})
}
