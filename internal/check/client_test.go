package check

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Binaries the client tests run, built once per test binary.
var clientBins struct {
	once      sync.Once
	dir       string
	err       error
	out       []byte
	cleanupMu sync.Mutex
}

// buildClients builds conformance/client (evergrant's client under the
// conformance contract) and internal/check/badclient (the deliberately
// wrong clients) and returns their paths.
func buildClients(t *testing.T) (conformance, bad string) {
	t.Helper()
	clientBins.once.Do(func() {
		dir, err := os.MkdirTemp("", "evergrant-check-client-")
		if err != nil {
			clientBins.err = err
			return
		}
		clientBins.dir = dir
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
			"github.com/evergrant/evergrant/conformance/client",
			"github.com/evergrant/evergrant/internal/check/badclient")
		clientBins.out, clientBins.err = cmd.CombinedOutput()
	})
	if clientBins.err != nil {
		t.Fatalf("go build: %v\n%s", clientBins.err, clientBins.out)
	}
	return filepath.Join(clientBins.dir, "client"), filepath.Join(clientBins.dir, "badclient")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if clientBins.dir != "" {
		os.RemoveAll(clientBins.dir)
	}
	os.Exit(code)
}

// checkOne runs one scenario and returns its result and the client's output.
func checkOne(t *testing.T, command []string, scenario string) (Result, string) {
	t.Helper()
	var out bytes.Buffer
	var mu sync.Mutex
	rep, err := CheckClient(context.Background(), ClientOptions{
		Command:   command,
		Scenarios: []string{scenario},
		Timeout:   15 * time.Second,
		Stderr:    &lockedWriter{w: &out, mu: &mu},
	})
	if err != nil {
		t.Fatalf("CheckClient: %v", err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("got %d results, want 1", len(rep.Results))
	}
	mu.Lock()
	defer mu.Unlock()
	return rep.Results[0], out.String()
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestClientScenariosConformanceClient: evergrant's own client passes every
// scenario (proactive refresh is informational and says it refreshed
// ahead). It runs them all in one CheckClient call, in parallel, and checks
// the report keeps the order of ClientScenarios.
func TestClientScenariosConformanceClient(t *testing.T) {
	t.Parallel()
	conf, _ := buildClients(t)
	var out bytes.Buffer
	var mu sync.Mutex
	var progress []string // OnResult calls are serialized
	rep, err := CheckClient(context.Background(), ClientOptions{
		Command:  []string{conf},
		Parallel: len(ClientScenarios()),
		Stderr:   &lockedWriter{w: &out, mu: &mu},
		OnResult: func(r Result) { progress = append(progress, r.Scenario) },
	})
	if err != nil {
		t.Fatalf("CheckClient: %v", err)
	}
	scenarios := ClientScenarios()
	if len(rep.Results) != len(scenarios) {
		t.Fatalf("got %d results, want %d", len(rep.Results), len(scenarios))
	}
	for i, sc := range scenarios {
		res := rep.Results[i]
		want := Pass
		if sc.Informational {
			want = Info
		}
		if res.Scenario != sc.Name || res.Rule != sc.Rule || res.Outcome != want {
			t.Errorf("result %d: %s %s (%s): %s; want %s %s (%s)", i, res.Outcome, res.Scenario, res.Rule, res.Detail, want, sc.Name, sc.Rule)
		}
		if sc.Name == "refresh/proactive" && !strings.Contains(res.Detail, "refreshed before the access token expired") {
			t.Errorf("proactive: %s", res.Detail)
		}
	}
	if len(progress) != len(scenarios) {
		t.Errorf("OnResult was called for %v, want every scenario", progress)
	}
	if rep.Failed() || rep.Target != conf {
		t.Errorf("report: failed=%v target=%q", rep.Failed(), rep.Target)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	if t.Failed() {
		mu.Lock()
		t.Logf("client output:\n%s", out.String())
		mu.Unlock()
	}
}

// TestClientScenariosGoodBadClient: the badclient without a fault passes
// every scenario, so the faults below are what the failures are about.
func TestClientScenariosGoodBadClient(t *testing.T) {
	_, bad := buildClients(t)
	for _, sc := range ClientScenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			res, out := checkOne(t, []string{bad, "-mode", "good"}, sc.Name)
			want := Pass
			if sc.Informational {
				want = Info
			}
			if res.Outcome != want {
				t.Errorf("%s: %s want %s: %s\nclient output:\n%s", sc.Name, res.Outcome, want, res.Detail, out)
			}
			if sc.Name == "refresh/proactive" && !strings.Contains(res.Detail, "did not refresh ahead of expiry") {
				t.Errorf("proactive: %s", res.Detail)
			}
			t.Logf("%s %s: %s", res.Outcome, sc.Name, res.Detail)
		})
	}
}

// TestClientScenariosCatchBadClients: each deliberately wrong client fails
// the scenario that covers its fault, with a detail that names the fault.
func TestClientScenariosCatchBadClients(t *testing.T) {
	_, bad := buildClients(t)
	cases := []struct {
		mode, scenario string
		detail         string // a part of the detail that names the fault
	}{
		{"loop", "refresh/retry-cap", "loops"},
		{"loop", "refresh/invalid-grant", "more refresh grants: loops"},
		{"loop", "refresh/as-unavailable", "loops"},
		{"loop", "refresh/as-server-error", "loops"},
		{"loop", "refresh/as-bad-gateway", "loops"},
		{"loop", "refresh/as-unreachable", "loops"},
		{"reauth-on-outage", "refresh/as-unavailable", "ran the authorization flow"},
		{"reauth-on-outage", "refresh/as-server-error", "ran the authorization flow"},
		{"reauth-on-outage", "refresh/as-bad-gateway", "ran the authorization flow"},
		{"reauth-on-outage", "refresh/as-unreachable", "ran the authorization flow"},
		{"reauth", "refresh/retry-same-id", "ran the authorization flow again"},
		{"change-id", "refresh/retry-same-id", "new JSON-RPC id"},
		{"refresh-on-403", "refresh/no-refresh-on-403", "refresh grant after 403 insufficient_scope"},
		{"refresh-on-bare-401", "refresh/no-refresh-on-401-without-error", "refresh grant after a 401 without error"},
		{"ignore-rotation", "refresh/rotation", "presented the first refresh token again"},
		{"no-resource", "refresh/resource-and-client-auth", "no resource parameter"},
		{"wrong-client-auth", "refresh/resource-and-client-auth", "authenticated with client_secret_basic, but the client registered client_secret_post"},
	}
	for _, c := range cases {
		t.Run(c.mode+"/"+c.scenario, func(t *testing.T) {
			t.Parallel()
			res, out := checkOne(t, []string{bad, "-mode", c.mode}, c.scenario)
			if res.Outcome != Fail || !strings.Contains(res.Detail, c.detail) {
				t.Errorf("%s against %s: %s: %s; want fail naming %q\nclient output:\n%s", c.mode, c.scenario, res.Outcome, res.Detail, c.detail, out)
			}
			t.Logf("%s %s (%s): %s", res.Outcome, c.scenario, c.mode, res.Detail)
		})
	}
}

// TestCheckClientErrors: what keeps the check from running is an error, not
// a result.
func TestCheckClientErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := CheckClient(ctx, ClientOptions{}); err == nil {
		t.Error("no command: no error")
	}
	if _, err := CheckClient(ctx, ClientOptions{Command: []string{"/nonexistent/evergrant-client"}}); err == nil {
		t.Error("missing command: no error")
	}
	self, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	_, err = CheckClient(ctx, ClientOptions{Command: []string{self}, Scenarios: []string{"refresh/nope"}})
	if err == nil || !strings.Contains(err.Error(), "refresh/retry-same-id") {
		t.Errorf("unknown scenario: %v; want an error listing the known ones", err)
	}
}

// TestCheckClientSilentAndHangingClients: a client that does nothing fails
// every scenario saying it never authorized; one that hangs is killed at the
// timeout, and the detail says so.
func TestCheckClientSilentAndHangingClients(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		cmd    []string
		detail string
	}{
		{"silent", []string{"true"}, "never completed an authorization"},
		// sh's child (sleep) must be killed with it, or the run waits for it.
		{"hanging", []string{"sh", "-c", "sleep 60", "sh"}, "was still running after 1s and was killed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if _, err := exec.LookPath(c.cmd[0]); err != nil {
				t.Skip(err)
			}
			start := time.Now()
			rep, err := CheckClient(context.Background(), ClientOptions{Command: c.cmd, Timeout: time.Second,
				Scenarios: []string{"refresh/retry-same-id", "refresh/proactive"}, Parallel: 2})
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s", d)
			}
			if r := rep.Results[0]; r.Outcome != Fail || !strings.Contains(r.Detail, c.detail) {
				t.Errorf("%s: %s: %s; want fail with %q", r.Scenario, r.Outcome, r.Detail, c.detail)
			}
			if r := rep.Results[1]; r.Outcome != Info {
				t.Errorf("%s: %s: %s; an informational scenario never fails", r.Scenario, r.Outcome, r.Detail)
			}
		})
	}
}
