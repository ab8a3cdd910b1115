package authserver_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/testclock"
)

// newClock returns a clock the test moves by hand, standing at a fixed
// time so that the tests' times do not depend on when they run.
func newClock() *testclock.Clock {
	return testclock.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// withClock returns a newEnv modifier that installs c and then applies mods.
func withClock(c *testclock.Clock, mods ...func(*authserver.Config)) func(*authserver.Config) {
	return func(cfg *authserver.Config) {
		cfg.Now = c.Now
		for _, m := range mods {
			m(cfg)
		}
	}
}

// jwtPayload decodes the claims of a JWT without verifying it (the core
// tests verify signatures).
func jwtPayload(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("access token has %d parts, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	return m
}

// num returns a JSON number member, or 0.
func num(m map[string]any, k string) float64 {
	f, _ := m[k].(float64)
	return f
}

func TestSetAccessTokenTTL(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	e.AS.SetAccessTokenTTL(2 * time.Second)
	m := e.Tokens(id, loopbackRedir)
	if got := m["expires_in"]; got != float64(2) {
		t.Errorf("expires_in = %v, want 2", got)
	}
	claims := jwtPayload(t, str(m, "access_token"))
	exp, iat := num(claims, "exp"), num(claims, "iat")
	// exp is rounded up from the exact issue time, iat down.
	if iat == 0 || exp < iat+2 || exp > iat+3 {
		t.Errorf("JWT exp = %v, iat = %v; want exp = iat+2 (or +3 when rounded up)", exp, iat)
	}
	if got := e.Introspect(str(m, "access_token"))["exp"]; got != exp {
		t.Errorf("introspection exp = %v, want %v", got, exp)
	}

	// Refreshed tokens get the override too; zero restores the default.
	st, m := e.Refresh(id, str(m, "refresh_token"))
	if st != http.StatusOK || m["expires_in"] != float64(2) {
		t.Fatalf("refresh under the override: %d %v", st, m)
	}
	e.AS.SetAccessTokenTTL(0)
	st, m = e.Refresh(id, str(m, "refresh_token"))
	if want := float64(authserver.DefaultAccessTokenTTL / time.Second); st != http.StatusOK || m["expires_in"] != want {
		t.Fatalf("refresh after SetAccessTokenTTL(0): %d expires_in=%v, want %v", st, m["expires_in"], want)
	}
}

func TestSetAccessTokenTTL_ShortTokenExpires(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	id := e.RegisterPublic(loopbackRedir)
	e.AS.SetAccessTokenTTL(2 * time.Second)
	at := str(e.Tokens(id, loopbackRedir), "access_token")
	clk.Advance(time.Second)
	if !e.Active(at) {
		t.Fatal("access token inactive after 1s of 2s")
	}
	clk.Advance(1500 * time.Millisecond)
	if e.Active(at) {
		t.Fatal("access token still active after 2.5s of 2s")
	}
}

func TestRevokeGrants_KillsRefreshAndAccessTokens(t *testing.T) {
	e := newEnv(t, nil)
	id := e.RegisterPublic(loopbackRedir)
	first := e.Tokens(id, loopbackRedir)
	st, second := e.Refresh(id, str(first, "refresh_token"))
	if st != http.StatusOK {
		t.Fatalf("refresh: %d %v", st, second)
	}
	other := e.Tokens(id, loopbackRedir) // a second grant of the same client

	n, err := e.AS.RevokeGrants(context.Background(), authserver.GrantFilter{ClientID: id})
	if err != nil || n != 2 {
		t.Fatalf("RevokeGrants = %d, %v; want 2 grants", n, err)
	}
	for _, m := range []map[string]any{second, other} {
		st, r := e.Refresh(id, str(m, "refresh_token"))
		wantTokenError(t, "refresh after RevokeGrants", st, r, http.StatusBadRequest, "invalid_grant")
	}
	for name, tok := range map[string]string{
		"first access token":   str(first, "access_token"),
		"second access token":  str(second, "access_token"),
		"second refresh token": str(second, "refresh_token"),
		"other access token":   str(other, "access_token"),
		"other refresh token":  str(other, "refresh_token"),
	} {
		if e.Active(tok) {
			t.Errorf("%s is still active after RevokeGrants", name)
		}
	}
	if n, err := e.AS.RevokeGrants(context.Background(), authserver.GrantFilter{ClientID: id}); err != nil || n != 0 {
		t.Errorf("second RevokeGrants = %d, %v; want 0 (already revoked)", n, err)
	}
}

func TestRefreshReuseGrace(t *testing.T) {
	const grace = 30 * time.Second
	for _, tt := range []struct {
		after   time.Duration // from the rotation to the reuse
		revokes bool
	}{
		{10 * time.Second, false},
		{grace, false},
		{31 * time.Second, true},
	} {
		t.Run(tt.after.String(), func(t *testing.T) {
			clk := newClock()
			e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshReuseGrace = grace }))
			id := e.RegisterPublic(loopbackRedir)
			first := e.Tokens(id, loopbackRedir)
			rt0 := str(first, "refresh_token")
			clk.Advance(5 * time.Second)
			st, second := e.Refresh(id, rt0) // rotates rt0
			if st != http.StatusOK {
				t.Fatalf("refresh: %d %v", st, second)
			}
			if e.Active(rt0) {
				t.Fatal("the rotated refresh token is still active by introspection")
			}

			clk.Advance(tt.after)
			st, reuse := e.Refresh(id, rt0)
			family := []string{str(first, "access_token"), str(second, "access_token"), str(second, "refresh_token")}
			if !tt.revokes {
				if st != http.StatusOK || str(reuse, "access_token") == "" {
					t.Fatalf("reuse %v after rotation (grace %v): %d %v, want success", tt.after, grace, st, reuse)
				}
				// The access tokens stay good; of the refresh tokens only the
				// new one is live: the successor the client never received
				// is retired, so the grant has one live refresh token.
				family = []string{str(first, "access_token"), str(second, "access_token"), str(reuse, "access_token"), str(reuse, "refresh_token")}
				for i, tok := range family {
					if !e.Active(tok) {
						t.Errorf("token #%d of the family is inactive after a reuse inside the grace window", i)
					}
				}
				if e.Active(str(second, "refresh_token")) {
					t.Error("the successor refresh token is still active after a reuse inside the grace window")
				}
				if st, m := e.Refresh(id, str(reuse, "refresh_token")); st != http.StatusOK {
					t.Errorf("the refresh token issued for the reuse failed: %d %v", st, m)
				}
				return
			}
			wantTokenError(t, "reuse after the grace window", st, reuse, http.StatusBadRequest, "invalid_grant")
			for i, tok := range family {
				if e.Active(tok) {
					t.Errorf("token #%d of the family is still active after a reuse outside the grace window", i)
				}
			}
			if st, m := e.Refresh(id, str(second, "refresh_token")); st != http.StatusBadRequest || str(m, "error") != "invalid_grant" {
				t.Errorf("successor refresh token after the family was revoked: %d %v, want invalid_grant", st, m)
			}
		})
	}
}

// TestRefreshReuseGrace_InsideWindowThenOutside reuses the same rotated
// token twice: once inside the window (accepted), once after it (revokes
// everything, including what the accepted reuse issued).
func TestRefreshReuseGrace_InsideWindowThenOutside(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshReuseGrace = 30 * time.Second }))
	id := e.RegisterPublic(loopbackRedir)
	rt0 := str(e.Tokens(id, loopbackRedir), "refresh_token")
	if st, m := e.Refresh(id, rt0); st != http.StatusOK {
		t.Fatalf("refresh: %d %v", st, m)
	}
	clk.Advance(10 * time.Second)
	st, inside := e.Refresh(id, rt0)
	if st != http.StatusOK {
		t.Fatalf("reuse at 10s: %d %v", st, inside)
	}
	clk.Advance(21 * time.Second) // 31s after the rotation
	st, m := e.Refresh(id, rt0)
	wantTokenError(t, "reuse at 31s", st, m, http.StatusBadRequest, "invalid_grant")
	for _, k := range []string{"access_token", "refresh_token"} {
		if e.Active(str(inside, k)) {
			t.Errorf("%s issued by the in-window reuse survived the revocation", k)
		}
	}
}

func TestRefreshReuseGrace_DefaultOff(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk))
	id := e.RegisterPublic(loopbackRedir)
	rt0 := str(e.Tokens(id, loopbackRedir), "refresh_token")
	st, next := e.Refresh(id, rt0)
	if st != http.StatusOK {
		t.Fatalf("refresh: %d %v", st, next)
	}
	// Same instant: without a grace window even an immediate reuse is theft.
	st, m := e.Refresh(id, rt0)
	wantTokenError(t, "immediate reuse without grace", st, m, http.StatusBadRequest, "invalid_grant")
	if e.Active(str(next, "refresh_token")) || e.Active(str(next, "access_token")) {
		t.Fatal("tokens of the family still active after an immediate reuse without grace")
	}
}

func TestLifetimes_AccessAndRefreshTokenTTL(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk, func(c *authserver.Config) {
		c.AccessTokenTTL = time.Minute
		c.RefreshTokenTTL = 10 * time.Minute
	}))
	id := e.RegisterPublic(loopbackRedir)
	m := e.Tokens(id, loopbackRedir)
	at, rt := str(m, "access_token"), str(m, "refresh_token")
	if m["expires_in"] != float64(60) {
		t.Errorf("expires_in = %v, want 60", m["expires_in"])
	}
	claims := jwtPayload(t, at)
	if exp, iat := num(claims, "exp"), num(claims, "iat"); exp != iat+60 || int64(iat) != clk.Now().Unix() {
		t.Errorf("JWT iat = %v, exp = %v; want iat = %d (the server clock) and exp = iat+60", iat, exp, clk.Now().Unix())
	}
	if exp := e.Introspect(rt)["exp"]; exp != float64(clk.Now().Add(10*time.Minute).Unix()) {
		t.Errorf("refresh token introspection exp = %v, want now+10m", exp)
	}

	clk.Advance(59 * time.Second)
	if !e.Active(at) {
		t.Error("access token inactive before its lifetime ended")
	}
	clk.Advance(2 * time.Second)
	if e.Active(at) {
		t.Error("access token still active after AccessTokenTTL")
	}
	if !e.Active(rt) {
		t.Fatal("refresh token inactive before RefreshTokenTTL")
	}

	clk.Advance(10 * time.Minute) // 11m01s after issuance
	if e.Active(rt) {
		t.Error("refresh token still active by introspection after RefreshTokenTTL")
	}
	st, r := e.Refresh(id, rt)
	wantTokenError(t, "refresh with an expired refresh token", st, r, http.StatusBadRequest, "invalid_grant")
}

func TestLifetimes_RefreshTokenJustBeforeExpiry(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshTokenTTL = 10 * time.Minute }))
	id := e.RegisterPublic(loopbackRedir)
	rt := str(e.Tokens(id, loopbackRedir), "refresh_token")
	clk.Advance(10*time.Minute - time.Second)
	if st, m := e.Refresh(id, rt); st != http.StatusOK {
		t.Fatalf("refresh 1s before expiry: %d %v", st, m)
	}
}

func TestLifetimes_AuthorizationCodeExpires(t *testing.T) {
	for _, tt := range []struct {
		name  string
		ttl   time.Duration // Config.CodeTTL; 0 is the default
		after time.Duration
		ok    bool
	}{
		{"default/59s", 0, 59 * time.Second, true},
		{"default/61s", 0, authserver.DefaultCodeTTL + time.Second, false},
		{"10s/9s", 10 * time.Second, 9 * time.Second, true},
		{"10s/11s", 10 * time.Second, 11 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.CodeTTL = tt.ttl }))
			id := e.RegisterPublic(loopbackRedir)
			v, c := pkce()
			code := e.Code(id, loopbackRedir, c)
			clk.Advance(tt.after)
			st, m := e.Exchange(id, loopbackRedir, code, v)
			if tt.ok {
				if st != http.StatusOK {
					t.Fatalf("exchange %v after issuance: %d %v", tt.after, st, m)
				}
				return
			}
			wantTokenError(t, "expired code", st, m, http.StatusBadRequest, "invalid_grant")
		})
	}
}

// A sub-second lifetime is rounded up to whole seconds everywhere, so the
// token is never expired when issued and exp agrees with expires_in.
func TestLifetimes_SubSecondRoundsUp(t *testing.T) {
	e := newEnv(t, func(c *authserver.Config) { c.AccessTokenTTL = 300 * time.Millisecond })
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	claims := parseUnverified(t, str(tok, "access_token"))
	exp, iat := claims["exp"].(float64), claims["iat"].(float64)
	if tok["expires_in"] != float64(1) || exp-iat < 1 || exp-iat > 2 {
		t.Fatalf("expires_in %v, exp-iat %v; want 1 and 1 or 2 (exp rounded up)", tok["expires_in"], exp-iat)
	}
	if !e.Active(str(tok, "access_token")) {
		t.Fatal("freshly issued token inactive")
	}
}
