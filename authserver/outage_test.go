package authserver_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/sqlitestore"
)

// errDiskGone is what a failingStore returns while it fails.
var errDiskGone = errors.New("disk I/O error (injected)")

// failingStore is a real Store that fails every call while down is set, or
// only the calls of the method named by only: an outage of its backend, a
// database unreachable or a disk gone, injected around the real thing.
type failingStore struct {
	authserver.Store
	down atomic.Bool
	only atomic.Pointer[string]
}

func (f *failingStore) fail(method string) error {
	if f.down.Load() {
		return errDiskGone
	}
	if m := f.only.Load(); m != nil && *m == method {
		return errDiskGone
	}
	return nil
}

// failOnly makes only method fail; "" makes none fail.
func (f *failingStore) failOnly(method string) { f.only.Store(&method) }

func (f *failingStore) SaveClient(ctx context.Context, c *authserver.Client) error {
	if err := f.fail("SaveClient"); err != nil {
		return err
	}
	return f.Store.SaveClient(ctx, c)
}

func (f *failingStore) Client(ctx context.Context, id string) (*authserver.Client, error) {
	if err := f.fail("Client"); err != nil {
		return nil, err
	}
	return f.Store.Client(ctx, id)
}

func (f *failingStore) SaveGrant(ctx context.Context, g *authserver.Grant) error {
	if err := f.fail("SaveGrant"); err != nil {
		return err
	}
	return f.Store.SaveGrant(ctx, g)
}

func (f *failingStore) Grant(ctx context.Context, id string) (*authserver.Grant, error) {
	if err := f.fail("Grant"); err != nil {
		return nil, err
	}
	return f.Store.Grant(ctx, id)
}

func (f *failingStore) RevokeGrant(ctx context.Context, id string) error {
	if err := f.fail("RevokeGrant"); err != nil {
		return err
	}
	return f.Store.RevokeGrant(ctx, id)
}

func (f *failingStore) RevokeGrants(ctx context.Context, gf authserver.GrantFilter) (int, error) {
	if err := f.fail("RevokeGrants"); err != nil {
		return 0, err
	}
	return f.Store.RevokeGrants(ctx, gf)
}

func (f *failingStore) SaveCode(ctx context.Context, c *authserver.Code) error {
	if err := f.fail("SaveCode"); err != nil {
		return err
	}
	return f.Store.SaveCode(ctx, c)
}

func (f *failingStore) TakeCode(ctx context.Context, hash string) (*authserver.Code, error) {
	if err := f.fail("TakeCode"); err != nil {
		return nil, err
	}
	return f.Store.TakeCode(ctx, hash)
}

func (f *failingStore) SaveRefreshToken(ctx context.Context, t *authserver.RefreshToken) error {
	if err := f.fail("SaveRefreshToken"); err != nil {
		return err
	}
	return f.Store.SaveRefreshToken(ctx, t)
}

func (f *failingStore) RefreshToken(ctx context.Context, hash string) (*authserver.RefreshToken, error) {
	if err := f.fail("RefreshToken"); err != nil {
		return nil, err
	}
	return f.Store.RefreshToken(ctx, hash)
}

func (f *failingStore) RotateRefreshToken(ctx context.Context, oldHash string, at time.Time, next *authserver.RefreshToken) error {
	if err := f.fail("RotateRefreshToken"); err != nil {
		return err
	}
	return f.Store.RotateRefreshToken(ctx, oldHash, at, next)
}

func (f *failingStore) SaveAccessToken(ctx context.Context, t *authserver.AccessToken) error {
	if err := f.fail("SaveAccessToken"); err != nil {
		return err
	}
	return f.Store.SaveAccessToken(ctx, t)
}

func (f *failingStore) AccessToken(ctx context.Context, jti string) (*authserver.AccessToken, error) {
	if err := f.fail("AccessToken"); err != nil {
		return nil, err
	}
	return f.Store.AccessToken(ctx, jti)
}

func (f *failingStore) RevokeAccessToken(ctx context.Context, jti string) error {
	if err := f.fail("RevokeAccessToken"); err != nil {
		return err
	}
	return f.Store.RevokeAccessToken(ctx, jti)
}

func (f *failingStore) DeleteExpired(ctx context.Context, t time.Time) error {
	if err := f.fail("DeleteExpired"); err != nil {
		return err
	}
	return f.Store.DeleteExpired(ctx, t)
}

// backends returns the real stores the outage tests run on.
func backends(t *testing.T) map[string]func() authserver.Store {
	return map[string]func() authserver.Store{
		"memory": func() authserver.Store { return &authserver.MemoryStore{} },
		"sqlite": func() authserver.Store { return openSQLite(t) },
	}
}

func openSQLite(t *testing.T) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "as.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// wantUnavailable checks an outage answer: 503 temporarily_unavailable
// with Retry-After, and no token.
func wantUnavailable(t *testing.T, what string, st int, m map[string]any, h http.Header) {
	t.Helper()
	wantTokenError(t, what, st, m, http.StatusServiceUnavailable, "temporarily_unavailable")
	if h != nil && h.Get("Retry-After") == "" {
		t.Errorf("%s: 503 without Retry-After", what)
	}
}

func (e *env) refreshH(id, rt string) (int, map[string]any, http.Header) {
	e.T.Helper()
	st, m, h, _ := e.Post(authserver.PathToken, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {id}, "resource": {testResource},
	}, nil)
	return st, m, h
}

// A Store that fails is an outage: every endpoint answers 503 (the token
// endpoint temporarily_unavailable, never invalid_grant or
// invalid_client), the failed requests change nothing, and the server
// serves again, without a restart, once the Store does.
func TestStoreOutage_503AndRecovery(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			fs := &failingStore{Store: open()}
			e := newEnv(t, func(c *authserver.Config) { c.Store = fs })
			id := e.RegisterPublic(loopbackRedir)
			tok := e.Tokens(id, loopbackRedir)
			rt1, at1 := str(tok, "refresh_token"), str(tok, "access_token")
			v, c := pkce()
			code := e.Code(id, loopbackRedir, c) // issued before the outage

			fs.down.Store(true)
			for i := range 3 {
				st, m, h := e.refreshH(id, rt1)
				wantUnavailable(t, "refresh #"+string(rune('1'+i)), st, m, h)
			}
			st, m, h, _ := e.Post(authserver.PathToken, url.Values{
				"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {loopbackRedir},
				"code_verifier": {v}, "client_id": {id}, "resource": {testResource},
			}, nil)
			wantUnavailable(t, "code exchange", st, m, h)
			st, m, h, _ = e.Post(authserver.PathToken, url.Values{
				"grant_type": {"client_credentials"}, "client_id": {postClientID}, "client_secret": {postSecret},
			}, nil)
			wantUnavailable(t, "confidential client authentication", st, m, h)
			st, m, h, _ = e.Post(authserver.PathRevoke, url.Values{"token": {rt1}, "client_id": {id}}, nil)
			if st != http.StatusServiceUnavailable || str(m, "error") != "temporarily_unavailable" || h.Get("Retry-After") == "" {
				t.Errorf("revocation: %d %v", st, m)
			}
			st, m, h, _ = e.Post(authserver.PathIntrospect, url.Values{"token": {at1}}, []string{rsClientID, rsClientSecret})
			if st != http.StatusServiceUnavailable || str(m, "error") != "temporarily_unavailable" || h.Get("Retry-After") == "" {
				t.Errorf("introspection: %d %v (an outage is not active=false)", st, m)
			}
			st, m = e.Register(map[string]any{"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none"})
			if st != http.StatusServiceUnavailable || str(m, "error") != "temporarily_unavailable" {
				t.Errorf("registration: %d %v", st, m)
			}
			_, c2 := pkce()
			r := e.Authorize(authParams(id, loopbackRedir, c2))
			r.Body.Close()
			if r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Location") != "" || r.Header.Get("Retry-After") == "" {
				t.Errorf("authorization: %d, Location %q", r.StatusCode, r.Header.Get("Location"))
			}

			fs.down.Store(false)
			// Nothing was rotated, revoked or used by the failed attempts.
			if !e.Active(rt1) || !e.Active(at1) {
				t.Fatal("tokens inactive after the outage")
			}
			st, tok2 := e.Exchange(id, loopbackRedir, code, v)
			if st != http.StatusOK {
				t.Fatalf("code exchange after the outage: %d %v", st, tok2)
			}
			st, tok3 := e.Refresh(id, rt1)
			if st != http.StatusOK || str(tok3, "refresh_token") == "" {
				t.Fatalf("refresh after the outage: %d %v", st, tok3)
			}
			if st, m := e.Refresh(id, str(tok3, "refresh_token")); st != http.StatusOK {
				t.Fatalf("refresh of the rotated-in token: %d %v", st, m)
			}
			if st, _ := e.Register(map[string]any{"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none"}); st != http.StatusCreated {
				t.Errorf("registration after the outage: %d", st)
			}
			assertNoTokenMaterial(t, e.Logs.String(), rt1, at1, code, v, str(tok2, "refresh_token"), str(tok3, "refresh_token"), str(tok3, "access_token"))
			if !strings.Contains(e.Logs.String(), errDiskGone.Error()) {
				t.Error("the store's error is not in the log")
			}
		})
	}
}

// A Store that fails part way through a refresh (after the presented
// token was read, at any later write) leaves that token live: the client
// that was told 503 retries with it and gets tokens, and no reuse is seen.
func TestStoreOutage_PartialRefreshRotatesNothing(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			fs := &failingStore{Store: open()}
			e := newEnv(t, func(c *authserver.Config) { c.Store = fs })
			id := e.RegisterPublic(loopbackRedir)
			rt := str(e.Tokens(id, loopbackRedir), "refresh_token")
			for _, method := range []string{"Grant", "SaveAccessToken", "SaveGrant", "RotateRefreshToken"} {
				fs.failOnly(method)
				st, m, h := e.refreshH(id, rt)
				wantUnavailable(t, "refresh failing at "+method, st, m, h)
				fs.failOnly("")
				if !e.Active(rt) {
					t.Fatalf("refresh token inactive after a refresh failed at %s", method)
				}
			}
			st, m := e.Refresh(id, rt)
			if st != http.StatusOK {
				t.Fatalf("refresh after the failures: %d %v", st, m)
			}
			if strings.Contains(e.Logs.String(), "grant revoked") {
				t.Error("a failed refresh was taken for a reuse")
			}
		})
	}
}

// A closed database (the SQLite file gone from under the server) is an
// outage too, not an unknown token.
func TestStoreOutage_ClosedSQLite(t *testing.T) {
	st := openSQLite(t)
	e := newEnv(t, func(c *authserver.Config) { c.Store = st })
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	s, m, h := e.refreshH(id, str(tok, "refresh_token"))
	wantUnavailable(t, "refresh on a closed database", s, m, h)
	s, m, _, _ = e.Post(authserver.PathIntrospect, url.Values{"token": {str(tok, "access_token")}}, []string{rsClientID, rsClientSecret})
	if s != http.StatusServiceUnavailable {
		t.Errorf("introspection on a closed database: %d %v", s, m)
	}
}

// assertNoTokenMaterial fails if log holds any of the secrets.
func assertNoTokenMaterial(t *testing.T, log string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(log, s) {
			t.Errorf("the log holds token material %.8s…", s)
		}
	}
}
