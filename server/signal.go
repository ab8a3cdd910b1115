package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/oauth"
)

// Signal is an error a tool handler returns (or wraps) to say that the
// caller's token no longer works — typically because the upstream API the
// tool calls with the user's delegated token rejected it — or that it lacks
// a scope. With the mcp.Server and its HTTP handler given to Protect, the
// client gets 401 invalid_token or 403 insufficient_scope on that very HTTP
// response instead of a tool error inside an HTTP 200, so a compliant
// client refreshes (or steps up) and calls again with the same JSON-RPC id.
//
// A tool should signal before it has done anything it cannot repeat: the
// client will call it again.
type Signal struct {
	// Status is 401 or 403.
	Status int
	// Code is the OAuth error: invalid_token or insufficient_scope.
	Code string
	// Description is sent as error_description.
	Description string
	// Scopes are the scopes the operation needs (insufficient_scope).
	Scopes []string
}

// Error returns the OAuth error code, the description and the scopes
// needed, never token material.
func (s *Signal) Error() string {
	msg := s.Code
	if s.Description != "" {
		msg += ": " + s.Description
	}
	if len(s.Scopes) > 0 {
		msg += " (needs " + strings.Join(s.Scopes, " ") + ")"
	}
	return msg
}

// TokenExpired returns the signal for a token the upstream rejected: the
// client gets 401 invalid_token with the description.
func TokenExpired(description string) error {
	return &Signal{Status: http.StatusUnauthorized, Code: oauth.ErrorInvalidToken, Description: description}
}

// InsufficientScope returns the signal for an operation that needs scopes
// the token lacks: the client gets 403 insufficient_scope naming them.
func InsufficientScope(scopes ...string) error {
	return &Signal{Status: http.StatusForbidden, Code: oauth.ErrorInsufficientScope, Scopes: scopes,
		Description: "this operation needs scope " + strings.Join(scopes, " ")}
}

// signalData is the "data" of the JSON-RPC error a signal travels as.
type signalData struct {
	Status           int    `json:"status"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description,omitempty"`
	Scope            string `json:"scope,omitempty"`
}

// wire returns the JSON-RPC error s travels as.
func (s *Signal) wire() *jsonrpc.Error {
	data, _ := json.Marshal(signalData{Status: s.Status, Error: s.Code, ErrorDescription: s.Description, Scope: oauth.FormatScope(s.Scopes)})
	msg := "the access token was rejected"
	if s.Status == http.StatusForbidden {
		msg = "the access token lacks a required scope"
	}
	return &jsonrpc.Error{Code: signalCode, Message: msg, Data: data}
}

// signals is the receiving middleware Protect adds to an mcp.Server: it
// catches tool signals before the SDK turns them into an isError result,
// and answers with a bare JSON-RPC error with signalCode, which the holder
// of the bearer middleware turns into the HTTP answer
// (docs/design.md#signal-rule-3). It works for tools/call, resources/read
// and prompts/get.
func signals(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		var sig *Signal
		if err != nil && errors.As(err, &sig) {
			// The SDK passes a bare *jsonrpc.Error through but turns a
			// wrapped one into an isError result: return it unwrapped.
			return nil, sig.wire()
		}
		if ctr, ok := res.(*mcp.CallToolResult); ok && ctr != nil && ctr.IsError {
			if e := ctr.GetError(); e != nil && errors.As(e, &sig) {
				return nil, sig.wire()
			}
		}
		return res, err
	}
}
