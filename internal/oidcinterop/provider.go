// Package oidcinterop runs evergrant's client and resource server against
// panva's oidc-provider (npm), an OpenID Connect and OAuth 2.0 authorization
// server no one here wrote, started from interop/oidc-provider/server.mjs.
//
// The tests sign in through oidc-provider's own login and consent pages
// (with [FormAuthorizer]) and then check the refresh story across real
// 5-second access-token expiries; docs/interop.md records the settings.
// scripts/setup-node.sh installs Node 22 and the npm package; without them
// the tests skip, except under CI=true, where they fail.
package oidcinterop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/nodejs"
	"github.com/evergrant/evergrant/oauth"
)

// ResourceServerClientID is the client the resource servers authenticate
// as at oidc-provider's introspection endpoint.
const ResourceServerClientID = "mcp-resource-server"

// Options configures a Provider.
type Options struct {
	// JWTResources are MCP server URLs (RFC 8707 resource indicators) that
	// get JWT access tokens (RFC 9068) with aud = the URL.
	JWTResources []string
	// OpaqueResources are MCP server URLs that get opaque access tokens,
	// to be checked by introspection (RFC 7662).
	OpaqueResources []string
	// AccessTokenTTL is the lifetime of every access token, in whole
	// seconds; zero means 5 s.
	AccessTokenTTL time.Duration
}

// Provider is a running oidc-provider.
type Provider struct {
	// Issuer is its issuer identifier, http://127.0.0.1:PORT.
	Issuer string
	// Version is the version of the oidc-provider package.
	Version string
	// Metadata is its authorization server metadata.
	Metadata *oauth.AuthServerMetadata
	// ResourceServerSecret is the client secret of ResourceServerClientID.
	// It is a credential: never log it.
	ResourceServerSecret string
}

// Stats is what oidc-provider did for one client, counted from its events.
type Stats struct {
	// AuthorizationCode and RefreshToken count successful token requests
	// of each grant type.
	AuthorizationCode int `json:"authorization_code"`
	RefreshToken      int `json:"refresh_token"`
	// GrantErrors counts failed token requests by OAuth error code.
	GrantErrors map[string]int `json:"grant_errors"`
	// GrantsRevoked counts grants revoked, by revocation or because a
	// rotated refresh token was presented again.
	GrantsRevoked int `json:"grants_revoked"`
	// Authorizations counts authorization responses with a code.
	Authorizations int `json:"authorizations"`
	// LoginPrompts and ConsentPrompts count interactions started.
	LoginPrompts   int `json:"login_prompts"`
	ConsentPrompts int `json:"consent_prompts"`
}

// MinNodeMajor is the oldest Node.js major version oidc-provider 9 supports.
const MinNodeMajor = 22

// nodeMajor returns the major version of the node executable.
func nodeMajor(node string) (int, error) {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return 0, err
	}
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _, _ := strings.Cut(v, ".")
	return strconv.Atoi(major)
}

// setupHint tells a developer how to install what is missing.
const setupHint = "run scripts/setup-node.sh"

// Start runs interop/oidc-provider/server.mjs with opts until the test and
// its subtests are over. Without Node.js or the npm package it skips the
// test, or fails it under CI=true.
func Start(t testing.TB, opts Options) *Provider {
	t.Helper()
	env := nodejs.Require(t)
	dir := filepath.Join(filepath.Dir(env.Dir), "oidc-provider")
	missing := func(what string) {
		msg := fmt.Sprintf("oidc-provider interop test needs %s: %s", what, setupHint)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		missing(filepath.Join(dir, "node_modules"))
	}
	if v, err := nodeMajor(env.Node); err != nil {
		missing(fmt.Sprintf("Node.js >= %d (%s --version: %v)", MinNodeMajor, env.Node, err))
	} else if v < MinNodeMajor {
		missing(fmt.Sprintf("Node.js >= %d (%s is version %d)", MinNodeMajor, env.Node, v))
	}
	ttl := opts.AccessTokenTTL
	if ttl <= 0 {
		ttl = 5 * time.Second
	}
	secret := make([]byte, 24)
	rand.Read(secret)
	p := &Provider{ResourceServerSecret: hex.EncodeToString(secret)}

	args := []string{"server.mjs", "--port", "0"}
	for _, r := range opts.JWTResources {
		args = append(args, "--resource", r)
	}
	for _, r := range opts.OpaqueResources {
		args = append(args, "--opaque-resource", r)
	}
	cmd := exec.Command(env.Node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"EVERGRANT_OIDC_RS_SECRET="+p.ResourceServerSecret,
		"EVERGRANT_OIDC_ACCESS_TOKEN_TTL="+strconv.Itoa(int(ttl/time.Second)),
	)
	cmd.WaitDelay = 5 * time.Second
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe() // closing it stops the server
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", env.Node, err)
	}
	// The first line of stdout names the issuer; the rest is discarded.
	first := make(chan []byte, 1)
	exited := make(chan error, 1)
	go func() {
		br := bufio.NewReader(stdout)
		line, _ := br.ReadBytes('\n')
		first <- line
		io.Copy(io.Discard, br)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			for _, l := range bytes.Split(bytes.TrimSpace(stderr.Bytes()), []byte("\n")) {
				t.Log("oidc-provider: " + string(l))
			}
		}
	})
	var line []byte
	select {
	case line = <-first:
	case <-time.After(60 * time.Second):
		t.Fatalf("oidc-provider did not start within a minute; stderr:\n%s", stderr.Bytes())
	}
	var hello struct {
		Issuer  string `json:"issuer"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(line, &hello); err != nil || hello.Issuer == "" {
		t.Fatalf("oidc-provider printed %q instead of its issuer; stderr:\n%s", line, stderr.Bytes())
	}
	p.Issuer, p.Version = hello.Issuer, hello.Version
	md, err := fetchMetadata(t.Context(), p.Issuer)
	if err != nil {
		t.Fatalf("oidc-provider metadata: %v", err)
	}
	p.Metadata = md
	return p
}

// fetchMetadata reads the OpenID Provider metadata of issuer.
func fetchMetadata(ctx context.Context, issuer string) (*oauth.AuthServerMetadata, error) {
	data, err := get(ctx, issuer+oauth.WellKnownOpenIDConfiguration)
	if err != nil {
		return nil, err
	}
	return oauth.ParseAuthServerMetadata(data, issuer)
}

// Stats returns what oidc-provider counted for clientID so far.
func (p *Provider) Stats(ctx context.Context, clientID string) (Stats, error) {
	var s Stats
	data, err := get(ctx, p.Issuer+"/__evergrant/stats?client_id="+url.QueryEscape(clientID))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("stats: %w", err)
	}
	return s, nil
}

// get fetches a small JSON document.
func get(ctx context.Context, u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return data, nil
}

// PostForm posts form to one of oidc-provider's endpoints as the public
// client clientID (client_id in the body, RFC 6749 §3.2.1) and
// returns the HTTP status and the OAuth error code of the answer, if any.
// It is how a test revokes a token (RFC 7009) or replays one at the token
// endpoint; the answer's body, which may hold tokens, is not returned.
func (p *Provider) PostForm(ctx context.Context, endpoint, clientID string, form url.Values) (status int, errorCode string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := oauth.NewFormRequest(ctx, endpoint, form, oauth.ClientAuth{ID: clientID})
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode >= 400 {
		if oe, perr := oauth.ParseError(resp.StatusCode, data); perr == nil {
			return resp.StatusCode, oe.Code, nil
		}
		return resp.StatusCode, "", errors.New("the answer is not an OAuth error")
	}
	return resp.StatusCode, "", nil
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Bytes returns a copy of what was written.
func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}
