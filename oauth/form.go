package oauth

import (
	"context"
	"net/http"
	"net/url"
	"strings"
)

// ClientAuth is how a client authenticates to an authorization server's
// token, revocation and introspection endpoints (RFC 6749 §2.3.1, RFC 7009
// §2.1, RFC 7662 §2.1): its client identifier, its secret and the method of
// its registration (token_endpoint_auth_method, RFC 7591 §2).
//
// A client refreshes with the authentication of its original registration
// (docs/design.md#client-rule-2); NewFormRequest applies it.
//
// ClientAuth holds a secret; never log or print one.
type ClientAuth struct {
	// ID is the client identifier (client_id).
	ID string
	// Secret is the client secret; empty for a public client.
	Secret string
	// Method is AuthMethodNone, AuthMethodClientSecretBasic or
	// AuthMethodClientSecretPost. Empty means AuthMethodClientSecretBasic
	// when Secret is set (the default of RFC 7591 §2) and AuthMethodNone
	// otherwise. Any other method (private_key_jwt, say) is not supported
	// and is sent as AuthMethodNone: the request names the client and
	// carries no secret, and the authorization server's invalid_client
	// answer says what is wrong.
	Method string
}

// NewFormRequest returns a POST to endpoint with form as its
// application/x-www-form-urlencoded body, asking for a JSON answer, and
// authenticated as auth:
//
//   - AuthMethodClientSecretBasic: HTTP Basic with the client identifier
//     and the secret, each form-urlencoded first (RFC 6749 §2.3.1);
//   - AuthMethodClientSecretPost: client_id and client_secret in the body;
//   - AuthMethodNone: client_id in the body (RFC 6749 §3.2.1), when
//     auth.ID is set.
//
// form itself is not modified. The request's GetBody is set, so it can be
// sent again. NewFormRequest does not check endpoint beyond parsing it; a
// caller sending secrets or tokens checks it first (CheckEndpointURL).
func NewFormRequest(ctx context.Context, endpoint string, form url.Values, auth ClientAuth) (*http.Request, error) {
	basic := false
	switch auth.MethodUsed() {
	case AuthMethodClientSecretBasic:
		basic = true
	case AuthMethodClientSecretPost:
		form = withValues(form, "client_id", auth.ID, "client_secret", auth.Secret)
	default:
		if auth.ID != "" {
			form = withValues(form, "client_id", auth.ID)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if basic {
		// RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic
		// encoding, so a ':' in the identifier cannot split it.
		req.SetBasicAuth(url.QueryEscape(auth.ID), url.QueryEscape(auth.Secret))
	}
	return req, nil
}

// MethodUsed is the authentication method a request authenticated as a
// uses: Method, or the default Method's documentation gives for an empty
// one, or AuthMethodNone for a method NewFormRequest does not support.
func (a ClientAuth) MethodUsed() string {
	switch a.Method {
	case AuthMethodClientSecretBasic, AuthMethodClientSecretPost:
		return a.Method
	case "":
		if a.Secret != "" {
			return AuthMethodClientSecretBasic
		}
	}
	return AuthMethodNone
}

// withValues returns a copy of form with the given key, value pairs set.
func withValues(form url.Values, kv ...string) url.Values {
	out := make(url.Values, len(form)+len(kv)/2)
	for k, vs := range form {
		out[k] = append([]string(nil), vs...)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}
