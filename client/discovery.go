package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/evergrant/evergrant/oauth"
)

// mcpProtocolVersion is sent on discovery requests, as the MCP
// authorization specification asks.
const mcpProtocolVersion = "2025-11-25"

// discovered is what discovery learned about an MCP server.
type discovered struct {
	// resource is the RFC 8707 resource indicator to send.
	resource string
	// scopes are the protected resource's scopes_supported.
	scopes []string
	as     *oauth.AuthServerMetadata
}

// ErrDiscovery is wrapped by every discovery failure.
var ErrDiscovery = errors.New("authorization discovery failed")

// fetchStatus is a non-200 answer to a discovery fetch.
type fetchStatus int

func (s fetchStatus) Error() string { return fmt.Sprintf("HTTP %d", int(s)) }

// getDocument fetches a JSON document with a size bound.
func (t *Transport) getDocument(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("MCP-Protocol-Version", mcpProtocolVersion)
	resp, err := t.authc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, fetchStatus(resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, oauth.MaxDocumentSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > oauth.MaxDocumentSize {
		return nil, fmt.Errorf("document larger than %d bytes", oauth.MaxDocumentSize)
	}
	return data, nil
}

// discover finds the protected resource metadata and the authorization
// server metadata for the server key (MCP authorization, 2025-11-25,
// "Authorization Server Discovery"). metadataURL is the challenge's
// resource_metadata, if any.
func (t *Transport) discover(ctx context.Context, key, metadataURL string) (*discovered, error) {
	gs := t.grant(key)
	d := gs.discovery()
	if d != nil && metadataURL == "" {
		return d, nil
	}
	d, err := t.discoverUncached(ctx, key, metadataURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDiscovery, key, err)
	}
	gs.setDiscovery(d)
	return d, nil
}

// reachableFrom refuses a discovery URL on a loopback host named by a
// server that is not itself on loopback: a remote server must not make this
// machine send requests to its own local services.
func reachableFrom(server, target string) error {
	if err := oauth.CheckEndpointURL(target); err != nil {
		return err
	}
	su, err1 := url.Parse(server)
	tu, err2 := url.Parse(target)
	if err1 != nil || err2 != nil {
		return errors.New("unparsable URL")
	}
	if oauth.IsLoopbackHost(tu.Hostname()) && !oauth.IsLoopbackHost(su.Hostname()) {
		return fmt.Errorf("%s points at this machine, but the server %s is not local", target, su.Host)
	}
	return nil
}

func (t *Transport) discoverUncached(ctx context.Context, key, metadataURL string) (*discovered, error) {
	if err := oauth.CheckEndpointURL(key); err != nil {
		return nil, err
	}
	var candidates []string
	if metadataURL != "" {
		if err := reachableFrom(key, metadataURL); err != nil {
			return nil, fmt.Errorf("resource_metadata: %w", err)
		}
		candidates = append(candidates, metadataURL)
	}
	wk, err := oauth.ProtectedResourceMetadataURLs(key)
	if err != nil {
		return nil, err
	}
	candidates = append(candidates, wk...)

	var prm *oauth.ProtectedResourceMetadata
	for _, u := range candidates {
		data, err := t.getDocument(ctx, u)
		var st fetchStatus
		if errors.As(err, &st) && st >= 400 && st < 500 {
			continue // try the next well-known location
		}
		if err != nil {
			return nil, fmt.Errorf("protected resource metadata %s: %w", u, err)
		}
		if prm, err = parseResourceMetadata(data, key); err != nil {
			return nil, fmt.Errorf("protected resource metadata %s: %w", u, err)
		}
		break
	}
	if prm == nil {
		// A server of the 2025-03-26 revision: the authorization server is
		// at the server's origin.
		return t.discoverLegacy(ctx, key)
	}
	if err := reachableFrom(key, prm.AuthorizationServers[0]); err != nil {
		return nil, fmt.Errorf("authorization server: %w", err)
	}
	as, err := t.authServerMetadata(ctx, prm.AuthorizationServers[0])
	if err != nil {
		return nil, err
	}
	res, _ := oauth.CanonicalResource(prm.Resource)
	return &discovered{resource: res, scopes: prm.ScopesSupported, as: as}, nil
}

// parseResourceMetadata validates a protected resource metadata document:
// its resource must be the server URL, or a prefix of it on a path
// segment boundary (the resource may cover several MCP endpoints).
func parseResourceMetadata(data []byte, key string) (*oauth.ProtectedResourceMetadata, error) {
	var probe struct {
		Resource string `json:"resource"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("%w: %w", oauth.ErrInvalidMetadata, err)
	}
	if !resourceCovers(probe.Resource, key) {
		return nil, fmt.Errorf("%w: resource %q does not match the server %q", oauth.ErrInvalidMetadata, probe.Resource, key)
	}
	return oauth.ParseProtectedResourceMetadata(data, probe.Resource)
}

// resourceCovers reports whether resource names server: equal, or the same
// origin with a path that is a segment prefix of server's.
func resourceCovers(resource, server string) bool {
	r, err1 := oauth.CanonicalResource(resource)
	s, err2 := oauth.CanonicalResource(server)
	if err1 != nil || err2 != nil {
		return false
	}
	if r == s {
		return true
	}
	ru, _ := url.Parse(r)
	su, _ := url.Parse(s)
	if ru.Scheme != su.Scheme || ru.Host != su.Host || ru.RawQuery != "" {
		return false
	}
	return ru.Path == "" || strings.HasPrefix(su.Path, ru.Path+"/")
}

// authServerMetadata fetches RFC 8414 (or OpenID) metadata from the URLs in
// the order the MCP specification gives; the document's issuer must equal
// the issuer asked for, and PKCE S256 must be supported.
func (t *Transport) authServerMetadata(ctx context.Context, issuer string) (*oauth.AuthServerMetadata, error) {
	if err := oauth.CheckEndpointURL(issuer); err != nil {
		return nil, fmt.Errorf("authorization server: %w", err)
	}
	urls, err := oauth.AuthServerMetadataURLs(issuer)
	if err != nil {
		return nil, err
	}
	for _, u := range urls {
		data, err := t.getDocument(ctx, u)
		var st fetchStatus
		if errors.As(err, &st) && st >= 400 && st < 500 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("authorization server metadata %s: %w", u, err)
		}
		md, err := oauth.ParseAuthServerMetadata(data, issuer)
		if err != nil {
			return nil, fmt.Errorf("authorization server metadata %s: %w", u, err)
		}
		if !md.SupportsS256() {
			return nil, fmt.Errorf("authorization server %s does not support PKCE S256; refusing to authorize", issuer)
		}
		return md, nil
	}
	return nil, fmt.Errorf("no authorization server metadata found for %s", issuer)
}

// discoverLegacy is the 2025-03-26 fallback: metadata at the server
// origin's well-known URL, else the default endpoints at the origin.
func (t *Transport) discoverLegacy(ctx context.Context, key string) (*discovered, error) {
	u, err := url.Parse(key)
	if err != nil {
		return nil, err
	}
	origin := u.Scheme + "://" + u.Host
	data, err := t.getDocument(ctx, origin+oauth.WellKnownAuthServer)
	var st fetchStatus
	switch {
	case err == nil:
		md, err := oauth.ParseAuthServerMetadata(data, origin)
		if err != nil {
			return nil, fmt.Errorf("authorization server metadata: %w", err)
		}
		if !md.SupportsS256() {
			return nil, fmt.Errorf("authorization server %s does not support PKCE S256; refusing to authorize", origin)
		}
		return &discovered{resource: key, as: md}, nil
	case errors.As(err, &st) && st == http.StatusNotFound:
		return &discovered{resource: key, as: &oauth.AuthServerMetadata{
			Issuer:                        origin,
			AuthorizationEndpoint:         origin + "/authorize",
			TokenEndpoint:                 origin + "/token",
			RegistrationEndpoint:          origin + "/register",
			CodeChallengeMethodsSupported: []string{oauth.CodeChallengeMethodS256},
		}}, nil
	default:
		return nil, fmt.Errorf("authorization server metadata: %w", err)
	}
}
