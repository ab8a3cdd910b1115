// Package server protects MCP servers built on the official Go SDK with
// OAuth 2.1 bearer tokens: a middleware that verifies tokens and answers
// with the challenges of RFC 6750 §3 and RFC 9728 §5.1, verifiers for JWT
// access tokens (RFC 9068) and introspection (RFC 7662), the protected
// resource metadata handler, and a way for tool handlers to say "the token
// expired" or "a scope is missing" so the client gets a 401 or 403 on that
// very HTTP response and can refresh or step up.
package server
