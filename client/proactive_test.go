package client_test

// Proactive refresh (docs/design.md#client-rule-8): a token about to
// expire is refreshed before it is sent, so a healthy session sees no 401;
// while it is still valid the refresh runs in the background, and after an
// unavailable answer it backs off; expiry is absolute and survives
// restarts. The tests move a testclock.Clock, shared with the
// authorization server where the server must agree that a token expired.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/store"
)

// prEvents records refresh events.
type prEvents struct {
	mu  sync.Mutex
	evs []client.RefreshEvent
}

func (e *prEvents) add(ev client.RefreshEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev)
}

func (e *prEvents) list() []client.RefreshEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]client.RefreshEvent(nil), e.evs...)
}

// prDistinctTokens counts the distinct tokens the resource server saw.
func prDistinctTokens(st *fixture.Stack) int {
	seen := map[string]bool{}
	for _, r := range st.Requests() {
		seen[r.Token] = true
	}
	return len(seen)
}

// TestRule8_ProactiveRefreshSessionSeesNo401 runs a 20-request session over
// more than three lifetimes of 1s access tokens, on a clock the Transport
// shares with the authorization server, each request 160ms after the
// previous one has finished, its background refresh included
// (docs/design.md#client-rule-8). (It relies on the server keeping a token
// for the whole expires_in; see TestRule8_FixtureTokenLivesForExpiresIn.)
func TestRule8_ProactiveRefreshSessionSeesNo401(t *testing.T) {
	const (
		ttl     = time.Second
		margin  = 500 * time.Millisecond
		n       = 20
		spacing = 160 * time.Millisecond // 19 × 160ms > 3 × ttl
	)
	clock := testclock.New(time.Now())
	var evs prEvents
	st, tr := ccAuthorize(t, fixture.Options{
		AccessTokenTTL: ttl,
		AuthServer:     func(c *authserver.Config) { c.Now = clock.Now },
	}, client.Config{
		Now:           clock.Now,
		RefreshMargin: margin,
		OnRefresh:     evs.add,
	})
	hc := &http.Client{Transport: tr}
	start := clock.Now()
	for i := range n {
		if i > 0 {
			// A token still valid went out while the refresh it started
			// runs in the background: let it finish before time moves on.
			if err := tr.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
			clock.Advance(spacing)
		}
		resp, data, err := ccPost(t.Context(), hc, st.URL, i)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if err := ccCheckEcho(resp, data, i); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if elapsed := clock.Now().Sub(start); elapsed < 3*ttl {
		t.Fatalf("test setup: the session lasted %v, less than three token lifetimes", elapsed)
	}
	// A token still valid goes out while the refresh it started runs in
	// the background: let the last one finish before counting.
	if err := tr.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := st.Unauthorized(); got != 0 {
		t.Errorf("the resource server answered 401 %d times, want 0", got)
	}
	list := evs.list()
	if len(list) < 3 {
		t.Errorf("%d refreshes, want at least 3 over three token lifetimes", len(list))
	}
	for i, ev := range list {
		if !ev.Proactive || ev.Outcome != "ok" {
			t.Errorf("refresh %d = %+v, want a proactive refresh with outcome ok", i, ev)
		}
	}
	if got := st.Refreshes(); got != len(list) {
		t.Errorf("refresh grants at the token endpoint = %d, OnRefresh events = %d", got, len(list))
	}
	// One token per refresh plus the first, less the token of a refresh
	// the last request started (no request came after it).
	want := len(list) + 1
	if cur := ccAccessToken(t, tr, st); !slices.ContainsFunc(st.Requests(), func(r fixture.Request) bool { return r.Token == cur }) {
		want--
	}
	if got := prDistinctTokens(st); got != want {
		t.Errorf("the resource server saw %d distinct tokens, want %d (one per refresh plus the first)", got, want)
	}
	if s := tr.Stats(); s.Unauthorized != 0 || s.Retries != 0 || int(s.Refreshes) != len(list) {
		t.Errorf("Stats = %+v, want no 401, no retry, %d refreshes", s, len(list))
	}
}

// TestRule8_ProactiveRefreshWithDefaultMargin runs a session over four
// lifetimes of 10-minute tokens with the default margin, on a clock the
// Transport shares with the authorization server
// (docs/design.md#client-rule-8).
func TestRule8_ProactiveRefreshWithDefaultMargin(t *testing.T) {
	clock := testclock.New(time.Now())
	start := clock.Now()
	var evs prEvents
	st, tr := ccAuthorize(t, fixture.Options{
		AccessTokenTTL: 10 * time.Minute,
		AuthServer:     func(c *authserver.Config) { c.Now = clock.Now },
	}, client.Config{Now: clock.Now, OnRefresh: evs.add})
	hc := &http.Client{Transport: tr}
	for i := range 20 {
		if i > 0 {
			clock.Advance(2 * time.Minute)
		}
		resp, data, err := ccPost(t.Context(), hc, st.URL, i)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if err := ccCheckEcho(resp, data, i); err != nil {
			t.Fatalf("request %d at +%v: %v", i, clock.Now().Sub(start), err)
		}
	}
	if got := st.Unauthorized(); got != 0 {
		t.Errorf("the resource server answered 401 %d times, want 0", got)
	}
	list := evs.list()
	// 38 minutes over 10-minute tokens refreshed at least a minute early:
	// a refresh every fifth request.
	if len(list) != 3 {
		t.Errorf("%d refreshes, want 3", len(list))
	}
	for i, ev := range list {
		if !ev.Proactive || ev.Outcome != "ok" {
			t.Errorf("refresh %d = %+v, want a proactive refresh with outcome ok", i, ev)
		}
	}
	if got := st.Refreshes(); got != len(list) {
		t.Errorf("refresh grants at the token endpoint = %d, OnRefresh events = %d", got, len(list))
	}
}

// TestRule8_ProactiveRefreshInBackgroundWithBackoff: a request whose token
// is still valid does not wait for the proactive refresh it starts; after
// an unavailable answer (docs/design.md#client-rule-4) no proactive refresh
// starts during a backoff that doubles (docs/design.md#client-rule-8).
func TestRule8_ProactiveRefreshInBackgroundWithBackoff(t *testing.T) {
	clock := testclock.New(time.Now())
	gate := newTokenGate(t)
	events := make(chan client.RefreshEvent, 16)
	st, tr := ccAuthorize(t, fixture.Options{AccessTokenTTL: 10 * time.Minute}, client.Config{
		Base: gate, Now: clock.Now, OnRefresh: func(ev client.RefreshEvent) { events <- ev },
	})
	t.Cleanup(func() { gate.release(); tr.Wait(context.Background()) })
	hc := &http.Client{Transport: tr}
	st.Faults().FailTokenEndpoint(http.StatusServiceUnavailable)
	gate.armed.Store(true)
	post := func(id int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), hdBound)
		defer cancel()
		resp, data, err := ccPost(ctx, hc, st.URL, id)
		if err != nil {
			t.Fatalf("request %d: %v (did it wait for the proactive refresh?)", id, err)
		}
		if err := ccCheckEcho(resp, data, id); err != nil {
			t.Fatalf("request %d: %v", id, err)
		}
	}
	refresh := func(outcome client.Outcome) {
		t.Helper()
		if ev := hdRecv(t, events, "the proactive refresh"); !ev.Proactive || ev.Outcome != outcome {
			t.Fatalf("refresh event %+v, want a proactive refresh with outcome %s", ev, outcome)
		}
	}
	hits := func(want int32) {
		t.Helper()
		if n := gate.hits.Load(); n != want {
			t.Fatalf("token endpoint requests = %d, want %d", n, want)
		}
	}

	// 45s before expiry, inside the margin; the token endpoint hangs.
	clock.Advance(10*time.Minute - 45*time.Second)
	post(1) // completes while the refresh is held
	// The refresh runs in the background: wait until it reaches the
	// token endpoint.
	select {
	case <-gate.hit:
	case <-time.After(hdBound):
		t.Fatal("no proactive refresh reached the token endpoint")
	}
	hits(1)
	gate.release()
	refresh("unavailable")
	post(2) // within the 5s backoff: no refresh
	hits(1)
	clock.Advance(6 * time.Second)
	post(3) // backoff over: a refresh, unavailable again
	refresh("unavailable")
	hits(2)
	clock.Advance(6 * time.Second)
	post(4) // within the doubled, 10s backoff
	hits(2)
	clock.Advance(5 * time.Second)
	post(5)
	refresh("unavailable")
	hits(3)
	// Healthy again, after the 20s backoff and still before expiry.
	st.Faults().FailTokenEndpoint(0)
	clock.Advance(21 * time.Second)
	post(6)
	refresh("ok")
	hits(4)
	before := len(st.Requests())
	post(7)
	if reqs := st.Requests(); reqs[before].Token != ccAccessToken(t, tr, st) {
		t.Error("the request after the refresh did not carry the refreshed token")
	}
	if s := tr.Stats(); s.Unauthorized != 0 || s.NeedsReauth != 0 {
		t.Errorf("Stats = %+v, want no 401 and no needs-reauth", s)
	}
}

// TestRule8_ExpirySurvivesRestart: a grant saved by one Transport is
// refreshed ahead of its expiry by the next one, started on a clock past
// its expiry margin (in the background: the token is still valid)
// (docs/design.md#client-rule-8).
func TestRule8_ExpirySurvivesRestart(t *testing.T) {
	const ttl = time.Hour
	dir := t.TempDir()
	fs1, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	st, tr1 := ccAuthorize(t, fixture.Options{AccessTokenTTL: ttl}, client.Config{Store: fs1})
	g1, err := tr1.Grant(t.Context(), st.URL)
	if err != nil || g1 == nil {
		t.Fatalf("Grant: %v %v", g1, err)
	}
	if g1.Expiry.Before(before.Add(ttl)) || g1.Expiry.After(time.Now().Add(ttl+time.Second)) {
		t.Fatalf("stored expiry %v is not the absolute time the token expires (issued between %v and now, for %v)", g1.Expiry, before, ttl)
	}
	tr1 = nil // the process ends

	// The next process starts 59m30s later.
	later := testclock.New(time.Now().Add(ttl - 30*time.Second))
	fs2, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := client.ServerKey(st.URL)
	reloaded, err := fs2.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !reloaded.Expiry.Equal(g1.Expiry) {
		t.Fatalf("expiry after reopening the store = %v, want %v", reloaded.Expiry, g1.Expiry)
	}
	var evs prEvents
	tr2 := client.NewTransport(client.Config{Store: fs2, Now: later.Now, OnRefresh: evs.add})
	hc := &http.Client{Transport: tr2}
	for i := range 2 {
		resp, data, err := ccPost(t.Context(), hc, st.URL, i)
		if err != nil {
			t.Fatal(err)
		}
		if err := ccCheckEcho(resp, data, i); err != nil {
			t.Fatal(err)
		}
		// The token, still valid for 30s, went out while the refresh it
		// started runs in the background; let it finish.
		if err := tr2.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if got := st.Unauthorized(); got != 0 {
		t.Errorf("401s = %d, want 0", got)
	}
	if list := evs.list(); len(list) != 1 || !list[0].Proactive || list[0].Outcome != "ok" {
		t.Errorf("refresh events = %+v, want one proactive refresh", list)
	}
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refresh grants = %d, want 1", got)
	}
	reqs := st.Requests()
	g2, err := fs2.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	// The first request carried the saved token (still valid: it did not
	// wait for the refresh it started); the next one the refreshed token.
	if len(reqs) != 2 {
		t.Fatalf("%d requests reached the server, want 2", len(reqs))
	}
	if reqs[0].Token != g1.AccessToken {
		t.Errorf("request 0 carried token %s, want the saved %s", fixture.TokenHash(reqs[0].Token), fixture.TokenHash(g1.AccessToken))
	}
	if g2.AccessToken == g1.AccessToken || reqs[1].Token != g2.AccessToken {
		t.Errorf("request 1 carried token %s, want the refreshed %s", fixture.TokenHash(reqs[1].Token), fixture.TokenHash(g2.AccessToken))
	}
	if d := g2.Expiry.Sub(later.Now()); d < ttl-time.Minute || d > ttl+time.Minute {
		t.Errorf("refreshed expiry is %v after the new process's clock, want about %v", d, ttl)
	}
}

// TestRule8_NegativeMarginDisablesProactiveRefresh: with a negative margin
// a token is sent until the server rejects it, then refreshed after the 401
// (docs/design.md#client-rule-8).
func TestRule8_NegativeMarginDisablesProactiveRefresh(t *testing.T) {
	clock := testclock.New(time.Now())
	var evs prEvents
	st, tr := ccAuthorize(t, fixture.Options{
		AccessTokenTTL: 10 * time.Minute,
		AuthServer:     func(c *authserver.Config) { c.Now = clock.Now },
	}, client.Config{Now: clock.Now, RefreshMargin: -1, OnRefresh: evs.add})
	hc := &http.Client{Transport: tr}
	clock.Advance(10*time.Minute - 10*time.Second)
	resp, data, err := ccPost(t.Context(), hc, st.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 1); err != nil {
		t.Fatal(err)
	}
	if got := st.Refreshes(); got != 0 {
		t.Fatalf("refreshes 10s before expiry with proactive refresh disabled = %d, want 0", got)
	}
	clock.Advance(20 * time.Second)
	resp, data, err = ccPost(t.Context(), hc, st.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 2); err != nil {
		t.Fatal(err)
	}
	if st.Refreshes() != 1 || st.Unauthorized() != 1 {
		t.Errorf("after expiry: %d refreshes, %d 401s; want 1 and 1", st.Refreshes(), st.Unauthorized())
	}
	if list := evs.list(); len(list) != 1 || list[0].Proactive {
		t.Errorf("refresh events = %+v, want one refresh after a 401", list)
	}
}

// prCloseBody records whether it was closed.
type prCloseBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *prCloseBody) Close() error { b.closed.Store(true); return nil }

// TestRule8_CallerCancelDuringProactiveRefreshClosesBody: when the caller
// gives up while a proactive refresh is in flight, RoundTrip returns the
// context's error and, as http.RoundTripper requires, closes the request
// body; the refresh itself completes (docs/design.md#client-rule-8).
func TestRule8_CallerCancelDuringProactiveRefreshClosesBody(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	clock := testclock.New(time.Now())
	base, armed, release := ccCancelAtRefresh(t, cancel)
	refreshed := make(chan client.RefreshEvent, 2)
	st, tr := ccAuthorize(t, fixture.Options{AccessTokenTTL: 10 * time.Minute}, client.Config{
		Base: base, Now: clock.Now, OnRefresh: func(ev client.RefreshEvent) { refreshed <- ev },
	})
	clock.Advance(10 * time.Minute)
	armed.Store(true)

	payload := []byte(ccBody(1))
	body := &prCloseBody{Reader: bytes.NewReader(payload)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, st.URL, body)
	if err != nil {
		t.Fatal(err)
	}
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(payload)), nil }
	req.ContentLength = int64(len(payload))
	resp, err := tr.RoundTrip(req)
	release()
	if resp != nil {
		resp.Body.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RoundTrip = %v, want context.Canceled", err)
	}
	select {
	case ev := <-refreshed:
		if !ev.Proactive || ev.Outcome != "ok" {
			t.Errorf("refresh event = %+v, want a proactive refresh with outcome ok", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the proactive refresh did not complete after the caller cancelled")
	}
	if len(st.Requests()) != 0 {
		t.Errorf("the cancelled request reached the server")
	}
	if !body.closed.Load() {
		t.Errorf("RoundTrip returned an error without closing the request body (http.RoundTripper: \"RoundTrip must always close the body, including on errors\")")
	}
}

// TestRule8_FixtureTokenLivesForExpiresIn checks the fixture's
// authorization server against the assumption
// docs/design.md#client-rule-8 rests on: an access token answered with
// expires_in=N is good for N seconds from the answer (RFC 6749 §5.1). The
// server and the Transport share a clock that stands 900ms into a second
// when the token is issued; proactive refresh is off, so a 401 means the
// server dropped the token early.
func TestRule8_FixtureTokenLivesForExpiresIn(t *testing.T) {
	base := time.Unix(2_000_000_000, 900_000_000)
	clock := testclock.New(base)
	st, tr := ccAuthorize(t, fixture.Options{
		AccessTokenTTL: 10 * time.Second,
		AuthServer:     func(c *authserver.Config) { c.Now = clock.Now },
	}, client.Config{Now: clock.Now, RefreshMargin: -1})
	g, err := tr.Grant(t.Context(), st.URL)
	if err != nil || g == nil {
		t.Fatalf("Grant: %v %v", g, err)
	}
	if want := base.Add(10 * time.Second); !g.Expiry.Equal(want) {
		t.Fatalf("client-side expiry %v, want %v (expires_in 10)", g.Expiry, want)
	}
	// 9.5s later: half a second left by expires_in.
	clock.Set(base.Add(9500 * time.Millisecond))
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 1); err != nil {
		t.Fatal(err)
	}
	if got := st.Unauthorized(); got != 0 {
		t.Errorf("a token issued with expires_in=10 was refused 9.5s later (%d 401s): "+
			"the authorization server ends tokens before expires_in says (it once truncated the issue time to the second)", got)
	}
}

// TestRule8_AlmostExpiredTokenWaitsForTheRefresh: a token with less than a
// quarter of the margin left is not sent while the refresh runs: the
// request waits for the refresh and goes out with the new token, so a
// healthy session sees no 401 however slow the token endpoint.
func TestRule8_AlmostExpiredTokenWaitsForTheRefresh(t *testing.T) {
	gate := newTokenGate(t)
	r := newRFRig(t, client.Config{Base: gate})
	g0, err := r.tr.Grant(t.Context(), r.st.URL)
	if err != nil || g0 == nil {
		t.Fatalf("grant: %v", err)
	}
	gate.armed.Store(true)
	// 5 s left of a 60 s margin: inside the jittered margin, under its
	// quarter.
	r.clock.Advance(10*time.Minute - 5*time.Second)
	done := make(chan error, 1)
	go func() { done <- r.call(1) }()
	hdRecv(t, gate.hit, "the refresh")
	gate.release()
	if err := hdRecv(t, done, "the call"); err != nil {
		t.Fatalf("call: %v", err)
	}
	reqs := r.st.Requests()
	last := reqs[len(reqs)-1]
	if last.Token == g0.AccessToken {
		t.Errorf("the almost expired token was sent while the refresh ran; want the refreshed one")
	}
	if n := r.st.Unauthorized(); n != 0 {
		t.Errorf("401s = %d, want 0", n)
	}
}

// TestRule8_NoProactiveRefreshSlipsPastTheBackoff: after a proactive
// refresh found the authorization server unavailable, no other proactive
// refresh starts while the backoff lasts, however many requests race for
// it: the backoff check and the start of a refresh are one step. The token
// endpoint answers 503 in-process, so a refresh ends about as fast as a
// request can check the backoff, which opens the race the test looks for.
func TestRule8_NoProactiveRefreshSlipsPastTheBackoff(t *testing.T) {
	var armed atomic.Bool
	var tokenHits atomic.Int32
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		if armed.Load() && strings.HasSuffix(r.URL.Path, "/token") {
			tokenHits.Add(1)
			return &http.Response{StatusCode: http.StatusServiceUnavailable, Request: r,
				Header: http.Header{"Content-Type": {"application/json"}},
				Body:   io.NopCloser(strings.NewReader(`{"error":"temporarily_unavailable"}`))}, nil
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	r := newRFRig(t, client.Config{Base: base, RefreshBackoff: time.Hour})
	armed.Store(true)
	// Inside the margin, far from expiry: every request may start a
	// background refresh, and none waits for one.
	r.clock.Advance(10*time.Minute - 50*time.Second)
	const workers, calls = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				if err := r.call(w*calls + i); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	r.wait()
	close(errs)
	for err := range errs {
		t.Errorf("call: %v", err)
	}
	if n := tokenHits.Load(); n != 1 {
		t.Errorf("token requests = %d, want 1: a proactive refresh started past the backoff", n)
	}
}
