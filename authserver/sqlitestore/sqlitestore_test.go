package sqlitestore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/sqlitestore"
	"github.com/evergrant/evergrant/authserver/storetest"
)

func open(t *testing.T, path string) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	storetest.TestStore(t, func(t *testing.T) authserver.Store {
		return open(t, filepath.Join(t.TempDir(), "state.db"))
	})
}

// TestShared runs the shared-storage suite on two handles on one file, as
// two processes would have them.
func TestShared(t *testing.T) {
	storetest.TestShared(t, func(t *testing.T) (a, b authserver.Store) {
		path := filepath.Join(t.TempDir(), "state.db")
		return open(t, path), open(t, path)
	})
}

// TestReopen: everything saved is there after the file is closed and
// opened again.
func TestReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlitestore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	keys := &authserver.SigningKeys{Current: []byte("current"), Previous: []byte("previous"), RotatedAt: exp}
	for what, err := range map[string]error{
		"SaveClient":       s.SaveClient(ctx, &authserver.Client{ID: "c", Dynamic: true}),
		"SaveGrant":        s.SaveGrant(ctx, &authserver.Grant{ID: "g", ClientID: "c", ExpiresAt: exp}),
		"SaveCode":         s.SaveCode(ctx, &authserver.Code{Hash: "code", GrantID: "g", ExpiresAt: exp}),
		"SaveRefreshToken": s.SaveRefreshToken(ctx, &authserver.RefreshToken{Hash: "rt", GrantID: "g", ExpiresAt: exp}),
		"SaveAccessToken":  s.SaveAccessToken(ctx, &authserver.AccessToken{JTI: "jti", GrantID: "g", ExpiresAt: exp}),
		"SaveKeys":         s.SaveKeys(ctx, keys),
	} {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if _, err := s.TakeCode(ctx, "code"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	if c, err := s.Client(ctx, "c"); err != nil || !c.Dynamic {
		t.Errorf("client after reopen: %+v, %v", c, err)
	}
	if g, err := s.Grant(ctx, "g"); err != nil || !g.ExpiresAt.Equal(exp) {
		t.Errorf("grant after reopen: %+v, %v", g, err)
	}
	if _, err := s.TakeCode(ctx, "code"); !errors.Is(err, authserver.ErrCodeUsed) {
		t.Errorf("TakeCode of a code taken before reopen: %v, want ErrCodeUsed", err)
	}
	if _, err := s.RefreshToken(ctx, "rt"); err != nil {
		t.Errorf("refresh token after reopen: %v", err)
	}
	if _, err := s.AccessToken(ctx, "jti"); err != nil {
		t.Errorf("access token after reopen: %v", err)
	}
	got, err := s.InitKeys(ctx, &authserver.SigningKeys{Current: []byte("other")})
	if err != nil || !bytes.Equal(got.Current, keys.Current) || !bytes.Equal(got.Previous, keys.Previous) || !got.RotatedAt.Equal(exp) {
		t.Errorf("keys after reopen: %v", err)
	}
}

// TestServerRestart: an authorization server restarted on the same file
// publishes the same signing keys, so the tokens it issued keep verifying.
func TestServerRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	start := func() *authserver.Server {
		t.Helper()
		srv, err := authserver.New(authserver.Config{Issuer: "http://127.0.0.1:9/", Store: open(t, path)})
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	first := start()
	if _, err := first.RotateKey(); err != nil {
		t.Fatal(err)
	}
	if got, want := string(start().JWKS()), string(first.JWKS()); got != want {
		t.Errorf("restarted server publishes %s, want %s", got, want)
	}
}

// TestForeignFile: a file that is not an evergrant database is refused,
// with its name, and left as it was.
func TestForeignFile(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	content := []byte(strings.Repeat("not a database at all\n", 100))
	if err := os.WriteFile(text, content, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me')"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	otherContent, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string][]byte{text: content, other: otherContent} {
		s, err := sqlitestore.Open(t.Context(), path)
		if err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded on a foreign file", path)
			continue
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "not an evergrant database") {
			t.Errorf("Open(%s): %v; want an error naming the file and saying it is not an evergrant database", path, err)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
			t.Errorf("Open(%s) changed the foreign file", path)
		}
	}
}

// TestNewerSchema: a database of a newer schema version is refused.
func TestNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlitestore.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = sqlitestore.Open(t.Context(), path)
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded on a database of schema version 99")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "schema version 99") {
		t.Errorf("Open: %v; want an error naming the file and its schema version", err)
	}
}

// TestPermissions: the directory is created 0700, the database and its
// WAL files 0600, whatever the umask lets through.
func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "serve")
	path := filepath.Join(dir, "state.db")
	s := open(t, path)
	if err := s.SaveClient(context.Background(), &authserver.Client{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %v, want 0700", p, perm)
		}
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Errorf("files %v: want the database and its WAL", files)
	}
	for _, f := range files {
		fi, err := f.Info()
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", f.Name(), perm)
		}
	}
}
