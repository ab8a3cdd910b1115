package authserver_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/authserver"
)

const fuzzIssuer = "http://127.0.0.1:9"

// fuzzRedirects are the redirect URIs of the fuzz servers' public client.
var fuzzRedirects = []string{loopbackRedir, "https://client.example.test/cb?x=1", "com.example.app:/oauth"}

// newFuzzServer builds a server that is driven through ServeHTTP only. Client
// ID Metadata Documents are off so that no input makes it reach the network.
func newFuzzServer(tb testing.TB, autoApprove bool) *authserver.Server {
	tb.Helper()
	as, err := authserver.New(authserver.Config{
		Issuer:                  fuzzIssuer,
		Resources:               []string{testResource},
		Scopes:                  []string{"mcp:tools", "files.read"},
		AutoApprove:             autoApprove,
		DisableClientIDMetadata: true,
		Clients: []authserver.ClientConfig{
			{ID: "fuzz-client", RedirectURIs: fuzzRedirects, Name: "fuzz"},
			{ID: rsClientID, Secret: rsClientSecret, RedirectURIs: []string{"https://rs.example.test/cb"}},
			{ID: postClientID, Secret: postSecret, AuthMethod: "client_secret_post", RedirectURIs: []string{loopbackRedir}},
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return as
}

// independentLoopback is a deliberately separate reading of RFC 8252 §7.3's
// loopback hosts: "localhost" or a loopback IP literal.
func independentLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && a.Unmap().IsLoopback()
}

// oauthErrorBody checks a JSON OAuth error answer and returns its code.
func oauthErrorBody(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error answer with Content-Type %q: %q", ct, rec.Body.String())
	}
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("error answer is not an OAuth error: %q (%v)", rec.Body.String(), err)
	}
	if len(e.Description) > 1000 {
		t.Fatalf("error_description is %d bytes long", len(e.Description))
	}
	return e.Error
}

func FuzzRegister(f *testing.F) {
	for _, seed := range []string{
		`{"redirect_uris":["http://127.0.0.1/callback"],"token_endpoint_auth_method":"none","grant_types":["authorization_code","refresh_token"],"client_name":"Claude"}`,
		`{"redirect_uris":["https://app.example.com/cb"],"token_endpoint_auth_method":"client_secret_basic"}`,
		`{"redirect_uris":["https://app.example.com/cb","http://localhost:33418/cb","com.example.app:/oauth2redirect"],"token_endpoint_auth_method":"client_secret_post","response_types":["code"],"scope":"mcp:tools offline_access","contacts":["a@example.com"],"client_uri":"https://example.com","logo_uri":"https://example.com/l.png"}`,
		`{"redirect_uris":["http://[::1]:8080/cb"],"token_endpoint_auth_method":"none"}`,
		`{"redirect_uris":["http://evil.example/cb"]}`,
		`{"redirect_uris":["javascript:alert(1)"]}`,
		`{"redirect_uris":["https://app.example.com/cb#frag"]}`,
		`{"redirect_uris":["https://user:pw@app.example.com/cb"]}`,
		`{"redirect_uris":["myapp:/cb"]}`,
		`{"redirect_uris":["https://:443/cb"]}`,
		`{"redirect_uris":["HTTP://LOCALHOST/cb"]}`,
		`{"redirect_uris":["http://127.0.0.1.evil.example/cb"]}`,
		`{"redirect_uris":["http://[::ffff:127.0.0.1]/cb"]}`,
		`{"redirect_uris":[],"grant_types":["implicit"]}`,
		`{"redirect_uris":["https://a.example/cb"],"grant_types":["refresh_token"]}`,
		`{"redirect_uris":["https://a.example/cb"],"client_id":"chosen","client_secret":"chosen","client_secret_expires_at":1}`,
		`{"redirect_uris":"https://a.example/cb"}`,
		`{"redirect_uris":["https://a.example/cb"],"token_endpoint_auth_method":"private_key_jwt"}`,
		`[]`, `null`, `{}`, `{"redirect_uris":[null]}`, ``, `{"a":`,
	} {
		f.Add([]byte(seed))
	}
	as := newFuzzServer(f, true)
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, authserver.PathRegister, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		as.ServeHTTP(rec, req)

		switch rec.Code {
		case http.StatusBadRequest:
			if code := oauthErrorBody(t, rec); code != "invalid_client_metadata" && code != "invalid_redirect_uri" {
				t.Fatalf("registration refused with error %q, want invalid_client_metadata or invalid_redirect_uri", code)
			}
			return
		case http.StatusCreated:
		default:
			t.Fatalf("status %d, want 201 or 400: %q", rec.Code, rec.Body.String())
		}

		var md struct {
			ClientID     string   `json:"client_id"`
			ClientSecret string   `json:"client_secret"`
			RedirectURIs []string `json:"redirect_uris"`
			AuthMethod   string   `json:"token_endpoint_auth_method"`
			GrantTypes   []string `json:"grant_types"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &md); err != nil {
			t.Fatalf("201 with an undecodable body %q: %v", rec.Body.String(), err)
		}
		if md.ClientID == "" || md.ClientID == "chosen" || md.ClientSecret == "chosen" {
			t.Fatalf("client_id %q / client_secret not assigned by the server", md.ClientID)
		}
		if (md.AuthMethod == "none") != (md.ClientSecret == "") {
			t.Fatalf("auth method %q with client_secret %q", md.AuthMethod, md.ClientSecret)
		}
		if len(md.RedirectURIs) == 0 {
			t.Fatal("registered without redirect URIs")
		}
		for _, g := range md.GrantTypes {
			if g != "authorization_code" && g != "refresh_token" {
				t.Fatalf("registered grant type %q", g)
			}
		}
		for _, raw := range md.RedirectURIs {
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatalf("registered an unparsable redirect URI %q", raw)
			}
			if u.Fragment != "" || strings.Contains(raw, "#") || u.User != nil {
				t.Fatalf("registered redirect URI %q with a fragment or userinfo", raw)
			}
			switch scheme := strings.ToLower(u.Scheme); {
			case scheme == "https":
				// u.Host, not u.Hostname(): see TestRegister_HTTPSRedirectURINeedsHostname.
				if u.Host == "" {
					t.Fatalf("registered https redirect URI %q without a host", raw)
				}
			case scheme == "http":
				if !independentLoopback(u.Hostname()) {
					t.Fatalf("registered http redirect URI %q on a host that is not loopback", raw)
				}
			case strings.Contains(scheme, "."):
			default:
				t.Fatalf("registered redirect URI %q: scheme %q is neither https, loopback http nor reverse-domain", raw, scheme)
			}
		}
	})
}

func FuzzAuthorizeQuery(f *testing.F) {
	_, challenge := pkce()
	valid := authParams("fuzz-client", loopbackRedir, challenge)
	f.Add(valid.Encode(), false)
	f.Add(valid.Encode(), true)
	for _, mod := range []func(url.Values){
		func(q url.Values) { q.Set("redirect_uri", "http://127.0.0.1:49152/callback") },
		func(q url.Values) { q.Set("redirect_uri", "https://client.example.test/cb?x=1") },
		func(q url.Values) { q.Set("redirect_uri", "com.example.app:/oauth") },
		func(q url.Values) { q.Set("redirect_uri", "https://evil.example/cb") },
		func(q url.Values) { q.Set("redirect_uri", "http://127.0.0.1/callback/../evil") },
		func(q url.Values) { q.Set("redirect_uri", "http://localhost/callback") },
		func(q url.Values) { q.Del("redirect_uri") },
		func(q url.Values) { q.Set("client_id", "unknown") },
		func(q url.Values) { q.Set("client_id", "https://attacker.example/client.json") },
		func(q url.Values) { q.Add("client_id", "fuzz-client") },
		func(q url.Values) { q.Add("state", "second") },
		func(q url.Values) { q.Set("response_type", "token") },
		func(q url.Values) { q.Set("code_challenge_method", "plain") },
		func(q url.Values) { q.Del("code_challenge") },
		func(q url.Values) { q.Set("code_challenge", "short") },
		func(q url.Values) { q.Set("scope", "mcp:tools offline_access files.read") },
		func(q url.Values) { q.Set("scope", "admin") },
		func(q url.Values) { q.Set("resource", "https://other.example/mcp") },
		func(q url.Values) { q.Set("resource", "https://mcp.example.test/mcp/") },
		func(q url.Values) { q.Set("state", `"><script>alert(1)</script>`) },
		func(q url.Values) {
			q.Set("client_id", "resource-server")
			q.Set("redirect_uri", "https://rs.example.test/cb")
		},
	} {
		q := url.Values{}
		for k, v := range valid {
			q[k] = append([]string(nil), v...)
		}
		mod(q)
		f.Add(q.Encode(), false)
	}
	f.Add("", false)
	f.Add("client_id=fuzz-client&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcallback%zz", false)
	f.Add("client_id=fuzz-client;redirect_uri=x", true)

	auto := newFuzzServer(f, true)
	f.Fuzz(func(t *testing.T, raw string, consent bool) {
		as := auto
		if consent {
			// A fresh server each time: pending consent requests are
			// bounded, and the fuzzer would otherwise fill the table.
			as = newFuzzServer(t, false)
		}
		req := httptest.NewRequest(http.MethodGet, authserver.PathAuthorize, nil)
		req.URL.RawQuery = raw
		rec := httptest.NewRecorder()
		as.ServeHTTP(rec, req)

		loc := rec.Header().Get("Location")
		switch rec.Code {
		case http.StatusOK:
			if !consent {
				t.Fatalf("auto-approving server answered 200: %q", rec.Body.String())
			}
			if loc != "" || !strings.Contains(rec.Body.String(), `name="csrf"`) {
				t.Fatalf("200 that is not the consent page (Location %q)", loc)
			}
			if rec.Header().Get("X-Frame-Options") != "DENY" {
				t.Fatal("consent page without X-Frame-Options")
			}
		case http.StatusBadRequest, http.StatusMethodNotAllowed:
			if loc != "" {
				t.Fatalf("status %d with Location %q", rec.Code, loc)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Fatalf("error page with Content-Type %q", ct)
			}
		case http.StatusFound:
			u, err := url.Parse(loc)
			if err != nil {
				t.Fatalf("unparsable Location %q", loc)
			}
			if !fuzzRedirectAllowed(u) {
				t.Fatalf("redirected to %q, which is not a registered redirect URI", loc)
			}
			q := u.Query()
			if q.Get("iss") != fuzzIssuer {
				t.Fatalf("redirect %q without iss=%s", loc, fuzzIssuer)
			}
			if q.Has("code") == q.Has("error") {
				t.Fatalf("redirect %q carries both or neither of code and error", loc)
			}
		default:
			t.Fatalf("status %d, want 200, 302, 400 or 405", rec.Code)
		}
	})
}

// fuzzRedirectAllowed: the redirect goes to one of fuzzRedirects (any port
// for the loopback one).
func fuzzRedirectAllowed(u *url.URL) bool {
	for _, r := range append(fuzzRedirects, "https://rs.example.test/cb") {
		ru, _ := url.Parse(r)
		if u.Scheme != ru.Scheme || u.Opaque != ru.Opaque || u.User != nil || u.Fragment != "" {
			continue
		}
		if u.EscapedPath() != ru.EscapedPath() {
			continue
		}
		if u.Host == ru.Host || (ru.Scheme == "http" && u.Hostname() == ru.Hostname()) {
			return true
		}
	}
	return false
}

func FuzzTokenForm(f *testing.F) {
	verifier, _ := pkce()
	basic := func(id, secret string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
	}
	for _, s := range []struct{ body, authz string }{
		{url.Values{"grant_type": {"authorization_code"}, "code": {"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE"}, "redirect_uri": {loopbackRedir},
			"code_verifier": {verifier}, "client_id": {"fuzz-client"}, "resource": {testResource}}.Encode(), ""},
		{url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE"}, "client_id": {"fuzz-client"}}.Encode(), ""},
		{url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}, "client_id": {postClientID}, "client_secret": {postSecret}, "scope": {"mcp:tools"}}.Encode(), ""},
		{url.Values{"grant_type": {"authorization_code"}, "code": {"x"}, "redirect_uri": {"https://rs.example.test/cb"}, "code_verifier": {verifier}}.Encode(), basic(rsClientID, rsClientSecret)},
		{url.Values{"grant_type": {"client_credentials"}}.Encode(), basic(rsClientID, rsClientSecret)},
		{url.Values{"grant_type": {"password"}, "username": {"u"}, "password": {"p"}, "client_id": {"fuzz-client"}}.Encode(), ""},
		{"grant_type=refresh_token&grant_type=authorization_code&client_id=fuzz-client", ""},
		{"grant_type=authorization_code&client_id=fuzz-client&client_id=resource-server", ""},
		{"client_id=resource-server&client_secret=wrong", basic(rsClientID, "wrong")},
		{"", "Basic !!!"},
		{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("%zz:%zz"))},
		{"", "Bearer abc"},
		{"%zz", ""},
		{"a=b;c=d", ""},
	} {
		f.Add(s.body, s.authz)
	}
	as := newFuzzServer(f, true)
	f.Fuzz(func(t *testing.T, body, authz string) {
		req := httptest.NewRequest(http.MethodPost, authserver.PathToken, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		as.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusBadRequest:
			oauthErrorBody(t, rec)
		case http.StatusUnauthorized:
			if code := oauthErrorBody(t, rec); code != "invalid_client" {
				t.Fatalf("401 with error %q, want invalid_client", code)
			}
		case http.StatusOK:
			t.Fatalf("garbage got 200: %q", rec.Body.String())
		default:
			t.Fatalf("status %d, want 400 or 401: %q", rec.Code, rec.Body.String())
		}
		if cc := rec.Header().Get("Cache-Control"); !strings.Contains(cc, "no-store") {
			t.Fatalf("token endpoint answer without Cache-Control: no-store (%q)", cc)
		}
	})
}

// TestRegister_HTTPSRedirectURINeedsHostname pins down what FuzzRegister
// only checks loosely: an https redirect URI must name a host. "https://:443"
// has a port but an empty host name, so no browser can follow it.
func TestRegister_HTTPSRedirectURINeedsHostname(t *testing.T) {
	e := newEnv(t, nil)
	for _, uri := range []string{"https:///cb", "https://:443/cb", "https://:8443/cb"} {
		st, m := e.Register(map[string]any{"redirect_uris": []string{uri}, "token_endpoint_auth_method": "none"})
		if st != http.StatusBadRequest || str(m, "error") != "invalid_redirect_uri" {
			t.Errorf("register %q: %d %v, want 400 invalid_redirect_uri", uri, st, m)
		}
	}
}
