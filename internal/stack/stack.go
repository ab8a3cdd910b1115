// Package stack assembles, for one listener, an authorization server and
// an MCP server it protects: the one place in the project that wires them
// together. On the listener:
//
//   - the embedded authorization server (package authserver) at the root;
//   - the MCP endpoint at /mcp behind the bearer middleware, with its
//     protected resource metadata at the well-known paths (server.Protect);
//   - the fake upstream API of internal/upstream at /upstream/search.
//
// `evergrant serve` and `evergrant demo` run it with the example MCP
// server of internal/upstream. The client tests (internal/fixture) and
// `evergrant check client` run it with their own MCP handler, fault
// injection (internal/faults), and a layer in front of the authorization
// server and of the MCP endpoint that records requests and forces answers
// (Config.WrapAuthServer, Config.WrapMCP). The caller owns the listener
// and serves Stack.Handler on it.
package stack

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/faults"
	"github.com/evergrant/evergrant/internal/upstream"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/server"
)

// Paths on the listener.
const (
	MCPPath    = "/mcp"
	SearchPath = "/upstream/search"
)

// Config configures a Stack. Only BaseURL is required.
type Config struct {
	// BaseURL is the stack's URL as clients see it, for example
	// http://127.0.0.1:8400, or the URL of a reverse proxy in front of the
	// listener: the issuer, and the base of every URL the stack publishes.
	BaseURL string
	// InternalURL is where the stack reaches its own listener (for its
	// verifier's JWKS, introspection and the tools' calls to the fake
	// upstream); empty means BaseURL. Set it when BaseURL is a proxy's.
	InternalURL string
	// AutoApprove skips the consent page.
	AutoApprove bool
	// Subject is the user every authorization is for; default "demo-user".
	Subject string
	// Scopes the authorization server supports; default "mcp:tools" and
	// upstream.NotesScope. The first is what a request that names none
	// gets, and the only one the resource metadata advertises: the others
	// come by step-up.
	Scopes []string
	// AccessTokenTTL and RefreshTokenTTL are token lifetimes; zero means the
	// authorization server's defaults.
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	// UpstreamTokenMaxAge makes the fake upstream reject tokens older than
	// this; zero means no limit.
	UpstreamTokenMaxAge time.Duration
	// ExtraResources are other MCP servers the authorization server issues
	// tokens for (for example examples/upstream-server).
	ExtraResources []string
	// Clients are pre-registered clients of the authorization server.
	Clients []authserver.ClientConfig
	// AuthServer, when set, adjusts the authorization server's
	// configuration last.
	AuthServer func(*authserver.Config)
	// Faults puts a fault injector (Stack.Faults) in front of the
	// authorization server. For tests and `evergrant check`.
	Faults bool
	// Introspect makes the MCP endpoint ask the authorization server about
	// every token (RFC 7662, without a cache) instead of verifying the JWT
	// itself: expiry and revocation are then exactly the authorization
	// server's, on its clock.
	Introspect bool
	// Handler serves the MCP endpoint behind the bearer middleware; nil
	// means the example MCP server of internal/upstream.
	Handler http.Handler
	// JSONResponse makes the example MCP server answer with JSON instead of
	// SSE.
	JSONResponse bool
	// ResourceName is the resource metadata's resource_name; default
	// "evergrant example MCP server".
	ResourceName string
	// WrapAuthServer and WrapMCP, when set, wrap the authorization server
	// (in front of its fault injector) and the MCP endpoint (in front of the
	// bearer middleware), to record what reaches them or to answer some
	// requests themselves.
	WrapAuthServer func(http.Handler) http.Handler
	WrapMCP        func(http.Handler) http.Handler
	Logger         *slog.Logger
	// Now is the clock of the authorization server, the verifier and the
	// fake upstream; nil means time.Now. Tests and the demo move it to
	// expire tokens without waiting.
	Now func() time.Time
}

// Stack is the assembled handler and the URLs it serves.
type Stack struct {
	AS *authserver.Server
	// Faults is the fault injector; nil unless Config.Faults.
	Faults      *faults.Injector
	Upstream    *upstream.FakeAPI
	Handler     http.Handler
	Issuer      string
	MCPURL      string
	MetadataURL string
	UpstreamURL string
}

// defaultScopes are the scopes of a Config without Scopes.
var defaultScopes = []string{"mcp:tools", upstream.NotesScope}

// introspectionClientID is the resource server's client at the
// authorization server when Config.Introspect is set.
const introspectionClientID = "evergrant-stack-resource-server"

// New builds a Stack.
func New(cfg Config) (*Stack, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Subject == "" {
		cfg.Subject = "demo-user"
	}
	scopes := cfg.Scopes
	if len(scopes) == 0 {
		scopes = defaultScopes
	}
	if cfg.ResourceName == "" {
		cfg.ResourceName = "evergrant example MCP server"
	}
	internal := cfg.InternalURL
	if internal == "" {
		internal = cfg.BaseURL
	}
	s := &Stack{Issuer: cfg.BaseURL, MCPURL: cfg.BaseURL + MCPPath, UpstreamURL: cfg.BaseURL + SearchPath}
	md, err := oauth.ProtectedResourceMetadataURL(s.MCPURL)
	if err != nil {
		return nil, err
	}
	s.MetadataURL = md
	asCfg := authserver.Config{
		Issuer:          cfg.BaseURL,
		Resources:       append([]string{s.MCPURL}, cfg.ExtraResources...),
		Scopes:          append([]string(nil), scopes...),
		DefaultScopes:   scopes[:1],
		AccessTokenTTL:  cfg.AccessTokenTTL,
		RefreshTokenTTL: cfg.RefreshTokenTTL,
		AutoApprove:     cfg.AutoApprove,
		Authenticate:    authserver.StaticUser(cfg.Subject),
		Clients:         append([]authserver.ClientConfig(nil), cfg.Clients...),
		Logger:          logger.With("component", "authserver"),
		Now:             cfg.Now,
	}
	var rsSecret string
	if cfg.Introspect {
		rsSecret = rand.Text()
		asCfg.Clients = append(asCfg.Clients, authserver.ClientConfig{
			ID: introspectionClientID, Secret: rsSecret, RedirectURIs: []string{"https://rs.invalid/cb"},
		})
	}
	if cfg.AuthServer != nil {
		cfg.AuthServer(&asCfg)
	}
	as, err := authserver.New(asCfg)
	if err != nil {
		return nil, fmt.Errorf("authorization server: %w", err)
	}
	s.AS = as
	var asHandler http.Handler = as
	if cfg.Faults {
		s.Faults = faults.New(as, logger.With("component", "faults"))
		asHandler = s.Faults
	}

	jwtVerifier := func(audience string) (server.Verifier, error) {
		return server.NewJWTVerifier(server.JWTConfig{
			Issuer: cfg.BaseURL, Audience: audience, JWKSURL: internal + authserver.PathJWKS, RequireATJWT: true,
			Now: cfg.Now,
		})
	}
	verifier, err := jwtVerifier(s.MCPURL)
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	// The upstream accepts tokens for any resource this stack's authorization
	// server serves (the delegated-token model of internal/upstream).
	upstreamVerifiers := anyOf{verifier}
	for _, r := range cfg.ExtraResources {
		v, err := jwtVerifier(r)
		if err != nil {
			return nil, fmt.Errorf("verifier for %s: %w", r, err)
		}
		upstreamVerifiers = append(upstreamVerifiers, v)
	}
	s.Upstream = &upstream.FakeAPI{Verifier: upstreamVerifiers, MaxAge: cfg.UpstreamTokenMaxAge, Now: cfg.Now}
	if cfg.Introspect {
		endpoint := as.Metadata().IntrospectionEndpoint
		if cfg.InternalURL != "" {
			endpoint = internal + authserver.PathIntrospect
		}
		verifier, err = server.NewIntrospectionVerifier(server.IntrospectionConfig{
			Endpoint: endpoint, ClientID: introspectionClientID, ClientSecret: rsSecret,
			Resource: s.MCPURL, Issuer: cfg.BaseURL, CacheTTL: -1, Now: cfg.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("verifier: %w", err)
		}
	}
	// Protect mounts the MCP endpoint and its metadata on a mux of their
	// own, so that WrapMCP can stand in front of the bearer middleware.
	mcpHandler := cfg.Handler
	var mcpSrv *mcp.Server // nil with cfg.Handler: its servers are the caller's
	if mcpHandler == nil {
		mcpSrv = upstream.NewMCPServer(internal+SearchPath, nil)
		mcpHandler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return mcpSrv },
			&mcp.StreamableHTTPOptions{JSONResponse: cfg.JSONResponse, Logger: logger.With("component", "mcp-sdk"),
				// Sessions a client abandoned (for example after its grant was
				// revoked, its closing DELETE is refused) end on their own.
				SessionTimeout: 30 * time.Minute})
	}
	rs := http.NewServeMux()
	err = server.Protect(rs, mcpSrv, mcpHandler, server.Config{
		Resource: s.MCPURL,
		Verifier: verifier,
		Logger:   logger.With("component", "mcp"),
		Metadata: oauth.ProtectedResourceMetadata{
			AuthorizationServers: []string{cfg.BaseURL}, ScopesSupported: scopes[:1], ResourceName: cfg.ResourceName,
		},
	})
	if err != nil {
		return nil, err
	}
	var protected http.Handler = rs
	if cfg.WrapAuthServer != nil {
		asHandler = cfg.WrapAuthServer(asHandler)
	}
	if cfg.WrapMCP != nil {
		protected = cfg.WrapMCP(protected)
	}
	mux := http.NewServeMux()
	mux.Handle("/", asHandler)
	mux.Handle(MCPPath, protected)
	mux.Handle(SearchPath, s.Upstream)
	// The well-known paths Protect serves the metadata at (RFC 9728 §3.1).
	mux.Handle(oauth.WellKnownProtectedResource+MCPPath, rs)
	mux.Handle(oauth.WellKnownProtectedResource, rs)
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
