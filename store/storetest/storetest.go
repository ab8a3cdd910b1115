// Package storetest tests implementations of store.Store.
//
// An implementation runs the suite on itself, the way a file system runs
// testing/fstest.TestFS:
//
//	func TestMyStore(t *testing.T) {
//		storetest.TestStore(t, func(t *testing.T) store.Store { return newMyStore(t) })
//		storetest.TestShared(t, func(t *testing.T) (a, b store.Store) { return openTwice(t) })
//	}
//
// The suite checks only what the store.Store documentation promises, so any
// backend (memory, files, a database) can run it unchanged.
package storetest

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

	"github.com/evergrant/evergrant/store"
)

// Timing of the lock tests. A lock held by someone else must keep a waiter
// waiting for at least holdCheck; an operation that should finish must do
// so within slowLimit.
const (
	holdCheck = 100 * time.Millisecond
	slowLimit = 10 * time.Second
)

// TestStore tests that a store.Store behaves as that interface documents:
// grants and registrations round-trip every field (times as the same
// instant) and are copies, not aliases; Save replaces; List returns every
// grant in key order; Delete and DeleteRegistration remove only what they
// name and deleting nothing is not an error; missing entries give
// store.ErrNotFound; invalid saves are refused; a done context fails every
// operation with its error; Lock excludes other holders of the key and no
// one else, ends its wait with the context, is held until unlock even if
// the context ends, does not block reads and writes, and releases once
// however often unlock is called, from any goroutine; concurrent use is
// safe; and the refresh protocol of docs/design.md#client-rule-7 refreshes
// once.
//
// newStore is called once per subtest with that subtest's t and must
// return a new, empty store; it may use t.TempDir and t.Cleanup to make
// and remove its storage.
func TestStore(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	for _, tc := range []struct {
		name string
		test func(*testing.T, store.Store)
	}{
		{"SaveReplaces", testSaveReplaces},
		{"List", testList},
		{"Delete", testDelete},
		{"NotFound", testNotFound},
		{"CopiesNotAliases", testCopies},
		{"SaveInvalid", testSaveInvalid},
		{"Registrations", testRegistrations},
		{"DeleteRegistration", testDeleteRegistration},
		{"GrantsAndRegistrationsApart", testApart},
		{"DoneContext", testDoneContext},
		{"ConcurrentAccess", testConcurrentAccess},
		{"LockExcludes", testLockExcludes},
		{"LockKeysIndependent", testLockKeysIndependent},
		{"LockWithoutGrant", testLockWithoutGrant},
		{"LockIsAdvisory", testLockAdvisory},
		{"LockOutlivesContext", testLockOutlivesContext},
		{"UnlockIdempotent", testUnlockIdempotent},
		{"UnlockFromAnotherGoroutine", testUnlockElsewhere},
		{"LockSerializes", func(t *testing.T, s store.Store) { testLockSerializes(t, s, s) }},
		{"Rule7_OneRefreshPerGrant", func(t *testing.T, s store.Store) { testOneRefresh(t, s, s) }},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, newStore(t)) })
	}
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore) })
	t.Run("LockWaitEndsWithContext", func(t *testing.T) { testLockCancel(t, newStore) })
}

// TestShared tests two handles on the same storage, as two processes (File)
// or two hosts (a database) have them: each sees what the other saved and
// deleted, Lock through one excludes Lock through the other, and the
// refresh protocol of docs/design.md#client-rule-7 refreshes once across
// both.
//
// open is called once per subtest with that subtest's t and must return
// two handles on one new, empty storage. A store that cannot be shared
// (one in memory) may return the same store twice.
func TestShared(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	t.Helper()
	for _, tc := range []struct {
		name string
		test func(t *testing.T, a, b store.Store)
	}{
		{"SeesWrites", testSharedWrites},
		{"LockExcludes", testSharedLock},
		{"LockSerializes", testLockSerializes},
		{"Rule7_OneRefreshPerGrant", testOneRefresh},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := open(t)
			tc.test(t, a, b)
		})
	}
}

// fullGrant returns a grant with every field set. Expiry has nanoseconds
// and a non-UTC zone, to check that the absolute time survives.
func fullGrant(key string) *store.Grant {
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	return &store.Grant{
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

// fullRegistration returns a registration with every field set.
func fullRegistration(issuer, redirectURI string) *store.Registration {
	return &store.Registration{
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
// Equal (the same instant), Scopes with nil equal to empty. It never
// prints token values, only which fields differ.
func grantDiff(got, want *store.Grant) string {
	return recordDiff("grant", got, want, []string{"Expiry", "UpdatedAt"}, "Scopes")
}

// registrationDiff is grantDiff for registrations.
func registrationDiff(got, want *store.Registration) string {
	return recordDiff("registration", got, want, []string{"SecretExpiresAt", "CreatedAt"}, "RedirectURIs")
}

// recordDiff describes how got differs from want, two records (a what)
// with the time.Time fields times and the []string field list: it prints
// those, comparing times with Equal and list with nil equal to empty, and
// names the other fields that differ.
func recordDiff[T any](what string, got, want *T, times []string, list string) string {
	if got == nil || want == nil {
		if got != want {
			return fmt.Sprintf("got a %s: %v, want one: %v", what, got != nil, want != nil)
		}
		return ""
	}
	g, w := reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem()
	var d []string
	for _, name := range times {
		gt, wt := g.FieldByName(name).Interface().(time.Time), w.FieldByName(name).Interface().(time.Time)
		if !gt.Equal(wt) {
			d = append(d, fmt.Sprintf("%s = %v, want %v", name, gt, wt))
		}
	}
	if gl, wl := g.FieldByName(list).Interface().([]string), w.FieldByName(list).Interface().([]string); !slices.Equal(gl, wl) {
		d = append(d, fmt.Sprintf("%s = %q, want %q", list, gl, wl))
	}
	for i := range g.NumField() {
		name := g.Type().Field(i).Name
		if name != list && !slices.Contains(times, name) && !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			d = append(d, name+" differs")
		}
	}
	return strings.Join(d, "; ")
}

func mustSave(t *testing.T, s store.Store, g *store.Grant) {
	t.Helper()
	if err := s.Save(t.Context(), g); err != nil {
		t.Fatalf("Save(%q): %v", g.Key, err)
	}
}

func mustLoad(t *testing.T, s store.Store, key string) *store.Grant {
	t.Helper()
	g, err := s.Load(t.Context(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return g
}

func mustSaveRegistration(t *testing.T, s store.Store, r *store.Registration) {
	t.Helper()
	if err := s.SaveRegistration(t.Context(), r); err != nil {
		t.Fatalf("SaveRegistration(%q, %q): %v", r.Issuer, r.RedirectURI, err)
	}
}

func mustLock(t *testing.T, s store.Store, key string) func() {
	t.Helper()
	unlock, err := s.Lock(t.Context(), key)
	if err != nil {
		t.Fatalf("Lock(%q): %v", key, err)
	}
	return unlock
}

func mustList(t *testing.T, s store.Store) []*store.Grant {
	t.Helper()
	list, err := s.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return list
}

func keys(list []*store.Grant) []string {
	var ks []string
	for _, g := range list {
		ks = append(ks, g.Key)
	}
	return ks
}

func testRoundTrip(t *testing.T, newStore func(*testing.T) store.Store) {
	local := time.Now().Add(90 * time.Minute) // with a monotonic reading
	for _, tc := range []struct {
		name  string
		grant *store.Grant
	}{
		{"all fields", fullGrant("https://mcp.example.com/mcp")},
		{"key only", &store.Grant{Key: "https://k.example/"}},
		{"expiry from time.Now", &store.Grant{Key: "https://now.example/", AccessToken: "a", Expiry: local}},
		{"empty scopes", &store.Grant{Key: "https://e.example/", Scopes: []string{}}},
		{"unusual key", &store.Grant{Key: "héllo wörld/../\x00\n'\"; --", AccessToken: "x"}},
		{"long key", &store.Grant{Key: "https://long.example/" + strings.Repeat("p/", 1000), AccessToken: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			mustSave(t, s, tc.grant)
			got := mustLoad(t, s, tc.grant.Key)
			if d := grantDiff(got, tc.grant); d != "" {
				t.Errorf("Load after Save: %s", d)
			}
			list := mustList(t, s)
			if len(list) != 1 {
				t.Fatalf("List = %d grants, want 1", len(list))
			}
			if d := grantDiff(list[0], tc.grant); d != "" {
				t.Errorf("List after Save: %s", d)
			}
		})
	}
	t.Run("registration", func(t *testing.T) {
		s := newStore(t)
		for _, r := range []*store.Registration{
			fullRegistration("https://as.example.com/tenant", "http://127.0.0.1:8765/callback"),
			{Issuer: "https://bare.example/", RedirectURI: "http://127.0.0.1/cb", ClientID: "c"},
			{Issuer: "héllo\x00\n'\"", RedirectURI: "wörld; --", ClientID: "c"},
		} {
			mustSaveRegistration(t, s, r)
			got, err := s.LoadRegistration(t.Context(), r.Issuer, r.RedirectURI)
			if err != nil {
				t.Fatalf("LoadRegistration(%q, %q): %v", r.Issuer, r.RedirectURI, err)
			}
			if d := registrationDiff(got, r); d != "" {
				t.Errorf("LoadRegistration(%q, %q) after Save: %s", r.Issuer, r.RedirectURI, d)
			}
		}
	})
}

func testSaveReplaces(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	mustSave(t, s, fullGrant(key))
	repl := &store.Grant{Key: key, AccessToken: "second", Scopes: []string{"only"}}
	mustSave(t, s, repl)
	if d := grantDiff(mustLoad(t, s, key), repl); d != "" {
		t.Errorf("Load after second Save: %s", d)
	}
	if list := mustList(t, s); len(list) != 1 {
		t.Errorf("List after saving one key twice = %d grants, want 1", len(list))
	}
}

func testList(t *testing.T, s store.Store) {
	if list := mustList(t, s); len(list) != 0 {
		t.Fatalf("List of an empty store = %q, want none", keys(list))
	}
	ks := []string{"https://c.example/mcp", "https://a.example/mcp", "https://b.example/mcp", "https://a.example/mcp/2", "https://A.example/mcp"}
	for _, k := range ks {
		mustSave(t, s, fullGrant(k))
	}
	list := mustList(t, s)
	for _, g := range list {
		if d := grantDiff(g, fullGrant(g.Key)); d != "" {
			t.Errorf("List: grant %q: %s", g.Key, d)
		}
	}
	// Key order is byte order (strings.Compare), whatever the backend's
	// collation.
	if got, want := keys(list), slices.Sorted(slices.Values(ks)); !slices.Equal(got, want) {
		t.Errorf("List keys = %q, want %q (byte order)", got, want)
	}
}

func testDelete(t *testing.T, s store.Store) {
	mustSave(t, s, fullGrant("https://a.example/"))
	mustSave(t, s, fullGrant("https://b.example/"))
	mustSave(t, s, fullGrant("https://a.example/2"))
	for _, key := range []string{"https://a.example/", "https://a.example/", "https://never.example/", "https://a.example"} {
		if err := s.Delete(t.Context(), key); err != nil {
			t.Errorf("Delete(%q) = %v, want nil", key, err)
		}
	}
	if g, err := s.Load(t.Context(), "https://a.example/"); !errors.Is(err, store.ErrNotFound) || g != nil {
		t.Errorf("Load after Delete = %v, %v; want nil, ErrNotFound", g != nil, err)
	}
	if got, want := keys(mustList(t, s)), []string{"https://a.example/2", "https://b.example/"}; !slices.Equal(got, want) {
		t.Errorf("List after Delete = %q, want %q", got, want)
	}
	// A deleted key can be saved again.
	mustSave(t, s, fullGrant("https://a.example/"))
	if d := grantDiff(mustLoad(t, s, "https://a.example/"), fullGrant("https://a.example/")); d != "" {
		t.Errorf("Load after Save of a deleted key: %s", d)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	if g, err := s.Load(t.Context(), "https://missing.example/"); !errors.Is(err, store.ErrNotFound) || g != nil {
		t.Errorf("Load(missing) = %v, %v; want nil, ErrNotFound", g != nil, err)
	}
	if r, err := s.LoadRegistration(t.Context(), "https://as.example/", "http://127.0.0.1/cb"); !errors.Is(err, store.ErrNotFound) || r != nil {
		t.Errorf("LoadRegistration(missing) = %v, %v; want nil, ErrNotFound", r != nil, err)
	}
}

func testCopies(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	g := fullGrant(key)
	mustSave(t, s, g)
	g.AccessToken, g.Scopes[0] = "changed after Save", "changed after Save"

	loaded := mustLoad(t, s, key)
	if d := grantDiff(loaded, fullGrant(key)); d != "" {
		t.Fatalf("changing the saved grant changed the store: %s", d)
	}
	loaded.AccessToken, loaded.Scopes[0] = "changed after Load", "changed after Load"
	list := mustList(t, s)
	list[0].AccessToken, list[0].Scopes[1] = "changed after List", "changed after List"
	if d := grantDiff(mustLoad(t, s, key), fullGrant(key)); d != "" {
		t.Errorf("changing a loaded grant changed the store: %s", d)
	}

	const iss, redir = "https://as.example/", "http://127.0.0.1/cb"
	r := fullRegistration(iss, redir)
	mustSaveRegistration(t, s, r)
	r.ClientID, r.RedirectURIs[0] = "changed", "changed"
	lr, err := s.LoadRegistration(t.Context(), iss, redir)
	if err != nil {
		t.Fatal(err)
	}
	lr.RedirectURIs[1] = "changed"
	lr, err = s.LoadRegistration(t.Context(), iss, redir)
	if err != nil {
		t.Fatal(err)
	}
	if d := registrationDiff(lr, fullRegistration(iss, redir)); d != "" {
		t.Errorf("registration aliased: %s", d)
	}
}

func testSaveInvalid(t *testing.T, s store.Store) {
	if err := s.Save(t.Context(), nil); err == nil {
		t.Error("Save(nil) = nil, want an error")
	}
	if err := s.Save(t.Context(), &store.Grant{AccessToken: "x"}); err == nil {
		t.Error("Save(grant without key) = nil, want an error")
	}
	if err := s.SaveRegistration(t.Context(), nil); err == nil {
		t.Error("SaveRegistration(nil) = nil, want an error")
	}
	if list := mustList(t, s); len(list) != 0 {
		t.Errorf("List after invalid saves = %q, want none", keys(list))
	}
}

func testRegistrations(t *testing.T, s store.Store) {
	type pair struct{ issuer, redirect string }
	pairs := []pair{
		{"https://as.example/", "http://127.0.0.1/callback"},
		{"https://as.example/", "http://127.0.0.1/other"},
		{"https://as2.example/", "http://127.0.0.1/callback"},
	}
	for _, p := range pairs {
		mustSaveRegistration(t, s, fullRegistration(p.issuer, p.redirect))
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
	// A different (issuer, redirect URI) pair is not found, nor is a pair
	// whose parts run together differently.
	for _, p := range []pair{{"https://as2.example/", "http://127.0.0.1/other"}, {"https://as.example/http://127.0.0.1/", "callback"}} {
		if _, err := s.LoadRegistration(t.Context(), p.issuer, p.redirect); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LoadRegistration(%q, %q) of an unsaved pair: err = %v, want ErrNotFound", p.issuer, p.redirect, err)
		}
	}
	// Replacing.
	repl := &store.Registration{Issuer: pairs[0].issuer, RedirectURI: pairs[0].redirect, ClientID: "second"}
	mustSaveRegistration(t, s, repl)
	r, err := s.LoadRegistration(t.Context(), pairs[0].issuer, pairs[0].redirect)
	if err != nil {
		t.Fatal(err)
	}
	if d := registrationDiff(r, repl); d != "" {
		t.Errorf("after replacing: %s", d)
	}
}

// testDeleteRegistration: DeleteRegistration forgets every registration of
// (issuer, client ID), under any redirect URI, and nothing else.
func testDeleteRegistration(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := fullRegistration("https://as.example/", "http://127.0.0.1/cb")
	a2 := fullRegistration("https://as.example/", "http://127.0.0.1/second") // same client ID as a
	b := fullRegistration("https://as.example/", "http://127.0.0.1/other")
	b.ClientID = "another-client"
	c := fullRegistration("https://other-as.example/", "http://127.0.0.1/cb")
	c.ClientID = a.ClientID // the same client ID at another issuer
	for _, r := range []*store.Registration{a, a2, b, c} {
		mustSaveRegistration(t, s, r)
	}
	if err := s.DeleteRegistration(ctx, a.Issuer, a.ClientID); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*store.Registration{a, a2} {
		if _, err := s.LoadRegistration(ctx, r.Issuer, r.RedirectURI); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted registration (%s, %s) still loads: err = %v", r.Issuer, r.RedirectURI, err)
		}
	}
	for _, r := range []*store.Registration{b, c} {
		if _, err := s.LoadRegistration(ctx, r.Issuer, r.RedirectURI); err != nil {
			t.Errorf("registration (%s, %s) was deleted too: %v", r.Issuer, r.RedirectURI, err)
		}
	}
	for _, del := range [][2]string{{"https://nothing.example/", "x"}, {a.Issuer, a.ClientID}} {
		if err := s.DeleteRegistration(ctx, del[0], del[1]); err != nil {
			t.Errorf("DeleteRegistration(%q, %q) of nothing: %v", del[0], del[1], err)
		}
	}
}

// testApart: grants and registrations live apart; deleting one kind
// leaves the other.
func testApart(t *testing.T, s store.Store) {
	ctx := t.Context()
	const iss, redir = "https://as.example.com/tenant", "http://127.0.0.1/cb"
	r := fullRegistration(iss, redir)
	r.ClientID = "client-1" // the ClientID of fullGrant
	mustSaveRegistration(t, s, r)
	if list := mustList(t, s); len(list) != 0 {
		t.Errorf("List with only registrations = %q, want none", keys(list))
	}
	const key = "https://mcp.example.com/mcp"
	mustSave(t, s, fullGrant(key))
	if err := s.DeleteRegistration(ctx, iss, "client-1"); err != nil {
		t.Fatal(err)
	}
	if d := grantDiff(mustLoad(t, s, key), fullGrant(key)); d != "" {
		t.Errorf("DeleteRegistration changed a grant of that client: %s", d)
	}
	mustSaveRegistration(t, s, r)
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadRegistration(ctx, iss, redir); err != nil {
		t.Errorf("Delete of a grant removed the registration of its client: %v", err)
	}
}

func testDoneContext(t *testing.T, s store.Store) {
	const key = "https://a.example/"
	mustSave(t, s, fullGrant(key))
	r := fullRegistration("https://as.example/", "http://127.0.0.1/cb")
	mustSaveRegistration(t, s, r)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, op := range []struct {
		name string
		f    func() error
	}{
		{"Load", func() error { _, err := s.Load(ctx, key); return err }},
		{"Save", func() error { return s.Save(ctx, fullGrant("https://b.example/")) }},
		{"Delete", func() error { return s.Delete(ctx, key) }},
		{"List", func() error { _, err := s.List(ctx); return err }},
		{"LoadRegistration", func() error { _, err := s.LoadRegistration(ctx, r.Issuer, r.RedirectURI); return err }},
		{"SaveRegistration", func() error { return s.SaveRegistration(ctx, fullRegistration("i", "r")) }},
		{"DeleteRegistration", func() error { return s.DeleteRegistration(ctx, r.Issuer, r.ClientID) }},
		{"Lock", func() error {
			unlock, err := s.Lock(ctx, key)
			if unlock != nil {
				unlock()
			}
			return err
		}},
	} {
		if err := op.f(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want context.Canceled", op.name, err)
		}
	}
	if got := keys(mustList(t, s)); !slices.Equal(got, []string{key}) {
		t.Errorf("operations with a cancelled context changed the grants: %q", got)
	}
	if _, err := s.LoadRegistration(t.Context(), r.Issuer, r.RedirectURI); err != nil {
		t.Errorf("operations with a cancelled context changed the registrations: %v", err)
	}
	if _, err := s.LoadRegistration(t.Context(), "i", "r"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SaveRegistration with a cancelled context saved: err = %v", err)
	}
	// The lock was not taken.
	mustLock(t, s, key)()
}

// testConcurrentAccess runs every operation from many goroutines at once,
// on their own keys and on shared ones. A torn write (the fields of two
// Saves mixed) or a lost one is an error; run it with -race.
func testConcurrentAccess(t *testing.T, s store.Store) {
	const workers, rounds, shared = 8, 20, "https://shared.example/mcp"
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			own := fmt.Sprintf("https://w%d.example/mcp", w)
			for i := range rounds {
				v := fmt.Sprintf("%d-%d", w, i)
				for _, key := range []string{own, shared} {
					g := &store.Grant{Key: key, AccessToken: "at-" + v, RefreshToken: "rt-" + v, Scopes: []string{v}}
					if err := s.Save(ctx, g); err != nil {
						t.Errorf("Save(%q): %v", key, err)
						return
					}
				}
				got, err := s.Load(ctx, own)
				if err != nil {
					t.Errorf("Load(%q): %v", own, err)
					return
				}
				if got.AccessToken != "at-"+v {
					t.Errorf("Load(%q) right after its only writer saved round %s: got another value", own, v)
				}
				sh, err := s.Load(ctx, shared)
				if err != nil {
					t.Errorf("Load(%q): %v", shared, err)
					return
				}
				checkWhole(t, sh)
				list, err := s.List(ctx)
				if err != nil {
					t.Errorf("List: %v", err)
					return
				}
				for _, g := range list {
					checkWhole(t, g)
				}
				reg := &store.Registration{Issuer: "https://as.example/", RedirectURI: own, ClientID: "c-" + v}
				if err := s.SaveRegistration(ctx, reg); err != nil {
					t.Errorf("SaveRegistration: %v", err)
					return
				}
				if r, err := s.LoadRegistration(ctx, reg.Issuer, own); err != nil || r.ClientID != reg.ClientID {
					t.Errorf("LoadRegistration right after its only writer saved: %v", err)
				}
				if i%5 == 4 {
					if err := s.Delete(ctx, own); err != nil {
						t.Errorf("Delete(%q): %v", own, err)
					}
					if err := s.DeleteRegistration(ctx, reg.Issuer, reg.ClientID); err != nil {
						t.Errorf("DeleteRegistration: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
	list := mustList(t, s)
	if len(list) != 1 || list[0].Key != shared {
		t.Errorf("List at the end = %q, want only %q (each worker deleted its own grant last)", keys(list), shared)
	}
}

// checkWhole fails if g mixes the fields of two Saves of testConcurrentAccess.
func checkWhole(t *testing.T, g *store.Grant) {
	t.Helper()
	v, ok := strings.CutPrefix(g.AccessToken, "at-")
	if !ok || g.RefreshToken != "rt-"+v || !slices.Equal(g.Scopes, []string{v}) {
		t.Errorf("grant %q mixes two Saves (a torn write)", g.Key)
	}
}

// lockAsync calls Lock in a goroutine and returns a channel that gets its
// outcome.
func lockAsync(ctx context.Context, s store.Store, key string) <-chan lockResult {
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

// notYet asserts that nothing arrives on ch for holdCheck.
func notYet(t *testing.T, ch <-chan lockResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		if r.unlock != nil {
			r.unlock()
		}
		t.Fatalf("%s returned (err %v) while the lock was held", what, r.err)
	case <-time.After(holdCheck):
	}
}

// soon returns what arrives on ch, failing if nothing does within
// slowLimit.
func soon(t *testing.T, ch <-chan lockResult, what string) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(slowLimit):
		t.Fatalf("%s did not return", what)
		return lockResult{}
	}
}

// locked waits for ch and fails unless it got the lock.
func locked(t *testing.T, ch <-chan lockResult, what string) func() {
	t.Helper()
	r := soon(t, ch, what)
	if r.err != nil {
		t.Fatalf("%s: %v", what, r.err)
	}
	return r.unlock
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
	case <-time.After(slowLimit):
		t.Fatalf("%s did not return", what)
	}
}

func testLockExcludes(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	unlock := mustLock(t, s, key)
	second := lockAsync(t.Context(), s, key)
	notYet(t, second, "second Lock")
	unlock()
	locked(t, second, "second Lock after unlock")()
}

func testLockKeysIndependent(t *testing.T, s store.Store) {
	unlockA := mustLock(t, s, "https://a.example/")
	defer unlockA()
	// Keys that a careless backend might conflate: a prefix, another case.
	for _, key := range []string{"https://b.example/", "https://a.example/mcp", "https://a.example", "https://A.example/"} {
		locked(t, lockAsync(t.Context(), s, key), "Lock("+key+") while another key is held")()
	}
}

// testLockWithoutGrant: a key need not have a grant to be locked, and
// locking one does not create a grant.
func testLockWithoutGrant(t *testing.T, s store.Store) {
	const key = "https://never-saved.example/"
	unlock := mustLock(t, s, key)
	if g, err := s.Load(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Load of a locked key without a grant = %v, %v; want ErrNotFound", g != nil, err)
	}
	// The holder may save the key's first grant.
	mustSave(t, s, &store.Grant{Key: key, AccessToken: "first"})
	unlock()
	if got := keys(mustList(t, s)); !slices.Equal(got, []string{key}) {
		t.Errorf("List = %q, want only the grant saved under the lock", got)
	}
	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	mustLock(t, s, "https://other.example/")()
	if list := mustList(t, s); len(list) != 0 {
		t.Errorf("Lock and unlock left grants %q", keys(list))
	}
}

// testLockAdvisory: the lock excludes only other Lock calls. While a key is
// held, anyone may still Load, Save, List and Delete it: the client reads
// grants without the lock and takes it only to refresh.
func testLockAdvisory(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	mustSave(t, s, fullGrant(key))
	unlock := mustLock(t, s, key)
	defer unlock()
	done := make(chan error, 1)
	go func() {
		ctx := t.Context()
		if _, err := s.Load(ctx, key); err != nil {
			done <- fmt.Errorf("calling Load: %w", err)
			return
		}
		if err := s.Save(ctx, &store.Grant{Key: key, AccessToken: "saved while locked"}); err != nil {
			done <- fmt.Errorf("calling Save: %w", err)
			return
		}
		if _, err := s.List(ctx); err != nil {
			done <- fmt.Errorf("calling List: %w", err)
			return
		}
		if err := s.Delete(ctx, key); err != nil {
			done <- fmt.Errorf("calling Delete: %w", err)
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v while another goroutine holds the lock", err)
		}
	case <-time.After(slowLimit):
		t.Fatal("Load, Save, List or Delete waited for the lock of the key")
	}
}

// testLockOutlivesContext: the context bounds the wait, not the hold. A
// lock taken with a context that ends later stays held until unlock.
func testLockOutlivesContext(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	ctx, cancel := context.WithCancel(t.Context())
	unlock, err := s.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waiter := lockAsync(t.Context(), s, key)
	notYet(t, waiter, "Lock after the holder's context ended")
	returns(t, unlock, "unlock after its context ended")
	locked(t, waiter, "Lock after unlock")()
}

func testLockCancel(t *testing.T, newStore func(*testing.T) store.Store) {
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
			s := newStore(t)
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
			if d := time.Since(start); d > slowLimit/2 {
				t.Errorf("Lock took %v to notice its context", d)
			}
			// The abandoned wait leaves the lock working.
			waiter := lockAsync(t.Context(), s, key)
			notYet(t, waiter, "Lock after an abandoned wait")
			unlock()
			locked(t, waiter, "Lock after unlock")()
		})
	}
}

func testUnlockIdempotent(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	unlockA := mustLock(t, s, key)
	returns(t, unlockA, "unlock")
	returns(t, unlockA, "second unlock")
	unlockB := mustLock(t, s, key)
	returns(t, unlockA, "stale unlock") // must not release B's lock
	third := lockAsync(t.Context(), s, key)
	notYet(t, third, "Lock after a stale unlock")
	returns(t, unlockB, "unlock")
	unlockC := locked(t, third, "Lock after unlock")
	returns(t, unlockC, "unlock")
	returns(t, unlockC, "second unlock")
}

// testUnlockElsewhere: the unlock function may be called from another
// goroutine than the one that called Lock (a refresh that finishes in the
// background).
func testUnlockElsewhere(t *testing.T, s store.Store) {
	const key = "https://mcp.example.com/mcp"
	unlock := locked(t, lockAsync(t.Context(), s, key), "Lock")
	waiter := lockAsync(t.Context(), s, key)
	notYet(t, waiter, "second Lock")
	returns(t, unlock, "unlock from another goroutine")
	locked(t, waiter, "Lock after unlock from another goroutine")()
}

// testLockSerializes runs read-modify-write cycles from many goroutines,
// alternating between a and b; without mutual exclusion some increments
// would be lost.
func testLockSerializes(t *testing.T, a, b store.Store) {
	const key, n = "https://mcp.example.com/mcp", 16
	mustSave(t, a, &store.Grant{Key: key, AccessToken: "0"})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
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
	if got := mustLoad(t, a, key).AccessToken; got != strconv.Itoa(n) {
		t.Errorf("counter = %s after %d locked increments, want %d", got, n, n)
	}
}

// testOneRefresh runs the protocol of docs/design.md#client-rule-7 from many
// goroutines (alternating between a and b) that all saw the same token
// fail: lock, reload, refresh only if the token is still the failed one,
// save, unlock. Exactly one refreshes; the others pick up its token.
func testOneRefresh(t *testing.T, a, b store.Store) {
	const key, n = "https://mcp.example.com/mcp", 10
	mustSave(t, a, &store.Grant{Key: key, AccessToken: "old", RefreshToken: "r0"})
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		refreshes int
		seen      = map[string]int{}
	)
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
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
		t.Errorf("refreshes = %d, distinct tokens used = %d; want one refresh whose token all %d use", refreshes, len(seen), n)
	}
	if g := mustLoad(t, b, key); g.RefreshToken != "r1" {
		t.Errorf("stored refresh token after the refresh is not the rotated one")
	}
}

// testSharedWrites: what one handle saves or deletes, the other sees.
func testSharedWrites(t *testing.T, a, b store.Store) {
	ctx := t.Context()
	const key = "https://mcp.example.com/mcp"
	mustSave(t, a, fullGrant(key))
	if d := grantDiff(mustLoad(t, b, key), fullGrant(key)); d != "" {
		t.Errorf("Load through b of a grant saved through a: %s", d)
	}
	if got := keys(mustList(t, b)); !slices.Equal(got, []string{key}) {
		t.Errorf("List through b = %q, want %q", got, key)
	}
	repl := &store.Grant{Key: key, AccessToken: "second"}
	mustSave(t, b, repl)
	if d := grantDiff(mustLoad(t, a, key), repl); d != "" {
		t.Errorf("Load through a after b replaced the grant: %s", d)
	}
	if err := b.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Load through a after b deleted the grant: err = %v, want ErrNotFound", err)
	}

	r := fullRegistration("https://as.example/", "http://127.0.0.1/cb")
	mustSaveRegistration(t, a, r)
	got, err := b.LoadRegistration(ctx, r.Issuer, r.RedirectURI)
	if err != nil {
		t.Fatalf("LoadRegistration through b of a registration saved through a: %v", err)
	}
	if d := registrationDiff(got, r); d != "" {
		t.Errorf("LoadRegistration through b: %s", d)
	}
	if err := b.DeleteRegistration(ctx, r.Issuer, r.ClientID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.LoadRegistration(ctx, r.Issuer, r.RedirectURI); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LoadRegistration through a after b deleted it: err = %v, want ErrNotFound", err)
	}
}

// testSharedLock: Lock through one handle excludes Lock through the other,
// both ways.
func testSharedLock(t *testing.T, a, b store.Store) {
	const key = "https://mcp.example.com/mcp"
	for _, hs := range [][2]store.Store{{a, b}, {b, a}} {
		unlock := mustLock(t, hs[0], key)
		waiter := lockAsync(t.Context(), hs[1], key)
		notYet(t, waiter, "Lock through the other handle")
		unlock()
		locked(t, waiter, "Lock through the other handle after unlock")()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	unlock := mustLock(t, a, key)
	defer unlock()
	if r := soon(t, lockAsync(ctx, b, key), "Lock through b with a deadline"); !errors.Is(r.err, context.DeadlineExceeded) {
		if r.unlock != nil {
			r.unlock()
		}
		t.Errorf("Lock through b while a holds the key = %v, want context.DeadlineExceeded", r.err)
	}
}
