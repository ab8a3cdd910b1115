// Package server protects MCP servers built on the official Go SDK with
// OAuth 2.1 bearer tokens.
//
// Protect is the one entry point: given a ServeMux, the mcp.Server, its
// HTTP handler and a Config, it mounts the endpoint behind a middleware
// that verifies tokens and answers with the challenges of RFC 6750 §3 and
// RFC 9728 §5.1, serves the protected resource metadata at the well-known
// paths of RFC 9728 §3.1, and lets tool handlers say "the token expired"
// (TokenExpired) or "a scope is missing" (InsufficientScope) so the client
// gets a 401 or 403 on that very HTTP response and can refresh or step up:
//
//	srv := mcp.NewServer(impl, nil)
//	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
//		&mcp.StreamableHTTPOptions{JSONResponse: true})
//	err := server.Protect(mux, srv, h, server.Config{
//		Resource: "https://mcp.example.com/mcp", // mounted at /mcp
//		Verifier: verifier,
//		Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{issuer}},
//	})
//
// Tokens are checked by a Verifier: JWT access tokens (RFC 9068,
// NewJWTVerifier) or introspection (RFC 7662, NewIntrospectionVerifier).
package server
