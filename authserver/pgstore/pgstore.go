// Package pgstore is an authserver.Store in a PostgreSQL database, for
// authorization servers that run as several replicas: every replica that
// opens the same database sees the same clients, grants, codes, tokens and
// signing keys, so a token one replica signs verifies at every other, and
// a code or refresh token presented to any of them is good once.
//
// Taking a code is one UPDATE … RETURNING, and rotating a refresh token
// one transaction whose first statement retires the old token only if it
// is unrotated; PostgreSQL's row locks make exactly one of any number of
// concurrent callers, on any replica, succeed. Revocation of a grant is
// final: SaveGrant never clears it.
//
// The signing keys are encrypted at rest with AES-256-GCM under a secret
// key the operator gives in Options.SecretKey (the database holds the
// nonce and ciphertext, never the key material), so that a copy of the
// database does not let its holder sign tokens.
//
// Its tables (evergrant_as_*) live in the first schema of the
// connection's search_path; set it in the URL (options=-csearch_path%3Dname)
// to keep them apart. Open creates them, and migrates them when a newer
// evergrant adds a schema version.
package pgstore

import (
	"context"
	"crypto/cipher"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrSchemaTooNew is wrapped by the error of Open for a database whose
// schema is newer than this version of evergrant knows.
var ErrSchemaTooNew = errors.New("pgstore: the database's schema is newer than this version of evergrant")

// migrationLock is the key of the advisory lock under which Open reads
// and migrates the schema (the first 8 bytes of the SHA-256 of
// "evergrant.authserver.pgstore.migrate"); it differs from the client
// store's, so the two can share a database.
const migrationLock int64 = 0x5d2e_41c7_9a03_b8f6

//go:embed schema/*.sql
var schemaFS embed.FS

// migrations are the schema changes, in order: migrations[i] brings a
// database from version i to version i+1.
var migrations = []string{"schema/1.sql"}

// SchemaVersion is the schema version this package writes and reads.
const SchemaVersion = 1

// Options configures Open.
type Options struct {
	// SecretKey is the 32-byte AES-256 key that encrypts the signing keys
	// in the database. It is required, and every replica sharing a
	// database must have the same one: keys saved under another do not
	// decrypt (an error, never a silent new key).
	SecretKey []byte
}

// Store is an authserver.Store in a PostgreSQL database. It is safe for
// concurrent use by many goroutines and replicas; Close it when done.
type Store struct {
	pool  *pgxpool.Pool
	aead  cipher.AEAD
	where string
}

var _ authserver.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at url (a URL or a
// keyword/value connection string, as pgx and libpq accept, including pool
// settings such as pool_max_conns), creates or migrates the schema, and
// returns the store. ctx bounds the connection and the migration.
//
// The schema is versioned; Open applies the versions the database lacks,
// in one transaction, under an advisory lock so that replicas starting
// together migrate once. It refuses a database whose schema is newer than
// this version of evergrant knows, with an error wrapping ErrSchemaTooNew,
// and refuses to open without a 32-byte opts.SecretKey. Errors name the
// host and database, never the password.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	aead, err := newAEAD(opts.SecretKey)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors may quote the URL, password and all.
		return nil, errors.New("pgstore: the PostgreSQL connection string does not parse (its text is left out of this error: it may hold a password)")
	}
	where := describe(cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: PostgreSQL %s: %w", where, err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrSchemaTooNew) {
			return nil, fmt.Errorf("pgstore: opening PostgreSQL %s: %w (%w)", where, ctx.Err(), err)
		}
		return nil, fmt.Errorf("pgstore: opening PostgreSQL %s: %w", where, err)
	}
	return &Store{pool: pool, aead: aead, where: where}, nil
}

// describe names the server and database of cfg for messages: "at
// host:port, database "name"", never the password.
func describe(cfg *pgx.ConnConfig) string {
	host := cfg.Host
	if strings.HasPrefix(host, "/") {
		host = path.Join(host, ".s.PGSQL."+strconv.Itoa(int(cfg.Port)))
	} else {
		host += ":" + strconv.Itoa(int(cfg.Port))
	}
	return fmt.Sprintf("at %s, database %q", host, cfg.Database)
}

// Close closes the connections, waiting for the operations in progress.
func (s *Store) Close() {
	s.pool.Close()
}

// migrate brings the schema of pool's database to SchemaVersion, in one
// transaction under the advisory lock migrationLock.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("taking the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS evergrant_as_schema_version (version integer NOT NULL)"); err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(max(version), 0) FROM evergrant_as_schema_version").Scan(&version); err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: it is version %d, this evergrant knows versions up to %d; use a newer evergrant with this database", ErrSchemaTooNew, version, SchemaVersion)
	}
	if version == SchemaVersion {
		return tx.Commit(ctx)
	}
	for v := version; v < SchemaVersion; v++ {
		script, err := schemaFS.ReadFile(migrations[v])
		if err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.Exec(ctx, string(script)); err != nil {
			return fmt.Errorf("migrating the schema to version %d: %w", v+1, err)
		}
	}
	if _, err := tx.Exec(ctx, "DELETE FROM evergrant_as_schema_version"); err != nil {
		return fmt.Errorf("recording the schema version: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO evergrant_as_schema_version (version) VALUES ($1)", SchemaVersion); err != nil {
		return fmt.Errorf("recording the schema version: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating the schema: %w", err)
	}
	return nil
}

// zeroTime is how the zero time.Time is stored; it sorts before every
// other instant.
const zeroTime = math.MinInt64

// unixNano encodes t as Unix nanoseconds (years 1678 to 2262).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return zeroTime
	}
	return t.UnixNano()
}

// fromUnixNano is the inverse of unixNano.
func fromUnixNano(n int64) time.Time {
	if n == zeroTime {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func encodeList(l []string) (string, error) {
	b, err := json.Marshal(l)
	return string(b), err
}

func decodeList(s string) ([]string, error) {
	var l []string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, err
	}
	return l, nil
}

// wrap prefixes err with the operation, keeping ErrNotFound and the other
// authserver errors matchable with errors.Is.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgstore: %s: %w", op, authserver.ErrNotFound)
	}
	return fmt.Errorf("pgstore: %s: %w", op, err)
}

// mustAffect turns a statement that changed no row into pgx.ErrNoRows.
func mustAffect(tag pgconn.CommandTag, err error) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return pgx.ErrNoRows
	}
	return nil
}

// SaveClient implements authserver.Store.
func (s *Store) SaveClient(ctx context.Context, c *authserver.Client) error {
	md, err := json.Marshal(c.Metadata)
	if err != nil {
		return wrap("save client", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO evergrant_as_clients
		(id, secret_hash, metadata, created_at, from_document, dynamic) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, metadata = excluded.metadata,
			created_at = excluded.created_at, from_document = excluded.from_document, dynamic = excluded.dynamic`,
		c.ID, c.SecretHash, string(md), unixNano(c.CreatedAt), c.FromDocument, c.Dynamic)
	return wrap("save client", err)
}

// Client implements authserver.Store.
func (s *Store) Client(ctx context.Context, id string) (*authserver.Client, error) {
	var (
		c       = authserver.Client{ID: id}
		md      string
		created int64
	)
	err := s.pool.QueryRow(ctx, `SELECT secret_hash, metadata, created_at, from_document, dynamic
		FROM evergrant_as_clients WHERE id = $1`, id).Scan(&c.SecretHash, &md, &created, &c.FromDocument, &c.Dynamic)
	if err != nil {
		return nil, wrap("client", err)
	}
	var m oauth.ClientMetadata
	if err := json.Unmarshal([]byte(md), &m); err != nil {
		return nil, wrap("client", err)
	}
	c.Metadata, c.CreatedAt = m, fromUnixNano(created)
	return &c, nil
}

// SaveGrant implements authserver.Store. A revoked grant stays revoked:
// the upsert ORs the flag, under the row's lock.
func (s *Store) SaveGrant(ctx context.Context, g *authserver.Grant) error {
	scopes, err := encodeList(g.Scopes)
	if err != nil {
		return wrap("save grant", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO evergrant_as_grants
		(id, client_id, subject, resource, scopes, created_at, expires_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (id) DO UPDATE SET client_id = excluded.client_id, subject = excluded.subject,
			resource = excluded.resource, scopes = excluded.scopes, created_at = excluded.created_at,
			expires_at = excluded.expires_at, revoked = evergrant_as_grants.revoked OR excluded.revoked`,
		g.ID, g.ClientID, g.Subject, g.Resource, scopes, unixNano(g.CreatedAt), unixNano(g.ExpiresAt), g.Revoked)
	return wrap("save grant", err)
}

// Grant implements authserver.Store.
func (s *Store) Grant(ctx context.Context, id string) (*authserver.Grant, error) {
	var (
		g                = authserver.Grant{ID: id}
		scopes           string
		created, expires int64
	)
	err := s.pool.QueryRow(ctx, `SELECT client_id, subject, resource, scopes, created_at, expires_at, revoked
		FROM evergrant_as_grants WHERE id = $1`, id).Scan(&g.ClientID, &g.Subject, &g.Resource, &scopes, &created, &expires, &g.Revoked)
	if err != nil {
		return nil, wrap("grant", err)
	}
	if g.Scopes, err = decodeList(scopes); err != nil {
		return nil, wrap("grant", err)
	}
	g.CreatedAt, g.ExpiresAt = fromUnixNano(created), fromUnixNano(expires)
	return &g, nil
}

// RevokeGrant implements authserver.Store.
func (s *Store) RevokeGrant(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, "UPDATE evergrant_as_grants SET revoked = true WHERE id = $1", id)
	return wrap("revoke grant", mustAffect(tag, err))
}

// RevokeGrants implements authserver.Store.
func (s *Store) RevokeGrants(ctx context.Context, f authserver.GrantFilter) (int, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE evergrant_as_grants SET revoked = true WHERE NOT revoked
		AND ($1 = '' OR client_id = $1) AND ($2 = '' OR subject = $2) AND ($3 = '' OR resource = $3)`,
		f.ClientID, f.Subject, f.Resource)
	if err != nil {
		return 0, wrap("revoke grants", err)
	}
	return int(tag.RowsAffected()), nil
}

// SaveCode implements authserver.Store.
func (s *Store) SaveCode(ctx context.Context, c *authserver.Code) error {
	scopes, err := encodeList(c.Scopes)
	if err != nil {
		return wrap("save code", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO evergrant_as_codes
		(hash, grant_id, client_id, redirect_uri, code_challenge, scopes, resource, subject, expires_at, used)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)
		ON CONFLICT (hash) DO UPDATE SET grant_id = excluded.grant_id, client_id = excluded.client_id,
			redirect_uri = excluded.redirect_uri, code_challenge = excluded.code_challenge, scopes = excluded.scopes,
			resource = excluded.resource, subject = excluded.subject, expires_at = excluded.expires_at, used = 0`,
		c.Hash, c.GrantID, c.ClientID, c.RedirectURI, c.CodeChallenge, scopes, c.Resource, c.Subject, unixNano(c.ExpiresAt))
	return wrap("save code", err)
}

// TakeCode implements authserver.Store. One statement marks the code used
// and returns it with its count of takes; concurrent takes queue on the
// row's lock, so exactly one caller sees 1.
func (s *Store) TakeCode(ctx context.Context, hash string) (*authserver.Code, error) {
	var (
		c       = authserver.Code{Hash: hash}
		scopes  string
		expires int64
		used    int64
	)
	err := s.pool.QueryRow(ctx, `UPDATE evergrant_as_codes SET used = used + 1 WHERE hash = $1
		RETURNING grant_id, client_id, redirect_uri, code_challenge, scopes, resource, subject, expires_at, used`, hash).
		Scan(&c.GrantID, &c.ClientID, &c.RedirectURI, &c.CodeChallenge, &scopes, &c.Resource, &c.Subject, &expires, &used)
	if err != nil {
		return nil, wrap("take code", err)
	}
	if c.Scopes, err = decodeList(scopes); err != nil {
		return nil, wrap("take code", err)
	}
	c.ExpiresAt = fromUnixNano(expires)
	if used > 1 {
		return &c, authserver.ErrCodeUsed
	}
	return &c, nil
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SaveRefreshToken implements authserver.Store.
func (s *Store) SaveRefreshToken(ctx context.Context, t *authserver.RefreshToken) error {
	return wrap("save refresh token", saveRefresh(ctx, s.pool, t))
}

func saveRefresh(ctx context.Context, db execer, t *authserver.RefreshToken) error {
	scopes, err := encodeList(t.Scopes)
	if err != nil {
		return err
	}
	_, err = db.Exec(ctx, `INSERT INTO evergrant_as_refresh_tokens
		(hash, grant_id, client_id, scopes, issued_at, expires_at, rotated_at, successor, replaced_unused)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (hash) DO UPDATE SET grant_id = excluded.grant_id, client_id = excluded.client_id,
			scopes = excluded.scopes, issued_at = excluded.issued_at, expires_at = excluded.expires_at,
			rotated_at = excluded.rotated_at, successor = excluded.successor, replaced_unused = excluded.replaced_unused`,
		t.Hash, t.GrantID, t.ClientID, scopes, unixNano(t.IssuedAt), unixNano(t.ExpiresAt),
		unixNano(t.RotatedAt), t.Successor, t.ReplacedUnused)
	return err
}

// RefreshToken implements authserver.Store.
func (s *Store) RefreshToken(ctx context.Context, hash string) (*authserver.RefreshToken, error) {
	var (
		t                        = authserver.RefreshToken{Hash: hash}
		scopes                   string
		issued, expires, rotated int64
	)
	err := s.pool.QueryRow(ctx, `SELECT grant_id, client_id, scopes, issued_at, expires_at, rotated_at, successor, replaced_unused
		FROM evergrant_as_refresh_tokens WHERE hash = $1`, hash).
		Scan(&t.GrantID, &t.ClientID, &scopes, &issued, &expires, &rotated, &t.Successor, &t.ReplacedUnused)
	if err != nil {
		return nil, wrap("refresh token", err)
	}
	if t.Scopes, err = decodeList(scopes); err != nil {
		return nil, wrap("refresh token", err)
	}
	t.IssuedAt, t.ExpiresAt, t.RotatedAt = fromUnixNano(issued), fromUnixNano(expires), fromUnixNano(rotated)
	return &t, nil
}

// RotateRefreshToken implements authserver.Store: in one transaction, the
// old token is retired only if it is unrotated, and its successor saved
// only then. A concurrent rotation waits on the old token's row lock and,
// when it gets it, finds the token rotated and changes nothing.
func (s *Store) RotateRefreshToken(ctx context.Context, oldHash string, at time.Time, next *authserver.RefreshToken) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return wrap("rotate refresh token", err)
	}
	defer tx.Rollback(context.Background())
	tag, err := tx.Exec(ctx, `UPDATE evergrant_as_refresh_tokens SET rotated_at = $1, successor = $2
		WHERE hash = $3 AND rotated_at = $4`, unixNano(at), next.Hash, oldHash, int64(zeroTime))
	if err := mustAffect(tag, err); errors.Is(err, pgx.ErrNoRows) {
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM evergrant_as_refresh_tokens WHERE hash = $1", oldHash).Scan(&one)
		if err != nil {
			return wrap("rotate refresh token", err)
		}
		return authserver.ErrRefreshTokenRotated
	} else if err != nil {
		return wrap("rotate refresh token", err)
	}
	if err := saveRefresh(ctx, tx, next); err != nil {
		return wrap("rotate refresh token", err)
	}
	return wrap("rotate refresh token", tx.Commit(ctx))
}

// PruneRefreshTokens deletes the rotated refresh tokens of grant grantID
// except the keep most recently rotated ones; it never deletes an
// unrotated (live) token. It implements authserver.RefreshTokenPruner.
func (s *Store) PruneRefreshTokens(ctx context.Context, grantID string, keep int) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM evergrant_as_refresh_tokens
		WHERE grant_id = $1 AND rotated_at <> $2 AND hash NOT IN (
			SELECT hash FROM evergrant_as_refresh_tokens WHERE grant_id = $1 AND rotated_at <> $2
			ORDER BY rotated_at DESC LIMIT $3)`, grantID, int64(zeroTime), max(keep, 0))
	return wrap("prune refresh tokens", err)
}

// SaveAccessToken implements authserver.Store.
func (s *Store) SaveAccessToken(ctx context.Context, t *authserver.AccessToken) error {
	scopes, err := encodeList(t.Scopes)
	if err != nil {
		return wrap("save access token", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO evergrant_as_access_tokens
		(jti, grant_id, client_id, subject, resource, scopes, issued_at, expires_at, revoked)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (jti) DO UPDATE SET grant_id = excluded.grant_id, client_id = excluded.client_id,
			subject = excluded.subject, resource = excluded.resource, scopes = excluded.scopes,
			issued_at = excluded.issued_at, expires_at = excluded.expires_at,
			revoked = evergrant_as_access_tokens.revoked OR excluded.revoked`,
		t.JTI, t.GrantID, t.ClientID, t.Subject, t.Resource, scopes, unixNano(t.IssuedAt), unixNano(t.ExpiresAt), t.Revoked)
	return wrap("save access token", err)
}

// AccessToken implements authserver.Store.
func (s *Store) AccessToken(ctx context.Context, jti string) (*authserver.AccessToken, error) {
	var (
		t               = authserver.AccessToken{JTI: jti}
		scopes          string
		issued, expires int64
	)
	err := s.pool.QueryRow(ctx, `SELECT grant_id, client_id, subject, resource, scopes, issued_at, expires_at, revoked
		FROM evergrant_as_access_tokens WHERE jti = $1`, jti).
		Scan(&t.GrantID, &t.ClientID, &t.Subject, &t.Resource, &scopes, &issued, &expires, &t.Revoked)
	if err != nil {
		return nil, wrap("access token", err)
	}
	if t.Scopes, err = decodeList(scopes); err != nil {
		return nil, wrap("access token", err)
	}
	t.IssuedAt, t.ExpiresAt = fromUnixNano(issued), fromUnixNano(expires)
	return &t, nil
}

// RevokeAccessToken implements authserver.Store.
func (s *Store) RevokeAccessToken(ctx context.Context, jti string) error {
	tag, err := s.pool.Exec(ctx, "UPDATE evergrant_as_access_tokens SET revoked = true WHERE jti = $1", jti)
	return wrap("revoke access token", mustAffect(tag, err))
}

// DeleteExpired implements authserver.Store.
func (s *Store) DeleteExpired(ctx context.Context, t time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return wrap("delete expired", err)
	}
	defer tx.Rollback(context.Background())
	cut := unixNano(t)
	for _, table := range []string{"codes", "refresh_tokens", "access_tokens", "grants"} {
		if _, err := tx.Exec(ctx, "DELETE FROM evergrant_as_"+table+" WHERE expires_at < $1", cut); err != nil {
			return wrap("delete expired "+table, err)
		}
	}
	return wrap("delete expired", tx.Commit(ctx))
}
