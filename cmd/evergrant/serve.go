package main

import (
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/authserver/pgstore"
	"github.com/evergrant/evergrant/authserver/sqlitestore"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/oauth"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8400", "address to listen on; 127.0.0.1:0 picks a free port; a non-loopback address needs --public-url")
	publicURL := fs.String("public-url", "", "the URL clients reach serve at, when a reverse proxy or load balancer stands in front of it (https, or http on a loopback host; an origin, no path): the issuer and the base of every URL serve publishes")
	autoApprove := fs.Bool("auto-approve", false, "approve authorization requests without the consent page when the redirect URI is on loopback (native apps, the CLI) or the client is pre-registered; other clients still see it")
	accessTTL := fs.Duration("access-token-ttl", authserver.DefaultAccessTokenTTL, "access token lifetime")
	refreshTTL := fs.Duration("refresh-token-ttl", authserver.DefaultRefreshTokenTTL, "refresh token lifetime")
	maxAge := fs.Duration("upstream-token-max-age", 0, "make the fake upstream API reject tokens older than this (0: no limit), to provoke the tool's expiry signal")
	jsonResp := fs.Bool("json-response", false, "make the MCP server answer POSTs with JSON instead of SSE")
	subject := fs.String("user", "demo-user", "the user every authorization is granted for")
	logLevel := fs.String("log-level", "info", "log level on stderr: debug, info, warn or error")
	dataDir := fs.String("data-dir", "", "directory of the authorization server's state (clients, grants, tokens, signing keys), kept across restarts; default $EVERGRANT_DATA_DIR, else $XDG_STATE_HOME/evergrant/serve (~/.local/state/evergrant/serve)")
	memory := fs.Bool("memory", false, "keep the authorization server's state in memory only: a restart forgets every client and sign-in")
	databaseURL := fs.String("database-url", os.Getenv("EVERGRANT_DATABASE_URL"), "a postgres:// URL: keep the authorization server's state in PostgreSQL, shared by every serve on that database (replicas); needs --secret-key-file or EVERGRANT_SECRET_KEY (env EVERGRANT_DATABASE_URL)")
	secretKeyFile := fs.String("secret-key-file", "", "file holding the secret key that encrypts the signing keys in the --database-url database: 32 random bytes, raw or in base64 (openssl rand -base64 32); default: env EVERGRANT_SECRET_KEY, in base64")
	var extra stringList
	fs.Var(&extra, "resource", "another MCP server URL the authorization server issues tokens for; repeatable")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: evergrant serve [flags]\n\nRuns, on one listener until interrupted, the embedded OAuth authorization\nserver, an example MCP server protected by it (tools whoami and upstream_search),\nand a fake upstream API the tools call with the caller's token.\nPrints one line per endpoint on stdout, starting with \"issuer: <URL>\",\nthen \"data: <file>\" (\"data: memory\" with --memory, \"data: postgres://user@host/db\"\nwith --database-url), and last\n\"listen: <address>\".\n\nFlags:\n")
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

	var public string
	if *publicURL != "" {
		var err error
		if public, err = checkPublicURL(*publicURL); err != nil {
			fmt.Fprintf(stderr, "evergrant serve: --public-url: %v\n", err)
			return exitUsage
		}
	} else if host, _, err := net.SplitHostPort(*listen); err == nil && !loopbackListenHost(host) {
		fmt.Fprintf(stderr, "evergrant serve: --listen %s is not a loopback address; set --public-url to the URL clients reach it at\n", *listen)
		return exitUsage
	}
	if *memory && *dataDir != "" {
		fmt.Fprintf(stderr, "evergrant serve: --data-dir and --memory exclude each other\n")
		return exitUsage
	}
	if *databaseURL != "" && (*memory || *dataDir != "") {
		fmt.Fprintf(stderr, "evergrant serve: --database-url excludes --data-dir and --memory\n")
		return exitUsage
	}
	data := "memory"
	var asStore authserver.Store
	if *databaseURL != "" {
		u, err := url.Parse(*databaseURL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			fmt.Fprintf(stderr, "evergrant serve: --database-url: want a postgres:// URL\n")
			return exitUsage
		}
		key, err := loadSecretKey(*secretKeyFile, os.Getenv("EVERGRANT_SECRET_KEY"))
		if err != nil {
			fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
			return exitUsage
		}
		db, err := pgstore.Open(ctx, *databaseURL, pgstore.Options{SecretKey: key})
		if err != nil {
			fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
			return exitError
		}
		defer db.Close()
		data = databaseName(u)
		asStore = db
	} else if !*memory {
		dir := *dataDir
		if dir == "" {
			var err error
			if dir, err = defaultDataDir(); err != nil {
				fmt.Fprintf(stderr, "evergrant serve: %v; set --data-dir or use --memory\n", err)
				return exitError
			}
		}
		data = filepath.Join(dir, "authserver.db")
		db, err := sqlitestore.Open(ctx, data)
		if err != nil {
			fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
			return exitError
		}
		defer db.Close()
		asStore = db
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	}
	internal := internalURL(ln.Addr(), *listen)
	if public == "" {
		if !oauth.IsLoopbackHost(hostOf(ln.Addr())) {
			ln.Close()
			fmt.Fprintf(stderr, "evergrant serve: --listen %s is not a loopback address; set --public-url to the URL clients reach it at\n", *listen)
			return exitUsage
		}
		public = internal
	}
	base := public
	st, err := stack.New(stack.Config{
		BaseURL: base, InternalURL: internal, AutoApprove: *autoApprove, Subject: *subject,
		AccessTokenTTL: *accessTTL, RefreshTokenTTL: *refreshTTL, UpstreamTokenMaxAge: *maxAge,
		JSONResponse: *jsonResp, Logger: logger, ExtraResources: extra,
		AuthServer: func(c *authserver.Config) { c.Store = asStore }, // nil: a MemoryStore
	})
	if err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	}
	md := st.AS.Metadata()
	for _, l := range []struct{ name, url string }{
		{"issuer", md.Issuer},
		{"data", data},
		{"mcp", st.MCPURL},
		{"upstream", st.UpstreamURL},
		{"resource_metadata", st.MetadataURL},
		{"metadata", base + oauth.WellKnownAuthServer},
		{"authorize", md.AuthorizationEndpoint},
		{"token", md.TokenEndpoint},
		{"register", md.RegistrationEndpoint},
		{"revoke", md.RevocationEndpoint},
		{"introspect", md.IntrospectionEndpoint},
		{"jwks", md.JWKSURI},
		{"listen", ln.Addr().String()},
	} {
		fmt.Fprintf(stdout, "%s: %s\n", l.name, l.url)
	}

	srv := &http.Server{
		Handler:           st.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	// Expired codes, tokens and grants are deleted every minute, whether
	// requests come or not, until shutdown.
	mctx, stopMaintain := context.WithCancel(context.Background())
	maintained := make(chan struct{})
	go func() { st.AS.Maintain(mctx, time.Minute); close(maintained) }()
	defer func() { stopMaintain(); <-maintained }()
	logger.Info("serving", "issuer", base, "listen", ln.Addr().String(), "data", data, "mcp", st.MCPURL, "auto_approve", *autoApprove)
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "evergrant serve: %v\n", err)
		return exitError
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Streams (the MCP GET stream) may outlive the grace period.
		srv.Close()
	}
	return exitOK
}

// checkPublicURL validates --public-url and returns it without a trailing
// slash: an absolute https URL, or http on a loopback host, with a host,
// and no user, path, query or fragment (serve mounts its endpoints at the
// root, so the URL must be an origin).
func checkPublicURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "", err
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("%q: want an https URL", raw)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("%q has no host", raw)
	case u.Scheme == "http" && !oauth.IsLoopbackHost(u.Hostname()):
		return "", fmt.Errorf("%q: http only on a loopback host; use https", raw)
	case u.User != nil:
		return "", fmt.Errorf("%q: no user information allowed", raw)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return "", fmt.Errorf("%q: no query or fragment allowed", raw)
	case u.Path != "" && u.Path != "/":
		return "", fmt.Errorf("%q: no path allowed; serve's endpoints are at the root", raw)
	case u.Opaque != "":
		return "", fmt.Errorf("%q is not a URL with a host", raw)
	}
	return u.Scheme + "://" + u.Host, nil
}

// loopbackListenHost reports whether a --listen host may serve without
// --public-url: a loopback IP or localhost, or a name (checked once
// resolved). An empty host or an unspecified address listens everywhere.
func loopbackListenHost(host string) bool {
	if host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return true
}

// hostOf returns the host of a listener's address.
func hostOf(a net.Addr) string {
	host, _, _ := net.SplitHostPort(a.String())
	return host
}

// internalURL returns the http URL at which serve reaches its own listener
// at a, asked for as listen: on loopback when it listens on every address
// (IPv6 loopback only when listen named an IPv6 address; Go reports a
// dual-stack listener on 0.0.0.0 as [::]).
func internalURL(a net.Addr, listen string) string {
	host, port, _ := net.SplitHostPort(a.String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if h, _, _ := net.SplitHostPort(listen); strings.Contains(h, ":") {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// loadSecretKey returns the secret key of --database-url: the contents of
// file if set (32 raw bytes, or their base64), else env, in base64.
func loadSecretKey(file, env string) ([]byte, error) {
	const how = "32 random bytes, raw or in base64, such as the output of: openssl rand -base64 32"
	var text []byte
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--secret-key-file: %w", err)
		}
		if len(b) == pgstore.SecretKeySize {
			return b, nil
		}
		text = b
	case env != "":
		text = []byte(env)
	default:
		return nil, fmt.Errorf("--database-url needs a secret key to encrypt the signing keys in the database: set --secret-key-file FILE or EVERGRANT_SECRET_KEY (%s), the same on every serve that shares the database", how)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text)))
	if err != nil || len(key) != pgstore.SecretKeySize {
		// Not the text itself: it is a secret, even if malformed.
		return nil, fmt.Errorf("the secret key is not %s", how)
	}
	return key, nil
}

// databaseName is u as serve prints it: scheme, user, host and database,
// without the password or the query (which may hold one).
func databaseName(u *url.URL) string {
	c := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.User != nil {
		c.User = url.User(u.User.Username())
	}
	return c.String()
}

// defaultDataDir returns the directory of serve's state when --data-dir is
// not given: $EVERGRANT_DATA_DIR, else evergrant/serve under
// $XDG_STATE_HOME or, when that is unset or relative, ~/.local/state.
func defaultDataDir() (string, error) {
	if d := os.Getenv("EVERGRANT_DATA_DIR"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "evergrant", "serve"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no data directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "evergrant", "serve"), nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
