package oauth_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/evergrant/evergrant/oauth"
)

func TestProtectedResourceMetadataURL(t *testing.T) {
	tests := []struct {
		resource string
		want     []string // first is ProtectedResourceMetadataURL
	}{
		// MCP authorization specification, "Protected Resource Metadata
		// Discovery Requirements".
		{"https://example.com/public/mcp", []string{
			"https://example.com/.well-known/oauth-protected-resource/public/mcp",
			"https://example.com/.well-known/oauth-protected-resource",
		}},
		// RFC 9728 §3.1 examples.
		{"https://resource.example.com", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		{"https://resource.example.com/resource1", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource/resource1",
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		// Terminating slash removed (RFC 9728 §3.1).
		{"https://resource.example.com/", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		{"https://resource.example.com/mcp/", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource/mcp",
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		// Query kept after the inserted path (RFC 9728 §3); fragment dropped.
		{"https://resource.example.com/mcp?tenant=a#frag", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource/mcp?tenant=a",
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		{"https://resource.example.com/?tenant=a", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource?tenant=a",
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		// Canonical origin: case and default port.
		{"HTTPS://Resource.Example.com:443/MCP", []string{
			"https://resource.example.com/.well-known/oauth-protected-resource/MCP",
			"https://resource.example.com/.well-known/oauth-protected-resource",
		}},
		{"http://127.0.0.1:8080/mcp", []string{
			"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp",
			"http://127.0.0.1:8080/.well-known/oauth-protected-resource",
		}},
		// Escaped path kept.
		{"https://ex.com/a%2Fb/c%20d", []string{
			"https://ex.com/.well-known/oauth-protected-resource/a%2Fb/c%20d",
			"https://ex.com/.well-known/oauth-protected-resource",
		}},
	}
	for _, tt := range tests {
		got, err := oauth.ProtectedResourceMetadataURL(tt.resource)
		if err != nil || got != tt.want[0] {
			t.Errorf("ProtectedResourceMetadataURL(%q) = %q, %v; want %q", tt.resource, got, err, tt.want[0])
		}
		urls, err := oauth.ProtectedResourceMetadataURLs(tt.resource)
		if err != nil || !reflect.DeepEqual(urls, tt.want) {
			t.Errorf("ProtectedResourceMetadataURLs(%q) = %q, %v; want %q", tt.resource, urls, err, tt.want)
		}
	}
	for _, bad := range []string{"", "example.com/mcp", "ftp://example.com", "https://u@example.com", "/mcp"} {
		if _, err := oauth.ProtectedResourceMetadataURL(bad); !errors.Is(err, oauth.ErrInvalidResource) {
			t.Errorf("ProtectedResourceMetadataURL(%q) error = %v, want ErrInvalidResource", bad, err)
		}
		if _, err := oauth.ProtectedResourceMetadataURLs(bad); !errors.Is(err, oauth.ErrInvalidResource) {
			t.Errorf("ProtectedResourceMetadataURLs(%q) error = %v, want ErrInvalidResource", bad, err)
		}
	}
}

func TestAuthServerMetadataURLs(t *testing.T) {
	tests := []struct {
		issuer string
		want   []string
	}{
		// MCP authorization specification, "Authorization Server Metadata
		// Discovery", both examples.
		{"https://auth.example.com/tenant1", []string{
			"https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
			"https://auth.example.com/.well-known/openid-configuration/tenant1",
			"https://auth.example.com/tenant1/.well-known/openid-configuration",
		}},
		{"https://auth.example.com", []string{
			"https://auth.example.com/.well-known/oauth-authorization-server",
			"https://auth.example.com/.well-known/openid-configuration",
		}},
		// RFC 8414 §3.1: terminating "/" removed.
		{"https://auth.example.com/", []string{
			"https://auth.example.com/.well-known/oauth-authorization-server",
			"https://auth.example.com/.well-known/openid-configuration",
		}},
		{"https://auth.example.com/tenant1/", []string{
			"https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
			"https://auth.example.com/.well-known/openid-configuration/tenant1",
			"https://auth.example.com/tenant1/.well-known/openid-configuration",
		}},
		// RFC 8414 §3.1 example with a deeper path.
		{"https://example.com/issuer1/a", []string{
			"https://example.com/.well-known/oauth-authorization-server/issuer1/a",
			"https://example.com/.well-known/openid-configuration/issuer1/a",
			"https://example.com/issuer1/a/.well-known/openid-configuration",
		}},
		// Port and loopback http kept as written.
		{"http://127.0.0.1:9000/realms/mcp", []string{
			"http://127.0.0.1:9000/.well-known/oauth-authorization-server/realms/mcp",
			"http://127.0.0.1:9000/.well-known/openid-configuration/realms/mcp",
			"http://127.0.0.1:9000/realms/mcp/.well-known/openid-configuration",
		}},
	}
	for _, tt := range tests {
		got, err := oauth.AuthServerMetadataURLs(tt.issuer)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("AuthServerMetadataURLs(%q) = %q, %v; want %q", tt.issuer, got, err, tt.want)
		}
		first, err := oauth.AuthServerMetadataURL(tt.issuer)
		if err != nil || first != tt.want[0] {
			t.Errorf("AuthServerMetadataURL(%q) = %q, %v; want %q", tt.issuer, first, err, tt.want[0])
		}
	}
	for _, bad := range []string{
		"",
		"auth.example.com",
		"ftp://auth.example.com",
		"https://auth.example.com?x=1", // RFC 8414 §2: no query
		"https://auth.example.com?",
		"https://auth.example.com#x", // RFC 8414 §2: no fragment
		"https://u:p@auth.example.com",
		"https:///tenant",
		"https://auth.example.com/\x00",
	} {
		if got, err := oauth.AuthServerMetadataURLs(bad); !errors.Is(err, oauth.ErrInvalidMetadata) {
			t.Errorf("AuthServerMetadataURLs(%q) = %q, %v; want ErrInvalidMetadata", bad, got, err)
		}
		if got, err := oauth.AuthServerMetadataURL(bad); !errors.Is(err, oauth.ErrInvalidMetadata) {
			t.Errorf("AuthServerMetadataURL(%q) = %q, %v; want ErrInvalidMetadata", bad, got, err)
		}
	}
}
