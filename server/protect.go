package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/oauth"
)

// Protect serves an MCP endpoint protected by OAuth on mux. It mounts:
//
//   - at the path of cfg.Resource, h behind the bearer middleware: only
//     requests with a valid token for cfg.Resource reach h, the others get
//     the challenges of RFC 6750 §3 and RFC 9728 §5.1 (401 without a token
//     or with a rejected one, 403 for a missing scope, 400 for a malformed
//     request, 503 when the Verifier is unavailable; docs/design.md#server-rules),
//     and the verified token reaches h through TokenInfoFromContext and, for
//     the official Go SDK, req.Extra.TokenInfo;
//   - at the well-known paths of RFC 9728 §3.1, cfg.Metadata: the
//     path-inserted one, which every challenge names, and, for a resource
//     with a path, the one at the root of the origin that clients try next
//     (docs/design.md#server-rule-9). The root path describes one resource
//     per origin: if mux already serves it (an earlier Protect for another
//     resource on the same origin), it is left alone.
//
// If srv is not nil, Protect adds a receiving middleware to it, so that a
// tool of srv that returns TokenExpired or InsufficientScope makes the
// answer to that very request 401 or 403 (docs/design.md#signal-rules).
// h is normally srv's handler, mcp.NewStreamableHTTPHandler; JSON
// responses (StreamableHTTPOptions.JSONResponse) let a signal always change
// the status. srv may be nil for a handler of another MCP library: the
// bearer middleware and the metadata are the same, and tool signals are
// ordinary tool errors. Give Protect the one mcp.Server that h serves; the
// signals of other servers behind h are ordinary tool errors too.
//
// Protect returns an error, and mounts nothing, if cfg is incomplete or
// mux already serves the endpoint or its path-inserted metadata path.
func Protect(mux *http.ServeMux, srv *mcp.Server, h http.Handler, cfg Config) error {
	if mux == nil || h == nil {
		return errors.New("server: Protect needs a ServeMux and a handler")
	}
	m, err := newMiddleware(cfg)
	if err != nil {
		return err
	}
	res := m.cfg.Resource // canonical
	md, err := metadataFor(cfg, res)
	if err != nil {
		return err
	}
	endpoint, err := endpointPattern(res)
	if err != nil {
		return err
	}
	paths, err := metadataPaths(res)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if strings.ContainsAny(p, "{}") {
			return fmt.Errorf("server: the metadata path %q cannot be a ServeMux pattern", p)
		}
	}
	for _, p := range []string{endpoint, paths[0]} {
		if serves(mux, p) {
			return fmt.Errorf("server: the ServeMux already serves %s", p)
		}
	}
	if endpoint == paths[0] {
		return fmt.Errorf("server: the resource path %s is the metadata path", endpoint)
	}

	if srv != nil {
		srv.AddReceivingMiddleware(signals)
	}
	mux.Handle(endpoint, m.wrap(h))
	prm := metadataHandler(md)
	for i, p := range paths {
		if i > 0 && serves(mux, p) {
			continue // the root document of the origin is another resource's
		}
		mux.Handle(p, prm)
	}
	return nil
}

// metadataFor returns the metadata document of cfg for the canonical
// resource res.
func metadataFor(cfg Config, res string) (oauth.ProtectedResourceMetadata, error) {
	md := cfg.Metadata
	md.AuthorizationServers = slices.Clone(md.AuthorizationServers)
	md.ScopesSupported = slices.Clone(md.ScopesSupported)
	md.BearerMethodsSupported = slices.Clone(md.BearerMethodsSupported)
	md.ResourceSigningAlgValuesSupported = slices.Clone(md.ResourceSigningAlgValuesSupported)
	if md.Resource != "" && !oauth.SameResource(md.Resource, res) {
		return md, fmt.Errorf("server: Config.Metadata.Resource %q is not Config.Resource %q", md.Resource, res)
	}
	md.Resource = res
	if len(md.AuthorizationServers) == 0 {
		return md, errors.New("server: Config.Metadata.AuthorizationServers is required: clients find the authorization server there")
	}
	if len(md.ScopesSupported) == 0 {
		md.ScopesSupported = slices.Clone(cfg.Scopes)
	}
	if len(md.BearerMethodsSupported) == 0 {
		md.BearerMethodsSupported = []string{"header"} // docs/design.md#server-rule-1
	}
	return md, nil
}

// endpointPattern returns the ServeMux pattern of the MCP endpoint of the
// canonical resource res: its path, matched exactly.
func endpointPattern(res string) (string, error) {
	u, err := url.Parse(res)
	if err != nil {
		return "", fmt.Errorf("server: Config.Resource: %w", err)
	}
	p := u.EscapedPath()
	if strings.ContainsAny(p, "{}") {
		return "", fmt.Errorf("server: the path of Config.Resource %q cannot be a ServeMux pattern", p)
	}
	switch {
	case p == "" || p == "/":
		return "/{$}", nil
	case strings.HasSuffix(p, "/"):
		return p + "{$}", nil
	}
	return p, nil
}

// serves reports whether mux has a handler registered for exactly pattern,
// which is a path or a path followed by "{$}".
func serves(mux *http.ServeMux, pattern string) bool {
	path := strings.TrimSuffix(pattern, "{$}")
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		_, got := mux.Handler(&http.Request{Method: method, URL: &url.URL{Path: path}, Host: "example.invalid"})
		if got == pattern {
			return true
		}
	}
	return false
}
