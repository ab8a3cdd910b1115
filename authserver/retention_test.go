package authserver_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/sqlitestore"
)

// sqliteCounts returns the rows of each table of the SQLite file at path.
func sqliteCounts(t *testing.T, path string) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := map[string]int{}
	for _, table := range []string{"clients", "grants", "codes", "refresh_tokens", "access_tokens"} {
		var c int
		if err := db.QueryRow("SELECT count(*) FROM " + table).Scan(&c); err != nil {
			t.Fatal(err)
		}
		n[table] = c
	}
	return n
}

// heapInUse returns the heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestRetention_OneGrantManyRefreshes refreshes one grant many times and
// checks that the grant's retired refresh tokens stay bounded by
// Config.RefreshTokenHistory, in memory and in SQLite, while reuse of a
// retained one still revokes. EVERGRANT_RETENTION_REFRESHES sets how many
// refreshes (default 250); with -v it logs rows per table and the heap in
// use before and after. EVERGRANT_RETENTION_KEEP_ALL=1 measures without
// the bound (RefreshTokenHistory -1) and only logs.
func TestRetention_OneGrantManyRefreshes(t *testing.T) {
	n := 250
	if v := os.Getenv("EVERGRANT_RETENTION_REFRESHES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	} else if testing.Short() {
		n = 150
	}
	keepAll := os.Getenv("EVERGRANT_RETENTION_KEEP_ALL") != ""
	const history = 100
	names := []string{"memory", "sqlite"}
	if v := os.Getenv("EVERGRANT_RETENTION_STORE"); v != "" {
		names = []string{v}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			var st authserver.Store
			var counts func() map[string]int
			if name == "memory" {
				m := &authserver.MemoryStore{}
				st, counts = m, func() map[string]int { return authserver.MemoryStoreCounts(m) }
			} else {
				path := filepath.Join(t.TempDir(), "as.db")
				db, err := sqlitestore.Open(context.Background(), path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
				st, counts = db, func() map[string]int { return sqliteCounts(t, path) }
			}
			e := newEnv(t, func(c *authserver.Config) {
				c.Store, c.Logger = st, nil
				if keepAll {
					c.RefreshTokenHistory = -1
				}
			})
			id := e.RegisterPublic(loopbackRedir)
			tok := e.Tokens(id, loopbackRedir)
			first := str(tok, "refresh_token")
			heap0 := heapInUse()
			start := time.Now()
			// ring holds the last tokens: token k (the first is 0) is at
			// ring[k%len(ring)], and was rotated by refresh k+1.
			ring := make([]string, history+2)
			ring[0] = first
			rt := first
			for i := range n {
				s, m := e.Refresh(id, rt)
				if s != http.StatusOK {
					t.Fatalf("refresh %d: %d %v", i, s, m)
				}
				rt = str(m, "refresh_token")
				ring[(i+1)%len(ring)] = rt
			}
			took := time.Since(start)
			heap1 := heapInUse()
			c := counts()
			t.Logf("%s: %d refreshes of one grant in %v (%v each); rows %v; heap in use %.1f MiB before, %.1f MiB after",
				name, n, took.Round(time.Millisecond), (took / time.Duration(n)).Round(time.Microsecond), c,
				float64(heap0)/(1<<20), float64(heap1)/(1<<20))
			if keepAll {
				return
			}
			if got, want := c["refresh_tokens"], min(n, history)+1; got != want {
				t.Errorf("%d refresh token records, want %d (the live one and %d retired)", got, want, history)
			}
			// Tokens 0 … n-history-1 are forgotten: invalid_grant, no
			// revocation. The oldest retained one, n-history, is a reuse:
			// the grant is revoked.
			if n > history {
				for _, pruned := range []string{first, ring[(n-history-1)%len(ring)]} {
					s, m := e.Refresh(id, pruned)
					wantTokenError(t, "refresh with a pruned token", s, m, http.StatusBadRequest, "invalid_grant")
					if !e.Active(rt) {
						t.Fatal("a pruned token's reuse revoked the grant")
					}
				}
			}
			s, m := e.Refresh(id, ring[max(n-history, 0)%len(ring)])
			wantTokenError(t, "reuse of a retained retired token", s, m, http.StatusBadRequest, "invalid_grant")
			if e.Active(rt) {
				t.Fatal("reuse of a retained retired token did not revoke the grant")
			}
		})
	}
}

// TestMaintain_DeletesExpiredWhileIdle: with no request at all, Maintain
// deletes the codes, tokens and grants that expired over an hour ago.
func TestMaintain_DeletesExpiredWhileIdle(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	m := &authserver.MemoryStore{}
	e := newEnv(t, func(c *authserver.Config) {
		c.Store, c.Now = m, clock
		c.RefreshTokenTTL = time.Hour
	})
	id := e.RegisterPublic(loopbackRedir)
	tok := e.Tokens(id, loopbackRedir)
	e.Refresh(id, str(tok, "refresh_token"))
	_, c := pkce()
	e.Code(id, loopbackRedir, c) // a code never exchanged
	if c := authserver.MemoryStoreCounts(m); c["refresh_tokens"] != 2 || c["access_tokens"] != 2 || c["codes"] != 2 {
		t.Fatalf("before: %v", c)
	}
	mu.Lock()
	now = now.Add(2*time.Hour + 2*time.Minute)
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.AS.Maintain(ctx, 5*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	var got map[string]int
	for time.Now().Before(deadline) {
		got = authserver.MemoryStoreCounts(m)
		if got["refresh_tokens"]+got["access_tokens"]+got["codes"]+got["grants"]+got["retired_index"] == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if fmt.Sprint(got) != fmt.Sprint(map[string]int{"access_tokens": 0, "clients": got["clients"], "codes": 0, "grants": 0, "refresh_tokens": 0, "retired_index": 0}) {
		t.Errorf("after Maintain: %v", got)
	}
}
