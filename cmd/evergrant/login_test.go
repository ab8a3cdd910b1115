package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/store"
)

// cliEnv is the `evergrant serve` stack on httptest (auto-approve) and a
// temporary config dir (fixture.Serve), for running the commands
// in-process; Restart stands for a restarted `evergrant serve` that forgot
// its clients.
//
// Clock is the stack's clock, which the tests move forward to expire tokens
// at the authorization server and the MCP server without waiting.
type cliEnv struct {
	*fixture.Serve
	t     *testing.T
	open  func(string) error
	calls atomic.Int32 // authorization URLs opened
}

func newCLIEnv(t *testing.T, cfg stack.Config) *cliEnv {
	t.Helper()
	e := &cliEnv{Serve: fixture.NewServe(t, cfg), t: t}
	e.open = e.followRedirects
	return e
}

// followRedirects is the browser of the tests: it follows the
// authorization server's redirects (auto-approve) to login's loopback
// listener, which answers 200.
func (e *cliEnv) followRedirects(authURL string) error {
	e.calls.Add(1)
	resp, err := http.Get(authURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("Signed in")) {
		return fmt.Errorf("the sign-in ended at %s with HTTP %d", resp.Request.URL, resp.StatusCode)
	}
	return nil
}

// run runs one command with --config-dir and the headless browser, and
// returns its exit code, stdout and stderr.
func (e *cliEnv) run(cmd string, args ...string) (int, string, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = withOpener(ctx, e.open)
	var out, errb bytes.Buffer
	code := run(ctx, append([]string{cmd, "--config-dir", e.Dir}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustRun runs a command that must exit with want.
func (e *cliEnv) mustRun(want int, cmd string, args ...string) (string, string) {
	e.t.Helper()
	code, out, errs := e.run(cmd, args...)
	if code != want {
		e.t.Fatalf("evergrant %s %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", cmd, args, code, want, out, errs)
	}
	return out, errs
}

// grant returns the stored grant for the MCP server, or nil.
func (e *cliEnv) grant() *store.Grant {
	e.t.Helper()
	st, err := store.OpenFile(e.Dir)
	if err != nil {
		e.t.Fatal(err)
	}
	g, err := st.Load(context.Background(), e.URL)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return g
}

// noSecrets fails if any secret of g appears in the outputs.
func noSecrets(t *testing.T, g *store.Grant, outputs ...string) {
	t.Helper()
	for _, s := range []struct{ name, v string }{
		{"access token", g.AccessToken}, {"refresh token", g.RefreshToken}, {"client secret", g.ClientSecret},
	} {
		if s.v == "" {
			continue
		}
		for _, o := range outputs {
			if strings.Contains(o, s.v) {
				t.Fatalf("the %s appears in the output:\n%s", s.name, o)
			}
		}
	}
}

// checkPerms checks the store's 0700 directories and 0600 files.
func checkPerms(t *testing.T, dir string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		return
	}
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 6 { // dir, 3 subdirs, a grant, a registration
		t.Errorf("only %d entries under %s", n, dir)
	}
}

func TestLogin_HeadlessThenStatus(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	out, errs := e.mustRun(0, "login", e.URL)
	for _, want := range []string{"Signed in to " + e.URL, "issuer:", e.Stack.Issuer, "mcp:tools", "access token:   in 1h (", "refresh token:  yes"} {
		if !strings.Contains(out, want) {
			t.Errorf("login output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains("\n"+errs, "\nopen: "+e.Stack.Issuer+"/authorize?") {
		t.Errorf("login stderr lacks the open: line:\n%s", errs)
	}
	g := e.grant()
	if g == nil || g.AccessToken == "" || g.RefreshToken == "" || g.RevocationEndpoint == "" {
		t.Fatalf("stored grant %+v", g != nil)
	}
	checkPerms(t, e.Dir)

	jout, jerrs := e.mustRun(0, "login", "--json", e.URL, "--scope", "mcp:tools")
	var li grantInfo
	if err := json.Unmarshal([]byte(jout), &li); err != nil {
		t.Fatalf("login --json: %v\n%s", err, jout)
	}
	if li.Server != e.URL || li.Issuer != e.Stack.Issuer || !li.HasRefreshToken || !li.HasAccessToken || li.Expires == nil || li.Expired {
		t.Errorf("login --json = %+v", li)
	}
	g2 := e.grant()
	if g2.AccessToken == g.AccessToken {
		t.Errorf("signing in again kept the old access token")
	}

	sout, serrs := e.mustRun(0, "status")
	lines := strings.Split(strings.TrimSpace(sout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "SERVER") || !strings.Contains(lines[0], "REFRESH") {
		t.Fatalf("status table:\n%s", sout)
	}
	for _, want := range []string{e.URL, e.Stack.Issuer, "mcp:tools", "in 1h (", "yes"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("status row lacks %q: %s", want, lines[1])
		}
	}
	if serrs != "" {
		t.Errorf("status stderr: %s", serrs)
	}
	jsout, _ := e.mustRun(0, "status", "--json")
	var infos []map[string]any
	if err := json.Unmarshal([]byte(jsout), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("status --json: %v\n%s", err, jsout)
	}
	for _, k := range []string{"server", "issuer", "scopes", "expires", "has_refresh_token"} {
		if _, ok := infos[0][k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, jsout)
		}
	}
	noSecrets(t, g, out, errs, jout, jerrs, sout, serrs, jsout)
	noSecrets(t, g2, jout, jerrs, sout, serrs, jsout)
	checkPerms(t, e.Dir)
}

// TestLogin_NoRefreshTokenNote: when the authorization server issues no
// refresh token, login says, in one line on stderr, that the user will
// sign in again when the access token expires, and when
// (docs/design.md#client-discovery).
func TestLogin_NoRefreshTokenNote(t *testing.T) {
	e := newCLIEnv(t, stack.Config{Faults: true})
	e.Stack.Faults.WithholdRefreshTokens(true)
	out, errs := e.mustRun(0, "login", e.URL)
	if !strings.Contains(out, "refresh token:  no") {
		t.Errorf("login output does not say there is no refresh token:\n%s", out)
	}
	const note = "evergrant login: note: the authorization server issued no refresh token: you will be asked to sign in again when the access token expires in "
	if n := strings.Count(errs, note); n != 1 {
		t.Errorf("login stderr has the note %d times, want once:\n%s", n, errs)
	}
	if g := e.grant(); g == nil || g.RefreshToken != "" {
		t.Fatalf("stored grant: want one without a refresh token")
	}
	// With a refresh token, no note.
	e.Stack.Faults.WithholdRefreshTokens(false)
	_, errs = e.mustRun(0, "login", e.URL)
	if strings.Contains(errs, "issued no refresh token") {
		t.Errorf("login with a refresh token printed the note:\n%s", errs)
	}
}

// --no-browser prints exactly one "open: <URL>" line on stderr and waits;
// opening that URL (here with a plain HTTP client) completes the sign-in.
// This runs without the test hook, as a person or a browser test would.
func TestLogin_NoBrowserPrintsURLAndWaits(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errw := &syncLines{lines: make(chan string, 100)}
	var out bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"login", "--config-dir", e.Dir, "--no-browser", e.URL}, &out, errw)
	}()
	var authURL string
	var seen []string
	for authURL == "" {
		select {
		case l := <-errw.lines:
			seen = append(seen, l)
			if u, ok := strings.CutPrefix(l, "open: "); ok {
				authURL = u
			}
		case code := <-done:
			t.Fatalf("login exited %d before printing the URL: %q", code, seen)
		case <-ctx.Done():
			t.Fatalf("no open: line; stderr %q", seen)
		}
	}
	if err := e.followRedirects(authURL); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("login exit %d: %s", code, errw.String())
		}
	case <-ctx.Done():
		t.Fatal("login did not finish after the redirect")
	}
	all := errw.String()
	if n := strings.Count("\n"+all, "\nopen: "); n != 1 {
		t.Errorf("%d open: lines, want 1:\n%s", n, all)
	}
	if !strings.Contains(all, "waiting for the sign-in") {
		t.Errorf("stderr lacks the waiting line:\n%s", all)
	}
	if !strings.Contains(out.String(), "Signed in to "+e.URL) {
		t.Errorf("stdout: %s", out.String())
	}
	if g := e.grant(); g == nil || g.RefreshToken == "" {
		t.Fatal("no grant stored")
	}
}

// syncLines is an io.Writer that hands complete lines to a channel and
// keeps everything, safe for concurrent use.
type syncLines struct {
	mu    sync.Mutex
	all   bytes.Buffer
	part  bytes.Buffer
	lines chan string
}

func (w *syncLines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.part.Write(p)
	for {
		line, err := w.part.ReadString('\n')
		if err != nil {
			w.part.WriteString(line)
			return len(p), nil
		}
		w.lines <- strings.TrimSuffix(line, "\n")
	}
}

func (w *syncLines) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

func TestLogin_Failures(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no URL", nil, exitUsage, "missing arguments"},
		{"two URLs", []string{e.URL, e.URL}, exitUsage, "unexpected argument"},
		{"not http", []string{"ftp://example.com/mcp"}, exitUsage, "http:// or https://"},
		{"plain http remote", []string{"http://mcp.example.com/mcp"}, exitUsage, "loopback"},
		{"listen not loopback", []string{"--listen", "0.0.0.0:0", e.URL}, exitUsage, "not a loopback"},
		{"bad log level", []string{"--log-level", "loud", e.URL}, exitUsage, "--log-level"},
		{"unknown flag", []string{"--browser", e.URL}, exitUsage, "flag provided but not defined"},
		{"no server", []string{"http://127.0.0.1:1/mcp"}, exitError, "sign-in failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := e.run("login", c.args...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Errorf("exit %d, want %d; stderr (want %q):\n%s\nstdout:\n%s", code, c.code, c.want, errs, out)
			}
		})
	}
	if e.calls.Load() != 0 {
		t.Errorf("a failed login opened %d authorization URLs", e.calls.Load())
	}
}

func TestLogin_TimeoutAndDeniedBrowser(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	e.open = func(string) error { return nil } // nobody ever signs in
	code, _, errs := e.run("login", "--timeout", "300ms", e.URL)
	if code != exitError || !strings.Contains(errs, "no sign-in within 300ms") {
		t.Errorf("exit %d, stderr:\n%s", code, errs)
	}
	e.open = func(string) error { return errors.New("no display") }
	code, _, errs = e.run("login", e.URL)
	if code != exitError || !strings.Contains(errs, "sign-in failed") || !strings.Contains(errs, "no display") {
		t.Errorf("exit %d, stderr:\n%s", code, errs)
	}
	if e.grant() != nil {
		t.Error("a failed login stored a grant")
	}
}

// A restarted `evergrant serve` forgets its clients. Before anything
// notices, a plain login fails (the authorization server shows an error
// page instead of redirecting) and login --new-client works. Once a call
// has met the refusal (invalid_client), the stale registration is
// forgotten and a plain login works.
func TestLogin_NewClientAfterServerForgotRegistration(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	e.mustRun(0, "login", e.URL)
	e.Restart()
	_, errs := e.mustRun(exitError, "login", e.URL)
	if !strings.Contains(errs, "sign-in failed") {
		t.Errorf("login with a forgotten registration:\n%s", errs)
	}
	e.mustRun(0, "login", "--new-client", e.URL)
	out, _ := e.mustRun(0, "call", e.URL, "whoami")
	if !strings.Contains(out, "demo-user") {
		t.Errorf("whoami after --new-client: %s", out)
	}

	e.Restart()
	e.Clock.Advance(2 * time.Hour) // the old access token is also rejected for age
	_, errs = e.mustRun(exitNeedsReauth, "call", e.URL, "whoami")
	if !strings.Contains(errs, "\nsign in again with: evergrant login --new-client --config-dir "+e.Dir+" "+e.URL+"\n") {
		t.Errorf("call stderr lacks the --new-client hint:\n%s", errs)
	}
	// The refusal made the client forget the registration: a plain login
	// registers again and works.
	e.mustRun(0, "login", e.URL)
	if out, _ := e.mustRun(0, "call", e.URL, "whoami"); !strings.Contains(out, "demo-user") {
		t.Errorf("whoami after the new login: %s", out)
	}
}

func TestLogout_RevokesAndDeletes(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	e.mustRun(0, "login", e.URL)
	g := e.grant()
	out, errs := e.mustRun(0, "logout", e.URL)
	if !strings.Contains(out, "Revoked the refresh token and the access token at "+e.Stack.Issuer) ||
		!strings.Contains(out, "Deleted the grant for "+e.URL) {
		t.Errorf("logout output:\n%s\nstderr:\n%s", out, errs)
	}
	noSecrets(t, g, out, errs)
	if e.grant() != nil {
		t.Fatal("the grant is still stored")
	}
	// The authorization server no longer accepts the refresh token.
	resp, err := http.PostForm(e.Stack.Issuer+"/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken}, "client_id": {g.ClientID},
	})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte("invalid_grant")) {
		t.Errorf("refresh after logout: %d %s", resp.StatusCode, body)
	}
	// Idempotent.
	out, _ = e.mustRun(0, "logout", e.URL)
	if !strings.Contains(out, "No grant for "+e.URL) {
		t.Errorf("second logout: %s", out)
	}
	// --local does not contact the authorization server.
	e.mustRun(0, "login", e.URL)
	g = e.grant()
	out, _ = e.mustRun(0, "logout", "--local", e.URL)
	if !strings.Contains(out, "--local") || strings.Contains(out, "Revoked") || e.grant() != nil {
		t.Errorf("logout --local:\n%s", out)
	}
	resp, err = http.PostForm(e.Stack.Issuer+"/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken}, "client_id": {g.ClientID},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("refresh after logout --local: %d, want 200", resp.StatusCode)
	}
}

// A grant whose refresh token was refused holds no token: logout just
// deletes it.
func TestLogout_GrantWithoutTokens(t *testing.T) {
	dir := t.TempDir()
	st, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := "https://mcp.example.com/mcp"
	if err := st.Save(context.Background(), &store.Grant{Key: key, Issuer: "https://as.example.com", ClientID: "c",
		RevocationEndpoint: "https://as.invalid/revoke", TokenEndpoint: "https://as.invalid/token"}); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"logout", "--config-dir", dir, key}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if strings.Contains(out.String(), "Revoked") || !strings.Contains(out.String(), "Deleted the grant") {
		t.Errorf("output: %s", out.String())
	}
}

// The revocation request authenticates like the grant's client; when the
// authorization server fails, the grant is deleted all the same and the
// exit code is 1.
func TestLogout_RevocationRequestsAndFailure(t *testing.T) {
	var mu sync.Mutex
	var got []url.Values
	var auths []string
	fail := false
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.PostForm)
		id, secret, _ := r.BasicAuth()
		auths = append(auths, id+":"+secret)
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.PostForm.Get("token_type_hint") == "access_token" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"unsupported_token_type"}`)
			return
		}
	}))
	defer as.Close()
	dir := t.TempDir()
	st, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := "https://mcp.example.com/mcp"
	save := func() {
		t.Helper()
		if err := st.Save(context.Background(), &store.Grant{Key: key, Issuer: as.URL, ClientID: "id:1", ClientSecret: "s&cret",
			AuthMethod: "client_secret_basic", RevocationEndpoint: as.URL + "/revoke", TokenEndpoint: as.URL + "/token",
			AccessToken: "AT-secret", RefreshToken: "RT-secret", Expiry: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	save()
	logout := func() (int, string, string) {
		var out, errs bytes.Buffer
		code := run(context.Background(), []string{"logout", "--config-dir", dir, key}, &out, &errs)
		return code, out.String(), errs.String()
	}
	code, out, errs := logout()
	if code != 0 || !strings.Contains(out, "Revoked the refresh token at "+as.URL) {
		t.Fatalf("exit %d:\n%s\n%s", code, out, errs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].Get("token") != "RT-secret" || got[0].Get("token_type_hint") != "refresh_token" ||
		got[1].Get("token") != "AT-secret" || got[0].Get("client_secret") != "" {
		t.Errorf("revocation requests %v", got)
	}
	if auths[0] != "id%3A1:s%26cret" {
		t.Errorf("basic auth %q, want the form-urlencoded id and secret", auths[0])
	}
	noSecrets(t, &store.Grant{AccessToken: "AT-secret", RefreshToken: "RT-secret", ClientSecret: "s&cret"}, out, errs)

	save()
	fail = true
	mu.Unlock()
	code, out, errs = logout()
	mu.Lock()
	if code != exitError || !strings.Contains(errs, "revocation failed") || !strings.Contains(errs, "may stay valid") ||
		!strings.Contains(out, "Deleted the grant") {
		t.Errorf("exit %d:\n%s\n%s", code, out, errs)
	}
	if _, err := st.Load(context.Background(), key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("grant after a failed revocation: %v", err)
	}
}

func TestStatus_CorruptFileWarnsAndListsTheGoodGrant(t *testing.T) {
	e := newCLIEnv(t, stack.Config{})
	e.mustRun(0, "login", e.URL)
	bad := filepath.Join(e.Dir, "grants", "0123456789abcdef0123456789abcdef.json")
	if err := os.WriteFile(bad, []byte(`{"access_token": "not-json`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs := e.mustRun(0, "status")
	if !strings.Contains(out, e.URL) {
		t.Errorf("status does not list the good grant:\n%s", out)
	}
	if !strings.Contains(errs, "warning:") || !strings.Contains(errs, bad) {
		t.Errorf("status does not warn about %s:\n%s", bad, errs)
	}
	if strings.Contains(errs, "not-json") {
		t.Errorf("the warning quotes the file's content:\n%s", errs)
	}
	jout, jerrs := e.mustRun(0, "status", "--json")
	var infos []grantInfo
	if err := json.Unmarshal([]byte(jout), &infos); err != nil || len(infos) != 1 || infos[0].Server != e.URL {
		t.Errorf("status --json with a corrupt file: %v\n%s", err, jout)
	}
	if !strings.Contains(jerrs, bad) {
		t.Errorf("status --json does not warn:\n%s", jerrs)
	}
	noSecrets(t, e.grant(), out, errs, jout, jerrs)
}

func TestStatus_EmptyAndSignedOut(t *testing.T) {
	dir := t.TempDir()
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"status", "--config-dir", dir}, &out, &errs); code != 0 || !strings.Contains(out.String(), "No grants") {
		t.Fatalf("exit %d: %s%s", code, out.String(), errs.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"status", "--config-dir", dir, "--json"}, &out, &errs); code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("status --json with no grants: exit %d: %q", code, out.String())
	}
	st, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := "https://mcp.example.com/mcp"
	if err := st.Save(context.Background(), &store.Grant{Key: key, Issuer: "https://as.example.com", ClientID: "c", Scopes: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errs.Reset()
	if code := run(context.Background(), []string{"status", "--config-dir", dir}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if !strings.Contains(out.String(), "none: sign in again") || !strings.Contains(out.String(), "a b") {
		t.Errorf("status of a signed-out grant:\n%s", out.String())
	}
	if want := "sign in again with: evergrant login --config-dir " + dir + " " + key; !strings.Contains(errs.String(), want) {
		t.Errorf("no sign-in hint %q:\n%s", want, errs.String())
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"login", "logout", "status", "tools", "call"} {
		for _, flag := range []string{"--help", "-h"} {
			var out, errs bytes.Buffer
			code := run(context.Background(), []string{cmd, flag}, &out, &errs)
			if code != 0 || !strings.HasPrefix(out.String(), "Usage: evergrant "+cmd) || errs.Len() != 0 {
				t.Errorf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", cmd, flag, code, out.String(), errs.String())
			}
			if !strings.Contains(out.String(), "Exit codes:") || !strings.Contains(out.String(), "-config-dir") {
				t.Errorf("%s --help lacks exit codes or flags:\n%s", cmd, out.String())
			}
		}
	}
}

func TestExpiresText(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { x := now.Add(d); return &x }
	for _, c := range []struct {
		info grantInfo
		want string
	}{
		{grantInfo{HasAccessToken: true, Expires: at(59*time.Minute + 50*time.Second)}, "in 1h ("},
		{grantInfo{HasAccessToken: true, Expires: at(90 * time.Minute)}, "in 1h30m ("},
		{grantInfo{HasAccessToken: true, Expires: at(42 * time.Second)}, "in 42s ("},
		{grantInfo{HasAccessToken: true, Expires: at(-3 * time.Hour)}, "expired 3h ago ("},
		{grantInfo{HasAccessToken: true, Expires: at(72 * time.Hour)}, "in 3d ("},
		{grantInfo{HasAccessToken: true}, "expiry unknown"},
		{grantInfo{HasRefreshToken: true}, "none yet: refreshed on next use"},
		{grantInfo{NeedsLogin: true}, "none: sign in again"},
	} {
		if got := c.info.expiresText(now); !strings.HasPrefix(got, c.want) {
			t.Errorf("expiresText = %q, want %q…", got, c.want)
		}
	}
}

func TestScopeFlag(t *testing.T) {
	var s scopeList
	for _, v := range []string{"a b", "c", "  b  d "} {
		s.Set(v)
	}
	if got := s.String(); got != "a b c d" {
		t.Errorf("scopes %q", got)
	}
}

func TestReportSessionError_Hints(t *testing.T) {
	u := "https://mcp.example.com/mcp"
	for _, c := range []struct {
		err       error
		configDir string
		code      int
		want      string
	}{
		{&client.NeedsReauthError{Server: u, Reason: client.ReasonRefreshRejected, ErrorCode: "invalid_grant"}, "", exitNeedsReauth, "\nsign in again with: evergrant login " + u + "\n"},
		{&client.NeedsReauthError{Server: u, Reason: client.ReasonRefreshRejected, ErrorCode: "invalid_client"}, "", exitNeedsReauth, "\nsign in again with: evergrant login --new-client " + u + "\n"},
		{fmt.Errorf("call: %w", &client.InsufficientScopeError{Server: u, Required: []string{"b"}, Granted: []string{"a"}}), "", exitNeedsReauth, "\nsign in again with: evergrant login --scope 'a b' " + u + "\n"},
		// The hint repeats --config-dir, or following it would sign in
		// to another store and the command would keep failing.
		{&client.NeedsReauthError{Server: u, Reason: client.ReasonRefreshRejected, ErrorCode: "invalid_grant"}, "/tmp/my grants", exitNeedsReauth, "\nsign in again with: evergrant login --config-dir '/tmp/my grants' " + u + "\n"},
		{&client.NeedsReauthError{Server: u, Reason: client.ReasonRefreshRejected, ErrorCode: "invalid_client"}, "/tmp/g", exitNeedsReauth, "\nsign in again with: evergrant login --new-client --config-dir /tmp/g " + u + "\n"},
		{&client.InsufficientScopeError{Server: u, Required: []string{"b"}, Granted: []string{"a"}}, "/tmp/g", exitNeedsReauth, "\nsign in again with: evergrant login --scope 'a b' --config-dir /tmp/g " + u + "\n"},
		{errors.New("boom"), "", exitError, "evergrant call: boom\n"},
	} {
		var errs bytes.Buffer
		if code := reportSessionError(&errs, "call", u, &globalFlags{configDir: c.configDir}, c.err); code != c.code || !strings.Contains(errs.String(), c.want) {
			t.Errorf("%v (config dir %q): exit %d, stderr %q; want %d, %q", c.err, c.configDir, code, errs.String(), c.code, c.want)
		}
	}
}

// TestHintFlags_Store: a sign-in hint repeats --store, so that following
// it signs in to the same store, but never with the URL's password; with
// --store, --config-dir (unused then) is not repeated.
func TestHintFlags_Store(t *testing.T) {
	const u = "https://a.example/mcp"
	for _, c := range []struct {
		g    globalFlags
		want string
	}{
		{globalFlags{storeURL: "postgres://db.example/grants"}, "evergrant login --store postgres://db.example/grants " + u},
		{globalFlags{storeURL: "postgres://agent:s3cr%21t@db.example:5432/grants?sslmode=require", configDir: "/tmp/x"},
			"evergrant login --store 'postgres://agent@db.example:5432/grants?sslmode=require' " + u},
	} {
		got := loginHint(u, &c.g)
		if !strings.HasSuffix(got, c.want) {
			t.Errorf("loginHint with --store %q = %q, want it to end %q", c.g.storeURL, got, c.want)
		}
		if strings.Contains(got, "s3cr") {
			t.Errorf("the hint %q holds the store's password", got)
		}
	}
}

// login against a server that does not use OAuth says so, instead of
// leaving the user with the 2025-03-26 fallback's "registration answered
// HTTP 404".
func TestLogin_ServerWithoutOAuth(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "open", Version: "1"}, nil)
	mux := http.NewServeMux()
	mux.Handle("/mcp", mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	hs := httptest.NewServer(mux)
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errs bytes.Buffer
	code := run(ctx, []string{"login", "--config-dir", t.TempDir(), "--no-browser", "--timeout", "10s", hs.URL + "/mcp"}, &out, &errs)
	if code != exitError || !strings.Contains(errs.String(), "publishes no OAuth metadata") {
		t.Errorf("exit %d, stderr:\n%s", code, errs.String())
	}
}
