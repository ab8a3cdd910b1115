package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/evergrant/evergrant/oauth"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Defaults for the zero values of JWTConfig.
const (
	DefaultLeeway             = 30 * time.Second
	DefaultMinRefetchInterval = 10 * time.Second
	DefaultMaxWait            = 2 * time.Second
)

// defaultAlgorithms is the allow-list used when JWTConfig.Algorithms is
// empty.
var defaultAlgorithms = []string{"ES256", "RS256", "PS256", "EdDSA"}

// supportedAlgorithms are the algorithms JWTConfig.Algorithms may name: the
// asymmetric JWS algorithms RFC 9068 §2.1 allows. "none" and the HMAC
// algorithms are never accepted: a resource server must not be able to mint
// the tokens it accepts, and an HMAC "key" taken from a published public key
// is the classic algorithm-confusion attack.
var supportedAlgorithms = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512,
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.EdDSA,
}

// maxTokenBytes bounds the size of a token a verifier looks at.
const maxTokenBytes = 64 << 10

// JWTConfig configures a JWTVerifier.
type JWTConfig struct {
	// Issuer is required: the token's "iss" must equal it exactly.
	Issuer string
	// Audience is required: the canonical URI of this resource (RFC 8707).
	// The token's "aud" (a string or an array) must contain it, compared
	// with oauth.SameResource.
	Audience string
	// JWKSURL is the issuer's jwks_uri (RFC 8414). It is required unless
	// Keys is set, and must be https, or http on a loopback host
	// (oauth.CheckEndpointURL). The document is read up to 1 MiB, with a
	// timeout.
	JWKSURL string
	// Keys is a JWK Set document (RFC 7517 §5), such as
	// (*authserver.Server).JWKS(), to use instead of fetching JWKSURL. The
	// set is fixed: an unknown kid is simply an invalid token.
	Keys []byte
	// Algorithms is the allow-list of JWS algorithms; empty means ES256,
	// RS256, PS256 and EdDSA. Only asymmetric algorithms (ES256/384/512,
	// RS256/384/512, PS256/384/512, EdDSA) may be listed; "none" and HS*
	// are refused by NewJWTVerifier.
	Algorithms []string
	// RequireATJWT makes the verifier follow RFC 9068 strictly: the
	// header's "typ" must be "at+jwt" or "application/at+jwt"
	// (case-insensitive), as §4 asks, and the claims "client_id", "iat"
	// and "jti", required by §2.2, must be present. When false, a token
	// without "typ" or with "JWT" is accepted too, but any other "typ" (an
	// ID token's or a logout token's, say) is refused, and those three
	// claims are optional. A non-empty "sub" is required either way: it is
	// the user the official Go SDK binds sessions to.
	RequireATJWT bool
	// Leeway is the clock skew allowed for "exp", "nbf" and "iat", and
	// between the issuer's clock and ours when deciding whether the cached
	// key set should already hold the key of a token (see
	// MinRefetchInterval). Zero means DefaultLeeway; a negative value means
	// none.
	Leeway time.Duration
	// HTTPClient fetches the JWKS. Nil means a client with a 10 s timeout
	// that follows at most 3 redirects, only to https or loopback http
	// URLs.
	HTTPClient *http.Client
	// MinRefetchInterval is the least time between two JWKS fetches other
	// than the first, whether caused by an unknown kid or by the cache's
	// max-age: a burst of tokens with forged key ids causes at most one
	// fetch per interval. Zero means DefaultMinRefetchInterval.
	//
	// A token with an unknown kid is decided by its "iat": when the cached
	// set was fetched at least Leeway after iat, the key should be in it
	// and the token is invalid at once. Otherwise the set may predate a key
	// the issuer has just rotated in, and Verify joins the fetch in flight
	// or waits for the next one the interval allows, if that fits in
	// MaxWait, and decides with the new set; if it does not, Verify fails
	// with ErrVerifierUnavailable and the middleware answers 503 with
	// Retry-After set to when that fetch is allowed, rather than a 401
	// that would make the client throw away a good token. A token without
	// "iat" triggers a refetch when the interval allows one and is invalid
	// if its kid is still unknown after a successful fetch.
	MinRefetchInterval time.Duration
	// MaxWait is how long a Verify call waits for the JWKS, counting both
	// the wait for the rate limit to allow a fetch (see MinRefetchInterval)
	// and the fetch itself, before it gives up with ErrVerifierUnavailable
	// (a fetch goes on, up to 10 s or MaxWait if longer, and its result is
	// kept). Zero means DefaultMaxWait. With the defaults (2 s against a
	// 10 s interval), a token signed with a key rotated in less than the
	// interval after the last fetch may get one 503 with Retry-After; a
	// MaxWait at least MinRefetchInterval makes Verify wait instead.
	MaxWait time.Duration
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// JWTVerifier verifies JWT access tokens (RFC 9068) locally, with keys
// from the issuer's JWKS. It is a Verifier and safe for concurrent use.
//
// The JWKS is fetched on first use and cached. A token signed with a key
// the cache does not know, issued after the cached set was fetched, makes
// the verifier refetch the set (at most once per MinRefetchInterval, one
// fetch shared by all callers), so the issuer's key rotations are followed
// without configuration; see JWTConfig.MinRefetchInterval. The set is also
// refetched in the background, on use, once its Cache-Control max-age has
// passed (clamped to between 1 minute and 24 hours; 1 hour when the
// response gives no max-age). When a fetch fails, the keys already cached
// stay in use.
type JWTVerifier struct {
	issuer   string
	audience string // canonical
	algs     []jose.SignatureAlgorithm
	strict   bool
	leeway   time.Duration
	now      func() time.Time
	keys     *jwksCache
}

var _ Verifier = (*JWTVerifier)(nil)

// NewJWTVerifier returns a JWTVerifier for cfg, or an error if cfg is
// incomplete or unsafe.
func NewJWTVerifier(cfg JWTConfig) (*JWTVerifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("server: JWTConfig.Issuer is required")
	}
	aud, err := oauth.CanonicalResource(cfg.Audience)
	if err != nil {
		return nil, fmt.Errorf("server: JWTConfig.Audience: %w", err)
	}
	names := cfg.Algorithms
	if len(names) == 0 {
		names = defaultAlgorithms
	}
	var algs []jose.SignatureAlgorithm
	for _, n := range names {
		a := jose.SignatureAlgorithm(n)
		if !slices.Contains(supportedAlgorithms, a) {
			return nil, fmt.Errorf("server: JWTConfig.Algorithms: %q is not an asymmetric JWS algorithm", n)
		}
		if !slices.Contains(algs, a) {
			algs = append(algs, a)
		}
	}
	v := &JWTVerifier{
		issuer:   cfg.Issuer,
		audience: aud,
		algs:     algs,
		strict:   cfg.RequireATJWT,
		leeway:   cfg.Leeway,
		now:      cfg.Now,
	}
	if v.leeway == 0 {
		v.leeway = DefaultLeeway
	} else if v.leeway < 0 {
		v.leeway = 0
	}
	if v.now == nil {
		v.now = time.Now
	}
	c := &jwksCache{
		url:        cfg.JWKSURL,
		client:     cfg.HTTPClient,
		now:        v.now,
		minRefetch: cfg.MinRefetchInterval,
		maxWait:    cfg.MaxWait,
		leeway:     v.leeway,
	}
	c.sleepUntil = c.sleepUntilWall
	if c.minRefetch <= 0 {
		c.minRefetch = DefaultMinRefetchInterval
	}
	if c.maxWait <= 0 {
		c.maxWait = DefaultMaxWait
	}
	if c.client == nil {
		c.client = defaultHTTPClient(max(jwksFetchTimeout, c.maxWait), true)
	}
	switch {
	case len(cfg.Keys) > 0 && cfg.JWKSURL != "":
		return nil, errors.New("server: set one of JWTConfig.JWKSURL and JWTConfig.Keys, not both")
	case len(cfg.Keys) > 0:
		s, err := parseJWKS(cfg.Keys)
		if err != nil {
			return nil, fmt.Errorf("server: JWTConfig.Keys: %w", err)
		}
		c.static = true
		c.snap.Store(s)
	case cfg.JWKSURL == "":
		return nil, errors.New("server: JWTConfig.JWKSURL or JWTConfig.Keys is required")
	default:
		if err := oauth.CheckEndpointURL(cfg.JWKSURL); err != nil {
			return nil, fmt.Errorf("server: JWTConfig.JWKSURL: %w", err)
		}
	}
	v.keys = c
	return v, nil
}

// Verify checks a JWT access token: its signature with a key of the
// issuer's JWKS chosen by "kid" (a token without "kid" is accepted only when
// the set holds exactly one key), the algorithm against the allow-list and
// the key, "typ", "iss", "aud", "exp" (required), "nbf" and "iat"; a token
// bound to a key ("cnf", RFC 7800, as DPoP and mTLS tokens are) is refused,
// since only bearer use is supported. A non-empty "sub" is required, and
// with RequireATJWT also "client_id", "iat" and "jti" (RFC 9068 §2.2). It
// returns the token's subject, client, scopes (from "scope", else "scp"),
// expiry, issuer, audiences and "jti"; other claims go to Extra.
//
// Errors wrap ErrInvalidToken, or ErrVerifierUnavailable when the keys
// could not be obtained: nothing cached and the JWKS unreachable, or a kid
// unknown to a cached set that may predate the token while the latest fetch
// failed or a new one could not be had within MaxWait (the key may be new,
// so the token cannot be called bad). Such an error may carry a retry
// delay, which the middleware sends as Retry-After.
// Their text names the failed check and never contains token material.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (*TokenInfo, error) {
	if token == "" || len(token) > maxTokenBytes {
		return nil, fmt.Errorf("%w: malformed token", ErrInvalidToken)
	}
	tok, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		return nil, fmt.Errorf("%w: not a signed JWT with an accepted algorithm", ErrInvalidToken)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: malformed token", ErrInvalidToken)
	}
	h := tok.Headers[0]
	if err := v.checkHeader(h); err != nil {
		return nil, err
	}
	candidates, err := v.keys.keys(ctx, h.KeyID, func() time.Time { return unverifiedIssuedAt(tok) })
	if err != nil {
		return nil, err
	}
	var key *jose.JSONWebKey
	for i := range candidates {
		if keyFits(candidates[i], h.Algorithm) {
			key = &candidates[i]
			break
		}
	}
	if key == nil {
		return nil, fmt.Errorf("%w: the signing key does not fit the token's algorithm", ErrInvalidToken)
	}
	var raw map[string]json.RawMessage
	if err := tok.Claims(key.Key, &raw); err != nil {
		return nil, fmt.Errorf("%w: bad signature or claims", ErrInvalidToken)
	}
	c, err := parseClaims(raw, jwtRegistered)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if err := v.checkClaims(c); err != nil {
		return nil, err
	}
	return c.info(), nil
}

// unverifiedIssuedAt returns the "iat" of a token whose signature has not
// been checked, or the zero time when it has none or it is malformed. It
// only helps decide whether to refetch the key set.
func unverifiedIssuedAt(tok *jwt.JSONWebToken) time.Time {
	var c struct {
		IAT json.RawMessage `json:"iat"`
	}
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || c.IAT == nil || isNull(c.IAT) {
		return time.Time{}
	}
	t, err := numericDate(c.IAT)
	if err != nil {
		return time.Time{}
	}
	return t
}

// checkHeader checks "typ" and refuses extensions we do not implement.
func (v *JWTVerifier) checkHeader(h jose.Header) error {
	if _, ok := h.ExtraHeaders["crit"]; ok {
		return fmt.Errorf("%w: critical header extensions are not supported", ErrInvalidToken)
	}
	if _, ok := h.ExtraHeaders["b64"]; ok {
		return fmt.Errorf("%w: unencoded payloads are not supported", ErrInvalidToken)
	}
	typ, present := h.ExtraHeaders[jose.HeaderType]
	s, isString := typ.(string)
	if present && !isString {
		return fmt.Errorf("%w: malformed typ header", ErrInvalidToken)
	}
	s = strings.ToLower(s)
	switch {
	case s == "at+jwt" || s == "application/at+jwt":
		return nil
	case v.strict:
		return fmt.Errorf("%w: typ must be at+jwt (RFC 9068)", ErrInvalidToken)
	case !present || s == "jwt" || s == "application/jwt":
		return nil
	default:
		return fmt.Errorf("%w: typ is not at+jwt", ErrInvalidToken)
	}
}

// checkClaims checks issuer, audience, time and identity claims.
func (v *JWTVerifier) checkClaims(c *claims) error {
	now := v.now()
	switch {
	case c.iss != v.issuer:
		return fmt.Errorf("%w: wrong issuer", ErrInvalidToken)
	case !audienceContains(c.aud, v.audience):
		return fmt.Errorf("%w: the token is not for this resource (audience)", ErrInvalidToken)
	case c.exp.IsZero():
		return fmt.Errorf("%w: the token has no expiry", ErrInvalidToken)
	case !now.Before(c.exp.Add(v.leeway)):
		return fmt.Errorf("%w: the token has expired", ErrInvalidToken)
	case !c.nbf.IsZero() && c.nbf.After(now.Add(v.leeway)):
		return fmt.Errorf("%w: the token is not valid yet", ErrInvalidToken)
	case !c.iat.IsZero() && c.iat.After(now.Add(v.leeway)):
		return fmt.Errorf("%w: the token was issued in the future", ErrInvalidToken)
	case c.cnf:
		return fmt.Errorf("%w: the token is sender-constrained (cnf); only bearer tokens are supported", ErrInvalidToken)
	case c.sub == "":
		return fmt.Errorf("%w: the token has no subject (sub)", ErrInvalidToken)
	case v.strict && c.clientID == "":
		return fmt.Errorf("%w: the token has no client_id (RFC 9068 §2.2)", ErrInvalidToken)
	case v.strict && c.iat.IsZero():
		return fmt.Errorf("%w: the token has no iat (RFC 9068 §2.2)", ErrInvalidToken)
	case v.strict && c.jti == "":
		return fmt.Errorf("%w: the token has no jti (RFC 9068 §2.2)", ErrInvalidToken)
	}
	return nil
}

// audienceContains reports whether auds holds the canonical resource res.
func audienceContains(auds []string, res string) bool {
	for _, a := range auds {
		if a == res || oauth.SameResource(a, res) {
			return true
		}
	}
	return false
}

// claims are the members of a JWT claims set or an introspection response
// that verifiers use.
type claims struct {
	iss, sub, clientID, jti string
	aud                     []string
	exp, nbf, iat           time.Time // zero when absent
	scopes                  []string
	tokenType               string // introspection "token_type"
	cnf                     bool   // a confirmation claim (RFC 7800) is present
	extra                   map[string]any
}

// jwtRegistered are the claims parseClaims reads into fields (or skips)
// for JWTs; the others go to Extra.
var jwtRegistered = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true,
	"jti": true, "client_id": true, "scope": true, "scp": true, "cnf": true,
}

// parseClaims reads the members of obj. Members in registered are read
// into fields (or, for those without one, dropped); the rest are decoded
// into extra. A registered member of the wrong type is an error; JSON null
// counts as absent.
func parseClaims(obj map[string]json.RawMessage, registered map[string]bool) (*claims, error) {
	c := &claims{}
	var scope, scp json.RawMessage
	for name, raw := range obj {
		if isNull(raw) {
			continue
		}
		var err error
		switch name {
		case "iss":
			err = json.Unmarshal(raw, &c.iss)
		case "sub":
			err = json.Unmarshal(raw, &c.sub)
		case "client_id":
			err = json.Unmarshal(raw, &c.clientID)
		case "jti":
			err = json.Unmarshal(raw, &c.jti)
		case "token_type":
			if registered[name] {
				err = json.Unmarshal(raw, &c.tokenType)
			} else {
				err = c.addExtra(name, raw)
			}
		case "aud":
			c.aud, err = stringOrArray(raw)
		case "exp":
			c.exp, err = numericDate(raw)
		case "nbf":
			c.nbf, err = numericDate(raw)
		case "iat":
			c.iat, err = numericDate(raw)
		case "scope":
			scope = raw
		case "scp":
			scp = raw
		case "cnf":
			c.cnf = true
		default:
			if !registered[name] {
				err = c.addExtra(name, raw)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("malformed claim %q", name)
		}
	}
	switch {
	case scope != nil:
		var s string
		if err := json.Unmarshal(scope, &s); err != nil {
			return nil, errors.New(`malformed claim "scope"`)
		}
		c.scopes = oauth.ParseScope(s)
	case scp != nil:
		list, err := stringOrArray(scp)
		if err != nil {
			return nil, errors.New(`malformed claim "scp"`)
		}
		c.scopes = oauth.ParseScope(strings.Join(list, " "))
	}
	return c, nil
}

// addExtra decodes an unregistered member into extra.
func (c *claims) addExtra(name string, raw json.RawMessage) error {
	var val any
	if err := json.Unmarshal(raw, &val); err != nil {
		return err
	}
	if c.extra == nil {
		c.extra = map[string]any{}
	}
	c.extra[name] = val
	return nil
}

// info converts verified claims to a TokenInfo.
func (c *claims) info() *TokenInfo {
	return &TokenInfo{
		Subject:  c.sub,
		ClientID: c.clientID,
		Scopes:   c.scopes,
		Expiry:   c.exp,
		Issuer:   c.iss,
		Audience: c.aud,
		ID:       c.jti,
		Extra:    c.extra,
	}
}

func isNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// stringOrArray decodes a JSON string or array of strings, as "aud"
// (RFC 7519 §4.1.3) and "scp" are.
func stringOrArray(raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return []string{s}, nil
	}
	var list []string
	err := json.Unmarshal(raw, &list)
	return list, err
}

// maxUnix bounds NumericDate values (the end of year 9999), so that huge
// numbers do not overflow time arithmetic.
const maxUnix = 253402300799

// numericDate decodes an RFC 7519 NumericDate: a JSON number of seconds,
// possibly with a fraction.
func numericDate(raw json.RawMessage) (time.Time, error) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return time.Time{}, errors.New("not a number")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(min(max(n, -maxUnix), maxUnix), 0), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if (err != nil && !errors.Is(err, strconv.ErrRange)) || math.IsNaN(f) {
		return time.Time{}, errors.New("not a number")
	}
	f = min(max(f, -maxUnix), maxUnix)
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}
