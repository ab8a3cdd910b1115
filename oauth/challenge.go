package oauth

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// Limits that bound the work ParseChallenges does on hostile input.
const (
	// MaxChallengeBytes is the total size of WWW-Authenticate field values
	// ParseChallenges reads. A value that would take the total past it is
	// ignored, with every value after it.
	MaxChallengeBytes = 8 << 10
	// MaxChallenges is the number of challenges ParseChallenges returns at
	// most; parsing stops at the first challenge beyond it.
	MaxChallenges = 64
)

// ErrMalformedChallenge is wrapped by the error ParseChallenges returns when
// a WWW-Authenticate field value does not follow RFC 9110 §11.6.1, or goes
// beyond MaxChallengeBytes or MaxChallenges.
var ErrMalformedChallenge = errors.New("oauth: malformed WWW-Authenticate")

// Challenge is one authentication challenge (RFC 9110 §11.6.1).
type Challenge struct {
	// Scheme is the auth-scheme as sent; compare it with Is.
	Scheme string
	// Token68 is set when the challenge uses the token68 form.
	Token68 string
	// Params holds the auth-params, names lower-cased, values unquoted and
	// unescaped. When a name occurs twice the first occurrence wins.
	Params map[string]string
}

// Is reports whether c uses scheme, compared case-insensitively as RFC 9110
// §11.1 requires.
func (c Challenge) Is(scheme string) bool {
	return strings.EqualFold(c.Scheme, scheme)
}

// String formats c as it appears in a WWW-Authenticate field value: the
// scheme, then either the token68 or the parameters in sorted name order,
// every value as a quoted-string with '\' and '"' escaped and control
// characters other than HTAB replaced by spaces, so the result is always a
// valid field value. A Token68 or a parameter name that is not valid for its
// syntax is left out; when Token68 is set the parameters are not written,
// since RFC 9110 allows one form or the other.
func (c Challenge) String() string {
	var b strings.Builder
	b.WriteString(c.Scheme)
	if c.Token68 != "" {
		if isToken68(c.Token68) {
			b.WriteByte(' ')
			b.WriteString(c.Token68)
		}
		return b.String()
	}
	names := make([]string, 0, len(c.Params))
	for name := range c.Params {
		if isToken(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for i, name := range names {
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteString(", ")
		}
		b.WriteString(name)
		b.WriteByte('=')
		writeQuoted(&b, sanitizeQuoted(c.Params[name]))
	}
	return b.String()
}

// ParseWWWAuthenticate parses every WWW-Authenticate field of h; see
// ParseChallenges.
func ParseWWWAuthenticate(h http.Header) ([]Challenge, error) {
	return ParseChallenges(h.Values("Www-Authenticate"))
}

// ParseChallenges parses WWW-Authenticate field values (RFC 9110 §11.6.1):
//
//	WWW-Authenticate = #challenge
//	challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//	auth-param  = token BWS "=" BWS ( token / quoted-string )
//
// A value may hold several challenges; a new one starts at a token that is
// followed by whitespace, a comma or the end rather than by "=". Empty list
// elements are skipped (RFC 9110 §5.6.1). Each value is parsed on its own,
// so a malformed value cannot hide the challenges of another.
//
// Parsing is best effort: ParseChallenges returns every challenge it could
// read and, when some part was malformed, an error wrapping
// ErrMalformedChallenge that describes the first such part. A parameter that
// is malformed or repeated is left out, and parsing resumes at the next comma
// outside a quoted-string. To bound the work on hostile input it reads at most
// MaxChallengeBytes of field values in total and returns at most
// MaxChallenges challenges; what lies beyond is ignored and reported as an
// error.
func ParseChallenges(values []string) ([]Challenge, error) {
	p := challengeParser{}
	total := 0
	for i, v := range values {
		if total+len(v) > MaxChallengeBytes {
			p.fail(i, 0, "field values exceed %d bytes; this value and later ones ignored", MaxChallengeBytes)
			break
		}
		total += len(v)
		if !p.parseValue(i, v) {
			break
		}
	}
	return p.out, p.err
}

// challengeParser holds the state of one ParseChallenges call.
type challengeParser struct {
	out []Challenge
	err error
}

// fail records the first malformed part.
func (p *challengeParser) fail(value, offset int, format string, args ...any) {
	if p.err != nil {
		return
	}
	p.err = fmt.Errorf("%w: value %d, offset %d: %s", ErrMalformedChallenge, value, offset, fmt.Sprintf(format, args...))
}

// parseValue parses one field value. It reports false when MaxChallenges was
// reached and parsing must stop.
func (p *challengeParser) parseValue(idx int, s string) bool {
	// cur is the index in p.out of the challenge that receives parameters,
	// or -1 when there is none (start of the value, or after a token68).
	cur := -1
	afterToken68 := false
	pos := 0
	for {
		// OWS and empty list elements (RFC 9110 §5.6.1).
		for pos < len(s) && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == ',') {
			pos++
		}
		if pos >= len(s) {
			return true
		}
		start := pos
		tok, end := readToken(s, pos)
		if tok == "" {
			p.fail(idx, pos, "expected an auth-scheme or a parameter name, found %q", s[pos])
			pos = skipElement(s, pos)
			continue
		}
		if eq := skipWS(s, end); eq < len(s) && s[eq] == '=' {
			// auth-param of the current challenge.
			if cur < 0 {
				if afterToken68 {
					p.fail(idx, start, "parameter %q after a token68", tok)
				} else {
					p.fail(idx, start, "parameter %q without an auth-scheme", tok)
				}
				pos = skipElement(s, start)
				continue
			}
			pos = p.parseParam(idx, s, start, cur)
			continue
		}
		// A new challenge.
		if len(p.out) >= MaxChallenges {
			p.fail(idx, start, "more than %d challenges; the rest ignored", MaxChallenges)
			return false
		}
		p.out = append(p.out, Challenge{Scheme: tok})
		cur, afterToken68 = len(p.out)-1, false
		pos = end
		if pos == len(s) || s[pos] == ',' {
			continue // no token68 and no parameters
		}
		if s[pos] != ' ' && s[pos] != '\t' {
			p.fail(idx, pos, "unexpected %q after auth-scheme %q", s[pos], tok)
			pos = skipElement(s, pos)
			continue
		}
		pos = skipWS(s, pos)
		if pos == len(s) || s[pos] == ',' {
			continue
		}
		if t68 := scanToken68(s, pos); t68 > pos {
			if after := skipWS(s, t68); after == len(s) || s[after] == ',' {
				p.out[cur].Token68 = s[pos:t68]
				cur, afterToken68 = -1, true
				pos = after
				continue
			}
		}
		pos = p.parseParam(idx, s, pos, cur)
	}
}

// parseParam parses the auth-param at s[pos:] into p.out[cur] and returns the
// position of the comma that ends its list element, or len(s).
func (p *challengeParser) parseParam(idx int, s string, pos, cur int) int {
	name, i := readToken(s, pos)
	if name == "" {
		p.fail(idx, pos, "expected a parameter name, found %q", s[pos])
		return skipElement(s, pos)
	}
	i = skipWS(s, i)
	if i >= len(s) || s[i] != '=' {
		p.fail(idx, i, "expected '=' after parameter name %q", name)
		return skipElement(s, i)
	}
	i = skipWS(s, i+1)
	var value string
	if i < len(s) && s[i] == '"' {
		v, end, bad := readQuoted(s, i)
		if bad != "" {
			p.fail(idx, i, "parameter %q: %s", name, bad)
			return skipElement(s, end)
		}
		value, i = v, end
	} else {
		v, end := readToken(s, i)
		if v == "" {
			p.fail(idx, i, "parameter %q: expected a token or a quoted-string", name)
			return skipElement(s, i)
		}
		value, i = v, end
	}
	name = strings.ToLower(name)
	c := &p.out[cur]
	if _, dup := c.Params[name]; dup {
		p.fail(idx, pos, "repeated parameter %q; the first one kept", name)
	} else {
		if c.Params == nil {
			c.Params = make(map[string]string)
		}
		c.Params[name] = value
	}
	i = skipWS(s, i)
	if i < len(s) && s[i] != ',' {
		p.fail(idx, i, "unexpected %q after parameter %q", s[i], name)
		return skipElement(s, i)
	}
	return i
}

// readToken returns the token (RFC 9110 §5.6.2) at s[pos:] and the position
// after it; the token is empty when s[pos] is not a tchar.
func readToken(s string, pos int) (string, int) {
	i := pos
	for i < len(s) && isTchar(s[i]) {
		i++
	}
	return s[pos:i], i
}

// scanToken68 returns the end of the token68 (RFC 9110 §11.2) at s[pos:], or
// pos when there is none.
func scanToken68(s string, pos int) int {
	i := pos
	for i < len(s) && isToken68Char(s[i]) {
		i++
	}
	if i == pos {
		return pos
	}
	for i < len(s) && s[i] == '=' {
		i++
	}
	return i
}

// readQuoted reads the quoted-string (RFC 9110 §5.6.4) that starts at s[pos],
// which is '"'. It returns the unescaped value and the position after the
// closing quote; bad describes the problem when the string is unterminated
// (end is then len(s)) or holds a character a quoted-string may not.
func readQuoted(s string, pos int) (value string, end int, bad string) {
	var b []byte
	for i := pos + 1; i < len(s); {
		c := s[i]
		switch {
		case c == '"':
			if b == nil {
				// No escapes, so the value is a substring.
				return s[pos+1 : i], i + 1, bad
			}
			return string(b), i + 1, bad
		case c == '\\':
			if i+1 >= len(s) {
				return "", len(s), "unterminated quoted-string"
			}
			if b == nil {
				b = append(make([]byte, 0, len(s)-pos), s[pos+1:i]...)
			}
			c2 := s[i+1]
			if !isQuotedPairChar(c2) && bad == "" {
				bad = fmt.Sprintf("invalid character %q in quoted-pair", c2)
			}
			b = append(b, c2)
			i += 2
		default:
			if !isQdtext(c) && bad == "" {
				bad = fmt.Sprintf("invalid character %q in quoted-string", c)
			}
			if b != nil {
				b = append(b, c)
			}
			i++
		}
	}
	return "", len(s), "unterminated quoted-string"
}

// skipElement returns the position of the next comma at or after pos that is
// not inside a quoted-string, or len(s).
func skipElement(s string, pos int) int {
	for i := pos; i < len(s); i++ {
		switch s[i] {
		case ',':
			return i
		case '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		}
	}
	return len(s)
}

// skipWS returns the position of the first byte at or after pos that is not
// SP or HTAB.
func skipWS(s string, pos int) int {
	for pos < len(s) && (s[pos] == ' ' || s[pos] == '\t') {
		pos++
	}
	return pos
}

// isTchar reports whether c may appear in a token (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isToken reports whether s is a token (RFC 9110 §5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

// isToken68Char reports whether c may appear in a token68 before its
// trailing '=' padding (RFC 9110 §11.2).
func isToken68Char(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~+/", c) >= 0
}

// isToken68 reports whether s is a token68 (RFC 9110 §11.2).
func isToken68(s string) bool {
	return s != "" && scanToken68(s, 0) == len(s)
}

// isQdtext reports whether c may appear unescaped in a quoted-string
// (RFC 9110 §5.6.4: HTAB, SP, %x21, %x23-5B, %x5D-7E, obs-text).
func isQdtext(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || (0x23 <= c && c <= 0x5B) || (0x5D <= c && c <= 0x7E) || c >= 0x80
}

// isQuotedPairChar reports whether c may follow '\' in a quoted-pair
// (RFC 9110 §5.6.4: HTAB, SP, VCHAR, obs-text).
func isQuotedPairChar(c byte) bool {
	return c == '\t' || (0x20 <= c && c <= 0x7E) || c >= 0x80
}

// sanitizeQuoted replaces the characters a quoted-string cannot hold even
// escaped (controls other than HTAB, and DEL) with spaces.
func sanitizeQuoted(v string) string {
	return mapBytes(v, func(c byte) byte {
		if isQuotedPairChar(c) {
			return c
		}
		return ' '
	})
}

// writeQuoted writes v as a quoted-string, escaping '"' and '\'. v must hold
// only characters isQuotedPairChar accepts.
func writeQuoted(b *strings.Builder, v string) {
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
}

// mapBytes returns s with every byte replaced by f of it, without copying
// when nothing changes.
func mapBytes(s string, f func(byte) byte) string {
	for i := 0; i < len(s); i++ {
		if f(s[i]) != s[i] {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				b[j] = f(b[j])
			}
			return string(b)
		}
	}
	return s
}

// BearerChallenge is the RFC 6750 §3 Bearer challenge with the RFC 9728 §5.1
// resource_metadata parameter.
type BearerChallenge struct {
	Realm            string
	Error            string // e.g. ErrorInvalidToken, ErrorInsufficientScope
	ErrorDescription string
	ErrorURI         string
	// Scope is the space-separated "scope" parameter, split (RFC 6750 §3).
	Scope []string
	// ResourceMetadata is the URL of the protected resource metadata
	// (RFC 9728 §5.1).
	ResourceMetadata string
}

// String formats b as a WWW-Authenticate field value: "Bearer" followed by
// the non-empty parameters in the order realm, error, error_description,
// error_uri, scope, resource_metadata, each as a quoted-string. It always
// yields a valid field value, never holding CR or LF:
//
//   - error and error_description are limited by RFC 6750 §3 to
//     %x20-21 / %x23-5B / %x5D-7E: in them a double quote becomes an
//     apostrophe, a backslash becomes '/', control characters become
//     spaces, and any other character (non-ASCII runes, DEL, invalid UTF-8
//     bytes) becomes '?';
//   - each scope token is limited by RFC 6749 §3.3 to %x21 / %x23-5B /
//     %x5D-7E; any other character becomes '?', and empty or repeated tokens
//     are left out;
//   - error_uri and resource_metadata are URIs: every byte outside
//     %x21 / %x23-5B / %x5D-7E is percent-encoded;
//   - realm is any quoted-string: '"' and '\' are escaped and control
//     characters other than HTAB become spaces.
//
// With no parameters the result is "Bearer" alone.
func (b BearerChallenge) String() string {
	var sb strings.Builder
	sb.WriteString("Bearer")
	n := 0
	param := func(name, value string) {
		if value == "" {
			return
		}
		if n == 0 {
			sb.WriteByte(' ')
		} else {
			sb.WriteString(", ")
		}
		n++
		sb.WriteString(name)
		sb.WriteByte('=')
		writeQuoted(&sb, value)
	}
	param("realm", sanitizeQuoted(b.Realm))
	param("error", sanitizeNQSChar(b.Error))
	param("error_description", sanitizeNQSChar(b.ErrorDescription))
	param("error_uri", sanitizeURI(b.ErrorURI))
	if len(b.Scope) > 0 {
		scopes := make([]string, len(b.Scope))
		for i, s := range b.Scope {
			scopes[i] = sanitizeScopeToken(s)
		}
		param("scope", FormatScope(scopes))
	}
	param("resource_metadata", sanitizeURI(b.ResourceMetadata))
	return sb.String()
}

// BearerChallengeFrom reads the RFC 6750 §3 and RFC 9728 §5.1 parameters of
// c. It does not look at c.Scheme; callers check c.Is("Bearer").
func BearerChallengeFrom(c Challenge) BearerChallenge {
	return BearerChallenge{
		Realm:            c.Params["realm"],
		Error:            c.Params["error"],
		ErrorDescription: c.Params["error_description"],
		ErrorURI:         c.Params["error_uri"],
		Scope:            ParseScope(c.Params["scope"]),
		ResourceMetadata: c.Params["resource_metadata"],
	}
}

// ParseBearerChallenge returns the first Bearer challenge in the
// WWW-Authenticate fields of h, and whether there was one. It is best effort:
// a Bearer challenge is found even when another part of the fields is
// malformed, within the limits of ParseChallenges.
func ParseBearerChallenge(h http.Header) (BearerChallenge, bool) {
	cs, _ := ParseWWWAuthenticate(h)
	for _, c := range cs {
		if c.Is("Bearer") {
			return BearerChallengeFrom(c), true
		}
	}
	return BearerChallenge{}, false
}

// sanitizeNQSChar maps v into the RFC 6750 §3 error and error_description
// character set, %x20-21 / %x23-5B / %x5D-7E, rune by rune.
func sanitizeNQSChar(v string) string {
	if isNQSChars(v) {
		return v
	}
	var b strings.Builder
	for _, r := range v {
		switch {
		case r == '"':
			b.WriteByte('\'')
		case r == '\\':
			b.WriteByte('/')
		case r < 0x20:
			b.WriteByte(' ')
		case r < 0x7F:
			b.WriteRune(r)
		default:
			b.WriteByte('?')
		}
	}
	return b.String()
}

// isNQSChars reports whether every byte of v is in %x20-21 / %x23-5B /
// %x5D-7E (RFC 6749 Appendix A NQSCHAR).
func isNQSChars(v string) bool {
	for i := 0; i < len(v); i++ {
		if !isNQSChar(v[i]) {
			return false
		}
	}
	return true
}

func isNQSChar(c byte) bool {
	return c == 0x20 || c == 0x21 || (0x23 <= c && c <= 0x5B) || (0x5D <= c && c <= 0x7E)
}

// isNQChar reports whether c may appear in a scope-token (RFC 6749 §3.3).
func isNQChar(c byte) bool {
	return c != ' ' && isNQSChar(c)
}

// sanitizeScopeToken maps v into the RFC 6749 §3.3 scope-token character
// set, replacing every other rune with '?'.
func sanitizeScopeToken(v string) string {
	ok := true
	for i := 0; i < len(v); i++ {
		if !isNQChar(v[i]) {
			ok = false
			break
		}
	}
	if ok {
		return v
	}
	var b strings.Builder
	for _, r := range v {
		if r < 0x80 && isNQChar(byte(r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

// sanitizeURI percent-encodes the bytes of v that RFC 6750 §3 does not allow
// in error_uri (anything but %x21 / %x23-5B / %x5D-7E).
func sanitizeURI(v string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isNQChar(c) {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(v)+8), v[:i]...)
		}
		b = append(b, '%', hex[c>>4], hex[c&0xF])
	}
	if b == nil {
		return v
	}
	return string(b)
}
