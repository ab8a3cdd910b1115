package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/browser"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// openerKey is the context key of a replacement for the browser step of
// login; see withOpener.
type openerKey struct{}

// withOpener returns a context under which login hands the authorization
// URL to open instead of starting the system browser. It exists for the
// package's tests, which follow the authorization server's redirects
// headlessly; the key is unexported, so nothing outside this package can
// set it, and there is no flag or environment variable for it. The
// "open: <URL>" line is printed either way.
func withOpener(ctx context.Context, open func(authURL string) error) context.Context {
	return context.WithValue(ctx, openerKey{}, open)
}

// scopeList is a repeatable flag whose values may each hold several
// space-separated scopes.
type scopeList []string

func (s *scopeList) String() string { return strings.Join(*s, " ") }

func (s *scopeList) Set(v string) error {
	for _, sc := range oauth.ParseScope(v) {
		if !slices.Contains(*s, sc) {
			*s = append(*s, sc)
		}
	}
	return nil
}

func runLogin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("login", flag.ContinueOnError)
	var g globalFlags
	g.register(fs)
	noBrowser := fs.Bool("no-browser", false, "do not open a browser: print the authorization URL (a line \"open: <URL>\" on stderr) and wait")
	var scopes scopeList
	fs.Var(&scopes, "scope", "`scopes` to ask for in addition to the ones the server names; repeatable, or several separated by spaces")
	listen := fs.String("listen", "127.0.0.1:0", "loopback address of the listener that receives the redirect (port 0: a free port)")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the sign-in (0: until interrupted)")
	asJSON := fs.Bool("json", false, "print the result as a JSON object")
	newClient := fs.Bool("new-client", false, "register evergrant again at the authorization server instead of reusing the stored registration\n(for a server that forgot it, such as a restarted evergrant serve)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: evergrant login [flags] URL

Signs in to the MCP server at URL and keeps the grant under the config dir,
so that tools, call and bridge can use it and refresh it silently.

It discovers the server's authorization server, registers evergrant as a
client if needed, and opens the authorization page in your browser. The
browser sends the answer back to a listener on this machine (--listen), so
it must run here: with --no-browser, open the printed URL in a browser on
this machine (or forward the listener's port). Signing in again replaces
the grant.

The client registration is kept and reused. If the authorization page says
the application is not known (the server forgot the registration, as
evergrant serve does when restarted), run login again with --new-client.

Prints the server, issuer, scopes, access token expiry and whether a
refresh token is held; never the tokens.

Exit codes: 0 signed in, 1 the sign-in failed, 2 usage error.

Flags:
`)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 1, 1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL := pos[0]
	// The Transport runs the authorization on a goroutine of its own that
	// may outlive a login that gave up (Ctrl-C, --timeout): its writes go
	// through a lock and stop when runLogin returns.
	gw := &guardedWriter{w: stderr}
	defer gw.close()
	stderr = gw
	if err := checkServerURL(serverURL); err != nil {
		fmt.Fprintf(stderr, "evergrant login: %v\n", err)
		return exitUsage
	}
	if err := checkLoopbackAddr(*listen); err != nil {
		fmt.Fprintf(stderr, "evergrant login: --listen: %v\n", err)
		return exitUsage
	}
	logger, err := g.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant login: %v\n", err)
		return exitUsage
	}
	st, err := g.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant login: %v\n", err)
		return exitError
	}
	defer st.Close()
	auth, err := client.NewLoopbackAuthorizer(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant login: redirect listener: %v\n", err)
		return exitError
	}
	defer auth.Close()
	hook, _ := ctx.Value(openerKey{}).(func(string) error)
	auth.Open = func(authURL string) error {
		switch {
		case *noBrowser:
			fmt.Fprintf(stderr, "Open this URL in a browser on this machine to sign in:\n")
			fmt.Fprintf(stderr, "open: %s\n", authURL)
		case hook != nil:
			fmt.Fprintf(stderr, "open: %s\n", authURL)
			if err := hook(authURL); err != nil {
				return err
			}
		default:
			fmt.Fprintf(stderr, "Opening your browser to sign in; if it does not open, open this URL:\n")
			fmt.Fprintf(stderr, "open: %s\n", authURL)
			if err := browser.Open(authURL); err != nil {
				fmt.Fprintf(stderr, "evergrant login: could not start a browser (%v); open the URL above yourself\n", err)
			}
		}
		fmt.Fprintf(stderr, "waiting for the sign-in… (Ctrl-C to cancel)\n")
		return nil
	}

	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	var grants store.Store = st
	if *newClient {
		grants = freshClientStore{st}
	}
	tr := client.NewTransport(client.Config{Store: grants, Authorizer: boundAuthorizer{auth, ctx}, Logger: logger})
	if err := tr.Authorize(ctx, serverURL, scopes...); err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			fmt.Fprintf(stderr, "evergrant login: no sign-in within %v; run evergrant login again\n", *timeout)
		case ctx.Err() != nil:
			fmt.Fprintf(stderr, "evergrant login: cancelled\n")
		default:
			// Authorize wraps its failures in a NeedsReauthError; here the
			// cause is what matters.
			var ne *client.NeedsReauthError
			if errors.As(err, &ne) && ne.Err != nil {
				err = ne.Err
			}
			fmt.Fprintf(stderr, "evergrant login: sign-in failed: %v\n", err)
			if client.NoOAuthMetadata(context.WithoutCancel(ctx), nil, serverURL) {
				fmt.Fprintf(stderr, "evergrant login: %s publishes no OAuth metadata (neither RFC 9728 protected resource metadata nor RFC 8414 authorization server metadata): "+
					"if it needs no sign-in, use evergrant tools and call without logging in\n", serverURL)
			}
		}
		return exitError
	}
	gr, err := tr.Grant(ctx, serverURL)
	if err != nil || gr == nil {
		fmt.Fprintf(stderr, "evergrant login: signed in, but the grant cannot be read back: %v\n", err)
		return exitError
	}
	info := describeGrant(gr, time.Now())
	if gr.RefreshToken == "" {
		// docs/design.md#client-discovery: without a refresh token the
		// grant ends with its access token; say so once, here.
		note := "evergrant login: note: the authorization server issued no refresh token: you will be asked to sign in again when the access token expires"
		if !gr.Expiry.IsZero() {
			note += " in " + time.Until(gr.Expiry).Round(time.Second).String()
		}
		fmt.Fprintln(stderr, note)
	}
	if *asJSON {
		return writeJSON(stdout, stderr, "login", info)
	}
	fmt.Fprintf(stdout, "Signed in to %s\n", info.Server)
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "  issuer:\t%s\n", info.Issuer)
	fmt.Fprintf(w, "  scopes:\t%s\n", orDash(strings.Join(info.Scopes, " ")))
	fmt.Fprintf(w, "  access token:\t%s\n", info.expiresText(time.Now()))
	if info.HasRefreshToken {
		fmt.Fprintf(w, "  refresh token:\tyes (renewed silently)\n")
	} else {
		fmt.Fprintf(w, "  refresh token:\tno (sign in again when the access token expires)\n")
	}
	w.Flush()
	return exitOK
}

// boundAuthorizer ends the interactive step when stop is done. The
// Transport detaches an authorization from its caller's context (so that
// concurrent callers can share it); login has one caller, and when it
// gives up the listener should stop waiting too.
type boundAuthorizer struct {
	*client.LoopbackAuthorizer
	stop context.Context
}

func (b boundAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.stop, cancel)()
	return b.LoopbackAuthorizer.Authorize(ctx, authURL)
}

// guardedWriter serializes writes and drops those after close.
type guardedWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *guardedWriter) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// freshClientStore is a grant store that hides the stored client
// registrations, so that the client registers anew; the new registration
// is saved over the old one.
type freshClientStore struct{ store.Store }

func (freshClientStore) LoadRegistration(context.Context, string, string) (*store.Registration, error) {
	return nil, store.ErrNotFound
}

// checkLoopbackAddr checks that addr is host:port with a loopback IP.
func checkLoopbackAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback IP address (use 127.0.0.1:PORT or [::1]:PORT)", host)
	}
	return nil
}

// grantInfo is what login and status show of a grant: never a token or a
// secret.
type grantInfo struct {
	Server string   `json:"server"`
	Issuer string   `json:"issuer"`
	Scopes []string `json:"scopes"`
	// Expires is when the access token expires; absent when unknown or
	// when there is no access token.
	Expires         *time.Time `json:"expires,omitempty"`
	Expired         bool       `json:"expired"`
	HasAccessToken  bool       `json:"has_access_token"`
	HasRefreshToken bool       `json:"has_refresh_token"`
	// NeedsLogin: the grant holds no token at all (its refresh token was
	// refused); "evergrant login SERVER" signs in again.
	NeedsLogin bool       `json:"needs_login"`
	Updated    *time.Time `json:"updated,omitempty"`
}

func describeGrant(g *store.Grant, now time.Time) grantInfo {
	info := grantInfo{
		Server:          g.Key,
		Issuer:          g.Issuer,
		Scopes:          append([]string{}, g.Scopes...),
		HasAccessToken:  g.AccessToken != "",
		HasRefreshToken: g.RefreshToken != "",
	}
	info.NeedsLogin = !info.HasAccessToken && !info.HasRefreshToken
	if info.HasAccessToken && !g.Expiry.IsZero() {
		e := g.Expiry.UTC()
		info.Expires = &e
		info.Expired = !now.Before(e)
	}
	if !g.UpdatedAt.IsZero() {
		u := g.UpdatedAt.UTC()
		info.Updated = &u
	}
	return info
}

// expiresText describes the access token's expiry, relative and absolute.
func (info grantInfo) expiresText(now time.Time) string {
	switch {
	case info.NeedsLogin:
		return "none: sign in again"
	case !info.HasAccessToken:
		return "none yet: refreshed on next use"
	case info.Expires == nil:
		return "expiry unknown"
	}
	abs := info.Expires.Local().Format("2006-01-02 15:04 MST")
	d := info.Expires.Sub(now)
	if d <= 0 {
		return fmt.Sprintf("expired %s ago (%s)", shortDuration(-d), abs)
	}
	return fmt.Sprintf("in %s (%s)", shortDuration(d), abs)
}

// shortDuration formats d for people: 42s, 59m, 5h3m, 12d.
func shortDuration(d time.Duration) string {
	if d >= time.Minute {
		d = d.Round(time.Minute)
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int((d - time.Duration(h)*time.Hour).Minutes()); m > 0 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeJSON prints v as indented JSON on stdout.
func writeJSON(stdout, stderr io.Writer, cmd string, v any) int {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "evergrant %s: %v\n", cmd, err)
		return exitError
	}
	stdout.Write(append(data, '\n'))
	return exitOK
}

func runLogout(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("logout", flag.ContinueOnError)
	var g globalFlags
	g.register(fs)
	local := fs.Bool("local", false, "only delete the grant on disk; do not contact the authorization server")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: evergrant logout [flags] URL

Signs out of the MCP server at URL: when the authorization server offers
token revocation (RFC 7009), revokes the grant's refresh token there (which
ends the whole grant) and its access token, then deletes the grant on disk.
The client registration is kept for the next login.

With no grant for URL, says so and exits 0: logging out twice is fine.
If the revocation fails, the grant is still deleted, a warning says the
tokens may stay valid until they expire, and the exit code is 1.

Exit codes: 0 signed out (or nothing to do), 1 failure, 2 usage error.

Flags:
`)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 1, 1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL := pos[0]
	key, err := client.ServerKey(serverURL)
	if err == nil {
		err = checkServerURL(serverURL)
	}
	if err != nil {
		fmt.Fprintf(stderr, "evergrant logout: %v\n", err)
		return exitUsage
	}
	st, err := g.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant logout: %v\n", err)
		return exitError
	}
	defer st.Close()
	// Hold the grant's lock throughout, so that no other process (a
	// bridge) refreshes it, and saves new tokens, between the revocation
	// and the deletion.
	unlock, err := st.Lock(ctx, key)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant logout: lock the grant: %v\n", err)
		return exitError
	}
	defer unlock()
	gr, err := st.Load(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		fmt.Fprintf(stdout, "No grant for %s; nothing to do.\n", key)
		return exitOK
	case errors.Is(err, store.ErrCorrupt):
		fmt.Fprintf(stderr, "evergrant logout: warning: %v\n", err)
		if err := st.Delete(ctx, key); err != nil {
			fmt.Fprintf(stderr, "evergrant logout: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "Deleted the unreadable grant file for %s (nothing could be revoked).\n", key)
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "evergrant logout: %v\n", err)
		return exitError
	}

	code = exitOK
	hasTokens := gr.RefreshToken != "" || gr.AccessToken != ""
	switch {
	case !hasTokens:
		// Its refresh token was refused: nothing left to revoke.
	case *local:
		fmt.Fprintf(stdout, "Not contacting %s (--local): the tokens stay valid there until they expire.\n", gr.Issuer)
	case gr.RevocationEndpoint == "":
		fmt.Fprintf(stdout, "%s offers no token revocation: the tokens stay valid there until they expire.\n", gr.Issuer)
	default:
		revoked, err := client.Revoke(ctx, nil, gr)
		var names []string
		if revoked.RefreshToken {
			names = append(names, "refresh token")
		}
		if revoked.AccessToken {
			names = append(names, "access token")
		}
		if len(names) > 0 {
			fmt.Fprintf(stdout, "Revoked the %s at %s.\n", strings.Join(names, " and the "), gr.Issuer)
		}
		if err != nil {
			fmt.Fprintf(stderr, "evergrant logout: revocation failed: %v\nevergrant logout: warning: the tokens may stay valid at %s until they expire\n", err, gr.Issuer)
			code = exitError
		}
	}
	if err := st.Delete(ctx, key); err != nil {
		fmt.Fprintf(stderr, "evergrant logout: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "Deleted the grant for %s.\n", key)
	return code
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var g globalFlags
	g.register(fs)
	asJSON := fs.Bool("json", false, "print a JSON array with one object per grant")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: evergrant status [flags]

Lists the grants on disk: for each MCP server, the authorization server
(issuer), the scopes, when the access token expires and whether a refresh
token is held. Never prints a token or a secret.

A file in the store that cannot be read is reported with a warning on
stderr; the good grants are still listed.

Exit codes: 0 success, 1 failure, 2 usage error.

Flags:
`)
		fs.PrintDefaults()
	}
	if _, code, ok := parseArgs(fs, args, 0, 0, stdout, stderr); !ok {
		return code
	}
	st, err := g.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant status: %v\n", err)
		return exitError
	}
	defer st.Close()
	grants, err := st.List(ctx)
	if err != nil {
		// List joins one error per bad file and still returns the good
		// grants; a single error means the directory itself failed.
		multi, ok := err.(interface{ Unwrap() []error })
		if !ok {
			fmt.Fprintf(stderr, "evergrant status: %v\n", err)
			return exitError
		}
		for _, e := range multi.Unwrap() {
			fmt.Fprintf(stderr, "evergrant status: warning: %v\n", e)
		}
	}
	now := time.Now()
	infos := make([]grantInfo, 0, len(grants))
	for _, gr := range grants {
		infos = append(infos, describeGrant(gr, now))
	}
	if *asJSON {
		return writeJSON(stdout, stderr, "status", infos)
	}
	if len(infos) == 0 {
		fmt.Fprintf(stdout, "No grants in %s. Sign in with: evergrant login URL\n", st.where)
		return exitOK
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SERVER\tISSUER\tSCOPES\tEXPIRES\tREFRESH")
	for _, info := range infos {
		refresh := "no"
		if info.HasRefreshToken {
			refresh = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", info.Server, orDash(info.Issuer),
			orDash(strings.Join(info.Scopes, " ")), info.expiresText(now), refresh)
	}
	w.Flush()
	for _, info := range infos {
		if info.NeedsLogin {
			fmt.Fprintf(stderr, "%s: %s\n", info.Server, loginHint(info.Server, &g))
		}
	}
	return exitOK
}
