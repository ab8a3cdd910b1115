package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/astest"
	"github.com/evergrant/evergrant/internal/pgtest"
)

// servePG runs serve in-process with args until t ends, and returns its
// printed lines by name.
func servePG(t *testing.T, args ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lineWriter{lines: make(chan string, 100)}
	errb := &astest.SyncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"serve"}, args...), out, errb) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve: exit %d after cancel: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop")
		}
	})
	lines := map[string]string{}
	timeout := time.After(30 * time.Second)
	for len(lines) < 13 {
		select {
		case l := <-out.lines:
			name, value, _ := strings.Cut(l, ": ")
			lines[name] = value
		case code := <-done:
			done <- code
			t.Fatalf("serve exited early with %d: %s", code, errb.String())
		case <-timeout:
			t.Fatalf("no endpoint lines; got %q", lines)
		}
	}
	return lines
}

// TestServe_DatabaseURLSharesKeys: two serves on one PostgreSQL database,
// behind one public URL, are replicas: a client signs in at one, and its
// token is accepted by the other (same signing keys, same grants).
func TestServe_DatabaseURLSharesKeys(t *testing.T) {
	pgURL := pgtest.Start(t).NewDatabase(t)
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(t.TempDir(), "secret-key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	public := "http://" + pl.Addr().String()
	args := []string{"--database-url", pgURL, "--secret-key-file", keyFile, "--listen", "127.0.0.1:0", "--public-url", public, "--auto-approve"}

	// The two replicas start together, on an empty database.
	var (
		wg   sync.WaitGroup
		a, b map[string]string
	)
	wg.Go(func() { a = servePG(t, args...) })
	wg.Go(func() { b = servePG(t, args...) })
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	u, _ := url.Parse(pgURL)
	wantData := fmt.Sprintf("postgres://%s@%s%s", u.User.Username(), u.Host, u.Path)
	for _, l := range []map[string]string{a, b} {
		if l["data"] != wantData {
			t.Errorf("data: %q, want %q", l["data"], wantData)
		}
	}
	if a["listen"] == b["listen"] {
		t.Fatalf("both serves listen on %s", a["listen"])
	}
	jwks := func(listen string) []byte {
		t.Helper()
		r, err := http.Get("http://" + listen + strings.TrimPrefix(a["jwks"], public))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		body, _ := io.ReadAll(r.Body)
		return body
	}
	if ja, jb := jwks(a["listen"]), jwks(b["listen"]); !bytes.Equal(ja, jb) || !bytes.Contains(ja, []byte(`"kid"`)) {
		t.Errorf("the replicas publish different keys:\n%s\n%s", ja, jb)
	}

	// A proxy on the public URL, sending every request to one replica.
	var (
		target atomic.Value
		tokens atomic.Int64 // requests to the token endpoint
	)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target.Load().(*url.URL))
		r.Out.Host = r.In.Host
	}}
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if public+r.URL.Path == a["token"] {
			tokens.Add(1)
		}
		rp.ServeHTTP(w, r)
	})}
	to := func(listen string) { target.Store(&url.URL{Scheme: "http", Host: listen}) }
	to(a["listen"])
	go proxy.Serve(pl)
	defer proxy.Close()

	cfgDir := t.TempDir()
	open := func(authURL string) error {
		resp, err := http.Get(authURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("sign-in ended with HTTP %d", resp.StatusCode)
		}
		return nil
	}
	cli := func(cmd string, args ...string) string {
		t.Helper()
		cctx, ccancel := context.WithTimeout(withOpener(context.Background(), open), 30*time.Second)
		defer ccancel()
		var out, errb bytes.Buffer
		if code := run(cctx, append([]string{cmd, "--config-dir", cfgDir}, args...), &out, &errb); code != 0 {
			t.Fatalf("evergrant %s: exit %d\n%s%s", cmd, code, out.String(), errb.String())
		}
		return out.String()
	}
	cli("login", a["mcp"])
	if tokens.Load() == 0 {
		t.Fatal("login did not reach the token endpoint through the proxy")
	}
	// The access token a signed, at b: accepted without a refresh.
	to(b["listen"])
	before := tokens.Load()
	if out := cli("call", a["mcp"], "whoami"); !strings.Contains(out, "demo-user") {
		t.Errorf("call at the other replica: %s", out)
	}
	if n := tokens.Load() - before; n != 0 {
		t.Errorf("the call at the other replica made %d token requests; want none: it should accept the token as it is", n)
	}
}

// TestServe_DatabaseURLNeedsSecretKey: serve --database-url without a
// secret key, or with a malformed one, refuses to start, saying what to
// set, and shows neither the key nor the password.
func TestServe_DatabaseURLNeedsSecretKey(t *testing.T) {
	t.Setenv("EVERGRANT_SECRET_KEY", "")
	const password = "hunter2-secret"
	dbURL := "postgres://evergrant:" + password + "@127.0.0.1:1/authserver"
	badKey := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(badKey, []byte("not-a-key-but-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--database-url", dbURL}, "EVERGRANT_SECRET_KEY"},
		{[]string{"--database-url", dbURL, "--secret-key-file", badKey}, "32 random bytes"},
		{[]string{"--database-url", dbURL, "--memory"}, "excludes"},
	} {
		var out, errb bytes.Buffer
		code := run(t.Context(), append([]string{"serve", "--listen", "127.0.0.1:0"}, tc.args...), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("serve %q: exit %d, %q; want %d and a message saying %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
		if s := out.String() + errb.String(); strings.Contains(s, password) || strings.Contains(s, "not-a-key") {
			t.Errorf("serve %q shows a secret: %s", tc.args, s)
		}
	}
}
