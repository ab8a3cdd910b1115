package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/internal/webdriver"
)

// TestBrowser_LoginApproveStatus is the sign-in a person does: `evergrant
// login URL --no-browser` against the serve stack with its consent page on,
// the printed URL opened in real headless Chromium (Debian's chromium and
// chromium-driver; scripts/setup-browser.sh), the Approve button clicked,
// the browser sent back to the CLI's loopback listener, and `status` then
// listing the grant. No CLI output may carry token material.
//
// EVERGRANT_SCREENSHOT_DIR, when set, receives copies of the screenshots of
// the consent page and of the listener's "Signed in" page.
func TestBrowser_LoginApproveStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and drives Chromium")
	}
	webdriver.Require(t) // before anything slow: a clear skip (or, under CI=true, failure) when the browser is missing
	// Building the binary on a cold build cache can take minutes on a busy
	// machine; the sign-in itself gets 45 seconds from the end of the build.
	buildCtx, cancelBuild := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancelBuild()

	// The serve stack on loopback, consent page on.
	rec := &secretRecorder{}
	srv := httptest.NewUnstartedServer(nil)
	base := "http://" + srv.Listener.Addr().String()
	st, err := stack.New(stack.Config{BaseURL: base, AutoApprove: false})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = rec.wrap(st.Handler)
	srv.Start()
	defer srv.Close()

	// Build the binary while Chromium starts.
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "evergrant")
	built := make(chan error, 1)
	go func() {
		start := time.Now()
		out, err := exec.CommandContext(buildCtx, "go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("build: %v\n%s", err, out)
		} else {
			t.Logf("built the binary in %v", time.Since(start).Round(time.Millisecond))
		}
		built <- err
	}()
	browser := webdriver.Start(t, buildCtx)
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	// evergrant login URL --no-browser: one "open: <URL>" line on stderr,
	// then it waits for the redirect.
	configDir := filepath.Join(tmp, "config")
	env := append(os.Environ(), "HOME="+tmp, "XDG_CONFIG_HOME="+filepath.Join(tmp, "xdg"), "EVERGRANT_CONFIG_DIR=", "BROWSER=false")
	login := exec.CommandContext(ctx, bin, "login", st.MCPURL, "--no-browser", "--config-dir", configDir, "--timeout", "40s")
	login.Env = env
	login.WaitDelay = 5 * time.Second
	var loginOut bytes.Buffer
	login.Stdout = &loginOut
	stderrPipe, err := login.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		errMu    sync.Mutex
		loginErr bytes.Buffer
		opens    []string
	)
	openLine := make(chan string, 1)
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderrPipe)
		for sc.Scan() {
			line := sc.Text()
			errMu.Lock()
			loginErr.WriteString(line + "\n")
			if u, ok := strings.CutPrefix(line, "open: "); ok {
				opens = append(opens, u)
				if len(opens) == 1 {
					openLine <- u
				}
			}
			errMu.Unlock()
		}
		io.Copy(io.Discard, stderrPipe)
	}()
	exited := make(chan error, 1)
	go func() {
		<-stderrDone // Wait closes the pipe; read it all first
		exited <- login.Wait()
	}()
	loginStderr := func() string {
		errMu.Lock()
		defer errMu.Unlock()
		return loginErr.String()
	}

	var authURL string
	select {
	case authURL = <-openLine:
	case err := <-exited:
		t.Fatalf("login exited before printing the URL (%v); stderr:\n%s", err, loginStderr())
	case <-ctx.Done():
		t.Fatalf("no \"open: \" line from login; stderr:\n%s", loginStderr())
	}
	au, err := url.Parse(authURL)
	if err != nil || !strings.HasPrefix(authURL, st.Issuer+authserver.PathAuthorize+"?") {
		t.Fatalf("open: %q, want a URL of %s%s (%v)", authURL, st.Issuer, authserver.PathAuthorize, err)
	}
	redirectURI := au.Query().Get("redirect_uri")
	ru, err := url.Parse(redirectURI)
	if err != nil || ru.Scheme != "http" || ru.Hostname() != "127.0.0.1" {
		t.Fatalf("redirect_uri %q, want the CLI's listener on http://127.0.0.1", redirectURI)
	}

	// The consent page.
	if err := browser.Navigate(ctx, authURL); err != nil {
		t.Fatal(err)
	}
	pageFail := func(format string, args ...any) {
		t.Helper()
		u, _ := browser.CurrentURL(ctx)
		src, _ := browser.PageSource(ctx)
		t.Fatalf("%s\nbrowser at %s:\n%s\nlogin stderr:\n%s", fmt.Sprintf(format, args...), u, src, loginStderr())
	}
	if title, err := browser.Title(ctx); err != nil || title != "Authorize evergrant" {
		pageFail("consent page title %q (%v), want \"Authorize evergrant\"", title, err)
	}
	approve, err := browser.FindElement(ctx, "#approve")
	if err != nil {
		pageFail("consent page: %v", err)
	}
	if text, err := approve.Text(ctx); err != nil || text != "Approve" {
		pageFail("#approve text %q (%v)", text, err)
	}
	if _, err := browser.FindElement(ctx, "#deny"); err != nil {
		pageFail("consent page: %v", err)
	}
	src, err := browser.PageSource(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{st.MCPURL, ru.Scheme + "://" + ru.Host, "demo-user"} {
		if !strings.Contains(src, want) {
			pageFail("consent page does not show %q", want)
		}
	}
	shot(t, ctx, browser, "consent.png")

	// Approve: the authorization server redirects to the CLI's listener,
	// which answers with its "Signed in" page.
	if err := approve.Click(ctx); err != nil {
		pageFail("click #approve: %v", err)
	}
	var lastURL string
	err = webdriver.Wait(ctx, func() (bool, error) {
		u, err := browser.CurrentURL(ctx)
		if err != nil {
			return false, err
		}
		lastURL = u
		if !strings.HasPrefix(u, redirectURI+"?") {
			return false, nil
		}
		h1, err := browser.FindElement(ctx, "h1")
		if webdriver.IsNoSuchElement(err) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		text, err := h1.Text(ctx)
		return text == "Signed in", err
	})
	if err != nil {
		pageFail("after Approve, waiting for the listener's \"Signed in\" page (last URL %s): %v", lastURL, err)
	}
	if q, _ := url.Parse(lastURL); q.Query().Get("code") == "" || q.Query().Get("state") != au.Query().Get("state") {
		t.Errorf("redirect %s: want a code and the state of the authorization URL", lastURL)
	}
	shot(t, ctx, browser, "signed-in.png")

	// The CLI received the code, stored the grant and exits 0.
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("login: %v\nstdout:\n%s\nstderr:\n%s", err, loginOut.String(), loginStderr())
		}
	case <-ctx.Done():
		t.Fatalf("login did not exit after the redirect; stderr:\n%s", loginStderr())
	}
	if len(opens) != 1 {
		t.Errorf("login printed %d \"open: \" lines, want 1: %q", len(opens), opens)
	}
	if !strings.Contains(loginOut.String(), "Signed in to "+st.MCPURL) {
		t.Errorf("login stdout lacks \"Signed in to %s\":\n%s", st.MCPURL, loginOut.String())
	}
	if c := rec.codeGrants(); c != 1 {
		t.Errorf("%d authorization_code grants at the token endpoint, want 1", c)
	}

	// status lists the grant, with a refresh token held.
	statusJSON := runCLI(t, ctx, env, bin, "status", "--json", "--config-dir", configDir)
	var grants []struct {
		Server          string   `json:"server"`
		Issuer          string   `json:"issuer"`
		Scopes          []string `json:"scopes"`
		Expired         bool     `json:"expired"`
		HasAccessToken  bool     `json:"has_access_token"`
		HasRefreshToken bool     `json:"has_refresh_token"`
		NeedsLogin      bool     `json:"needs_login"`
	}
	if err := json.Unmarshal([]byte(statusJSON.stdout), &grants); err != nil {
		t.Fatalf("status --json: %v\n%s", err, statusJSON.stdout)
	}
	if len(grants) != 1 {
		t.Fatalf("status --json lists %d grants, want 1:\n%s", len(grants), statusJSON.stdout)
	}
	g := grants[0]
	if g.Server != st.MCPURL || g.Issuer != st.Issuer || !g.HasRefreshToken || !g.HasAccessToken || g.Expired || g.NeedsLogin {
		t.Errorf("status --json: %+v; want server %s, issuer %s, access and refresh tokens held, not expired", g, st.MCPURL, st.Issuer)
	}
	if !strings.Contains(" "+strings.Join(g.Scopes, " ")+" ", " mcp:tools ") {
		t.Errorf("status --json scopes %q, want mcp:tools", g.Scopes)
	}
	statusText := runCLI(t, ctx, env, bin, "status", "--config-dir", configDir)
	if !strings.Contains(statusText.stdout, st.MCPURL) {
		t.Errorf("status does not list %s:\n%s", st.MCPURL, statusText.stdout)
	}

	// No token material in anything the CLI printed.
	secrets := rec.secrets()
	if len(secrets) < 3 {
		t.Fatalf("recorded %d secrets (code, access token, refresh token expected); the check below would prove nothing", len(secrets))
	}
	kinds := make([]string, len(secrets))
	for i, s := range secrets {
		kinds[i] = s.kind
	}
	t.Logf("checked the CLI's output for: %s", strings.Join(kinds, ", "))
	outputs := map[string]string{
		"login stdout":         loginOut.String(),
		"login stderr":         loginStderr(),
		"status --json stdout": statusJSON.stdout,
		"status --json stderr": statusJSON.stderr,
		"status stdout":        statusText.stdout,
		"status stderr":        statusText.stderr,
	}
	for name, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s.value) {
				t.Errorf("%s contains the %s", name, s.kind)
			}
		}
	}
}

// shot saves a screenshot of the browser's page under t.TempDir() and,
// when EVERGRANT_SCREENSHOT_DIR is set, copies it there.
func shot(t *testing.T, ctx context.Context, b *webdriver.Session, name string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := b.Screenshot(ctx, path); err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	dir := os.Getenv("EVERGRANT_SCREENSHOT_DIR")
	if dir == "" {
		return
	}
	data, err := os.ReadFile(path)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
	}
	if err != nil {
		t.Errorf("copy screenshot to EVERGRANT_SCREENSHOT_DIR: %v", err)
		return
	}
	t.Logf("screenshot: %s", filepath.Join(dir, name))
}

type cliResult struct{ stdout, stderr string }

// runCLI runs the binary and fails the test unless it exits 0.
func runCLI(t *testing.T, ctx context.Context, env []string, bin string, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("evergrant %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return cliResult{out.String(), errb.String()}
}

// secretRecorder wraps the stack's handler and keeps the token material it
// hands out: authorization codes (the consent form's redirect), tokens
// (token endpoint answers) and client secrets (registration answers).
type secretRecorder struct {
	mu     sync.Mutex
	list   []secret
	grants int
}

type secret struct{ kind, value string }

func (r *secretRecorder) add(kind, value string) {
	if value != "" {
		r.list = append(r.list, secret{kind, value})
	}
}

func (r *secretRecorder) secrets() []secret {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]secret(nil), r.list...)
}

func (r *secretRecorder) codeGrants() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.grants
}

func (r *secretRecorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			h.ServeHTTP(w, req)
			return
		}
		tw := &teeWriter{ResponseWriter: w}
		h.ServeHTTP(tw, req)
		r.mu.Lock()
		defer r.mu.Unlock()
		switch req.URL.Path {
		case authserver.PathConsent, authserver.PathAuthorize:
			if loc, err := url.Parse(w.Header().Get("Location")); err == nil {
				r.add("authorization code", loc.Query().Get("code"))
			}
		case authserver.PathToken:
			var body struct {
				AccessToken  string `json:"access_token"`
				RefreshToken string `json:"refresh_token"`
				IDToken      string `json:"id_token"`
			}
			if json.Unmarshal(tw.body.Bytes(), &body) == nil {
				r.add("access token", body.AccessToken)
				r.add("refresh token", body.RefreshToken)
				r.add("ID token", body.IDToken)
			}
			if req.PostForm.Get("grant_type") == "authorization_code" {
				r.grants++
			}
		case authserver.PathRegister:
			var body struct {
				ClientSecret            string `json:"client_secret"`
				RegistrationAccessToken string `json:"registration_access_token"`
			}
			if json.Unmarshal(tw.body.Bytes(), &body) == nil {
				r.add("client secret", body.ClientSecret)
				r.add("registration access token", body.RegistrationAccessToken)
			}
		}
	})
}

// teeWriter keeps a copy of the response body.
type teeWriter struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.body.Write(p)
	return w.ResponseWriter.Write(p)
}
