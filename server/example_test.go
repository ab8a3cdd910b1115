package server_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
	"github.com/evergrant/evergrant/store"
)

// Protect puts an official-SDK MCP server behind OAuth: the endpoint at
// the resource's path, its metadata at the well-known paths, and tool
// signals that turn "the upstream API rejected the token" into a 401 on
// that very request. Here the authorization server is evergrant's own, on
// the same origin; any RFC 9068 issuer works the same way.
func ExampleProtect() {
	mux := http.NewServeMux()
	ts := httptest.NewServer(mux)
	defer ts.Close()
	resource := ts.URL + "/mcp"

	as, err := authserver.New(authserver.Config{Issuer: ts.URL, Resources: []string{resource}, AutoApprove: true})
	if err != nil {
		log.Fatal(err)
	}
	mux.Handle("/", as)
	verifier, err := server.NewJWTVerifier(server.JWTConfig{
		Issuer: ts.URL, Audience: resource, JWKSURL: ts.URL + authserver.PathJWKS,
	})
	if err != nil {
		log.Fatal(err)
	}

	// A tool whose upstream API rejects the user's token the first time.
	srv := mcp.NewServer(&mcp.Implementation{Name: "example", Version: "1"}, nil)
	var calls atomic.Int32
	mcp.AddTool(srv, &mcp.Tool{Name: "search"}, func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
		if calls.Add(1) == 1 {
			return nil, nil, server.TokenExpired("the upstream API rejected the token")
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "found it for " + req.Extra.TokenInfo.UserID}}}, nil, nil
	})
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{JSONResponse: true})
	err = server.Protect(mux, srv, handler, server.Config{
		Resource: resource,
		Verifier: verifier,
		Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{ts.URL}},
	})
	if err != nil {
		log.Fatal(err)
	}

	// Without a token: 401, and the challenge names the metadata.
	resp, err := http.Post(resource, "application/json", strings.NewReader(`{}`))
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	ch, _ := oauth.ParseBearerChallenge(resp.Header)
	fmt.Println(resp.StatusCode, strings.TrimPrefix(ch.ResourceMetadata, ts.URL))

	// A compliant client signs in through the metadata, and when the tool
	// signals, refreshes and calls again with the same JSON-RPC id.
	tr := client.NewTransport(client.Config{Store: new(store.Memory), Authorizer: client.NewHeadlessAuthorizer("", nil)})
	ctx := context.Background()
	session, err := mcp.NewClient(&mcp.Implementation{Name: "host", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: resource, HTTPClient: &http.Client{Transport: tr}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer session.Close()
	res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: "search"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Content[0].(*mcp.TextContent).Text)
	fmt.Println("refreshes:", tr.Stats().Refreshes)
	// Output:
	// 401 /.well-known/oauth-protected-resource/mcp
	// found it for demo-user
	// refreshes: 1
}
