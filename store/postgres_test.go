package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/evergrant/evergrant/internal/pgtest"
	"github.com/evergrant/evergrant/store"
	"github.com/evergrant/evergrant/store/storetest"
)

// pg is the PostgreSQL cluster of this test binary, started by the first
// test that needs it.
var pg pgtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// openPostgres opens a Postgres on url, closed when t ends.
func openPostgres(t testing.TB, url string, opts *store.PostgresOptions) *store.Postgres {
	t.Helper()
	p, err := store.OpenPostgres(t.Context(), url, opts)
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// connect opens a plain connection to url, closed when t ends, for looking
// at the tables behind the store's back.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestPostgres runs the Store conformance suite on Postgres, each subtest
// on a new database.
func TestPostgres(t *testing.T) {
	storetest.TestStore(t, func(t *testing.T) store.Store {
		return openPostgres(t, pg.NewDatabase(t), nil)
	})
}

// TestPostgres_Shared runs the suite's sharing tests on two Postgres
// handles (two connection pools, as two hosts have) on one database.
func TestPostgres_Shared(t *testing.T) {
	storetest.TestShared(t, func(t *testing.T) (a, b store.Store) {
		url := pg.NewDatabase(t)
		return openPostgres(t, url, nil), openPostgres(t, url, nil)
	})
}

// insertLease writes a lease on key behind the store's back, as a host
// that then died would have left it.
func insertLease(t *testing.T, conn *pgx.Conn, key, owner string, expiresIn time.Duration) {
	t.Helper()
	h := sha256.Sum256([]byte(key))
	_, err := conn.Exec(t.Context(),
		"INSERT INTO evergrant_locks (key_hash, owner, expires_at) VALUES ($1, $2, now() + $3 * interval '1 microsecond')",
		h[:], owner, expiresIn.Microseconds())
	if err != nil {
		t.Fatal(err)
	}
}

// TestPostgres_LeaseOfDeadHolderExpires: a lease whose holder died (it
// stopped renewing it and never unlocked) keeps others out until it
// expires, and is then taken over.
func TestPostgres_LeaseOfDeadHolderExpires(t *testing.T) {
	url := pg.NewDatabase(t)
	p := openPostgres(t, url, nil)
	const key = "https://mcp.example.com/mcp"
	const lease = 700 * time.Millisecond
	insertLease(t, connect(t, url), key, "a host that died", lease)
	start := time.Now()

	ctx, cancel := context.WithTimeout(t.Context(), lease/3)
	defer cancel()
	if unlock, err := p.Lock(ctx, key); !errors.Is(err, context.DeadlineExceeded) {
		if unlock != nil {
			unlock()
		}
		t.Fatalf("Lock while the dead holder's lease runs = %v, want context.DeadlineExceeded", err)
	}

	unlock, err := p.Lock(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if d := time.Since(start); d < lease-50*time.Millisecond {
		t.Errorf("Lock took over the lease after %v, before it expired (%v)", d, lease)
	} else if d > lease+2*time.Second {
		t.Errorf("Lock took over the lease %v after it expired", d-lease)
	}
}

// TestPostgres_LiveHolderRenewsLease: a holder keeps its lock for longer
// than its lease, because it renews it; when it unlocks, a waiter on
// another handle gets the lock at once.
func TestPostgres_LiveHolderRenewsLease(t *testing.T) {
	url := pg.NewDatabase(t)
	// A lease long enough that a renewal delayed by a loaded machine
	// (every LeaseTTL/3) still comes in time.
	opts := &store.PostgresOptions{LeaseTTL: time.Second}
	a, b := openPostgres(t, url, opts), openPostgres(t, url, opts)
	const key = "https://mcp.example.com/mcp"
	unlock, err := a.Lock(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*opts.LeaseTTL/2)
	defer cancel()
	if u, err := b.Lock(ctx, key); !errors.Is(err, context.DeadlineExceeded) {
		if u != nil {
			u()
		}
		t.Fatalf("Lock through b while a held the key for 2.5 leases = %v, want context.DeadlineExceeded (the lease was not renewed)", err)
	}
	unlock()
	ctx, cancel = context.WithTimeout(t.Context(), opts.LeaseTTL/2)
	defer cancel()
	u, err := b.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock through b right after a unlocked: %v", err)
	}
	u()
}

// TestPostgres_CloseReleasesLeases: closing a handle gives up the locks
// held through it, so other hosts need not wait for their leases to
// expire, and a later unlock of them does nothing.
func TestPostgres_CloseReleasesLeases(t *testing.T) {
	url := pg.NewDatabase(t)
	a, b := openPostgres(t, url, nil), openPostgres(t, url, nil)
	const key = "https://mcp.example.com/mcp"
	unlockA, err := a.Lock(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	unlockB, err := b.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock through b after a closed: %v", err)
	}
	defer unlockB()
	unlockA() // must not release b's lock
	ctx, cancel = context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if u, err := b.Lock(ctx, key); !errors.Is(err, context.DeadlineExceeded) {
		if u != nil {
			u()
		}
		t.Errorf("Lock while b holds the key, after a stale unlock through the closed a = %v, want context.DeadlineExceeded", err)
	}
}

// TestPostgres_ManyHandlesContend: 50 goroutines on 3 handles (3 hosts)
// take one key's lock in turn; no two are ever inside at once, and no
// increment of a counter kept in the store is lost.
func TestPostgres_ManyHandlesContend(t *testing.T) {
	url := pg.NewDatabase(t)
	handles := []*store.Postgres{openPostgres(t, url, nil), openPostgres(t, url, nil), openPostgres(t, url, nil)}
	const key, n = "https://mcp.example.com/mcp", 50
	if err := handles[0].Save(t.Context(), &store.Grant{Key: key, AccessToken: "0"}); err != nil {
		t.Fatal(err)
	}
	var (
		inside, maxInside atomic.Int32
		wg                sync.WaitGroup
	)
	for i := range n {
		s := handles[i%len(handles)]
		wg.Go(func() {
			unlock, err := s.Lock(t.Context(), key)
			if err != nil {
				t.Error(err)
				return
			}
			defer unlock()
			now := inside.Add(1)
			defer inside.Add(-1)
			for {
				m := maxInside.Load()
				if now <= m || maxInside.CompareAndSwap(m, now) {
					break
				}
			}
			g, err := s.Load(t.Context(), key)
			if err != nil {
				t.Error(err)
				return
			}
			var v int
			fmt.Sscan(g.AccessToken, &v)
			time.Sleep(time.Millisecond)
			g.AccessToken = fmt.Sprint(v + 1)
			if err := s.Save(t.Context(), g); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := maxInside.Load(); m != 1 {
		t.Errorf("%d holders were inside the lock at once", m)
	}
	g, err := handles[1].Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken != fmt.Sprint(n) {
		t.Errorf("counter = %s after %d locked increments, want %d", g.AccessToken, n, n)
	}
}

// TestPostgres_RefusesNewerSchema: a database whose schema a newer
// evergrant made is refused with a clear error, and left as it is.
func TestPostgres_RefusesNewerSchema(t *testing.T) {
	url := pg.NewDatabase(t)
	p := openPostgres(t, url, nil)
	if err := p.Save(t.Context(), &store.Grant{Key: "https://k.example/", AccessToken: "x"}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	conn := connect(t, url)
	newer := store.PostgresSchemaVersion() + 1
	if _, err := conn.Exec(t.Context(), "UPDATE evergrant_schema_version SET version = $1", newer); err != nil {
		t.Fatal(err)
	}
	_, err := store.OpenPostgres(t.Context(), url, nil)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("OpenPostgres of a newer schema: err = %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{fmt.Sprintf("version %d", newer), fmt.Sprintf("up to %d", newer-1), "127.0.0.1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	var v int
	if err := conn.QueryRow(t.Context(), "SELECT version FROM evergrant_schema_version").Scan(&v); err != nil || v != newer {
		t.Errorf("schema version after the refusal = %d, %v; want %d, untouched", v, err, newer)
	}
}

// TestPostgres_MigratesOnce: opening a database creates the schema at the
// newest version, once, however many hosts open it at the same time, and
// reopening keeps the data.
func TestPostgres_MigratesOnce(t *testing.T) {
	url := pg.NewDatabase(t)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			p, err := store.OpenPostgres(t.Context(), url, nil)
			if err != nil {
				t.Error(err)
				return
			}
			p.Close()
		})
	}
	wg.Wait()
	conn := connect(t, url)
	var versions []int
	rows, err := conn.Query(t.Context(), "SELECT version FROM evergrant_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	versions, err = pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if len(versions) != 1 || versions[0] != store.PostgresSchemaVersion() {
		t.Errorf("schema versions recorded = %v, want one, %d", versions, store.PostgresSchemaVersion())
	}

	p := openPostgres(t, url, nil)
	g := &store.Grant{Key: "https://k.example/", AccessToken: "kept"}
	if err := p.Save(t.Context(), g); err != nil {
		t.Fatal(err)
	}
	p.Close()
	got, err := openPostgres(t, url, nil).Load(t.Context(), g.Key)
	if err != nil || got.AccessToken != "kept" {
		t.Errorf("Load after reopening = %v; want the saved grant", err)
	}
}

// TestPostgres_Unreachable: a database that cannot be reached gives an
// error that says where, promptly, and never the password.
func TestPostgres_Unreachable(t *testing.T) {
	// A loopback port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	const password = "hunter2-secret"
	url := fmt.Sprintf("postgres://evergrant:%s@127.0.0.1:%d/grants?sslmode=disable&connect_timeout=5", password, port)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	p, err := store.OpenPostgres(ctx, url, nil)
	if err == nil {
		p.Close()
		t.Fatal("OpenPostgres of an unreachable database succeeded")
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	for _, want := range []string{fmt.Sprintf("127.0.0.1:%d", port), `"grants"`, "refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, password) {
		t.Errorf("error %q shows the password", msg)
	}

	_, err = store.OpenPostgres(ctx, "postgres://evergrant:"+password+"@127.0.0.1:notaport/grants", nil)
	if err == nil || strings.Contains(err.Error(), password) {
		t.Errorf("OpenPostgres of a malformed URL: err = %v; want an error without the password", err)
	}
}

// TestPostgres_ErrorsHoldNoTokens: a failing operation's error does not
// quote the grant it was given.
func TestPostgres_ErrorsHoldNoTokens(t *testing.T) {
	url := pg.NewDatabase(t)
	p := openPostgres(t, url, nil)
	// Break the table behind the store's back so that Save fails in the
	// database, with the grant as its argument.
	if _, err := connect(t, url).Exec(t.Context(), "ALTER TABLE evergrant_grants ADD CONSTRAINT no_saves CHECK (false) NOT VALID"); err != nil {
		t.Fatal(err)
	}
	g := &store.Grant{Key: "https://k.example/", AccessToken: "at-secret-value", RefreshToken: "rt-secret-value", ClientSecret: "cs-secret-value"}
	err := p.Save(t.Context(), g)
	if err == nil {
		t.Fatal("Save into a table that refuses every row succeeded")
	}
	for _, secret := range []string{g.AccessToken, g.RefreshToken, g.ClientSecret} {
		if strings.Contains(fmt.Sprintf("%v %+v", err, err), secret) {
			t.Errorf("Save's error %q shows a secret", err)
		}
	}
}

// TestPostgres_CorruptRow: a row that does not decode gives an error
// wrapping ErrCorrupt that does not quote it.
func TestPostgres_CorruptRow(t *testing.T) {
	url := pg.NewDatabase(t)
	p := openPostgres(t, url, nil)
	const key = "https://k.example/"
	if err := p.Save(t.Context(), &store.Grant{Key: key, AccessToken: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, url).Exec(t.Context(), `UPDATE evergrant_grants SET grant_json = '{"access_token": 42, "refresh_token": "rt-secret-value"}'`); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"Load": func() error { _, err := p.Load(t.Context(), key); return err },
		"List": func() error { _, err := p.List(t.Context()); return err },
	} {
		err := f()
		if !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("%s of a corrupt row: err = %v, want ErrCorrupt", name, err)
			continue
		}
		if strings.Contains(err.Error(), "rt-secret-value") {
			t.Errorf("%s: error %q quotes the row", name, err)
		}
	}
}

func TestPostgres_Options(t *testing.T) {
	for _, ttl := range []time.Duration{-time.Second, time.Nanosecond, store.MinLeaseTTL - 1} {
		if _, err := store.OpenPostgres(t.Context(), "postgres://127.0.0.1:1/x", &store.PostgresOptions{LeaseTTL: ttl}); err == nil {
			t.Errorf("OpenPostgres with LeaseTTL %v succeeded", ttl)
		}
	}
	if v := store.PostgresSchemaVersion(); v < 1 {
		t.Errorf("PostgresSchemaVersion() = %d", v)
	}
}
