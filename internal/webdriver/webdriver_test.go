package webdriver

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const testPage = `<!doctype html><html><head><title>Webdriver test page</title></head>
<body><h1>Hello</h1><p id="msg">a paragraph</p>
<form method="post" action="/submit"><input type="hidden" name="v" value="42">
<button id="go" type="submit">Go</button></form></body></html>`

// TestSession drives Chromium through a page on loopback: navigate, read,
// find, click a form button that redirects, take a screenshot, delete.
func TestSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	var mu sync.Mutex
	var posted string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, testPage)
	})
	mux.HandleFunc("POST /submit", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		mu.Lock()
		posted = r.PostForm.Get("v")
		mu.Unlock()
		http.Redirect(w, r, "/result", http.StatusFound)
	})
	mux.HandleFunc("GET /result", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>Result</title><p id="done">Done.</p>`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	s := Start(t, ctx)

	if err := s.Navigate(ctx, srv.URL+"/"); err != nil {
		t.Fatal(err)
	}
	if title, err := s.Title(ctx); err != nil || title != "Webdriver test page" {
		t.Fatalf("title %q, %v", title, err)
	}
	if u, err := s.CurrentURL(ctx); err != nil || u != srv.URL+"/" {
		t.Fatalf("url %q, %v; want %s/", u, err, srv.URL)
	}
	msg, err := s.FindElement(ctx, "#msg")
	if err != nil {
		t.Fatal(err)
	}
	if text, err := msg.Text(ctx); err != nil || text != "a paragraph" {
		t.Fatalf("text %q, %v", text, err)
	}
	if _, err := s.FindElement(ctx, "#nothing-here"); !IsNoSuchElement(err) {
		t.Fatalf("missing element: %v, want no such element", err)
	}
	btn, err := s.FindElement(ctx, "button#go")
	if err != nil {
		t.Fatal(err)
	}
	if typ, err := btn.Attribute(ctx, "type"); err != nil || typ != "submit" {
		t.Fatalf("type attribute %q, %v", typ, err)
	}

	shot := filepath.Join(t.TempDir(), "page.png")
	if err := s.Screenshot(ctx, shot); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 1000 {
		t.Fatalf("screenshot is not a PNG of a page (%d bytes)", len(png))
	}

	if err := btn.Click(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if _, err := s.WaitElement(wctx, "#done"); err != nil {
		src, _ := s.PageSource(ctx)
		t.Fatalf("after click: %v; page:\n%s", err, src)
	}
	if u, _ := s.CurrentURL(ctx); u != srv.URL+"/result" {
		t.Errorf("url after click %q, want %s/result", u, srv.URL)
	}
	if src, err := s.PageSource(ctx); err != nil || !strings.Contains(src, "Done.") {
		t.Errorf("page source %q, %v", src, err)
	}
	mu.Lock()
	if posted != "42" {
		t.Errorf("form posted v=%q, want 42", posted)
	}
	mu.Unlock()

	profile := s.profile
	if err := s.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(profile); !os.IsNotExist(err) {
		t.Errorf("profile directory %s still there: %v", profile, err)
	}
	if _, err := s.Title(ctx); err == nil {
		t.Error("command after Delete succeeded")
	}
}

// fakeTB records Skip and Fatal; both end the calling goroutine, like the
// real ones.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skip(args ...any) {
	f.skipped, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) {
	f.failed, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func callRequire(f *fakeTB) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Require(f)
	}()
	<-done
}

func TestRequire_MissingSkipsLocallyFailsInCI(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-chromium")
	t.Setenv("EVERGRANT_CHROMIUM", missing)
	t.Setenv("EVERGRANT_CHROMEDRIVER", missing)

	t.Setenv("CI", "")
	local := &fakeTB{TB: t}
	callRequire(local)
	if !local.skipped || local.failed {
		t.Fatalf("locally: skipped=%v failed=%v, want a skip", local.skipped, local.failed)
	}
	for _, want := range []string{"chromium", "chromium-driver", "scripts/setup-browser.sh", missing} {
		if !strings.Contains(local.msg, want) {
			t.Errorf("skip message lacks %q: %s", want, local.msg)
		}
	}

	t.Setenv("CI", "true")
	ci := &fakeTB{TB: t}
	callRequire(ci)
	if !ci.failed || ci.skipped {
		t.Fatalf("CI=true: skipped=%v failed=%v, want a failure", ci.skipped, ci.failed)
	}
}

func TestFind_EnvOverride(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "fake")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EVERGRANT_CHROMIUM", exe)
	t.Setenv("EVERGRANT_CHROMEDRIVER", exe)
	b, err := Find()
	if err != nil || b.Chromium != exe || b.Chromedriver != exe {
		t.Fatalf("Find = %+v, %v", b, err)
	}
	t.Setenv("EVERGRANT_CHROMEDRIVER", plain)
	if _, err := Find(); err == nil || !strings.Contains(err.Error(), "EVERGRANT_CHROMEDRIVER") {
		t.Fatalf("non-executable override: %v", err)
	}
}

func TestError(t *testing.T) {
	err := fmt.Errorf("find: %w", &Error{Status: 404, Code: "no such element", Message: "no such element: Unable to locate\n  (Session info: …)"})
	if !IsNoSuchElement(err) {
		t.Error("IsNoSuchElement = false")
	}
	if s := err.Error(); strings.Contains(s, "Session info") || !strings.Contains(s, "HTTP 404") {
		t.Errorf("message %q", s)
	}
	if IsNoSuchElement(&Error{Code: "stale element reference"}) {
		t.Error("stale element reported as no such element")
	}
}
