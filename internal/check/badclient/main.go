// Command badclient is an MCP client with deliberate faults in how it
// refreshes, for the tests of `evergrant check client`: each mode breaks
// one rule of docs/design.md#client-rules, so a test can show that the scenario covering
// the rule catches it. Mode "good" breaks none.
//
// It speaks the client contract of the official MCP conformance suite:
//
//	badclient -mode MODE <server-url>
//
// It discovers the authorization server from the 401 challenge, registers
// dynamically (a public client), authorizes headlessly (it reads the code
// from the Location of the authorization endpoint's answer), then sends
// initialize, notifications/initialized, tools/list and one tools/call per
// tool over streamable HTTP, with raw JSON-RPC so the faults are its own.
//
// Modes:
//
//	good                 refresh once on 401 invalid_token and retry the same request once
//	loop                 on 401 invalid_token, refresh and retry forever, whatever the answers
//	reauth               on 401 invalid_token, run the authorization again instead of refreshing
//	change-id            after the refresh, retry with a new JSON-RPC id
//	refresh-on-403       also refresh (and retry) on 403 insufficient_scope
//	refresh-on-bare-401  also refresh (and retry) on a 401 without error
//	ignore-rotation      always present the first refresh token
//	no-resource          leave resource out of the refresh grant
//	wrong-client-auth    register as client_secret_post, but authenticate the refresh with HTTP Basic
//	reauth-on-outage     when the token endpoint fails (5xx, no answer), run the authorization again
//
// Exit status: 0 when every step succeeded; 3 when a refresh was refused
// (a new sign-in is needed); 1 otherwise. It prints no token material.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/evergrant/evergrant/oauth"
)

var modes = []string{"good", "loop", "reauth", "change-id", "refresh-on-403", "refresh-on-bare-401", "ignore-rotation", "no-resource", "wrong-client-auth", "reauth-on-outage"}

const (
	redirectURI     = "http://127.0.0.1:1/callback"
	protocolVersion = "2025-11-25"
	exitNeedsReauth = 3
)

func main() {
	mode := flag.String("mode", "good", "the fault: "+strings.Join(modes, ", "))
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: badclient -mode MODE <server-url>")
		os.Exit(1)
	}
	valid := false
	for _, m := range modes {
		valid = valid || m == *mode
	}
	if !valid {
		fmt.Fprintf(os.Stderr, "badclient: unknown mode %q\n", *mode)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &client{
		mode:   *mode,
		server: flag.Arg(flag.NArg() - 1),
		hc: &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	err := c.run(ctx)
	var re *refusedError
	switch {
	case err == nil:
		fmt.Fprintf(os.Stderr, "badclient(%s): done\n", c.mode)
	case errors.As(err, &re):
		fmt.Fprintf(os.Stderr, "needs_reauth: badclient(%s): %v\n", c.mode, err)
		os.Exit(exitNeedsReauth)
	default:
		fmt.Fprintf(os.Stderr, "error: badclient(%s): %v\n", c.mode, err)
		os.Exit(1)
	}
}

type client struct {
	mode   string
	server string
	hc     *http.Client

	scope        string
	as           *oauth.AuthServerMetadata
	clientID     string
	clientSecret string

	access, refresh, firstRefresh string
	session                       string
	lastID                        int
}

// refusedError is a refused refresh: a new sign-in is needed.
type refusedError struct {
	status int
	code   string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("the refresh was refused: %d %s", e.status, e.code)
}

func (c *client) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "badclient(%s): %s\n", c.mode, fmt.Sprintf(format, args...))
}

func (c *client) run(ctx context.Context) error {
	if err := c.discover(ctx); err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	if err := c.register(ctx); err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	if err := c.authorize(ctx); err != nil {
		return fmt.Errorf("authorization: %w", err)
	}
	if _, err := c.call(ctx, "initialize", map[string]any{
		"protocolVersion": protocolVersion,
		"capabilities":    map[string]any{},
		"clientInfo":      map[string]any{"name": "evergrant-badclient", "version": "1"},
	}); err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	if err := c.notify(ctx, "notifications/initialized"); err != nil {
		return fmt.Errorf("notifications/initialized: %w", err)
	}
	res, err := c.call(ctx, "tools/list", map[string]any{})
	if err != nil {
		return fmt.Errorf("tools/list: %w", err)
	}
	var list struct {
		Tools []struct {
			Name string `json:"name"`
		} `json:"tools"`
	}
	if err := json.Unmarshal(res, &list); err != nil {
		return fmt.Errorf("tools/list: %w", err)
	}
	for _, tool := range list.Tools {
		if _, err := c.call(ctx, "tools/call", map[string]any{"name": tool.Name, "arguments": map[string]any{}}); err != nil {
			return fmt.Errorf("tools/call %s: %w", tool.Name, err)
		}
		c.logf("called %s", tool.Name)
	}
	return nil
}

// discover finds the authorization server from the challenge to an
// unauthenticated request (RFC 9728).
func (c *client) discover(ctx context.Context) error {
	resp, err := c.post(ctx, []byte(`{"jsonrpc":"2.0","id":0,"method":"ping"}`), "")
	if err != nil {
		return err
	}
	discard(resp)
	ch, _ := oauth.ParseBearerChallenge(resp.Header)
	if resp.StatusCode != http.StatusUnauthorized || ch.ResourceMetadata == "" {
		return fmt.Errorf("expected 401 with resource_metadata, got %d", resp.StatusCode)
	}
	var prm oauth.ProtectedResourceMetadata
	if err := c.getJSON(ctx, ch.ResourceMetadata, &prm); err != nil {
		return err
	}
	if len(prm.AuthorizationServers) == 0 {
		return errors.New("no authorization server in the resource metadata")
	}
	c.scope = strings.Join(prm.ScopesSupported, " ")
	mdURL, err := oauth.AuthServerMetadataURL(prm.AuthorizationServers[0])
	if err != nil {
		return err
	}
	c.as = &oauth.AuthServerMetadata{}
	return c.getJSON(ctx, mdURL, c.as)
}

func (c *client) register(ctx context.Context) error {
	method := oauth.AuthMethodNone
	if c.mode == "wrong-client-auth" {
		method = oauth.AuthMethodClientSecretPost
	}
	body, _ := json.Marshal(map[string]any{
		"client_name":                "evergrant-badclient",
		"redirect_uris":              []string{redirectURI},
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": method,
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.as.RegistrationEndpoint, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var md oauth.ClientMetadata
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&md) != nil || md.ClientID == "" {
		return fmt.Errorf("registration answered %d", resp.StatusCode)
	}
	c.clientID, c.clientSecret = md.ClientID, md.ClientSecret
	return nil
}

// authorize runs the authorization code flow with PKCE, headlessly.
func (c *client) authorize(ctx context.Context) error {
	verifier := oauth2.GenerateVerifier()
	state := randomString()
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {c.clientID},
		"redirect_uri":          {redirectURI},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
		"state":                 {state},
		"resource":              {c.server},
	}
	if c.scope != "" {
		q.Set("scope", c.scope)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.as.AuthorizationEndpoint+"?"+q.Encode(), nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	discard(resp)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode/100 != 3 {
		return fmt.Errorf("the authorization endpoint answered %d", resp.StatusCode)
	}
	if loc.Query().Get("state") != state || loc.Query().Get("code") == "" {
		return fmt.Errorf("the redirect has no code or another state (error %q)", loc.Query().Get("error"))
	}
	return c.token(ctx, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {loc.Query().Get("code")},
		"redirect_uri":  {redirectURI},
		"code_verifier": {verifier},
		"resource":      {c.server},
	})
}

// refreshGrant is the refresh, with the mode's faults.
func (c *client) refreshGrant(ctx context.Context) error {
	rt := c.refresh
	if c.mode == "ignore-rotation" {
		rt = c.firstRefresh
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	if c.mode != "no-resource" {
		form.Set("resource", c.server)
	}
	err := c.token(ctx, form)
	c.logf("refresh: %v", err)
	return err
}

// token posts to the token endpoint and keeps the tokens of the answer.
func (c *client) token(ctx context.Context, form url.Values) error {
	// The client registered client_secret_post (or none, without a
	// secret). The fault of wrong-client-auth: Basic on the refresh.
	auth := oauth.ClientAuth{ID: c.clientID, Secret: c.clientSecret, Method: oauth.AuthMethodClientSecretPost}
	if c.clientSecret == "" {
		auth.Method = oauth.AuthMethodNone
	} else if c.mode == "wrong-client-auth" && form.Get("grant_type") == "refresh_token" {
		auth.Method = oauth.AuthMethodClientSecretBasic
	}
	req, err := oauth.NewFormRequest(ctx, c.as.TokenEndpoint, form, auth)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(data, &e)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return &refusedError{resp.StatusCode, e.Error}
		}
		return fmt.Errorf("the token endpoint answered %d %s", resp.StatusCode, e.Error)
	}
	tr, err := oauth.ParseTokenResponse(data)
	if err != nil {
		return err
	}
	c.access = tr.AccessToken
	if tr.RefreshToken != "" {
		if c.firstRefresh == "" {
			c.firstRefresh = tr.RefreshToken
		}
		c.refresh = tr.RefreshToken
	}
	return nil
}

func (c *client) request(id int, method string, params any) []byte {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	return b
}

// call sends a JSON-RPC request and handles 401 and 403 by the mode.
func (c *client) call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	c.lastID++
	id := c.lastID
	body := c.request(id, method, params)
	handled := false // a refresh or authorization already ran for this request
	for {
		resp, err := c.post(ctx, body, c.access)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusOK {
			if s := resp.Header.Get("Mcp-Session-Id"); s != "" {
				c.session = s
			}
			return readResult(resp, id)
		}
		discard(resp)
		ch, _ := oauth.ParseBearerChallenge(resp.Header)
		switch {
		case resp.StatusCode == http.StatusUnauthorized && ch.Error == oauth.ErrorInvalidToken:
			switch c.mode {
			case "loop":
				// The fault: no cap, no regard for the answer.
				c.refreshGrant(ctx)
				time.Sleep(5 * time.Millisecond)
				continue
			case "reauth":
				if handled {
					return nil, errors.New("rejected after a new authorization")
				}
				handled = true
				if err := c.authorize(ctx); err != nil {
					return nil, err
				}
				continue
			}
			if handled {
				return nil, errors.New("the token was rejected again after the refresh")
			}
			handled = true
			if err := c.refreshGrant(ctx); err != nil {
				var refused *refusedError
				if c.mode != "reauth-on-outage" || errors.As(err, &refused) {
					return nil, err
				}
				// The fault: an outage is taken for a lost grant.
				if err := c.authorize(ctx); err != nil {
					return nil, err
				}
			}
			if c.mode == "change-id" {
				c.lastID++
				id = c.lastID
				body = c.request(id, method, params)
			}
			continue
		case resp.StatusCode == http.StatusUnauthorized && c.mode == "refresh-on-bare-401" && !handled,
			resp.StatusCode == http.StatusForbidden && c.mode == "refresh-on-403" && !handled:
			handled = true
			if err := c.refreshGrant(ctx); err != nil {
				return nil, err
			}
			continue
		}
		return nil, fmt.Errorf("answered %d (%s)", resp.StatusCode, ch.Error)
	}
}

// notify sends a JSON-RPC notification.
func (c *client) notify(ctx context.Context, method string) error {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method})
	resp, err := c.post(ctx, b, c.access)
	if err != nil {
		return err
	}
	discard(resp)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %d", resp.StatusCode)
	}
	return nil
}

func (c *client) post(ctx context.Context, body []byte, token string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.server, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", protocolVersion)
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return c.hc.Do(req)
}

// readResult reads the JSON-RPC response with id from a JSON or event
// stream answer.
func readResult(resp *http.Response, id int) (json.RawMessage, error) {
	defer resp.Body.Close()
	var msgs [][]byte
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data:"); ok {
				msgs = append(msgs, []byte(strings.TrimSpace(d)))
				if bytes.Contains(msgs[len(msgs)-1], []byte(`"result"`)) || bytes.Contains(msgs[len(msgs)-1], []byte(`"error"`)) {
					break
				}
			}
		}
	} else {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, b)
	}
	for _, m := range msgs {
		var r struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(m, &r) != nil || r.ID != id {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("JSON-RPC error: %s", r.Error.Message)
		}
		return r.Result, nil
	}
	return nil, fmt.Errorf("no response with id %d", id)
}

func (c *client) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", u, resp.StatusCode)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func randomString() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
