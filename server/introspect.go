package server

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/evergrant/evergrant/oauth"
	"golang.org/x/sync/singleflight"
)

// Defaults for the zero values of IntrospectionConfig.
const (
	DefaultIntrospectionCacheTTL = time.Minute
	DefaultMaxCacheEntries       = 10000
)

const (
	// introspectionTimeout bounds one introspection request.
	introspectionTimeout = 10 * time.Second
	// introspectionMaxBytes bounds an introspection response.
	introspectionMaxBytes = 1 << 20
)

// IntrospectionConfig configures an IntrospectionVerifier.
type IntrospectionConfig struct {
	// Endpoint is the authorization server's introspection endpoint
	// (RFC 7662 §2; "introspection_endpoint" in its RFC 8414 metadata). It
	// must be https, or http on a loopback host.
	Endpoint string
	// ClientID and ClientSecret are this resource server's credentials at
	// the authorization server, sent with client_secret_basic (RFC 6749
	// §2.3.1). Both are required.
	ClientID     string
	ClientSecret string
	// Resource is required: the canonical URI of this resource. When the
	// response carries "aud" (a string or an array), it must contain
	// Resource (compared with oauth.SameResource).
	Resource string
	// Issuer, when set, must equal the response's "iss" when it has one.
	Issuer string
	// HTTPClient sends the introspection requests. Nil means a client with a
	// 10 s timeout that follows no redirect (the request carries the token
	// and our credentials).
	HTTPClient *http.Client
	// CacheTTL is how long a positive answer is reused: for
	// min(CacheTTL, exp - now). Zero means DefaultIntrospectionCacheTTL; a
	// negative value turns the cache off. A token revoked at the
	// authorization server stays accepted for up to this long.
	CacheTTL time.Duration
	// MaxCacheEntries bounds the cache; the least recently used entry goes
	// first. Zero means DefaultMaxCacheEntries.
	MaxCacheEntries int
	// AllowMissingAudience accepts active tokens whose introspection answer
	// names no audience. Off by default: set it only for an authorization
	// server that issues tokens for this resource alone.
	AllowMissingAudience bool
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// IntrospectionVerifier verifies opaque (or any) access tokens by asking the
// authorization server (RFC 7662). It is a Verifier and safe for concurrent
// use.
//
// The authorization server's "active" is trusted as the answer; "exp" in
// the response only bounds how long the answer is cached.
//
// Answers are cached by the SHA-256 of the token (the token itself is never
// kept): an active token for min(CacheTTL, exp - now). Negative answers
// ("active": false) are not cached: caching them would not stop a flood of
// made-up tokens (each one is new), would let such a flood push good
// entries out of the bounded cache, and could hide a token that became
// valid a moment later. Concurrent requests with the same token share one
// introspection request.
//
// When the authorization server cannot answer (unreachable, timeout, 5xx,
// an unparsable response), or refuses this resource server's own
// credentials (401), Verify returns ErrVerifierUnavailable and the
// middleware answers 503, not 401: the token may be perfectly good, and a
// 401 invalid_token would make a compliant client discard it, spend its
// refresh token and, if the authorization server is down for the refresh
// too, send the user back to sign in, all for a fault on our side.
type IntrospectionVerifier struct {
	endpoint     string
	clientID     string
	clientSecret string
	resource     string // canonical
	allowNoAud   bool
	issuer       string
	client       *http.Client
	ttl          time.Duration
	now          func() time.Time
	cache        *infoCache // nil when caching is off
	sf           singleflight.Group
}

var _ Verifier = (*IntrospectionVerifier)(nil)

// NewIntrospectionVerifier returns an IntrospectionVerifier for cfg, or an
// error if cfg is incomplete or unsafe.
func NewIntrospectionVerifier(cfg IntrospectionConfig) (*IntrospectionVerifier, error) {
	if err := oauth.CheckEndpointURL(cfg.Endpoint); err != nil {
		return nil, fmt.Errorf("server: IntrospectionConfig.Endpoint: %w", err)
	}
	if cfg.ClientID == "" || cfg.ClientSecret == "" {
		return nil, errors.New("server: IntrospectionConfig.ClientID and ClientSecret are required")
	}
	res, err := oauth.CanonicalResource(cfg.Resource)
	if err != nil {
		return nil, fmt.Errorf("server: IntrospectionConfig.Resource: %w", err)
	}
	v := &IntrospectionVerifier{
		endpoint:     cfg.Endpoint,
		clientID:     cfg.ClientID,
		clientSecret: cfg.ClientSecret,
		resource:     res,
		allowNoAud:   cfg.AllowMissingAudience,
		issuer:       cfg.Issuer,
		client:       cfg.HTTPClient,
		ttl:          cfg.CacheTTL,
		now:          cfg.Now,
	}
	if v.client == nil {
		v.client = defaultHTTPClient(introspectionTimeout, false)
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.ttl == 0 {
		v.ttl = DefaultIntrospectionCacheTTL
	}
	if v.ttl > 0 {
		n := cfg.MaxCacheEntries
		if n <= 0 {
			n = DefaultMaxCacheEntries
		}
		v.cache = &infoCache{max: n, m: map[[sha256.Size]byte]*list.Element{}}
	}
	return v, nil
}

// Verify asks the authorization server about token, or answers from the
// cache. An inactive token, a refresh token, a sender-constrained token
// ("cnf"), or one whose "aud" or "iss" does not match gives an error
// wrapping ErrInvalidToken; a failure to get an answer gives one wrapping
// ErrVerifierUnavailable (see IntrospectionVerifier).
func (v *IntrospectionVerifier) Verify(ctx context.Context, token string) (*TokenInfo, error) {
	if token == "" || len(token) > maxTokenBytes {
		return nil, fmt.Errorf("%w: malformed token", ErrInvalidToken)
	}
	key := sha256.Sum256([]byte(token))
	if info := v.cache.get(key, v.now()); info != nil {
		return info.clone(), nil
	}
	// The request is shared by concurrent callers with the same token, so
	// it does not stop when this caller's ctx does (it has its own timeout).
	detached := context.WithoutCancel(ctx)
	ch := v.sf.DoChan(string(key[:]), func() (any, error) {
		// A flight that ended between our cache miss and DoChan has
		// cached its answer: use it rather than ask again.
		if info := v.cache.get(key, v.now()); info != nil {
			return info, nil
		}
		return v.introspect(detached, token, key)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*TokenInfo).clone(), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrVerifierUnavailable, ctx.Err())
	}
}

// introspectionRegistered are the response members parseClaims reads into
// fields or drops; the others (such as "username") go to Extra.
var introspectionRegistered = func() map[string]bool {
	m := maps.Clone(jwtRegistered)
	m["active"] = true
	m["token_type"] = true
	return m
}()

// introspect sends one introspection request and caches a positive answer.
func (v *IntrospectionVerifier) introspect(ctx context.Context, token string, key [sha256.Size]byte) (*TokenInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, introspectionTimeout)
	defer cancel()
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	auth := oauth.ClientAuth{ID: v.clientID, Secret: v.clientSecret, Method: oauth.AuthMethodClientSecretBasic}
	req, err := oauth.NewFormRequest(ctx, v.endpoint, form, auth)
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %w", ErrVerifierUnavailable, err)
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %w", ErrVerifierUnavailable, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("%w: the introspection endpoint refused this resource server's credentials (status %d)",
			ErrVerifierUnavailable, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: the introspection endpoint answered status %d", ErrVerifierUnavailable, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, introspectionMaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: introspection: %w", ErrVerifierUnavailable, err)
	}
	if len(body) > introspectionMaxBytes {
		return nil, fmt.Errorf("%w: the introspection response is too large", ErrVerifierUnavailable)
	}
	var obj map[string]json.RawMessage
	var active bool
	if err := json.Unmarshal(body, &obj); err != nil || obj["active"] == nil || json.Unmarshal(obj["active"], &active) != nil {
		return nil, fmt.Errorf("%w: the introspection response is malformed", ErrVerifierUnavailable)
	}
	if !active {
		return nil, fmt.Errorf("%w: the token is not active", ErrInvalidToken)
	}
	c, err := parseClaims(obj, introspectionRegistered)
	if err != nil {
		return nil, fmt.Errorf("%w: the introspection response has a %w", ErrVerifierUnavailable, err)
	}
	switch {
	case strings.EqualFold(c.tokenType, "refresh_token"):
		return nil, fmt.Errorf("%w: a refresh token is not an access token", ErrInvalidToken)
	case c.cnf:
		return nil, fmt.Errorf("%w: the token is sender-constrained (cnf); only bearer tokens are supported", ErrInvalidToken)
	case v.issuer != "" && c.iss != "" && c.iss != v.issuer:
		return nil, fmt.Errorf("%w: wrong issuer", ErrInvalidToken)
	case len(c.aud) == 0 && !v.allowNoAud:
		// An authorization server serving several resources must say which
		// one a token is for (MCP: servers MUST validate the audience).
		return nil, fmt.Errorf("%w: the introspection answer names no audience", ErrInvalidToken)
	case len(c.aud) > 0 && !audienceContains(c.aud, v.resource):
		return nil, fmt.Errorf("%w: the token is not for this resource (audience)", ErrInvalidToken)
	}
	// "active" is the authorization server's word; exp only bounds caching.
	info := c.info()
	if v.cache != nil {
		now := v.now()
		until := now.Add(v.ttl)
		if !c.exp.IsZero() && c.exp.Before(until) {
			until = c.exp
		}
		if until.After(now) {
			v.cache.put(key, info, until)
		}
	}
	return info, nil
}

// clone returns a copy of info that shares no slice or map with it (values
// inside Extra are shared).
func (info *TokenInfo) clone() *TokenInfo {
	c := *info
	c.Scopes = slices.Clone(info.Scopes)
	c.Audience = slices.Clone(info.Audience)
	c.Extra = maps.Clone(info.Extra)
	return &c
}

// infoCache is a bounded LRU cache of positive introspection answers, keyed
// by the SHA-256 of the token. A nil *infoCache caches nothing.
type infoCache struct {
	mu  sync.Mutex
	max int
	ll  list.List // front: most recently used
	m   map[[sha256.Size]byte]*list.Element
}

type cacheEntry struct {
	key   [sha256.Size]byte
	info  *TokenInfo
	until time.Time
}

// get returns the cached info for key if it is still good at now.
func (c *infoCache) get(key [sha256.Size]byte, now time.Time) *TokenInfo {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[key]
	if e == nil {
		return nil
	}
	ent := e.Value.(*cacheEntry)
	if !now.Before(ent.until) {
		c.ll.Remove(e)
		delete(c.m, key)
		return nil
	}
	c.ll.MoveToFront(e)
	return ent.info
}

// put caches info for key until the given time, evicting the least
// recently used entries beyond the bound.
func (c *infoCache) put(key [sha256.Size]byte, info *TokenInfo, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[key]; e != nil {
		ent := e.Value.(*cacheEntry)
		ent.info, ent.until = info, until
		c.ll.MoveToFront(e)
		return
	}
	for c.ll.Len() >= c.max {
		back := c.ll.Back()
		c.ll.Remove(back)
		delete(c.m, back.Value.(*cacheEntry).key)
	}
	c.m[key] = c.ll.PushFront(&cacheEntry{key: key, info: info, until: until})
}
