package store_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/store"
	"github.com/evergrant/evergrant/store/storetest"
)

func newTestFile(t *testing.T) *store.File {
	t.Helper()
	f, err := store.OpenFile(filepath.Join(t.TempDir(), "evergrant"))
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	return f
}

// TestFile runs the Store conformance suite on File.
func TestFile(t *testing.T) {
	storetest.TestStore(t, func(t *testing.T) store.Store { return newTestFile(t) })
}

// TestFile_Shared runs the shared-storage suite on two Files opened on one
// directory, as two processes have them.
func TestFile_Shared(t *testing.T) {
	storetest.TestShared(t, func(t *testing.T) (a, b store.Store) {
		dir := filepath.Join(t.TempDir(), "evergrant")
		fa, err := store.OpenFile(dir)
		if err != nil {
			t.Fatal(err)
		}
		fb, err := store.OpenFile(dir)
		if err != nil {
			t.Fatal(err)
		}
		return fa, fb
	})
}

func TestDefaultDir(t *testing.T) {
	if runtime.GOOS == "linux" {
		cfg := t.TempDir()
		t.Setenv("XDG_CONFIG_HOME", cfg)
		dir, err := store.DefaultDir()
		if err != nil || dir != filepath.Join(cfg, "evergrant") {
			t.Errorf("store.DefaultDir() = %q, %v; want %q", dir, err, filepath.Join(cfg, "evergrant"))
		}
		return
	}
	dir, err := store.DefaultDir()
	if err != nil || filepath.Base(dir) != "evergrant" {
		t.Errorf("store.DefaultDir() = %q, %v; want .../evergrant", dir, err)
	}
}

func TestFile_Dir(t *testing.T) {
	rel := filepath.Join(t.TempDir(), "a", "..", "b")
	f, err := store.OpenFile(rel)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(f.Dir()) || f.Dir() != filepath.Clean(rel) {
		t.Errorf("Dir() = %q, want %q", f.Dir(), filepath.Clean(rel))
	}
	if _, err := store.OpenFile(""); err == nil {
		t.Error("OpenFile(\"\") succeeded")
	}
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o600)
	if _, err := store.OpenFile(notDir); err == nil {
		t.Error("OpenFile(a regular file) succeeded")
	}
}

func skipUnlessUnix(t *testing.T) {
	if !store.CheckPerms {
		t.Skip("Unix permission bits are not used on " + runtime.GOOS)
	}
}

func wantPerm(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %v, want %v", path, got, want)
	}
}

func TestFile_Permissions(t *testing.T) {
	skipUnlessUnix(t)
	f := newTestFile(t)
	ctx := t.Context()
	const key = "https://mcp.example.com/mcp"
	if err := f.Save(ctx, fullGrant(key)); err != nil {
		t.Fatal(err)
	}
	if err := f.SaveRegistration(ctx, fullRegistration("https://as.example/", "http://127.0.0.1/cb")); err != nil {
		t.Fatal(err)
	}
	unlock, err := f.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	for _, d := range []string{"", store.GrantsDir, store.RegistrationsDir, store.LocksDir} {
		wantPerm(t, filepath.Join(f.Dir(), d), 0o700)
	}
	for _, p := range []string{f.GrantPath(key), f.RegistrationPath("https://as.example/", "http://127.0.0.1/cb"), f.LockPath(key)} {
		wantPerm(t, p, 0o600)
	}
}

// TestFile_TightensPermissions checks the permission policy: directories
// open to group or others are made 0700, not refused.
func TestFile_TightensPermissions(t *testing.T) {
	skipUnlessUnix(t)
	dir := filepath.Join(t.TempDir(), "evergrant")
	for _, d := range []string{dir, filepath.Join(dir, store.GrantsDir), filepath.Join(dir, store.LocksDir)} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Join(dir, store.GrantsDir), 0o777)
	os.Chmod(filepath.Join(dir, store.LocksDir), 0o750)
	if _, err := store.OpenFile(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", store.GrantsDir, store.RegistrationsDir, store.LocksDir} {
		wantPerm(t, filepath.Join(dir, d), 0o700)
	}
}

func TestFile_RefusesDirOfAnotherUser(t *testing.T) {
	skipUnlessUnix(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	dir := filepath.Join(t.TempDir(), "evergrant")
	os.Mkdir(dir, 0o700)
	if err := os.Chown(dir, 54321, 54321); err != nil {
		t.Skip(err)
	}
	_, err := store.OpenFile(dir)
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("OpenFile(dir of uid 54321) = %v, want an error naming the directory", err)
	}
}

func TestFile_FileFormat(t *testing.T) {
	f := newTestFile(t)
	const key = "https://mcp.example.com/mcp"
	if err := f.Save(t.Context(), fullGrant(key)); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(f.Dir(), store.GrantsDir, store.FileKey(key)+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "{\n  \"format\": \"evergrant.grant/v1\",\n  \"grant\": {") {
		t.Errorf("grant file starts %.60q, want the format marker first", data)
	}
	if len(store.FileKey(key)) != 32 {
		t.Errorf("fileKey length = %d, want 32", len(store.FileKey(key)))
	}
}

func TestFile_AtomicWriteLeavesNoTempFiles(t *testing.T) {
	f := newTestFile(t)
	keys := []string{"https://a.example/", "https://b.example/", "https://c.example/"}
	var wg sync.WaitGroup
	for i := range 20 {
		for _, k := range keys {
			wg.Go(func() {
				g := fullGrant(k)
				g.AccessToken = strconv.Itoa(i)
				if err := f.Save(t.Context(), g); err != nil {
					t.Error(err)
				}
				if err := f.SaveRegistration(t.Context(), fullRegistration(k, "http://127.0.0.1/cb")); err != nil {
					t.Error(err)
				}
				if _, err := f.Load(t.Context(), k); err != nil { // never a torn file
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	for _, sub := range []string{store.GrantsDir, store.RegistrationsDir} {
		entries, err := os.ReadDir(filepath.Join(f.Dir(), sub))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		var want []string
		for _, k := range keys {
			if sub == store.GrantsDir {
				want = append(want, store.FileKey(k)+".json")
			} else {
				want = append(want, store.FileKey(k+"\nhttp://127.0.0.1/cb")+".json")
			}
		}
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("%s holds %q, want only %q", sub, names, want)
		}
	}
}

// TestFile_Corrupt stores bad content where one grant should be and checks
// that it gives a clear error naming the file, never leaks the content, and
// never affects the other grants.
func TestFile_Corrupt(t *testing.T) {
	const secret = "SECRET-TOKEN-MATERIAL"
	for _, tc := range []struct {
		name    string
		content string
	}{
		{"garbage bytes", "\x00\xff\xfe garbage " + secret},
		{"empty file", ""},
		{"truncated JSON", `{"format":"evergrant.grant/v1","grant":{"key":"https://b.example/","access_token":"` + secret},
		{"foreign JSON", `{"access_token":"` + secret + `","hello":1}`},
		{"foreign format marker", `{"format":"other.tool/v9","grant":{"key":"https://b.example/","access_token":"` + secret + `"}}`},
		{"future format version", `{"format":"evergrant.grant/v2","grant":{"key":"https://b.example/"}}`},
		{"no grant", `{"format":"evergrant.grant/v1"}`},
		{"wrong field types", `{"format":"evergrant.grant/v1","grant":{"key":"https://b.example/","scopes":"` + secret + `"}}`},
		{"grant of another key", `{"format":"evergrant.grant/v1","grant":{"key":"https://elsewhere.example/","access_token":"` + secret + `"}}`},
		{"JSON array", `[1,2,3]`},
		{"too large", `{"format":"evergrant.grant/v1","grant":{"key":"https://b.example/","access_token":"` + strings.Repeat("x", store.MaxFileSize) + `"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFile(t)
			ctx := t.Context()
			good := []string{"https://a.example/", "https://c.example/"}
			for _, k := range good {
				if err := f.Save(ctx, fullGrant(k)); err != nil {
					t.Fatal(err)
				}
			}
			const bad = "https://b.example/"
			path := f.GrantPath(bad)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}

			g, err := f.Load(ctx, bad)
			checkCorrupt(t, "Load", err, path, secret)
			if g != nil {
				t.Errorf("Load of a corrupt file returned a grant")
			}
			for _, k := range good {
				if _, err := f.Load(ctx, k); err != nil {
					t.Errorf("Load(%q) next to a corrupt file: %v", k, err)
				}
			}
			list, err := f.List(ctx)
			checkCorrupt(t, "List", err, path, secret)
			var keys []string
			for _, g := range list {
				keys = append(keys, g.Key)
			}
			if !slices.Equal(keys, good) {
				t.Errorf("List next to a corrupt file = %q, want %q", keys, good)
			}

			// Saving over a corrupt file repairs it; deleting removes it.
			if err := f.Save(ctx, fullGrant(bad)); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Load(ctx, bad); err != nil {
				t.Errorf("Load after Save over a corrupt file: %v", err)
			}
			os.WriteFile(path, []byte(tc.content), 0o600)
			if err := f.Delete(ctx, bad); err != nil {
				t.Fatal(err)
			}
			if list, err := f.List(ctx); err != nil || len(list) != 2 {
				t.Errorf("List after Delete of the corrupt file = %d grants, %v", len(list), err)
			}
		})
	}
}

func checkCorrupt(t *testing.T, op string, err error, path, secret string) {
	t.Helper()
	if !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("%s: err = %v, want one wrapping store.ErrCorrupt", op, err)
	}
	if errors.Is(err, store.ErrNotFound) {
		t.Errorf("%s: a corrupt file reads as store.ErrNotFound", op)
	}
	var ce *store.CorruptError
	if !errors.As(err, &ce) || ce.Path != path {
		t.Errorf("%s: err = %#v, want a *store.CorruptError for %s", op, err, path)
	}
	if msg := err.Error(); !strings.Contains(msg, path) || strings.Contains(msg, secret) {
		t.Errorf("%s: error %q must name %s and not quote the file", op, msg, path)
	}
}

// TestFile_ListStrayFiles checks that List reports bad *.json files under
// any name, each by name, and ignores temporary and non-JSON files.
func TestFile_ListStrayFiles(t *testing.T) {
	f := newTestFile(t)
	ctx := t.Context()
	if err := f.Save(ctx, fullGrant("https://a.example/")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.Dir(), store.GrantsDir)
	a, _ := os.ReadFile(f.GrantPath("https://a.example/"))
	files := map[string]string{
		"zzz.json":          "garbage",
		"copy-of-a.json":    string(a), // a valid grant under the wrong name
		"notes.txt":         "ignored",
		".tmp-123456":       "ignored: a write that crashed",
		".tmp-123456.json":  "ignored too",
		"subdir.json/x.txt": "ignored: a directory",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	list, err := f.List(ctx)
	if len(list) != 1 || list[0].Key != "https://a.example/" {
		t.Errorf("List = %v, want the one good grant", list)
	}
	if !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("List err = %v, want store.ErrCorrupt", err)
	}
	msg := err.Error()
	for _, name := range []string{"zzz.json", "copy-of-a.json"} {
		if !strings.Contains(msg, filepath.Join(dir, name)) {
			t.Errorf("List error %q does not name %s", msg, name)
		}
	}
	for _, name := range []string{"notes.txt", ".tmp-", "subdir"} {
		if strings.Contains(msg, name) {
			t.Errorf("List error %q mentions %s, which should be ignored", msg, name)
		}
	}
	// Each bad file is one joined error.
	if j, ok := err.(interface{ Unwrap() []error }); !ok || len(j.Unwrap()) != 2 {
		t.Errorf("List err = %#v, want 2 joined errors", err)
	}
}

func TestFile_CorruptRegistration(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"garbage", "\x00garbage"},
		{"grant format", `{"format":"evergrant.grant/v1","grant":{"key":"x"}}`},
		{"no registration", `{"format":"evergrant.registration/v1"}`},
		{"another pair", `{"format":"evergrant.registration/v1","registration":{"issuer":"https://other/","redirect_uri":"x"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFile(t)
			const iss, redir = "https://as.example/", "http://127.0.0.1/cb"
			path := f.RegistrationPath(iss, redir)
			os.WriteFile(path, []byte(tc.content), 0o600)
			_, err := f.LoadRegistration(t.Context(), iss, redir)
			checkCorrupt(t, "LoadRegistration", err, path, "no secret here")
		})
	}
}

// TestFile_LockSharedWithOSLock checks that the OS lock is taken: a lock
// held on the lock file directly (as another process would) makes Lock
// wait.
func TestFile_LockSharedWithOSLock(t *testing.T) {
	f := newTestFile(t)
	const key = "https://mcp.example.com/mcp"
	release, err := store.TryLockFile(f.LockPath(key))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" && runtime.GOOS != "windows" && !strings.HasSuffix(runtime.GOOS, "bsd") && runtime.GOOS != "dragonfly" {
		release()
		t.Skip("no OS lock on " + runtime.GOOS)
	}
	waiter := make(chan error, 1)
	go func() {
		unlock, err := f.Lock(t.Context(), key)
		if err == nil {
			unlock()
		}
		waiter <- err
	}()
	select {
	case err := <-waiter:
		release()
		t.Fatalf("Lock returned (err %v) while the OS lock was held", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	select {
	case err := <-waiter:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock did not return after the OS lock was released")
	}
}

// Environment of the helper process run by the cross-process tests.
const (
	helperEnv    = "EVERGRANT_STORE_HELPER" // "refresh" or "hold"
	helperDirEnv = "EVERGRANT_STORE_DIR"
	helperKeyEnv = "EVERGRANT_STORE_KEY"
)

func helperCommand(t *testing.T, mode, dir, key string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperDirEnv+"="+dir, helperKeyEnv+"="+key)
	cmd.Stderr = &strings.Builder{}
	return cmd
}

// TestHelperProcess is not a test: it is the child process of
// TestFile_LockAcrossProcesses and TestFile_LockReleasedWhenHolderDies.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	err := helperMain(mode, os.Getenv(helperDirEnv), os.Getenv(helperKeyEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func helperMain(mode, dir, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.OpenFile(dir)
	if err != nil {
		return err
	}
	start := time.Now()
	unlock, err := s.Lock(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	waited := time.Since(start)
	switch mode {
	case "hold":
		fmt.Println("locked")
		time.Sleep(time.Minute) // until killed
		return errors.New("not killed")
	case "refresh":
		// The protocol of docs/design.md#client-rule-7: reload under the lock and
		// refresh only if nobody else did.
		g, err := s.Load(ctx, key)
		if err != nil {
			return err
		}
		if g.AccessToken != "old" {
			fmt.Printf("reused %s waited=%v\n", g.AccessToken, waited)
			return nil
		}
		time.Sleep(200 * time.Millisecond) // the token request
		counter := filepath.Join(dir, "refreshes")
		b, _ := os.ReadFile(counter)
		n, _ := strconv.Atoi(string(b))
		if err := os.WriteFile(counter, []byte(strconv.Itoa(n+1)), 0o600); err != nil {
			return err
		}
		g.AccessToken = fmt.Sprintf("new-%d", os.Getpid())
		g.RefreshToken = "rotated"
		if err := s.Save(ctx, g); err != nil {
			return err
		}
		fmt.Printf("refreshed waited=%v\n", waited)
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// TestFile_LockAcrossProcesses is docs/design.md#client-rule-7 across
// processes: two processes that both saw the token "old" fail run lock,
// reload, refresh if still old, save, unlock; exactly one refreshes.
func TestFile_LockAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	f := newTestFile(t)
	const key = "https://mcp.example.com/mcp"
	if err := f.Save(t.Context(), &store.Grant{Key: key, AccessToken: "old", RefreshToken: "r0"}); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	outs := make([]*strings.Builder, 2)
	for i := range 2 {
		cmd := helperCommand(t, "refresh", f.Dir(), key)
		outs[i] = &strings.Builder{}
		cmd.Stdout = outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	refresher := 0
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("child %d: %v; stderr:\n%s", i, err, cmd.Stderr)
		}
		out := outs[i].String()
		t.Logf("child %d (pid %d): %s", i, cmd.Process.Pid, strings.TrimSpace(out))
		if strings.HasPrefix(out, "refreshed") {
			if refresher != 0 {
				t.Errorf("both children refreshed")
			}
			refresher = cmd.Process.Pid
		}
	}
	if refresher == 0 {
		t.Fatal("no child refreshed")
	}
	want := fmt.Sprintf("new-%d", refresher)
	for i := range cmds {
		if out := outs[i].String(); !strings.HasPrefix(out, "refreshed") && !strings.HasPrefix(out, "reused "+want+" ") {
			t.Errorf("child %d printed %q, want it to reuse %s", i, out, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(f.Dir(), "refreshes")); string(b) != "1" {
		t.Errorf("refresh counter = %q, want 1", b)
	}
	if g := mustLoad(t, f, key); g.AccessToken != want || g.RefreshToken != "rotated" {
		t.Errorf("stored grant has %q/%q, want %q/rotated", g.AccessToken, g.RefreshToken, want)
	}
}

// TestFile_LockReleasedWhenHolderDies checks that a lock held by a process
// is held against this one, and released when that process is killed.
func TestFile_LockReleasedWhenHolderDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	f := newTestFile(t)
	const key = "https://mcp.example.com/mcp"
	cmd := helperCommand(t, "hold", f.Dir(), key)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "locked\n" {
			t.Fatalf("child printed %q; stderr:\n%s", s, cmd.Stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child did not take the lock")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if unlock, err := f.Lock(ctx, key); !errors.Is(err, context.DeadlineExceeded) {
		if unlock != nil {
			unlock()
		}
		t.Fatalf("Lock while another process holds it = %v, want context.DeadlineExceeded", err)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	unlock, err := f.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	unlock()
	t.Logf("lock taken %v after the holder died", time.Since(start))
}

// fullGrant returns a grant with every field set.
func fullGrant(key string) *store.Grant {
	return &store.Grant{
		Key:                key,
		Resource:           key + "/resource",
		Issuer:             "https://as.example.com/tenant",
		TokenEndpoint:      "https://as.example.com/tenant/token",
		RevocationEndpoint: "https://as.example.com/tenant/revoke",
		ClientID:           "client-1",
		ClientSecret:       "secret-1",
		AuthMethod:         "client_secret_basic",
		AccessToken:        "at-" + key,
		TokenType:          "Bearer",
		Expiry:             time.Date(2031, 4, 5, 6, 7, 8, 123456789, time.UTC),
		RefreshToken:       "rt-" + key,
		Scopes:             []string{"files.read", "offline_access"},
	}
}

// fullRegistration returns a registration with every field set.
func fullRegistration(issuer, redirectURI string) *store.Registration {
	return &store.Registration{
		Issuer:       issuer,
		RedirectURI:  redirectURI,
		ClientID:     "client-" + issuer,
		ClientSecret: "secret-" + redirectURI,
		AuthMethod:   "client_secret_post",
		RedirectURIs: []string{redirectURI},
		CreatedAt:    time.Date(2029, 12, 31, 23, 59, 59, 1, time.UTC),
	}
}

func mustLoad(t *testing.T, s store.Store, key string) *store.Grant {
	t.Helper()
	g, err := s.Load(t.Context(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return g
}
