package client

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, for errors.Is.
var (
	// ErrNeedsReauth means the user must sign in again: the Transport holds
	// no usable grant for the server. Every *NeedsReauthError matches it.
	ErrNeedsReauth = errors.New("needs_reauth")
	// ErrRefreshUnavailable means a refresh could not be done now (the
	// authorization server was unreachable or failed); the refresh token is
	// kept and a later request may succeed.
	ErrRefreshUnavailable = errors.New("refresh unavailable")
	// ErrInsufficientScope means the server wants scopes the grant lacks.
	ErrInsufficientScope = errors.New("insufficient_scope")
	// ErrGrantNotSaved means a refreshed grant could not be saved to the
	// store: the Transport holds it, but a process that exits now loses
	// the rotated refresh token. Every *SaveError matches it.
	ErrGrantNotSaved = errors.New("grant not saved")
)

// SaveError reports that a grant a refresh obtained could not be saved to
// the store (docs/design.md#client-rule-2). The Transport keeps using it
// and saves it again before later requests and in Wait. It matches
// ErrGrantNotSaved; it never contains token material.
type SaveError struct {
	Server string
	Err    error
}

func (e *SaveError) Error() string {
	return fmt.Sprintf("the refreshed grant for %s could not be saved: %v", e.Server, e.Err)
}

// Is reports whether target is ErrGrantNotSaved.
func (e *SaveError) Is(target error) bool { return target == ErrGrantNotSaved }

// Unwrap returns the cause.
func (e *SaveError) Unwrap() error { return e.Err }

// Reason says why a NeedsReauthError was returned.
type Reason string

// Reasons of a NeedsReauthError.
const (
	// ReasonNoGrant: no grant is stored for the server and no interactive
	// authorizer is configured.
	ReasonNoGrant Reason = "no_grant"
	// ReasonNoRefreshToken: the access token was rejected and the grant
	// holds no refresh token.
	ReasonNoRefreshToken Reason = "no_refresh_token"
	// ReasonRefreshRejected: the authorization server refused the refresh
	// token (for example invalid_grant); it has been discarded.
	ReasonRefreshRejected Reason = "refresh_rejected"
	// ReasonRejectedAfterRefresh: the server rejected the token obtained by
	// a refresh too (docs/design.md#client-rule-5).
	ReasonRejectedAfterRefresh Reason = "rejected_after_refresh"
	// ReasonRejectedAfterAuthorization: the server rejected the token of a
	// fresh authorization.
	ReasonRejectedAfterAuthorization Reason = "rejected_after_authorization"
	// ReasonAuthorizationFailed: the interactive authorization failed.
	ReasonAuthorizationFailed Reason = "authorization_failed"
)

// NeedsReauthError reports that a request cannot succeed until the user
// authorizes again. It matches ErrNeedsReauth with errors.Is. It never
// contains token material.
type NeedsReauthError struct {
	// Server is the MCP server URL (canonical) the grant is for.
	Server string
	// Issuer is the authorization server, when known.
	Issuer string
	// Reason says why.
	Reason Reason
	// ErrorCode and ErrorDescription are the OAuth error of the refusal,
	// when there was one (for example "invalid_grant").
	ErrorCode        string
	ErrorDescription string
	// Scopes are the scopes to ask for when authorizing again.
	Scopes []string
	// Err is the underlying cause, if any.
	Err error
}

func (e *NeedsReauthError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "needs_reauth: %s: %s", e.Server, e.Reason)
	if e.ErrorCode != "" {
		fmt.Fprintf(&b, " (%s", e.ErrorCode)
		if e.ErrorDescription != "" {
			fmt.Fprintf(&b, ": %s", e.ErrorDescription)
		}
		b.WriteString(")")
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Is reports whether target is ErrNeedsReauth.
func (e *NeedsReauthError) Is(target error) bool { return target == ErrNeedsReauth }

// Unwrap returns the cause.
func (e *NeedsReauthError) Unwrap() error { return e.Err }

// RefreshUnavailableError reports that a refresh could not be done because
// the authorization server was unreachable, timed out or answered 5xx
// (docs/design.md#client-rule-4). The refresh token is kept. It matches
// ErrRefreshUnavailable.
type RefreshUnavailableError struct {
	Server string
	Issuer string
	// StatusCode is the token endpoint's HTTP status, or 0 when there was
	// no answer.
	StatusCode int
	Err        error
}

func (e *RefreshUnavailableError) Error() string {
	s := fmt.Sprintf("refresh unavailable: %s", e.Server)
	if e.StatusCode != 0 {
		s += fmt.Sprintf(": token endpoint answered %d", e.StatusCode)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is ErrRefreshUnavailable.
func (e *RefreshUnavailableError) Is(target error) bool { return target == ErrRefreshUnavailable }

// Unwrap returns the cause.
func (e *RefreshUnavailableError) Unwrap() error { return e.Err }

// InsufficientScopeError reports a 403 insufficient_scope the Transport
// could not resolve by authorizing again (docs/design.md#client-rule-6). It matches
// ErrInsufficientScope.
type InsufficientScopeError struct {
	Server string
	// Required are the scopes the server's challenge named.
	Required []string
	// Granted are the scopes the grant holds.
	Granted     []string
	Description string
	Err         error
}

func (e *InsufficientScopeError) Error() string {
	s := fmt.Sprintf("insufficient_scope: %s requires %q", e.Server, strings.Join(e.Required, " "))
	if e.Description != "" {
		s += ": " + e.Description
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is ErrInsufficientScope.
func (e *InsufficientScopeError) Is(target error) bool { return target == ErrInsufficientScope }

// Unwrap returns the cause.
func (e *InsufficientScopeError) Unwrap() error { return e.Err }
