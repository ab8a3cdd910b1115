package client_test

// Regression tests for defects found in review: the proactive refresh
// (rules 5 and 8), the grant lock on sign-in (rule 7), the memory of
// failures (rules 3 and 5), the hooks, step-up on the event stream
// (rule 6), the save after a refresh (rule 2) and the loopback listener.
// None asserts on timing: they count token endpoint requests and check
// error types; a bound on a wait only turns a hang into a failure.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

// hdBound turns a wait that would hang without a fix into a failure.
const hdBound = 10 * time.Second

// hdRecv receives from ch or fails the test after hdBound.
func hdRecv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hdBound):
		t.Fatalf("%s did not happen", what)
		panic("unreachable")
	}
}

// hdTokenGate is a Base that holds token endpoint requests, once armed,
// until it is opened, and counts them.
type hdTokenGate struct {
	armed   atomic.Bool
	hits    atomic.Int32
	hit     chan struct{} // closed at the first request held
	hitOnce sync.Once
	open    chan struct{}
	once    sync.Once
}

func newTokenGate(t *testing.T) *hdTokenGate {
	g := &hdTokenGate{hit: make(chan struct{}), open: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

func (g *hdTokenGate) release() { g.once.Do(func() { close(g.open) }) }

func (g *hdTokenGate) RoundTrip(r *http.Request) (*http.Response, error) {
	if g.armed.Load() && strings.HasSuffix(r.URL.Path, authserver.PathToken) {
		g.hits.Add(1)
		g.hitOnce.Do(func() { close(g.hit) })
		select {
		case <-g.open:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Rules 3, 4 and 5 with rule 8: the refresh started before sending is the
// request's one refresh. When the token has expired, the request waits for
// it and a failure is the answer, without sending the dead token; when the
// token is still valid, the request goes out and a 401 waits for that
// refresh instead of starting a second one.
func TestRule5_ProactiveRefreshIsTheRequestsOneRefresh(t *testing.T) {
	for _, expired := range []bool{true, false} {
		for _, refused := range []bool{true, false} {
			name := map[bool]string{true: "expired", false: "valid"}[expired] + "/" +
				map[bool]string{true: "refused", false: "unavailable"}[refused]
			t.Run(name, func(t *testing.T) {
				var clock prClock
				r := newRig(t, fixture.Options{AccessTokenTTL: 10 * time.Minute},
					client.Config{Now: clock.Now, RefreshMargin: client.DefaultRefreshMargin})
				if refused {
					r.st.Faults().RefuseRefresh(true)
				} else {
					r.st.Faults().FailTokenEndpoint(http.StatusServiceUnavailable)
				}
				// The resource server rejects the token (revoked, or the
				// clocks disagree).
				r.st.ForceFunc(func(*http.Request, string) *fixture.Forced {
					return &fixture.Forced{Status: 401, Challenge: invalidToken}
				})
				if expired {
					clock.Advance(10*time.Minute + time.Second)
				} else {
					clock.Advance(10*time.Minute - 30*time.Second)
				}
				_, _, err := r.call(http.MethodPost, 1)
				// Hooks of a refresh run after its waiters have the result
				// (in the background when the refresh did): wait for them.
				wctx, cancel := context.WithTimeout(context.Background(), hdBound)
				defer cancel()
				if err := r.tr.Wait(wctx); err != nil {
					t.Fatalf("Wait: %v", err)
				}
				if refused {
					var ne *client.NeedsReauthError
					if !errors.As(err, &ne) || ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant" {
						t.Fatalf("err = %v, want needs_reauth refresh_rejected (invalid_grant)", err)
					}
					if n := r.hooks.Load(); n != 1 {
						t.Errorf("OnNeedsReauth fired %d times, want 1", n)
					}
					if s := r.tr.Stats(); s.NeedsReauth != 1 {
						t.Errorf("Stats.NeedsReauth = %d, want 1", s.NeedsReauth)
					}
				} else {
					var ue *client.RefreshUnavailableError
					if !errors.As(err, &ue) || errors.Is(err, client.ErrNeedsReauth) {
						t.Fatalf("err = %v, want refresh unavailable", err)
					}
				}
				if n := r.st.Refreshes(); n != 1 {
					t.Errorf("refresh grants = %d, want 1 for one logical request", n)
				}
				want := 1 // a valid token is sent while the refresh runs
				if expired {
					want = 0 // a dead token is not sent
				}
				if n := len(r.st.Requests()); n != want {
					t.Errorf("the resource server saw %d requests, want %d", n, want)
				}
			})
		}
	}
}

// Rule 8: a request whose token is still valid does not wait for the
// proactive refresh it starts; after an unavailable answer no proactive
// refresh starts during a backoff that doubles.
func TestRule8_ProactiveRefreshInBackgroundWithBackoff(t *testing.T) {
	var clock prClock
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

// hdLockSpy is a store that tells when Lock is called and remembers the
// last grant it saved.
type hdLockSpy struct {
	store.Store
	locked chan struct{}
	once   sync.Once
	mu     sync.Mutex
	saved  *store.Grant
}

func (s *hdLockSpy) Lock(ctx context.Context, key string) (func(), error) {
	s.once.Do(func() { close(s.locked) })
	return s.Store.Lock(ctx, key)
}

func (s *hdLockSpy) Save(ctx context.Context, g *store.Grant) error {
	err := s.Store.Save(ctx, g)
	if err == nil {
		s.mu.Lock()
		s.saved = g.Clone()
		s.mu.Unlock()
	}
	return err
}

// Rule 7: a sign-in is saved under the grant's lock, so a refresh in
// progress (another process on a shared store) cannot overwrite it.
func TestRule7_SignInSavedUnderTheGrantLock(t *testing.T) {
	gate := newTokenGate(t)
	ms := new(store.Memory)
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{Store: ms, Base: gate, RefreshMargin: -1})
	old := ccAccessToken(t, tr, st)
	ccForceOld(st, old)
	gate.armed.Store(true)

	// The first process's request refreshes; the token endpoint holds it.
	first := make(chan error, 1)
	go func() {
		resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 1)
		if err == nil {
			err = ccCheckEcho(resp, data, 1)
		}
		first <- err
	}()
	select {
	case <-gate.hit:
	case err := <-first:
		t.Fatalf("the request ended before its refresh: %v", err)
	case <-time.After(hdBound):
		t.Fatal("no refresh")
	}
	// A second process signs in meanwhile.
	spy := &hdLockSpy{Store: ms, locked: make(chan struct{})}
	other := client.NewTransport(client.Config{Store: spy, Authorizer: &client.HeadlessAuthorizer{}})
	signedIn := make(chan error, 1)
	go func() { signedIn <- other.Authorize(t.Context(), st.URL) }()
	var signInErr error
	var signInDone bool
	select {
	case <-spy.locked: // it waits for the refresh to release the lock
	case signInErr = <-signedIn: // it saved without the lock
		signInDone = true
	case <-time.After(hdBound):
		t.Fatal("the sign-in neither saved nor waited for the lock")
	}
	gate.release()
	if err := hdRecv(t, first, "the first request"); err != nil {
		t.Fatalf("first request: %v", err)
	}
	if !signInDone {
		signInErr = hdRecv(t, signedIn, "the sign-in")
	}
	if signInErr != nil {
		t.Fatalf("sign-in: %v", signInErr)
	}
	spy.mu.Lock()
	login := spy.saved
	spy.mu.Unlock()
	key, _ := client.ServerKey(st.URL)
	g, err := ms.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if login == nil || g.AccessToken != login.AccessToken || g.RefreshToken != login.RefreshToken {
		t.Fatal("the refresh overwrote the grant of the sign-in that completed during it")
	}
}

// Rules 3 and 5: a rejected-after-refresh token that the server accepts
// again is refreshed on its next 401, and the once-per-grant hook fires
// again after a successful refresh.
func TestRule5_FailureMemoryClearedWhenTheGrantRecovers(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	var mode atomic.Int32 // 0 reject every token, 1 accept every token, 2 reject rejectedTok
	var rejectedTok atomic.Value
	rejectedTok.Store("")
	r.st.ForceFunc(func(_ *http.Request, tok string) *fixture.Forced {
		switch m := mode.Load(); {
		case m == 0, m == 2 && tok == rejectedTok.Load().(string):
			return &fixture.Forced{Status: 401, Challenge: invalidToken}
		}
		return nil
	})
	// A server glitch rejects the refreshed token too.
	_, _, err := r.call(http.MethodPost, 1)
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonRejectedAfterRefresh {
		t.Fatalf("call 1: %v, want rejected_after_refresh", err)
	}
	if r.hooks.Load() != 1 {
		t.Fatalf("hook fired %d times, want 1", r.hooks.Load())
	}
	t1 := r.grant().AccessToken
	// The server recovers and accepts that token.
	mode.Store(1)
	if resp, _, err := r.call(http.MethodPost, 2); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call 2: %v", err)
	}
	// Later the token expires: a genuine failure, refreshed (the refresh
	// token is good).
	rejectedTok.Store(t1)
	mode.Store(2)
	resp, b, err := r.call(http.MethodPost, 3)
	if err != nil || resp.StatusCode != 200 || responseID(t, b) != 3 {
		t.Fatalf("call 3: %v, want a refresh and a retry", err)
	}
	if n := r.st.Refreshes(); n != 2 {
		t.Fatalf("refreshes = %d, want 2", n)
	}
	// Then the refresh token is revoked: reported again.
	r.st.Faults().RefuseRefresh(true)
	mode.Store(0)
	_, _, err = r.call(http.MethodPost, 4)
	if !errors.As(err, &ne) || ne.Reason != client.ReasonRefreshRejected {
		t.Fatalf("call 4: %v, want refresh_rejected", err)
	}
	if r.hooks.Load() != 2 {
		t.Fatalf("OnNeedsReauth fired %d times, want 2: the grant recovered by a refresh in between", r.hooks.Load())
	}
}

// Rule 7 and the hook contract: requests waiting for a refresh get its
// result without waiting for the hooks of the request that started it.
func TestRule7_HooksDoNotHoldUpOtherWaiters(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	gate := ccNewGate(2) // both requests have their 401 before the refresh
	var old atomic.Value
	old.Store("")
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil && r.URL.Path == "/mcp" && r.Header.Get("Authorization") == "Bearer "+old.Load().(string) {
			gate.wait()
		}
		return resp, err
	})
	r := newRig(t, fixture.Options{}, client.Config{Base: base, OnRefresh: func(client.RefreshEvent) {
		enterOnce.Do(func() { close(entered); <-release })
	}})
	old.Store(r.grant().AccessToken)
	ccForceOld(r.st, old.Load().(string))
	done := make(chan error, 2)
	for i := range 2 {
		go func() {
			resp, data, err := ccPost(t.Context(), r.hc, r.st.URL, i)
			if err == nil {
				err = ccCheckEcho(resp, data, i)
			}
			done <- err
		}()
	}
	hdRecv(t, entered, "the OnRefresh hook")
	if err := hdRecv(t, done, "a request that did not start the refresh"); err != nil {
		t.Fatal(err)
	}
	free()
	if err := hdRecv(t, done, "the request that started the refresh"); err != nil {
		t.Fatal(err)
	}
	if n := r.st.Refreshes(); n != 1 {
		t.Errorf("refreshes = %d, want 1", n)
	}
}

// Rule 10 and the hook contract: a panic in a hook is recovered and
// logged, without token material, and the request is answered.
func TestRule10_PanickingHooksAreRecovered(t *testing.T) {
	var logs lgBuffer
	r := newRig(t, fixture.Options{}, client.Config{})
	// A transport whose hooks all panic (newRig's OnNeedsReauth only
	// counts).
	r.tr = client.NewTransport(client.Config{Store: r.store, RefreshMargin: -1, Logger: lgLogger(&logs),
		OnRefresh:     func(client.RefreshEvent) { panic("refresh hook") },
		OnEvent:       func(client.Event) { panic("event hook") },
		OnNeedsReauth: func(*client.NeedsReauthError) { r.hooks.Add(1); panic("needs-reauth hook") },
	})
	r.hc = &http.Client{Transport: r.tr}
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if resp, _, err := r.call(http.MethodPost, 1); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call 1: %v", err)
	}
	r.st.Faults().RefuseRefresh(true)
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if _, _, err := r.call(http.MethodPost, 2); !errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("call 2: %v, want needs_reauth", err)
	}
	if r.hooks.Load() != 1 {
		t.Fatalf("OnNeedsReauth ran %d times, want 1", r.hooks.Load())
	}
	seen := map[string]bool{}
	for _, rec := range logs.records(t) {
		if rec["msg"] == "hook panicked" {
			seen[rec["hook"].(string)] = true
		}
	}
	for _, h := range []string{"OnRefresh", "OnNeedsReauth", "OnEvent"} {
		if !seen[h] {
			t.Errorf("no log record of the panic in %s", h)
		}
	}
	var sec lgSecrets
	sec.fromStack(r.st)
	sec.fromStore(t, r.store, r.st.Issuer, "http://127.0.0.1/callback")
	sec.check(t, "the log", logs.String())
}

// Rule 6: a step-up 403 on the event stream (GET) or a DELETE, which may
// not start a sign-in, is the InsufficientScopeError, not a needs-reauth.
func TestRule6_StepUpOnNonPOSTIsInsufficientScope(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			r := newRig(t, fixture.Options{}, client.Config{Authorizer: &client.HeadlessAuthorizer{}})
			r.st.Force(fixture.Forced{Status: 403, Challenge: `Bearer error="insufficient_scope", scope="files.write"`})
			_, _, err := r.call(method, 1)
			var se *client.InsufficientScopeError
			if !errors.As(err, &se) || errors.Is(err, client.ErrNeedsReauth) || len(se.Required) != 1 || se.Required[0] != "files.write" {
				t.Fatalf("err = %v, want InsufficientScopeError for files.write", err)
			}
			if s := r.tr.Stats(); s.NeedsReauth != 0 || s.Authorizations != 0 {
				t.Errorf("Stats = %+v, want no needs-reauth and no sign-in", s)
			}
			if n := r.hooks.Load(); n != 0 {
				t.Errorf("OnNeedsReauth fired %d times, want 0", n)
			}
		})
	}
}

// Rule 2: a refresh whose deadline passes between the token endpoint's
// answer and the save still saves the rotated refresh token.
func TestRule2_RotatedRefreshTokenSavedPastTheRefreshDeadline(t *testing.T) {
	var armed atomic.Bool
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		if !armed.Load() || !strings.HasSuffix(r.URL.Path, authserver.PathToken) {
			return http.DefaultTransport.RoundTrip(r)
		}
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(data))
		// The answer is in; the refresh's deadline passes before it is
		// saved.
		<-r.Context().Done()
		return resp, nil
	})
	ms := new(store.Memory)
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{Store: ms, Base: base, RefreshMargin: -1, RefreshTimeout: 300 * time.Millisecond})
	key, _ := client.ServerKey(st.URL)
	before, err := ms.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	st.Force(fixture.Forced{Status: 401, Challenge: ccInvalidToken})
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: tr}, st.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 1); err != nil {
		t.Fatal(err)
	}
	after, err := ms.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	reqs := st.Requests()
	if after.RefreshToken == before.RefreshToken || after.AccessToken != reqs[len(reqs)-1].Token {
		t.Fatal("the refreshed grant (rotated refresh token) was not saved")
	}
}

// The loopback authorizer releases its listener on Close even when it
// never served, and refuses to authorize after Close.
func TestLoopbackAuthorizer_CloseWithoutAuthorizeReleasesListener(t *testing.T) {
	a, err := client.NewLoopbackAuthorizer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(a.RedirectURI())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		t.Fatalf("listening on %s after Close: %v (the listener leaked)", u.Host, err)
	}
	ln.Close()
	a.Open = func(string) error { t.Error("Authorize after Close opened the browser"); return nil }
	ctx, cancel := context.WithTimeout(t.Context(), hdBound)
	defer cancel()
	if _, err := a.Authorize(ctx, "http://127.0.0.1/authorize?state=x"); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Authorize after Close: %v, want an immediate error", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
