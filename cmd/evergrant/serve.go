package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/oauth"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8400", "address to listen on; 127.0.0.1:0 picks a free port")
	autoApprove := fs.Bool("auto-approve", false, "approve every authorization request without showing the consent page")
	accessTTL := fs.Duration("access-token-ttl", authserver.DefaultAccessTokenTTL, "access token lifetime")
	refreshTTL := fs.Duration("refresh-token-ttl", authserver.DefaultRefreshTokenTTL, "refresh token lifetime")
	scopes := fs.String("scopes", "mcp:tools", "space-separated scopes clients may ask for (offline_access is always supported)")
	subject := fs.String("user", "demo-user", "the user every authorization is granted for")
	logLevel := fs.String("log-level", "info", "log level on stderr: debug, info, warn or error")
	var resources stringList
	fs.Var(&resources, "resource", "resource (MCP server URL) tokens may be issued for; repeatable; default <issuer>/mcp")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: evergrant serve [flags]\n\nRuns the embedded OAuth authorization server on loopback until interrupted.\nPrints one line per endpoint on stdout, starting with \"issuer: <URL>\".\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "evergrant serve: --log-level: %v\n", err)
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	}
	issuer := "http://" + ln.Addr().String()
	if len(resources) == 0 {
		resources = stringList{issuer + "/mcp"}
	}
	as, err := authserver.New(authserver.Config{
		Issuer:          issuer,
		Resources:       resources,
		Scopes:          oauth.ParseScope(*scopes),
		AccessTokenTTL:  *accessTTL,
		RefreshTokenTTL: *refreshTTL,
		AutoApprove:     *autoApprove,
		Authenticate:    authserver.StaticUser(*subject),
		Logger:          logger,
	})
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	}
	md := as.Metadata()
	fmt.Fprintf(stdout, "issuer: %s\n", md.Issuer)
	for _, l := range []struct{ name, url string }{
		{"metadata", issuer + oauth.WellKnownAuthServer},
		{"authorize", md.AuthorizationEndpoint},
		{"token", md.TokenEndpoint},
		{"register", md.RegistrationEndpoint},
		{"revoke", md.RevocationEndpoint},
		{"introspect", md.IntrospectionEndpoint},
		{"jwks", md.JWKSURI},
	} {
		fmt.Fprintf(stdout, "%s: %s\n", l.name, l.url)
	}
	for _, r := range resources {
		fmt.Fprintf(stdout, "resource: %s\n", r)
	}
	if f, ok := stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}

	srv := &http.Server{
		Handler:           as,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("serving", "issuer", issuer, "auto_approve", *autoApprove)
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintf(stderr, "evergrant serve: shutdown: %v\n", err)
		return exitError
	}
	return exitOK
}
