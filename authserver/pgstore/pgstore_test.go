package pgstore_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/pgstore"
	"github.com/evergrant/evergrant/authserver/storetest"
	"github.com/evergrant/evergrant/internal/pgtest"

	"github.com/jackc/pgx/v5"
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

// secretKey is the secret key of the tests' stores.
var secretKey = bytes.Repeat([]byte{0x5a}, pgstore.SecretKeySize)

// open opens a Store on url with key, closed when t ends.
func open(t testing.TB, url string, key []byte) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(t.Context(), url, pgstore.Options{SecretKey: key})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
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

// TestStore runs the conformance suite, each subtest on a new database.
func TestStore(t *testing.T) {
	storetest.TestStore(t, func(t *testing.T) authserver.Store {
		return open(t, pg.NewDatabase(t), secretKey)
	})
}

// TestShared runs the shared-storage suite on two pools on one database,
// as two replicas have them.
func TestShared(t *testing.T) {
	storetest.TestShared(t, func(t *testing.T) (a, b authserver.Store) {
		url := pg.NewDatabase(t)
		return open(t, url, secretKey), open(t, url, secretKey)
	})
}

// handles opens n stores on one new database, and returns them and the
// database's URL.
func handles(t *testing.T, n int) ([]*pgstore.Store, string) {
	url := pg.NewDatabase(t)
	hs := make([]*pgstore.Store, n)
	for i := range hs {
		hs[i] = open(t, url, secretKey)
	}
	return hs, url
}

// TestConcurrentTakeCode: of 50 concurrent takes of one code through three
// handles, exactly one wins; the others get ErrCodeUsed.
func TestConcurrentTakeCode(t *testing.T) {
	hs, _ := handles(t, 3)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)
	if err := hs[0].SaveCode(ctx, &authserver.Code{Hash: "code-hash", GrantID: "g", ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var (
		wg          sync.WaitGroup
		start       = make(chan struct{})
		wins, reuse atomic.Int32
	)
	for i := range n {
		wg.Go(func() {
			<-start
			c, err := hs[i%len(hs)].TakeCode(ctx, "code-hash")
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, authserver.ErrCodeUsed) && c != nil && c.GrantID == "g":
				reuse.Add(1)
			default:
				t.Errorf("TakeCode: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || reuse.Load() != n-1 {
		t.Errorf("%d takes won and %d saw ErrCodeUsed; want 1 and %d", wins.Load(), reuse.Load(), n-1)
	}
}

// TestConcurrentRotate: of 50 concurrent rotations of one refresh token
// through three handles, exactly one wins, and only its successor is
// saved.
func TestConcurrentRotate(t *testing.T) {
	hs, url := handles(t, 3)
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	if err := hs[0].SaveRefreshToken(ctx, &authserver.RefreshToken{Hash: "rt-0", GrantID: "g", ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		mu     sync.Mutex
		winner []string
		lost   int
	)
	for i := range n {
		wg.Go(func() {
			<-start
			next := &authserver.RefreshToken{Hash: fmt.Sprintf("rt-next-%d", i), GrantID: "g", ExpiresAt: exp}
			err := hs[i%len(hs)].RotateRefreshToken(ctx, "rt-0", time.Now(), next)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winner = append(winner, next.Hash)
			case errors.Is(err, authserver.ErrRefreshTokenRotated):
				lost++
			default:
				t.Errorf("RotateRefreshToken: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(winner) != 1 || lost != n-1 {
		t.Fatalf("%d rotations won (%v) and %d lost; want 1 and %d", len(winner), winner, lost, n-1)
	}
	old, err := hs[1].RefreshToken(ctx, "rt-0")
	if err != nil || old.Successor != winner[0] || old.RotatedAt.IsZero() {
		t.Errorf("old token after the race: %+v, %v; want rotated to %s", old, err, winner[0])
	}
	var saved int
	if err := connect(t, url).QueryRow(ctx, "SELECT count(*) FROM evergrant_as_refresh_tokens").Scan(&saved); err != nil {
		t.Fatal(err)
	}
	if saved != 2 {
		t.Errorf("%d refresh tokens stored after the race, want 2 (the old one and the winner's successor)", saved)
	}
}

// TestUnreachable: a database that cannot be reached gives an error that
// says where, and never the password.
func TestUnreachable(t *testing.T) {
	// A loopback port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	const password = "hunter2-secret"
	url := fmt.Sprintf("postgres://evergrant:%s@127.0.0.1:%d/authserver?sslmode=disable&connect_timeout=5", password, port)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, url, pgstore.Options{SecretKey: secretKey})
	if err == nil {
		s.Close()
		t.Fatal("Open of an unreachable database succeeded")
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	for _, want := range []string{fmt.Sprintf("127.0.0.1:%d", port), `"authserver"`, "refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, password) {
		t.Errorf("error %q shows the password", msg)
	}
	_, err = pgstore.Open(ctx, "postgres://evergrant:"+password+"@127.0.0.1:notaport/authserver", pgstore.Options{SecretKey: secretKey})
	if err == nil || strings.Contains(err.Error(), password) {
		t.Errorf("Open of a malformed URL: err = %v; want an error without the password", err)
	}
}

// TestSecretKeyRequired: Open refuses a missing or short secret key,
// before connecting.
func TestSecretKeyRequired(t *testing.T) {
	for _, key := range [][]byte{nil, make([]byte, 16)} {
		_, err := pgstore.Open(t.Context(), "postgres://u:pw@127.0.0.1:1/db", pgstore.Options{SecretKey: key})
		if err == nil || !strings.Contains(err.Error(), "SecretKey") {
			t.Errorf("Open with a %d-byte secret key: err = %v; want a refusal naming SecretKey", len(key), err)
		}
	}
}

// TestRefusesNewerSchema: a database whose schema a newer evergrant made
// is refused with a clear error, and left as it is.
func TestRefusesNewerSchema(t *testing.T) {
	url := pg.NewDatabase(t)
	open(t, url, secretKey).Close()
	conn := connect(t, url)
	newer := pgstore.SchemaVersion + 1
	if _, err := conn.Exec(t.Context(), "UPDATE evergrant_as_schema_version SET version = $1", newer); err != nil {
		t.Fatal(err)
	}
	_, err := pgstore.Open(t.Context(), url, pgstore.Options{SecretKey: secretKey})
	if !errors.Is(err, pgstore.ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema: err = %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{fmt.Sprintf("version %d", newer), fmt.Sprintf("up to %d", newer-1), "127.0.0.1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	var v int
	if err := conn.QueryRow(t.Context(), "SELECT version FROM evergrant_as_schema_version").Scan(&v); err != nil || v != newer {
		t.Errorf("schema version after the refusal = %d, %v; want %d, untouched", v, err, newer)
	}
}

// TestMigratesOnce: replicas opening a new database at once create the
// schema once, and reopening keeps the data.
func TestMigratesOnce(t *testing.T) {
	url := pg.NewDatabase(t)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			s, err := pgstore.Open(t.Context(), url, pgstore.Options{SecretKey: secretKey})
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	rows, err := connect(t, url).Query(t.Context(), "SELECT version FROM evergrant_as_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if len(versions) != 1 || versions[0] != pgstore.SchemaVersion {
		t.Errorf("schema versions recorded = %v, want one, %d", versions, pgstore.SchemaVersion)
	}
	s := open(t, url, secretKey)
	if err := s.SaveClient(t.Context(), &authserver.Client{ID: "kept"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := open(t, url, secretKey).Client(t.Context(), "kept"); err != nil {
		t.Errorf("Client after reopening: %v", err)
	}
}

// TestKeysEncryptedAtRest: the signing keys are stored sealed, the column
// holds no trace of the key material (no PKCS#8 DER, no PEM), they
// decrypt with the secret key they were saved under, and with another
// key InitKeys fails with ErrWrongSecretKey rather than replace them.
func TestKeysEncryptedAtRest(t *testing.T) {
	ctx := t.Context()
	url := pg.NewDatabase(t)
	s := open(t, url, secretKey)
	// A real key, as the server encodes it (PKCS#8 DER), and a previous
	// one as PEM, to look for in the raw column.
	der := pkcs8(t)
	prev := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	rotated := time.Now()
	keys := &authserver.SigningKeys{Current: der, Previous: prev, RotatedAt: rotated}
	got, err := s.InitKeys(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Current, der) || !bytes.Equal(got.Previous, prev) {
		t.Fatal("InitKeys did not return the keys it saved")
	}

	var cur, old []byte
	if err := connect(t, url).QueryRow(ctx, "SELECT current, previous FROM evergrant_as_signing_keys").Scan(&cur, &old); err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{"current": cur, "previous": old} {
		for _, secret := range [][]byte{der, der[len(der)-32:], prev, []byte("PRIVATE KEY"), []byte("-----BEGIN")} {
			if bytes.Contains(raw, secret) {
				t.Errorf("the %s column holds key material in the clear", name)
			}
		}
		// The PKCS#8 header: SEQUENCE, version 0, the ecPublicKey OID.
		if bytes.Contains(raw, der[:26]) {
			t.Errorf("the %s column looks like PKCS#8 DER", name)
		}
		if _, err := x509.ParsePKCS8PrivateKey(raw); err == nil {
			t.Errorf("the %s column parses as PKCS#8", name)
		}
	}
	if len(cur) != 12+len(der)+16 {
		t.Errorf("the current column is %d bytes, want nonce (12) + ciphertext (%d) + tag (16)", len(cur), len(der))
	}

	// Another replica with the same secret key reads the same keys.
	again, err := open(t, url, secretKey).InitKeys(ctx, &authserver.SigningKeys{Current: []byte("other"), RotatedAt: time.Now()})
	if err != nil || !bytes.Equal(again.Current, der) || !bytes.Equal(again.Previous, prev) {
		t.Errorf("InitKeys on a second handle: %v; want the saved keys", err)
	}

	// A replica with another secret key is refused, and changes nothing.
	wrong := bytes.Repeat([]byte{0xa5}, pgstore.SecretKeySize)
	_, err = open(t, url, wrong).InitKeys(ctx, &authserver.SigningKeys{Current: []byte("other"), RotatedAt: time.Now()})
	if !errors.Is(err, pgstore.ErrWrongSecretKey) {
		t.Fatalf("InitKeys with the wrong secret key: err = %v, want ErrWrongSecretKey", err)
	}
	t.Logf("error: %v", err)
	var after []byte
	if err := connect(t, url).QueryRow(ctx, "SELECT current FROM evergrant_as_signing_keys").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, cur) {
		t.Error("InitKeys with the wrong secret key changed the stored keys")
	}

	// A sealed key swapped into the other column does not decrypt (the
	// column is in the additional data).
	if _, err := connect(t, url).Exec(ctx, "UPDATE evergrant_as_signing_keys SET current = previous, previous = current"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InitKeys(ctx, keys); !errors.Is(err, pgstore.ErrWrongSecretKey) {
		t.Errorf("InitKeys of swapped columns: err = %v, want ErrWrongSecretKey", err)
	}
}

// pkcs8 returns a new P-256 key in PKCS#8 DER, as the server encodes its
// signing keys.
func pkcs8(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestPruneRefreshTokens: pruning keeps a grant's live token and its most
// recently rotated ones, and leaves other grants alone.
func TestPruneRefreshTokens(t *testing.T) {
	ctx := t.Context()
	s := open(t, pg.NewDatabase(t), secretKey)
	exp := time.Now().Add(time.Hour)
	for _, g := range []string{"g", "other"} {
		if err := s.SaveRefreshToken(ctx, &authserver.RefreshToken{Hash: g + "-0", GrantID: g, ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		for i := 1; i <= 5; i++ {
			next := &authserver.RefreshToken{Hash: fmt.Sprintf("%s-%d", g, i), GrantID: g, ExpiresAt: exp}
			if err := s.RotateRefreshToken(ctx, fmt.Sprintf("%s-%d", g, i-1), at.Add(time.Duration(i)*time.Second), next); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.PruneRefreshTokens(ctx, "g", 2); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		_, err := s.RefreshToken(ctx, fmt.Sprintf("g-%d", i))
		if kept := i >= 3; kept != (err == nil) {
			t.Errorf("g-%d after pruning to 2: err = %v, want kept = %v", i, err, kept)
		}
		if _, err := s.RefreshToken(ctx, fmt.Sprintf("other-%d", i)); err != nil {
			t.Errorf("other-%d after pruning g: %v", i, err)
		}
	}
}
