// Package stack assembles what `evergrant serve` and `evergrant demo` run
// on one loopback listener: the embedded authorization server at the root,
// the example MCP server (examples/upstream) at /mcp behind the bearer
// middleware, and the fake upstream API at /upstream/search.
package stack

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/upstream"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

// Paths on the listener.
const (
	MCPPath    = "/mcp"
	SearchPath = "/upstream/search"
)

// Config configures a Stack.
type Config struct {
	// BaseURL is the listener's URL, for example http://127.0.0.1:8400.
	BaseURL string
	// AutoApprove skips the consent page.
	AutoApprove bool
	// Subject is the user every authorization is for; default "demo-user".
	Subject string
	// AccessTokenTTL and RefreshTokenTTL are token lifetimes.
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	// UpstreamTokenMaxAge makes the fake upstream reject tokens older than
	// this; zero means no limit.
	UpstreamTokenMaxAge time.Duration
	// ExtraResources are other MCP servers the authorization server issues
	// tokens for (for example examples/upstream-server).
	ExtraResources []string
	// EnableFaults turns on the authorization server's fault injection.
	EnableFaults bool
	// JSONResponse makes the MCP server answer with JSON instead of SSE.
	JSONResponse bool
	Logger       *slog.Logger
	// Now is the clock of the authorization server, the verifier and the
	// fake upstream; nil means time.Now. Tests and the demo move it to
	// expire tokens without waiting.
	Now func() time.Time
}

// Stack is the assembled handler and the URLs it serves.
type Stack struct {
	AS          *authserver.Server
	Upstream    *upstream.FakeAPI
	Handler     http.Handler
	Issuer      string
	MCPURL      string
	MetadataURL string
	UpstreamURL string
}

// Scopes the stack's authorization server supports.
var scopes = []string{"mcp:tools", upstream.NotesScope}

// New builds a Stack.
func New(cfg Config) (*Stack, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Subject == "" {
		cfg.Subject = "demo-user"
	}
	s := &Stack{Issuer: cfg.BaseURL, MCPURL: cfg.BaseURL + MCPPath, UpstreamURL: cfg.BaseURL + SearchPath}
	md, err := oauth.ProtectedResourceMetadataURL(s.MCPURL)
	if err != nil {
		return nil, err
	}
	s.MetadataURL = md
	as, err := authserver.New(authserver.Config{
		Issuer:          cfg.BaseURL,
		Resources:       append([]string{s.MCPURL}, cfg.ExtraResources...),
		Scopes:          append([]string(nil), scopes...),
		DefaultScopes:   scopes[:1], // notes.write only when asked for (step-up)
		AccessTokenTTL:  cfg.AccessTokenTTL,
		RefreshTokenTTL: cfg.RefreshTokenTTL,
		AutoApprove:     cfg.AutoApprove,
		Authenticate:    authserver.StaticUser(cfg.Subject),
		EnableFaults:    cfg.EnableFaults,
		Logger:          logger.With("component", "authserver"),
		Now:             cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("authorization server: %w", err)
	}
	s.AS = as
	verifier, err := server.NewJWTVerifier(server.JWTConfig{
		Issuer: cfg.BaseURL, Audience: s.MCPURL, JWKSURL: cfg.BaseURL + authserver.PathJWKS, RequireATJWT: true,
		Now: cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	// The upstream accepts tokens for any resource this stack's authorization
	// server serves (the delegated-token model of examples/upstream).
	upstreamVerifiers := anyOf{verifier}
	for _, r := range cfg.ExtraResources {
		v, err := server.NewJWTVerifier(server.JWTConfig{
			Issuer: cfg.BaseURL, Audience: r, JWKSURL: cfg.BaseURL + authserver.PathJWKS, RequireATJWT: true, Now: cfg.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("verifier for %s: %w", r, err)
		}
		upstreamVerifiers = append(upstreamVerifiers, v)
	}
	s.Upstream = &upstream.FakeAPI{Verifier: upstreamVerifiers, MaxAge: cfg.UpstreamTokenMaxAge, Now: cfg.Now}
	mw, err := server.RequireToken(server.Config{
		Resource: s.MCPURL, ResourceMetadataURL: s.MetadataURL, Verifier: verifier,
		Logger: logger.With("component", "mcp"),
	})
	if err != nil {
		return nil, err
	}
	mcpSrv := upstream.NewMCPServer(s.UpstreamURL, nil)
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return mcpSrv },
		&mcp.StreamableHTTPOptions{JSONResponse: cfg.JSONResponse, Logger: logger.With("component", "mcp-sdk"),
			// Sessions a client abandoned (for example after its grant was
			// revoked, its closing DELETE is refused) end on their own.
			SessionTimeout: 30 * time.Minute})

	mux := http.NewServeMux()
	mux.Handle("/", as)
	mux.Handle(MCPPath, mw(mcpHandler))
	mux.Handle(SearchPath, s.Upstream)
	prm := server.MetadataHandler(oauth.ProtectedResourceMetadata{
		Resource: s.MCPURL, AuthorizationServers: []string{cfg.BaseURL}, ScopesSupported: scopes[:1],
		BearerMethodsSupported: []string{"header"}, ResourceName: "evergrant example MCP server",
	})
	paths, err := server.MetadataPaths(s.MCPURL)
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		mux.Handle(p, prm)
	}
	s.Handler = mux
	return s, nil
}

// anyOf accepts a token that one of its verifiers accepts.
type anyOf []server.Verifier

func (a anyOf) Verify(ctx context.Context, tok string) (*server.TokenInfo, error) {
	var first error
	for _, v := range a {
		ti, err := v.Verify(ctx, tok)
		if err == nil {
			return ti, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}
