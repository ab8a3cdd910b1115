package store_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/store"
)

// BenchmarkRefreshCycle measures one turn of the refresh protocol of
// docs/design.md#client-rule-7 without the token request: Lock, Load,
// Save, unlock, on each store in one run, so the numbers compare. "serial"
// is one caller on one key; "parallel" is GOMAXPROCS callers, each on its
// own key.
//
//	go test -run '^$' -bench RefreshCycle ./store
func BenchmarkRefreshCycle(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"Memory", func(b *testing.B) store.Store { return new(store.Memory) }},
		{"File", func(b *testing.B) store.Store {
			f, err := store.OpenFile(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return f
		}},
		{"Postgres", func(b *testing.B) store.Store { return openPostgres(b, pg.NewDatabase(b), nil) }},
	}
	for _, st := range stores {
		b.Run(st.name+"/serial", func(b *testing.B) {
			s := st.open(b)
			const key = "https://mcp.example.com/mcp"
			seed(b, s, key)
			b.ResetTimer()
			for b.Loop() {
				cycle(b, s, key)
			}
		})
		b.Run(st.name+"/parallel", func(b *testing.B) {
			s := st.open(b)
			var next atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				key := fmt.Sprintf("https://mcp%d.example.com/mcp", next.Add(1))
				seed(b, s, key)
				for pb.Next() {
					cycle(b, s, key)
				}
			})
		})
	}
}

func seed(b *testing.B, s store.Store, key string) {
	g := &store.Grant{
		Key: key, Resource: key, Issuer: "https://as.example.com", TokenEndpoint: "https://as.example.com/token",
		ClientID: "client", AccessToken: "at-0", RefreshToken: "rt-0", Expiry: time.Now().Add(time.Hour),
		Scopes: []string{"files.read", "offline_access"},
	}
	if err := s.Save(b.Context(), g); err != nil {
		b.Fatal(err)
	}
}

func cycle(b *testing.B, s store.Store, key string) {
	ctx := b.Context()
	unlock, err := s.Lock(ctx, key)
	if err != nil {
		b.Fatal(err)
	}
	defer unlock()
	g, err := s.Load(ctx, key)
	if err != nil {
		b.Fatal(err)
	}
	g.AccessToken, g.RefreshToken, g.UpdatedAt = "at-1", "rt-1", time.Now()
	if err := s.Save(ctx, g); err != nil {
		b.Fatal(err)
	}
}
