package authserver_test

import (
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
