package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evergrant/evergrant/oauth"
	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
)

// Bounds of the JWKS cache.
const (
	// jwksMaxBytes bounds the size of a JWKS document.
	jwksMaxBytes = 1 << 20
	// jwksFetchTimeout bounds one JWKS fetch, whoever waits for it. It is
	// at least the verifier's MaxWait.
	jwksFetchTimeout = 10 * time.Second
	// jwksDefaultMaxAge is how long a JWKS served without a usable
	// Cache-Control max-age is used before it is refreshed.
	jwksDefaultMaxAge = time.Hour
	// jwksMinMaxAge and jwksMaxMaxAge clamp the refresh interval taken from
	// Cache-Control max-age.
	jwksMinMaxAge = time.Minute
	jwksMaxMaxAge = 24 * time.Hour
	// minRSABits is the smallest RSA modulus accepted (RFC 7518 §3.3).
	minRSABits = 2048
)

var (
	// errRateLimited: a fetch was wanted but the last one started less than
	// MinRefetchInterval ago.
	errRateLimited = errors.New("JWKS refetch rate-limited")
	// errJWKSWait: the caller stopped waiting for an in-flight fetch after
	// MaxWait.
	errJWKSWait = errors.New("timed out waiting for the JWKS")
)

// keySnapshot is one fetched key set; it is never modified once published.
type keySnapshot struct {
	byKID     map[string][]jose.JSONWebKey
	all       []jose.JSONWebKey
	refreshAt time.Time // when to refetch in the background; zero: never
}

// find returns the keys a token's kid selects: those with that kid, or,
// for a token without kid, the only key of a set of one.
func (s *keySnapshot) find(kid string) []jose.JSONWebKey {
	if kid == "" {
		if len(s.all) == 1 {
			return s.all
		}
		return nil
	}
	return s.byKID[kid]
}

// jwksCache holds the verification keys of one issuer.
//
// Policy, in short:
//   - The set is fetched on first use; callers wait for it (at most MaxWait).
//     Until a fetch succeeds, every call may start one (one at a time).
//   - A token whose kid is not in the set triggers a refetch, but fetches
//     (other than the very first) start at most once per MinRefetchInterval,
//     and concurrent callers share one in-flight fetch. A kid still unknown
//     after a successful fetch is an invalid token.
//   - After Cache-Control max-age (clamped to [1 min, 24 h]; 1 h when the
//     header gives none) the next use triggers a refetch in the background
//     and keeps using the cached keys meanwhile.
//   - A failed fetch never drops keys already cached. While the latest
//     fetch has failed, an unknown kid is "unavailable", not "invalid":
//     the key may be one we could not fetch.
type jwksCache struct {
	url        string
	client     *http.Client
	now        func() time.Time
	minRefetch time.Duration
	maxWait    time.Duration
	static     bool // keys given in the configuration; never fetched

	snap atomic.Pointer[keySnapshot]
	sf   singleflight.Group

	mu          sync.Mutex
	lastAttempt time.Time // start of the last fetch
	lastErr     error     // outcome of the last completed fetch
}

// keys returns the candidate keys for kid. Errors wrap ErrInvalidToken (the
// kid is not in a current key set) or ErrVerifierUnavailable (the key set
// could not be obtained).
func (c *jwksCache) keys(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	s := c.snap.Load()
	if s == nil {
		if err := c.fetchWait(ctx); err != nil && !errors.Is(err, errRateLimited) {
			return nil, fmt.Errorf("%w: JWKS: %w", ErrVerifierUnavailable, err)
		}
		if s = c.snap.Load(); s == nil {
			return nil, fmt.Errorf("%w: JWKS not available", ErrVerifierUnavailable)
		}
	}
	if ks := s.find(kid); ks != nil {
		c.maybeRefresh(s)
		return ks, nil
	}
	if kid == "" {
		// Without a kid a refetch cannot tell which key was meant.
		return nil, fmt.Errorf("%w: the token has no key id and the key set has %d keys", ErrInvalidToken, len(s.all))
	}
	if c.static {
		return nil, fmt.Errorf("%w: no key matches the token's key id", ErrInvalidToken)
	}
	err := c.fetchWait(ctx)
	if ks := c.snap.Load().find(kid); ks != nil {
		return ks, nil
	}
	if errors.Is(err, errRateLimited) {
		c.mu.Lock()
		err = c.lastErr
		c.mu.Unlock()
	}
	if err != nil {
		// The key set may be stale: we cannot say the token is bad.
		return nil, fmt.Errorf("%w: JWKS refresh: %w", ErrVerifierUnavailable, err)
	}
	return nil, fmt.Errorf("%w: no key matches the token's key id", ErrInvalidToken)
}

// fetchWait starts a fetch, or joins the one in flight, and waits for it at
// most MaxWait and as long as ctx allows. The fetch goes on after the caller
// stopped waiting, so its result still lands in the cache.
func (c *jwksCache) fetchWait(ctx context.Context) error {
	ch := c.sf.DoChan("jwks", c.fetch)
	t := time.NewTimer(c.maxWait)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.Err
	case <-t.C:
		return errJWKSWait
	case <-ctx.Done():
		return ctx.Err()
	}
}

// maybeRefresh starts a background refetch when s is past its max-age and
// the rate limit allows.
func (c *jwksCache) maybeRefresh(s *keySnapshot) {
	if s.refreshAt.IsZero() {
		return
	}
	now := c.now()
	if now.Before(s.refreshAt) {
		return
	}
	c.mu.Lock()
	due := now.Sub(c.lastAttempt) >= c.minRefetch
	c.mu.Unlock()
	if due {
		c.sf.DoChan("jwks", c.fetch) // nobody waits
	}
}

// fetch downloads the key set, unless one was already fetched and the last
// attempt is less than MinRefetchInterval old. It runs under singleflight,
// so the check and the attempt are not raced by another fetch.
func (c *jwksCache) fetch() (any, error) {
	now := c.now()
	c.mu.Lock()
	if c.snap.Load() != nil && now.Sub(c.lastAttempt) < c.minRefetch {
		c.mu.Unlock()
		return nil, errRateLimited
	}
	c.lastAttempt = now
	c.mu.Unlock()

	s, err := c.download()
	c.mu.Lock()
	c.lastErr = err
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.snap.Store(s)
	return nil, nil
}

// download fetches and parses the key set.
func (c *jwksCache) download() (*keySnapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), max(jwksFetchTimeout, c.maxWait))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", c.url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.url, err)
	}
	if len(body) > jwksMaxBytes {
		return nil, fmt.Errorf("GET %s: the key set is larger than %d bytes", c.url, jwksMaxBytes)
	}
	s, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.url, err)
	}
	s.refreshAt = c.now().Add(jwksRefreshAfter(resp.Header.Get("Cache-Control")))
	return s, nil
}

// jwksRefreshAfter reads max-age from a Cache-Control header and clamps it
// to [jwksMinMaxAge, jwksMaxMaxAge]; no-store, no-cache and a missing or
// malformed max-age give jwksMinMaxAge, jwksMinMaxAge and jwksDefaultMaxAge.
func jwksRefreshAfter(cacheControl string) time.Duration {
	d := jwksDefaultMaxAge
	for dir := range strings.SplitSeq(cacheControl, ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(dir), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return jwksMinMaxAge
		case "max-age":
			n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
			if err != nil || n < 0 {
				continue
			}
			if n > int64(jwksMaxMaxAge/time.Second) {
				n = int64(jwksMaxMaxAge / time.Second)
			}
			d = time.Duration(n) * time.Second
		}
	}
	return min(max(d, jwksMinMaxAge), jwksMaxMaxAge)
}

// parseJWKS reads a JWK Set (RFC 7517 §5). Keys that are not usable public
// signature keys (symmetric keys, "use" other than "sig", unknown key types,
// RSA keys under 2048 bits) are skipped; a set with no usable key is an
// error. Private key material, if a misconfigured server publishes it, is
// reduced to the public key.
func parseJWKS(data []byte) (*keySnapshot, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("the key set is not a JWK Set: %w", err)
	}
	s := &keySnapshot{byKID: map[string][]jose.JSONWebKey{}}
	for _, raw := range doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Key.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			k = k.Public()
		}
		switch key := k.Key.(type) {
		case *ecdsa.PublicKey, ed25519.PublicKey:
		case *rsa.PublicKey:
			if key.N.BitLen() < minRSABits {
				continue
			}
		default:
			continue
		}
		k.Certificates = nil // not used; do not keep them alive
		s.all = append(s.all, k)
		if k.KeyID != "" {
			s.byKID[k.KeyID] = append(s.byKID[k.KeyID], k)
		}
	}
	if len(s.all) == 0 {
		return nil, errors.New("the key set has no usable signature key")
	}
	return s, nil
}

// keyFits reports whether k may verify a signature made with alg: the key
// type and curve fit the algorithm, and the key's own "alg", when set, is
// alg.
func keyFits(k jose.JSONWebKey, alg string) bool {
	if k.Algorithm != "" && k.Algorithm != alg {
		return false
	}
	switch key := k.Key.(type) {
	case *ecdsa.PublicKey:
		switch jose.SignatureAlgorithm(alg) {
		case jose.ES256:
			return key.Curve == elliptic.P256()
		case jose.ES384:
			return key.Curve == elliptic.P384()
		case jose.ES512:
			return key.Curve == elliptic.P521()
		}
	case *rsa.PublicKey:
		switch jose.SignatureAlgorithm(alg) {
		case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
			return true
		}
	case ed25519.PublicKey:
		return jose.SignatureAlgorithm(alg) == jose.EdDSA
	}
	return false
}

// defaultHTTPClient is the client verifiers use when the configuration
// gives none: a timeout and, with redirects, at most 3 of them, only to URLs
// oauth.CheckEndpointURL accepts; without, none is followed (a 3xx is then
// an unexpected status).
func defaultHTTPClient(timeout time.Duration, redirects bool) *http.Client {
	return &http.Client{
		Timeout: timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if !redirects {
				return http.ErrUseLastResponse
			}
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			return oauth.CheckEndpointURL(req.URL.String())
		},
	}
}
