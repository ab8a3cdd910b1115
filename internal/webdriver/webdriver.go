// Package webdriver is a small W3C WebDriver client for browser tests: it
// starts Debian's chromedriver on a free loopback port, opens a headless
// Chromium session with a fresh profile, and offers the few commands the
// project's tests need (navigate, find by CSS selector, click, read the
// URL, title and page source, screenshot).
//
// scripts/setup-browser.sh installs Chromium and ChromeDriver (Debian
// packages chromium and chromium-driver). Tests call [Require] first; it
// skips the test when they are missing, except under CI=true, where a
// missing browser is a failure. [Start] then gives a ready [Session] that
// is closed when the test ends.
package webdriver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Default paths of Debian's packages; EVERGRANT_CHROMIUM and
// EVERGRANT_CHROMEDRIVER override them.
const (
	DefaultChromium     = "/usr/bin/chromium"
	DefaultChromedriver = "/usr/bin/chromedriver"
)

// setupHint tells a developer how to install what is missing.
const setupHint = "install Debian's packages chromium and chromium-driver: run scripts/setup-browser.sh " +
	"(or apt-get install chromium chromium-driver), or set EVERGRANT_CHROMIUM and EVERGRANT_CHROMEDRIVER"

// ChromiumArgs are the command-line flags every session's Chromium gets:
// headless, usable as root, and quiet on the network (a closed network
// refuses Chromium's background connections). Start adds a fresh
// --user-data-dir.
var ChromiumArgs = []string{
	"--headless",
	"--no-sandbox",
	"--disable-gpu",
	"--disable-quic",
	"--no-first-run",
	"--disable-background-networking",
	"--disable-component-update",
	"--disable-sync",
	"--disable-dev-shm-usage",
	"--window-size=1024,768",
}

// Browser is a usable Chromium and ChromeDriver.
type Browser struct {
	Chromium     string
	Chromedriver string
}

// Require returns the Browser or, when Chromium or ChromeDriver is missing:
// t.Skip with a message naming the Debian packages and
// scripts/setup-browser.sh when the CI environment variable is not "true",
// and t.Fatal when CI=true.
func Require(t testing.TB) Browser {
	t.Helper()
	b, err := Find()
	if err != nil {
		msg := fmt.Sprintf("browser test needs headless Chromium and ChromeDriver: %v; %s", err, setupHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return b
}

// Find locates Chromium and ChromeDriver: the EVERGRANT_CHROMIUM and
// EVERGRANT_CHROMEDRIVER environment variables, else Debian's paths, else
// chromium and chromedriver on PATH.
func Find() (Browser, error) {
	chromium, err1 := findExecutable("EVERGRANT_CHROMIUM", DefaultChromium, "chromium")
	driver, err2 := findExecutable("EVERGRANT_CHROMEDRIVER", DefaultChromedriver, "chromedriver")
	if err := errors.Join(err1, err2); err != nil {
		return Browser{}, err
	}
	return Browser{Chromium: chromium, Chromedriver: driver}, nil
}

func findExecutable(envVar, def, name string) (string, error) {
	if p := os.Getenv(envVar); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("%s=%s is not an executable file", envVar, p)
		}
		return p, nil
	}
	if isExecutable(def) {
		return def, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found (looked at %s and on PATH)", name, def)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// Start requires the browser (see [Require]), starts ChromeDriver and opens
// a session. Both are closed when the test ends. The returned session's
// commands are bounded by ctx and by the per-command timeout.
func Start(t testing.TB, ctx context.Context) *Session {
	t.Helper()
	b := Require(t)
	d, err := StartDriver(ctx, b.Chromedriver)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	s, err := d.NewSession(ctx, b.Chromium)
	if err != nil {
		t.Fatalf("%v\nchromedriver log:\n%s", err, d.Log())
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Delete(c); err != nil {
			t.Logf("webdriver: delete session: %v", err)
		}
	})
	return s
}

// CommandTimeout bounds every WebDriver command.
const CommandTimeout = 30 * time.Second

// Driver is a running chromedriver.
type Driver struct {
	// URL is the WebDriver endpoint, http://127.0.0.1:<port>.
	URL string

	cmd    *exec.Cmd
	log    *syncBuffer
	client *http.Client
	done   chan struct{}
	once   sync.Once
}

// StartDriver starts chromedriver on a free loopback port and waits until
// it reports ready.
func StartDriver(ctx context.Context, chromedriver string) (*Driver, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		d, err := startDriver(ctx, chromedriver)
		if err == nil {
			return d, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startDriver(ctx context.Context, chromedriver string) (*Driver, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	log := &syncBuffer{}
	cmd := exec.Command(chromedriver, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1", "--log-level=WARNING")
	cmd.Stdout = log
	cmd.Stderr = log
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start chromedriver: %w", err)
	}
	d := &Driver{
		URL:    "http://127.0.0.1:" + strconv.Itoa(port),
		cmd:    cmd,
		log:    log,
		client: &http.Client{Timeout: CommandTimeout},
		done:   make(chan struct{}),
	}
	go func() { cmd.Wait(); close(d.done) }()

	deadline := time.Now().Add(15 * time.Second)
	for {
		ready, err := d.ready(ctx)
		if ready {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("chromedriver exited before it was ready (%v):\n%s", cmd.ProcessState, log.String())
		default:
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			d.Close()
			return nil, fmt.Errorf("chromedriver at %s not ready: %v\n%s", d.URL, errors.Join(err, ctx.Err()), log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Driver) ready(ctx context.Context) (bool, error) {
	var st struct {
		Ready bool `json:"ready"`
	}
	c, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := d.do(c, http.MethodGet, "/status", nil, &st); err != nil {
		return false, err
	}
	return st.Ready, nil
}

// Log returns what chromedriver has printed.
func (d *Driver) Log() string { return d.log.String() }

// Close stops chromedriver and whatever it started that is still running.
func (d *Driver) Close() {
	d.once.Do(func() {
		killProcessGroup(d.cmd)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
		}
	})
}

// NewSession opens a headless Chromium session with [ChromiumArgs] and a
// fresh profile directory, removed by [Session.Delete].
func (d *Driver) NewSession(ctx context.Context, chromium string) (*Session, error) {
	profile, err := os.MkdirTemp("", "evergrant-chromium-*")
	if err != nil {
		return nil, err
	}
	args := append(append([]string(nil), ChromiumArgs...), "--user-data-dir="+profile)
	caps := map[string]any{
		"capabilities": map[string]any{
			"alwaysMatch": map[string]any{
				"browserName":      "chrome",
				"pageLoadStrategy": "normal",
				"timeouts":         map[string]any{"implicit": 0, "pageLoad": 20000, "script": 10000},
				"goog:chromeOptions": map[string]any{
					"binary": chromium,
					"args":   args,
				},
			},
		},
	}
	var resp struct {
		SessionID string `json:"sessionId"`
	}
	if err := d.do(ctx, http.MethodPost, "/session", caps, &resp); err != nil {
		os.RemoveAll(profile)
		return nil, fmt.Errorf("new session: %w", err)
	}
	if resp.SessionID == "" {
		os.RemoveAll(profile)
		return nil, errors.New("new session: no session id in the response")
	}
	return &Session{d: d, id: resp.SessionID, profile: profile}, nil
}

// Error is an error a WebDriver endpoint returned.
type Error struct {
	Status  int
	Code    string // the W3C error code, such as "no such element"
	Message string
}

func (e *Error) Error() string {
	msg, _, _ := strings.Cut(e.Message, "\n")
	return fmt.Sprintf("webdriver: %s (HTTP %d): %s", e.Code, e.Status, msg)
}

// IsNoSuchElement reports whether err is WebDriver's "no such element".
func IsNoSuchElement(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "no such element"
}

// do sends one command and decodes the "value" member of the answer into out.
func (d *Driver) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, d.URL+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("webdriver: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("webdriver: %s %s: %w", method, path, err)
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("webdriver: %s %s: HTTP %d, not JSON: %.200q", method, path, resp.StatusCode, raw)
	}
	if resp.StatusCode != http.StatusOK {
		var we struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		json.Unmarshal(env.Value, &we)
		return &Error{Status: resp.StatusCode, Code: we.Error, Message: we.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(env.Value, out); err != nil {
		return fmt.Errorf("webdriver: %s %s: decode %.200q: %w", method, path, env.Value, err)
	}
	return nil
}

// Session is one browser session.
type Session struct {
	d       *Driver
	id      string
	profile string
	once    sync.Once
	delErr  error
}

// ID is the WebDriver session id.
func (s *Session) ID() string { return s.id }

// Driver is the chromedriver the session runs in.
func (s *Session) Driver() *Driver { return s.d }

func (s *Session) do(ctx context.Context, method, path string, in, out any) error {
	return s.d.do(ctx, method, "/session/"+s.id+path, in, out)
}

// Navigate loads url and waits for the page to load.
func (s *Session) Navigate(ctx context.Context, url string) error {
	return s.do(ctx, http.MethodPost, "/url", map[string]string{"url": url}, nil)
}

// CurrentURL is the URL of the current page.
func (s *Session) CurrentURL(ctx context.Context) (string, error) {
	var u string
	err := s.do(ctx, http.MethodGet, "/url", nil, &u)
	return u, err
}

// Title is the title of the current page.
func (s *Session) Title(ctx context.Context) (string, error) {
	var v string
	err := s.do(ctx, http.MethodGet, "/title", nil, &v)
	return v, err
}

// PageSource is the serialized DOM of the current page.
func (s *Session) PageSource(ctx context.Context) (string, error) {
	var v string
	err := s.do(ctx, http.MethodGet, "/source", nil, &v)
	return v, err
}

// elementKey is the W3C web element identifier.
const elementKey = "element-6066-11e4-a52e-4f735466cecf"

// Element is an element of the current page.
type Element struct {
	s  *Session
	id string
}

// FindElement returns the first element matching the CSS selector; the
// error satisfies [IsNoSuchElement] when there is none.
func (s *Session) FindElement(ctx context.Context, css string) (*Element, error) {
	var ref map[string]string
	if err := s.do(ctx, http.MethodPost, "/element", map[string]string{"using": "css selector", "value": css}, &ref); err != nil {
		return nil, fmt.Errorf("find %q: %w", css, err)
	}
	id := ref[elementKey]
	if id == "" {
		return nil, fmt.Errorf("find %q: no element reference in %v", css, ref)
	}
	return &Element{s: s, id: id}, nil
}

// WaitElement polls for an element matching css until it appears or ctx
// ends.
func (s *Session) WaitElement(ctx context.Context, css string) (*Element, error) {
	var el *Element
	err := Wait(ctx, func() (bool, error) {
		var err error
		el, err = s.FindElement(ctx, css)
		if IsNoSuchElement(err) {
			return false, nil
		}
		return err == nil, err
	})
	return el, err
}

// Click clicks the element.
func (e *Element) Click(ctx context.Context) error {
	return e.s.do(ctx, http.MethodPost, "/element/"+e.id+"/click", map[string]any{}, nil)
}

// Text is the element's rendered text.
func (e *Element) Text(ctx context.Context) (string, error) {
	var v string
	err := e.s.do(ctx, http.MethodGet, "/element/"+e.id+"/text", nil, &v)
	return v, err
}

// Attribute is the element's attribute name, or "" when it has none.
func (e *Element) Attribute(ctx context.Context, name string) (string, error) {
	var v *string
	err := e.s.do(ctx, http.MethodGet, "/element/"+e.id+"/attribute/"+name, nil, &v)
	if v == nil {
		return "", err
	}
	return *v, err
}

// Screenshot writes a PNG of the viewport to path.
func (s *Session) Screenshot(ctx context.Context, path string) error {
	var b64 string
	if err := s.do(ctx, http.MethodGet, "/screenshot", nil, &b64); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("screenshot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// Delete ends the session (closing Chromium) and removes its profile
// directory. Calling it again returns the first result.
func (s *Session) Delete(ctx context.Context) error {
	s.once.Do(func() {
		s.delErr = s.d.do(ctx, http.MethodDelete, "/session/"+s.id, nil, nil)
		if err := os.RemoveAll(s.profile); err != nil && s.delErr == nil {
			s.delErr = err
		}
	})
	return s.delErr
}

// Wait calls cond every 50ms until it returns true or an error, or ctx
// ends.
func Wait(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 1<<20 {
		return len(p), nil
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
