package client_test

// One refresh per grant across processes (docs/design.md#client-rule-7):
// two OS processes sharing a store.File send one refresh grant between
// them.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/store"
)

// Environment of the child processes.
const (
	pcEnvHelper = "EVERGRANT_PC_HELPER"
	pcEnvURL    = "EVERGRANT_PC_URL"
	pcEnvDir    = "EVERGRANT_PC_DIR"
	pcEnvID     = "EVERGRANT_PC_ID"
	// pcEnvSkew, when set, is how far ahead of the real time the child's
	// clock runs: its request finds the token about to expire (or expired)
	// and refreshes ahead of the expiry (docs/design.md#client-rule-8),
	// without a warm-up request.
	pcEnvSkew = "EVERGRANT_PC_SKEW"
)

// TestRule7_TwoProcessesShareFileStoreOneRefresh: two processes on one
// store.File that meet an expired token at once send one refresh grant
// between them, whether a 401 or the stored expiry told them
// (docs/design.md#client-rule-7, docs/design.md#client-rule-8).
func TestRule7_TwoProcessesShareFileStoreOneRefresh(t *testing.T) {
	for _, tc := range []struct {
		name string
		skew string
	}{
		{"after a 401", ""},
		// The child's clock is past the token's expiry: its request waits
		// for the refresh and goes out with the new token.
		{"proactive", "60m30s"},
		// The child's clock is inside the refresh margin: the token, still
		// valid, goes out while the refresh runs in the background.
		{"proactive in the background", "59m30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pcTwoProcesses(t, tc.skew)
		})
	}
}

// pcTwoProcesses runs two child processes on one store.File across an
// expiry: signalled by a 401, or (skew set) known from the stored expiry.
func pcTwoProcesses(t *testing.T, skew string) {
	proactive := skew != ""
	background := skew == "59m30s"
	dir := t.TempDir()
	fs, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fixture.New(t, fixture.Options{})
	tr := client.NewTransport(client.Config{Store: fs, Authorizer: &client.HeadlessAuthorizer{}})
	if err := tr.Authorize(t.Context(), st.URL); err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	g, err := tr.Grant(t.Context(), st.URL)
	if err != nil || g == nil {
		t.Fatalf("Grant: %v %v", g, err)
	}
	old := g.AccessToken
	// The refresh is slow, so the second process's 401 comes while the
	// first holds the lock.
	st.Faults().DelayToken(300 * time.Millisecond)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	type child struct {
		cmd    *exec.Cmd
		in     io.WriteCloser
		out    *bufio.Reader
		stderr bytes.Buffer
	}
	var children []*child
	for i := range 2 {
		c := &child{cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcessPCRefresh$", "-test.count=1")}
		c.cmd.Env = append(os.Environ(), pcEnvHelper+"=1", pcEnvURL+"="+st.URL, pcEnvDir+"="+dir, pcEnvID+"="+strconv.Itoa(100*(i+1)))
		if proactive {
			// The fixture's tokens live an hour: 59m30s later they are
			// inside the default refresh margin; 60m30s later, expired.
			c.cmd.Env = append(c.cmd.Env, pcEnvSkew+"="+skew)
		}
		c.cmd.Stderr = &c.stderr
		if c.in, err = c.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		out, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.out = bufio.NewReader(out)
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
	}
	// Each child is ready; without skew it has sent one request with the
	// original token and holds it.
	for i, c := range children {
		line, err := c.out.ReadString('\n')
		if strings.TrimSpace(line) != "ready" {
			c.cmd.Wait()
			t.Fatalf("child %d: %q, %v; stderr:\n%s", i, line, err, c.stderr.String())
		}
	}
	if got := st.Unauthorized(); got != 0 {
		t.Fatalf("401s before the expiry = %d", got)
	}
	// The original token expires; both children send at once.
	if !proactive {
		ccForceOld(st, old)
	}
	for _, c := range children {
		io.WriteString(c.in, "go\n")
		c.in.Close()
	}
	for i, c := range children {
		rest, _ := io.ReadAll(c.out)
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("child %d: %v; stdout %q; stderr:\n%s", i, err, rest, c.stderr.String())
		}
		t.Logf("child %d: %s", i, bytes.TrimSpace(rest))
	}

	if got := st.Refreshes(); got != 1 {
		t.Errorf("refresh grants at the token endpoint = %d, want 1", got)
	}
	want401 := 2 // each process sent the original token once
	if proactive {
		want401 = 0
	}
	if got := st.Unauthorized(); got != want401 {
		t.Errorf("401s = %d, want %d", got, want401)
	}
	fs2, err := store.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := client.ServerKey(st.URL)
	saved, err := fs2.Load(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if saved.AccessToken == old {
		t.Fatal("the store still holds the original access token")
	}
	// Both requests after the expiry carried the one refreshed token
	// (in the background case, both carried the still valid original
	// token, and the one refresh left the new one in the store).
	n := 0
	for _, r := range st.Requests() {
		if r.Status == http.StatusOK && r.Token != old {
			n++
			if r.Token != saved.AccessToken {
				t.Errorf("a request carried token %s, want the stored %s", fixture.TokenHash(r.Token), fixture.TokenHash(saved.AccessToken))
			}
		}
	}
	want := 2
	if background {
		want = 0
	}
	if n != want {
		t.Errorf("%d successful requests with a new token, want %d", n, want)
	}
}

// TestHelperProcessPCRefresh is a child process of
// TestRule7_TwoProcessesShareFileStoreOneRefresh
// (docs/design.md#client-rule-7); it does nothing in a normal test run.
func TestHelperProcessPCRefresh(t *testing.T) {
	if os.Getenv(pcEnvHelper) != "1" {
		t.Skip("helper process")
	}
	if err := pcChild(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func pcChild() error {
	url, dir := os.Getenv(pcEnvURL), os.Getenv(pcEnvDir)
	id, err := strconv.Atoi(os.Getenv(pcEnvID))
	if err != nil {
		return err
	}
	fs, err := store.OpenFile(dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := client.Config{Store: fs}
	var skew time.Duration
	if v := os.Getenv(pcEnvSkew); v != "" {
		if skew, err = time.ParseDuration(v); err != nil {
			return err
		}
		cfg.Now = testclock.New(time.Now().Add(skew)).Now
	}
	tr := client.NewTransport(cfg)
	hc := &http.Client{Transport: tr}
	if skew == 0 {
		resp, data, err := ccPost(ctx, hc, url, id)
		if err != nil {
			return fmt.Errorf("first request: %w", err)
		}
		if err := ccCheckEcho(resp, data, id); err != nil {
			return fmt.Errorf("first request: %w", err)
		}
	}
	fmt.Println("ready")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if strings.TrimSpace(line) != "go" {
		return fmt.Errorf("waiting for go: %q, %v", line, err)
	}
	resp, data, err := ccPost(ctx, hc, url, id+1)
	if err != nil {
		return fmt.Errorf("request after the expiry: %w", err)
	}
	if err := ccCheckEcho(resp, data, id+1); err != nil {
		return fmt.Errorf("request after the expiry: %w", err)
	}
	// A refresh started in the background must be saved before the
	// process exits.
	if err := tr.Wait(ctx); err != nil {
		return fmt.Errorf("wait for the background refresh: %w", err)
	}
	s := tr.Stats()
	fmt.Printf("done refreshes=%d retries=%d\n", s.Refreshes, s.Retries)
	wantRetries := int64(1) // after the 401
	if skew != 0 {
		wantRetries = 0 // refreshed before sending
	}
	if s.Retries != wantRetries {
		return fmt.Errorf("stats %+v: want %d retries", s, wantRetries)
	}
	return nil
}
