package check

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/nodejs"
)

// recordedTSFile holds what `check client` found the TypeScript SDK's client
// to do.
const recordedTSFile = "testdata/client-typescript-sdk.json"

// tsClientScript is the TypeScript SDK client under the conformance
// contract, in interop/node.
const tsClientScript = "conformance_client.mjs"

// Details are recorded for readers; what varies from run to run in them is
// replaced: the fixture's port and measured durations.
var (
	recordedPortRE     = regexp.MustCompile(`http://127\.0\.0\.1:\d+`)
	recordedDurationRE = regexp.MustCompile(`\b\d+(?:\.\d+)?(?:ns|µs|ms)\b|\b\d+\.\d+s\b`)
)

func normalizeRecordedDetail(s string) string {
	s = recordedPortRE.ReplaceAllString(s, "http://127.0.0.1:PORT")
	return recordedDurationRE.ReplaceAllStringFunc(s, func(d string) string {
		return "N" + strings.TrimLeft(d, "0123456789.")
	})
}

// tsSDKVersion is the version of @modelcontextprotocol/sdk installed in
// interop/node.
func tsSDKVersion(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk", "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil || pkg.Version == "" {
		t.Fatalf("@modelcontextprotocol/sdk package.json: no version (%v)", err)
	}
	return "@modelcontextprotocol/sdk " + pkg.Version
}

// The recorded comparison of issue 6: `check client` against a client built
// on the MCP TypeScript SDK (interop/node/conformance_client.mjs: Client,
// StreamableHTTPClientTransport, an in-memory OAuthClientProvider that
// authorizes headlessly). What it does is recorded in testdata; a change of
// an outcome, of the set of scenarios or of the SDK version fails until the
// file is rewritten with `go test ./internal/check -run Recorded -update`.
func TestRecordedTypeScriptSDKClient(t *testing.T) {
	t.Parallel()
	env := nodejs.Require(t)
	script := filepath.Join(env.Dir, tsClientScript)
	if _, err := os.Stat(script); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	var out bytes.Buffer
	var mu sync.Mutex
	rep, err := CheckClient(ctx, ClientOptions{
		Command:  []string{env.Node, script},
		Parallel: len(ClientScenarios()),
		Timeout:  15 * time.Second,
		Stderr:   &lockedWriter{w: &out, mu: &mu},
	})
	if err != nil {
		t.Fatalf("CheckClient: %v", err)
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	clientOutput := func() string {
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}

	got := recordedRun{
		About: "evergrant check client against interop/node/" + tsClientScript + ": a client built on the MCP TypeScript SDK " +
			"as an ordinary host uses it (Client, StreamableHTTPClientTransport, an in-memory OAuthClientProvider implementing " +
			"invalidateCredentials whose redirectToAuthorization fetches the authorization URL and keeps the code from the Location; " +
			"connect, finishAuth, reconnect once, wait for the SDK's event stream GET to be answered (so that it does not race the " +
			"first request; see the script), then tools/list and tools/call of each tool, everything else left to the SDK; " +
			"exit 1 on any failure). Outcomes and the SDK version are compared; details are recorded for readers, " +
			"with the port and measured durations replaced. Rewrite: go test ./internal/check -run Recorded -update",
		SDK: tsSDKVersion(t, env.Dir),
	}
	for _, r := range rep.Results {
		got.Results = append(got.Results, struct {
			Scenario string  `json:"scenario"`
			Outcome  Outcome `json:"outcome"`
			Detail   string  `json:"detail"`
		}{r.Scenario, r.Outcome, normalizeRecordedDetail(r.Detail)})
	}
	// The fixture's access tokens are JWTs; none may reach the output.
	if strings.Contains(clientOutput(), "eyJ") {
		t.Errorf("the client's output looks like it holds a token:\n%s", clientOutput())
	}

	if updating() {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(got); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(recordedTSFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(recordedTSFile, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s\n%s", recordedTSFile, table.String())
		return
	}

	data, err := os.ReadFile(recordedTSFile)
	if err != nil {
		t.Fatalf("%v (record it with: go test ./internal/check -run Recorded -update)", err)
	}
	var want recordedRun
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("%s: %v", recordedTSFile, err)
	}
	var diffs []string
	if got.SDK != want.SDK {
		diffs = append(diffs, fmt.Sprintf("SDK: now %s, recorded %s", got.SDK, want.SDK))
	}
	type entry struct {
		outcome Outcome
		detail  string
	}
	recorded := map[string]entry{}
	for _, r := range want.Results {
		recorded[r.Scenario] = entry{r.Outcome, r.Detail}
	}
	now := map[string]bool{}
	for _, r := range got.Results {
		now[r.Scenario] = true
		w, ok := recorded[r.Scenario]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: now %s (%s), not recorded", r.Scenario, r.Outcome, r.Detail))
		case w.outcome != r.Outcome:
			diffs = append(diffs, fmt.Sprintf("%s: now %s (%s), recorded %s (%s)", r.Scenario, r.Outcome, r.Detail, w.outcome, w.detail))
		case w.detail != r.Detail:
			// Same outcome, other words: not a failure, but worth a look.
			t.Logf("%s: %s as recorded, but the detail now reads %q (recorded %q)", r.Scenario, r.Outcome, r.Detail, w.detail)
		}
	}
	for _, r := range want.Results {
		if !now[r.Scenario] {
			diffs = append(diffs, fmt.Sprintf("%s: recorded %s, no longer run", r.Scenario, r.Outcome))
		}
	}
	if len(diffs) > 0 {
		t.Errorf("`check client` against the TypeScript SDK client differs from %s:\n  %s\n"+
			"if the change is intended, record it with: go test ./internal/check -run Recorded -update\n\nnow:\n%s\nclient output:\n%s",
			recordedTSFile, strings.Join(diffs, "\n  "), table.String(), clientOutput())
		return
	}
	t.Logf("as recorded in %s (%s):\n%s", recordedTSFile, got.SDK, table.String())
}
