package stack_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/nodejs"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/internal/testclock"
)

// tsMCPPost is one POST to the MCP endpoint as the script's fetch saw it.
type tsMCPPost struct {
	Method               string          `json:"method"`
	ID                   json.RawMessage `json:"id"`
	Status               int             `json:"status"`
	WWWAuthenticateError string          `json:"www_authenticate_error"`
}

// tsSearch is the outcome of one upstream_search call in the script.
type tsSearch struct {
	OK                bool        `json:"ok"`
	IsError           bool        `json:"is_error"`
	Results           []string    `json:"results"`
	Error             string      `json:"error"`
	ErrorName         string      `json:"error_name"`
	UnauthorizedError bool        `json:"unauthorized_error"`
	MCPPosts          []tsMCPPost `json:"mcp_posts"`
}

// tsScriptCounts is what the script counted (its fetch wrapper and provider).
type tsScriptCounts struct {
	RedirectsToAuthorization int `json:"redirects_to_authorization"`
	AuthorizationCodeGrants  int `json:"authorization_code_grants"`
	RefreshGrants            int `json:"refresh_grants"`
	SaveTokens               int `json:"save_tokens"`
	AccessTokenChanges       int `json:"access_token_changes"`
	RefreshTokenChanges      int `json:"refresh_token_changes"`
}

// tsRefreshFacts is what interop/node/mcp_client_refresh.mjs reports: public
// values, counts and booleans, never token material.
type tsRefreshFacts struct {
	NodeVersion   string `json:"node_version"`
	SDKVersion    string `json:"sdk_version"`
	Authorization struct {
		FirstConnectUnauthorized bool   `json:"first_connect_unauthorized"`
		Status                   int    `json:"status"`
		RedirectsToRedirectURI   bool   `json:"redirects_to_redirect_uri"`
		StateMatches             bool   `json:"state_matches"`
		CodePresent              bool   `json:"code_present"`
		Error                    string `json:"error"`
	} `json:"authorization"`
	TokensAfterAuthorization struct {
		RefreshTokenPresent bool   `json:"refresh_token_present"`
		TokenType           string `json:"token_type"`
	} `json:"tokens_after_authorization"`
	Tools  []string `json:"tools"`
	Whoami struct {
		IsError bool   `json:"is_error"`
		Subject string `json:"subject"`
	} `json:"whoami"`
	FirstSearch        tsSearch       `json:"first_search"`
	CountsBeforeSignal tsScriptCounts `json:"counts_before_signal"`
	SecondSearch       tsSearch       `json:"second_search"`
	ThirdSearch        *tsSearch      `json:"third_search"`
	Counts             tsScriptCounts `json:"counts"`
}

// runRefreshScript runs interop/node/mcp_client_refresh.mjs against mcpURL.
// When the script prints "READY" (its first search done) it calls signal,
// then writes "GO" to the script's stdin. It returns the script's last line
// of stdout (its JSON facts). Env.Run takes no stdin, hence exec here.
func runRefreshScript(t *testing.T, ctx context.Context, node nodejs.Env, mcpURL string, signal func()) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, node.Node, "mcp_client_refresh.mjs", "--mcp", mcpURL, "--query", "refresh")
	cmd.Dir = node.Dir
	cmd.Env = os.Environ()
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting node: %v", err)
	}
	var lines []string
	sawReady := false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "READY" && !sawReady {
			sawReady = true
			signal()
			if _, err := io.WriteString(stdin, "GO\n"); err != nil {
				t.Errorf("writing GO to the script: %v", err)
			}
			stdin.Close()
			continue
		}
		lines = append(lines, line)
	}
	stdin.Close()
	waitErr := cmd.Wait()
	for l := range strings.Lines(stderr.String()) {
		t.Log("node: " + strings.TrimRight(l, "\n"))
	}
	if waitErr != nil || !sawReady || len(lines) == 0 {
		status := fmt.Sprint(waitErr)
		if ctx.Err() != nil {
			status += fmt.Sprintf(" (%v)", ctx.Err())
		}
		t.Fatalf("node mcp_client_refresh.mjs: exit %s, READY seen %v\nstdout:\n%s\nstderr:\n%s",
			status, sawReady, strings.Join(lines, "\n"), stderr.Bytes())
	}
	return []byte(lines[len(lines)-1])
}

// docs/design.md#signal-rule-1 with the MCP TypeScript SDK's client: a
// tool handler's expiry signal (upstream_search when the fake upstream
// rejects the token) reaches the TypeScript SDK's
// StreamableHTTPClientTransport as HTTP 401 invalid_token on that very
// POST; the SDK refreshes with its refresh token (one refresh_token grant,
// no new interactive authorization) and sends the same JSON-RPC message
// again, which succeeds. Needs scripts/setup-node.sh.
func TestInteropTypeScriptSDKClient_ExpirySignalRefreshesAndRetries(t *testing.T) {
	node := nodejs.Require(t)
	for _, jsonResp := range []bool{false, true} {
		name := "SSE"
		if jsonResp {
			name = "JSON"
		}
		t.Run(name, func(t *testing.T) {
			clk := testclock.New(time.Now())
			ts := httptest.NewUnstartedServer(nil)
			base := "http://" + ts.Listener.Addr().String()
			st, err := stack.New(stack.Config{BaseURL: base, AutoApprove: true, UpstreamTokenMaxAge: 10 * time.Minute,
				JSONResponse: jsonResp, Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{h: st.Handler}
			ts.Config.Handler = rec
			ts.Start()
			defer ts.Close()

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var atSignal recorderCounts
			out := runRefreshScript(t, ctx, node, st.MCPURL, func() {
				atSignal = rec.counts()
				clk.Advance(11 * time.Minute) // the upstream now finds the token too old
			})
			t.Logf("mcp_client_refresh.mjs: %s", out)
			var f tsRefreshFacts
			if err := json.Unmarshal(out, &f); err != nil {
				t.Fatalf("decoding the script's output: %v", err)
			}
			t.Logf("TypeScript SDK %s on Node %s", f.SDKVersion, f.NodeVersion)
			end := rec.counts()

			// Authorization and the calls before the signal.
			a := f.Authorization
			if !a.FirstConnectUnauthorized || a.Status != http.StatusFound || !a.RedirectsToRedirectURI || !a.StateMatches || !a.CodePresent {
				t.Fatalf("interactive authorization: %+v", a)
			}
			if !f.TokensAfterAuthorization.RefreshTokenPresent {
				t.Fatal("no refresh token after the authorization")
			}
			if !slices.Contains(f.Tools, "whoami") || !slices.Contains(f.Tools, "upstream_search") {
				t.Errorf("tools listed: %q", f.Tools)
			}
			if f.Whoami.IsError || f.Whoami.Subject != "demo-user" {
				t.Errorf("whoami: %+v, want subject demo-user", f.Whoami)
			}
			if !f.FirstSearch.OK || !slices.Contains(f.FirstSearch.Results, "result 1 for refresh") {
				t.Fatalf("first search: %+v", f.FirstSearch)
			}
			if atSignal.refreshes != 0 || f.CountsBeforeSignal.RefreshGrants != 0 {
				t.Fatalf("refresh grants before the upstream rejects: server %d, script %d", atSignal.refreshes, f.CountsBeforeSignal.RefreshGrants)
			}

			// The recovery, as the script saw it.
			s := f.SecondSearch
			if !s.OK {
				if f.ThirdSearch != nil && f.ThirdSearch.OK {
					// Would be a finding about the TypeScript SDK, not our server:
					// it refreshed but did not send the signalled call again.
					t.Fatalf("TypeScript SDK did not retry the signalled call (it failed: %s), though the following call succeeded", s.Error)
				}
				t.Fatalf("second search failed: %+v; third: %+v", s, f.ThirdSearch)
			}
			if !slices.Contains(s.Results, "result 1 for refresh") {
				t.Errorf("second search results: %q", s.Results)
			}
			if len(s.MCPPosts) != 2 || s.MCPPosts[0].Status != 401 || s.MCPPosts[0].WWWAuthenticateError != "invalid_token" ||
				s.MCPPosts[1].Status != 200 || !bytes.Equal(s.MCPPosts[0].ID, s.MCPPosts[1].ID) {
				t.Errorf("the script's MCP POSTs for the second search: %+v, want 401 invalid_token then 200 with the same id", s.MCPPosts)
			}
			c := f.Counts
			// saveTokens: once after the code grant, once after the refresh,
			// which replaced the access token and rotated the refresh token.
			if c.RefreshGrants != 1 || c.SaveTokens != 2 || c.AccessTokenChanges != 1 || c.RefreshTokenChanges != 1 ||
				c.RedirectsToAuthorization != 1 || c.AuthorizationCodeGrants != 1 {
				t.Errorf("script counts %+v: want 1 refresh grant (2 saved token sets, 1 change of each token), 1 redirect to authorization, 1 code grant", c)
			}

			// The recovery, as the server saw it.
			if n := end.refreshes - atSignal.refreshes; n != 1 {
				t.Errorf("refresh_token grants at the token endpoint after the signal: %d, want 1", n)
			}
			if end.authorizeGets != 1 || end.codeGrants != 1 {
				t.Errorf("interactive authorizations: %d GET %s, %d code grants; want 1 each (no second authorization)",
					end.authorizeGets, authserver.PathAuthorize, end.codeGrants)
			}
			rec.mu.Lock()
			ex := append([]exchange(nil), rec.ex[atSignal.mcpPosts:]...)
			refreshRes := append([]string(nil), rec.refreshRes...)
			rec.mu.Unlock()
			if len(refreshRes) == 1 && refreshRes[0] != st.MCPURL {
				t.Errorf("refresh grant resource = %q, want %q", refreshRes[0], st.MCPURL)
			}
			var sts []int
			for _, e := range ex {
				sts = append(sts, e.status)
			}
			if len(ex) != 2 || ex[0].status != http.StatusUnauthorized || ex[1].status != http.StatusOK {
				t.Fatalf("MCP endpoint saw %d POSTs after the signal (statuses %v), want the signalled 401 then 200", len(ex), sts)
			}
			if w := ex[0].wwwAuth; !strings.HasPrefix(w, "Bearer ") || !strings.Contains(w, `error="invalid_token"`) || !strings.Contains(w, "upstream") {
				t.Errorf("401 WWW-Authenticate: %q, want Bearer error=\"invalid_token\" with the upstream's description", w)
			}
			if !bytes.Equal(ex[0].body, ex[1].body) {
				t.Errorf("retried call differs:\n%s\n%s", ex[0].body, ex[1].body)
			}
		})
	}
}
