package oauth_test

import (
	"errors"
	"testing"

	"github.com/evergrant/evergrant/oauth"
)

func TestCanonicalResource(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		// Examples of the MCP authorization specification, "Canonical Server URI".
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp"},
		{"https://mcp.example.com", "https://mcp.example.com"},
		{"https://mcp.example.com:8443", "https://mcp.example.com:8443"},
		{"https://mcp.example.com/server/mcp", "https://mcp.example.com/server/mcp"},
		{"https://mcp.example.com/", "https://mcp.example.com"},
		// Case of scheme and host; not of the path.
		{"HTTPS://MCP.Example.COM/MCP", "https://mcp.example.com/MCP"},
		// Default and empty ports.
		{"https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"},
		{"http://mcp.example.com:80/mcp", "http://mcp.example.com/mcp"},
		{"http://mcp.example.com:443/mcp", "http://mcp.example.com:443/mcp"},
		{"https://mcp.example.com:80", "https://mcp.example.com:80"},
		{"https://mcp.example.com:/mcp", "https://mcp.example.com/mcp"},
		{"https://mcp.example.com:0443/mcp", "https://mcp.example.com/mcp"},
		{"https://mcp.example.com:08443", "https://mcp.example.com:8443"},
		// Trailing slashes.
		{"https://mcp.example.com/mcp/", "https://mcp.example.com/mcp"},
		{"https://mcp.example.com/mcp//", "https://mcp.example.com/mcp"},
		{"https://mcp.example.com/a/b/", "https://mcp.example.com/a/b"},
		// Query kept; an empty one dropped.
		{"https://mcp.example.com/mcp?tenant=a&x=%20", "https://mcp.example.com/mcp?tenant=a&x=%20"},
		{"https://mcp.example.com/?tenant=a", "https://mcp.example.com?tenant=a"},
		{"https://mcp.example.com/mcp?", "https://mcp.example.com/mcp"},
		// Percent-encoding as net/url writes it.
		{"https://mcp.example.com/a%2Fb", "https://mcp.example.com/a%2Fb"},
		{"https://mcp.example.com/%7Euser", "https://mcp.example.com/%7Euser"},
		{"https://mcp.example.com/a%20b", "https://mcp.example.com/a%20b"},
		// IP addresses.
		{"http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp"},
		{"http://[::1]:8080/mcp", "http://[::1]:8080/mcp"},
		{"https://[2001:DB8:0:0::1]:443/", "https://[2001:db8::1]"},
	}
	for _, tt := range tests {
		got, err := oauth.CanonicalResource(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("CanonicalResource(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			continue
		}
		// Canonical of canonical is itself.
		if again, err := oauth.CanonicalResource(got); err != nil || again != got {
			t.Errorf("CanonicalResource(%q) = %q, %v; not idempotent", got, again, err)
		}
	}
}

func TestCanonicalResourceErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"mcp.example.com",                     // no scheme (MCP spec example)
		"/mcp",                                // relative
		"//mcp.example.com/mcp",               // scheme-relative
		"https://mcp.example.com#fragment",    // fragment (MCP spec example, RFC 8707 §2)
		"https://mcp.example.com/mcp#",        // empty fragment
		"ftp://mcp.example.com/mcp",           // scheme
		"urn:example:mcp",                     // not hierarchical
		"https:mcp.example.com",               // opaque
		"https://user:pw@mcp.example.com",     // userinfo
		"https://@mcp.example.com",            // empty userinfo
		"https:///mcp",                        // no host
		"https://:443/mcp",                    // empty host
		"https://mcp.example.com:99999",       // port out of range
		"https://mcp.example.com:x",           // port not a number
		"https://mcp.example.com/a b",         // space
		"https://mcp.example.com/\x00",        // control
		"https://mcp.example.com/caf\xc3\xa9", // non-ASCII
		"https://mcp%2eexample.com/mcp",       // '%' in host
		"https://m!cp.example.com/mcp",        // sub-delim in host
		"https://[fe80::1%25eth0]/mcp",        // IPv6 zone
		"https://[127.0.0.1]/mcp",             // IPv4 in brackets
	} {
		got, err := oauth.CanonicalResource(in)
		if !errors.Is(err, oauth.ErrInvalidResource) {
			t.Errorf("CanonicalResource(%q) = %q, %v; want ErrInvalidResource", in, got, err)
		}
	}
}

func TestSameResource(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp", true},
		{"https://MCP.example.com:443/mcp/", "https://mcp.example.com/mcp", true},
		{"https://mcp.example.com", "https://mcp.example.com/", true},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/MCP", false},
		{"https://mcp.example.com/mcp", "http://mcp.example.com/mcp", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com:8443/mcp", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp?x=1", false},
		{"https://mcp.example.com#a", "https://mcp.example.com#a", false}, // both invalid
		{"", "", false},
	}
	for _, tt := range tests {
		if got := oauth.SameResource(tt.a, tt.b); got != tt.want {
			t.Errorf("SameResource(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"localhost", true},
		{"LocalHost", true},
		{"127.0.0.1", true},
		{"127.1.2.3", true},
		{"::1", true},
		{"[::1]", true},
		{"::ffff:127.0.0.1", true},
		{"[::ffff:7f00:1]", true},
		{"0:0:0:0:0:0:0:1", true},
		{"localhost.", false},
		{"app.localhost", false},
		{"localhost.example.com", false},
		{"127.1", false},
		{"128.0.0.1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"::2", false},
		{"example.com", false},
		{"localhost:8080", false},
		{"[::1]:8080", false},
		{"", false},
		{"[]", false},
	}
	for _, tt := range tests {
		if got := oauth.IsLoopbackHost(tt.host); got != tt.want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

func TestCheckEndpointURL(t *testing.T) {
	for _, ok := range []string{
		"https://as.example.com/token",
		"https://as.example.com:8443/authorize?prompt=consent",
		"HTTPS://AS.example.com",
		"http://127.0.0.1:9000/token",
		"http://localhost/token",
		"http://LOCALHOST:8080/token",
		"http://[::1]:9000/token",
	} {
		if err := oauth.CheckEndpointURL(ok); err != nil {
			t.Errorf("CheckEndpointURL(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{
		"",
		"http://as.example.com/token",       // http, not loopback
		"http://10.0.0.1/token",             // http, private but not loopback
		"http://localhost.evil.com/token",   // not loopback
		"ftp://as.example.com/token",        // scheme
		"javascript:alert(1)",               // scheme, opaque
		"https:as.example.com",              // opaque
		"/token",                            // relative
		"//as.example.com/token",            // scheme-relative
		"https:///token",                    // no host
		"https://as.example.com/token#frag", // fragment
		"https://user@as.example.com/token", // userinfo
		"https://as.example.com/\x7f",       // control
	} {
		if err := oauth.CheckEndpointURL(bad); !errors.Is(err, oauth.ErrInsecureURL) {
			t.Errorf("CheckEndpointURL(%q) = %v, want ErrInsecureURL", bad, err)
		}
	}
}

// FuzzCanonicalResource checks that CanonicalResource never panics, that its
// result is canonical itself (idempotence) and that the result passes
// SameResource with the input.
func FuzzCanonicalResource(f *testing.F) {
	for _, s := range []string{
		"https://mcp.example.com/mcp",
		"HTTPS://MCP.Example.com:443/mcp/",
		"http://127.0.0.1:8080/",
		"https://[2001:DB8::1]:8443/a%2Fb?x=1",
		"https://mcp.example.com/%7e/a//?",
		"https://mcp.example.com#f",
		"ftp://x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := oauth.CanonicalResource(raw)
		if err != nil {
			if !errors.Is(err, oauth.ErrInvalidResource) {
				t.Fatalf("CanonicalResource(%q) error %v does not wrap ErrInvalidResource", raw, err)
			}
			return
		}
		c2, err := oauth.CanonicalResource(c)
		if err != nil {
			t.Fatalf("CanonicalResource(%q) = %q, which is refused: %v", raw, c, err)
		}
		if c2 != c {
			t.Fatalf("CanonicalResource not idempotent: %q -> %q -> %q", raw, c, c2)
		}
		if !oauth.SameResource(raw, c) {
			t.Fatalf("SameResource(%q, %q) = false", raw, c)
		}
		if _, err := oauth.ProtectedResourceMetadataURL(raw); err != nil {
			t.Fatalf("ProtectedResourceMetadataURL(%q): %v", raw, err)
		}
	})
}
