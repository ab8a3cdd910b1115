package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/stack"
)

// TestCall_FailedSaveIsReported: when the refreshed tokens cannot be
// written (the grant store fails between the load and the save), `call`
// still answers with the tool's result, but exits non-zero with a message
// that says the new tokens could not be written, and where.
func TestCall_FailedSaveIsReported(t *testing.T) {
	var e *cliEnv
	var armed atomic.Bool
	e = newCLIEnv(t, stack.Config{WrapAuthServer: func(as http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/token") && armed.CompareAndSwap(true, false) {
				// The store breaks while the refresh is under way: its
				// grants directory becomes a file, which no one, root
				// included, can write a grant into.
				grants := filepath.Join(e.Dir, "grants")
				if err := os.Rename(grants, grants+".moved"); err != nil {
					t.Error(err)
				}
				if err := os.WriteFile(grants, nil, 0o600); err != nil {
					t.Error(err)
				}
			}
			as.ServeHTTP(w, r)
		})
	}})
	e.mustRun(0, "login", e.URL)
	armed.Store(true)
	e.Clock.Advance(2 * time.Hour) // the servers now reject the access token
	code, out, errs := e.run("call", e.URL, "whoami")
	if code != exitError {
		t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, exitError, out, errs)
	}
	if !strings.Contains(out, "demo-user") {
		t.Errorf("the call's result is missing:\n%s", out)
	}
	if want := "the refreshed tokens could not be written to " + e.Dir; !strings.Contains(errs, want) {
		t.Errorf("stderr lacks %q:\n%s", want, errs)
	}
	if e.Refreshes.Load() != 1 {
		t.Errorf("refresh grants = %d, want 1", e.Refreshes.Load())
	}
}
