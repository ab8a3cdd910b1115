package store

import "testing"

func TestMemory(t *testing.T) {
	testStore(t, func() Store { return new(Memory) })
}

func TestMemory_ZeroValue(t *testing.T) {
	testStore(t, func() Store { return new(Memory) })
}
