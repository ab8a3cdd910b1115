package store_test

import (
	"testing"

	"github.com/evergrant/evergrant/store"
	"github.com/evergrant/evergrant/store/storetest"
)

// TestMemory runs the Store conformance suite on the zero Memory.
func TestMemory(t *testing.T) {
	storetest.TestStore(t, func(*testing.T) store.Store { return new(store.Memory) })
}

// TestMemory_Shared runs the shared-storage suite on one Memory used
// through two references, which is how goroutines share it.
func TestMemory_Shared(t *testing.T) {
	storetest.TestShared(t, func(*testing.T) (a, b store.Store) {
		m := new(store.Memory)
		return m, m
	})
}
