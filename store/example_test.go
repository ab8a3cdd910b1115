package store_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/evergrant/evergrant/store"
)

// ExampleFile shows the refresh protocol of docs/design.md#client-rule-7, which holds
// across processes with a File: lock the grant, load it again, refresh only
// if nobody else did, save, unlock.
func ExampleFile() {
	dir, _ := os.MkdirTemp("", "evergrant-example-")
	defer os.RemoveAll(dir)
	s, err := store.OpenFile(dir) // the CLI uses store.DefaultDir()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	const key = "https://mcp.example.com/mcp"
	s.Save(ctx, &store.Grant{Key: key, AccessToken: "old", RefreshToken: "r1"})

	failed := "old" // the access token the server answered 401 invalid_token to
	unlock, err := s.Lock(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	g, err := s.Load(ctx, key) // another process may have refreshed meanwhile
	if err == nil && g.AccessToken == failed {
		// Refresh at g.TokenEndpoint with g.RefreshToken here.
		g.AccessToken, g.RefreshToken = "new", "r2"
		g.Expiry = time.Now().Add(time.Hour)
		err = s.Save(ctx, g) // before retrying the request
	}
	unlock()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("retry with", g.AccessToken)
	// Output: retry with new
}
