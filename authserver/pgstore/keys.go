package pgstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/evergrant/evergrant/authserver"
)

// SecretKeySize is the length of Options.SecretKey: an AES-256 key.
const SecretKeySize = 32

// ErrWrongSecretKey is wrapped by the error of InitKeys when the signing
// keys in the database do not decrypt under Options.SecretKey: they were
// saved under another secret key, or altered.
var ErrWrongSecretKey = errors.New("pgstore: the signing keys in the database do not decrypt with this secret key (another replica saved them under a different secret key, or they were altered)")

// keysRow is the id of the one row of evergrant_as_signing_keys.
const keysRow = 1

// newAEAD returns AES-256-GCM under key.
func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) == 0 {
		return nil, errors.New("pgstore: Options.SecretKey is required: the signing keys are encrypted at rest in PostgreSQL")
	}
	if len(key) != SecretKeySize {
		return nil, fmt.Errorf("pgstore: Options.SecretKey is %d bytes, want %d (an AES-256 key)", len(key), SecretKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return aead, nil
}

// additionalData binds a sealed key to its row and column, so that a
// ciphertext moved to another row or swapped between current and previous
// does not decrypt.
func additionalData(column string) []byte {
	return fmt.Appendf(nil, "evergrant_as_signing_keys/%d/%s", keysRow, column)
}

// seal encrypts key for column: nonce || ciphertext (with its tag). A nil
// or empty key stays nil (no previous key).
func (s *Store) seal(key []byte, column string) ([]byte, error) {
	if len(key) == 0 && column == "previous" {
		return nil, nil
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(key)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, key, additionalData(column)), nil
}

// open decrypts what seal returned.
func (s *Store) open(sealed []byte, column string) ([]byte, error) {
	if sealed == nil && column == "previous" {
		return nil, nil
	}
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: the %s key is too short to be sealed", ErrWrongSecretKey, column)
	}
	key, err := s.aead.Open(nil, sealed[:n], sealed[n:], additionalData(column))
	if err != nil {
		return nil, fmt.Errorf("%w: the %s key", ErrWrongSecretKey, column)
	}
	return key, nil
}

// sealKeys returns the current and previous keys of k, sealed.
func (s *Store) sealKeys(k *authserver.SigningKeys) (cur, prev []byte, err error) {
	if cur, err = s.seal(k.Current, "current"); err != nil {
		return nil, nil, err
	}
	if prev, err = s.seal(k.Previous, "previous"); err != nil {
		return nil, nil, err
	}
	return cur, prev, nil
}

// InitKeys implements authserver.Store. It inserts k, sealed, unless a row
// exists (concurrent inserts wait on the primary key, and all but the
// first do nothing), and returns the row's keys, unsealed. Keys that do
// not decrypt under the secret key are an error wrapping
// ErrWrongSecretKey: the server must not sign with keys other replicas do
// not know.
func (s *Store) InitKeys(ctx context.Context, k *authserver.SigningKeys) (*authserver.SigningKeys, error) {
	cur, prev, err := s.sealKeys(k)
	if err != nil {
		return nil, wrap("init signing keys", err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO evergrant_as_signing_keys (id, current, previous, rotated_at)
		VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`, keysRow, cur, prev, unixNano(k.RotatedAt)); err != nil {
		return nil, wrap("init signing keys", err)
	}
	var (
		got     authserver.SigningKeys
		rotated int64
	)
	if err := s.pool.QueryRow(ctx, "SELECT current, previous, rotated_at FROM evergrant_as_signing_keys WHERE id = $1", keysRow).
		Scan(&cur, &prev, &rotated); err != nil {
		return nil, wrap("init signing keys", err)
	}
	if got.Current, err = s.open(cur, "current"); err != nil {
		return nil, fmt.Errorf("pgstore: init signing keys in PostgreSQL %s: %w", s.where, err)
	}
	if got.Previous, err = s.open(prev, "previous"); err != nil {
		return nil, fmt.Errorf("pgstore: init signing keys in PostgreSQL %s: %w", s.where, err)
	}
	got.RotatedAt = fromUnixNano(rotated)
	return &got, nil
}

// SaveKeys implements authserver.Store: it replaces the row with k,
// sealed.
func (s *Store) SaveKeys(ctx context.Context, k *authserver.SigningKeys) error {
	cur, prev, err := s.sealKeys(k)
	if err != nil {
		return wrap("save signing keys", err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO evergrant_as_signing_keys (id, current, previous, rotated_at)
		VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET current = excluded.current,
			previous = excluded.previous, rotated_at = excluded.rotated_at`,
		keysRow, cur, prev, unixNano(k.RotatedAt))
	return wrap("save signing keys", err)
}
