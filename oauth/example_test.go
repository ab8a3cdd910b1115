package oauth_test

import (
	"fmt"
	"net/http"

	"github.com/evergrant/evergrant/oauth"
)

// A client reads the Bearer challenge of a 401 response to decide whether to
// refresh (error="invalid_token") and where the resource metadata is.
func ExampleParseBearerChallenge() {
	h := http.Header{}
	h.Add("WWW-Authenticate", `Basic realm="legacy", Bearer error="invalid_token", error_description="The access token expired", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"`)

	b, ok := oauth.ParseBearerChallenge(h)
	fmt.Println(ok)
	fmt.Println(b.Error == oauth.ErrorInvalidToken)
	fmt.Println(b.ErrorDescription)
	fmt.Println(b.ResourceMetadata)
	// Output:
	// true
	// true
	// The access token expired
	// https://mcp.example.com/.well-known/oauth-protected-resource/mcp
}

// A resource server answers a request that lacks a scope with 403 and an
// insufficient_scope challenge (RFC 6750 §3.1, RFC 9728 §5.1).
func ExampleBearerChallenge_String() {
	b := oauth.BearerChallenge{
		Error:            oauth.ErrorInsufficientScope,
		ErrorDescription: `tool "write_file" needs files:write`,
		Scope:            []string{"files:read", "files:write"},
		ResourceMetadata: "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
	}
	fmt.Println(b.String())
	fmt.Println(oauth.BearerChallenge{}.String())
	// Output:
	// Bearer error="insufficient_scope", error_description="tool 'write_file' needs files:write", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
	// Bearer
}

func ExampleAuthServerMetadataURLs() {
	urls, _ := oauth.AuthServerMetadataURLs("https://auth.example.com/tenant1")
	for _, u := range urls {
		fmt.Println(u)
	}
	// Output:
	// https://auth.example.com/.well-known/oauth-authorization-server/tenant1
	// https://auth.example.com/.well-known/openid-configuration/tenant1
	// https://auth.example.com/tenant1/.well-known/openid-configuration
}

func ExampleCanonicalResource() {
	r, _ := oauth.CanonicalResource("HTTPS://MCP.Example.com:443/mcp/")
	fmt.Println(r)
	// Output:
	// https://mcp.example.com/mcp
}
