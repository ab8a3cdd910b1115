package oauth

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// ErrInvalidResource is wrapped by the errors of CanonicalResource and of the
// functions that build well-known URLs from a resource URI.
var ErrInvalidResource = errors.New("oauth: invalid resource URI")

// ErrInsecureURL is wrapped by the errors of CheckEndpointURL.
var ErrInsecureURL = errors.New("oauth: insecure or invalid endpoint URL")

// CanonicalResource returns the canonical URI of an MCP server, the value of
// the RFC 8707 §2 "resource" parameter and of the RFC 9728 "resource"
// metadata, as the MCP authorization specification (2025-11-25, "Canonical
// Server URI") describes it:
//
//   - raw must be an absolute http or https URI of printable ASCII with a
//     host, and without userinfo or fragment (RFC 8707 §2);
//   - scheme and host are lower-cased; an IPv6 literal is written in its
//     RFC 5952 form; the host must otherwise be a DNS name or IPv4 address
//     (letters, digits, '-', '.', '_', '~'), and IPv6 zones are refused;
//   - the default port (443 for https, 80 for http) and an empty port are
//     dropped, and leading zeros of a port removed;
//   - trailing slashes of the path are removed, so "https://a/" becomes
//     "https://a" and "https://a/mcp/" becomes "https://a/mcp" (all of them,
//     not only one, so that the result is canonical itself);
//   - the query is kept as is, except that an empty one ("?" alone) is
//     dropped;
//   - percent-encoding is normalised the way net/url does.
//
// Errors wrap ErrInvalidResource.
func CanonicalResource(raw string) (string, error) {
	u, err := canonicalURL(raw, false)
	if err != nil {
		return "", err
	}
	return u.String(), nil
}

// SameResource reports whether a and b are both valid resource URIs with the
// same canonical form (see CanonicalResource).
func SameResource(a, b string) bool {
	ca, err := CanonicalResource(a)
	if err != nil {
		return false
	}
	cb, err := CanonicalResource(b)
	return err == nil && ca == cb
}

// canonicalURL parses raw and puts it in the form CanonicalResource
// describes. With dropFragment, a fragment is removed instead of refused.
func canonicalURL(raw string, dropFragment bool) (*url.URL, error) {
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] >= 0x7F {
			return nil, fmt.Errorf("%w: %q holds a space, a control or a non-ASCII byte", ErrInvalidResource, raw)
		}
	}
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		// RFC 8707 §2: the resource "MUST NOT include a fragment component".
		if !dropFragment {
			return nil, fmt.Errorf("%w: %q has a fragment", ErrInvalidResource, raw)
		}
		raw = raw[:i]
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidResource, err)
	}
	switch {
	case u.Scheme == "":
		return nil, fmt.Errorf("%w: %q is not an absolute URI", ErrInvalidResource, raw)
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("%w: %q: scheme %q is not http or https", ErrInvalidResource, raw, u.Scheme)
	case u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%w: %q has no host", ErrInvalidResource, raw)
	case u.User != nil:
		return nil, fmt.Errorf("%w: %q has userinfo", ErrInvalidResource, raw)
	}
	host, err := canonicalHost(u.Scheme, u.Host)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidResource, raw, err)
	}
	u.Host = host
	ep := strings.TrimRight(u.EscapedPath(), "/")
	p, err := url.PathUnescape(ep)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidResource, raw, err)
	}
	u.Path, u.RawPath = p, ep
	u.ForceQuery = false
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// canonicalHost lower-cases the host of hostport, checks its syntax and
// drops the port when it is empty or the default for scheme.
func canonicalHost(scheme, hostport string) (string, error) {
	host, port := hostport, ""
	if strings.HasPrefix(hostport, "[") {
		end := strings.LastIndexByte(hostport, ']')
		if end < 0 {
			return "", errors.New("unterminated IPv6 literal")
		}
		host, port = hostport[1:end], hostport[end+1:]
		addr, err := netip.ParseAddr(host)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", fmt.Errorf("invalid IPv6 literal %q", host)
		}
		host = "[" + addr.String() + "]"
	} else {
		if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
			host, port = hostport[:i], hostport[i:]
		}
		host = strings.ToLower(host)
		if host == "" {
			return "", errors.New("empty host")
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
				return "", fmt.Errorf("invalid character %q in host", c)
			}
		}
	}
	if port == "" || port == ":" {
		return host, nil
	}
	if port[0] != ':' {
		return "", fmt.Errorf("invalid port %q", port)
	}
	n, err := strconv.ParseUint(port[1:], 10, 16)
	if err != nil {
		return "", fmt.Errorf("invalid port %q", port[1:])
	}
	if (scheme == "https" && n == 443) || (scheme == "http" && n == 80) {
		return host, nil
	}
	return host + ":" + strconv.FormatUint(n, 10), nil
}

// IsLoopbackHost reports whether host, a host name or IP address without a
// port (an IPv6 address may be in brackets), is "localhost" (in any case), an
// address in 127.0.0.0/8, or ::1, including IPv4-mapped IPv6 forms of these.
// Other names that may resolve to a loopback address (such as
// "app.localhost" or "localhost.") are not treated as loopback, and neither
// are the shortened IPv4 forms ("127.1") some resolvers accept.
func IsLoopbackHost(host string) bool {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return addr.WithZone("").Unmap().IsLoopback()
}

// CheckEndpointURL reports whether raw may be used as an authorization
// server, resource or metadata endpoint: an absolute https URL, or an http URL
// whose host is a loopback host (see IsLoopbackHost), without userinfo or
// fragment. The MCP authorization specification (2025-11-25, "Communication
// Security") and OAuth 2.1 §1.5 require TLS for every such endpoint;
// RFC 8252 §8.3 and §7.3 make the loopback exception for native apps.
// Errors wrap ErrInsecureURL and say why the URL was refused.
func CheckEndpointURL(raw string) error {
	if strings.IndexByte(raw, '#') >= 0 {
		return fmt.Errorf("%w: %q has a fragment", ErrInsecureURL, raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInsecureURL, err)
	}
	switch {
	case u.Scheme == "":
		return fmt.Errorf("%w: %q is not an absolute URL", ErrInsecureURL, raw)
	case u.Opaque != "" || u.Hostname() == "":
		return fmt.Errorf("%w: %q has no host", ErrInsecureURL, raw)
	case u.User != nil:
		return fmt.Errorf("%w: %q has userinfo", ErrInsecureURL, raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if IsLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%w: %q uses http, which is allowed only for loopback hosts", ErrInsecureURL, raw)
	default:
		return fmt.Errorf("%w: %q: scheme %q is not https", ErrInsecureURL, raw, u.Scheme)
	}
}
