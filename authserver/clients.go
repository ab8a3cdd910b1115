package authserver

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/evergrant/evergrant/oauth"
)

// Bounds on registration input.
const (
	maxRedirectURIs        = 20
	maxURILength           = 2000
	maxStringMetadata      = 500
	clientIDBytes          = 18
	clientSecretBytes      = 32
	clientDocumentTTL      = 5 * time.Minute
	clientDocumentMax      = time.Hour
	clientDocumentMaxBytes = 16 << 10
)

func preRegisteredClient(cc ClientConfig, now time.Time) (*Client, error) {
	if cc.ID == "" {
		return nil, errors.New("empty client id")
	}
	md := oauth.ClientMetadata{
		ClientID:     cc.ID,
		RedirectURIs: cc.RedirectURIs,
		GrantTypes:   cc.GrantTypes,
		ClientName:   cc.Name,
	}
	if len(md.GrantTypes) == 0 {
		md.GrantTypes = []string{oauth.GrantTypeAuthorizationCode, oauth.GrantTypeRefreshToken}
	}
	c := &Client{ID: cc.ID, CreatedAt: now}
	switch {
	case cc.Secret == "":
		md.TokenEndpointAuthMethod = oauth.AuthMethodNone
	case cc.AuthMethod == "" || cc.AuthMethod == oauth.AuthMethodClientSecretBasic:
		md.TokenEndpointAuthMethod = oauth.AuthMethodClientSecretBasic
	case cc.AuthMethod == oauth.AuthMethodClientSecretPost:
		md.TokenEndpointAuthMethod = oauth.AuthMethodClientSecretPost
	default:
		return nil, fmt.Errorf("unsupported auth method %q", cc.AuthMethod)
	}
	if cc.Secret != "" {
		sum := sha256.Sum256([]byte(cc.Secret))
		c.SecretHash = sum[:]
	}
	if err := validateClientMetadata(&md); err != nil {
		return nil, err
	}
	c.Metadata = md
	return c, nil
}

// validateClientMetadata checks and completes metadata from a registration
// request or a client document (RFC 7591 §2). It returns an *oauth.Error
// with invalid_redirect_uri or invalid_client_metadata.
func validateClientMetadata(md *oauth.ClientMetadata) error {
	if md.TokenEndpointAuthMethod == "" {
		md.TokenEndpointAuthMethod = oauth.AuthMethodClientSecretBasic // RFC 7591 §2 default
	}
	if !slices.Contains(supportedAuthMethods(), md.TokenEndpointAuthMethod) {
		return oauth.NewError(oauth.ErrorInvalidClientMetadata, "unsupported token_endpoint_auth_method %q", clip(md.TokenEndpointAuthMethod))
	}
	if len(md.GrantTypes) == 0 {
		md.GrantTypes = []string{oauth.GrantTypeAuthorizationCode}
	}
	for _, g := range md.GrantTypes {
		if g != oauth.GrantTypeAuthorizationCode && g != oauth.GrantTypeRefreshToken {
			return oauth.NewError(oauth.ErrorInvalidClientMetadata, "unsupported grant type %q", clip(g))
		}
	}
	if !slices.Contains(md.GrantTypes, oauth.GrantTypeAuthorizationCode) {
		return oauth.NewError(oauth.ErrorInvalidClientMetadata, "grant_types must include authorization_code")
	}
	if len(md.ResponseTypes) == 0 {
		md.ResponseTypes = []string{"code"}
	}
	for _, rt := range md.ResponseTypes {
		if rt != "code" {
			return oauth.NewError(oauth.ErrorInvalidClientMetadata, "unsupported response type %q", clip(rt))
		}
	}
	if len(md.RedirectURIs) == 0 {
		return oauth.NewError(oauth.ErrorInvalidRedirectURI, "redirect_uris is required")
	}
	if len(md.RedirectURIs) > maxRedirectURIs {
		return oauth.NewError(oauth.ErrorInvalidRedirectURI, "at most %d redirect_uris", maxRedirectURIs)
	}
	for _, u := range md.RedirectURIs {
		if err := validRedirectURI(u); err != nil {
			return oauth.NewError(oauth.ErrorInvalidRedirectURI, "redirect URI %q: %v", clip(u), err)
		}
	}
	for name, v := range map[string]string{
		"client_name": md.ClientName, "client_uri": md.ClientURI, "logo_uri": md.LogoURI,
		"tos_uri": md.TosURI, "policy_uri": md.PolicyURI, "scope": md.Scope,
		"software_id": md.SoftwareID, "software_version": md.SoftwareVersion, "jwks_uri": md.JWKSURI,
	} {
		if len(v) > maxStringMetadata {
			return oauth.NewError(oauth.ErrorInvalidClientMetadata, "%s is too long", name)
		}
	}
	for name, v := range map[string]string{"client_uri": md.ClientURI, "logo_uri": md.LogoURI, "tos_uri": md.TosURI, "policy_uri": md.PolicyURI} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return oauth.NewError(oauth.ErrorInvalidClientMetadata, "%s must be an http(s) URL", name)
		}
	}
	if len(md.Contacts) > 10 {
		return oauth.NewError(oauth.ErrorInvalidClientMetadata, "too many contacts")
	}
	return nil
}

// clip shortens attacker-supplied strings echoed in error descriptions.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// validRedirectURI accepts https URLs, http URLs on loopback hosts (RFC 8252
// §7.3) and private-use schemes in reverse-domain form (RFC 8252 §7.1). It
// refuses fragments (RFC 6749 §3.1.2) and schemes that run code.
func validRedirectURI(raw string) error {
	if len(raw) > maxURILength {
		return errors.New("too long")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URI")
	}
	if !u.IsAbs() {
		return errors.New("not absolute")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return errors.New("has a fragment")
	}
	if u.User != nil {
		return errors.New("has userinfo")
	}
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case "https":
		if u.Hostname() == "" {
			return errors.New("no host")
		}
	case "http":
		if !oauth.IsLoopbackHost(u.Hostname()) {
			return errors.New("http is only allowed on loopback hosts")
		}
	case "javascript", "data", "file", "vbscript", "blob", "about", "ws", "wss", "ftp":
		return fmt.Errorf("scheme %q is not allowed", scheme)
	default:
		if !strings.Contains(scheme, ".") {
			return errors.New("a private-use scheme must be in reverse domain form (RFC 8252 §7.1)")
		}
	}
	return nil
}

// redirectAllowed reports whether uri exactly matches one of the client's
// redirect URIs. For http loopback redirect URIs any port matches, as RFC
// 8252 §7.3 asks for native clients that bind an ephemeral port.
func redirectAllowed(c *Client, uri string) bool {
	if uri == "" {
		return false
	}
	for _, r := range c.Metadata.RedirectURIs {
		if r == uri {
			return true
		}
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" || !oauth.IsLoopbackHost(u.Hostname()) {
		return false
	}
	for _, r := range c.Metadata.RedirectURIs {
		ru, err := url.Parse(r)
		if err != nil || ru.Scheme != "http" {
			continue
		}
		if ru.Hostname() == u.Hostname() && ru.EscapedPath() == u.EscapedPath() &&
			ru.RawQuery == u.RawQuery && u.User == nil && u.Fragment == "" {
			return true
		}
	}
	return false
}

// handleRegister is dynamic client registration (RFC 7591 §3).
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	if allowCORS(w, r, "POST") {
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidClientMetadata, "the request body must be application/json"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFormBytes))
	if err != nil {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidClientMetadata, "the request body is too large or unreadable"))
		return
	}
	var md oauth.ClientMetadata
	if err := json.Unmarshal(body, &md); err != nil {
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidClientMetadata, "the request body is not valid client metadata"))
		return
	}
	// Values the server assigns are not the client's to choose.
	md.ClientID, md.ClientSecret, md.ClientIDIssuedAt, md.ClientSecretExpiresAt = "", "", 0, nil
	if err := validateClientMetadata(&md); err != nil {
		oauth.WriteError(w, err.(*oauth.Error))
		s.log.Info("client registration refused", "reason", err.Error())
		return
	}
	now := s.now()
	c := &Client{ID: randomToken(clientIDBytes), CreatedAt: now, Dynamic: true}
	md.ClientID = c.ID
	var secret string
	if md.TokenEndpointAuthMethod != oauth.AuthMethodNone {
		secret = randomToken(clientSecretBytes)
		sum := sha256.Sum256([]byte(secret))
		c.SecretHash = sum[:]
	}
	c.Metadata = md
	if err := s.store.SaveClient(r.Context(), c); err != nil {
		writeError(w, s.storeFailed("save client", err))
		return
	}
	s.log.Info("client registered", "client_id", c.ID, "auth_method", md.TokenEndpointAuthMethod, "client_name", clip(md.ClientName))
	resp := md
	resp.ClientSecret = secret
	resp.ClientIDIssuedAt = now.Unix()
	if secret != "" {
		zero := int64(0)
		resp.ClientSecretExpiresAt = &zero // RFC 7591 §3.2.1: 0 means never
	}
	oauth.WriteJSON(w, http.StatusCreated, resp)
}

// isClientDocumentURL reports whether a client_id names a Client ID Metadata
// Document: an https URL with a path (SEP-991).
func (s *Server) isClientDocumentURL(id string) bool {
	if s.cfg.DisableClientIDMetadata {
		return false
	}
	u, err := url.Parse(id)
	if err != nil || u.Host == "" || u.Fragment != "" || u.User != nil {
		return false
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !s.cfg.InsecureAllowLoopbackClientMetadata || !oauth.IsLoopbackHost(u.Hostname()) {
			return false
		}
	default:
		return false
	}
	return u.Path != "" && u.Path != "/"
}

// maxCachedDocuments bounds the Client ID Metadata Documents kept.
const maxCachedDocuments = 1000

// docCache keeps fetched Client ID Metadata Documents, at most max of them:
// the least recently used goes first. Concurrent fetches of one URL are
// merged into one. The zero value with max set is ready to use.
type docCache struct {
	mu     sync.Mutex
	max    int
	byURL  map[string]*list.Element // of *cachedClient
	lru    list.List                // most recently used first
	onWait func(url string)         // for tests: called before joining a fetch
	group  singleflight.Group
}

type cachedClient struct {
	url     string
	client  *Client
	expires time.Time
}

// get returns the cached client of url, or nil if none is cached or it
// expired.
func (c *docCache) get(url string, now time.Time) *Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byURL[url]
	if !ok {
		return nil
	}
	d := e.Value.(*cachedClient)
	if !now.Before(d.expires) {
		c.lru.Remove(e)
		delete(c.byURL, url)
		return nil
	}
	c.lru.MoveToFront(e)
	return d.client
}

// put caches cl for url until expires, evicting the least recently used
// documents beyond max.
func (c *docCache) put(url string, cl *Client, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byURL == nil {
		c.byURL = map[string]*list.Element{}
	}
	if e, ok := c.byURL[url]; ok {
		e.Value = &cachedClient{url: url, client: cl, expires: expires}
		c.lru.MoveToFront(e)
		return
	}
	c.byURL[url] = c.lru.PushFront(&cachedClient{url: url, client: cl, expires: expires})
	for c.lru.Len() > max(c.max, 1) {
		c.removeLocked(c.lru.Back())
	}
}

func (c *docCache) removeLocked(e *list.Element) {
	c.lru.Remove(e)
	delete(c.byURL, e.Value.(*cachedClient).url)
}

// dropExpired forgets expired documents; it walks at most max entries.
func (c *docCache) dropExpired(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Front(); e != nil; {
		next := e.Next()
		if !now.Before(e.Value.(*cachedClient).expires) {
			c.removeLocked(e)
		}
		e = next
	}
}

func (c *docCache) waitHook() func(string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.onWait
}

// lookupClient finds a client by id: in the Store, or by fetching its
// Client ID Metadata Document.
func (s *Server) lookupClient(ctx context.Context, id string) (*Client, error) {
	if id == "" {
		return nil, errors.New("client_id is missing")
	}
	if s.isClientDocumentURL(id) {
		return s.clientFromDocument(ctx, id)
	}
	c, err := s.store.Client(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, errors.New("unknown client_id")
	}
	if err != nil {
		return nil, fmt.Errorf("load client: %w: %w", errStoreFailed, err)
	}
	return c, nil
}

// errStoreFailed marks an error of lookupClient that is the Store's
// failure, not an unknown client: an outage, answered with 503.
var errStoreFailed = errors.New("store failed")

// clientFromDocument returns the client described by the Client ID Metadata
// Document at id, from the cache or fetched. Concurrent requests for one
// document share one fetch.
func (s *Server) clientFromDocument(ctx context.Context, id string) (*Client, error) {
	if c := s.docs.get(id, s.now()); c != nil {
		return c, nil
	}
	if hook := s.docs.waitHook(); hook != nil {
		hook(id)
	}
	ch := s.docs.group.DoChan(id, func() (any, error) {
		// A fetch that finished just before this one started is good.
		if c := s.docs.get(id, s.now()); c != nil {
			return c, nil
		}
		// The fetch serves every waiter, so one leaving does not cancel
		// it; the fetcher's own timeout bounds it.
		return s.fetchClientDocument(context.WithoutCancel(ctx), id)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Client), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("fetch the client metadata document: %w", ctx.Err())
	}
}

// fetchClientDocument fetches, validates and caches the Client ID Metadata
// Document at id.
func (s *Server) fetchClientDocument(ctx context.Context, id string) (*Client, error) {
	var md oauth.ClientMetadata
	hdr, err := s.fetch.GetJSON(ctx, id, &md)
	if err != nil {
		s.log.Info("client metadata document fetch failed", "client_id", clip(id), "error", err)
		return nil, fmt.Errorf("could not fetch the client metadata document: %w", err)
	}
	if md.ClientID != id {
		return nil, errors.New("the client metadata document's client_id does not equal its URL")
	}
	if md.ClientSecret != "" {
		return nil, errors.New("a client metadata document must not contain a client_secret")
	}
	if md.TokenEndpointAuthMethod == "" {
		md.TokenEndpointAuthMethod = oauth.AuthMethodNone
	}
	if md.TokenEndpointAuthMethod != oauth.AuthMethodNone {
		return nil, errors.New("clients described by a metadata document must use token_endpoint_auth_method none")
	}
	if err := validateClientMetadata(&md); err != nil {
		return nil, fmt.Errorf("invalid client metadata document: %w", err)
	}
	now := s.now()
	c := &Client{ID: id, Metadata: md, CreatedAt: now, FromDocument: true}
	if ttl := cacheTTL(hdr, clientDocumentTTL, clientDocumentMax); ttl > 0 {
		s.docs.put(id, c, now.Add(ttl))
	}
	s.log.Info("client metadata document fetched", "client_id", clip(id))
	return c, nil
}

// cacheTTL reads Cache-Control max-age, bounded by max; no-store or no-cache
// give zero; absent gives def.
func cacheTTL(h http.Header, def, max time.Duration) time.Duration {
	cc := h.Get("Cache-Control")
	if cc == "" {
		return def
	}
	for _, d := range strings.Split(cc, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "no-store" || d == "no-cache" {
			return 0
		}
		if v, ok := strings.CutPrefix(d, "max-age="); ok {
			var secs int64
			if _, err := fmt.Sscan(v, &secs); err == nil && secs >= 0 {
				return min(time.Duration(secs)*time.Second, max)
			}
		}
	}
	return def
}

// clientAuthError is invalid_client (RFC 6749 §5.2): 401, with a Basic
// challenge when the client tried Basic authentication.
func writeClientAuthError(w http.ResponseWriter, usedBasic bool, desc string) {
	if usedBasic {
		w.Header().Set("WWW-Authenticate", `Basic realm="evergrant"`)
	}
	oauth.WriteError(w, &oauth.Error{Code: oauth.ErrorInvalidClient, Description: desc, StatusCode: http.StatusUnauthorized})
}

// authenticateClient authenticates the client of a token, revocation or
// introspection request (RFC 6749 §2.3) with the method it registered. It
// returns the client, or writes an error and returns nil. r.Form must be
// parsed.
func (s *Server) authenticateClient(w http.ResponseWriter, r *http.Request) *Client {
	user, pass, hasBasic := r.BasicAuth()
	formID, formSecret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	var id, secret, method string
	switch {
	case hasBasic && formSecret != "":
		oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "more than one client authentication method"))
		return nil
	case hasBasic:
		// RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
		var err1, err2 error
		id, err1 = url.QueryUnescape(user)
		secret, err2 = url.QueryUnescape(pass)
		if err1 != nil || err2 != nil {
			writeClientAuthError(w, true, "malformed client credentials")
			return nil
		}
		if formID != "" && formID != id {
			oauth.WriteError(w, oauth.NewError(oauth.ErrorInvalidRequest, "client_id does not match the authenticated client"))
			return nil
		}
		method = oauth.AuthMethodClientSecretBasic
	case formSecret != "":
		id, secret, method = formID, formSecret, oauth.AuthMethodClientSecretPost
	default:
		id, method = formID, oauth.AuthMethodNone
	}
	if id == "" {
		writeClientAuthError(w, hasBasic, "client authentication is required")
		return nil
	}
	c, err := s.lookupClient(r.Context(), id)
	if errors.Is(err, errStoreFailed) {
		writeError(w, s.storeFailed("client authentication", err, "client_id", clip(id)))
		return nil
	}
	if err != nil {
		writeClientAuthError(w, hasBasic, "client authentication failed")
		return nil
	}
	if c.AuthMethod() != method {
		s.log.Info("client authentication refused", "client_id", clip(id), "reason", "method mismatch", "method", method)
		writeClientAuthError(w, hasBasic, "client authentication failed")
		return nil
	}
	if method != oauth.AuthMethodNone {
		sum := sha256.Sum256([]byte(secret))
		if !equalHash(sum[:], c.SecretHash) {
			s.log.Info("client authentication refused", "client_id", clip(id), "reason", "bad secret")
			writeClientAuthError(w, hasBasic, "client authentication failed")
			return nil
		}
	}
	return c
}
