// Package pgtest runs throwaway PostgreSQL clusters for tests.
//
// A cluster is made with initdb and started with pg_ctl, listening only on
// 127.0.0.1 with trust authentication, fsync off, its data in a temporary
// directory. PostgreSQL refuses to run as root, so when the tests run as
// root (as CI does) the cluster runs as the user postgres, or nobody if
// there is no such user; otherwise it runs as the current user.
//
// Starting a cluster takes a second or two, so a test binary shares one and
// gives each test its own database:
//
//	var pg pgtest.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pg.Stop()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		url := pg.NewDatabase(t) // a new, empty database, dropped when t ends
//		…
//	}
//
// The PostgreSQL server binaries (initdb, pg_ctl, postgres) come from the
// directory in the EVERGRANT_PG_BIN environment variable, or else the newest
// /usr/lib/postgresql/*/bin (Debian's layout), or else the directory of
// initdb on PATH. scripts/setup-postgres.sh installs them. When they are
// missing, tests that need a cluster skip, saying to run that script,
// except under CI=true, where they fail.
//
// pg_ctl runs the server in the background, so a test binary that is
// killed before Stop leaves its cluster running, in a directory named
// $TMPDIR/evergrant-pgtest-*; stop it with pg_ctl stop -D <that>/data.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// setupHint tells a developer how to install what is missing.
const setupHint = "run scripts/setup-postgres.sh (or set EVERGRANT_PG_BIN to the directory of initdb)"

// Superuser is the name of the cluster's superuser, the user of the URLs
// this package returns.
const Superuser = "postgres"

// ErrNotInstalled is wrapped by the error of StartCluster when the
// PostgreSQL server binaries cannot be found.
var ErrNotInstalled = errors.New("pgtest: PostgreSQL server binaries not found")

// startTimeout bounds initdb plus the server's start.
const startTimeout = 2 * time.Minute

// Cluster is a running throwaway PostgreSQL cluster. Create one with Start
// or StartCluster, or share one through Shared.
type Cluster struct {
	bin  string // directory of initdb, pg_ctl and postgres
	base string // temporary directory: data/, postgres.log
	port int
	run  runAs

	mu      sync.Mutex
	admin   *pgx.Conn // to the postgres database, for CREATE DATABASE
	nextDB  int
	stopped bool
}

// Start starts a cluster and stops it, removing its files, when t and its
// subtests end. It skips t when the PostgreSQL binaries are missing (fails
// it under CI=true), and fails t when the cluster does not start.
func Start(t testing.TB) *Cluster {
	t.Helper()
	c, err := StartCluster(context.Background())
	if err != nil {
		skipOrFatal(t, err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}

// skipOrFatal ends t for err from StartCluster: a skip naming the setup
// script when the binaries are missing and CI is not "true", a failure
// otherwise.
func skipOrFatal(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNotInstalled) {
		msg := fmt.Sprintf("test needs PostgreSQL: %v; %s", err, setupHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Fatalf("pgtest: %v", err)
}

// StartCluster initializes and starts a cluster, waiting until it accepts
// connections. The caller must call Stop. When the PostgreSQL binaries are
// missing the error wraps ErrNotInstalled.
func StartCluster(ctx context.Context) (_ *Cluster, err error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	run, err := clusterUser()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp("", "evergrant-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{bin: bin, base: base, run: run}
	defer func() {
		if err != nil {
			c.stopServer()
			os.RemoveAll(base)
		}
	}()
	if err := run.own(base); err != nil {
		return nil, fmt.Errorf("pgtest: giving %s to the cluster's user: %w", base, err)
	}
	if _, err := c.command(ctx, "initdb", "-D", c.dataDir(), "-U", Superuser, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return nil, err
	}
	// A free port can be taken by someone else between choosing it and
	// the server binding it; try a few.
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
		if err = c.writeConfig(); err != nil {
			return nil, err
		}
		out, startErr := c.command(ctx, "pg_ctl", "start", "-w", "-t", "60", "-D", c.dataDir(), "-l", c.logFile())
		if startErr == nil {
			break
		}
		log, _ := os.ReadFile(c.logFile())
		if attempt < 5 && bytes.Contains(log, []byte("could not bind")) {
			continue
		}
		return nil, fmt.Errorf("%w\n%s\nserver log:\n%s", startErr, out, log)
	}
	if c.admin, err = connect(ctx, c.URL("postgres")); err != nil {
		return nil, fmt.Errorf("pgtest: connecting to the new cluster: %w", err)
	}
	return c, nil
}

// connect connects to url, retrying briefly: pg_ctl -w returns once the
// server says it is ready, but a connection can still race its start.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	for {
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) dataDir() string { return filepath.Join(c.base, "data") }
func (c *Cluster) logFile() string { return filepath.Join(c.base, "postgres.log") }

// writeConfig appends the cluster's settings to postgresql.conf (later lines
// win, so a retry with another port just appends again).
func (c *Cluster) writeConfig() error {
	conf := fmt.Sprintf(`
# pgtest
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 32MB
`, c.port)
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: writing postgresql.conf: %w", err)
	}
	return nil
}

// command runs one of the cluster's binaries as the cluster's user, in
// the cluster's directory, and returns its combined output.
func (c *Cluster) command(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.base
	cmd.Env = childEnv()
	// pg_ctl leaves the server running with its output in the log file;
	// writing to a file rather than a pipe means no wait for the server's
	// copy of the descriptors to close.
	out, err := os.CreateTemp("", "evergrant-pgtest-out-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	c.run.apply(cmd)
	runErr := cmd.Run()
	output, _ := os.ReadFile(out.Name())
	if runErr != nil {
		return output, fmt.Errorf("pgtest: %s %s: %w\n%s", name, strings.Join(args, " "), runErr, output)
	}
	return output, nil
}

// childEnv is the environment of the cluster's commands: this process's,
// without PG* variables (which would redirect them) and in the C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// URL returns the URL of database dbname in c, as the superuser, without
// TLS.
func (c *Cluster) URL(dbname string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, c.port, dbname)
}

// Port returns the TCP port the cluster listens on, on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// CreateDatabase creates a new, empty database and returns its URL.
func (c *Cluster) CreateDatabase(ctx context.Context) (url string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return "", errors.New("pgtest: cluster is stopped")
	}
	c.nextDB++
	name := "test_" + strconv.Itoa(c.nextDB)
	if _, err := c.admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: creating database %s: %w", name, err)
	}
	return c.URL(name), nil
}

// DropDatabase drops the database of url, made by CreateDatabase,
// disconnecting whoever is still connected to it.
func (c *Cluster) DropDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	name := pgx.Identifier{cfg.Database}.Sanitize()
	if _, err := c.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgtest: dropping database %s: %w", name, err)
	}
	return nil
}

// NewDatabase creates a new, empty database for t, dropped when t ends,
// and returns its URL. It fails t if the database cannot be created.
func (c *Cluster) NewDatabase(t testing.TB) (url string) {
	t.Helper()
	url, err := c.CreateDatabase(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.DropDatabase(ctx, url); err != nil {
			t.Errorf("%v", err)
		}
	})
	return url
}

// Stop stops the server at once and removes the cluster's files. Calling
// it again does nothing.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	if c.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.admin.Close(ctx)
		cancel()
	}
	err := c.stopServer()
	if rmErr := os.RemoveAll(c.base); rmErr != nil && err == nil {
		err = fmt.Errorf("pgtest: %w", rmErr)
	}
	return err
}

// stopServer stops the server, if it runs, with pg_ctl's immediate mode:
// the data is thrown away anyway.
func (c *Cluster) stopServer() error {
	if _, err := os.Stat(filepath.Join(c.dataDir(), "postmaster.pid")); err != nil {
		return nil // not running
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.command(ctx, "pg_ctl", "stop", "-w", "-m", "immediate", "-D", c.dataDir())
	return err
}

// Shared is a cluster that a test binary starts on first use and shares
// between its tests. Its zero value is ready to use; call Stop at the end
// of TestMain. A Shared must not be copied after first use.
type Shared struct {
	mu      sync.Mutex
	c       *Cluster
	err     error
	started bool
}

// Cluster returns the shared cluster, starting it on first use. It skips t
// when the PostgreSQL binaries are missing (fails it under CI=true) and
// fails t when the cluster did not start; a failed start is not retried.
func (s *Shared) Cluster(t testing.TB) *Cluster {
	t.Helper()
	s.mu.Lock()
	if !s.started {
		s.started = true
		s.c, s.err = StartCluster(context.Background())
	}
	c, err := s.c, s.err
	s.mu.Unlock()
	if err != nil {
		skipOrFatal(t, err)
	}
	return c
}

// NewDatabase creates a new, empty database in the shared cluster for t,
// dropped when t ends, and returns its URL. See Cluster for when it skips
// or fails t.
func (s *Shared) NewDatabase(t testing.TB) (url string) {
	t.Helper()
	return s.Cluster(t).NewDatabase(t)
}

// Stop stops the shared cluster, if it was started, and removes its files.
func (s *Shared) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil
	}
	return s.c.Stop()
}

// findBin returns the directory holding initdb, pg_ctl and postgres:
// EVERGRANT_PG_BIN if set (and then only it), else the newest
// /usr/lib/postgresql/*/bin, else the directory initdb on PATH resolves to.
func findBin() (string, error) {
	return findBinIn(os.Getenv("EVERGRANT_PG_BIN"), "/usr/lib/postgresql")
}

func findBinIn(explicit, debianRoot string) (string, error) {
	if explicit != "" {
		if err := hasBinaries(explicit); err != nil {
			return "", fmt.Errorf("%w: EVERGRANT_PG_BIN=%s: %v", ErrNotInstalled, explicit, err)
		}
		return explicit, nil
	}
	var tried []string
	dirs, _ := filepath.Glob(filepath.Join(debianRoot, "*", "bin"))
	slices.SortFunc(dirs, func(a, b string) int { return compareVersionDirs(b, a) }) // newest first
	for _, d := range dirs {
		if err := hasBinaries(d); err == nil {
			return d, nil
		}
		tried = append(tried, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			d := filepath.Dir(real)
			if err := hasBinaries(d); err == nil {
				return d, nil
			}
			tried = append(tried, d)
		}
	} else {
		tried = append(tried, "initdb: not on PATH")
	}
	if len(tried) == 0 || len(dirs) == 0 {
		tried = append([]string{filepath.Join(debianRoot, "*", "bin") + ": none"}, tried...)
	}
	return "", fmt.Errorf("%w (looked in %s)", ErrNotInstalled, strings.Join(tried, "; "))
}

// compareVersionDirs orders /…/<major>/bin directories by major version,
// numerically, then by name.
func compareVersionDirs(a, b string) int {
	va, erra := strconv.Atoi(filepath.Base(filepath.Dir(a)))
	vb, errb := strconv.Atoi(filepath.Base(filepath.Dir(b)))
	if erra == nil && errb == nil && va != vb {
		return va - vb
	}
	return strings.Compare(a, b)
}

// hasBinaries reports whether dir holds executable initdb, pg_ctl and
// postgres.
func hasBinaries(dir string) error {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("no %s", name)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", name)
		}
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
