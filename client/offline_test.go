package client_test

// Refresh tokens from OpenID providers: offline_access is asked for with
// prompt=consent (OpenID Connect Core 1.0 §11), and a sign-in that gets no
// refresh token says so (docs/design.md#client-discovery).

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
)

// TestDiscovery_OfflineAccessWithConsentPrompt: against an authorization
// server that, like an OpenID provider, drops offline_access unless
// prompt=consent was sent, the default client gets a refresh token and
// refreshes silently at expiry; with OmitConsentPrompt it gets none, logs
// a warning (without token material) and emits EventNoRefreshToken.
func TestDiscovery_OfflineAccessWithConsentPrompt(t *testing.T) {
	openID := func(st *fixture.Stack) { st.Faults().OpenIDOfflineAccess(true) }
	t.Run("default", func(t *testing.T) {
		r := newRFRigWith(t, client.Config{}, openID)
		u := r.authz.last()
		if u == nil {
			t.Fatal("no authorization URL")
		}
		q := u.Query()
		if !slices.Contains(oauth.ParseScope(q.Get("scope")), oauth.ScopeOfflineAccess) || q.Get("prompt") != "consent" {
			t.Fatalf("authorization request scope %q prompt %q, want offline_access with prompt=consent", q.Get("scope"), q.Get("prompt"))
		}
		g, err := r.tr.Grant(t.Context(), r.st.URL)
		if err != nil || g == nil || g.RefreshToken == "" {
			t.Fatalf("grant after sign-in: want a refresh token (err %v)", err)
		}
		if n := r.events(client.EventNoRefreshToken); n != 0 {
			t.Errorf("%d no_refresh_token events, want 0", n)
		}
		// At expiry: one silent refresh, no second sign-in.
		r.clock.Advance(10*time.Minute + time.Second)
		if err := r.call(1); err != nil {
			t.Fatalf("call after expiry: %v", err)
		}
		if n := r.st.Refreshes(); n != 1 {
			t.Errorf("refreshes = %d, want 1", n)
		}
		if n := r.authz.calls.Load(); n != 1 {
			t.Errorf("interactive sign-ins = %d, want 1", n)
		}
	})
	t.Run("OmitConsentPrompt", func(t *testing.T) {
		var logs bytes.Buffer
		r := newRFRigWith(t, client.Config{OmitConsentPrompt: true,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))}, openID)
		if p := r.authz.last().Query().Get("prompt"); p != "" {
			t.Errorf("prompt = %q with OmitConsentPrompt, want none", p)
		}
		g, err := r.tr.Grant(t.Context(), r.st.URL)
		if err != nil || g == nil || g.AccessToken == "" || g.RefreshToken != "" {
			t.Fatalf("grant: want an access token and no refresh token (err %v)", err)
		}
		if n := r.events(client.EventNoRefreshToken); n != 1 {
			t.Errorf("%d no_refresh_token events, want 1", n)
		}
		text := logs.String()
		if !strings.Contains(text, "level=WARN") || !strings.Contains(text, "issued no refresh token although offline_access was asked for") {
			t.Errorf("no warning logged:\n%s", text)
		}
		if strings.Contains(text, g.AccessToken) {
			t.Errorf("the log holds the access token")
		}
	})
}
