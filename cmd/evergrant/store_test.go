package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/pgtest"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/store"
)

// TestStoreFlag_PostgresSharedBetweenHosts: with --store postgres://…,
// login, status, call and logout keep the grant in PostgreSQL, not in the
// config dir, so a command with another config dir (another host) uses
// the same grant: after an expiry it refreshes once, and the other host
// then uses the refreshed grant without a refresh of its own.
func TestStoreFlag_PostgresSharedBetweenHosts(t *testing.T) {
	pgURL := pgtest.Start(t).NewDatabase(t)
	e := newCLIEnv(t, stack.Config{})
	e.mustRun(0, "login", "--store", pgURL, e.URL)
	if g := e.grant(); g != nil {
		t.Fatalf("login --store wrote the grant to the config dir")
	}
	out, _ := e.mustRun(0, "status", "--store", pgURL)
	if !strings.Contains(out, e.URL) {
		t.Fatalf("status --store does not list the grant:\n%s", out)
	}
	pg, err := store.OpenPostgres(t.Context(), pgURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	before, err := pg.Load(t.Context(), e.URL)
	if err != nil || before.RefreshToken == "" {
		t.Fatalf("the grant in PostgreSQL: %v", err)
	}

	// Another host: its own config dir, the same store.
	other := func(want int, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var o, eb strings.Builder
		full := append([]string{args[0], "--config-dir", t.TempDir(), "--store", pgURL}, args[1:]...)
		if code := run(withOpener(ctx, e.open), full, &o, &eb); code != want {
			t.Fatalf("evergrant %q: exit %d, want %d\n%s%s", full, code, want, o.String(), eb.String())
		}
		return o.String()
	}
	if out := other(0, "call", e.URL, "whoami"); !strings.Contains(out, "demo-user") {
		t.Fatalf("call from another host:\n%s", out)
	}
	// The access token expires for the servers: one refresh, by whichever
	// host calls first; the other uses its result.
	e.Clock.Advance(2 * time.Hour)
	e.mustRun(0, "call", "--store", pgURL, e.URL, "whoami")
	other(0, "call", e.URL, "whoami")
	if n := e.Refreshes.Load(); n != 1 {
		t.Errorf("refresh grants = %d, want 1 for two hosts sharing the grant", n)
	}
	after, err := pg.Load(t.Context(), e.URL)
	if err != nil || after.AccessToken == before.AccessToken {
		t.Fatalf("the refreshed grant was not saved to PostgreSQL (err %v)", err)
	}
	if n := e.calls.Load(); n != 1 {
		t.Errorf("sign-ins = %d, want 1", n)
	}

	e.mustRun(0, "logout", "--store", pgURL, e.URL)
	if out, _ := e.mustRun(0, "status", "--store", pgURL); strings.Contains(out, e.URL) {
		t.Errorf("status after logout still lists the grant:\n%s", out)
	}
}

// TestStoreFlag_Errors: a --store that is not a postgres URL, or a database
// that cannot be reached, is a clear error that names no password.
func TestStoreFlag_Errors(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	for _, c := range []struct{ store, want string }{
		{"mysql://h/db", "--store: want a postgres:// URL"},
		{"postgres://agent:hunter2@127.0.0.1:1/grants?connect_timeout=2", "--store:"},
	} {
		code, _, errs := e.run("status", "--store", c.store)
		if code != exitError || !strings.Contains(errs, c.want) {
			t.Errorf("--store %q: exit %d, stderr %q; want %d and %q", c.store, code, errs, exitError, c.want)
		}
		if strings.Contains(errs, "hunter2") {
			t.Errorf("the error names the password: %q", errs)
		}
	}
}
