package client_test

// One refresh per grant (docs/design.md#client-rule-7): requests that fail
// at once share one refresh; a request whose token was already replaced
// retries with the current one; the refresh outlives a caller that gives
// up and has its own timeout; a sign-in is saved under the grant's lock,
// and the hooks run outside it. process_test.go checks the same across
// processes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

// TestRule7_FiftyConcurrentRequestsOneRefresh: fifty requests that all get
// a 401 for the same token before any refresh send one refresh grant, and
// each is retried once with its result (docs/design.md#client-rule-7).
func TestRule7_FiftyConcurrentRequestsOneRefresh(t *testing.T) {
	const n = 50
	// Every request with the old token (the one before the expiry) has got
	// its 401 before any of them refreshes.
	gate := ccNewOldTokenGate(n)
	var events atomic.Int32
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{
		Base:      gate,
		OnRefresh: func(client.RefreshEvent) { events.Add(1) },
	})
	hc := &http.Client{Transport: tr}
	tok := ccAccessToken(t, tr, st)
	gate.old.Store(tok)
	ccForceOld(st, tok)

	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			id := 1000 + i
			resp, data, err := ccPost(t.Context(), hc, st.URL, id)
			if err == nil {
				err = ccCheckEcho(resp, data, id)
			}
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", id, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if got := int(gate.arrived.Load()); got != n {
		t.Errorf("%d requests got a 401 for the old token, want %d", got, n)
	}
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refresh grants at the token endpoint = %d, want 1", got)
	}
	if s := tr.Stats(); s.Refreshes != 1 || s.RefreshFailure != 0 || s.Retries != n || s.Unauthorized != n || s.Requests != n {
		t.Errorf("Stats = %+v, want 1 refresh, %d retries, %d unauthorized, %d requests", s, n, n, n)
	}
	if got := events.Load(); got != 1 {
		t.Errorf("OnRefresh called %d times, want 1", got)
	}
	newTok := ccAccessToken(t, tr, st)
	if newTok == tok {
		t.Fatal("the stored access token did not change")
	}
	// Every request was sent twice, with the same body: once with the old
	// token (401), once with the new one (200).
	sent := map[string][]fixture.Request{}
	for _, r := range st.Requests() {
		sent[string(r.Body)] = append(sent[string(r.Body)], r)
	}
	if len(sent) != n {
		t.Errorf("%d distinct bodies reached the server, want %d", len(sent), n)
	}
	for body, rs := range sent {
		if len(rs) != 2 || rs[0].Token != tok || rs[0].Status != 401 || rs[1].Token != newTok || rs[1].Status != 200 {
			var got []string
			for _, r := range rs {
				got = append(got, fmt.Sprintf("%s/%d", fixture.TokenHash(r.Token), r.Status))
			}
			t.Errorf("body %s: sent as %v, want [old/401 new/200] (old %s, new %s)", body, got, fixture.TokenHash(tok), fixture.TokenHash(newTok))
		}
	}
}

// TestRule7_LateUnauthorizedForReplacedTokenSendsNoRefresh: a request
// whose token is older than the grant's current one retries with the
// current token, without a new refresh grant (docs/design.md#client-rule-7).
func TestRule7_LateUnauthorizedForReplacedTokenSendsNoRefresh(t *testing.T) {
	t.Run("same transport", func(t *testing.T) {
		held := make(chan struct{})
		release := make(chan struct{})
		var old atomic.Value
		old.Store("")
		base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := http.DefaultTransport.RoundTrip(r)
			if err == nil && r.Header.Get("X-CC-Hold") != "" && r.Header.Get("Authorization") == "Bearer "+old.Load().(string) {
				close(held)
				<-release // the 401 arrives after another request refreshed
			}
			return resp, err
		})
		st, tr := ccAuthorize(t, fixture.Options{}, client.Config{Base: base})
		hc := &http.Client{Transport: tr}
		tok := ccAccessToken(t, tr, st)
		old.Store(tok)
		ccForceOld(st, tok)

		late := make(chan error, 1)
		go func() {
			resp, data, err := ccPost(t.Context(), hc, st.URL, 1, "X-CC-Hold", "1")
			if err == nil {
				err = ccCheckEcho(resp, data, 1)
			}
			late <- err
		}()
		<-held
		resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := ccCheckEcho(resp, data, 2); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Fatalf("refreshes after the first 401 = %d, want 1", got)
		}
		close(release)
		if err := <-late; err != nil {
			t.Fatalf("late request: %v", err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Errorf("refreshes after the late 401 = %d, want 1", got)
		}
		newTok := ccAccessToken(t, tr, st)
		reqs := st.Requests()
		last := reqs[len(reqs)-1]
		if !bytes.Equal(last.Body, []byte(ccBody(1))) || last.Token != newTok || last.Status != 200 {
			t.Errorf("the late request was retried as %s with token %s (status %d), want %s with the current token %s",
				last.Body, fixture.TokenHash(last.Token), last.Status, ccBody(1), fixture.TokenHash(newTok))
		}
	})

	t.Run("two transports sharing a store", func(t *testing.T) {
		mem := new(store.Memory)
		st, a := ccAuthorize(t, fixture.Options{}, client.Config{Store: mem})
		b := client.NewTransport(client.Config{Store: mem})
		ha, hb := &http.Client{Transport: a}, &http.Client{Transport: b}
		// B sends once, so it has the old token in hand.
		if resp, data, err := ccPost(t.Context(), hb, st.URL, 1); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 1); err != nil {
			t.Fatal(err)
		}
		tok := ccAccessToken(t, a, st)
		ccForceOld(st, tok)

		if resp, data, err := ccPost(t.Context(), ha, st.URL, 2); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 2); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Fatalf("refreshes after A's 401 = %d, want 1", got)
		}
		if resp, data, err := ccPost(t.Context(), hb, st.URL, 3); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 3); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Errorf("refreshes after B's late 401 = %d, want 1", got)
		}
		newTok := ccAccessToken(t, a, st)
		reqs := st.Requests()
		if n := len(reqs); n < 2 || reqs[n-2].Token != tok || reqs[n-2].Status != 401 || reqs[n-1].Token != newTok || reqs[n-1].Status != 200 {
			var got []string
			for _, r := range reqs {
				got = append(got, fmt.Sprintf("%s/%d", fixture.TokenHash(r.Token), r.Status))
			}
			t.Errorf("requests %v: want B's last two with the old token %s/401, then A's token %s/200", got, fixture.TokenHash(tok), fixture.TokenHash(newTok))
		}
		if s := b.Stats(); s.Refreshes != 0 || s.Retries != 1 || s.Unauthorized != 1 {
			t.Errorf("B's Stats = %+v, want 0 refreshes, 1 retry, 1 unauthorized", s)
		}
	})
}

// TestRule7_CallerCancelDoesNotCancelRefresh: a caller that gives up while
// the refresh is in flight gets its context's error, but the refresh runs
// to the end and its result is saved and used
// (docs/design.md#client-rule-7).
func TestRule7_CallerCancelDoesNotCancelRefresh(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	base, armed, release := ccCancelAtRefresh(t, cancel)
	refreshed := make(chan client.RefreshEvent, 4)
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{
		Base:      base,
		OnRefresh: func(ev client.RefreshEvent) { refreshed <- ev },
	})
	hc := &http.Client{Transport: tr}
	tok := ccAccessToken(t, tr, st)
	ccForceOld(st, tok)
	armed.Store(true)

	_, _, err := ccPost(ctx, hc, st.URL, 1)
	release()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	armed.Store(false)

	select {
	case ev := <-refreshed:
		if ev.Outcome != "ok" || ev.Proactive {
			t.Fatalf("refresh event = %+v, want outcome ok after a 401", ev)
		}
	case <-time.After(hdBound):
		t.Fatal("the refresh did not complete after the caller cancelled")
	}

	// The refresh was saved to the store before anyone could use it.
	saved := ccAccessToken(t, tr, st)
	if saved == "" || saved == tok {
		t.Fatalf("the store holds %s, want a new access token (old %s)", fixture.TokenHash(saved), fixture.TokenHash(tok))
	}
	if got := st.Refreshes(); got != 1 {
		t.Fatalf("refreshes = %d, want 1", got)
	}
	reqs := st.TokenRequests("refresh_token")
	if reqs[0].Status != http.StatusOK {
		t.Errorf("the refresh grant got status %d, want 200", reqs[0].Status)
	}

	resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 2); err != nil {
		t.Fatal(err)
	}
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refreshes after the next request = %d, want 1", got)
	}
	all := st.Requests()
	if last := all[len(all)-1]; last.Token != saved || last.Status != 200 {
		t.Errorf("next request sent token %s (status %d), want the refreshed %s", fixture.TokenHash(last.Token), last.Status, fixture.TokenHash(saved))
	}
}

// TestRule7_RefreshHasItsOwnTimeout: a refresh that takes longer than
// RefreshTimeout fails as unavailable (docs/design.md#client-rule-4: the
// refresh token is kept), even for a caller with no deadline, and a later
// request refreshes with the kept token (docs/design.md#client-rule-7).
func TestRule7_RefreshHasItsOwnTimeout(t *testing.T) {
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{RefreshTimeout: 200 * time.Millisecond})
	hc := &http.Client{Transport: tr}
	before, err := tr.Grant(t.Context(), st.URL)
	if err != nil {
		t.Fatal(err)
	}
	st.Faults().DelayToken(5 * time.Second)
	st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
	_, _, err = ccPost(context.Background(), hc, st.URL, 1)
	var ue *client.RefreshUnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow refresh: %v, want a RefreshUnavailableError caused by the refresh's deadline", err)
	}
	after, _ := tr.Grant(t.Context(), st.URL)
	if after.RefreshToken != before.RefreshToken || after.AccessToken != before.AccessToken {
		t.Fatal("the grant changed after a refresh that timed out")
	}
	st.Faults().DelayToken(0)
	st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
	resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 2); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Refreshes != 2 || s.RefreshFailure != 1 || s.NeedsReauth != 0 {
		t.Errorf("Stats = %+v, want 2 refreshes, 1 failure, no needs-reauth", s)
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

// TestRule7_SignInSavedUnderTheGrantLock: a sign-in is saved under the
// grant's lock, so a refresh in progress (another process on a shared
// store) cannot overwrite it (docs/design.md#client-rule-7).
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

// TestRule7_HooksRunOutsideTheGrantLock: hooks run after the grant's lock is
// released, so a hook that takes its time (routing to a UI) does not hold
// up other processes' refreshes (docs/design.md#client-rule-7).
func TestRule7_HooksRunOutsideTheGrantLock(t *testing.T) {
	var lockFree atomic.Bool
	var ms *store.Memory
	var key string
	check := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if unlock, err := ms.Lock(ctx, key); err == nil {
			lockFree.Store(true)
			unlock()
		}
	}
	r := newRig(t, fixture.Options{}, client.Config{OnRefresh: func(client.RefreshEvent) { check() }})
	ms, key = r.store, r.grant().Key
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if _, _, err := r.call(http.MethodPost, 1); err != nil {
		t.Fatal(err)
	}
	if !lockFree.Load() {
		t.Fatal("OnRefresh ran while the grant's lock was held")
	}
}

// TestRule7_HooksDoNotHoldUpOtherWaiters: requests waiting for a refresh get
// its result without waiting for the hooks of the request that started it
// (docs/design.md#client-rule-7 and the hook contract of Config.OnRefresh).
func TestRule7_HooksDoNotHoldUpOtherWaiters(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	gate := ccNewOldTokenGate(2) // both requests have their 401 before the refresh
	r := newRig(t, fixture.Options{}, client.Config{Base: gate, OnRefresh: func(client.RefreshEvent) {
		enterOnce.Do(func() { close(entered); <-release })
	}})
	gate.old.Store(r.grant().AccessToken)
	ccForceOld(r.st, gate.old.Load().(string))
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
