package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultLeaseTTL is the lease of a Postgres lock when PostgresOptions
// does not set one: longer than the client's refresh timeout (30 s) plus
// a save, so that even a holder that cannot renew its lease keeps it for
// a whole refresh.
const DefaultLeaseTTL = 60 * time.Second

// MinLeaseTTL is the shortest lease PostgresOptions may set.
const MinLeaseTTL = 100 * time.Millisecond

// ErrSchemaTooNew is wrapped by the error of OpenPostgres for a database
// whose evergrant schema is newer than this version of evergrant knows.
var ErrSchemaTooNew = errors.New("store: the database's schema is newer than this version of evergrant")

const (
	// pgMigrationLock is the key of the advisory lock under which
	// OpenPostgres reads and migrates the schema (the first 8 bytes of
	// the SHA-256 of "evergrant.store.migrate").
	pgMigrationLock int64 = 0x1c0f_7a43_5be2_9d61

	pgLockPollMin = 5 * time.Millisecond
	pgLockPollMax = 50 * time.Millisecond

	// pgReleaseTimeout bounds the statement that releases a lease (unlock
	// has no context); a lease not released expires.
	pgReleaseTimeout = 10 * time.Second
)

//go:embed migrations/postgres/*.sql
var pgMigrationFS embed.FS

// PostgresOptions configures OpenPostgres. The zero value (or nil) gives
// the defaults.
type PostgresOptions struct {
	// LeaseTTL is how long a lock outlives a holder that stops renewing
	// it: a host that dies, or loses the database, while it holds a lock.
	// Holders renew their leases every LeaseTTL/3 while they hold them,
	// so a live holder keeps its lock however long it holds it. Zero
	// means DefaultLeaseTTL. Hosts sharing a database should use the same
	// value. It must not be shorter than MinLeaseTTL.
	LeaseTTL time.Duration
}

// Postgres is a Store in a PostgreSQL database, for hosts that share
// grants: every host that opens the same database sees the same grants
// and registrations, and Lock excludes every holder of a key on every
// host (docs/design.md#client-rule-7). Create one with OpenPostgres and
// release it with Close.
//
// Its tables (evergrant_grants, evergrant_registrations, evergrant_locks
// and evergrant_schema_version) live in the first schema of the
// connection's search_path; set it in the URL
// (options=-csearch_path%3Dname) to keep them apart. OpenPostgres creates
// them, and migrates them when a newer evergrant adds a schema version.
// Grants and registrations are stored as JSON, with the tokens and client
// secrets in them in the clear: protect the database as you would the
// tokens.
//
// Lock is a lease: a row of evergrant_locks claimed in one statement,
// which its holder renews in the background and deletes at unlock. No
// connection or transaction stays open while a lock is held. Waiters poll,
// with a backoff from 5 to 50 ms; goroutines of one Postgres wait for a
// key in turn, so only one of them polls. The lease of a holder that dies
// expires after PostgresOptions.LeaseTTL and is then taken over. Times are
// the database server's, so the hosts' clocks do not matter.
//
// A Postgres is safe for concurrent use by many goroutines and hosts.
type Postgres struct {
	pool  *pgxpool.Pool
	ttl   time.Duration
	locks keyLocks // waiters of this handle take turns per key

	mu   sync.Mutex
	held map[string][]byte // lease owner → key hash, the leases to renew

	stopRenew context.CancelFunc
	renewDone chan struct{}
	closeOnce sync.Once
}

var _ Store = (*Postgres)(nil)

// OpenPostgres connects to the PostgreSQL database at url (a URL or a
// keyword/value connection string, as pgx and libpq accept, including
// pool settings such as pool_max_conns), creates or migrates the schema,
// and returns the store. ctx bounds the connection and the migration.
//
// The schema is versioned; OpenPostgres applies the versions the database
// lacks, in one transaction, under an advisory lock so that hosts starting
// together migrate once. It refuses a database whose schema is newer than
// this version of evergrant knows, with an error wrapping ErrSchemaTooNew.
// Errors name the host and database, never the password.
func OpenPostgres(ctx context.Context, url string, opts *PostgresOptions) (*Postgres, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ttl := DefaultLeaseTTL
	if opts != nil && opts.LeaseTTL != 0 {
		if opts.LeaseTTL < MinLeaseTTL {
			return nil, fmt.Errorf("store: OpenPostgres: LeaseTTL %v is shorter than %v", opts.LeaseTTL, MinLeaseTTL)
		}
		ttl = opts.LeaseTTL
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors may quote the URL, password and all.
		return nil, errors.New("store: OpenPostgres: the PostgreSQL connection string does not parse (its text is left out of this error: it may hold a password)")
	}
	where := describeDB(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("store: PostgreSQL %s: %w", where, err)
	}
	if err := migratePostgres(ctx, pool); err != nil {
		pool.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrSchemaTooNew) {
			return nil, fmt.Errorf("store: opening PostgreSQL %s: %w (%w)", where, ctx.Err(), err)
		}
		return nil, fmt.Errorf("store: opening PostgreSQL %s: %w", where, err)
	}
	renewCtx, stop := context.WithCancel(context.Background())
	p := &Postgres{
		pool:      pool,
		ttl:       ttl,
		held:      make(map[string][]byte),
		stopRenew: stop,
		renewDone: make(chan struct{}),
	}
	go p.renew(renewCtx)
	return p, nil
}

// describeDB names the server and database of cfg for errors: host:port
// and database, never the password.
func describeDB(cfg *pgxpool.Config) string {
	cc := cfg.ConnConfig
	host := cc.Host
	if strings.HasPrefix(host, "/") {
		host = path.Join(host, ".s.PGSQL."+strconv.Itoa(int(cc.Port)))
	} else {
		host += ":" + strconv.Itoa(int(cc.Port))
	}
	return fmt.Sprintf("at %s, database %q", host, cc.Database)
}

// pgMigrations returns the schema's migrations in order: migration i
// (from 0) brings the schema to version i+1. Their files are named
// NNNN_what.sql, NNNN being that version.
func pgMigrations() ([]string, error) {
	entries, err := fs.ReadDir(pgMigrationFS, "migrations/postgres")
	if err != nil {
		return nil, err
	}
	var migs []string
	for _, e := range entries { // sorted by name
		want := fmt.Sprintf("%04d_", len(migs)+1)
		if !strings.HasPrefix(e.Name(), want) {
			return nil, fmt.Errorf("store: migration %s: want a name starting with %s", e.Name(), want)
		}
		data, err := fs.ReadFile(pgMigrationFS, "migrations/postgres/"+e.Name())
		if err != nil {
			return nil, err
		}
		migs = append(migs, string(data))
	}
	return migs, nil
}

// PostgresSchemaVersion is the newest schema version of the PostgreSQL
// store that this version of evergrant knows and creates.
func PostgresSchemaVersion() int {
	migs, err := pgMigrations()
	if err != nil {
		panic(err) // the embedded files are checked by the tests
	}
	return len(migs)
}

// migratePostgres brings the schema of pool's database to the newest
// version, in one transaction under the advisory lock pgMigrationLock.
func migratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	migs, err := pgMigrations()
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", pgMigrationLock); err != nil {
		return fmt.Errorf("taking the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS evergrant_schema_version (version integer NOT NULL)"); err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(max(version), 0) FROM evergrant_schema_version").Scan(&version); err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	if version > len(migs) {
		return fmt.Errorf("%w: it is version %d, this evergrant knows versions up to %d; use a newer evergrant with this database", ErrSchemaTooNew, version, len(migs))
	}
	if version == len(migs) {
		return tx.Commit(ctx)
	}
	for v := version + 1; v <= len(migs); v++ {
		if _, err := tx.Exec(ctx, migs[v-1]); err != nil {
			return fmt.Errorf("migrating the schema to version %d: %w", v, err)
		}
	}
	if _, err := tx.Exec(ctx, "DELETE FROM evergrant_schema_version"); err != nil {
		return fmt.Errorf("recording the schema version: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO evergrant_schema_version (version) VALUES ($1)", len(migs)); err != nil {
		return fmt.Errorf("recording the schema version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating the schema: %w", err)
	}
	return nil
}

// Close releases the locks still held through p (their holders exclude no
// one any more, and their unlock functions do nothing), stops renewing
// leases and closes the connections. It waits for the operations in
// progress to finish. Calling it again does nothing.
func (p *Postgres) Close() error {
	p.closeOnce.Do(func() {
		p.stopRenew()
		<-p.renewDone
		p.mu.Lock()
		owners := make([]string, 0, len(p.held))
		for o := range p.held {
			owners = append(owners, o)
		}
		clear(p.held)
		p.mu.Unlock()
		if len(owners) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), pgReleaseTimeout)
			// Best effort: a lease not released expires.
			p.pool.Exec(ctx, "DELETE FROM evergrant_locks WHERE owner = ANY($1)", owners)
			cancel()
		}
		p.pool.Close()
	})
	return nil
}

// grantHash is the row key of a grant key, and of its lock.
func grantHash(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// registrationHash is the row key of (issuer, redirectURI): unambiguous,
// as the length of issuer comes first.
func registrationHash(issuer, redirectURI string) []byte {
	b := binary.AppendUvarint(nil, uint64(len(issuer)))
	b = append(b, issuer...)
	b = append(b, redirectURI...)
	h := sha256.Sum256(b)
	return h[:]
}

// corruptRow reports a stored row that does not decode. Like File's
// errors, it never quotes the row, which holds tokens.
func corruptRow(what string, err error) error {
	return fmt.Errorf("%w: %s in PostgreSQL does not decode (delete it): %v", ErrCorrupt, what, err)
}

// Load returns the grant stored under key, or ErrNotFound.
func (p *Postgres) Load(ctx context.Context, key string) (*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var storedKey, data []byte
	err := p.pool.QueryRow(ctx, "SELECT key, grant_json FROM evergrant_grants WHERE key_hash = $1", grantHash(key)).Scan(&storedKey, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: loading grant: %w", err)
	}
	if string(storedKey) != key {
		return nil, fmt.Errorf("%w: the row of grant %q in PostgreSQL holds another key", ErrCorrupt, key)
	}
	return decodeGrantRow(storedKey, data)
}

func decodeGrantRow(key, data []byte) (*Grant, error) {
	var g Grant
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, corruptRow(fmt.Sprintf("the grant of %q", key), err)
	}
	g.Key = string(key) // exact, even if not UTF-8
	return &g, nil
}

// Save stores g under g.Key, replacing what was there. It stores g as
// given: it does not set UpdatedAt.
func (p *Postgres) Save(ctx context.Context, g *Grant) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if g == nil {
		return errNilGrant
	}
	if g.Key == "" {
		return errNoKey
	}
	data, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("store: encoding grant: %w", err)
	}
	_, err = p.pool.Exec(ctx, `
		INSERT INTO evergrant_grants (key_hash, key, grant_json) VALUES ($1, $2, $3)
		ON CONFLICT (key_hash) DO UPDATE
			SET key = excluded.key, grant_json = excluded.grant_json, saved_at = now()`,
		grantHash(g.Key), []byte(g.Key), data)
	if err != nil {
		return fmt.Errorf("store: saving grant: %w", err)
	}
	return nil
}

// Delete removes the grant under key; deleting nothing is not an error.
func (p *Postgres) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := p.pool.Exec(ctx, "DELETE FROM evergrant_grants WHERE key_hash = $1", grantHash(key)); err != nil {
		return fmt.Errorf("store: deleting grant: %w", err)
	}
	return nil
}

// List returns every grant, in key order (byte order). A row that does
// not decode fails the whole List with an error wrapping ErrCorrupt.
func (p *Postgres) List(ctx context.Context) ([]*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rows, err := p.pool.Query(ctx, "SELECT key, grant_json FROM evergrant_grants ORDER BY key")
	if err != nil {
		return nil, fmt.Errorf("store: listing grants: %w", err)
	}
	var (
		gs        []*Grant
		key, data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &data}, func() error {
		g, err := decodeGrantRow(key, data)
		if err != nil {
			return err
		}
		gs = append(gs, g)
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		return nil, fmt.Errorf("store: listing grants: %w", err)
	}
	return gs, nil
}

// LoadRegistration returns the registration for (issuer, redirectURI), or
// ErrNotFound.
func (p *Postgres) LoadRegistration(ctx context.Context, issuer, redirectURI string) (*Registration, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var storedIssuer, storedRedirect, data []byte
	err := p.pool.QueryRow(ctx,
		"SELECT issuer, redirect_uri, registration_json FROM evergrant_registrations WHERE id_hash = $1",
		registrationHash(issuer, redirectURI)).Scan(&storedIssuer, &storedRedirect, &data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: loading registration: %w", err)
	}
	if string(storedIssuer) != issuer || string(storedRedirect) != redirectURI {
		return nil, fmt.Errorf("%w: the row of registration (%q, %q) in PostgreSQL holds another one", ErrCorrupt, issuer, redirectURI)
	}
	var r Registration
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, corruptRow(fmt.Sprintf("the registration of (%q, %q)", issuer, redirectURI), err)
	}
	r.Issuer, r.RedirectURI = issuer, redirectURI // exact, even if not UTF-8
	return &r, nil
}

// SaveRegistration stores r under (r.Issuer, r.RedirectURI), replacing
// what was there.
func (p *Postgres) SaveRegistration(ctx context.Context, r *Registration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r == nil {
		return errNilReg
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: encoding registration: %w", err)
	}
	_, err = p.pool.Exec(ctx, `
		INSERT INTO evergrant_registrations (id_hash, issuer, redirect_uri, client_id, registration_json)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id_hash) DO UPDATE
			SET issuer = excluded.issuer, redirect_uri = excluded.redirect_uri, client_id = excluded.client_id,
				registration_json = excluded.registration_json, saved_at = now()`,
		registrationHash(r.Issuer, r.RedirectURI), []byte(r.Issuer), []byte(r.RedirectURI), []byte(r.ClientID), data)
	if err != nil {
		return fmt.Errorf("store: saving registration: %w", err)
	}
	return nil
}

// DeleteRegistration implements Store: it removes every registration of
// issuer with that client ID.
func (p *Postgres) DeleteRegistration(ctx context.Context, issuer, clientID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := p.pool.Exec(ctx, "DELETE FROM evergrant_registrations WHERE client_id = $1 AND issuer = $2", []byte(clientID), []byte(issuer))
	if err != nil {
		return fmt.Errorf("store: deleting registrations: %w", err)
	}
	return nil
}

// Lock takes the exclusive lock of key among every user of the database,
// waiting until it is free or ctx is done (then it returns ctx.Err()). See
// Postgres for how. The returned unlock function releases the lock;
// calling it more than once does nothing. The key need not have a grant.
func (p *Postgres) Lock(ctx context.Context, key string) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	unlockLocal, err := p.locks.lock(ctx, key)
	if err != nil {
		return nil, err
	}
	h := grantHash(key)
	owner := newLeaseOwner()
	wait := pgLockPollMin
	for {
		ok, err := p.claim(ctx, h, owner)
		if err != nil {
			if ctx.Err() != nil {
				// The claim may have succeeded before the cancellation
				// reached it; give the lease back rather than leave it to
				// expire.
				p.release(h, owner)
				unlockLocal()
				return nil, ctx.Err()
			}
			unlockLocal()
			return nil, fmt.Errorf("store: taking the lock: %w", err)
		}
		if ok {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			unlockLocal()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, pgLockPollMax)
	}
	p.mu.Lock()
	p.held[owner] = h
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			_, mine := p.held[owner]
			delete(p.held, owner)
			p.mu.Unlock()
			if mine { // else Close released it
				p.release(h, owner)
			}
			unlockLocal()
		})
	}, nil
}

// newLeaseOwner returns a new lease owner: 128 random bits.
func newLeaseOwner() string {
	return rand.Text()
}

// claim takes the lease of the key with hash h for owner if no one holds
// it or its lease has expired, in one statement, and reports whether it
// did.
func (p *Postgres) claim(ctx context.Context, h []byte, owner string) (bool, error) {
	var got string
	err := p.pool.QueryRow(ctx, `
		INSERT INTO evergrant_locks AS l (key_hash, owner, expires_at)
		VALUES ($1, $2, now() + $3 * interval '1 microsecond')
		ON CONFLICT (key_hash) DO UPDATE
			SET owner = excluded.owner, expires_at = excluded.expires_at
			WHERE l.expires_at < now()
		RETURNING owner`,
		h, owner, p.ttl.Microseconds()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return got == owner, nil
}

// release deletes the lease of h if owner still holds it. It is best
// effort: a lease it cannot delete expires.
func (p *Postgres) release(h []byte, owner string) {
	ctx, cancel := context.WithTimeout(context.Background(), pgReleaseTimeout)
	defer cancel()
	p.pool.Exec(ctx, "DELETE FROM evergrant_locks WHERE key_hash = $1 AND owner = $2", h, owner)
}

// renew pushes forward the leases held through p every ttl/3, until ctx
// is done. A lease that could not be renewed in time (the database was
// unreachable for a whole ttl) may have been taken over; its holder is not
// told.
func (p *Postgres) renew(ctx context.Context) {
	defer close(p.renewDone)
	tick := time.NewTicker(p.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.mu.Lock()
		owners := make([]string, 0, len(p.held))
		for o := range p.held {
			owners = append(owners, o)
		}
		p.mu.Unlock()
		if len(owners) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, p.ttl/3)
		p.pool.Exec(rctx, `
			UPDATE evergrant_locks SET expires_at = now() + $2 * interval '1 microsecond'
			WHERE owner = ANY($1)`,
			owners, p.ttl.Microseconds())
		cancel()
	}
}
