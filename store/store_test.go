package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testStore runs the behaviour every Store must have against stores made
// by newStore, which must return a new, empty store on each call.
func testStore(t *testing.T, newStore func() Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore) })
	t.Run("SaveReplaces", func(t *testing.T) { testSaveReplaces(t, newStore()) })
	t.Run("List", func(t *testing.T) { testList(t, newStore()) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore()) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, newStore()) })
	t.Run("CopiesNotAliases", func(t *testing.T) { testCopies(t, newStore()) })
	t.Run("SaveInvalid", func(t *testing.T) { testSaveInvalid(t, newStore()) })
	t.Run("Registrations", func(t *testing.T) { testRegistrations(t, newStore()) })
	t.Run("DeleteRegistration", func(t *testing.T) { testDeleteRegistration(t, newStore()) })
	t.Run("DoneContext", func(t *testing.T) { testDoneContext(t, newStore()) })
	t.Run("LockExcludes", func(t *testing.T) { testLockExcludes(t, newStore()) })
	t.Run("LockKeysIndependent", func(t *testing.T) { testLockKeysIndependent(t, newStore()) })
	t.Run("LockWaitEndsWithContext", func(t *testing.T) { testLockCancel(t, newStore) })
	t.Run("UnlockIdempotent", func(t *testing.T) { testUnlockIdempotent(t, newStore()) })
	t.Run("LockSerializes", func(t *testing.T) { testLockSerializes(t, newStore()) })
	t.Run("Rule7_OneRefreshPerGrant", func(t *testing.T) { testOneRefresh(t, newStore()) })
}

// fullGrant returns a grant with every field set. Expiry has nanoseconds
// and a non-UTC zone, to check that the absolute time survives.
func fullGrant(key string) *Grant {
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	return &Grant{
		Key:                key,
		Resource:           key + "/resource",
		Issuer:             "https://as.example.com/tenant",
		TokenEndpoint:      "https://as.example.com/tenant/token",
		RevocationEndpoint: "https://as.example.com/tenant/revoke",
		ClientID:           "client-1",
		ClientSecret:       "secret-1",
		AuthMethod:         "client_secret_basic",
		AccessToken:        "at-" + key,
		TokenType:          "Bearer",
		Expiry:             time.Date(2031, 4, 5, 6, 7, 8, 123456789, zone),
		RefreshToken:       "rt-" + key,
		Scopes:             []string{"files.read", "offline_access"},
		UpdatedAt:          time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

func fullRegistration(issuer, redirectURI string) *Registration {
	return &Registration{
		Issuer:          issuer,
		RedirectURI:     redirectURI,
		ClientID:        "client-" + issuer,
		ClientSecret:    "secret-" + redirectURI,
		AuthMethod:      "client_secret_post",
		RedirectURIs:    []string{redirectURI, "http://127.0.0.1/other"},
		SecretExpiresAt: time.Date(2032, 1, 1, 0, 0, 0, 999, time.FixedZone("X", -7*3600)),
		CreatedAt:       time.Date(2029, 12, 31, 23, 59, 59, 1, time.UTC),
	}
}

// grantDiff describes how got differs from want: times are compared with
// Equal (the same instant), Scopes with nil equal to empty.
func grantDiff(got, want *Grant) string {
	if got == nil || want == nil {
		if got != want {
			return fmt.Sprintf("got %v, want %v", got != nil, want != nil)
		}
		return ""
	}
	var d []string
	if !got.Expiry.Equal(want.Expiry) {
		d = append(d, fmt.Sprintf("Expiry = %v, want %v", got.Expiry, want.Expiry))
	}
	if !got.UpdatedAt.Equal(want.UpdatedAt) {
		d = append(d, fmt.Sprintf("UpdatedAt = %v, want %v", got.UpdatedAt, want.UpdatedAt))
	}
	if !slices.Equal(got.Scopes, want.Scopes) {
		d = append(d, fmt.Sprintf("Scopes = %q, want %q", got.Scopes, want.Scopes))
	}
	g, w := *got, *want
	g.Expiry, w.Expiry, g.UpdatedAt, w.UpdatedAt, g.Scopes, w.Scopes = time.Time{}, time.Time{}, time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(g, w) {
		d = append(d, fmt.Sprintf("got %+v, want %+v", g, w))
	}
	return strings.Join(d, "; ")
}

func registrationDiff(got, want *Registration) string {
	var d []string
	if !got.SecretExpiresAt.Equal(want.SecretExpiresAt) {
		d = append(d, fmt.Sprintf("SecretExpiresAt = %v, want %v", got.SecretExpiresAt, want.SecretExpiresAt))
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		d = append(d, fmt.Sprintf("CreatedAt = %v, want %v", got.CreatedAt, want.CreatedAt))
	}
	if !slices.Equal(got.RedirectURIs, want.RedirectURIs) {
		d = append(d, fmt.Sprintf("RedirectURIs = %q, want %q", got.RedirectURIs, want.RedirectURIs))
	}
	g, w := *got, *want
	g.SecretExpiresAt, w.SecretExpiresAt, g.CreatedAt, w.CreatedAt, g.RedirectURIs, w.RedirectURIs = time.Time{}, time.Time{}, time.Time{}, time.Time{}, nil, nil
	if !reflect.DeepEqual(g, w) {
		d = append(d, fmt.Sprintf("got %+v, want %+v", g, w))
	}
	return strings.Join(d, "; ")
}

func mustSave(t *testing.T, s Store, g *Grant) {
	t.Helper()
	if err := s.Save(t.Context(), g); err != nil {
		t.Fatalf("Save(%q): %v", g.Key, err)
	}
}

func mustLoad(t *testing.T, s Store, key string) *Grant {
	t.Helper()
	g, err := s.Load(t.Context(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return g
}

func mustLock(t *testing.T, s Store, key string) func() {
	t.Helper()
	unlock, err := s.Lock(t.Context(), key)
	if err != nil {
		t.Fatalf("Lock(%q): %v", key, err)
	}
	return unlock
}

func testRoundTrip(t *testing.T, newStore func() Store) {
	local := time.Now().Add(90 * time.Minute) // with a monotonic reading
	for _, tc := range []struct {
		name  string
		grant *Grant
	}{
		{"all fields", fullGrant("https://mcp.example.com/mcp")},
		{"key only", &Grant{Key: "https://k.example/"}},
		{"expiry from time.Now", &Grant{Key: "https://now.example/", AccessToken: "a", Expiry: local}},
		{"empty scopes", &Grant{Key: "https://e.example/", Scopes: []string{}}},
		{"unusual key", &Grant{Key: "héllo wörld/../\x00\n", AccessToken: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore()
			mustSave(t, s, tc.grant)
			got := mustLoad(t, s, tc.grant.Key)
			if d := grantDiff(got, tc.grant); d != "" {
				t.Errorf("Load after Save: %s", d)
			}
			list, err := s.List(t.Context())
			if err != nil || len(list) != 1 {
				t.Fatalf("List = %d grants, %v; want 1, nil", len(list), err)
			}
			if d := grantDiff(list[0], tc.grant); d != "" {
				t.Errorf("List after Save: %s", d)
			}
		})
	}
}

func testSaveReplaces(t *testing.T, s Store) {
	key := "https://mcp.example.com/mcp"
	mustSave(t, s, fullGrant(key))
	repl := &Grant{Key: key, AccessToken: "second", Scopes: []string{"only"}}
	mustSave(t, s, repl)
	if d := grantDiff(mustLoad(t, s, key), repl); d != "" {
		t.Errorf("Load after second Save: %s", d)
	}
}

func testList(t *testing.T, s Store) {
	list, err := s.List(t.Context())
	if err != nil || len(list) != 0 {
		t.Fatalf("List of empty store = %v, %v; want none, nil", list, err)
	}
	keys := []string{"https://c.example/mcp", "https://a.example/mcp", "https://b.example/mcp", "https://a.example/mcp/2"}
	for _, k := range keys {
		mustSave(t, s, fullGrant(k))
	}
	list, err = s.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	for _, g := range list {
		got = append(got, g.Key)
		if d := grantDiff(g, fullGrant(g.Key)); d != "" {
			t.Errorf("List: %s", d)
		}
	}
	want := slices.Sorted(slices.Values(keys))
	if !slices.Equal(got, want) {
		t.Errorf("List keys = %q, want %q (key order)", got, want)
	}
}

func testDelete(t *testing.T, s Store) {
	mustSave(t, s, fullGrant("https://a.example/"))
	mustSave(t, s, fullGrant("https://b.example/"))
	for _, key := range []string{"https://a.example/", "https://a.example/", "https://never.example/"} {
		if err := s.Delete(t.Context(), key); err != nil {
			t.Errorf("Delete(%q) = %v, want nil", key, err)
		}
	}
	if _, err := s.Load(t.Context(), "https://a.example/"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Load after Delete: err = %v, want ErrNotFound", err)
	}
	list, err := s.List(t.Context())
	if err != nil || len(list) != 1 || list[0].Key != "https://b.example/" {
		t.Errorf("List after Delete = %v, %v; want only b", list, err)
	}
}

func testNotFound(t *testing.T, s Store) {
	if g, err := s.Load(t.Context(), "https://missing.example/"); !errors.Is(err, ErrNotFound) || g != nil {
		t.Errorf("Load(missing) = %v, %v; want nil, ErrNotFound", g, err)
	}
	if r, err := s.LoadRegistration(t.Context(), "https://as.example/", "http://127.0.0.1/cb"); !errors.Is(err, ErrNotFound) || r != nil {
		t.Errorf("LoadRegistration(missing) = %v, %v; want nil, ErrNotFound", r, err)
	}
}

func testCopies(t *testing.T, s Store) {
	key := "https://mcp.example.com/mcp"
	g := fullGrant(key)
	mustSave(t, s, g)
	g.AccessToken, g.Scopes[0] = "changed after Save", "changed after Save"

	loaded := mustLoad(t, s, key)
	if d := grantDiff(loaded, fullGrant(key)); d != "" {
		t.Fatalf("changing the saved grant changed the store: %s", d)
	}
	loaded.AccessToken, loaded.Scopes[0] = "changed after Load", "changed after Load"
	list, err := s.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	list[0].AccessToken, list[0].Scopes[1] = "changed after List", "changed after List"
	if d := grantDiff(mustLoad(t, s, key), fullGrant(key)); d != "" {
		t.Errorf("changing a loaded grant changed the store: %s", d)
	}

	r := fullRegistration("https://as.example/", "http://127.0.0.1/cb")
	if err := s.SaveRegistration(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	r.ClientID, r.RedirectURIs[0] = "changed", "changed"
	lr, err := s.LoadRegistration(t.Context(), "https://as.example/", "http://127.0.0.1/cb")
	if err != nil {
		t.Fatal(err)
	}
	lr.RedirectURIs[1] = "changed"
	lr, err = s.LoadRegistration(t.Context(), "https://as.example/", "http://127.0.0.1/cb")
	if err != nil {
		t.Fatal(err)
	}
	if d := registrationDiff(lr, fullRegistration("https://as.example/", "http://127.0.0.1/cb")); d != "" {
		t.Errorf("registration aliased: %s", d)
	}
}

func testSaveInvalid(t *testing.T, s Store) {
	if err := s.Save(t.Context(), nil); err == nil {
		t.Error("Save(nil) = nil, want an error")
	}
	if err := s.Save(t.Context(), &Grant{AccessToken: "x"}); err == nil {
		t.Error("Save(grant without key) = nil, want an error")
	}
	if err := s.SaveRegistration(t.Context(), nil); err == nil {
		t.Error("SaveRegistration(nil) = nil, want an error")
	}
	if list, err := s.List(t.Context()); err != nil || len(list) != 0 {
		t.Errorf("List after invalid saves = %v, %v; want none", list, err)
	}
}

func testRegistrations(t *testing.T, s Store) {
	type pair struct{ issuer, redirect string }
	pairs := []pair{
		{"https://as.example/", "http://127.0.0.1/callback"},
		{"https://as.example/", "http://127.0.0.1/other"},
		{"https://as2.example/", "http://127.0.0.1/callback"},
	}
	for _, p := range pairs {
		if err := s.SaveRegistration(t.Context(), fullRegistration(p.issuer, p.redirect)); err != nil {
			t.Fatalf("SaveRegistration(%q, %q): %v", p.issuer, p.redirect, err)
		}
	}
	for _, p := range pairs {
		r, err := s.LoadRegistration(t.Context(), p.issuer, p.redirect)
		if err != nil {
			t.Fatalf("LoadRegistration(%q, %q): %v", p.issuer, p.redirect, err)
		}
		if d := registrationDiff(r, fullRegistration(p.issuer, p.redirect)); d != "" {
			t.Errorf("LoadRegistration(%q, %q): %s", p.issuer, p.redirect, d)
		}
	}
	// A different (issuer, redirect URI) pair is not found.
	if _, err := s.LoadRegistration(t.Context(), "https://as2.example/", "http://127.0.0.1/other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("LoadRegistration(unsaved pair) err = %v, want ErrNotFound", err)
	}
	// Replacing.
	repl := &Registration{Issuer: pairs[0].issuer, RedirectURI: pairs[0].redirect, ClientID: "second"}
	if err := s.SaveRegistration(t.Context(), repl); err != nil {
		t.Fatal(err)
	}
	r, err := s.LoadRegistration(t.Context(), pairs[0].issuer, pairs[0].redirect)
	if err != nil {
		t.Fatal(err)
	}
	if d := registrationDiff(r, repl); d != "" {
		t.Errorf("after replacing: %s", d)
	}
	// Registrations are not grants.
	if list, err := s.List(t.Context()); err != nil || len(list) != 0 {
		t.Errorf("List with only registrations = %v, %v; want none", list, err)
	}
}

func testDoneContext(t *testing.T, s Store) {
	mustSave(t, s, fullGrant("https://a.example/"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for name, op := range map[string]func() error{
		"Load":             func() error { _, err := s.Load(ctx, "https://a.example/"); return err },
		"Save":             func() error { return s.Save(ctx, fullGrant("https://b.example/")) },
		"Delete":           func() error { return s.Delete(ctx, "https://a.example/") },
		"List":             func() error { _, err := s.List(ctx); return err },
		"LoadRegistration": func() error { _, err := s.LoadRegistration(ctx, "i", "r"); return err },
		"SaveRegistration": func() error { return s.SaveRegistration(ctx, fullRegistration("i", "r")) },
		"Lock":             func() error { _, err := s.Lock(ctx, "https://a.example/"); return err },
	} {
		if err := op(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want context.Canceled", name, err)
		}
	}
	if list, _ := s.List(t.Context()); len(list) != 1 {
		t.Errorf("operations with a cancelled context changed the store: %d grants", len(list))
	}
}

// lockAsync calls Lock in a goroutine and returns a channel that gets its
// outcome.
func lockAsync(ctx context.Context, s Store, key string) <-chan lockResult {
	ch := make(chan lockResult, 1)
	go func() {
		unlock, err := s.Lock(ctx, key)
		ch <- lockResult{unlock, err}
	}()
	return ch
}

type lockResult struct {
	unlock func()
	err    error
}

// notYet asserts that nothing arrives on ch for a short while.
func notYet(t *testing.T, ch <-chan lockResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		if r.unlock != nil {
			r.unlock()
		}
		t.Fatalf("%s returned (err %v) while the lock was held", what, r.err)
	case <-time.After(100 * time.Millisecond):
	}
}

func soon(t *testing.T, ch <-chan lockResult, what string) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return", what)
		return lockResult{}
	}
}

func testLockExcludes(t *testing.T, s Store) {
	const key = "https://mcp.example.com/mcp"
	unlock := mustLock(t, s, key)
	second := lockAsync(t.Context(), s, key)
	notYet(t, second, "second Lock")
	unlock()
	r := soon(t, second, "second Lock after unlock")
	if r.err != nil {
		t.Fatalf("second Lock: %v", r.err)
	}
	r.unlock()
}

func testLockKeysIndependent(t *testing.T, s Store) {
	unlockA := mustLock(t, s, "https://a.example/")
	defer unlockA()
	r := soon(t, lockAsync(t.Context(), s, "https://b.example/"), "Lock of another key")
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.unlock()
}

func testLockCancel(t *testing.T, newStore func() Store) {
	for _, tc := range []struct {
		name string
		ctx  func(context.Context) (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 50*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func(ctx context.Context) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(ctx)
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore()
			const key = "https://mcp.example.com/mcp"
			unlock := mustLock(t, s, key)
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			start := time.Now()
			r := soon(t, lockAsync(ctx, s, key), "Lock with a context that ends")
			if r.err == nil {
				r.unlock()
				t.Fatal("Lock of a held key succeeded")
			}
			if !errors.Is(r.err, tc.want) || r.unlock != nil {
				t.Errorf("Lock = %v, %v; want nil, %v", r.unlock != nil, r.err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Lock took %v to notice its context", d)
			}
			// The abandoned wait leaves the lock working.
			waiter := lockAsync(t.Context(), s, key)
			notYet(t, waiter, "Lock after an abandoned wait")
			unlock()
			w := soon(t, waiter, "Lock after unlock")
			if w.err != nil {
				t.Fatal(w.err)
			}
			w.unlock()
		})
	}
}

func testUnlockIdempotent(t *testing.T, s Store) {
	const key = "https://mcp.example.com/mcp"
	unlockA := mustLock(t, s, key)
	returns(t, unlockA, "unlock")
	returns(t, unlockA, "second unlock")
	unlockB := mustLock(t, s, key)
	returns(t, unlockA, "stale unlock") // must not release B's lock
	third := lockAsync(t.Context(), s, key)
	notYet(t, third, "Lock after a stale unlock")
	returns(t, unlockB, "unlock")
	r := soon(t, third, "Lock after unlock")
	if r.err != nil {
		t.Fatal(r.err)
	}
	returns(t, r.unlock, "unlock")
	returns(t, r.unlock, "second unlock")
}

// returns calls f and fails the test if it does not return soon.
func returns(t *testing.T, f func(), what string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
	}
}

// testLockSerializes runs read-modify-write cycles from many goroutines;
// without mutual exclusion some increments would be lost.
func testLockSerializes(t *testing.T, s Store) {
	const key, n = "https://mcp.example.com/mcp", 16
	mustSave(t, s, &Grant{Key: key, AccessToken: "0"})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			unlock, err := s.Lock(t.Context(), key)
			if err != nil {
				errs <- err
				return
			}
			defer unlock()
			g, err := s.Load(t.Context(), key)
			if err != nil {
				errs <- err
				return
			}
			v, _ := strconv.Atoi(g.AccessToken)
			time.Sleep(time.Millisecond)
			g.AccessToken = strconv.Itoa(v + 1)
			errs <- s.Save(t.Context(), g)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := mustLoad(t, s, key).AccessToken; got != strconv.Itoa(n) {
		t.Errorf("counter = %s after %d locked increments, want %d", got, n, n)
	}
}

// testOneRefresh runs the protocol of DESIGN §3.1 rule 7 from many
// goroutines that all saw the same token fail: lock, reload, refresh only
// if the token is still the failed one, save, unlock. Exactly one
// refreshes; the others pick up its token.
func testOneRefresh(t *testing.T, s Store) {
	const key, n = "https://mcp.example.com/mcp", 10
	mustSave(t, s, &Grant{Key: key, AccessToken: "old", RefreshToken: "r0"})
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		refreshes int
		seen      = map[string]int{}
	)
	for i := range n {
		wg.Go(func() {
			unlock, err := s.Lock(t.Context(), key)
			if err != nil {
				t.Error(err)
				return
			}
			defer unlock()
			g, err := s.Load(t.Context(), key)
			if err != nil {
				t.Error(err)
				return
			}
			if g.AccessToken == "old" {
				time.Sleep(20 * time.Millisecond) // the token request
				g.AccessToken, g.RefreshToken = fmt.Sprintf("new-%d", i), "r1"
				if err := s.Save(t.Context(), g); err != nil {
					t.Error(err)
				}
				mu.Lock()
				refreshes++
				mu.Unlock()
			}
			mu.Lock()
			seen[g.AccessToken]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if refreshes != 1 || len(seen) != 1 {
		t.Errorf("refreshes = %d, tokens used = %v; want one refresh whose token all %d use", refreshes, seen, n)
	}
}

// DeleteRegistration forgets every registration of (issuer, client ID) and
// nothing else.
func testDeleteRegistration(t *testing.T, s Store) {
	ctx := t.Context()
	a := fullRegistration("https://as.example/", "http://127.0.0.1/cb")
	b := fullRegistration("https://as.example/", "http://127.0.0.1/other")
	b.ClientID = "another-client"
	c := fullRegistration("https://other-as.example/", "http://127.0.0.1/cb")
	for _, r := range []*Registration{a, b, c} {
		if err := s.SaveRegistration(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteRegistration(ctx, a.Issuer, a.ClientID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadRegistration(ctx, a.Issuer, a.RedirectURI); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted registration still loads: %v", err)
	}
	for _, r := range []*Registration{b, c} {
		if _, err := s.LoadRegistration(ctx, r.Issuer, r.RedirectURI); err != nil {
			t.Errorf("registration (%s, %s) was deleted too: %v", r.Issuer, r.ClientID, err)
		}
	}
	if err := s.DeleteRegistration(ctx, "https://nothing.example/", "x"); err != nil {
		t.Errorf("deleting nothing: %v", err)
	}
}
