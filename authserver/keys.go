package authserver

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// signingAlg is the JWS algorithm of access tokens (RFC 9068 §2.1 allows any
// asymmetric algorithm; ES256 keeps tokens short).
const signingAlg = jose.ES256

// accessTokenType is the JOSE "typ" of RFC 9068 §2.1.
const accessTokenType = "at+jwt"

type signingKey struct {
	kid    string
	priv   *ecdsa.PrivateKey
	signer jose.Signer
}

// keySet holds the current signing key and the previous one, which stays
// published in the JWKS so tokens it signed keep verifying after a rotation.
// Its keys are those of the Store's KeyStore: loaded by New, saved by
// RotateKey.
type keySet struct {
	rotateMu sync.Mutex // serialises rotations, from the save to the swap

	mu       sync.RWMutex
	current  *signingKey
	previous *signingKey
}

func newSigningKey(priv *ecdsa.PrivateKey) (*signingKey, error) {
	if priv == nil {
		var err error
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate signing key: %w", err)
		}
	}
	if priv.Curve != elliptic.P256() {
		return nil, fmt.Errorf("signing key must be ECDSA P-256")
	}
	jwk := jose.JSONWebKey{Key: priv.Public(), Algorithm: string(signingAlg), Use: "sig"}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("key thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(thumb) // RFC 7638
	opts := (&jose.SignerOptions{}).WithType(accessTokenType).WithHeader("kid", kid)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: signingAlg, Key: priv}, opts)
	if err != nil {
		return nil, fmt.Errorf("new signer: %w", err)
	}
	return &signingKey{kid: kid, priv: priv, signer: signer}, nil
}

// encodeKey returns k's private key as PKCS#8, the form a KeyStore keeps.
func encodeKey(k *signingKey) ([]byte, error) {
	b, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	return b, nil
}

// decodeKey is the inverse of encodeKey. Its errors never quote the key.
func decodeKey(b []byte) (*signingKey, error) {
	key, err := x509.ParsePKCS8PrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("decode signing key: %w", err)
	}
	priv, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("decode signing key: a %T, want ECDSA P-256", key)
	}
	return newSigningKey(priv)
}

// load makes the keys of ks (as loaded from a KeyStore) the key set.
func (ks *keySet) load(sk *SigningKeys) error {
	cur, err := decodeKey(sk.Current)
	if err != nil {
		return fmt.Errorf("current key: %w", err)
	}
	var prev *signingKey
	if len(sk.Previous) > 0 {
		if prev, err = decodeKey(sk.Previous); err != nil {
			return fmt.Errorf("previous key: %w", err)
		}
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.current, ks.previous = cur, prev
	return nil
}

// init loads the keys saved in st, or, if there are none, saves priv (or a
// fresh key if priv is nil) as the only key and uses it.
func (ks *keySet) init(ctx context.Context, st KeyStore, priv *ecdsa.PrivateKey, now time.Time) error {
	k, err := newSigningKey(priv)
	if err != nil {
		return err
	}
	b, err := encodeKey(k)
	if err != nil {
		return err
	}
	sk, err := st.InitKeys(ctx, &SigningKeys{Current: b, RotatedAt: now})
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	return ks.load(sk)
}

// rotate makes a fresh key the current one and the current one the
// previous, saving the new set in st before using it.
func (ks *keySet) rotate(ctx context.Context, st KeyStore, now time.Time) (string, error) {
	ks.rotateMu.Lock()
	defer ks.rotateMu.Unlock()
	k, err := newSigningKey(nil)
	if err != nil {
		return "", err
	}
	ks.mu.RLock()
	cur := ks.current
	ks.mu.RUnlock()
	sk := &SigningKeys{RotatedAt: now}
	if sk.Current, err = encodeKey(k); err != nil {
		return "", err
	}
	if sk.Previous, err = encodeKey(cur); err != nil {
		return "", err
	}
	if err := st.SaveKeys(ctx, sk); err != nil {
		return "", fmt.Errorf("save signing keys: %w", err)
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.previous = ks.current
	ks.current = k
	return k.kid, nil
}

func (ks *keySet) sign(claims any) (string, error) {
	ks.mu.RLock()
	k := ks.current
	ks.mu.RUnlock()
	return jwt.Signed(k.signer).Claims(claims).Serialize()
}

// jwks returns the public keys: the current one first, then the previous.
func (ks *keySet) jwks() jose.JSONWebKeySet {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var set jose.JSONWebKeySet
	for _, k := range []*signingKey{ks.current, ks.previous} {
		if k == nil {
			continue
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(signingAlg), Use: "sig",
		})
	}
	return set
}

// verify checks a JWT signed by one of our published keys and decodes its
// claims. It does not check time claims; callers do.
func (ks *keySet) verify(token string, claims any) error {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{signingAlg})
	if err != nil {
		return err
	}
	if len(tok.Headers) != 1 {
		return fmt.Errorf("want one signature")
	}
	kid := tok.Headers[0].KeyID
	ks.mu.RLock()
	var key *signingKey
	for _, k := range []*signingKey{ks.current, ks.previous} {
		if k != nil && k.kid == kid {
			key = k
		}
	}
	ks.mu.RUnlock()
	if key == nil {
		return fmt.Errorf("unknown key")
	}
	return tok.Claims(key.priv.Public(), claims)
}

// randomToken returns n random bytes from crypto/rand, base64url-encoded.
func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// hashSecret returns the SHA-256 of s, base64url-encoded; codes, refresh
// tokens and client secrets are stored only in this form.
func hashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// equalHash compares two hashes in constant time.
func equalHash(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
