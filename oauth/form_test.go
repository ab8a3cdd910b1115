package oauth_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

// An identifier and a secret with every character RFC 6749 §2.3.1's
// form-urlencoding changes: ':' (which would split a Basic credential), '%',
// '+', '&', '=' and spaces.
const (
	awkwardID     = "client:1 +%&="
	awkwardSecret = "s:e%cr+t &=x y"
)

// body reads req's body twice, through Body and through GetBody, and checks
// that both give the same form.
func body(t *testing.T, req *http.Request) url.Values {
	t.Helper()
	b, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatal(err)
	}
	if req.GetBody == nil {
		t.Fatal("GetBody is nil: the request cannot be sent again")
	}
	rc, err := req.GetBody()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := io.ReadAll(rc)
	if string(again) != string(b) {
		t.Errorf("GetBody gives %q, Body gave %q", again, b)
	}
	form, err := url.ParseQuery(string(b))
	if err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return form
}

func TestNewFormRequest(t *testing.T) {
	tests := []struct {
		name string
		auth oauth.ClientAuth
		// basicID and basicSecret are the decoded Basic credentials; empty
		// means no Authorization header.
		basicID, basicSecret string
		// form are the client authentication members of the body.
		form url.Values
	}{
		{"basic", oauth.ClientAuth{ID: awkwardID, Secret: awkwardSecret, Method: oauth.AuthMethodClientSecretBasic},
			awkwardID, awkwardSecret, url.Values{}},
		{"basic by default with a secret", oauth.ClientAuth{ID: awkwardID, Secret: awkwardSecret},
			awkwardID, awkwardSecret, url.Values{}},
		{"post", oauth.ClientAuth{ID: awkwardID, Secret: awkwardSecret, Method: oauth.AuthMethodClientSecretPost},
			"", "", url.Values{"client_id": {awkwardID}, "client_secret": {awkwardSecret}}},
		{"none", oauth.ClientAuth{ID: awkwardID, Method: oauth.AuthMethodNone},
			"", "", url.Values{"client_id": {awkwardID}}},
		{"none by default without a secret", oauth.ClientAuth{ID: awkwardID},
			"", "", url.Values{"client_id": {awkwardID}}},
		{"none sends no secret", oauth.ClientAuth{ID: awkwardID, Secret: awkwardSecret, Method: oauth.AuthMethodNone},
			"", "", url.Values{"client_id": {awkwardID}}},
		{"unsupported method is sent as none", oauth.ClientAuth{ID: awkwardID, Secret: awkwardSecret, Method: "private_key_jwt"},
			"", "", url.Values{"client_id": {awkwardID}}},
		{"no client", oauth.ClientAuth{}, "", "", url.Values{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := url.Values{"token": {"tok en+%"}, "token_type_hint": {"refresh_token"}}
			orig := url.Values{"token": {"tok en+%"}, "token_type_hint": {"refresh_token"}}
			req, err := oauth.NewFormRequest(context.Background(), "https://as.example.com/revoke", form, tt.auth)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(form, orig) {
				t.Errorf("the caller's form was modified: %v", form)
			}
			if req.Method != http.MethodPost || req.URL.String() != "https://as.example.com/revoke" {
				t.Errorf("request %s %s", req.Method, req.URL)
			}
			if got := req.Header.Get("Content-Type"); got != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type %q", got)
			}
			if got := req.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept %q", got)
			}
			user, pass, ok := req.BasicAuth()
			if tt.basicID == "" {
				if ok || req.Header.Get("Authorization") != "" {
					t.Errorf("Authorization %q, want none", req.Header.Get("Authorization"))
				}
			} else {
				if !ok {
					t.Fatalf("no Basic credentials (Authorization %q)", req.Header.Get("Authorization"))
				}
				// RFC 6749 §2.3.1: each part is form-urlencoded before the
				// Basic encoding.
				if user != url.QueryEscape(tt.basicID) || pass != url.QueryEscape(tt.basicSecret) {
					t.Errorf("Basic %q:%q, want the form-urlencoded %q:%q", user, pass, url.QueryEscape(tt.basicID), url.QueryEscape(tt.basicSecret))
				}
				id, err1 := url.QueryUnescape(user)
				secret, err2 := url.QueryUnescape(pass)
				if err1 != nil || err2 != nil || id != tt.basicID || secret != tt.basicSecret {
					t.Errorf("Basic decodes to %q:%q (%v %v), want %q:%q", id, secret, err1, err2, tt.basicID, tt.basicSecret)
				}
			}
			want := url.Values{"token": {"tok en+%"}, "token_type_hint": {"refresh_token"}}
			for k, v := range tt.form {
				want[k] = v
			}
			if got := body(t, req); !reflect.DeepEqual(got, want) {
				t.Errorf("body %v, want %v", got, want)
			}
			if req.Context() != context.Background() {
				t.Error("the request does not carry the given context")
			}
		})
	}
}

func TestClientAuth_MethodUsed(t *testing.T) {
	for _, c := range []struct {
		auth oauth.ClientAuth
		want string
	}{
		{oauth.ClientAuth{ID: "c", Secret: "s", Method: oauth.AuthMethodClientSecretBasic}, oauth.AuthMethodClientSecretBasic},
		{oauth.ClientAuth{ID: "c", Secret: "s", Method: oauth.AuthMethodClientSecretPost}, oauth.AuthMethodClientSecretPost},
		{oauth.ClientAuth{ID: "c", Secret: "s", Method: oauth.AuthMethodNone}, oauth.AuthMethodNone},
		{oauth.ClientAuth{ID: "c", Secret: "s"}, oauth.AuthMethodClientSecretBasic},
		{oauth.ClientAuth{ID: "c"}, oauth.AuthMethodNone},
		{oauth.ClientAuth{ID: "c", Secret: "s", Method: "private_key_jwt"}, oauth.AuthMethodNone},
	} {
		if got := c.auth.MethodUsed(); got != c.want {
			t.Errorf("MethodUsed() of method %q with secret %v = %q, want %q", c.auth.Method, c.auth.Secret != "", got, c.want)
		}
	}
}

func TestNewFormRequest_NilFormAndBadEndpoint(t *testing.T) {
	req, err := oauth.NewFormRequest(context.Background(), "https://as.example.com/token", nil, oauth.ClientAuth{ID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if got := body(t, req); !reflect.DeepEqual(got, url.Values{"client_id": {"c"}}) {
		t.Errorf("body %v", got)
	}
	if _, err := oauth.NewFormRequest(context.Background(), "https://as.example.com/%zz", nil, oauth.ClientAuth{}); err == nil {
		t.Error("no error for an unparsable endpoint")
	}
}

// Against evergrant's authorization server, which decodes the credentials
// as RFC 6749 §2.3.1 says: a client with an awkward identifier and secret
// authenticates with each method its registration names, and a wrong
// secret is refused. The revocation endpoint answers 200 to any token from
// an authenticated client (RFC 7009 §2.2), and 401 invalid_client otherwise.
func TestNewFormRequest_AuthServerAcceptsEachMethod(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	issuer := "http://" + ts.Listener.Addr().String()
	as, err := authserver.New(authserver.Config{
		Issuer: issuer,
		Clients: []authserver.ClientConfig{
			{ID: awkwardID + "basic", Secret: awkwardSecret, AuthMethod: oauth.AuthMethodClientSecretBasic, RedirectURIs: []string{"http://127.0.0.1/cb"}},
			{ID: awkwardID + "post", Secret: awkwardSecret, AuthMethod: oauth.AuthMethodClientSecretPost, RedirectURIs: []string{"http://127.0.0.1/cb"}},
			{ID: awkwardID + "none", RedirectURIs: []string{"http://127.0.0.1/cb"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = as
	ts.Start()
	defer ts.Close()

	for _, c := range []struct {
		name string
		auth oauth.ClientAuth
		want int
	}{
		{"basic", oauth.ClientAuth{ID: awkwardID + "basic", Secret: awkwardSecret, Method: oauth.AuthMethodClientSecretBasic}, http.StatusOK},
		{"basic by default", oauth.ClientAuth{ID: awkwardID + "basic", Secret: awkwardSecret}, http.StatusOK},
		{"post", oauth.ClientAuth{ID: awkwardID + "post", Secret: awkwardSecret, Method: oauth.AuthMethodClientSecretPost}, http.StatusOK},
		{"none", oauth.ClientAuth{ID: awkwardID + "none"}, http.StatusOK},
		{"basic, wrong secret", oauth.ClientAuth{ID: awkwardID + "basic", Secret: awkwardSecret + "!"}, http.StatusUnauthorized},
		{"post, wrong secret", oauth.ClientAuth{ID: awkwardID + "post", Secret: "x", Method: oauth.AuthMethodClientSecretPost}, http.StatusUnauthorized},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := oauth.NewFormRequest(context.Background(), issuer+authserver.PathRevoke, url.Values{"token": {"unknown"}}, c.auth)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("status %d (%s), want %d", resp.StatusCode, b, c.want)
			}
		})
	}
}
