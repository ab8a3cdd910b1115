package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// lineWriter hands complete stdout lines to a channel.
type lineWriter struct {
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.lines <- strings.TrimSuffix(line, "\n")
	}
}

func TestServe_PrintsEndpointsAndServesMetadata(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &lineWriter{lines: make(chan string, 100)}
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--auto-approve", "--access-token-ttl", "90s"}, out, &errb)
	}()
	var lines []string
	timeout := time.After(10 * time.Second)
	for len(lines) < 11 {
		select {
		case l := <-out.lines:
			lines = append(lines, l)
		case code := <-done:
			t.Fatalf("serve exited early with %d: %s", code, errb.String())
		case <-timeout:
			t.Fatalf("no endpoint lines; got %q", lines)
		}
	}
	issuer, ok := strings.CutPrefix(lines[0], "issuer: ")
	if !ok || !strings.HasPrefix(issuer, "http://127.0.0.1:") || strings.HasSuffix(issuer, ":0") {
		t.Fatalf("first line %q, want issuer: http://127.0.0.1:<port>", lines[0])
	}
	want := []string{"mcp", "upstream", "resource_metadata", "metadata", "authorize", "token", "register", "revoke", "introspect", "jwks"}
	for i, name := range want {
		if !strings.HasPrefix(lines[i+1], name+": "+issuer) {
			t.Errorf("line %d = %q, want %s: %s…", i+1, lines[i+1], name, issuer)
		}
	}
	r, err := http.Get(issuer + oauth.WellKnownAuthServer)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if _, err := oauth.ParseAuthServerMetadata(body, issuer); err != nil {
		t.Fatalf("metadata: %v", err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after cancel: %s", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
}

func TestServe_FlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--bogus"},
		{"serve", "--access-token-ttl", "soon"},
		{"serve", "extra"},
		{"serve", "--log-level", "loud"},
		{"nosuchcommand"},
		{},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
		if errb.Len() == 0 {
			t.Errorf("%q: nothing on stderr", args)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "--listen") && !strings.Contains(out.String(), "-listen") {
		t.Errorf("--help: exit %d, stdout %q", code, out.String())
	}
}

func TestServe_ListenErrorExits1(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "--listen", "256.0.0.1:1"}, &out, &errb); code != exitError {
		t.Fatalf("exit %d, want %d (%s)", code, exitError, errb.String())
	}
}

// The real binary shuts down cleanly on SIGTERM and SIGINT.
func TestServe_ShutsDownOnSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "evergrant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0")
			stdout, _ := cmd.StdoutPipe()
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "issuer: ") {
				cmd.Process.Kill()
				t.Fatalf("first line %q: %v", line, err)
			}
			go io.Copy(io.Discard, stdout)
			cmd.Process.Signal(sig)
			werr := make(chan error, 1)
			go func() { werr <- cmd.Wait() }()
			select {
			case err := <-werr:
				if err != nil {
					t.Fatalf("exit after %v: %v\n%s", sig, err, errb.String())
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("did not stop on %v", sig)
			}
			if !strings.Contains(errb.String(), "shutting down") {
				t.Errorf("stderr lacks the shutdown record: %s", errb.String())
			}
		})
	}
}
