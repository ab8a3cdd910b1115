package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

var shared Shared

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func mustConnect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestNewDatabase: each database is new, empty and apart from the others,
// and the server does not run as root.
func TestNewDatabase(t *testing.T) {
	a, b := shared.NewDatabase(t), shared.NewDatabase(t)
	if a == b {
		t.Fatalf("two NewDatabase calls returned the same URL %s", a)
	}
	for _, url := range []string{a, b} {
		if !strings.HasPrefix(url, "postgres://postgres@127.0.0.1:") {
			t.Errorf("URL %s is not on 127.0.0.1", url)
		}
	}
	ca, cb := mustConnect(t, a), mustConnect(t, b)
	if _, err := ca.Exec(t.Context(), "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(t.Context(), "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("a table created in one database is visible in the other")
	}
	var user string
	if err := ca.QueryRow(t.Context(), "SELECT current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	if user != Superuser {
		t.Errorf("current_user = %q, want %q", user, Superuser)
	}
	var dataDir string
	if err := ca.QueryRow(t.Context(), "SHOW data_directory").Scan(&dataDir); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && os.Geteuid() == 0 {
		if owner := fileOwner(t, dataDir); owner == 0 {
			t.Errorf("the cluster's data directory %s belongs to root; the server must run as another user", dataDir)
		}
	}
}

// TestDropDatabase: a database is dropped when its test ends, even with a
// connection still open.
func TestDropDatabase(t *testing.T) {
	c := shared.Cluster(t)
	url, err := c.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn := mustConnect(t, url)
	if err := c.DropDatabase(t.Context(), url); err != nil {
		t.Fatalf("DropDatabase with a connection open: %v", err)
	}
	if err := conn.Ping(t.Context()); err == nil {
		t.Error("a connection to a dropped database still works")
	}
	if _, err := pgx.Connect(t.Context(), url); err == nil {
		t.Error("connecting to a dropped database succeeded")
	}
}

// TestConcurrentDatabases: tests in parallel get their own databases.
func TestConcurrentDatabases(t *testing.T) {
	var (
		mu   sync.Mutex
		urls = map[string]bool{}
	)
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			url := shared.NewDatabase(t)
			mu.Lock()
			defer mu.Unlock()
			if urls[url] {
				t.Errorf("URL %s given twice", url)
			}
			urls[url] = true
		})
	}
}

// TestStartStop: a cluster of its own starts, serves, and is gone after
// Stop, files and all; Stop is idempotent.
func TestStartStop(t *testing.T) {
	c, err := StartCluster(t.Context())
	if errors.Is(err, ErrNotInstalled) {
		skipOrFatal(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	url := c.URL("postgres")
	conn := mustConnect(t, url)
	if err := conn.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	base := c.base
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, %s: err = %v, want it gone", base, err)
	}
	if _, err := pgx.Connect(t.Context(), url); err == nil {
		t.Error("connecting after Stop succeeded")
	}
	if _, err := c.CreateDatabase(t.Context()); err == nil {
		t.Error("CreateDatabase after Stop succeeded")
	}
}

func TestFindBin(t *testing.T) {
	root := t.TempDir()
	mk := func(dir string, names ...string) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	all := []string{"initdb", "pg_ctl", "postgres"}
	mk(filepath.Join(root, "9", "bin"), all...)
	v15 := mk(filepath.Join(root, "15", "bin"), all...)
	mk(filepath.Join(root, "16", "bin"), "initdb") // incomplete: skipped
	t.Setenv("PATH", t.TempDir())

	if got, err := findBinIn("", root); err != nil || got != v15 {
		t.Errorf("findBinIn = %q, %v; want the newest complete version %q", got, err, v15)
	}
	explicit := mk(filepath.Join(t.TempDir(), "mine"), all...)
	if got, err := findBinIn(explicit, root); err != nil || got != explicit {
		t.Errorf("with EVERGRANT_PG_BIN: %q, %v; want %q", got, err, explicit)
	}
	if _, err := findBinIn(t.TempDir(), root); !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "EVERGRANT_PG_BIN") {
		t.Errorf("with an empty EVERGRANT_PG_BIN directory: err = %v, want ErrNotInstalled naming EVERGRANT_PG_BIN", err)
	}
	if _, err := findBinIn("", t.TempDir()); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("with nothing installed: err = %v, want ErrNotInstalled", err)
	}
}

// recordingTB stands in for a test so that Skip and Fatal can be observed;
// like the real ones, they end the calling goroutine.
type recordingTB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skip(args ...any) {
	r.mu.Lock()
	r.skipped, r.msg = true, fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Fatal(args ...any) {
	r.mu.Lock()
	r.failed, r.msg = true, fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Fatalf(format string, args ...any) { r.Fatal(fmt.Sprintf(format, args...)) }

func TestSkipsLocallyAndFailsInCI(t *testing.T) {
	// An EVERGRANT_PG_BIN without binaries makes PostgreSQL missing
	// whatever this machine has.
	t.Setenv("EVERGRANT_PG_BIN", t.TempDir())
	for _, ci := range []string{"", "false", "true"} {
		t.Setenv("CI", ci)
		for name, start := range map[string]func(testing.TB){
			"Start":              func(tb testing.TB) { Start(tb) },
			"Shared.NewDatabase": func(tb testing.TB) { new(Shared).NewDatabase(tb) },
		} {
			r := &recordingTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				start(r)
			}()
			<-done
			wantSkip := ci != "true"
			if r.skipped != wantSkip || r.failed == wantSkip {
				t.Errorf("%s, CI=%q: skipped = %v, failed = %v; want skipped = %v", name, ci, r.skipped, r.failed, wantSkip)
			}
			if !strings.Contains(r.msg, "scripts/setup-postgres.sh") {
				t.Errorf("%s, CI=%q: message %q does not name scripts/setup-postgres.sh", name, ci, r.msg)
			}
		}
	}
}
