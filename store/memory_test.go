package store

import "testing"

func TestMemory(t *testing.T) {
	testStore(t, func() Store { return NewMemory() })
}

func TestMemory_ZeroValue(t *testing.T) {
	testStore(t, func() Store { return new(Memory) })
}
