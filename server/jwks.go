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
	// jwksMaxRounds bounds the fetches one caller waits for while deciding
	// an unknown kid.
	jwksMaxRounds = 4
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
	fetchedAt time.Time // start of the fetch that produced it; zero: static
	attempt   uint64    // number of the fetch that produced it
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
//   - Fetches (other than the very first) start at most once per
//     MinRefetchInterval, and concurrent callers share one in-flight fetch,
//     whatever the tokens say: a burst of forged key ids costs at most one
//     fetch per interval.
//   - A token whose kid is not in the set is decided with its (unverified)
//     "iat". Let S be the start of the fetch that produced the set. When
//     S >= iat + Leeway, the set is younger than the token and should hold
//     its key: the token is invalid, without a fetch. Otherwise the set may
//     predate the key (the issuer rotated it a moment ago): the caller
//     joins the fetch in flight, if any, or waits for the next fetch the
//     rate limit allows, as long as that fits in MaxWait and its context,
//     and looks again. A kid still unknown to a set fetched after the
//     caller had the token is invalid. When the next fetch does not fit,
//     the answer is "unavailable", with the time until that fetch as a
//     Retry-After hint: the client should send the same token again, not
//     refresh it or sign the user in again. A token issued more than
//     Leeway in the future is invalid at once.
//   - A token without "iat" triggers a refetch when the rate limit allows
//     one (joining any fetch in flight); a kid still unknown after a
//     successful fetch is an invalid token.
//   - After Cache-Control max-age (clamped to [1 min, 24 h]; 1 h when the
//     header gives none) the next use triggers a refetch in the background
//     and keeps using the cached keys meanwhile.
//   - A failed fetch never drops keys already cached. While the latest
//     fetch has failed, an unknown kid that the cached set cannot decide is
//     "unavailable", not "invalid": the key may be one we could not fetch.
type jwksCache struct {
	url        string
	client     *http.Client
	now        func() time.Time
	minRefetch time.Duration
	maxWait    time.Duration
	leeway     time.Duration // clock skew allowed between the issuer and us
	static     bool          // keys given in the configuration; never fetched
	// sleepUntil waits until c.now() reaches t or ctx ends; tests replace
	// it to move their clock instead.
	sleepUntil func(ctx context.Context, t time.Time) error
	// testHookFetchWait, when set, is called as a caller starts or joins
	// a fetch.
	testHookFetchWait func()

	snap atomic.Pointer[keySnapshot] // stored under mu
	sf   singleflight.Group

	mu          sync.Mutex
	lastAttempt time.Time     // start of the last fetch
	attempts    atomic.Uint64 // fetches started so far; changed under mu
	fetching    bool          // the fetch started at lastAttempt is under way
	lastErr     error         // outcome of the last completed fetch
}

// retryAfterError is an ErrVerifierUnavailable error that knows when trying
// again makes sense; the middleware sends it as Retry-After.
type retryAfterError struct {
	after time.Duration
	err   error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter is how long to wait before trying the same token again.
func (e *retryAfterError) RetryAfter() time.Duration { return e.after }

// keys returns the candidate keys for kid. iat is called only when kid is
// not in the cached set; it returns the token's unverified "iat", zero when
// the token has none. Errors wrap ErrInvalidToken (the kid is not in a key
// set that should hold it) or ErrVerifierUnavailable (the key set could not
// be obtained, or not in time).
func (c *jwksCache) keys(ctx context.Context, kid string, iat func() time.Time) ([]jose.JSONWebKey, error) {
	before := c.attempts.Load() // fetches started before this call
	s := c.snap.Load()
	if s == nil {
		if err := c.fetchWait(ctx, c.maxWait); err != nil && !errors.Is(err, errRateLimited) {
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
	if t := iat(); !t.IsZero() {
		return c.awaitKey(ctx, kid, t, before)
	}
	err := c.fetchWait(ctx, c.maxWait)
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

// awaitKey decides a kid missing from the cached set for a token issued at
// iat (unverified), as the policy on jwksCache says: invalid when a set
// fetched since the token was issued lacks the kid; otherwise wait, within
// MaxWait and ctx, for a fetch that started late enough. before is the
// number of fetches started before the caller had the token.
func (c *jwksCache) awaitKey(ctx context.Context, kid string, iat time.Time, before uint64) ([]jose.JSONWebKey, error) {
	start := c.now()
	if iat.After(start.Add(c.leeway)) {
		// Verify would refuse it anyway; do not wait for a fetch first.
		return nil, fmt.Errorf("%w: the token was issued in the future", ErrInvalidToken)
	}
	deadline := start.Add(c.maxWait)
	if d, ok := ctx.Deadline(); ok { // on the wall clock, c.now may differ
		deadline = minTime(deadline, start.Add(time.Until(d)))
	}
	for range jwksMaxRounds {
		c.mu.Lock()
		s, last, fetching, lastErr := c.snap.Load(), c.lastAttempt, c.fetching, c.lastErr
		c.mu.Unlock()
		if ks := s.find(kid); ks != nil {
			return ks, nil
		}
		// A set from a fetch that started Leeway after iat, or after this
		// call had the token, should hold the token's key.
		if !s.fetchedAt.Before(iat.Add(c.leeway)) || s.attempt > before {
			return nil, fmt.Errorf("%w: no key matches the token's key id", ErrInvalidToken)
		}
		now := c.now()
		var err error
		if fetching {
			// Join the fetch under way: it may bring the key, and costs
			// nothing more. If it started too early, look again after it.
			err = c.fetchWait(ctx, deadline.Sub(now))
		} else {
			next := maxTime(now, last.Add(c.minRefetch))
			if next.After(deadline) {
				wait := next.Sub(now)
				cause := errors.New("the cached key set may predate the token's key")
				if lastErr != nil {
					cause = fmt.Errorf("the last fetch failed: %w", lastErr)
				}
				return nil, &retryAfterError{after: wait, err: fmt.Errorf("%w: key id not in the cached JWKS and the next refetch is allowed in %s: %w",
					ErrVerifierUnavailable, wait.Round(time.Millisecond), cause)}
			}
			if next.After(now) {
				if err := c.sleepUntil(ctx, next); err != nil {
					return nil, fmt.Errorf("%w: JWKS: %w", ErrVerifierUnavailable, err)
				}
			}
			err = c.fetchWait(ctx, deadline.Sub(c.now()))
		}
		if errors.Is(err, errJWKSWait) || ctx.Err() != nil {
			return nil, fmt.Errorf("%w: JWKS: %w", ErrVerifierUnavailable, err)
		}
		// Fetched, failed, or rate-limited by a fetch someone else
		// started meanwhile: look again.
	}
	return nil, fmt.Errorf("%w: JWKS: the key set could not be refreshed in time", ErrVerifierUnavailable)
}

// sleepUntilWall is the production sleepUntil: it waits until c.now()
// reaches t, or ctx ends.
func (c *jwksCache) sleepUntilWall(ctx context.Context, t time.Time) error {
	d := t.Sub(c.now())
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetchWait starts a fetch, or joins the one in flight, and waits for it at
// most d and as long as ctx allows. The fetch goes on after the caller
// stopped waiting, so its result still lands in the cache.
func (c *jwksCache) fetchWait(ctx context.Context, d time.Duration) error {
	ch := c.sf.DoChan("jwks", c.fetch)
	if c.testHookFetchWait != nil {
		c.testHookFetchWait()
	}
	t := time.NewTimer(max(d, 0))
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

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
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
	attempt := c.attempts.Add(1)
	c.fetching = true
	c.mu.Unlock()

	s, err := c.download()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastErr = err
	c.fetching = false
	if err != nil {
		return nil, err
	}
	s.fetchedAt, s.attempt = now, attempt
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
