// Package oauth holds the OAuth 2.x wire formats that both sides of an MCP
// connection use: WWW-Authenticate challenges (RFC 9110 §11.6.1, RFC 6750 §3,
// RFC 9728 §5.1), OAuth error responses (RFC 6749 §5.2), authorization server
// metadata (RFC 8414), protected resource metadata (RFC 9728), the well-known
// URL rules of the MCP authorization specification (2025-11-25 revision), and
// resource URI canonicalisation (RFC 8707).
//
// The package has no state and performs no I/O except writing responses to an
// http.ResponseWriter handed to it.
package oauth
