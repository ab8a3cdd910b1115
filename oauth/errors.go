package oauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Error codes defined by RFC 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1,
// RFC 7591 §3.2.2, RFC 7009 §2.2.1 and RFC 8707 §2.
const (
	ErrorInvalidRequest          = "invalid_request"
	ErrorInvalidClient           = "invalid_client"
	ErrorInvalidGrant            = "invalid_grant"
	ErrorUnauthorizedClient      = "unauthorized_client"
	ErrorUnsupportedGrantType    = "unsupported_grant_type"
	ErrorInvalidScope            = "invalid_scope"
	ErrorAccessDenied            = "access_denied"
	ErrorUnsupportedResponseType = "unsupported_response_type"
	ErrorServerError             = "server_error"
	ErrorTemporarilyUnavailable  = "temporarily_unavailable"
	ErrorInvalidToken            = "invalid_token"
	ErrorInsufficientScope       = "insufficient_scope"
	ErrorInvalidRedirectURI      = "invalid_redirect_uri"
	ErrorInvalidClientMetadata   = "invalid_client_metadata"
	ErrorUnsupportedTokenType    = "unsupported_token_type"
	ErrorInvalidTarget           = "invalid_target"
)

// MaxErrorBody bounds how many bytes of an error response body ParseError
// looks at; callers reading a remote response should read no more than this.
const MaxErrorBody = 64 << 10

// Error is an OAuth error response (RFC 6749 §5.2). It is both what a server
// writes with WriteError and what a client gets from ParseError.
type Error struct {
	// Code is the "error" member, for example ErrorInvalidGrant.
	Code string `json:"error"`
	// Description is the optional human-readable "error_description".
	Description string `json:"error_description,omitempty"`
	// URI is the optional "error_uri".
	URI string `json:"error_uri,omitempty"`
	// StatusCode is the HTTP status the error was received with, or is to be
	// sent with. Zero means the default for the code (see Status).
	StatusCode int `json:"-"`
}

// Error implements the error interface. The text holds the code and the
// description, both of which come from the server and carry no token
// material by construction of RFC 6749.
func (e *Error) Error() string {
	if e.Description == "" {
		return "oauth: " + e.Code
	}
	return "oauth: " + e.Code + ": " + e.Description
}

// Status reports the HTTP status for e: StatusCode when set, else 401 for
// invalid_client and invalid_token, 403 for insufficient_scope, 500 for
// server_error, 503 for temporarily_unavailable, and 400 otherwise.
func (e *Error) Status() int {
	if e.StatusCode != 0 {
		return e.StatusCode
	}
	switch e.Code {
	case ErrorInvalidClient, ErrorInvalidToken:
		return http.StatusUnauthorized
	case ErrorInsufficientScope:
		return http.StatusForbidden
	case ErrorServerError:
		return http.StatusInternalServerError
	case ErrorTemporarilyUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}

// NewError returns an Error with the given code and a formatted description.
func NewError(code, format string, args ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, args...)}
}

// WriteError writes e as a JSON error response with the headers RFC 6749
// §5.1 requires (Cache-Control: no-store, Pragma: no-cache).
func WriteError(w http.ResponseWriter, e *Error) {
	WriteJSON(w, e.Status(), e)
}

// WriteJSON writes v as a JSON response with status and the no-store
// headers of RFC 6749 §5.1.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":"server_error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
