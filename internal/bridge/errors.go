package bridge

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/oauth"
)

// CodeNeedsReauth is the JSON-RPC error code of the answer the bridge gives
// to a request it could not forward because a new sign-in is needed
// (docs/design.md#client-rule-3), or because the sign-in lacks a scope the
// server asks for (docs/design.md#client-rule-6). Its data is an object
// whose "reason" is "needs_reauth" or "insufficient_scope" and whose
// "login" is the command that signs in again.
//
// It is in the implementation-defined range, next to the server signal's
// default (-32060), and clear of the codes MCP and the Go SDK use (-32000,
// -32001, -32002, -32020…-32022, -32042).
const CodeNeedsReauth = -32061

// codeRejectedByTransport is the code of the Go SDK's jsonrpc2.ErrRejected
// ("rejected by transport"), which its streamable client wraps around a
// failed POST. It names no cause, so the bridge answers with the whole
// error (server down, grant unreadable, refresh unavailable) instead.
const codeRejectedByTransport = -32005

// signInCommand is Config.LoginCommand's command for s, or "".
func (b *Bridge) signInCommand(s SignIn) string {
	if b.login == nil {
		return ""
	}
	return b.login(s)
}

// signInHint is what the host's errors and the logs tell a person who must
// sign in again as s says.
func (b *Bridge) signInHint(s SignIn) string {
	if cmd := b.signInCommand(s); cmd != "" {
		return "sign in again with: " + cmd
	}
	return "sign in again"
}

func (b *Bridge) answerError(id jsonrpc.ID, err error) {
	we := b.wireError(err)
	b.log.Info("answering a request with an error", "id", id.Raw(), "code", we.Code, "message", we.Message)
	b.host.write(&jsonrpc.Response{ID: id, Error: we})
}

// needsReauth returns the NeedsReauthError behind err, also when the SDK
// formatted it away (the ReauthRecorder kept it).
func (b *Bridge) needsReauth(err error) *client.NeedsReauthError {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		return ne
	}
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		return nil // the server answered
	}
	if errors.As(b.rec.Err(err), &ne) {
		return ne
	}
	return nil
}

// reauthData is the data of a CodeNeedsReauth error. It never holds token
// material.
type reauthData struct {
	Reason           string   `json:"reason"` // "needs_reauth" or "insufficient_scope"
	Cause            string   `json:"cause,omitempty"`
	Server           string   `json:"server"`
	Issuer           string   `json:"issuer,omitempty"`
	Error            string   `json:"error,omitempty"`
	ErrorDescription string   `json:"error_description,omitempty"`
	Scopes           []string `json:"scopes,omitempty"`
	Required         []string `json:"required_scopes,omitempty"`
	Login            string   `json:"login"`
}

// wireError is the JSON-RPC error the host gets for a request that failed
// with err: CodeNeedsReauth with the sign-in command when a new sign-in is
// needed, the server's own JSON-RPC error, or an internal error that says
// what went wrong.
func (b *Bridge) wireError(err error) *jsonrpc.Error {
	if ne := b.needsReauth(err); ne != nil {
		// invalid_client: the authorization server forgot the client
		// registration, and a plain sign-in would reuse it and fail.
		in := SignIn{NewClient: ne.ErrorCode == oauth.ErrorInvalidClient}
		data, _ := json.Marshal(reauthData{
			Reason: "needs_reauth", Cause: string(ne.Reason), Server: ne.Server, Issuer: ne.Issuer,
			Error: ne.ErrorCode, ErrorDescription: ne.ErrorDescription, Scopes: ne.Scopes,
			Login: b.signInCommand(in),
		})
		return &jsonrpc.Error{
			Code:    CodeNeedsReauth,
			Message: fmt.Sprintf("needs_reauth: %s needs a new sign-in (%s); %s", b.url, ne.Reason, b.signInHint(in)),
			Data:    data,
		}
	}
	var se *client.InsufficientScopeError
	if errors.As(err, &se) {
		in := SignIn{Scopes: union(se.Granted, se.Required)}
		data, _ := json.Marshal(reauthData{
			Reason: "insufficient_scope", Server: se.Server, Scopes: se.Granted, Required: se.Required,
			Login: b.signInCommand(in),
		})
		return &jsonrpc.Error{
			Code:    CodeNeedsReauth,
			Message: fmt.Sprintf("insufficient_scope: %s needs scopes the sign-in lacks (%s); %s", b.url, strings.Join(se.Required, " "), b.signInHint(in)),
			Data:    data,
		}
	}
	var we *jsonrpc.Error
	if errors.As(err, &we) && we.Code != codeRejectedByTransport {
		return we // the server's own answer, from a 4xx
	}
	return &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: fmt.Sprintf("evergrant bridge: %s: %v", b.url, err)}
}

// union returns a followed by the elements of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
