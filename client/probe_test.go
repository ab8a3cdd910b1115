package client_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
)

// NoOAuthMetadata is true only for a server that answers 4xx at every
// well-known metadata URL: an MCP server that does not use OAuth. For a
// server with OAuth, one that fails (5xx), one that cannot be reached, or
// a URL it cannot probe, it is false.
func TestNoOAuthMetadata(t *testing.T) {
	ctx := context.Background()

	srv := mcp.NewServer(&mcp.Implementation{Name: "open", Version: "1"}, nil)
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	open := httptest.NewServer(mux)
	defer open.Close()

	protected := fixture.New(t, fixture.Options{})

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "try later", http.StatusServiceUnavailable)
	}))
	defer failing.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String() + "/mcp"
	ln.Close()

	for _, c := range []struct {
		name, url string
		want      bool
	}{
		{"MCP server without OAuth", open.URL + "/mcp", true},
		{"MCP server with OAuth", protected.URL, false},
		{"server answering 503", failing.URL + "/mcp", false},
		{"server down", down, false},
		{"not a URL", "://nope", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := client.NoOAuthMetadata(ctx, nil, c.url); got != c.want {
				t.Errorf("NoOAuthMetadata(%s) = %v, want %v", c.url, got, c.want)
			}
		})
	}
}
