package authserver_test

import (
	"strings"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/storetest"
)

// TestMemoryStore runs the Store conformance suite on the zero MemoryStore.
func TestMemoryStore(t *testing.T) {
	storetest.TestStore(t, func(*testing.T) authserver.Store { return new(authserver.MemoryStore) })
}

// TestMemoryStore_Shared runs the shared-storage suite on one MemoryStore
// used through two references, which is how one Server's requests share it.
func TestMemoryStore_Shared(t *testing.T) {
	storetest.TestShared(t, func(*testing.T) (a, b authserver.Store) {
		m := new(authserver.MemoryStore)
		return m, m
	})
}

// TestKeysThroughStore checks that a Server takes its signing keys from its
// Store: a second Server on the store of the first (a restart on a durable
// store) publishes the same keys, before and after a rotation, and ignores
// Config.SigningKey then.
func TestKeysThroughStore(t *testing.T) {
	st := new(authserver.MemoryStore)
	newServer := func() *authserver.Server {
		t.Helper()
		s, err := authserver.New(authserver.Config{Issuer: "http://127.0.0.1:9/", Store: st})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := newServer()
	if got, want := string(newServer().JWKS()), string(first.JWKS()); got != want {
		t.Errorf("restarted server publishes %s, want %s", got, want)
	}
	if _, err := first.RotateKey(); err != nil {
		t.Fatal(err)
	}
	restarted := newServer()
	if got, want := string(restarted.JWKS()), string(first.JWKS()); got != want {
		t.Errorf("after a rotation, restarted server publishes %s, want %s", got, want)
	}
	if n := strings.Count(string(restarted.JWKS()), `"kid"`); n != 2 {
		t.Errorf("restarted server publishes %d keys, want 2 (current and previous)", n)
	}
}
