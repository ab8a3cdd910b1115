// Package sqlitestore is an authserver.Store in one SQLite file, for an
// authorization server that must survive restarts without a database
// server: clients, grants, codes, tokens and signing keys are kept on disk,
// so a restarted server keeps accepting the tokens it issued and the
// refresh tokens of its users.
//
// It uses modernc.org/sqlite (pure Go, no cgo) in WAL mode, so several
// handles, in one process or several on one host, can share a file; codes
// are taken and refresh tokens rotated atomically across all of them.
// The file is created 0600 in a directory created 0700: they are the
// protection of the signing keys, which are stored as the server gives
// them (unencrypted).
package sqlitestore

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// applicationID marks an evergrant database in the SQLite header
// (PRAGMA application_id): "EvGr".
const applicationID = 0x45764772

// busyTimeout is how long a statement waits for another writer.
const busyTimeout = 10 * time.Second

//go:embed schema/*.sql
var schemaFS embed.FS

// migrations are the schema changes, in order: migrations[i] brings a
// database from version i to version i+1.
var migrations = []string{"schema/1.sql", "schema/2.sql"}

// SchemaVersion is the schema version this package writes and reads.
const SchemaVersion = 2

// Store is an authserver.Store on a SQLite file. It is safe for
// concurrent use; Close it when done.
type Store struct {
	db   *sql.DB
	path string
}

var (
	_ authserver.Store              = (*Store)(nil)
	_ authserver.RefreshTokenPruner = (*Store)(nil)
)

// Open opens the evergrant database at path, creating it (and its
// directory, 0700) if it does not exist, and brings its schema up to
// date. It refuses a file that is not an evergrant database, and one
// written by a newer evergrant (a schema version above SchemaVersion); it
// never re-initialises an existing file.
func Open(ctx context.Context, path string) (*Store, error) {
	if strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("sqlitestore: %s: a path with '?' is not supported", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	// Create the file ourselves so that it is 0600 from the start; SQLite
	// gives its -wal and -shm files the permissions of the database.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	dsn := fmt.Sprintf("%s?_txlock=immediate&_pragma=busy_timeout(%d)&_pragma=synchronous(FULL)",
		path, busyTimeout.Milliseconds())
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	// WAL only once the file is known to be ours: it changes the file.
	if _, err := db.ExecContext(ctx, "PRAGMA journal_mode=WAL"); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlitestore: %s: enable WAL: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("sqlitestore: close %s: %w", s.path, err)
	}
	return nil
}

// migrate checks that the file is an evergrant database of a schema
// version it knows, initialises an empty file, and applies the migrations
// the database lacks, all in one transaction.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.openError(err)
	}
	defer tx.Rollback()
	var appID, version, objects int64
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return s.openError(err)
	}
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return s.openError(err)
	}
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&objects); err != nil {
		return s.openError(err)
	}
	switch {
	case appID == 0 && version == 0 && objects == 0:
		// A new, empty file.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d", applicationID)); err != nil {
			return fmt.Errorf("sqlitestore: %s: initialise: %w", s.path, err)
		}
	case appID != applicationID:
		return fmt.Errorf("sqlitestore: %s is not an evergrant database (an SQLite database of another application); refusing to use it", s.path)
	case version > SchemaVersion:
		return fmt.Errorf("sqlitestore: %s has schema version %d, newer than the %d this evergrant knows; use a newer evergrant", s.path, version, SchemaVersion)
	}
	for v := version; v < SchemaVersion; v++ {
		script, err := schemaFS.ReadFile(migrations[v])
		if err != nil {
			return fmt.Errorf("sqlitestore: migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, string(script)); err != nil {
			return fmt.Errorf("sqlitestore: %s: migrate to schema version %d: %w", s.path, v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			return fmt.Errorf("sqlitestore: %s: migrate to schema version %d: %w", s.path, v+1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	}
	return nil
}

// openError describes an error of the first statements on the file.
func (s *Store) openError(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_NOTADB {
		return fmt.Errorf("sqlitestore: %s is not an evergrant database (not an SQLite file); refusing to use it: %w", s.path, err)
	}
	return fmt.Errorf("sqlitestore: open %s: %w", s.path, err)
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
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("sqlitestore: %s: %w", op, authserver.ErrNotFound)
	}
	return fmt.Errorf("sqlitestore: %s: %w", op, err)
}

// SaveClient implements authserver.Store.
func (s *Store) SaveClient(ctx context.Context, c *authserver.Client) error {
	md, err := json.Marshal(c.Metadata)
	if err != nil {
		return wrap("save client", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO clients
		(id, secret_hash, metadata, created_at, from_document, dynamic) VALUES (?, ?, ?, ?, ?, ?)`,
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
	err := s.db.QueryRowContext(ctx, `SELECT secret_hash, metadata, created_at, from_document, dynamic
		FROM clients WHERE id = ?`, id).Scan(&c.SecretHash, &md, &created, &c.FromDocument, &c.Dynamic)
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

// SaveGrant implements authserver.Store.
func (s *Store) SaveGrant(ctx context.Context, g *authserver.Grant) error {
	scopes, err := encodeList(g.Scopes)
	if err != nil {
		return wrap("save grant", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO grants
		(id, client_id, subject, resource, scopes, created_at, expires_at, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET client_id = excluded.client_id, subject = excluded.subject,
			resource = excluded.resource, scopes = excluded.scopes, created_at = excluded.created_at,
			expires_at = excluded.expires_at, revoked = grants.revoked OR excluded.revoked`,
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
	err := s.db.QueryRowContext(ctx, `SELECT client_id, subject, resource, scopes, created_at, expires_at, revoked
		FROM grants WHERE id = ?`, id).Scan(&g.ClientID, &g.Subject, &g.Resource, &scopes, &created, &expires, &g.Revoked)
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
	res, err := s.db.ExecContext(ctx, "UPDATE grants SET revoked = 1 WHERE id = ?", id)
	return wrap("revoke grant", mustAffect(res, err))
}

// mustAffect turns a statement that changed no row into sql.ErrNoRows.
func mustAffect(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return sql.ErrNoRows
	}
	return nil
}

// RevokeGrants implements authserver.Store.
func (s *Store) RevokeGrants(ctx context.Context, f authserver.GrantFilter) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE grants SET revoked = 1 WHERE revoked = 0
		AND (?1 = '' OR client_id = ?1) AND (?2 = '' OR subject = ?2) AND (?3 = '' OR resource = ?3)`,
		f.ClientID, f.Subject, f.Resource)
	if err != nil {
		return 0, wrap("revoke grants", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, wrap("revoke grants", err)
	}
	return int(n), nil
}

// SaveCode implements authserver.Store.
func (s *Store) SaveCode(ctx context.Context, c *authserver.Code) error {
	scopes, err := encodeList(c.Scopes)
	if err != nil {
		return wrap("save code", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO codes
		(hash, grant_id, client_id, redirect_uri, code_challenge, scopes, resource, subject, expires_at, used)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
		c.Hash, c.GrantID, c.ClientID, c.RedirectURI, c.CodeChallenge, scopes, c.Resource, c.Subject, unixNano(c.ExpiresAt))
	return wrap("save code", err)
}

// TakeCode implements authserver.Store. One statement marks the code used
// and returns it with its count of takes, so exactly one caller sees 1.
func (s *Store) TakeCode(ctx context.Context, hash string) (*authserver.Code, error) {
	var (
		c       = authserver.Code{Hash: hash}
		scopes  string
		expires int64
		used    int64
	)
	err := s.db.QueryRowContext(ctx, `UPDATE codes SET used = used + 1 WHERE hash = ?
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

// SaveRefreshToken implements authserver.Store.
func (s *Store) SaveRefreshToken(ctx context.Context, t *authserver.RefreshToken) error {
	return wrap("save refresh token", saveRefresh(ctx, s.db, t))
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func saveRefresh(ctx context.Context, db execer, t *authserver.RefreshToken) error {
	scopes, err := encodeList(t.Scopes)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT OR REPLACE INTO refresh_tokens
		(hash, grant_id, client_id, scopes, issued_at, expires_at, rotated_at, successor, replaced_unused)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
	err := s.db.QueryRowContext(ctx, `SELECT grant_id, client_id, scopes, issued_at, expires_at, rotated_at, successor, replaced_unused
		FROM refresh_tokens WHERE hash = ?`, hash).
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

// RotateRefreshToken implements authserver.Store: in one write
// transaction, the old token is retired only if it is unrotated, and its
// successor saved only then.
func (s *Store) RotateRefreshToken(ctx context.Context, oldHash string, at time.Time, next *authserver.RefreshToken) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("rotate refresh token", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE refresh_tokens SET rotated_at = ?, successor = ?
		WHERE hash = ? AND rotated_at = ?`, unixNano(at), next.Hash, oldHash, int64(zeroTime))
	if err := mustAffect(res, err); errors.Is(err, sql.ErrNoRows) {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM refresh_tokens WHERE hash = ?", oldHash).Scan(&one)
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
	return wrap("rotate refresh token", tx.Commit())
}

// PruneRefreshTokens implements authserver.RefreshTokenPruner.
func (s *Store) PruneRefreshTokens(ctx context.Context, grantID string, keep int) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM refresh_tokens
		WHERE grant_id = ?1 AND rotated_at <> ?2 AND hash NOT IN (
			SELECT hash FROM refresh_tokens WHERE grant_id = ?1 AND rotated_at <> ?2
			ORDER BY rotated_at DESC LIMIT ?3)`, grantID, int64(zeroTime), max(keep, 0))
	return wrap("prune refresh tokens", err)
}

// SaveAccessToken implements authserver.Store.
func (s *Store) SaveAccessToken(ctx context.Context, t *authserver.AccessToken) error {
	scopes, err := encodeList(t.Scopes)
	if err != nil {
		return wrap("save access token", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO access_tokens
		(jti, grant_id, client_id, subject, resource, scopes, issued_at, expires_at, revoked)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
	err := s.db.QueryRowContext(ctx, `SELECT grant_id, client_id, subject, resource, scopes, issued_at, expires_at, revoked
		FROM access_tokens WHERE jti = ?`, jti).
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
	res, err := s.db.ExecContext(ctx, "UPDATE access_tokens SET revoked = 1 WHERE jti = ?", jti)
	return wrap("revoke access token", mustAffect(res, err))
}

// InitKeys implements authserver.Store.
func (s *Store) InitKeys(ctx context.Context, k *authserver.SigningKeys) (*authserver.SigningKeys, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, wrap("init signing keys", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (id, current, previous, rotated_at)
		VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING`, nonNil(k.Current), nilIfEmpty(k.Previous), unixNano(k.RotatedAt)); err != nil {
		return nil, wrap("init signing keys", err)
	}
	var (
		got     authserver.SigningKeys
		rotated int64
	)
	if err := tx.QueryRowContext(ctx, "SELECT current, previous, rotated_at FROM signing_keys WHERE id = 1").
		Scan(&got.Current, &got.Previous, &rotated); err != nil {
		return nil, wrap("init signing keys", err)
	}
	got.RotatedAt = fromUnixNano(rotated)
	if err := tx.Commit(); err != nil {
		return nil, wrap("init signing keys", err)
	}
	return &got, nil
}

// SaveKeys implements authserver.Store.
func (s *Store) SaveKeys(ctx context.Context, k *authserver.SigningKeys) error {
	_, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO signing_keys (id, current, previous, rotated_at)
		VALUES (1, ?, ?, ?)`, nonNil(k.Current), nilIfEmpty(k.Previous), unixNano(k.RotatedAt))
	return wrap("save signing keys", err)
}

// nonNil returns b, or an empty slice for nil (stored as an empty blob,
// not NULL).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// nilIfEmpty returns nil (stored as NULL) for an empty b.
func nilIfEmpty(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// DeleteExpired implements authserver.Store.
func (s *Store) DeleteExpired(ctx context.Context, t time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("delete expired", err)
	}
	defer tx.Rollback()
	cut := unixNano(t)
	for _, table := range []string{"codes", "refresh_tokens", "access_tokens", "grants"} {
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+table+" WHERE expires_at < ?", cut); err != nil {
			return wrap("delete expired "+table, err)
		}
	}
	return wrap("delete expired", tx.Commit())
}
