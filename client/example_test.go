package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/store"
)

// A host gives the official Go SDK an http.Client whose Transport is a
// client.Transport. The Transport signs in through the browser the first
// time, keeps the grant in the user's config directory, and from then on
// refreshes silently whenever the server says the token expired.
func ExampleNewTransport() {
	dir, err := store.DefaultDir()
	if err != nil {
		log.Fatal(err)
	}
	grants, err := store.OpenFile(dir)
	if err != nil {
		log.Fatal(err)
	}
	browser, err := client.NewLoopbackAuthorizer("127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer browser.Close()
	t := client.NewTransport(client.Config{Store: grants, Authorizer: browser})

	ctx := context.Background()
	session, err := mcp.NewClient(&mcp.Implementation{Name: "my-host", Version: "1.0"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{
			Endpoint:   "https://mcp.example.com/mcp",
			HTTPClient: &http.Client{Transport: t},
		}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer session.Close()
	tools, err := session.ListTools(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, tool := range tools.Tools {
		fmt.Println(tool.Name)
	}
}

// At a call site, a NeedsReauthError says the user must sign in again:
// the grant is gone (never made, or its refresh token was refused), so no
// retry can help. A host routes it to its UI instead of showing a failure.
func ExampleNeedsReauthError() {
	// A server that rejects every token, and a Transport that holds no
	// grant and may not sign in interactively.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer srv.Close()
	t := client.NewTransport(client.Config{})

	_, err := mcp.NewClient(&mcp.Implementation{Name: "my-host", Version: "1.0"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: srv.URL + "/mcp", HTTPClient: &http.Client{Transport: t}}, nil)

	var reauth *client.NeedsReauthError
	if errors.As(err, &reauth) {
		fmt.Println("sign in again:", reauth.Reason)
	}
	fmt.Println(errors.Is(err, client.ErrNeedsReauth))
	// Output:
	// sign in again: no_grant
	// true
}
