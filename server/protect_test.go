package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

// serve sends a request with method to path on h, with token if not
// empty, and returns the recorder.
func serve(h http.Handler, method, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "https://mcp.example.test"+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

var hello = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Write([]byte("hello " + server.TokenInfoFromContext(r.Context()).Subject))
})

// Protect serves the metadata at both well-known paths of RFC 9728 §3.1,
// without a token, with CORS; every challenge names the path-inserted one
// (docs/design.md#server-rule-9).
func TestProtect_Metadata(t *testing.T) {
	h := protect(t, server.Config{Scopes: []string{"mcp:tools"}, Metadata: oauth.ProtectedResourceMetadata{ResourceName: "Example"}}, hello)
	for _, path := range []string{"/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"} {
		rec := serve(h, http.MethodGet, path, "")
		if rec.Code != http.StatusOK || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("GET %s: %d, CORS %q", path, rec.Code, rec.Header().Get("Access-Control-Allow-Origin"))
		}
		md, err := oauth.ParseProtectedResourceMetadata(rec.Body.Bytes(), testResource)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if !slices.Equal(md.AuthorizationServers, []string{testIssuer}) || !slices.Equal(md.ScopesSupported, []string{"mcp:tools"}) ||
			!slices.Equal(md.BearerMethodsSupported, []string{"header"}) || md.ResourceName != "Example" {
			t.Errorf("GET %s: %+v", path, md)
		}
		if rec := serve(h, http.MethodOptions, path, ""); rec.Code != http.StatusNoContent || !strings.Contains(rec.Header().Get("Access-Control-Allow-Methods"), "GET") {
			t.Errorf("OPTIONS %s: %d %v", path, rec.Code, rec.Header())
		}
		if rec := serve(h, http.MethodPost, path, ""); rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d", path, rec.Code)
		}
	}
	rec := serve(h, http.MethodPost, "/mcp", "")
	ch, ok := oauth.ParseBearerChallenge(rec.Header())
	if rec.Code != http.StatusUnauthorized || !ok || ch.ResourceMetadata != "https://mcp.example.test/.well-known/oauth-protected-resource/mcp" {
		t.Errorf("no token: %d, challenge %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
}

// The endpoint is the resource's path exactly; other paths are not the
// MCP server's.
func TestProtect_EndpointPath(t *testing.T) {
	for _, tc := range []struct {
		resource string
		ok       []string // paths that reach the handler
		notFound []string
	}{
		{"https://mcp.example.test/mcp", []string{"/mcp"}, []string{"/mcp/", "/mcp/x", "/", "/other"}},
		{"https://mcp.example.test/", []string{"/"}, []string{"/mcp", "/other"}},
		{"https://mcp.example.test/a/b?x=1", []string{"/a/b"}, []string{"/a", "/a/b/c"}},
		{"https://mcp.example.test/mcp%20server", []string{"/mcp%20server"}, []string{"/mcp"}},
		{"https://mcp.example.test/{x}", []string{"/%7Bx%7D"}, []string{"/x", "/y"}},
	} {
		t.Run(tc.resource, func(t *testing.T) {
			h := protect(t, server.Config{Resource: tc.resource}, hello)
			for _, p := range tc.ok {
				if rec := serve(h, http.MethodPost, p, "tok-t"); rec.Code != http.StatusOK || rec.Body.String() != "hello user-t" {
					t.Errorf("POST %s with a token: %d %q", p, rec.Code, rec.Body)
				}
				if rec := serve(h, http.MethodPost, p, ""); rec.Code != http.StatusUnauthorized {
					t.Errorf("POST %s without a token: %d, want 401", p, rec.Code)
				}
			}
			for _, p := range tc.notFound {
				if rec := serve(h, http.MethodPost, p, "tok-t"); rec.Code != http.StatusNotFound {
					t.Errorf("POST %s: %d, want 404", p, rec.Code)
				}
			}
			md, err := oauth.ProtectedResourceMetadataURL(tc.resource)
			if err != nil {
				t.Fatal(err)
			}
			if rec := serve(h, http.MethodGet, strings.TrimPrefix(md, "https://mcp.example.test"), ""); rec.Code != http.StatusOK {
				t.Errorf("GET %s: %d", md, rec.Code)
			}
		})
	}
}

// Two resources on one origin each get their path-inserted document; the
// root one belongs to the first.
func TestProtect_TwoResourcesOneOrigin(t *testing.T) {
	mux := http.NewServeMux()
	for _, res := range []string{"https://mcp.example.test/a", "https://mcp.example.test/b"} {
		cfg := server.Config{Resource: res, Verifier: fakeVerifier, Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{testIssuer}}}
		if err := server.Protect(mux, nil, hello, cfg); err != nil {
			t.Fatalf("Protect(%s): %v", res, err)
		}
	}
	for path, want := range map[string]string{
		"/.well-known/oauth-protected-resource/a": "https://mcp.example.test/a",
		"/.well-known/oauth-protected-resource/b": "https://mcp.example.test/b",
		"/.well-known/oauth-protected-resource":   "https://mcp.example.test/a",
	} {
		rec := serve(mux, http.MethodGet, path, "")
		var md oauth.ProtectedResourceMetadata
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &md) != nil || md.Resource != want {
			t.Errorf("GET %s: %d, resource %q; want %q", path, rec.Code, md.Resource, want)
		}
	}
}

// A Config Protect cannot serve is an error, and nothing is mounted.
func TestProtect_ConfigErrors(t *testing.T) {
	good := func() server.Config {
		return server.Config{Resource: testResource, Verifier: fakeVerifier,
			Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{testIssuer}}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*server.Config)
		mux  func(*http.ServeMux)
	}{
		{name: "no verifier", mod: func(c *server.Config) { c.Verifier = nil }},
		{name: "no resource", mod: func(c *server.Config) { c.Resource = "" }},
		{name: "resource not a URL", mod: func(c *server.Config) { c.Resource = "not a url" }},
		{name: "resource with a fragment", mod: func(c *server.Config) { c.Resource = "https://mcp.example.test/mcp#x" }},
		{name: "no authorization server", mod: func(c *server.Config) { c.Metadata.AuthorizationServers = nil }},
		{name: "metadata of another resource", mod: func(c *server.Config) { c.Metadata.Resource = "https://other.example.test/mcp" }},
		{name: "endpoint already served", mux: func(m *http.ServeMux) { m.Handle("/mcp", http.NotFoundHandler()) }},
		{name: "metadata already served", mux: func(m *http.ServeMux) {
			m.Handle("/.well-known/oauth-protected-resource/mcp", http.NotFoundHandler())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good()
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			mux := http.NewServeMux()
			if tc.mux != nil {
				tc.mux(mux)
			}
			srv := mcp.NewServer(&mcp.Implementation{Name: "s", Version: "1"}, nil)
			if err := server.Protect(mux, srv, hello, cfg); err == nil {
				t.Fatal("Protect succeeded")
			}
			if tc.mux == nil {
				for _, p := range []string{"/mcp", "/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"} {
					if _, pattern := mux.Handler(httptest.NewRequest(http.MethodGet, p, nil)); pattern != "" {
						t.Errorf("a failed Protect mounted %s", pattern)
					}
				}
			}
		})
	}
	if err := server.Protect(nil, nil, hello, good()); err == nil {
		t.Error("Protect with a nil ServeMux succeeded")
	}
	if err := server.Protect(http.NewServeMux(), nil, nil, good()); err == nil {
		t.Error("Protect with a nil handler succeeded")
	}
	// Protect neither keeps nor changes the caller's slices.
	cfg := good()
	cfg.Scopes = []string{"mcp:tools"}
	mux := http.NewServeMux()
	if err := server.Protect(mux, nil, hello, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Metadata.AuthorizationServers[0] = "https://changed.example.test"
	var md oauth.ProtectedResourceMetadata
	json.Unmarshal(serve(mux, http.MethodGet, "/.well-known/oauth-protected-resource/mcp", "").Body.Bytes(), &md)
	if !slices.Equal(md.AuthorizationServers, []string{testIssuer}) {
		t.Errorf("the metadata follows the caller's slice: %q", md.AuthorizationServers)
	}
}
