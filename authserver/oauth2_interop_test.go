package authserver_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/evergrant/evergrant/authserver"
)

// golang.org/x/oauth2, a client no one here wrote, completes code + PKCE and
// refresh against the server, for a confidential client using each of the
// two secret methods.
func TestInterop_GolangOAuth2(t *testing.T) {
	for _, style := range []struct {
		name   string
		id     string
		secret string
		style  oauth2.AuthStyle
	}{
		{"client_secret_basic", "x-basic", "x-basic-secret-0123456789", oauth2.AuthStyleInHeader},
		{"client_secret_post", postClientID, postSecret, oauth2.AuthStyleInParams},
		{"autodetect", "x-basic", "x-basic-secret-0123456789", oauth2.AuthStyleAutoDetect},
	} {
		t.Run(style.name, func(t *testing.T) {
			e := newEnv(t, func(c *authserver.Config) {
				c.Clients = append(c.Clients, authserver.ClientConfig{ID: "x-basic", Secret: "x-basic-secret-0123456789", RedirectURIs: []string{loopbackRedir}})
			})
			ctx := context.WithValue(context.Background(), oauth2.HTTPClient, e.Server.Client())
			conf := &oauth2.Config{
				ClientID: style.id, ClientSecret: style.secret, RedirectURL: loopbackRedir, Scopes: []string{"mcp:tools"},
				Endpoint: oauth2.Endpoint{AuthURL: e.URL(authserver.PathAuthorize), TokenURL: e.URL(authserver.PathToken), AuthStyle: style.style},
			}
			verifier := oauth2.GenerateVerifier()
			authURL := conf.AuthCodeURL("xyz", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("resource", testResource))
			r, err := e.Client.Get(authURL)
			if err != nil {
				t.Fatal(err)
			}
			r.Body.Close()
			q := redirectParams(t, r, loopbackRedir)
			if q.Get("state") != "xyz" {
				t.Fatalf("state %q", q.Get("state"))
			}
			tok, err := conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier), oauth2.SetAuthURLParam("resource", testResource))
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			if tok.RefreshToken == "" || tok.Expiry.IsZero() || tok.Type() != "Bearer" {
				t.Fatalf("token: type %q, refresh %v, expiry %v", tok.Type(), tok.RefreshToken != "", tok.Expiry)
			}
			if got := parseUnverified(t, tok.AccessToken)["aud"]; got != testResource {
				t.Fatalf("aud %v", got)
			}
			// Refresh through the TokenSource with an expired token.
			old := *tok
			tok.Expiry = time.Now().Add(-time.Minute)
			fresh, err := conf.TokenSource(ctx, tok).Token()
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if fresh.AccessToken == old.AccessToken || fresh.RefreshToken == old.RefreshToken || fresh.RefreshToken == "" {
				t.Fatal("refresh did not issue a new access token and rotate the refresh token")
			}
			if !e.Active(fresh.AccessToken) {
				t.Fatal("refreshed access token inactive")
			}
			// The rotated-out token is refused, as x/oauth2 reports it.
			tok.AccessToken = ""
			tok.RefreshToken = old.RefreshToken
			_, err = conf.TokenSource(ctx, tok).Token()
			var re *oauth2.RetrieveError
			if !asRetrieve(err, &re) || re.ErrorCode != "invalid_grant" || re.Response.StatusCode != http.StatusBadRequest {
				t.Fatalf("reuse of rotated refresh token: %v", err)
			}
		})
	}
}

func asRetrieve(err error, re **oauth2.RetrieveError) bool {
	return errors.As(err, re)
}
