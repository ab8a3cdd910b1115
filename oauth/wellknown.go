package oauth

import (
	"fmt"
	"net/url"
	"strings"
)

// Well-known URI paths (RFC 8615) for metadata documents.
const (
	// WellKnownProtectedResource is the RFC 9728 §3 protected resource
	// metadata path.
	WellKnownProtectedResource = "/.well-known/oauth-protected-resource"
	// WellKnownAuthServer is the RFC 8414 §3 authorization server metadata
	// path.
	WellKnownAuthServer = "/.well-known/oauth-authorization-server"
	// WellKnownOpenIDConfiguration is the OpenID Connect Discovery 1.0 §4
	// path, also registered for OAuth by RFC 8414 §5.
	WellKnownOpenIDConfiguration = "/.well-known/openid-configuration"
)

// ProtectedResourceMetadataURL returns the URL at which the protected
// resource metadata of resource is published (RFC 9728 §3): the well-known
// path inserted between the host and the path and query of the resource, so
// "https://ex.com/public/mcp" gives
// "https://ex.com/.well-known/oauth-protected-resource/public/mcp" and
// "https://ex.com" gives "https://ex.com/.well-known/oauth-protected-resource".
//
// The resource is first put in its canonical form (see CanonicalResource),
// which removes the terminating slash as RFC 9728 §3.1 requires; a query is
// kept, after the inserted path, since RFC 9728 §3 inserts the well-known
// string "between the host component and the path and/or query components";
// a fragment is dropped. Errors wrap ErrInvalidResource.
func ProtectedResourceMetadataURL(resource string) (string, error) {
	u, err := canonicalURL(resource, true)
	if err != nil {
		return "", err
	}
	u.Path = WellKnownProtectedResource + u.Path
	u.RawPath = WellKnownProtectedResource + u.RawPath
	return u.String(), nil
}

// ProtectedResourceMetadataURLs returns the URLs a client tries, in order,
// for the protected resource metadata of resource when the challenge carried
// no resource_metadata parameter (MCP authorization specification,
// 2025-11-25, "Protected Resource Metadata Discovery Requirements"): the
// path-inserted URL of ProtectedResourceMetadataURL, then the well-known URL
// at the root of the origin. When the two are the same (a resource with
// neither path nor query) it is listed once.
//
// The document at the root URL describes the resource the origin names, so
// its "resource" member may differ from resource; RFC 9728 §3.3 leaves it to
// the caller to decide whether to use it.
func ProtectedResourceMetadataURLs(resource string) ([]string, error) {
	u, err := canonicalURL(resource, true)
	if err != nil {
		return nil, err
	}
	root := u.Scheme + "://" + u.Host + WellKnownProtectedResource
	u.Path = WellKnownProtectedResource + u.Path
	u.RawPath = WellKnownProtectedResource + u.RawPath
	first := u.String()
	if first == root {
		return []string{first}, nil
	}
	return []string{first, root}, nil
}

// AuthServerMetadataURLs returns the URLs a client tries, in order, for the
// metadata of the authorization server with the given issuer identifier, as
// the MCP authorization specification (2025-11-25, "Authorization Server
// Metadata Discovery") lists them. For an issuer with a path, such as
// "https://as.ex/tenant1":
//
//	https://as.ex/.well-known/oauth-authorization-server/tenant1 (RFC 8414 §3.1)
//	https://as.ex/.well-known/openid-configuration/tenant1 (RFC 8414 §5)
//	https://as.ex/tenant1/.well-known/openid-configuration (OpenID Connect Discovery 1.0 §4)
//
// and for an issuer without one, such as "https://as.ex":
//
//	https://as.ex/.well-known/oauth-authorization-server
//	https://as.ex/.well-known/openid-configuration
//
// Terminating slashes of the issuer's path are removed first (RFC 8414
// §3.1), so "https://as.ex/" is an issuer without a path and
// "https://as.ex/tenant1/" gives the same URLs as "https://as.ex/tenant1".
// Scheme, host and path are otherwise kept as written, since RFC 8414 §3.3
// compares issuers as strings. The issuer must be an absolute http or https
// URL with a host and without userinfo, query or fragment (RFC 8414 §2);
// whether http is acceptable is for CheckEndpointURL to decide. Errors wrap
// ErrInvalidMetadata.
func AuthServerMetadataURLs(issuer string) ([]string, error) {
	u, err := url.Parse(issuer)
	if err != nil {
		return nil, fmt.Errorf("%w: issuer: %w", ErrInvalidMetadata, err)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("%w: issuer %q is not an absolute http or https URL", ErrInvalidMetadata, issuer)
	case u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%w: issuer %q has no host", ErrInvalidMetadata, issuer)
	case u.User != nil:
		return nil, fmt.Errorf("%w: issuer %q has userinfo", ErrInvalidMetadata, issuer)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("%w: issuer %q has a query", ErrInvalidMetadata, issuer)
	case strings.IndexByte(issuer, '#') >= 0:
		return nil, fmt.Errorf("%w: issuer %q has a fragment", ErrInvalidMetadata, issuer)
	}
	origin := u.Scheme + "://" + u.Host
	path := strings.TrimRight(u.EscapedPath(), "/")
	if path == "" {
		return []string{
			origin + WellKnownAuthServer,
			origin + WellKnownOpenIDConfiguration,
		}, nil
	}
	return []string{
		origin + WellKnownAuthServer + path,
		origin + WellKnownOpenIDConfiguration + path,
		origin + path + WellKnownOpenIDConfiguration,
	}, nil
}

// AuthServerMetadataURL returns the RFC 8414 §3.1 metadata URL of issuer, the
// well-known path inserted between host and path: the first of
// AuthServerMetadataURLs.
func AuthServerMetadataURL(issuer string) (string, error) {
	urls, err := AuthServerMetadataURLs(issuer)
	if err != nil {
		return "", err
	}
	return urls[0], nil
}
