// Command upstream-server is a runnable model of an MCP server that wraps an
// upstream API with the user's delegated token (package
// internal/upstream, which `evergrant serve` runs too), protected by
// evergrant's bearer middleware and trusting an authorization server you
// name.
//
//	go run ./cmd/evergrant serve --resource http://127.0.0.1:8500/mcp &
//	go run ./examples/upstream-server -issuer http://127.0.0.1:8400 \
//	    -upstream http://127.0.0.1:8400/upstream/search -listen 127.0.0.1:8500
//
// The authorization server must issue tokens for this server's URL (the
// resource, RFC 8707): that is what serve's --resource flag is for.
package main

import (
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/internal/upstream"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

func main() {
	issuer := flag.String("issuer", "http://127.0.0.1:8400", "the authorization server's issuer URL")
	upstreamURL := flag.String("upstream", "http://127.0.0.1:8400/upstream/search", "the upstream API's search URL")
	listen := flag.String("listen", "127.0.0.1:8500", "address to listen on")
	flag.Parse()

	resource := "http://" + *listen + "/mcp"
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	// Verify the authorization server's JWT access tokens (RFC 9068).
	verifier, err := server.NewJWTVerifier(server.JWTConfig{
		Issuer: *issuer, Audience: resource, JWKSURL: *issuer + "/jwks.json", RequireATJWT: true,
	})
	if err != nil {
		log.Fatal(err)
	}

	// The MCP server (its tools signal expiry with server.TokenExpired),
	// answering with JSON so a signal can always still change the status.
	mcpServer := upstream.NewMCPServer(*upstreamURL, nil)
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return mcpServer },
		&mcp.StreamableHTTPOptions{JSONResponse: true})

	// The endpoint at /mcp behind the bearer middleware, its metadata at
	// the well-known paths, and the tool signals on mcpServer.
	mux := http.NewServeMux()
	err = server.Protect(mux, mcpServer, handler, server.Config{
		Resource: resource,
		Verifier: verifier,
		Logger:   logger,
		Metadata: oauth.ProtectedResourceMetadata{AuthorizationServers: []string{*issuer}},
	})
	if err != nil {
		log.Fatal(err)
	}
	logger.Info("serving", "mcp", resource)
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
