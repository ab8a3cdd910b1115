package oauth_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/oauth"
)

const asDoc = `{
  "issuer": "https://auth.example.com/tenant1",
  "authorization_endpoint": "https://auth.example.com/tenant1/authorize?prompt=consent",
  "token_endpoint": "https://auth.example.com/tenant1/token",
  "registration_endpoint": "https://auth.example.com/tenant1/register",
  "revocation_endpoint": "https://auth.example.com/tenant1/revoke",
  "introspection_endpoint": "https://auth.example.com/tenant1/introspect",
  "jwks_uri": "https://auth.example.com/tenant1/jwks.json",
  "scopes_supported": ["files:read", "offline_access"],
  "response_types_supported": ["code"],
  "grant_types_supported": ["authorization_code", "refresh_token"],
  "code_challenge_methods_supported": ["plain", "S256"],
  "authorization_response_iss_parameter_supported": true,
  "client_id_metadata_document_supported": true,
  "some_extension": {"nested": [1, 2, 3]}
}`

func TestParseAuthServerMetadata(t *testing.T) {
	m, err := oauth.ParseAuthServerMetadata([]byte(asDoc), "https://auth.example.com/tenant1")
	if err != nil {
		t.Fatal(err)
	}
	if m.TokenEndpoint != "https://auth.example.com/tenant1/token" || !m.AuthorizationResponseIssParameterSupported || !m.ClientIDMetadataDocumentSupported {
		t.Errorf("decoded %+v", m)
	}
	if !m.SupportsS256() {
		t.Error("SupportsS256() = false")
	}
	if !m.SupportsScope(oauth.ScopeOfflineAccess) || m.SupportsScope("files:write") {
		t.Error("SupportsScope misbehaves")
	}
}

func TestParseAuthServerMetadataLoopback(t *testing.T) {
	doc := `{"issuer":"http://127.0.0.1:9000","authorization_endpoint":"http://127.0.0.1:9000/authorize",
		"token_endpoint":"http://localhost:9000/token","jwks_uri":"http://[::1]:9000/jwks"}`
	if _, err := oauth.ParseAuthServerMetadata([]byte(doc), "http://127.0.0.1:9000"); err != nil {
		t.Errorf("loopback http refused: %v", err)
	}
}

func TestParseAuthServerMetadataErrors(t *testing.T) {
	const issuer = "https://auth.example.com"
	tests := []struct {
		name, doc, issuer string
		insecure          bool // error also wraps ErrInsecureURL
	}{
		{"not JSON", `issuer`, issuer, false},
		{"not an object", `["https://auth.example.com"]`, issuer, false},
		{"null", `null`, issuer, false},
		{"wrong type", `{"issuer":"https://auth.example.com","scopes_supported":"a b"}`, issuer, false},
		{"no issuer", `{"token_endpoint":"https://auth.example.com/token"}`, issuer, false},
		{"issuer mismatch (RFC 8414 §3.3)", `{"issuer":"https://evil.example.com"}`, issuer, false},
		{"issuer differs by trailing slash", `{"issuer":"https://auth.example.com/"}`, issuer, false},
		{"issuer differs by case", `{"issuer":"https://Auth.example.com"}`, issuer, false},
		{"http issuer", `{"issuer":"http://auth.example.com"}`, "http://auth.example.com", true},
		{"issuer with query", `{"issuer":"https://auth.example.com?a=b"}`, "https://auth.example.com?a=b", false},
		{"http token endpoint", `{"issuer":"https://auth.example.com","token_endpoint":"http://auth.example.com/token"}`, issuer, true},
		{"http authorization endpoint", `{"issuer":"https://auth.example.com","authorization_endpoint":"http://10.0.0.1/authorize"}`, issuer, true},
		{"relative registration endpoint", `{"issuer":"https://auth.example.com","registration_endpoint":"/register"}`, issuer, true},
		{"revocation endpoint with fragment", `{"issuer":"https://auth.example.com","revocation_endpoint":"https://auth.example.com/r#x"}`, issuer, true},
		{"introspection endpoint with userinfo", `{"issuer":"https://auth.example.com","introspection_endpoint":"https://a:b@auth.example.com/i"}`, issuer, true},
		{"javascript jwks_uri", `{"issuer":"https://auth.example.com","jwks_uri":"javascript:alert(1)"}`, issuer, true},
		{"too large", `{"issuer":"https://auth.example.com","x":"` + strings.Repeat("a", oauth.MaxDocumentSize) + `"}`, issuer, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := oauth.ParseAuthServerMetadata([]byte(tt.doc), tt.issuer)
			if !errors.Is(err, oauth.ErrInvalidMetadata) || m != nil {
				t.Fatalf("ParseAuthServerMetadata = %v, %v; want ErrInvalidMetadata", m, err)
			}
			if errors.Is(err, oauth.ErrInsecureURL) != tt.insecure {
				t.Errorf("errors.Is(%v, ErrInsecureURL) = %v, want %v", err, !tt.insecure, tt.insecure)
			}
		})
	}
}

func TestAuthServerMetadataSupportsNil(t *testing.T) {
	var m *oauth.AuthServerMetadata
	if m.SupportsS256() || m.SupportsScope("x") {
		t.Error("nil metadata supports something")
	}
	if (&oauth.AuthServerMetadata{CodeChallengeMethodsSupported: []string{"plain", "s256"}}).SupportsS256() {
		t.Error("SupportsS256 matched s256; PKCE method names are case-sensitive")
	}
}

func TestParseProtectedResourceMetadata(t *testing.T) {
	// RFC 9728 §3.2 example.
	doc := `{
	  "resource": "https://resource.example.com",
	  "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
	  "bearer_methods_supported": ["header", "body"],
	  "scopes_supported": ["profile", "email", "phone"],
	  "resource_documentation": "https://resource.example.com/resource_documentation.html"
	}`
	m, err := oauth.ParseProtectedResourceMetadata([]byte(doc), "https://resource.example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := &oauth.ProtectedResourceMetadata{
		Resource:               "https://resource.example.com",
		AuthorizationServers:   []string{"https://as1.example.com", "https://as2.example.net"},
		BearerMethodsSupported: []string{"header", "body"},
		ScopesSupported:        []string{"profile", "email", "phone"},
		ResourceDocumentation:  "https://resource.example.com/resource_documentation.html",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got %+v, want %+v", m, want)
	}

	// Same resource in canonical form.
	for _, resource := range []string{"https://resource.example.com/", "HTTPS://RESOURCE.example.com:443"} {
		if _, err := oauth.ParseProtectedResourceMetadata([]byte(doc), resource); err != nil {
			t.Errorf("resource %q refused: %v", resource, err)
		}
	}
	loopback := `{"resource":"http://127.0.0.1:8080/mcp","authorization_servers":["http://localhost:9000"]}`
	if _, err := oauth.ParseProtectedResourceMetadata([]byte(loopback), "http://127.0.0.1:8080/mcp/"); err != nil {
		t.Errorf("loopback refused: %v", err)
	}
}

func TestParseProtectedResourceMetadataErrors(t *testing.T) {
	const resource = "https://mcp.example.com/mcp"
	tests := []struct {
		name, doc, resource string
		insecure            bool
	}{
		{"not JSON", `{`, resource, false},
		{"not an object", `"x"`, resource, false},
		{"no resource", `{"authorization_servers":["https://as.example.com"]}`, resource, false},
		{"resource mismatch (RFC 9728 §3.3)", `{"resource":"https://evil.example.com/mcp","authorization_servers":["https://as.example.com"]}`, resource, false},
		{"resource differs by path", `{"resource":"https://mcp.example.com/other","authorization_servers":["https://as.example.com"]}`, resource, false},
		{"resource differs by port", `{"resource":"https://mcp.example.com:8443/mcp","authorization_servers":["https://as.example.com"]}`, resource, false},
		{"invalid expected resource", `{"resource":"https://mcp.example.com/mcp#x","authorization_servers":["https://as.example.com"]}`, "https://mcp.example.com/mcp#x", false},
		{"no authorization servers", `{"resource":"https://mcp.example.com/mcp"}`, resource, false},
		{"empty authorization servers", `{"resource":"https://mcp.example.com/mcp","authorization_servers":[]}`, resource, false},
		{"http authorization server", `{"resource":"https://mcp.example.com/mcp","authorization_servers":["https://as.example.com","http://as.example.com"]}`, resource, true},
		{"empty authorization server", `{"resource":"https://mcp.example.com/mcp","authorization_servers":[""]}`, resource, true},
		{"http jwks_uri", `{"resource":"https://mcp.example.com/mcp","authorization_servers":["https://as.example.com"],"jwks_uri":"http://mcp.example.com/jwks"}`, resource, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := oauth.ParseProtectedResourceMetadata([]byte(tt.doc), tt.resource)
			if !errors.Is(err, oauth.ErrInvalidMetadata) || m != nil {
				t.Fatalf("ParseProtectedResourceMetadata = %v, %v; want ErrInvalidMetadata", m, err)
			}
			if errors.Is(err, oauth.ErrInsecureURL) != tt.insecure {
				t.Errorf("errors.Is(%v, ErrInsecureURL) = %v, want %v", err, !tt.insecure, tt.insecure)
			}
		})
	}
}

// WriteError and ParseError agree on the wire format of RFC 6749 §5.2, with
// the headers of RFC 6749 §5.1.
func TestErrorRoundTrip(t *testing.T) {
	for _, e := range []*oauth.Error{
		{Code: oauth.ErrorInvalidGrant, Description: "refresh token revoked"},
		{Code: oauth.ErrorInvalidClient},
		{Code: oauth.ErrorTemporarilyUnavailable, Description: `quote " and backslash \`, URI: "https://as.example.com/errors/1"},
		{Code: oauth.ErrorInvalidRequest, StatusCode: http.StatusTeapot},
		oauth.NewError(oauth.ErrorInvalidTarget, "resource %q unknown", "https://x"),
	} {
		rec := httptest.NewRecorder()
		oauth.WriteError(rec, e)
		res := rec.Result()
		if res.StatusCode != e.Status() {
			t.Errorf("%v: status %d, want %d", e, res.StatusCode, e.Status())
		}
		for name, want := range map[string]string{
			"Cache-Control": "no-store",
			"Pragma":        "no-cache",
			"Content-Type":  "application/json",
		} {
			if got := res.Header.Get(name); got != want {
				t.Errorf("%v: %s = %q, want %q", e, name, got, want)
			}
		}
		got, err := oauth.ParseError(res.StatusCode, rec.Body.Bytes())
		if err != nil {
			t.Fatalf("ParseError(%q): %v", rec.Body.String(), err)
		}
		want := *e
		want.StatusCode = e.Status()
		if *got != want {
			t.Errorf("round trip: got %#v, want %#v", got, want)
		}
	}
}

func TestParseError(t *testing.T) {
	tests := []struct {
		name string
		body string
		want *oauth.Error
	}{
		{
			"RFC 6749 §5.2 example",
			`{"error":"invalid_request"}`,
			&oauth.Error{Code: "invalid_request", StatusCode: 400},
		},
		{
			"description and uri",
			`{"error":"invalid_grant","error_description":"The refresh token is invalid.","error_uri":"https://as/e"}`,
			&oauth.Error{Code: "invalid_grant", Description: "The refresh token is invalid.", URI: "https://as/e", StatusCode: 400},
		},
		{
			"optional members of the wrong type are ignored",
			`{"error":"invalid_grant","error_description":42,"error_uri":null,"other":{}}`,
			&oauth.Error{Code: "invalid_grant", StatusCode: 400},
		},
		{
			"control characters in description replaced",
			`{"error":"invalid_grant","error_description":"a\nb\u001b[31mc"}`,
			&oauth.Error{Code: "invalid_grant", Description: "a b [31mc", StatusCode: 400},
		},
		{
			"unknown code kept",
			`{"error":"custom_thing"}`,
			&oauth.Error{Code: "custom_thing", StatusCode: 400},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oauth.ParseError(400, []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if *got != *tt.want {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestParseErrorNotOAuth(t *testing.T) {
	for _, body := range []string{
		``,
		`<html>Bad Gateway</html>`,
		`null`,
		`[]`,
		`"invalid_grant"`,
		`{}`,
		`{"error":""}`,
		`{"error":42}`,
		`{"error":null}`,
		`{"error":"bad\"quote"}`,
		`{"error":"new\nline"}`,
		`{"error":"caf\u00e9"}`,
		`{"Error":"invalid_grant"}`,
		`{"error":"invalid_grant"`,
		// The code lies beyond MaxErrorBody.
		`{"pad":"` + strings.Repeat("x", oauth.MaxErrorBody) + `","error":"invalid_grant"}`,
	} {
		if e, err := oauth.ParseError(502, []byte(body)); !errors.Is(err, oauth.ErrNotOAuthError) || e != nil {
			t.Errorf("ParseError(%.40q) = %v, %v; want ErrNotOAuthError", body, e, err)
		}
	}
}

func TestParseTokenResponse(t *testing.T) {
	tests := []struct {
		name string
		body string
		want oauth.TokenResponse
	}{
		{
			"RFC 6749 §5.1 example, with token_type Bearer",
			`{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"Bearer","expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA","example_parameter":"example_value"}`,
			oauth.TokenResponse{AccessToken: "2YotnFZFEjr1zCsicMWpAA", TokenType: "Bearer", ExpiresIn: 3600, RefreshToken: "tGzv3JOkF0XG5Qx2TlKWIA"},
		},
		{
			"bearer in lower case",
			`{"access_token":"at","token_type":"bearer","expires_in":3600,"refresh_token":"rt","scope":"a b"}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer", ExpiresIn: 3600, RefreshToken: "rt", Scope: "a b"},
		},
		{
			"expires_in as string",
			`{"access_token":"at","token_type":"Bearer","expires_in":"3600"}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer", ExpiresIn: 3600},
		},
		{
			"expires_in with fraction and exponent",
			`{"access_token":"at","token_type":"BEARER","expires_in":3.6e3}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer", ExpiresIn: 3600},
		},
		{
			"expires_in fractional string",
			`{"access_token":"at","token_type":"Bearer","expires_in":" 59.9 "}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer", ExpiresIn: 59},
		},
		{
			"nulls and empty string are absent",
			`{"access_token":"at","token_type":"Bearer","expires_in":null,"refresh_token":null,"scope":null}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer"},
		},
		{
			"expires_in empty string",
			`{"access_token":"at","token_type":"Bearer","expires_in":""}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer"},
		},
		{
			"unknown members ignored",
			`{"access_token":"at","token_type":"Bearer","id_token":"x.y.z","ext":{"a":1}}`,
			oauth.TokenResponse{AccessToken: "at", TokenType: "Bearer"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oauth.ParseTokenResponse([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseTokenResponseErrors(t *testing.T) {
	for _, body := range []string{
		``,
		`null`,
		`[]`,
		`{}`,
		`{"token_type":"Bearer"}`,
		`{"access_token":"","token_type":"Bearer"}`,
		`{"access_token":42,"token_type":"Bearer"}`,
		`{"access_token":"at"}`,
		`{"access_token":"at","token_type":""}`,
		`{"access_token":"at","token_type":"DPoP"}`,
		// RFC 6749 §5.1 example: token_type "example" is not Bearer.
		`{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example","expires_in":3600}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":-1}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":"-5"}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":"soon"}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":true}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":{}}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":1e300}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":1e999}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":"NaN"}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":"Inf"}`,
		`{"access_token":"at","token_type":"Bearer","expires_in":9223372037}`,
		`{"access_token":"at","token_type":"Bearer","refresh_token":1}`,
		`{"access_token":"at","token_type":"Bearer","scope":["a"]}`,
	} {
		if got, err := oauth.ParseTokenResponse([]byte(body)); !errors.Is(err, oauth.ErrInvalidTokenResponse) || got != nil {
			t.Errorf("ParseTokenResponse(%q) = %+v, %v; want ErrInvalidTokenResponse", body, got, err)
		}
	}
}

// Some servers answer a token request with status 200 and an error body.
func TestParseTokenResponseErrorBody(t *testing.T) {
	_, err := oauth.ParseTokenResponse([]byte(`{"error":"invalid_grant","error_description":"expired"}`))
	if !errors.Is(err, oauth.ErrInvalidTokenResponse) {
		t.Fatalf("error %v does not wrap ErrInvalidTokenResponse", err)
	}
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Code != oauth.ErrorInvalidGrant || oe.Description != "expired" {
		t.Errorf("errors.As(%v) = %+v", err, oe)
	}
}

func TestParseScope(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   ", nil},
		{"a", []string{"a"}},
		{"files:read files:write", []string{"files:read", "files:write"}},
		{" b  a b c a ", []string{"b", "a", "c"}},
		{"a\tb", []string{"a\tb"}}, // only SP separates (RFC 6749 §3.3)
	}
	for _, tt := range tests {
		if got := oauth.ParseScope(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseScope(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// Many distinct and repeated tokens.
	var sb strings.Builder
	for i := range 1000 {
		sb.WriteString(strings.Repeat("x", i%50+1))
		sb.WriteByte(' ')
	}
	if got := oauth.ParseScope(sb.String()); len(got) != 50 {
		t.Errorf("ParseScope of 1000 tokens, 50 distinct: %d tokens", len(got))
	}
}

func TestFormatScope(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{""}, ""},
		{[]string{"a"}, "a"},
		{[]string{"a", "", "b", "a"}, "a b"},
		{[]string{"offline_access", "files:read"}, "offline_access files:read"},
	}
	for _, tt := range tests {
		if got := oauth.FormatScope(tt.in); got != tt.want {
			t.Errorf("FormatScope(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := oauth.FormatScope(oauth.ParseScope(tt.want)); got != tt.want {
			t.Errorf("FormatScope(ParseScope(%q)) = %q", tt.want, got)
		}
	}
}

func FuzzParseAuthServerMetadata(f *testing.F) {
	f.Add([]byte(asDoc), "https://auth.example.com/tenant1")
	f.Add([]byte(`{"issuer":"http://127.0.0.1:9000","token_endpoint":"http://localhost:9000/token"}`), "http://127.0.0.1:9000")
	f.Add([]byte(`{"issuer":"https://a","token_endpoint":"http://a/token"}`), "https://a")
	f.Add([]byte(`{"issuer":"https://a?x"}`), "https://a?x")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, data []byte, issuer string) {
		m, err := oauth.ParseAuthServerMetadata(data, issuer)
		if err != nil {
			if m != nil || !errors.Is(err, oauth.ErrInvalidMetadata) {
				t.Fatalf("ParseAuthServerMetadata = %v, %v", m, err)
			}
			return
		}
		if m.Issuer != issuer {
			t.Fatalf("issuer %q accepted for %q", m.Issuer, issuer)
		}
		for _, u := range []string{m.AuthorizationEndpoint, m.TokenEndpoint, m.RegistrationEndpoint, m.RevocationEndpoint, m.IntrospectionEndpoint, m.JWKSURI} {
			if u != "" && oauth.CheckEndpointURL(u) != nil {
				t.Fatalf("endpoint %q accepted", u)
			}
		}
		// What was accepted is accepted again once re-encoded.
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := oauth.ParseAuthServerMetadata(again, issuer)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded %s: %+v, %v; want %+v", again, m2, err, m)
		}
	})
}

func FuzzParseProtectedResourceMetadata(f *testing.F) {
	f.Add([]byte(`{"resource":"https://resource.example.com","authorization_servers":["https://as1.example.com"],"scopes_supported":["a"]}`), "https://resource.example.com/")
	f.Add([]byte(`{"resource":"http://127.0.0.1:8080/mcp","authorization_servers":["http://localhost:9000"]}`), "http://127.0.0.1:8080/mcp")
	f.Add([]byte(`{"resource":"https://r","authorization_servers":["http://as"]}`), "https://r")
	f.Add([]byte(`{"resource":"https://r#x"}`), "https://r")
	f.Fuzz(func(t *testing.T, data []byte, resource string) {
		m, err := oauth.ParseProtectedResourceMetadata(data, resource)
		if err != nil {
			if m != nil || !errors.Is(err, oauth.ErrInvalidMetadata) {
				t.Fatalf("ParseProtectedResourceMetadata = %v, %v", m, err)
			}
			return
		}
		if !oauth.SameResource(m.Resource, resource) {
			t.Fatalf("resource %q accepted for %q", m.Resource, resource)
		}
		if len(m.AuthorizationServers) == 0 {
			t.Fatal("accepted without authorization servers")
		}
		for _, as := range m.AuthorizationServers {
			if oauth.CheckEndpointURL(as) != nil {
				t.Fatalf("authorization server %q accepted", as)
			}
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := oauth.ParseProtectedResourceMetadata(again, resource)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded %s: %+v, %v; want %+v", again, m2, err, m)
		}
	})
}

func FuzzParseError(f *testing.F) {
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"The refresh token is invalid."}`))
	f.Add(401, []byte(`{"error":"invalid_client"}`))
	f.Add(400, []byte(`{"error":"invalid_request","error_description":"a\nb","error_uri":"https://as/e"}`))
	f.Add(502, []byte(`<html>Bad Gateway</html>`))
	f.Add(400, []byte(`{"error":42}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		e, err := oauth.ParseError(status, body)
		if err != nil {
			if e != nil || !errors.Is(err, oauth.ErrNotOAuthError) {
				t.Fatalf("ParseError = %v, %v", e, err)
			}
			return
		}
		if e.Code == "" || e.StatusCode != status {
			t.Fatalf("ParseError = %#v", e)
		}
		if strings.ContainsAny(e.Error(), "\r\n\x00\x1b") {
			t.Fatalf("Error() = %q holds control characters", e.Error())
		}
		// What ParseError read, WriteError writes back the same (for the
		// statuses an error response has).
		if status < 400 || status > 599 {
			return
		}
		rec := httptest.NewRecorder()
		oauth.WriteError(rec, e)
		e2, err := oauth.ParseError(rec.Code, rec.Body.Bytes())
		if err != nil || *e2 != *e {
			t.Fatalf("round trip of %#v: %#v, %v", e, e2, err)
		}
	})
}

func FuzzParseTokenResponse(f *testing.F) {
	f.Add([]byte(`{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"Bearer","expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA"}`))
	f.Add([]byte(`{"access_token":"at","token_type":"bearer","expires_in":"3600","scope":"a b"}`))
	f.Add([]byte(`{"access_token":"at","token_type":"Bearer","expires_in":1.5e3}`))
	f.Add([]byte(`{"error":"invalid_grant"}`))
	f.Add([]byte(`{"access_token":"at","token_type":"DPoP"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		tr, err := oauth.ParseTokenResponse(body)
		if err != nil {
			if tr != nil || !errors.Is(err, oauth.ErrInvalidTokenResponse) {
				t.Fatalf("ParseTokenResponse = %v, %v", tr, err)
			}
			return
		}
		if tr.AccessToken == "" || tr.TokenType != oauth.TokenTypeBearer || tr.ExpiresIn < 0 {
			t.Fatalf("ParseTokenResponse = %+v", tr)
		}
		again, err := json.Marshal(tr)
		if err != nil {
			t.Fatal(err)
		}
		tr2, err := oauth.ParseTokenResponse(again)
		if err != nil || *tr2 != *tr {
			t.Fatalf("re-encoded %s: %+v, %v; want %+v", again, tr2, err, tr)
		}
	})
}

func TestAudience_StringOrArray(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want oauth.Audience
	}{
		{`"https://a.example/mcp"`, oauth.Audience{"https://a.example/mcp"}},
		{`["https://a.example/mcp","https://b.example"]`, oauth.Audience{"https://a.example/mcp", "https://b.example"}},
	} {
		var a oauth.Audience
		if err := json.Unmarshal([]byte(tc.in), &a); err != nil || !slices.Equal(a, tc.want) {
			t.Errorf("%s: %v %v", tc.in, a, err)
		}
		if !a.Contains("HTTPS://A.example:443/mcp") {
			t.Errorf("%s does not contain the canonical resource", tc.in)
		}
		out, _ := json.Marshal(a)
		if string(out) != tc.in {
			t.Errorf("marshal %v = %s, want %s", a, out, tc.in)
		}
	}
	var a oauth.Audience
	if err := json.Unmarshal([]byte(`42`), &a); err == nil {
		t.Error("a number was accepted as aud")
	}
}
