package authserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/nodejs"
)

// tsClientAuthFacts is what interop/node/as_client_auth.mjs reports: public
// values and booleans, never token material.
type tsClientAuthFacts struct {
	NodeVersion string `json:"node_version"`
	SDKVersion  string `json:"sdk_version"`
	Metadata    struct {
		Issuer                      string `json:"issuer"`
		IssuerMatches               bool   `json:"issuer_matches"`
		S256Supported               bool   `json:"s256_supported"`
		ISSParameterSupported       bool   `json:"iss_parameter_supported"`
		RegistrationEndpointPresent bool   `json:"registration_endpoint_present"`
		AuthMethodNoneSupported     bool   `json:"auth_method_none_supported"`
		RefreshTokenGrantSupported  bool   `json:"refresh_token_grant_supported"`
	} `json:"metadata"`
	Registration struct {
		ClientIDRegistered      bool     `json:"client_id_registered"`
		ClientSecretIssued      bool     `json:"client_secret_issued"`
		TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
		RedirectURIsEchoed      bool     `json:"redirect_uris_echoed"`
		GrantTypes              []string `json:"grant_types"`
	} `json:"registration"`
	AuthorizationRequest struct {
		PKCES256     bool `json:"pkce_s256"`
		ResourceSent bool `json:"resource_sent"`
		ScopeSent    bool `json:"scope_sent"`
		StateSent    bool `json:"state_sent"`
	} `json:"authorization_request"`
	AuthorizationResponse struct {
		Status                 int    `json:"status"`
		RedirectsToRedirectURI bool   `json:"redirects_to_redirect_uri"`
		CodePresent            bool   `json:"code_present"`
		Error                  string `json:"error"`
		StateMatches           bool   `json:"state_matches"`
		ISS                    string `json:"iss"`
		ISSMatchesIssuer       bool   `json:"iss_matches_issuer"`
	} `json:"authorization_response"`
	Token struct {
		TokenType           string  `json:"token_type"`
		AccessTokenPresent  bool    `json:"access_token_present"`
		RefreshTokenPresent bool    `json:"refresh_token_present"`
		ExpiresIn           float64 `json:"expires_in"`
		Scope               string  `json:"scope"`
	} `json:"token"`
	Refresh struct {
		TokenTypes           []string `json:"token_types"`
		AccessTokensPresent  bool     `json:"access_tokens_present"`
		AccessTokensDistinct bool     `json:"access_tokens_distinct"`
		RefreshTokensRotated bool     `json:"refresh_tokens_rotated"`
	} `json:"refresh"`
	Reuse            tsRefusal `json:"reuse"`
	AfterReuseNewest tsRefusal `json:"after_reuse_newest"`
}

// tsRefusal describes how the SDK's refreshAuthorization failed, if it did.
type tsRefusal struct {
	Rejected          bool   `json:"rejected"`
	ErrorName         string `json:"error_name"`
	OAuthError        bool   `json:"oauth_error"`
	InvalidGrantError bool   `json:"invalid_grant_error"`
	ErrorCode         string `json:"error_code"`
}

// TestInteropTypeScriptSDKClientAuth drives the authorization server with the
// MCP TypeScript SDK's client auth functions (discovery, dynamic registration
// of a public client, PKCE authorization with resource and scope, code
// exchange, refresh with rotation, refresh-token reuse detection), as a
// client built on that SDK would. Needs scripts/setup-node.sh.
func TestInteropTypeScriptSDKClientAuth(t *testing.T) {
	node := nodejs.Require(t)

	const (
		resource = "https://mcp.example.test/mcp"
		scope    = "mcp:tools"
	)
	srv := httptest.NewUnstartedServer(nil)
	defer srv.Close()
	issuer := "http://" + srv.Listener.Addr().String()
	as, err := authserver.New(authserver.Config{
		Issuer:      issuer,
		Resources:   []string{resource},
		Scopes:      []string{scope},
		AutoApprove: true,
	})
	if err != nil {
		t.Fatalf("authserver.New: %v", err)
	}
	srv.Config.Handler = as
	srv.Start()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := node.Run(t, ctx, "as_client_auth.mjs", nil,
		"--issuer", srv.URL, "--resource", resource, "--scope", scope)
	t.Logf("as_client_auth.mjs: %s", out)

	var f tsClientAuthFacts
	if err := json.Unmarshal(out, &f); err != nil {
		t.Fatalf("decoding the script's output: %v", err)
	}
	t.Logf("TypeScript SDK %s on Node %s", f.SDKVersion, f.NodeVersion)

	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, args...)
		}
	}

	// RFC 8414 metadata, found from the issuer.
	m := f.Metadata
	check(m.Issuer == srv.URL && m.IssuerMatches, "metadata issuer = %q, want %q", m.Issuer, srv.URL)
	check(m.S256Supported, "metadata: code_challenge_methods_supported lacks S256")
	check(m.ISSParameterSupported, "metadata: authorization_response_iss_parameter_supported is not true")
	check(m.RegistrationEndpointPresent, "metadata: no registration_endpoint")
	check(m.AuthMethodNoneSupported, `metadata: token_endpoint_auth_methods_supported lacks "none"`)
	check(m.RefreshTokenGrantSupported, "metadata: grant_types_supported lacks refresh_token")

	// RFC 7591 registration of a public client.
	r := f.Registration
	check(r.ClientIDRegistered, "registration: no client_id")
	check(!r.ClientSecretIssued, "registration: a public client got a client_secret")
	check(r.TokenEndpointAuthMethod == "none", `registration: token_endpoint_auth_method = %q, want "none"`, r.TokenEndpointAuthMethod)
	check(r.RedirectURIsEchoed, "registration: redirect_uris not echoed as registered")
	check(slices.Contains(r.GrantTypes, "authorization_code") && slices.Contains(r.GrantTypes, "refresh_token"),
		"registration: grant_types = %q, want authorization_code and refresh_token", r.GrantTypes)

	// The SDK's authorization request.
	q := f.AuthorizationRequest
	check(q.PKCES256, "authorization request: no S256 code_challenge")
	check(q.ResourceSent && q.ScopeSent && q.StateSent, "authorization request: resource/scope/state sent = %v/%v/%v", q.ResourceSent, q.ScopeSent, q.StateSent)

	// Auto-approval: a redirect carrying code, state and iss (RFC 9207).
	a := f.AuthorizationResponse
	check(a.Status == http.StatusFound, "authorization response status = %d, want 302", a.Status)
	check(a.RedirectsToRedirectURI, "authorization response does not redirect to the registered redirect_uri")
	check(a.CodePresent && a.Error == "", "authorization response: code present = %v, error = %q", a.CodePresent, a.Error)
	check(a.StateMatches, "authorization response: state does not match")
	check(a.ISS == srv.URL && a.ISSMatchesIssuer, "authorization response: iss = %q, want %q", a.ISS, srv.URL)

	// Code exchange.
	tok := f.Token
	check(tok.TokenType == "Bearer" || tok.TokenType == "bearer", `token_type = %q, want "Bearer"`, tok.TokenType)
	check(tok.AccessTokenPresent, "token response: no access_token")
	check(tok.RefreshTokenPresent, "token response: no refresh_token")
	check(tok.ExpiresIn > 0, "token response: expires_in = %v, want > 0", tok.ExpiresIn)
	check(tok.Scope == "" || tok.Scope == scope, "token response: scope = %q, want %q", tok.Scope, scope)

	// Refresh with rotation.
	rf := f.Refresh
	check(len(rf.TokenTypes) == 2, "refresh: token types = %q", rf.TokenTypes)
	for _, tt := range rf.TokenTypes {
		check(tt == "Bearer" || tt == "bearer", `refresh: token_type = %q, want "Bearer"`, tt)
	}
	check(rf.AccessTokensPresent, "refresh: an answer without access_token")
	check(rf.AccessTokensDistinct, "refresh: access tokens repeat")
	check(rf.RefreshTokensRotated, "refresh: refresh tokens did not rotate on each refresh")

	// Reuse of a rotated refresh token is refused with invalid_grant...
	u := f.Reuse
	check(u.Rejected, "reusing a rotated refresh token succeeded")
	check(u.OAuthError && u.InvalidGrantError && u.ErrorName == "InvalidGrantError" && u.ErrorCode == "invalid_grant",
		"reusing a rotated refresh token: SDK error %s (code %q, OAuthError %v), want InvalidGrantError (invalid_grant)", u.ErrorName, u.ErrorCode, u.OAuthError)
	// ...and revokes the family, so the newest refresh token is refused too.
	n := f.AfterReuseNewest
	check(n.Rejected && n.ErrorCode == "invalid_grant",
		"after reuse, the newest refresh token: rejected = %v, code %q; want invalid_grant (family revoked)", n.Rejected, n.ErrorCode)
}
