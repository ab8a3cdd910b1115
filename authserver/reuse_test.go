package authserver_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
)

// liveRefreshTokens counts the refresh tokens introspection calls active.
func (e *env) liveRefreshTokens(tokens ...string) int {
	e.T.Helper()
	n := 0
	for _, tok := range tokens {
		if tok != "" && e.Active(tok) {
			n++
		}
	}
	return n
}

// A reuse inside the grace window does not fork the family: the successor
// the client never received is retired in favour of the new token, and
// presenting that retired successor revokes the grant, inside the window or
// after it.
func TestRefreshReuseGrace_RetiresTheSuccessor(t *testing.T) {
	const grace = 30 * time.Second
	for _, tt := range []struct {
		name  string
		after time.Duration // from the reuse to the presentation of the retired successor
	}{
		{"successor presented inside the window", 10 * time.Second},
		{"successor presented after the window", time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshReuseGrace = grace }))
			id := e.RegisterPublic(loopbackRedir)
			rt0 := str(e.Tokens(id, loopbackRedir), "refresh_token")
			st, second := e.Refresh(id, rt0) // rt0 -> rt1; the response is "lost"
			if st != http.StatusOK {
				t.Fatalf("refresh: %d %v", st, second)
			}
			rt1 := str(second, "refresh_token")
			clk.Advance(5 * time.Second)
			st, retry := e.Refresh(id, rt0) // the client retries with rt0
			if st != http.StatusOK {
				t.Fatalf("reuse inside the grace window: %d %v", st, retry)
			}
			rt2 := str(retry, "refresh_token")
			if e.Active(rt1) {
				t.Fatal("the successor is still live after a reuse inside the grace window: the family forked")
			}
			if n := e.liveRefreshTokens(rt0, rt1, rt2); n != 1 || !e.Active(rt2) {
				t.Fatalf("%d live refresh tokens, want exactly the new one", n)
			}
			// The new token works.
			st, third := e.Refresh(id, rt2)
			if st != http.StatusOK {
				t.Fatalf("refresh with the token issued for the reuse: %d %v", st, third)
			}
			rt3 := str(third, "refresh_token")

			// The retired successor is refused, and its presentation revokes
			// the family: someone received it while someone replayed rt0.
			clk.Advance(tt.after)
			st, m := e.Refresh(id, rt1)
			wantTokenError(t, "retired successor", st, m, http.StatusBadRequest, "invalid_grant")
			if e.Active(rt3) || e.Active(str(third, "access_token")) {
				t.Fatal("the family survived the presentation of a retired successor")
			}
			st, m = e.Refresh(id, rt3)
			wantTokenError(t, "refresh after the revocation", st, m, http.StatusBadRequest, "invalid_grant")
		})
	}
}

// A reuse inside the grace window after the successor was used (the family
// moved on) is theft, not a lost response: it revokes the grant.
func TestRefreshReuseGrace_AfterTheSuccessorWasUsed(t *testing.T) {
	clk := newClock()
	e := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshReuseGrace = 30 * time.Second }))
	id := e.RegisterPublic(loopbackRedir)
	rt0 := str(e.Tokens(id, loopbackRedir), "refresh_token")
	st, second := e.Refresh(id, rt0)
	if st != http.StatusOK {
		t.Fatalf("refresh: %d %v", st, second)
	}
	clk.Advance(time.Second)
	st, third := e.Refresh(id, str(second, "refresh_token"))
	if st != http.StatusOK {
		t.Fatalf("refresh with the successor: %d %v", st, third)
	}
	clk.Advance(time.Second)
	st, m := e.Refresh(id, rt0)
	wantTokenError(t, "reuse after the successor was used", st, m, http.StatusBadRequest, "invalid_grant")
	for _, k := range []string{"access_token", "refresh_token"} {
		if e.Active(str(third, k)) {
			t.Errorf("%s of the family survived the reuse", k)
		}
	}
	// A second retry inside the window, after an accepted one, finds the
	// successor already retired: also revoked.
	e2 := newEnv(t, withClock(clk, func(c *authserver.Config) { c.RefreshReuseGrace = 30 * time.Second }))
	id2 := e2.RegisterPublic(loopbackRedir)
	rt0 = str(e2.Tokens(id2, loopbackRedir), "refresh_token")
	if st, m := e2.Refresh(id2, rt0); st != http.StatusOK {
		t.Fatalf("refresh: %d %v", st, m)
	}
	st, retry := e2.Refresh(id2, rt0)
	if st != http.StatusOK {
		t.Fatalf("first reuse inside the window: %d %v", st, retry)
	}
	st, m = e2.Refresh(id2, rt0)
	wantTokenError(t, "second reuse inside the window", st, m, http.StatusBadRequest, "invalid_grant")
	if e2.Active(str(retry, "refresh_token")) {
		t.Error("the token of the first reuse survived the second")
	}
}

// Concurrent uses of one refresh token, with and without a grace window,
// leave at most one live refresh token for the grant.
func TestRefreshReuse_ConcurrentUsesKeepOneLiveToken(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Minute} {
		t.Run(grace.String(), func(t *testing.T) {
			e := newEnv(t, func(c *authserver.Config) { c.RefreshReuseGrace = grace })
			id := e.RegisterPublic(loopbackRedir)
			rt0 := str(e.Tokens(id, loopbackRedir), "refresh_token")
			const n = 8
			var wg sync.WaitGroup
			got := make([]string, n)
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					if st, m := e.Refresh(id, rt0); st == http.StatusOK {
						got[i] = str(m, "refresh_token")
					}
				})
			}
			close(start)
			wg.Wait()
			if live := e.liveRefreshTokens(got...); live > 1 {
				t.Fatalf("%d live refresh tokens after %d concurrent uses of one, want at most 1", live, n)
			}
		})
	}
}
