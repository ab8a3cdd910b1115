package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// demoSummary is the part of `evergrant demo --json` the acceptance test
// reads.
type demoSummary struct {
	OK           bool  `json:"ok"`
	Requests     int64 `json:"requests"`
	Unauthorized int64 `json:"unauthorized"`
	Refreshes    int64 `json:"refreshes"`
	Retries      int64 `json:"retries"`
	NeedsReauth  *int  `json:"needs_reauth"`
	Failed       *int  `json:"failed"`
	Burst        *struct {
		Calls     int `json:"calls"`
		Refreshes int `json:"refreshes"`
		Failed    int `json:"failed"`
	} `json:"burst"`
	UpstreamSignal *struct {
		ID          json.RawMessage `json:"id"`
		Statuses    []int           `json:"statuses"`
		IDPreserved bool            `json:"id_preserved"`
	} `json:"upstream_signal"`
	NeedsReauthError *struct {
		Reason string `json:"reason"`
		Hint   string `json:"hint"`
	} `json:"needs_reauth_error"`
	Acts []struct {
		Act       int    `json:"act"`
		Name      string `json:"name"`
		OK        bool   `json:"ok"`
		Error     string `json:"error"`
		Refreshes int64  `json:"refreshes"`
		Retries   int64  `json:"retries"`
	} `json:"acts"`
	Problems []string `json:"problems"`
}

func runDemoInProcess(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code = run(ctx, append([]string{"demo"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// The acceptance test of issue 5, deliverable 1: the story as --json sums
// it up.
func TestDemo_JSONSummary(t *testing.T) {
	code, stdout, stderr := runDemoInProcess(t, "--json")
	if code != exitOK {
		t.Fatalf("exit %d, want 0\nstderr:\n%s\nstdout:\n%s", code, stderr, stdout)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	var s demoSummary
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, stdout)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("stdout holds more than one JSON object:\n%s", stdout)
	}
	if !s.OK || len(s.Problems) > 0 {
		t.Errorf("ok=%v problems=%q", s.OK, s.Problems)
	}
	if s.Requests == 0 || s.Unauthorized == 0 || s.Retries == 0 {
		t.Errorf("requests=%d unauthorized=%d retries=%d, want all > 0", s.Requests, s.Unauthorized, s.Retries)
	}
	if len(s.Acts) != 5 {
		t.Fatalf("%d acts, want 5: %+v", len(s.Acts), s.Acts)
	}
	for _, a := range s.Acts {
		if !a.OK {
			t.Errorf("act %d (%s) failed: %s", a.Act, a.Name, a.Error)
		}
	}
	// Act 2: at least one refresh after the access token expired, and the
	// call retried.
	if a := s.Acts[1]; a.Refreshes < 1 || a.Retries < 1 {
		t.Errorf("act 2 (%s): %d refreshes, %d retries; want a refresh and a retry after expiry", a.Name, a.Refreshes, a.Retries)
	}
	// Act 3: the upstream-signalled call recovered with its original id.
	if u := s.UpstreamSignal; u == nil {
		t.Error("no upstream_signal")
	} else if !u.IDPreserved || len(u.ID) == 0 || len(u.Statuses) != 2 || u.Statuses[0] != 401 || u.Statuses[1] != 200 {
		t.Errorf("upstream_signal: id %s, id_preserved %v, statuses %v; want the id kept across 401 then 200", u.ID, u.IDPreserved, u.Statuses)
	}
	// Act 4: one refresh for the whole burst, no failure.
	if b := s.Burst; b == nil {
		t.Error("no burst")
	} else if b.Calls != 20 || b.Refreshes != 1 || b.Failed != 0 {
		t.Errorf("burst %+v, want 20 calls, 1 refresh, 0 failed", *b)
	}
	// Act 5: exactly one needs_reauth, reported with the way back.
	if s.NeedsReauth == nil || *s.NeedsReauth != 1 {
		t.Errorf("needs_reauth = %v, want exactly 1", s.NeedsReauth)
	}
	if r := s.NeedsReauthError; r == nil || r.Reason != "refresh_rejected" || !strings.HasPrefix(r.Hint, "sign in again with: evergrant login http://127.0.0.1:") {
		t.Errorf("needs_reauth_error %+v", r)
	}
	if s.Failed == nil || *s.Failed != 0 {
		t.Errorf("failed = %v, want 0", s.Failed)
	}
	if s.Refreshes < 4 {
		t.Errorf("refreshes = %d, want at least one per act 2–5", s.Refreshes)
	}
	assertNoTokenMaterial(t, "stdout", stdout)
	assertNoTokenMaterial(t, "stderr", stderr)
}

// The human output: a timeline with the challenges, the rotations, the
// retries and the needs_reauth with its hint, a summary, and no secrets.
func TestDemo_Timeline(t *testing.T) {
	for _, args := range [][]string{nil, {"--verbose"}} {
		t.Run(strings.Join(append([]string{"demo"}, args...), " "), func(t *testing.T) {
			code, stdout, stderr := runDemoInProcess(t, args...)
			if code != exitOK {
				t.Fatalf("exit %d, want 0\nstderr:\n%s\nstdout:\n%s", code, stderr, stdout)
			}
			for _, want := range []*regexp.Regexp{
				regexp.MustCompile(`(?m)^\+\d{2}:\d{2}\.\d{3}  act 1  POST \S+ id=\d+ -> 401  WWW-Authenticate: Bearer resource_metadata="http://127\.0\.0\.1:\d+/`),
				regexp.MustCompile(`(?m)^\+\d{2}:\d{2}\.\d{3}  act 1  signed in`),
				regexp.MustCompile(`(?m)^\+\d{2}:\d{2}\.\d{3}  act 2  POST tools/call whoami id=(\d+) -> 401  WWW-Authenticate: Bearer error="invalid_token"`),
				regexp.MustCompile(`(?m)^\+\d{2}:\d{2}\.\d{3}  act 2  refresh after a 401: ok, refresh token rotated`),
				regexp.MustCompile(`(?m)^\+\d{2}:\d{2}\.\d{3}  act 2  retry POST tools/call whoami id=\d+ -> 200$`),
				regexp.MustCompile(`(?m)act 3  POST tools/call upstream_search id=\d+ -> 401  WWW-Authenticate: Bearer error="invalid_token", error_description="the upstream API rejected`),
				regexp.MustCompile(`(?m)act 3  retry POST tools/call upstream_search id=\d+ -> 200$`),
				regexp.MustCompile(`(?m)act 4  burst: 20 calls, 20 answered, 0 failed; \d+ × 401, 1 refresh, \d+ retries$`),
				regexp.MustCompile(`(?m)act 5  refresh after a 401: rejected: .*invalid_grant`),
				regexp.MustCompile(`(?m)act 5  needs_reauth: refresh_rejected \(invalid_grant\)`),
				regexp.MustCompile(`(?m)act 5  host: whoami failed: needs_reauth: refresh_rejected \(invalid_grant\); sign in again with: evergrant login http://127\.0\.0\.1:\d+/mcp$`),
				regexp.MustCompile(`(?m)^total +\d+ +\d+ +\d+ +\d+ +1$`),
				regexp.MustCompile(`(?m)^burst: 20 calls, 1 refresh, 0 failed$`),
				regexp.MustCompile(`(?m)^the story went as planned\.$`),
			} {
				if !want.MatchString(stdout) {
					t.Errorf("timeline lacks %s", want)
				}
			}
			// The retried upstream_search is the call that was refused.
			m := regexp.MustCompile(`act 3  POST tools/call upstream_search id=(\d+) -> 401`).FindStringSubmatch(stdout)
			if m == nil || !strings.Contains(stdout, "act 3  retry POST tools/call upstream_search id="+m[1]+" -> 200") {
				t.Errorf("act 3: the retry does not carry the refused call's id")
			}
			if args == nil {
				if strings.Contains(stdout, "POST /token") {
					t.Error("the authorization server requests are for --verbose")
				}
			} else if !strings.Contains(stdout, "POST /token -> 200") || !strings.Contains(stdout, "POST /token -> 400") {
				t.Error("--verbose lacks the token endpoint requests")
			}
			assertNoTokenMaterial(t, "stdout", stdout)
			assertNoTokenMaterial(t, "stderr", stderr)
		})
	}
}

// longRun matches what a token, a code or a client secret would leave in
// the output: a long base64url run. mixedRun finds shorter ones: random
// base64url has upper and lower case letters and digits, words and paths
// rarely do.
var (
	longRun  = regexp.MustCompile(`[A-Za-z0-9_-]{32,}`)
	mixedRun = regexp.MustCompile(`[A-Za-z0-9_-]{16,}`)
	upper    = regexp.MustCompile(`[A-Z]`)
	lower    = regexp.MustCompile(`[a-z]`)
	digit    = regexp.MustCompile(`[0-9]`)
)

func assertNoTokenMaterial(t *testing.T, name, s string) {
	t.Helper()
	if strings.Contains(s, "eyJ") {
		t.Errorf("%s contains a JWT prefix", name)
	}
	if m := longRun.FindAllString(s, 3); m != nil {
		t.Errorf("%s contains base64url runs that may be token material: %q", name, m)
	}
	for _, r := range mixedRun.FindAllString(s, -1) {
		if upper.MatchString(r) && lower.MatchString(r) && digit.MatchString(r) {
			t.Errorf("%s contains %q, which looks like token material", name, r)
		}
	}
	// The demo's redaction is a safety net; it must not have been needed.
	if strings.Contains(s, "[redacted]") {
		t.Errorf("%s: something token-like had to be redacted", name)
	}
	// Token response members (but not the reason no_refresh_token).
	for _, word := range []string{`"access_token"`, `"refresh_token"`, "access_token=", "refresh_token=", "Bearer ey", "code="} {
		if strings.Contains(s, word) {
			t.Errorf("%s contains %q", name, word)
		}
	}
}

func TestDemo_Flags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"demo", "--help"}, &out, &errb); code != exitOK {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"Usage: evergrant demo", "-json", "-verbose", "needs_reauth", "Exit status"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
	for _, args := range [][]string{{"demo", "--bogus"}, {"demo", "extra"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUsage || errb.Len() == 0 {
			t.Errorf("%q: exit %d (want %d), stderr %q", args, code, exitUsage, errb.String())
		}
	}
}

// A story that cannot be played (here: the context is already done) is a
// failure: exit 1, ok false, the reason on stderr.
func TestDemo_FailureExits1(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"demo", "--json"}, &out, &errb); code != exitError {
		t.Fatalf("exit %d, want %d", code, exitError)
	}
	var s demoSummary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("stdout: %v\n%s", err, out.String())
	}
	if s.OK || len(s.Problems) == 0 {
		t.Errorf("ok=%v problems=%q, want a failed story", s.OK, s.Problems)
	}
	if !strings.Contains(errb.String(), "did not go as planned") || !strings.Contains(errb.String(), "not run") {
		t.Errorf("stderr does not say why:\n%s", errb.String())
	}
}

// `go run ./cmd/evergrant demo`, exactly as the README says, from the
// module root.
func TestDemo_GoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/evergrant", "demo")
	cmd.Dir = "../.."
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("go run ./cmd/evergrant demo: %v\nstderr:\n%s\nstdout:\n%s", err, errb.String(), out.String())
	}
	if !strings.Contains(out.String(), "the story went as planned.") {
		t.Errorf("stdout:\n%s", out.String())
	}
	assertNoTokenMaterial(t, "stdout", out.String())
}
