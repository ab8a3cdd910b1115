package oauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxDocumentSize bounds the size of the metadata documents and token
// responses the Parse functions accept; callers reading a remote response
// should read no more than MaxDocumentSize+1 bytes of it.
const MaxDocumentSize = 1 << 20

var (
	// ErrInvalidMetadata is wrapped by the errors of
	// ParseAuthServerMetadata, ParseProtectedResourceMetadata and
	// AuthServerMetadataURLs.
	ErrInvalidMetadata = errors.New("oauth: invalid metadata")
	// ErrNotOAuthError is wrapped by the error of ParseError when a body is
	// not an RFC 6749 §5.2 error response.
	ErrNotOAuthError = errors.New("oauth: not an OAuth error response")
	// ErrInvalidTokenResponse is wrapped by the errors of
	// ParseTokenResponse.
	ErrInvalidTokenResponse = errors.New("oauth: invalid token response")
)

// ParseAuthServerMetadata decodes an authorization server metadata document
// (RFC 8414 §3.2) fetched for issuer and validates it:
//
//   - its "issuer" must be identical to issuer, compared as strings
//     (RFC 8414 §3.3), and must pass CheckEndpointURL and have no query
//     (RFC 8414 §2);
//   - the authorization, token, registration, revocation and introspection
//     endpoints and the jwks_uri, when present, must pass CheckEndpointURL.
//
// Members that are not understood are ignored (RFC 8414 §3.2). It does not
// require any endpoint to be present; callers check for the ones they use.
// Errors wrap ErrInvalidMetadata, and ErrInsecureURL when an endpoint was
// refused.
func ParseAuthServerMetadata(data []byte, issuer string) (*AuthServerMetadata, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalidMetadata, MaxDocumentSize)
	}
	var m AuthServerMetadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidMetadata, err)
	}
	switch {
	case m.Issuer == "":
		return nil, fmt.Errorf("%w: no issuer", ErrInvalidMetadata)
	case m.Issuer != issuer:
		// RFC 8414 §3.3: a mismatch means the data MUST NOT be used.
		return nil, fmt.Errorf("%w: issuer %q is not the expected %q", ErrInvalidMetadata, m.Issuer, issuer)
	}
	if err := CheckEndpointURL(m.Issuer); err != nil {
		return nil, fmt.Errorf("%w: issuer: %w", ErrInvalidMetadata, err)
	}
	if u, err := url.Parse(m.Issuer); err == nil && (u.RawQuery != "" || u.ForceQuery) {
		return nil, fmt.Errorf("%w: issuer %q has a query", ErrInvalidMetadata, m.Issuer)
	}
	for _, e := range []struct{ name, value string }{
		{"authorization_endpoint", m.AuthorizationEndpoint},
		{"token_endpoint", m.TokenEndpoint},
		{"registration_endpoint", m.RegistrationEndpoint},
		{"revocation_endpoint", m.RevocationEndpoint},
		{"introspection_endpoint", m.IntrospectionEndpoint},
		{"jwks_uri", m.JWKSURI},
	} {
		if e.value == "" {
			continue
		}
		if err := CheckEndpointURL(e.value); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidMetadata, e.name, err)
		}
	}
	return &m, nil
}

// ParseProtectedResourceMetadata decodes a protected resource metadata
// document (RFC 9728 §3.2) fetched for resource and validates it:
//
//   - its "resource" must name the same resource, compared in canonical form
//     (see SameResource). RFC 9728 §3.3 asks for identical strings; the
//     canonical comparison also accepts differences in the case of scheme
//     and host, a default port or a trailing slash, as the MCP authorization
//     specification asks implementations to;
//   - "authorization_servers" must list at least one server (the MCP
//     authorization specification, 2025-11-25, requires it), and each must
//     pass CheckEndpointURL;
//   - jwks_uri, when present, must pass CheckEndpointURL.
//
// Members that are not understood are ignored (RFC 9728 §3.2). Errors wrap
// ErrInvalidMetadata, and ErrInsecureURL when a URL was refused.
func ParseProtectedResourceMetadata(data []byte, resource string) (*ProtectedResourceMetadata, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalidMetadata, MaxDocumentSize)
	}
	var m ProtectedResourceMetadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidMetadata, err)
	}
	if m.Resource == "" {
		return nil, fmt.Errorf("%w: no resource", ErrInvalidMetadata)
	}
	if _, err := CanonicalResource(resource); err != nil {
		return nil, fmt.Errorf("%w: expected resource: %w", ErrInvalidMetadata, err)
	}
	if !SameResource(m.Resource, resource) {
		// RFC 9728 §3.3: the data MUST NOT be used.
		return nil, fmt.Errorf("%w: resource %q is not the expected %q", ErrInvalidMetadata, m.Resource, resource)
	}
	if len(m.AuthorizationServers) == 0 {
		return nil, fmt.Errorf("%w: no authorization_servers", ErrInvalidMetadata)
	}
	for i, as := range m.AuthorizationServers {
		if err := CheckEndpointURL(as); err != nil {
			return nil, fmt.Errorf("%w: authorization_servers[%d]: %w", ErrInvalidMetadata, i, err)
		}
	}
	if m.JWKSURI != "" {
		if err := CheckEndpointURL(m.JWKSURI); err != nil {
			return nil, fmt.Errorf("%w: jwks_uri: %w", ErrInvalidMetadata, err)
		}
	}
	return &m, nil
}

// SupportsS256 reports whether the authorization server lists the PKCE
// method S256 in code_challenge_methods_supported (RFC 8414 §2). The MCP
// authorization specification requires clients to refuse a server that does
// not. A nil m supports nothing.
func (m *AuthServerMetadata) SupportsS256() bool {
	return m != nil && slices.Contains(m.CodeChallengeMethodsSupported, CodeChallengeMethodS256)
}

// SupportsScope reports whether the authorization server lists scope in
// scopes_supported (RFC 8414 §2). A nil m supports nothing.
func (m *AuthServerMetadata) SupportsScope(scope string) bool {
	return m != nil && slices.Contains(m.ScopesSupported, scope)
}

// ParseError parses an error response body (RFC 6749 §5.2): a JSON object
// whose "error" member is a non-empty string of the characters RFC 6749
// allows (%x20-21 / %x23-5B / %x5D-7E). The optional "error_description"
// and "error_uri" are read when they are strings; control characters in the
// description are replaced by spaces so that it is safe to print. The
// returned Error has StatusCode set to status. Only the first MaxErrorBody
// bytes of body are looked at. When body is not such an object, the error
// wraps ErrNotOAuthError.
func ParseError(status int, body []byte) (*Error, error) {
	if len(body) > MaxErrorBody {
		body = body[:MaxErrorBody]
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotOAuthError, err)
	}
	e, err := errorFromObject(obj)
	if err != nil {
		return nil, err
	}
	e.StatusCode = status
	return e, nil
}

// errorFromObject reads the RFC 6749 §5.2 members of a decoded JSON object.
func errorFromObject(obj map[string]json.RawMessage) (*Error, error) {
	raw, ok := obj["error"]
	if !ok {
		return nil, fmt.Errorf("%w: no \"error\" member", ErrNotOAuthError)
	}
	var code string
	if err := json.Unmarshal(raw, &code); err != nil || code == "" || !isNQSChars(code) {
		return nil, fmt.Errorf("%w: \"error\" is not a non-empty string of RFC 6749 characters", ErrNotOAuthError)
	}
	e := &Error{Code: code}
	var s string
	if json.Unmarshal(obj["error_description"], &s) == nil {
		e.Description = mapBytes(s, func(c byte) byte {
			if c < 0x20 || c == 0x7F {
				return ' '
			}
			return c
		})
	}
	s = ""
	if json.Unmarshal(obj["error_uri"], &s) == nil {
		e.URI = s
	}
	return e, nil
}

// ParseTokenResponse decodes a successful access token response
// (RFC 6749 §5.1). access_token and token_type are required; token_type must
// be "Bearer" compared case-insensitively (RFC 6749 §5.1, RFC 6750 §4) and is
// returned as TokenTypeBearer. expires_in is accepted as a JSON number or a
// string holding one, as some servers send it; it must not be negative, and
// must fit in a time.Duration; fractional seconds are dropped. refresh_token
// and scope, when present, must be strings; null counts as absent.
//
// A body carrying an "error" member instead of an access token (as some
// servers send with status 200) gives an error that wraps both
// ErrInvalidTokenResponse and the *Error read from it. Errors wrap
// ErrInvalidTokenResponse.
func ParseTokenResponse(body []byte) (*TokenResponse, error) {
	if len(body) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: body larger than %d bytes", ErrInvalidTokenResponse, MaxDocumentSize)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTokenResponse, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidTokenResponse)
	}
	if _, ok := obj["access_token"]; !ok {
		if e, err := errorFromObject(obj); err == nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidTokenResponse, e)
		}
	}
	var t TokenResponse
	var err error
	if t.AccessToken, err = stringMember(obj, "access_token"); err != nil {
		return nil, err
	}
	if t.AccessToken == "" {
		return nil, fmt.Errorf("%w: no access_token", ErrInvalidTokenResponse)
	}
	if t.TokenType, err = stringMember(obj, "token_type"); err != nil {
		return nil, err
	}
	if t.TokenType == "" {
		return nil, fmt.Errorf("%w: no token_type", ErrInvalidTokenResponse)
	}
	if !strings.EqualFold(t.TokenType, TokenTypeBearer) {
		return nil, fmt.Errorf("%w: token_type %q is not Bearer", ErrInvalidTokenResponse, t.TokenType)
	}
	t.TokenType = TokenTypeBearer
	if t.RefreshToken, err = stringMember(obj, "refresh_token"); err != nil {
		return nil, err
	}
	if t.Scope, err = stringMember(obj, "scope"); err != nil {
		return nil, err
	}
	if t.ExpiresIn, err = expiresIn(obj["expires_in"]); err != nil {
		return nil, err
	}
	return &t, nil
}

// stringMember returns the string member name of obj; absent and null give
// "".
func stringMember(obj map[string]json.RawMessage, name string) (string, error) {
	raw, ok := obj[name]
	if !ok {
		return "", nil
	}
	var s *string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%w: %s is not a string", ErrInvalidTokenResponse, name)
	}
	if s == nil {
		return "", nil
	}
	return *s, nil
}

// maxExpiresIn is the largest expires_in that fits in a time.Duration.
const maxExpiresIn = math.MaxInt64 / int64(time.Second)

// expiresIn reads expires_in (RFC 6749 §5.1): a number of seconds, or a
// string holding one; absent, null and "" give 0.
func expiresIn(raw json.RawMessage) (int64, error) {
	if raw == nil {
		return 0, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, fmt.Errorf("%w: expires_in: %w", ErrInvalidTokenResponse, err)
	}
	var text string
	switch v := v.(type) {
	case nil:
		return 0, nil
	case string:
		text = strings.TrimSpace(v)
		if text == "" {
			return 0, nil
		}
	case float64:
		text = string(raw)
	default:
		return 0, fmt.Errorf("%w: expires_in is not a number", ErrInvalidTokenResponse)
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(text, 64)
		if ferr != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f >= float64(maxExpiresIn) {
			return 0, fmt.Errorf("%w: expires_in %q is not a number of seconds that fits in a time.Duration", ErrInvalidTokenResponse, text)
		}
		n = int64(f)
	}
	if n < 0 || n > maxExpiresIn {
		return 0, fmt.Errorf("%w: expires_in %d is out of range", ErrInvalidTokenResponse, n)
	}
	return n, nil
}

// ParseScope splits a scope string at spaces (RFC 6749 §3.3), dropping
// empty and repeated tokens and keeping the order of the rest. It returns nil
// when there is no token.
func ParseScope(s string) []string {
	var out []string
	var seen scopeSet
	for tok := range strings.SplitSeq(s, " ") {
		if tok != "" && seen.add(tok) {
			out = append(out, tok)
		}
	}
	return out
}

// FormatScope joins scopes with spaces (RFC 6749 §3.3), leaving out empty and
// repeated ones.
func FormatScope(scopes []string) string {
	var b strings.Builder
	var seen scopeSet
	for _, s := range scopes {
		if s == "" || !seen.add(s) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	return b.String()
}

// scopeSet remembers the scopes seen so far: a slice while there are few, a
// map beyond, so that hostile input costs linear time.
type scopeSet struct {
	list []string
	m    map[string]struct{}
}

// add adds s and reports whether it was new.
func (set *scopeSet) add(s string) bool {
	if set.m != nil {
		if _, ok := set.m[s]; ok {
			return false
		}
		set.m[s] = struct{}{}
		return true
	}
	if slices.Contains(set.list, s) {
		return false
	}
	set.list = append(set.list, s)
	if len(set.list) > 16 {
		set.m = make(map[string]struct{}, 2*len(set.list))
		for _, v := range set.list {
			set.m[v] = struct{}{}
		}
		set.list = nil
	}
	return true
}
