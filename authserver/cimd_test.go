package authserver_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

// docServer is a loopback server publishing a Client ID Metadata Document at
// /client.json. It counts connections and requests, so a test can tell
// whether the authorization server reached it at all.
type docServer struct {
	ts       *httptest.Server
	url      string // the document's URL, which is also the client_id
	conns    atomic.Int64
	requests atomic.Int64
}

// newDocServer starts a document server. serve writes the response for the
// document URL; tls picks https (with a certificate nobody trusts).
func newDocServer(t *testing.T, tls bool, serve func(d *docServer, w http.ResponseWriter, r *http.Request)) *docServer {
	t.Helper()
	d := &docServer{}
	d.ts = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.requests.Add(1)
		if r.URL.Path != "/client.json" {
			http.NotFound(w, r)
			return
		}
		serve(d, w, r)
	}))
	d.ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			d.conns.Add(1)
		}
	}
	if tls {
		d.ts.StartTLS()
	} else {
		d.ts.Start()
	}
	t.Cleanup(d.ts.Close)
	d.url = d.ts.URL + "/client.json"
	return d
}

// cimdDoc is a valid document for a public native client with refresh.
func cimdDoc(id string) map[string]any {
	return map[string]any{
		"client_id":                  id,
		"client_name":                "CIMD test client",
		"redirect_uris":              []string{loopbackRedir},
		"token_endpoint_auth_method": "none",
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
	}
}

// serveDoc serves the JSON of mod(cimdDoc(url)) as application/json.
func serveDoc(mod func(doc map[string]any)) func(*docServer, http.ResponseWriter, *http.Request) {
	return func(d *docServer, w http.ResponseWriter, r *http.Request) {
		doc := cimdDoc(d.url)
		if mod != nil {
			mod(doc)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc)
	}
}

func cimdEnv(t *testing.T, mods ...func(*authserver.Config)) *env {
	return newEnv(t, func(c *authserver.Config) {
		c.InsecureAllowLoopbackClientMetadata = true
		for _, m := range mods {
			m(c)
		}
	})
}

// authorizePage sends an authorization request and returns the response
// with its body.
func authorizePage(t *testing.T, e *env, q url.Values) (*http.Response, string) {
	t.Helper()
	r, err := e.Client.Get(e.URL(authserver.PathAuthorize) + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	return r, string(b)
}

// wantErrorPage checks that the authorization was answered with the HTML
// error page, never with a redirect to the (unverified) client.
func wantErrorPage(t *testing.T, what string, r *http.Response, body string) {
	t.Helper()
	if r.StatusCode != http.StatusBadRequest {
		t.Errorf("%s: status %d, want 400", what, r.StatusCode)
	}
	if loc := r.Header.Get("Location"); loc != "" {
		t.Errorf("%s: redirected to %q, want the error page", what, loc)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("%s: Content-Type %q, want text/html", what, ct)
	}
	if !strings.Contains(body, "Authorization error") {
		t.Errorf("%s: body is not the error page:\n%s", what, body)
	}
}

func TestCIMD_FullFlow(t *testing.T) {
	d := newDocServer(t, false, serveDoc(nil))
	e := cimdEnv(t)

	first := e.Tokens(d.url, loopbackRedir)
	at, rt := str(first, "access_token"), str(first, "refresh_token")
	if at == "" || rt == "" {
		t.Fatalf("token response %v, want access and refresh tokens", first)
	}
	in := e.Introspect(at)
	if in["active"] != true || in["client_id"] != d.url || in["aud"] != testResource {
		t.Errorf("introspection %v, want active, client_id=%s, aud=%s", in, d.url, testResource)
	}
	if c := jwtPayload(t, at)["client_id"]; c != d.url {
		t.Errorf("JWT client_id = %v, want the document URL", c)
	}

	st, second := e.Refresh(d.url, rt)
	if st != http.StatusOK || str(second, "refresh_token") == "" || str(second, "refresh_token") == rt {
		t.Fatalf("refresh: %d %v, want a new refresh token", st, second)
	}
	// One fetch served the authorization, the exchange and the refresh (the
	// document had no Cache-Control, so the default lifetime applies).
	if n := d.requests.Load(); n != 1 {
		t.Errorf("document fetched %d times, want 1", n)
	}
	// Any port on the loopback redirect URI, as for other native clients.
	v, c := pkce()
	redirect := "http://127.0.0.1:4711/callback"
	code := e.Code(d.url, redirect, c)
	if st, m := e.Exchange(d.url, redirect, code, v); st != http.StatusOK {
		t.Errorf("exchange with an ephemeral-port redirect: %d %v", st, m)
	}
}

func TestCIMD_ConsentPageNamesDocumentClient(t *testing.T) {
	d := newDocServer(t, false, serveDoc(func(doc map[string]any) { doc["client_name"] = "<b>Doc</b> client" }))
	e := cimdEnv(t, func(c *authserver.Config) { c.AutoApprove = false })
	_, challenge := pkce()
	p := getConsent(t, e, authParams(d.url, loopbackRedir, challenge))
	if !strings.Contains(p.body, "&lt;b&gt;Doc&lt;/b&gt; client") || strings.Contains(p.body, "<b>Doc") {
		t.Errorf("consent page does not show the document's client_name escaped:\n%s", p.body)
	}
	if !strings.Contains(p.body, d.url) {
		t.Errorf("consent page does not show the client_id URL %s", d.url)
	}
}

func TestCIMD_WithoutRefreshGrant(t *testing.T) {
	d := newDocServer(t, false, serveDoc(func(doc map[string]any) { doc["grant_types"] = []string{"authorization_code"} }))
	e := cimdEnv(t)
	m := e.Tokens(d.url, loopbackRedir)
	if str(m, "refresh_token") != "" {
		t.Errorf("a client without the refresh_token grant got a refresh token")
	}
	st, r := e.Refresh(d.url, "anything")
	wantTokenError(t, "refresh by a client without the grant", st, r, http.StatusBadRequest, "unauthorized_client")
}

func TestCIMD_ClientMustNotAuthenticateWithSecret(t *testing.T) {
	d := newDocServer(t, false, serveDoc(nil))
	e := cimdEnv(t)
	v, c := pkce()
	code := e.Code(d.url, loopbackRedir, c)
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {loopbackRedir}, "code_verifier": {v}}
	for name, basic := range map[string][]string{"client_secret_post": nil, "client_secret_basic": {d.url, "made-up-secret"}} {
		f := url.Values{}
		for k, vs := range form {
			f[k] = vs
		}
		if basic == nil {
			f.Set("client_id", d.url)
			f.Set("client_secret", "made-up-secret")
		}
		st, m, _, _ := e.Post(authserver.PathToken, f, basic)
		wantTokenError(t, name, st, m, http.StatusUnauthorized, "invalid_client")
	}
	// The refused attempts did not burn the code.
	if st, m := e.Exchange(d.url, loopbackRedir, code, v); st != http.StatusOK {
		t.Errorf("exchange with auth method none after refused attempts: %d %v", st, m)
	}
}

func TestCIMD_InvalidDocumentRefused(t *testing.T) {
	big := strings.Repeat("x", 17<<10)
	for _, tt := range []struct {
		name  string
		serve func(*docServer, http.ResponseWriter, *http.Request)
	}{
		{"client_id differs from the URL", serveDoc(func(doc map[string]any) { doc["client_id"] = "http://127.0.0.1:1/other.json" })},
		{"client_id differs by a trailing slash", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			serveDoc(func(doc map[string]any) { doc["client_id"] = d.url + "/" })(d, w, r)
		}},
		{"client_id missing", serveDoc(func(doc map[string]any) { delete(doc, "client_id") })},
		{"token_endpoint_auth_method client_secret_basic", serveDoc(func(doc map[string]any) { doc["token_endpoint_auth_method"] = "client_secret_basic" })},
		{"token_endpoint_auth_method client_secret_post", serveDoc(func(doc map[string]any) { doc["token_endpoint_auth_method"] = "client_secret_post" })},
		{"token_endpoint_auth_method private_key_jwt", serveDoc(func(doc map[string]any) { doc["token_endpoint_auth_method"] = "private_key_jwt" })},
		{"contains a client_secret", serveDoc(func(doc map[string]any) { doc["client_secret"] = "s3cret" })},
		{"redirect URI javascript:", serveDoc(func(doc map[string]any) { doc["redirect_uris"] = []string{"javascript:alert(1)"} })},
		{"redirect URI not the requested one", serveDoc(func(doc map[string]any) { doc["redirect_uris"] = []string{"https://elsewhere.example/cb"} })},
		{"no redirect URIs", serveDoc(func(doc map[string]any) { delete(doc, "redirect_uris") })},
		{"grant types without authorization_code", serveDoc(func(doc map[string]any) { doc["grant_types"] = []string{"client_credentials"} })},
		{"Content-Type text/html", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			b, _ := json.Marshal(cimdDoc(d.url))
			w.Header().Set("Content-Type", "text/html")
			w.Write(b)
		}},
		{"Content-Type text/plain", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			b, _ := json.Marshal(cimdDoc(d.url))
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write(b)
		}},
		{"no Content-Type", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			b, _ := json.Marshal(cimdDoc(d.url))
			w.Header()["Content-Type"] = nil // no sniffing
			w.Write(b)
		}},
		{"larger than 16 KiB", serveDoc(func(doc map[string]any) { doc["x_padding"] = big })},
		{"larger than 16 KiB, no Content-Length", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			doc := cimdDoc(d.url)
			doc["x_padding"] = big
			b, _ := json.Marshal(doc)
			w.Header().Set("Content-Type", "application/json")
			w.(http.Flusher).Flush() // chunked
			for len(b) > 0 {
				n := min(len(b), 1000)
				w.Write(b[:n])
				b = b[n:]
			}
		}},
		{"not JSON", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"client_id": `)
		}},
		{"a JSON array", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			b, _ := json.Marshal([]any{cimdDoc(d.url)})
			w.Write(b)
		}},
		{"status 404", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(cimdDoc(d.url))
		}},
		{"redirect to a valid document", func(d *docServer, w http.ResponseWriter, r *http.Request) {
			if r.URL.RawQuery == "real=1" {
				serveDoc(nil)(d, w, r)
				return
			}
			http.Redirect(w, r, "/client.json?real=1", http.StatusFound)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDocServer(t, false, tt.serve)
			e := cimdEnv(t)
			_, challenge := pkce()
			r, body := authorizePage(t, e, authParams(d.url, loopbackRedir, challenge))
			wantErrorPage(t, "authorization", r, body)
			if d.requests.Load() == 0 {
				t.Error("the document was not fetched; the refusal was for another reason")
			}
			if strings.HasPrefix(tt.name, "redirect URI not the requested one") {
				return // the document itself is fine
			}
			st, m := e.Exchange(d.url, loopbackRedir, "no-code", strings.Repeat("v", 43))
			wantTokenError(t, "token request by the refused client", st, m, http.StatusUnauthorized, "invalid_client")
		})
	}
}

// TestCIMD_DocumentJustUnderSizeLimit is the control for the size case
// above: the same padding, kept under 16 KiB, is accepted.
func TestCIMD_DocumentJustUnderSizeLimit(t *testing.T) {
	d := newDocServer(t, false, func(d *docServer, w http.ResponseWriter, r *http.Request) {
		doc := cimdDoc(d.url)
		doc["x_padding"] = ""
		b, _ := json.Marshal(doc)
		doc["x_padding"] = strings.Repeat("x", 16<<10-len(b)) // exactly 16 KiB
		b, _ = json.Marshal(doc)
		if len(b) != 16<<10 {
			t.Errorf("document is %d bytes", len(b))
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	e := cimdEnv(t)
	if m := e.Tokens(d.url, loopbackRedir); str(m, "access_token") == "" {
		t.Fatalf("token response %v", m)
	}
}

func TestCIMD_ContentTypeVariantsAccepted(t *testing.T) {
	for _, ct := range []string{"application/json; charset=utf-8", "application/oauth-client-metadata+json", "Application/JSON"} {
		t.Run(ct, func(t *testing.T) {
			d := newDocServer(t, false, func(d *docServer, w http.ResponseWriter, r *http.Request) {
				b, _ := json.Marshal(cimdDoc(d.url))
				w.Header().Set("Content-Type", ct)
				w.Write(b)
			})
			e := cimdEnv(t)
			if m := e.Tokens(d.url, loopbackRedir); str(m, "access_token") == "" {
				t.Fatalf("token response %v", m)
			}
		})
	}
}

func TestCIMD_LoopbackDocumentNotFetchedWithoutOption(t *testing.T) {
	for _, tt := range []struct {
		name string
		tls  bool
		mod  func(*authserver.Config)
	}{
		{"http, option off", false, nil},
		{"https, option off", true, nil},
		{"http, metadata documents disabled", false, func(c *authserver.Config) {
			c.InsecureAllowLoopbackClientMetadata = true
			c.DisableClientIDMetadata = true
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDocServer(t, tt.tls, serveDoc(nil))
			e := newEnv(t, tt.mod)
			_, challenge := pkce()
			r, body := authorizePage(t, e, authParams(d.url, loopbackRedir, challenge))
			wantErrorPage(t, "authorization", r, body)
			st, m := e.Exchange(d.url, loopbackRedir, "no-code", strings.Repeat("v", 43))
			wantTokenError(t, "token request", st, m, http.StatusUnauthorized, "invalid_client")
			time.Sleep(50 * time.Millisecond) // let a stray connection show up
			if c, n := d.conns.Load(), d.requests.Load(); c != 0 || n != 0 {
				t.Fatalf("document server saw %d connections and %d requests, want none", c, n)
			}
		})
	}
}

// TestCIMD_NonDocumentURLsAreNotFetched: client_ids that are not https URLs
// with a path are plain (unknown) client ids, even with the loopback option.
func TestCIMD_NonDocumentURLsAreNotFetched(t *testing.T) {
	d := newDocServer(t, false, serveDoc(nil))
	e := cimdEnv(t)
	for _, id := range []string{
		d.ts.URL,       // no path
		d.ts.URL + "/", // root path
		strings.Replace(d.url, "http://", "http://user@", 1),
		d.url + "#frag",
		strings.Replace(d.url, "http://", "ftp://", 1),
	} {
		_, challenge := pkce()
		r, body := authorizePage(t, e, authParams(id, loopbackRedir, challenge))
		wantErrorPage(t, id, r, body)
	}
	time.Sleep(50 * time.Millisecond)
	if c := d.conns.Load(); c != 0 {
		t.Fatalf("document server saw %d connections, want none", c)
	}
}

func TestCIMD_CacheControl(t *testing.T) {
	for _, tt := range []struct {
		cacheControl string
		advance      time.Duration // between the two authorizations
		fetches      int64
	}{
		{"", time.Minute, 1},
		{"", 6 * time.Minute, 2}, // default lifetime is a few minutes
		{"no-store", 0, 2},
		{"no-cache", 0, 2},
		{"max-age=60", 59 * time.Second, 1},
		{"max-age=60", 61 * time.Second, 2},
		{"max-age=999999", 2 * time.Hour, 2}, // capped
	} {
		t.Run(tt.cacheControl+"/"+tt.advance.String(), func(t *testing.T) {
			d := newDocServer(t, false, func(d *docServer, w http.ResponseWriter, r *http.Request) {
				if tt.cacheControl != "" {
					w.Header().Set("Cache-Control", tt.cacheControl)
				}
				serveDoc(nil)(d, w, r)
			})
			clk := newClock()
			e := cimdEnv(t, func(c *authserver.Config) { c.Now = clk.Now })
			_, challenge := pkce()
			e.Code(d.url, loopbackRedir, challenge)
			clk.Advance(tt.advance)
			e.Code(d.url, loopbackRedir, challenge)
			if n := d.requests.Load(); n != tt.fetches {
				t.Errorf("document fetched %d times, want %d", n, tt.fetches)
			}
		})
	}
}

func TestCIMD_MetadataAdvertisesSupport(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*authserver.Config)
		want bool
	}{
		{"default", nil, true},
		{"disabled", func(c *authserver.Config) { c.DisableClientIDMetadata = true }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.mod)
			r, err := e.Client.Get(e.URL(oauth.WellKnownAuthServer))
			if err != nil {
				t.Fatal(err)
			}
			st, m := decode(t, r)
			if st != http.StatusOK {
				t.Fatalf("metadata: %d", st)
			}
			got, present := m["client_id_metadata_document_supported"]
			if tt.want && got != true {
				t.Errorf("client_id_metadata_document_supported = %v, want true", got)
			}
			if !tt.want && present && got != false {
				t.Errorf("client_id_metadata_document_supported = %v, want false or absent", got)
			}
		})
	}
}
