package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// Authorizer runs the interactive step of an authorization: it sends the
// user (or a test's HTTP client) to the authorization URL and returns the
// query parameters of the redirect back to RedirectURI.
type Authorizer interface {
	// RedirectURI is the redirect URI to register and to send. It must not
	// change between the calls of one authorization.
	RedirectURI() string
	// Authorize sends the user to authURL and waits for the redirect.
	Authorize(ctx context.Context, authURL string) (url.Values, error)
}

// ErrAuthorization is wrapped by every failure of an interactive
// authorization.
var ErrAuthorization = errors.New("authorization failed")

// Authorize signs in to the MCP server at serverURL now, without waiting
// for a 401, and stores the grant. It needs Config.Authorizer. scopes are
// asked for in addition to the ones discovery finds.
func (t *Transport) Authorize(ctx context.Context, serverURL string, scopes ...string) error {
	key, err := ServerKey(serverURL)
	if err != nil {
		return err
	}
	if t.cfg.Authorizer == nil {
		return fmt.Errorf("%w: no Authorizer configured", ErrAuthorization)
	}
	_, err = t.authorizeOnce(ctx, key, oauth.BearerChallenge{}, scopes)
	return err
}

// Grant returns a copy of the stored grant for serverURL, or nil. It holds
// token material: never log or print it.
func (t *Transport) Grant(ctx context.Context, serverURL string) (*store.Grant, error) {
	key, err := ServerKey(serverURL)
	if err != nil {
		return nil, err
	}
	g, err := t.store.Load(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return g, err
}

// MaxAuthorizationTime bounds one interactive authorization.
const MaxAuthorizationTime = 10 * time.Minute

// authorizeOnce runs one interactive authorization per server at a time;
// concurrent callers share its result. It runs detached from the first
// caller's context (bounded by MaxAuthorizationTime), so one caller giving
// up does not fail the others; each waits as long as its own context
// allows.
func (t *Transport) authorizeOnce(ctx context.Context, key string, ch oauth.BearerChallenge, scopes []string) (*store.Grant, error) {
	c := t.authz.DoChan(key, func() (any, error) {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), MaxAuthorizationTime)
		defer cancel()
		return t.authorize(actx, key, ch, scopes)
	})
	select {
	case r := <-c:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*store.Grant).Clone(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// authorize is the authorization code flow with PKCE of the MCP
// authorization specification (docs/design.md#client-discovery).
func (t *Transport) authorize(ctx context.Context, key string, ch oauth.BearerChallenge, extra []string) (*store.Grant, error) {
	fail := func(err error) (*store.Grant, error) {
		return nil, &NeedsReauthError{Server: key, Reason: ReasonAuthorizationFailed, Err: fmt.Errorf("%w: %w", ErrAuthorization, err)}
	}
	d, err := t.discover(ctx, key, ch.ResourceMetadata)
	if err != nil {
		return fail(err)
	}
	as := d.as
	redirect := t.cfg.Authorizer.RedirectURI()
	creds, err := t.clientIdentity(ctx, as, redirect)
	if err != nil {
		return fail(err)
	}
	scopes := t.chooseScopes(ch, d, extra)

	verifier := oauth2.GenerateVerifier()
	state := randomString(24)
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {creds.ID},
		"redirect_uri":          {redirect},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {oauth.CodeChallengeMethodS256},
		"state":                 {state},
		"resource":              {d.resource},
	}
	if len(scopes) > 0 {
		q.Set("scope", oauth.FormatScope(scopes))
	}
	offline := slices.Contains(scopes, oauth.ScopeOfflineAccess)
	if offline && !t.cfg.OmitConsentPrompt {
		// OpenID Connect Core 1.0 §11: an OpenID provider grants
		// offline_access, and so a refresh token, only after consent was
		// asked for; without it the user signs in at every expiry.
		q.Set("prompt", "consent")
	}
	if err := oauth.CheckEndpointURL(as.AuthorizationEndpoint); err != nil {
		return fail(fmt.Errorf("authorization endpoint: %w", err))
	}
	au, err := url.Parse(as.AuthorizationEndpoint)
	if err != nil {
		return fail(err)
	}
	aq := au.Query()
	for k, v := range q {
		aq[k] = v
	}
	au.RawQuery = aq.Encode()

	params, err := t.cfg.Authorizer.Authorize(ctx, au.String())
	if err != nil {
		return fail(err)
	}
	// RFC 6749 §10.12 state; RFC 9207 §2.4 iss.
	if params.Get("state") != state {
		return fail(errors.New("the authorization response's state does not match"))
	}
	if iss := params.Get("iss"); iss != "" && iss != as.Issuer {
		return fail(fmt.Errorf("the authorization response comes from issuer %q, not %q (RFC 9207)", iss, as.Issuer))
	} else if iss == "" && as.AuthorizationResponseIssParameterSupported {
		return fail(errors.New("the authorization response lacks the iss parameter the server promised (RFC 9207)"))
	}
	if e := params.Get("error"); e != "" {
		return fail(&oauth.Error{Code: e, Description: params.Get("error_description")})
	}
	code := params.Get("code")
	if code == "" {
		return fail(errors.New("the authorization response has no code"))
	}
	tr, err := t.postToken(ctx, as.TokenEndpoint, creds, url.Values{
		"grant_type":    {oauth.GrantTypeAuthorizationCode},
		"code":          {code},
		"redirect_uri":  {redirect},
		"code_verifier": {verifier},
		"resource":      {d.resource},
	})
	if err != nil {
		return fail(fmt.Errorf("code exchange: %w", err))
	}
	g := &store.Grant{
		Key: key, Resource: d.resource, Issuer: as.Issuer, TokenEndpoint: as.TokenEndpoint,
		RevocationEndpoint: as.RevocationEndpoint, ClientID: creds.ID, ClientSecret: creds.Secret,
		AuthMethod: creds.MethodUsed(), Scopes: scopes,
	}
	t.apply(g, tr)
	// Saved under the grant's lock, as a refresh saves (client-rule-7): a refresh
	// in progress elsewhere finishes first and then finds this grant when
	// it reloads, instead of overwriting it with the old grant's refresh.
	// The lock is taken only now, after the interactive step.
	unlock, err := t.store.Lock(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("lock grant: %w", err)
	}
	err = t.store.Save(ctx, g)
	if err == nil {
		// A new grant: failures remembered for the old one are over.
		t.grant(key).renewed(g)
	}
	unlock()
	if err != nil {
		return nil, fmt.Errorf("save grant: %w", err)
	}
	t.stats.authorizations.Add(1)
	t.log.Info("authorized", "grant_id", grantID(key), "server", key, "issuer", as.Issuer,
		"scope", oauth.FormatScope(g.Scopes), "refresh_token", g.RefreshToken != "")
	t.emit(Event{Kind: EventAuthorize, Server: key})
	if offline && g.RefreshToken == "" {
		var expiresIn time.Duration
		if !g.Expiry.IsZero() {
			expiresIn = g.Expiry.Sub(t.now()).Round(time.Second)
		}
		t.log.Warn("the authorization server issued no refresh token although offline_access was asked for: "+
			"the user will have to sign in again when the access token expires",
			"grant_id", grantID(key), "server", key, "issuer", as.Issuer, "expires_in", expiresIn)
		t.emit(Event{Kind: EventNoRefreshToken, Server: key})
	}
	return g, nil
}

// chooseScopes: the challenge's scope, else the resource's scopes_supported,
// else none; plus configured and step-up scopes; plus offline_access when
// the authorization server lists it, and never otherwise (SEP-2207).
func (t *Transport) chooseScopes(ch oauth.BearerChallenge, d *discovered, extra []string) []string {
	var s []string
	switch {
	case len(ch.Scope) > 0:
		s = slices.Clone(ch.Scope)
	case len(d.scopes) > 0:
		s = slices.Clone(d.scopes)
	}
	for _, x := range append(slices.Clone(t.cfg.Scopes), extra...) {
		if !slices.Contains(s, x) {
			s = append(s, x)
		}
	}
	off := d.as.SupportsScope(oauth.ScopeOfflineAccess)
	s = slices.DeleteFunc(s, func(x string) bool { return x == oauth.ScopeOfflineAccess && !off })
	if off && !slices.Contains(s, oauth.ScopeOfflineAccess) {
		s = append(s, oauth.ScopeOfflineAccess)
	}
	return s
}

// clientIdentity picks the client_id, in order: pre-registered, Client ID
// Metadata Document, a stored registration, dynamic registration.
func (t *Transport) clientIdentity(ctx context.Context, as *oauth.AuthServerMetadata, redirect string) (oauth.ClientAuth, error) {
	switch {
	case t.cfg.ClientID != "":
		return oauth.ClientAuth{ID: t.cfg.ClientID, Secret: t.cfg.ClientSecret, Method: t.cfg.ClientAuthMethod}, nil
	case t.cfg.ClientMetadataURL != "" && as.ClientIDMetadataDocumentSupported:
		return oauth.ClientAuth{ID: t.cfg.ClientMetadataURL, Method: oauth.AuthMethodNone}, nil
	}
	reg, err := t.store.LoadRegistration(ctx, as.Issuer, registrationKey(redirect))
	if err == nil && (reg.SecretExpiresAt.IsZero() || t.now().Before(reg.SecretExpiresAt)) {
		return oauth.ClientAuth{ID: reg.ClientID, Secret: reg.ClientSecret, Method: reg.AuthMethod}, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return oauth.ClientAuth{}, fmt.Errorf("load registration: %w", err)
	}
	if as.RegistrationEndpoint == "" {
		return oauth.ClientAuth{}, errors.New("the authorization server offers neither dynamic registration nor client ID metadata documents; configure a client ID")
	}
	return t.register(ctx, as, redirect)
}

// register is dynamic client registration (RFC 7591), as a public client
// when the server allows it.
func (t *Transport) register(ctx context.Context, as *oauth.AuthServerMetadata, redirect string) (oauth.ClientAuth, error) {
	if err := oauth.CheckEndpointURL(as.RegistrationEndpoint); err != nil {
		return oauth.ClientAuth{}, fmt.Errorf("registration endpoint: %w", err)
	}
	method := oauth.AuthMethodNone
	if m := as.TokenEndpointAuthMethodsSupported; len(m) > 0 && !slices.Contains(m, oauth.AuthMethodNone) {
		method = oauth.AuthMethodClientSecretBasic
		if !slices.Contains(m, method) && slices.Contains(m, oauth.AuthMethodClientSecretPost) {
			method = oauth.AuthMethodClientSecretPost
		}
	}
	md := oauth.ClientMetadata{
		ApplicationType:         applicationType(redirect),
		RedirectURIs:            []string{redirect},
		TokenEndpointAuthMethod: method,
		GrantTypes:              []string{oauth.GrantTypeAuthorizationCode, oauth.GrantTypeRefreshToken},
		ResponseTypes:           []string{"code"},
		ClientName:              t.cfg.ClientName,
	}
	body, _ := json.Marshal(md)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, as.RegistrationEndpoint, bytes.NewReader(body))
	if err != nil {
		return oauth.ClientAuth{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := t.authc.Do(req)
	if err != nil {
		return oauth.ClientAuth{}, fmt.Errorf("registration: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAuthResponse))
	if err != nil {
		return oauth.ClientAuth{}, fmt.Errorf("registration: %w", err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		if oe, perr := oauth.ParseError(resp.StatusCode, data); perr == nil {
			return oauth.ClientAuth{}, fmt.Errorf("registration refused: %w", oe)
		}
		return oauth.ClientAuth{}, fmt.Errorf("registration answered HTTP %d", resp.StatusCode)
	}
	var got oauth.ClientMetadata
	if err := json.Unmarshal(data, &got); err != nil || got.ClientID == "" {
		return oauth.ClientAuth{}, errors.New("registration response has no client_id")
	}
	if got.TokenEndpointAuthMethod != "" {
		method = got.TokenEndpointAuthMethod
	}
	if got.ClientSecret == "" && method != oauth.AuthMethodNone {
		method = oauth.AuthMethodNone
	}
	reg := &store.Registration{
		Issuer: as.Issuer, RedirectURI: registrationKey(redirect), ClientID: got.ClientID, ClientSecret: got.ClientSecret,
		AuthMethod: method, RedirectURIs: []string{redirect}, CreatedAt: t.now(),
	}
	if got.ClientSecretExpiresAt != nil && *got.ClientSecretExpiresAt > 0 {
		reg.SecretExpiresAt = time.Unix(*got.ClientSecretExpiresAt, 0)
	}
	if err := t.store.SaveRegistration(ctx, reg); err != nil {
		return oauth.ClientAuth{}, fmt.Errorf("save registration: %w", err)
	}
	t.log.Info("client registered", "issuer", as.Issuer, "auth_method", method)
	return oauth.ClientAuth{ID: reg.ClientID, Secret: reg.ClientSecret, Method: method}, nil
}

// applicationType is "native" for loopback and private-use-scheme redirect
// URIs (RFC 8252), "web" otherwise.
func applicationType(redirect string) string {
	u, err := url.Parse(redirect)
	if err == nil && (u.Scheme != "http" && u.Scheme != "https" || oauth.IsLoopbackHost(u.Hostname())) {
		return "native"
	}
	return "web"
}

// registrationKey is the redirect URI a registration is stored under: for
// loopback redirect URIs without the port, since authorization servers let
// native clients use any port there (RFC 8252 §7.3) and the loopback
// authorizer picks a new one each time.
func registrationKey(redirect string) string {
	u, err := url.Parse(redirect)
	if err != nil || u.Scheme != "http" || !oauth.IsLoopbackHost(u.Hostname()) {
		return redirect
	}
	u.Host = u.Hostname()
	if strings.Contains(u.Host, ":") {
		u.Host = "[" + u.Host + "]"
	}
	return u.String()
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// HeadlessAuthorizer completes authorizations without a browser by
// following the authorization server's redirects until one reaches its
// redirect URI, as the conformance suite's clients do. It works only with
// servers that approve without user interaction (auto-approve), and is
// meant for tests and automation. The zero value uses the redirect URI
// DefaultHeadlessRedirectURI; NewHeadlessAuthorizer sets another.
type HeadlessAuthorizer struct {
	// Client sends the requests; nil means a client on http.DefaultTransport.
	// Its redirect policy is not used.
	Client *http.Client
	// MaxHops bounds the redirects followed; default 10.
	MaxHops int

	redirectURI string
}

// DefaultHeadlessRedirectURI is the redirect URI of a zero
// HeadlessAuthorizer.
const DefaultHeadlessRedirectURI = "http://127.0.0.1/callback"

// NewHeadlessAuthorizer returns a HeadlessAuthorizer that registers and
// sends redirectURI ("" means DefaultHeadlessRedirectURI) and follows
// redirects with hc (nil means a client on http.DefaultTransport).
func NewHeadlessAuthorizer(redirectURI string, hc *http.Client) *HeadlessAuthorizer {
	return &HeadlessAuthorizer{Client: hc, redirectURI: redirectURI}
}

// RedirectURI implements Authorizer.
func (h *HeadlessAuthorizer) RedirectURI() string {
	if h.redirectURI == "" {
		return DefaultHeadlessRedirectURI
	}
	return h.redirectURI
}

// Authorize implements Authorizer.
func (h *HeadlessAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if h.Client != nil {
		hc.Transport, hc.Jar, hc.Timeout = h.Client.Transport, h.Client.Jar, h.Client.Timeout
	}
	redirect, err := url.Parse(h.RedirectURI())
	if err != nil {
		return nil, err
	}
	hops := h.MaxHops
	if hops <= 0 {
		hops = 10
	}
	next := authURL
	for range hops {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, next, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		if resp.StatusCode < 300 || resp.StatusCode > 399 || loc == "" {
			return nil, fmt.Errorf("the authorization server answered %d instead of redirecting; a headless authorizer cannot sign in interactively", resp.StatusCode)
		}
		u, err := req.URL.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("bad redirect: %w", err)
		}
		if u.Scheme == redirect.Scheme && u.Hostname() == redirect.Hostname() && u.Path == redirect.Path {
			return u.Query(), nil
		}
		next = u.String()
	}
	return nil, errors.New("too many redirects during authorization")
}
