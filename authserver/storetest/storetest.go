// Package storetest tests implementations of authserver.Store.
//
// An implementation runs the suite on itself, the way a file system runs
// testing/fstest.TestFS:
//
//	func TestMyStore(t *testing.T) {
//		storetest.TestStore(t, func(t *testing.T) authserver.Store { return newMyStore(t) })
//		storetest.TestShared(t, func(t *testing.T) (a, b authserver.Store) { return openTwice(t) })
//	}
//
// The suite checks only what the authserver.Store documentation promises
// (single-use codes, compare-and-set rotation of refresh tokens, final
// revocation, copies, expiry), so any backend can run it unchanged.
package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

// TestStore tests that an authserver.Store keeps each of its contracts,
// one subtest per rule, grouped by the part of Store it tests (Clients,
// Grants, Codes, RefreshTokens, AccessTokens, DeleteExpired, Bounds).
//
// newStore is called once per subtest with that subtest's t and must
// return a new, empty store; it may use t.TempDir and t.Cleanup to make
// and remove its storage.
func TestStore(t *testing.T, newStore func(t *testing.T) authserver.Store) {
	t.Helper()
	for _, tc := range []struct {
		name string
		test func(*testing.T, authserver.Store)
	}{
		{"Clients/RoundTrip", testClientRoundTrip},
		{"Clients/SaveReplaces", testClientReplace},
		{"Clients/NotFound", testClientNotFound},
		{"Clients/CopiesNotAliases", testClientCopies},

		{"Grants/RoundTrip", testGrantRoundTrip},
		{"Grants/SaveUpdates", testGrantUpdate},
		{"Grants/NotFound", testGrantNotFound},
		{"Grants/RevokedStaysRevoked", testGrantRevokedStays},
		{"Grants/RevocationWinsOverConcurrentSaves", func(t *testing.T, s authserver.Store) { testRevokeRacesSave(t, s, s) }},
		{"Grants/CopiesNotAliases", testGrantCopies},

		{"Codes/RoundTrip", testCodeRoundTrip},
		{"Codes/SingleUse", testCodeSingleUse},
		{"Codes/NotFound", testCodeNotFound},
		{"Codes/ConcurrentTakeOnce", func(t *testing.T, s authserver.Store) { testCodeConcurrent(t, s, s) }},
		{"Codes/Independent", testCodesIndependent},

		{"RefreshTokens/RoundTrip", testRefreshRoundTrip},
		{"RefreshTokens/Rotate", testRotate},
		{"RefreshTokens/RotateOnce", testRotateOnce},
		{"RefreshTokens/RotateMissing", testRotateMissing},
		{"RefreshTokens/RotationChain", testRotateChain},
		{"RefreshTokens/ConcurrentRotateOnce", func(t *testing.T, s authserver.Store) { testRotateConcurrent(t, s, s) }},

		{"AccessTokens/RoundTrip", testAccessRoundTrip},
		{"AccessTokens/Revoke", testAccessRevoke},
		{"AccessTokens/NotFound", testAccessNotFound},

		{"Keys/InitThenLoad", testKeysInit},
		{"Keys/SaveReplaces", testKeysSave},
		{"Keys/CopiesNotAliases", testKeysCopies},

		{"DeleteExpired", testDeleteExpired},
		{"Bounds", testBounds},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, newStore(t)) })
	}
	t.Run("Grants/RevokeGrantsFilter", func(t *testing.T) { testRevokeGrants(t, newStore) })
}

// TestShared tests two handles on the same storage, as two replicas of an
// authorization server have them: each sees what the other saved, a code
// is taken once and a refresh token rotated once across both, and a
// revocation through one wins over saves through the other.
//
// open is called once per subtest with that subtest's t and must return
// two handles on one new, empty storage. A store that cannot be shared
// (one in memory) may return the same store twice.
func TestShared(t *testing.T, open func(t *testing.T) (a, b authserver.Store)) {
	t.Helper()
	for _, tc := range []struct {
		name string
		test func(t *testing.T, a, b authserver.Store)
	}{
		{"SeesWrites", testSharedWrites},
		{"Codes/ConcurrentTakeOnce", testCodeConcurrent},
		{"RefreshTokens/ConcurrentRotateOnce", testRotateConcurrent},
		{"Grants/RevocationWinsOverConcurrentSaves", testRevokeRacesSave},
		{"Keys/ConcurrentInitOnce", testKeysInitConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := open(t)
			tc.test(t, a, b)
		})
	}
}

// base is the instant the records of the suite are made around. It has
// nanoseconds and a non-UTC zone, to check that instants survive.
var base = time.Date(2031, 4, 5, 6, 7, 8, 123456789, time.FixedZone("UTC+5:30", 5*3600+1800))

func fullClient(id string) *authserver.Client {
	exp := int64(1999999999)
	return &authserver.Client{
		ID:         id,
		SecretHash: []byte{0x00, 0x01, 0xfe, 0xff, 's', 'e', 'c', 'r', 'e', 't', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42},
		Metadata: oauth.ClientMetadata{
			ClientID:                id,
			ClientIDIssuedAt:        1900000000,
			ClientSecretExpiresAt:   &exp,
			RedirectURIs:            []string{"http://127.0.0.1/callback", "https://app.example.com/cb?x=1", "com.example.app:/oauth"},
			TokenEndpointAuthMethod: oauth.AuthMethodClientSecretPost,
			GrantTypes:              []string{oauth.GrantTypeAuthorizationCode, oauth.GrantTypeRefreshToken},
			ResponseTypes:           []string{"code"},
			ClientName:              "Ünïcode client ✓",
			ClientURI:               "https://app.example.com/",
			LogoURI:                 "https://app.example.com/logo.png",
			Scope:                   "files.read offline_access",
			Contacts:                []string{"a@example.com", "b@example.com"},
			TosURI:                  "https://app.example.com/tos",
			PolicyURI:               "https://app.example.com/policy",
			JWKSURI:                 "https://app.example.com/jwks.json",
			SoftwareID:              "4NRB1-0XZABZI9E6-5SM3R",
			ApplicationType:         "native",
			SoftwareVersion:         "1.2.3",
		},
		CreatedAt: base,
		Dynamic:   true,
	}
}

func fullGrant(id string) *authserver.Grant {
	return &authserver.Grant{
		ID:        id,
		ClientID:  "client-1",
		Subject:   "user-1",
		Resource:  "https://mcp.example.com/mcp",
		Scopes:    []string{"files.read", "offline_access"},
		CreatedAt: base,
		ExpiresAt: base.Add(30 * 24 * time.Hour),
	}
}

func fullCode(hash, grantID string) *authserver.Code {
	return &authserver.Code{
		Hash:          hash,
		GrantID:       grantID,
		ClientID:      "client-1",
		RedirectURI:   "http://127.0.0.1:8765/callback",
		CodeChallenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
		Scopes:        []string{"files.read", "offline_access"},
		Resource:      "https://mcp.example.com/mcp",
		Subject:       "user-1",
		ExpiresAt:     base.Add(time.Minute),
	}
}

func fullRefresh(hash, grantID string) *authserver.RefreshToken {
	return &authserver.RefreshToken{
		Hash:      hash,
		GrantID:   grantID,
		ClientID:  "client-1",
		Scopes:    []string{"files.read", "offline_access"},
		IssuedAt:  base,
		ExpiresAt: base.Add(30 * 24 * time.Hour),
	}
}

func fullAccess(jti, grantID string) *authserver.AccessToken {
	return &authserver.AccessToken{
		JTI:       jti,
		GrantID:   grantID,
		ClientID:  "client-1",
		Subject:   "user-1",
		Resource:  "https://mcp.example.com/mcp",
		Scopes:    []string{"files.read"},
		IssuedAt:  base,
		ExpiresAt: base.Add(time.Hour),
	}
}

// diff describes how got differs from want, two records of one type: times
// are compared as instants, and a nil slice equals an empty one. It names
// the fields that differ, never their values (some are secrets' hashes).
func diff(got, want any) string {
	var d []string
	diffValue(reflect.ValueOf(got), reflect.ValueOf(want), "", &d)
	return strings.Join(d, "; ")
}

var timeType = reflect.TypeFor[time.Time]()

func diffValue(g, w reflect.Value, path string, d *[]string) {
	name := path
	if name == "" {
		name = "the record"
	}
	switch {
	case g.Type() == timeType:
		gt, wt := g.Interface().(time.Time), w.Interface().(time.Time)
		if !gt.Equal(wt) {
			*d = append(*d, fmt.Sprintf("%s = %v, want %v", name, gt, wt))
		}
		return
	}
	switch g.Kind() {
	case reflect.Pointer:
		if g.IsNil() || w.IsNil() {
			if g.IsNil() != w.IsNil() {
				*d = append(*d, fmt.Sprintf("%s is nil: %v, want nil: %v", name, g.IsNil(), w.IsNil()))
			}
			return
		}
		diffValue(g.Elem(), w.Elem(), path, d)
	case reflect.Struct:
		for i := range g.NumField() {
			f := g.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			p := f.Name
			if path != "" {
				p = path + "." + f.Name
			}
			diffValue(g.Field(i), w.Field(i), p, d)
		}
	case reflect.Slice:
		if g.Len() != w.Len() {
			*d = append(*d, fmt.Sprintf("%s has %d elements, want %d", name, g.Len(), w.Len()))
			return
		}
		for i := range g.Len() {
			diffValue(g.Index(i), w.Index(i), fmt.Sprintf("%s[%d]", name, i), d)
		}
	default:
		if !reflect.DeepEqual(g.Interface(), w.Interface()) {
			*d = append(*d, name+" differs")
		}
	}
}

func check(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, authserver.ErrNotFound) {
		t.Errorf("%s: err = %v, want ErrNotFound", what, err)
	}
}

func loadGrant(t *testing.T, s authserver.Store, id string) *authserver.Grant {
	t.Helper()
	g, err := s.Grant(t.Context(), id)
	check(t, "Grant("+id+")", err)
	return g
}

func loadRefresh(t *testing.T, s authserver.Store, hash string) *authserver.RefreshToken {
	t.Helper()
	rt, err := s.RefreshToken(t.Context(), hash)
	check(t, "RefreshToken("+hash+")", err)
	return rt
}

// Clients.

func testClientRoundTrip(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	for _, c := range []*authserver.Client{
		fullClient("dynamic-client"),
		{ID: "public", Metadata: oauth.ClientMetadata{ClientID: "public", RedirectURIs: []string{"http://127.0.0.1/cb"}, TokenEndpointAuthMethod: oauth.AuthMethodNone}, CreatedAt: base},
		{ID: "bare"},
	} {
		check(t, "SaveClient", s.SaveClient(ctx, c))
		got, err := s.Client(ctx, c.ID)
		check(t, "Client", err)
		if d := diff(got, c); d != "" {
			t.Errorf("Client(%q) after SaveClient: %s", c.ID, d)
		}
	}
}

func testClientReplace(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveClient", s.SaveClient(ctx, fullClient("c")))
	repl := &authserver.Client{ID: "c", Metadata: oauth.ClientMetadata{ClientName: "second"}, CreatedAt: base.Add(time.Hour)}
	check(t, "SaveClient again", s.SaveClient(ctx, repl))
	got, err := s.Client(ctx, "c")
	check(t, "Client", err)
	if d := diff(got, repl); d != "" {
		t.Errorf("Client after a second SaveClient: %s", d)
	}
}

func testClientNotFound(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveClient", s.SaveClient(ctx, fullClient("client")))
	for _, id := range []string{"missing", "Client", "client ", "clien"} {
		c, err := s.Client(ctx, id)
		wantNotFound(t, fmt.Sprintf("Client(%q)", id), err)
		if c != nil {
			t.Errorf("Client(%q) returned a client with its error", id)
		}
	}
}

func testClientCopies(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	c := fullClient("c")
	check(t, "SaveClient", s.SaveClient(ctx, c))
	mutateClient(c)
	got, err := s.Client(ctx, "c")
	check(t, "Client", err)
	if d := diff(got, fullClient("c")); d != "" {
		t.Fatalf("changing a saved client changed the store: %s", d)
	}
	mutateClient(got)
	got, err = s.Client(ctx, "c")
	check(t, "Client", err)
	if d := diff(got, fullClient("c")); d != "" {
		t.Errorf("changing a loaded client changed the store: %s", d)
	}
}

// mutateClient changes every part of c that a shallow copy would share.
func mutateClient(c *authserver.Client) {
	c.SecretHash[0] = 'X'
	c.Metadata.RedirectURIs[0] = "changed"
	c.Metadata.GrantTypes[0] = "changed"
	c.Metadata.ResponseTypes[0] = "changed"
	c.Metadata.Contacts[0] = "changed"
	*c.Metadata.ClientSecretExpiresAt = 1
}

// Grants.

func testGrantRoundTrip(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	for _, g := range []*authserver.Grant{
		fullGrant("g1"),
		{ID: "bare"},
		{ID: "revoked-at-birth", ClientID: "c", Revoked: true},
	} {
		check(t, "SaveGrant", s.SaveGrant(ctx, g))
		if d := diff(loadGrant(t, s, g.ID), g); d != "" {
			t.Errorf("Grant(%q) after SaveGrant: %s", g.ID, d)
		}
	}
}

func testGrantUpdate(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	g := fullGrant("g")
	check(t, "SaveGrant", s.SaveGrant(ctx, g))
	g.ExpiresAt = g.ExpiresAt.Add(time.Hour) // what issue does
	g.Scopes = []string{"files.read"}
	check(t, "SaveGrant again", s.SaveGrant(ctx, g))
	if d := diff(loadGrant(t, s, "g"), g); d != "" {
		t.Errorf("Grant after an update: %s", d)
	}
}

func testGrantNotFound(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveGrant", s.SaveGrant(ctx, fullGrant("g")))
	g, err := s.Grant(ctx, "missing")
	wantNotFound(t, "Grant(missing)", err)
	if g != nil {
		t.Error("Grant(missing) returned a grant with its error")
	}
	wantNotFound(t, "RevokeGrant(missing)", s.RevokeGrant(ctx, "missing"))
	if loadGrant(t, s, "g").Revoked {
		t.Error("RevokeGrant(missing) revoked another grant")
	}
}

// testGrantRevokedStays: RevokeGrant is final. Saving the grant again (as
// issue does after minting tokens) does not clear Revoked, and revoking
// twice is not an error.
func testGrantRevokedStays(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	g := fullGrant("g")
	check(t, "SaveGrant", s.SaveGrant(ctx, g))
	check(t, "SaveGrant", s.SaveGrant(ctx, fullGrant("other")))
	check(t, "RevokeGrant", s.RevokeGrant(ctx, "g"))
	got := loadGrant(t, s, "g")
	if !got.Revoked {
		t.Fatal("Grant after RevokeGrant is not revoked")
	}
	want := fullGrant("g")
	want.Revoked = true
	if d := diff(got, want); d != "" {
		t.Errorf("RevokeGrant changed more than Revoked: %s", d)
	}
	if loadGrant(t, s, "other").Revoked {
		t.Error("RevokeGrant revoked another grant")
	}
	g.Revoked = false
	g.ExpiresAt = g.ExpiresAt.Add(time.Hour)
	check(t, "SaveGrant of the unrevoked copy", s.SaveGrant(ctx, g))
	got = loadGrant(t, s, "g")
	if !got.Revoked {
		t.Error("SaveGrant cleared Revoked")
	}
	if !got.ExpiresAt.Equal(g.ExpiresAt) {
		t.Errorf("SaveGrant of a revoked grant did not update ExpiresAt: %v, want %v", got.ExpiresAt, g.ExpiresAt)
	}
	check(t, "RevokeGrant twice", s.RevokeGrant(ctx, "g"))
}

func testRevokeGrants(t *testing.T, newStore func(*testing.T) authserver.Store) {
	grants := []*authserver.Grant{
		{ID: "a1", ClientID: "a", Subject: "alice", Resource: "https://r1.example/"},
		{ID: "a2", ClientID: "a", Subject: "bob", Resource: "https://r1.example/"},
		{ID: "a3", ClientID: "a", Subject: "alice", Resource: "https://r2.example/"},
		{ID: "b1", ClientID: "b", Subject: "alice", Resource: "https://r1.example/"},
		{ID: "b2", ClientID: "b", Subject: "carol", Resource: "https://r2.example/", Revoked: true},
	}
	for _, tc := range []struct {
		name   string
		filter authserver.GrantFilter
		want   []string // the grants it revokes
	}{
		{"client", authserver.GrantFilter{ClientID: "a"}, []string{"a1", "a2", "a3"}},
		{"subject", authserver.GrantFilter{Subject: "alice"}, []string{"a1", "a3", "b1"}},
		{"resource", authserver.GrantFilter{Resource: "https://r1.example/"}, []string{"a1", "a2", "b1"}},
		{"all three", authserver.GrantFilter{ClientID: "a", Subject: "alice", Resource: "https://r2.example/"}, []string{"a3"}},
		{"no match", authserver.GrantFilter{ClientID: "z"}, nil},
		{"already revoked only", authserver.GrantFilter{Subject: "carol"}, nil},
		{"everything", authserver.GrantFilter{}, []string{"a1", "a2", "a3", "b1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, s := t.Context(), newStore(t)
			for _, g := range grants {
				ng := *g
				check(t, "SaveGrant", s.SaveGrant(ctx, &ng))
			}
			n, err := s.RevokeGrants(ctx, tc.filter)
			check(t, "RevokeGrants", err)
			if n != len(tc.want) {
				t.Errorf("RevokeGrants(%+v) = %d, want %d (grants revoked before are not counted)", tc.filter, n, len(tc.want))
			}
			for _, g := range grants {
				want := g.Revoked
				for _, id := range tc.want {
					want = want || id == g.ID
				}
				if got := loadGrant(t, s, g.ID).Revoked; got != want {
					t.Errorf("grant %s revoked = %v, want %v", g.ID, got, want)
				}
			}
			n, err = s.RevokeGrants(ctx, tc.filter)
			check(t, "RevokeGrants again", err)
			if n != 0 {
				t.Errorf("RevokeGrants again = %d, want 0", n)
			}
		})
	}
}

// testRevokeRacesSave: SaveGrant calls running through b while a revokes
// the grant (a refresh racing a revocation) never bring it back: once
// RevokeGrant has returned, every read sees the grant revoked.
func testRevokeRacesSave(t *testing.T, a, b authserver.Store) {
	ctx := t.Context()
	const savers, rounds = 4, 50
	for i := range 5 {
		id := fmt.Sprintf("g%d", i)
		check(t, "SaveGrant", a.SaveGrant(ctx, fullGrant(id)))
		var (
			wg      sync.WaitGroup
			revoked = make(chan struct{})
		)
		for range savers {
			wg.Go(func() {
				for j := range rounds {
					g := fullGrant(id)
					g.ExpiresAt = g.ExpiresAt.Add(time.Duration(j) * time.Second)
					if err := b.SaveGrant(ctx, g); err != nil {
						t.Errorf("SaveGrant: %v", err)
						return
					}
					select {
					case <-revoked:
						if got, err := b.Grant(ctx, id); err != nil || !got.Revoked {
							t.Errorf("Grant after RevokeGrant returned and a SaveGrant: revoked = %v, err = %v; want revoked", err == nil && got.Revoked, err)
							return
						}
					default:
					}
				}
			})
		}
		if err := a.RevokeGrant(ctx, id); err != nil {
			t.Errorf("RevokeGrant: %v", err)
		}
		close(revoked)
		wg.Wait()
		if !loadGrant(t, a, id).Revoked || !loadGrant(t, b, id).Revoked {
			t.Fatalf("grant %s is not revoked after RevokeGrant and concurrent SaveGrant calls", id)
		}
	}
}

func testGrantCopies(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	g := fullGrant("g")
	check(t, "SaveGrant", s.SaveGrant(ctx, g))
	g.Scopes[0], g.Subject = "changed", "changed"
	got := loadGrant(t, s, "g")
	if d := diff(got, fullGrant("g")); d != "" {
		t.Fatalf("changing a saved grant changed the store: %s", d)
	}
	got.Scopes[0], got.Revoked = "changed", true
	if d := diff(loadGrant(t, s, "g"), fullGrant("g")); d != "" {
		t.Errorf("changing a loaded grant changed the store: %s", d)
	}
}

// Codes.

func testCodeRoundTrip(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	c := fullCode("hash-1", "g1")
	check(t, "SaveCode", s.SaveCode(ctx, c))
	c.Scopes[0] = "changed after SaveCode"
	got, err := s.TakeCode(ctx, "hash-1")
	check(t, "TakeCode", err)
	if d := diff(got, fullCode("hash-1", "g1")); d != "" {
		t.Errorf("TakeCode after SaveCode: %s", d)
	}
}

// testCodeSingleUse: a code is taken once; taking it again returns the
// code (so the caller can revoke its grant) with ErrCodeUsed, every time.
func testCodeSingleUse(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveCode", s.SaveCode(ctx, fullCode("hash-1", "g1")))
	_, err := s.TakeCode(ctx, "hash-1")
	check(t, "first TakeCode", err)
	for i := range 3 {
		got, err := s.TakeCode(ctx, "hash-1")
		if !errors.Is(err, authserver.ErrCodeUsed) {
			t.Fatalf("TakeCode #%d of a used code: err = %v, want ErrCodeUsed", i+2, err)
		}
		if got == nil {
			t.Fatalf("TakeCode #%d of a used code returned no code; the caller needs its grant to revoke", i+2)
		}
		if d := diff(got, fullCode("hash-1", "g1")); d != "" {
			t.Errorf("TakeCode #%d of a used code: %s", i+2, d)
		}
	}
}

func testCodeNotFound(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveCode", s.SaveCode(ctx, fullCode("hash-1", "g1")))
	for _, h := range []string{"missing", "hash-", "HASH-1"} {
		_, err := s.TakeCode(ctx, h)
		wantNotFound(t, fmt.Sprintf("TakeCode(%q)", h), err)
	}
	if _, err := s.TakeCode(ctx, "hash-1"); err != nil {
		t.Errorf("TakeCode of a saved code after looking up missing ones: %v", err)
	}
}

// testCodesIndependent: using one code does not use another, even of the
// same grant.
func testCodesIndependent(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveCode", s.SaveCode(ctx, fullCode("hash-1", "g1")))
	check(t, "SaveCode", s.SaveCode(ctx, fullCode("hash-2", "g1")))
	_, err := s.TakeCode(ctx, "hash-1")
	check(t, "TakeCode(hash-1)", err)
	_, err = s.TakeCode(ctx, "hash-2")
	check(t, "TakeCode(hash-2) after hash-1 was used", err)
}

// testCodeConcurrent: of many concurrent TakeCode calls for one code, half
// through a and half through b, exactly one succeeds; the rest get
// ErrCodeUsed with the code.
func testCodeConcurrent(t *testing.T, a, b authserver.Store) {
	ctx := t.Context()
	const n = 16
	for round := range 10 {
		hash := fmt.Sprintf("hash-%d", round)
		check(t, "SaveCode", a.SaveCode(ctx, fullCode(hash, "g1")))
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make(chan error, n)
		)
		for i := range n {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				<-start
				c, err := s.TakeCode(ctx, hash)
				if err == nil || errors.Is(err, authserver.ErrCodeUsed) {
					if c == nil || c.GrantID != "g1" {
						err = fmt.Errorf("TakeCode returned %v with err %v, want the code", c, err)
					}
				}
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		won := 0
		for err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, authserver.ErrCodeUsed):
				t.Errorf("concurrent TakeCode: %v", err)
			}
		}
		if won != 1 {
			t.Fatalf("%d of %d concurrent TakeCode calls succeeded, want exactly 1", won, n)
		}
	}
}

// Refresh tokens.

func testRefreshRoundTrip(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	for _, rt := range []*authserver.RefreshToken{
		fullRefresh("rt-1", "g1"),
		{Hash: "rt-2", GrantID: "g1", RotatedAt: base, Successor: "rt-3", ReplacedUnused: true},
	} {
		check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, rt))
		if d := diff(loadRefresh(t, s, rt.Hash), rt); d != "" {
			t.Errorf("RefreshToken(%q) after SaveRefreshToken: %s", rt.Hash, d)
		}
	}
	rt, err := s.RefreshToken(ctx, "missing")
	wantNotFound(t, "RefreshToken(missing)", err)
	if rt != nil {
		t.Error("RefreshToken(missing) returned a token with its error")
	}
	// Copies.
	orig := fullRefresh("rt-4", "g1")
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, orig))
	orig.Scopes[0] = "changed"
	loaded := loadRefresh(t, s, "rt-4")
	loaded.Scopes[1] = "changed"
	if d := diff(loadRefresh(t, s, "rt-4"), fullRefresh("rt-4", "g1")); d != "" {
		t.Errorf("refresh token aliased: %s", d)
	}
}

// testRotate: RotateRefreshToken retires the old token (RotatedAt,
// Successor) and saves the new one, as given.
func testRotate(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, fullRefresh("rt-1", "g1")))
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, fullRefresh("rt-other", "g2")))
	at := base.Add(time.Minute)
	next := fullRefresh("rt-2", "g1")
	next.IssuedAt = at
	check(t, "RotateRefreshToken", s.RotateRefreshToken(ctx, "rt-1", at, next))
	wantOld := fullRefresh("rt-1", "g1")
	wantOld.RotatedAt, wantOld.Successor = at, "rt-2"
	if d := diff(loadRefresh(t, s, "rt-1"), wantOld); d != "" {
		t.Errorf("rotated token: %s", d)
	}
	if d := diff(loadRefresh(t, s, "rt-2"), next); d != "" {
		t.Errorf("successor: %s", d)
	}
	if d := diff(loadRefresh(t, s, "rt-other"), fullRefresh("rt-other", "g2")); d != "" {
		t.Errorf("rotation changed another token: %s", d)
	}
}

// testRotateOnce: a token is rotated once. Rotating it again changes
// nothing: the second successor is not saved and the first stays the
// successor.
func testRotateOnce(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, fullRefresh("rt-1", "g1")))
	at := base.Add(time.Minute)
	check(t, "RotateRefreshToken", s.RotateRefreshToken(ctx, "rt-1", at, fullRefresh("rt-2", "g1")))
	err := s.RotateRefreshToken(ctx, "rt-1", at.Add(time.Minute), fullRefresh("rt-3", "g1"))
	if !errors.Is(err, authserver.ErrRefreshTokenRotated) {
		t.Fatalf("second RotateRefreshToken: err = %v, want ErrRefreshTokenRotated", err)
	}
	wantOld := fullRefresh("rt-1", "g1")
	wantOld.RotatedAt, wantOld.Successor = at, "rt-2"
	if d := diff(loadRefresh(t, s, "rt-1"), wantOld); d != "" {
		t.Errorf("a refused rotation changed the token: %s", d)
	}
	_, err = s.RefreshToken(ctx, "rt-3")
	wantNotFound(t, "the successor of a refused rotation", err)
	// A token saved already rotated cannot be rotated either.
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, &authserver.RefreshToken{Hash: "rt-r", GrantID: "g1", RotatedAt: base, Successor: "x"}))
	if err := s.RotateRefreshToken(ctx, "rt-r", at, fullRefresh("rt-4", "g1")); !errors.Is(err, authserver.ErrRefreshTokenRotated) {
		t.Errorf("RotateRefreshToken of a token saved rotated: err = %v, want ErrRefreshTokenRotated", err)
	}
}

func testRotateMissing(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	wantNotFound(t, "RotateRefreshToken(missing)", s.RotateRefreshToken(ctx, "missing", base, fullRefresh("rt-2", "g1")))
	_, err := s.RefreshToken(ctx, "rt-2")
	wantNotFound(t, "the successor of a refused rotation", err)
}

// testRotateChain: rotation walks a grant's family forward: each successor
// is rotated in turn, and every retired token keeps pointing at the one
// that replaced it. ReplacedUnused (set on a token issued in the grace
// window) survives.
func testRotateChain(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, fullRefresh("rt-0", "g1")))
	for i := 1; i <= 5; i++ {
		next := fullRefresh(fmt.Sprintf("rt-%d", i), "g1")
		next.ReplacedUnused = i%2 == 0
		check(t, "RotateRefreshToken", s.RotateRefreshToken(ctx, fmt.Sprintf("rt-%d", i-1), base.Add(time.Duration(i)*time.Minute), next))
	}
	live := 0
	for i := 0; i <= 5; i++ {
		rt := loadRefresh(t, s, fmt.Sprintf("rt-%d", i))
		if rt.RotatedAt.IsZero() {
			live++
			continue
		}
		if want := fmt.Sprintf("rt-%d", i+1); rt.Successor != want {
			t.Errorf("rt-%d has successor %q, want %q", i, rt.Successor, want)
		}
		if !rt.RotatedAt.Equal(base.Add(time.Duration(i+1) * time.Minute)) {
			t.Errorf("rt-%d rotated at %v", i, rt.RotatedAt)
		}
		if rt.ReplacedUnused != (i > 0 && i%2 == 0) {
			t.Errorf("rt-%d ReplacedUnused = %v", i, rt.ReplacedUnused)
		}
	}
	if live != 1 || !loadRefresh(t, s, "rt-5").RotatedAt.IsZero() {
		t.Errorf("%d live tokens in the family, want 1 (the last)", live)
	}
}

// testRotateConcurrent: of many concurrent rotations of one token, half
// through a and half through b, each with its own successor, exactly one
// succeeds; only its successor is saved, and it is the recorded one.
func testRotateConcurrent(t *testing.T, a, b authserver.Store) {
	ctx := t.Context()
	const n = 16
	for round := range 10 {
		old := fmt.Sprintf("rt-%d", round)
		check(t, "SaveRefreshToken", a.SaveRefreshToken(ctx, fullRefresh(old, "g1")))
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make([]error, n)
		)
		for i := range n {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				<-start
				errs[i] = s.RotateRefreshToken(ctx, old, base.Add(time.Minute), fullRefresh(fmt.Sprintf("%s-next-%d", old, i), "g1"))
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("two concurrent rotations of one token succeeded (%d and %d)", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, authserver.ErrRefreshTokenRotated):
				t.Errorf("concurrent RotateRefreshToken: %v", err)
			}
		}
		if winner < 0 {
			t.Fatal("no concurrent rotation succeeded")
		}
		want := fmt.Sprintf("%s-next-%d", old, winner)
		if got := loadRefresh(t, b, old).Successor; got != want {
			t.Errorf("successor recorded = %q, want the winner's %q", got, want)
		}
		for i := range n {
			_, err := a.RefreshToken(ctx, fmt.Sprintf("%s-next-%d", old, i))
			if i == winner {
				check(t, "RefreshToken(the winner's successor)", err)
			} else {
				wantNotFound(t, "RefreshToken(a loser's successor)", err)
			}
		}
	}
}

// Access tokens.

func testAccessRoundTrip(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	at := fullAccess("jti-1", "g1")
	check(t, "SaveAccessToken", s.SaveAccessToken(ctx, at))
	at.Scopes[0] = "changed after Save"
	got, err := s.AccessToken(ctx, "jti-1")
	check(t, "AccessToken", err)
	if d := diff(got, fullAccess("jti-1", "g1")); d != "" {
		t.Errorf("AccessToken after SaveAccessToken: %s", d)
	}
	got.Scopes[0], got.Revoked = "changed after Load", true
	got, err = s.AccessToken(ctx, "jti-1")
	check(t, "AccessToken", err)
	if d := diff(got, fullAccess("jti-1", "g1")); d != "" {
		t.Errorf("access token aliased: %s", d)
	}
}

func testAccessRevoke(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveAccessToken", s.SaveAccessToken(ctx, fullAccess("jti-1", "g1")))
	check(t, "SaveAccessToken", s.SaveAccessToken(ctx, fullAccess("jti-2", "g1")))
	check(t, "RevokeAccessToken", s.RevokeAccessToken(ctx, "jti-1"))
	got, err := s.AccessToken(ctx, "jti-1")
	check(t, "AccessToken", err)
	want := fullAccess("jti-1", "g1")
	want.Revoked = true
	if d := diff(got, want); d != "" {
		t.Errorf("after RevokeAccessToken: %s", d)
	}
	if got, err := s.AccessToken(ctx, "jti-2"); err != nil || got.Revoked {
		t.Errorf("RevokeAccessToken revoked another token (err %v)", err)
	}
	check(t, "RevokeAccessToken twice", s.RevokeAccessToken(ctx, "jti-1"))
}

func testAccessNotFound(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	at, err := s.AccessToken(ctx, "missing")
	wantNotFound(t, "AccessToken(missing)", err)
	if at != nil {
		t.Error("AccessToken(missing) returned a record with its error")
	}
	wantNotFound(t, "RevokeAccessToken(missing)", s.RevokeAccessToken(ctx, "missing"))
}

// testDeleteExpired: records that expired before t go, the rest stay,
// used or rotated or not; clients never expire.
func testDeleteExpired(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	cut := base.Add(time.Hour)
	ages := map[string]time.Time{"old": cut.Add(-time.Nanosecond), "at": cut, "new": cut.Add(time.Second)}
	for age, exp := range ages {
		g := fullGrant("g-" + age)
		g.ExpiresAt = exp
		check(t, "SaveGrant", s.SaveGrant(ctx, g))
		c := fullCode("code-"+age, g.ID)
		c.ExpiresAt = exp
		check(t, "SaveCode", s.SaveCode(ctx, c))
		used := fullCode("used-"+age, g.ID)
		used.ExpiresAt = exp
		check(t, "SaveCode", s.SaveCode(ctx, used))
		_, err := s.TakeCode(ctx, used.Hash)
		check(t, "TakeCode", err)
		rt := fullRefresh("rt-"+age, g.ID)
		rt.ExpiresAt = exp
		check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, rt))
		next := fullRefresh("rt-next-"+age, g.ID)
		next.ExpiresAt = exp
		check(t, "RotateRefreshToken", s.RotateRefreshToken(ctx, rt.Hash, base, next))
		at := fullAccess("jti-"+age, g.ID)
		at.ExpiresAt = exp
		check(t, "SaveAccessToken", s.SaveAccessToken(ctx, at))
	}
	check(t, "SaveClient", s.SaveClient(ctx, fullClient("client-1")))

	check(t, "DeleteExpired", s.DeleteExpired(ctx, cut))

	for age := range ages {
		gone := age == "old"
		for _, r := range []struct {
			what string
			err  error
		}{
			{"grant", func() error { _, err := s.Grant(ctx, "g-"+age); return err }()},
			{"code", func() error { _, err := s.TakeCode(ctx, "code-"+age); return err }()},
			{"used code", func() error { _, err := s.TakeCode(ctx, "used-"+age); return err }()},
			{"rotated refresh token", func() error { _, err := s.RefreshToken(ctx, "rt-"+age); return err }()},
			{"live refresh token", func() error { _, err := s.RefreshToken(ctx, "rt-next-"+age); return err }()},
			{"access token", func() error { _, err := s.AccessToken(ctx, "jti-"+age); return err }()},
		} {
			switch {
			case gone && !errors.Is(r.err, authserver.ErrNotFound):
				t.Errorf("%s that expired before t: err = %v after DeleteExpired, want ErrNotFound", r.what, r.err)
			case !gone && r.what == "used code" && !errors.Is(r.err, authserver.ErrCodeUsed):
				t.Errorf("used code expiring %s t: err = %v after DeleteExpired, want ErrCodeUsed (still used)", age, r.err)
			case !gone && r.what != "used code" && r.err != nil:
				t.Errorf("%s expiring %s t: err = %v after DeleteExpired, want it kept", r.what, age, r.err)
			}
		}
	}
	if _, err := s.Client(ctx, "client-1"); err != nil {
		t.Errorf("DeleteExpired removed a client: %v", err)
	}
	check(t, "DeleteExpired of nothing", s.DeleteExpired(ctx, cut))
}

// testBounds: the largest records the server creates round-trip whole.
// Registration allows 20 redirect URIs of up to 2000 bytes, metadata
// strings of up to 500 bytes, 10 contacts, within a 64 KiB request;
// pre-registered client IDs are chosen by the operator.
func testBounds(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	long := func(prefix string, n int) string {
		return prefix + strings.Repeat("é", (n-len(prefix))/2) + strings.Repeat("x", (n-len(prefix))%2)
	}
	c := fullClient(long("client-", 500))
	c.Metadata.ClientID = c.ID
	c.Metadata.RedirectURIs = nil
	for i := range 20 {
		c.Metadata.RedirectURIs = append(c.Metadata.RedirectURIs, long(fmt.Sprintf("https://app.example.com/%02d/", i), 2000))
	}
	c.Metadata.Contacts = nil
	for i := range 10 {
		c.Metadata.Contacts = append(c.Metadata.Contacts, long(fmt.Sprintf("%d@", i), 500))
	}
	for _, f := range []*string{&c.Metadata.ClientName, &c.Metadata.ClientURI, &c.Metadata.LogoURI, &c.Metadata.TosURI,
		&c.Metadata.PolicyURI, &c.Metadata.Scope, &c.Metadata.SoftwareID, &c.Metadata.SoftwareVersion, &c.Metadata.JWKSURI} {
		*f = long(*f, 500)
	}
	check(t, "SaveClient", s.SaveClient(ctx, c))
	got, err := s.Client(ctx, c.ID)
	check(t, "Client", err)
	if d := diff(got, c); d != "" {
		t.Errorf("largest client: %s", d)
	}

	var scopes []string
	for i := range 100 {
		scopes = append(scopes, long(fmt.Sprintf("scope-%d.", i), 100))
	}
	resource := long("https://mcp.example.com/", 2000)
	subject := long("user-", 500)
	g := fullGrant("g")
	g.Scopes, g.Resource, g.Subject, g.ClientID = scopes, resource, subject, c.ID
	check(t, "SaveGrant", s.SaveGrant(ctx, g))
	if d := diff(loadGrant(t, s, "g"), g); d != "" {
		t.Errorf("largest grant: %s", d)
	}
	code := fullCode("code", "g")
	code.Scopes, code.Resource, code.Subject, code.ClientID = scopes, resource, subject, c.ID
	code.RedirectURI = c.Metadata.RedirectURIs[19]
	check(t, "SaveCode", s.SaveCode(ctx, code))
	gotCode, err := s.TakeCode(ctx, "code")
	check(t, "TakeCode", err)
	if d := diff(gotCode, code); d != "" {
		t.Errorf("largest code: %s", d)
	}
	rt := fullRefresh("rt", "g")
	rt.Scopes, rt.ClientID = scopes, c.ID
	check(t, "SaveRefreshToken", s.SaveRefreshToken(ctx, rt))
	if d := diff(loadRefresh(t, s, "rt"), rt); d != "" {
		t.Errorf("largest refresh token: %s", d)
	}
	at := fullAccess("jti", "g")
	at.Scopes, at.Resource, at.Subject, at.ClientID = scopes, resource, subject, c.ID
	check(t, "SaveAccessToken", s.SaveAccessToken(ctx, at))
	gotAt, err := s.AccessToken(ctx, "jti")
	check(t, "AccessToken", err)
	if d := diff(gotAt, at); d != "" {
		t.Errorf("largest access token: %s", d)
	}
}

// Signing keys.

// keyBytes returns n bytes of fake key material (a store treats keys as
// opaque bytes), including zero bytes and every other byte value.
func keyBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

func fullKeys(seed byte) *authserver.SigningKeys {
	return &authserver.SigningKeys{Current: keyBytes(seed, 300), Previous: keyBytes(seed+100, 300), RotatedAt: base}
}

// testKeysInit: the first InitKeys saves its keys and returns them; later
// ones return those, and save nothing.
func testKeysInit(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	first := &authserver.SigningKeys{Current: keyBytes(1, 138), RotatedAt: base}
	got, err := s.InitKeys(ctx, first)
	check(t, "InitKeys", err)
	if d := diff(got, first); d != "" {
		t.Errorf("first InitKeys returned other keys: %s", d)
	}
	got, err = s.InitKeys(ctx, fullKeys(2))
	check(t, "InitKeys again", err)
	if d := diff(got, first); d != "" {
		t.Errorf("second InitKeys did not return the first keys: %s", d)
	}
	if len(got.Previous) != 0 {
		t.Error("keys saved without a previous key came back with one")
	}
}

// testKeysSave: SaveKeys replaces the keys, whether InitKeys saved some or
// not, and InitKeys then returns what SaveKeys saved.
func testKeysSave(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	check(t, "SaveKeys before any InitKeys", s.SaveKeys(ctx, fullKeys(1)))
	got, err := s.InitKeys(ctx, fullKeys(50))
	check(t, "InitKeys", err)
	if d := diff(got, fullKeys(1)); d != "" {
		t.Errorf("InitKeys after SaveKeys: %s", d)
	}
	rotated := fullKeys(3)
	rotated.Previous = fullKeys(1).Current
	rotated.RotatedAt = base.Add(24 * time.Hour)
	check(t, "SaveKeys", s.SaveKeys(ctx, rotated))
	got, err = s.InitKeys(ctx, fullKeys(50))
	check(t, "InitKeys", err)
	if d := diff(got, rotated); d != "" {
		t.Errorf("InitKeys after a second SaveKeys: %s", d)
	}
}

func testKeysCopies(t *testing.T, s authserver.Store) {
	ctx := t.Context()
	k := fullKeys(1)
	got, err := s.InitKeys(ctx, k)
	check(t, "InitKeys", err)
	k.Current[0], k.Previous[0] = 'X', 'X'
	got.Current[1], got.Previous[1] = 'X', 'X'
	got, err = s.InitKeys(ctx, fullKeys(9))
	check(t, "InitKeys", err)
	if d := diff(got, fullKeys(1)); d != "" {
		t.Errorf("keys aliased: %s", d)
	}
}

// testKeysInitConcurrent: of servers starting at once on shared storage,
// each with its own fresh keys, all get the keys of one of them.
func testKeysInitConcurrent(t *testing.T, a, b authserver.Store) {
	ctx := t.Context()
	const n = 8
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   = make([]*authserver.SigningKeys, n)
		errs  = make([]error, n)
	)
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			got[i], errs[i] = s.InitKeys(ctx, fullKeys(byte(i)))
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		check(t, "concurrent InitKeys", errs[i])
	}
	winner := -1
	for i := range n {
		if diff(got[0], fullKeys(byte(i))) == "" {
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("concurrent InitKeys returned keys none of them saved")
	}
	for i := range n {
		if d := diff(got[i], got[0]); d != "" {
			t.Errorf("concurrent InitKeys returned different keys (%d and 0): %s", i, d)
		}
	}
}

// testSharedWrites: what one handle saves, revokes or takes, the other
// sees.
func testSharedWrites(t *testing.T, a, b authserver.Store) {
	ctx := t.Context()
	check(t, "SaveClient", a.SaveClient(ctx, fullClient("c")))
	c, err := b.Client(ctx, "c")
	check(t, "Client through b", err)
	if d := diff(c, fullClient("c")); d != "" {
		t.Errorf("client through b: %s", d)
	}

	check(t, "SaveGrant", a.SaveGrant(ctx, fullGrant("g")))
	check(t, "RevokeGrant through b", b.RevokeGrant(ctx, "g"))
	if !loadGrant(t, a, "g").Revoked {
		t.Error("grant revoked through b is not revoked through a")
	}

	check(t, "SaveCode", a.SaveCode(ctx, fullCode("code", "g")))
	_, err = b.TakeCode(ctx, "code")
	check(t, "TakeCode through b", err)
	if _, err := a.TakeCode(ctx, "code"); !errors.Is(err, authserver.ErrCodeUsed) {
		t.Errorf("TakeCode through a of a code taken through b: err = %v, want ErrCodeUsed", err)
	}

	check(t, "SaveRefreshToken", a.SaveRefreshToken(ctx, fullRefresh("rt-1", "g")))
	check(t, "RotateRefreshToken through b", b.RotateRefreshToken(ctx, "rt-1", base, fullRefresh("rt-2", "g")))
	if err := a.RotateRefreshToken(ctx, "rt-1", base, fullRefresh("rt-3", "g")); !errors.Is(err, authserver.ErrRefreshTokenRotated) {
		t.Errorf("RotateRefreshToken through a of a token rotated through b: err = %v, want ErrRefreshTokenRotated", err)
	}
	loadRefresh(t, a, "rt-2")

	check(t, "SaveAccessToken", a.SaveAccessToken(ctx, fullAccess("jti", "g")))
	check(t, "RevokeAccessToken through b", b.RevokeAccessToken(ctx, "jti"))
	if at, err := a.AccessToken(ctx, "jti"); err != nil || !at.Revoked {
		t.Errorf("access token revoked through b: through a revoked = %v, err = %v", err == nil && at.Revoked, err)
	}

	check(t, "DeleteExpired through b", b.DeleteExpired(ctx, base.Add(365*24*time.Hour)))
	_, err = a.Grant(ctx, "g")
	wantNotFound(t, "Grant through a after DeleteExpired through b", err)
}
