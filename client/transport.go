// Package client is evergrant's OAuth client for MCP servers over HTTP: an
// http.RoundTripper that authorizes (discovery, registration, PKCE), keeps
// grants in a store, and keeps a session working through token expiry by
// refreshing silently and retrying the original request once.
//
// The rules it follows are DESIGN §3.1; each is named in a comment where it
// is implemented, and in the test that checks it.
package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// Defaults for the zero values of Config.
const (
	DefaultRefreshMargin   = 60 * time.Second
	DefaultRefreshTimeout  = 30 * time.Second
	DefaultMaxBufferedBody = 4 << 20
	DefaultHTTPTimeout     = 30 * time.Second
	// DefaultRefreshBackoff is how long, after a proactive refresh found the
	// authorization server unavailable, no other proactive refresh of the
	// grant starts; it doubles with each such failure up to
	// MaxRefreshBackoff.
	DefaultRefreshBackoff = 5 * time.Second
	// MaxRefreshBackoff caps that doubling (unless RefreshBackoff is
	// larger).
	MaxRefreshBackoff = time.Minute
)

// saveTimeout bounds the save of a grant after a token endpoint answered:
// the save runs detached from the refresh's deadline, so a rotated refresh
// token is not lost to it.
const saveTimeout = 10 * time.Second

// maxAuthResponse bounds every response read from an authorization server.
const maxAuthResponse = 1 << 20

// Config configures a Transport. The zero value works: it keeps grants in
// memory, never signs in interactively and refreshes silently.
type Config struct {
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Store keeps grants and registrations; nil means a new store.Memory.
	// Use a store.File to share grants with other processes.
	Store store.Store
	// Authorizer runs the interactive authorization when there is no grant,
	// or for a step-up. Nil means never: such requests fail with a
	// NeedsReauthError.
	Authorizer Authorizer

	// ClientID, ClientSecret and ClientAuthMethod are a pre-registered
	// client. Empty ClientID means the client is identified by
	// ClientMetadataURL or by dynamic registration.
	ClientID         string
	ClientSecret     string
	ClientAuthMethod string
	// ClientMetadataURL is this client's Client ID Metadata Document URL,
	// used as client_id where the authorization server supports it.
	ClientMetadataURL string
	// ClientName is sent in dynamic registrations; default "evergrant".
	ClientName string
	// Scopes are asked for in addition to the ones the server names.
	Scopes []string

	// RefreshMargin: an access token expiring within this margin
	// (jittered by up to a fifth) is refreshed before it is sent. Zero
	// means DefaultRefreshMargin; negative disables proactive refresh.
	//
	// A request whose token is still valid does not wait for that refresh:
	// it starts in the background (still one per grant) and the request
	// goes out with the current token. Only a request whose token has
	// already expired waits for it. Call Wait before the process exits so
	// that a background refresh's result is saved.
	RefreshMargin time.Duration
	// RefreshBackoff: after a proactive refresh found the authorization
	// server unavailable (rule 4), no other proactive refresh of that grant
	// starts for this long, doubling with each further failure up to
	// MaxRefreshBackoff (or RefreshBackoff, if larger). A refresh after a
	// 401, or before sending an expired token, is not held back. Zero means
	// DefaultRefreshBackoff.
	RefreshBackoff time.Duration
	// RefreshTimeout bounds one refresh, independently of the callers'
	// contexts. Zero means DefaultRefreshTimeout.
	RefreshTimeout time.Duration
	// MaxBufferedBody bounds how much of a request body without GetBody is
	// buffered so it can be replayed. Zero means DefaultMaxBufferedBody.
	MaxBufferedBody int64

	// OnRefresh is called after every refresh attempt.
	//
	// Hook contract (OnRefresh, OnNeedsReauth and the refresh and
	// needs-reauth events of OnEvent): a hook about a refresh runs after
	// the refresh is over, once the grant's lock is released and every
	// request waiting for that refresh has its result; it runs in the
	// goroutine of the request that started the refresh (which it delays,
	// and only that one), or in a background goroutine of the Transport for
	// a proactive refresh started in the background. In that second case a
	// request that joined the refresh may return its result before the
	// hook has run; Wait waits for such hooks too. Hooks may be called
	// concurrently. A panic in a hook is recovered and logged; it does not
	// fail the request.
	OnRefresh func(RefreshEvent)
	// OnNeedsReauth is called once per grant when it becomes unusable: it
	// is called again only after the grant was refreshed successfully or
	// replaced by a new sign-in. See OnRefresh for when and where it runs.
	OnNeedsReauth func(*NeedsReauthError)
	// OnEvent receives every event of the Transport, for timelines and
	// metrics. It must not block: most events are delivered in the
	// goroutine of the request they belong to, while it is being served.
	// See OnRefresh for refresh events.
	OnEvent func(Event)

	// Logger receives one record per refresh and authorization, never with
	// token material. Nil discards.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// RefreshEvent describes one refresh attempt.
type RefreshEvent struct {
	// Server is the MCP server the grant is for; GrantID a short stable
	// identifier of the grant for logs (not a secret).
	Server  string
	GrantID string
	// Outcome is "ok", "rejected" (the refresh token was refused) or
	// "unavailable" (the authorization server failed or was unreachable).
	Outcome string
	// Rotated reports whether the answer carried a new refresh token.
	Rotated bool
	// Proactive is true for a refresh before expiry, false after a 401.
	Proactive bool
	Latency   time.Duration
	Err       error
}

// EventKind names an Event.
type EventKind string

// Event kinds.
const (
	EventRequest      EventKind = "request"      // a request is sent
	EventUnauthorized EventKind = "unauthorized" // a 401 arrived
	EventForbidden    EventKind = "forbidden"    // a 403 insufficient_scope arrived
	EventRefresh      EventKind = "refresh"      // a refresh grant was sent
	EventRetry        EventKind = "retry"        // the request is sent again
	EventNeedsReauth  EventKind = "needs_reauth" // a NeedsReauthError is returned
	EventAuthorize    EventKind = "authorize"    // an interactive authorization ran
)

// Event is one step of the Transport's work. It carries no token material.
type Event struct {
	Kind   EventKind
	Server string
	Method string
	// Status is the HTTP status for request, unauthorized and forbidden
	// events.
	Status int
	// Challenge is the WWW-Authenticate header of a 401 or 403.
	Challenge string
	// Refresh is set for refresh events.
	Refresh *RefreshEvent
	Err     error
	Time    time.Time
	// Request is the caller's request the event belongs to (as the caller
	// made it: without the token the Transport adds), for correlating
	// events of concurrent calls. Nil for events of no single request.
	Request *http.Request
}

// Stats are counters of a Transport's work.
type Stats struct {
	Requests       int64 // logical requests (RoundTrip calls)
	Unauthorized   int64 // 401 responses received
	Refreshes      int64 // refresh grants sent to a token endpoint
	RefreshFailure int64 // refreshes that failed
	Retries        int64 // requests sent again after a refresh or authorization
	NeedsReauth    int64 // NeedsReauthErrors returned
	Authorizations int64 // interactive authorizations completed
}

// Transport is an http.RoundTripper that adds OAuth to requests to MCP
// servers and keeps them authorized: on 401 invalid_token it refreshes the
// grant once and retries the request once, with a byte-identical body.
//
// Use it as the Transport of the http.Client an MCP client library uses,
// for example mcp.StreamableClientTransport{HTTPClient: &http.Client{
// Transport: t}} with the official Go SDK. A Transport is safe for
// concurrent use.
type Transport struct {
	cfg     Config
	base    http.RoundTripper
	store   store.Store
	authc   *http.Client // for authorization server requests
	log     *slog.Logger
	now     func() time.Time
	refresh singleflight.Group
	authz   singleflight.Group

	mu        sync.Mutex
	cache     map[string]*store.Grant     // last known grant by key
	rejected  map[string]string           // key -> hash of an access token rejected after refresh
	reauthed  map[string]bool             // key -> OnNeedsReauth fired for the current grant
	backoff   map[string]backoffState     // key -> proactive refresh held back after "unavailable"
	pending   map[string]*pendingRefresh  // flight -> refresh running in the background
	discovery map[string]*discovered      // key -> discovery result
	stats     struct{ a [7]atomic.Int64 } // in Stats field order

	bg tracker // background goroutines (refreshes and their hooks)
}

// backoffState holds proactive refreshes of a grant back until until.
type backoffState struct {
	until time.Time
	delay time.Duration
}

// NewTransport returns a Transport for cfg.
func NewTransport(cfg Config) *Transport {
	t := &Transport{
		cfg:       cfg,
		base:      cfg.Base,
		store:     cfg.Store,
		log:       cfg.Logger,
		now:       cfg.Now,
		cache:     map[string]*store.Grant{},
		rejected:  map[string]string{},
		reauthed:  map[string]bool{},
		backoff:   map[string]backoffState{},
		pending:   map[string]*pendingRefresh{},
		discovery: map[string]*discovered{},
	}
	if t.base == nil {
		t.base = http.DefaultTransport
	}
	if t.store == nil {
		t.store = &store.Memory{}
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.cfg.RefreshMargin == 0 {
		t.cfg.RefreshMargin = DefaultRefreshMargin
	}
	if t.cfg.RefreshTimeout <= 0 {
		t.cfg.RefreshTimeout = DefaultRefreshTimeout
	}
	if t.cfg.RefreshBackoff <= 0 {
		t.cfg.RefreshBackoff = DefaultRefreshBackoff
	}
	if t.cfg.MaxBufferedBody <= 0 {
		t.cfg.MaxBufferedBody = DefaultMaxBufferedBody
	}
	if t.cfg.ClientName == "" {
		t.cfg.ClientName = "evergrant"
	}
	t.authc = &http.Client{
		Transport: t.base,
		Timeout:   DefaultHTTPTimeout,
		// Authorization server answers are read as they come; a redirect
		// from a token or registration endpoint is an error.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return t
}

// Stats returns the counters.
func (t *Transport) Stats() Stats {
	a := &t.stats.a
	return Stats{a[0].Load(), a[1].Load(), a[2].Load(), a[3].Load(), a[4].Load(), a[5].Load(), a[6].Load()}
}

const (
	statRequests = iota
	statUnauthorized
	statRefreshes
	statRefreshFailure
	statRetries
	statNeedsReauth
	statAuthorizations
)

func (t *Transport) count(i int) { t.stats.a[i].Add(1) }

func (t *Transport) emit(e Event) {
	if t.cfg.OnEvent != nil {
		e.Time = t.now()
		t.callHook("OnEvent", func() { t.cfg.OnEvent(e) })
	}
}

// callHook calls a user hook, recovering and logging a panic in it.
func (t *Transport) callHook(name string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			t.log.Error("hook panicked", "hook", name, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	f()
}

// Wait waits until the work the Transport does in the background (a
// proactive refresh started for a request that did not wait for it, and
// the hooks of a refresh its caller gave up on) is over, or ctx is done.
// Each refresh is bounded by RefreshTimeout. A process that exits soon
// after its last request should call it: a refresh the authorization
// server answered must be saved, or a rotated refresh token is lost.
func (t *Transport) Wait(ctx context.Context) error {
	select {
	case <-t.bg.idle():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CloseIdleConnections closes the idle connections of Base when it has
// that method (http.Client.CloseIdleConnections calls it). It does not
// stop a refresh in progress, which has its own timeout; see Wait.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// tracker counts goroutines; idle is closed when there are none. Unlike a
// sync.WaitGroup it may be waited on while goroutines start.
type tracker struct {
	mu sync.Mutex
	n  int
	ch chan struct{} // closed when n drops to 0; nil while n is 0
}

func (k *tracker) add() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.n == 0 {
		k.ch = make(chan struct{})
	}
	k.n++
}

func (k *tracker) done() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n--
	if k.n == 0 {
		close(k.ch)
		k.ch = nil
	}
}

func (k *tracker) idle() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.n == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return k.ch
}

// ServerKey returns the key grants for an MCP server URL are stored under:
// the canonical URL without query (RFC 8707 §2).
func ServerKey(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("server URL: %w", err)
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return oauth.CanonicalResource(u.String())
}

// grantID is a short identifier of a grant for logs; it reveals nothing.
func grantID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:4])
}

func tokenHash(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// currentGrant returns the grant for key from the cache, else the store.
func (t *Transport) currentGrant(ctx context.Context, key string) (*store.Grant, error) {
	t.mu.Lock()
	g := t.cache[key]
	t.mu.Unlock()
	// A cached grant without an access token (its refresh was refused) is
	// looked up again: another process (evergrant login) may have signed in.
	if g != nil && g.AccessToken != "" {
		return g, nil
	}
	g, err := t.store.Load(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load grant: %w", err)
	}
	t.adopt(g)
	return g, nil
}

// adopt caches a grant loaded from the store; a grant with an access token
// this Transport has not seen (someone signed in, in another process) is a
// new grant for the once-per-grant hook and the rejected-token memo.
func (t *Transport) adopt(g *store.Grant) {
	t.mu.Lock()
	old := t.cache[g.Key]
	if g.AccessToken != "" && (old == nil || old.AccessToken != g.AccessToken) {
		delete(t.reauthed, g.Key)
		if t.rejected[g.Key] != tokenHash(g.AccessToken) {
			delete(t.rejected, g.Key)
		}
	}
	t.cache[g.Key] = g.Clone()
	t.mu.Unlock()
}

func (t *Transport) remember(g *store.Grant) {
	t.mu.Lock()
	t.cache[g.Key] = g.Clone()
	t.mu.Unlock()
}

// freshGrant caches a grant just obtained (by a refresh or a sign-in) and
// clears what this Transport remembered of the grant's failures: the
// rejected-after-refresh marker, the once-per-grant needs-reauth flag and
// the proactive refresh backoff. A later failure is handled anew.
func (t *Transport) freshGrant(g *store.Grant) {
	t.mu.Lock()
	t.cache[g.Key] = g.Clone()
	delete(t.rejected, g.Key)
	delete(t.reauthed, g.Key)
	delete(t.backoff, g.Key)
	t.mu.Unlock()
}

// accepted forgets the rejected-after-refresh marker of token when the
// server accepted it after all (a passing failure of the server): a later
// 401 for it is a new failure, refreshed again.
func (t *Transport) accepted(key, token string, status int) {
	if token == "" || status >= 400 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.rejected[key]; ok && h == tokenHash(token) {
		delete(t.rejected, key)
	}
}

// body is a request body that can be sent more than once.
type body struct {
	replayable bool
	getBody    func() (io.ReadCloser, error)
}

// prepareBody makes req's body replayable (DESIGN §3.1 rule 9): through
// GetBody, or by buffering up to MaxBufferedBody. A larger body is sent
// once, as it is.
func (t *Transport) prepareBody(req *http.Request) (body, *http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return body{replayable: true, getBody: func() (io.ReadCloser, error) { return http.NoBody, nil }}, req, nil
	}
	if req.GetBody != nil {
		return body{replayable: true, getBody: req.GetBody}, req, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, t.cfg.MaxBufferedBody+1))
	if err != nil {
		req.Body.Close()
		return body{}, nil, fmt.Errorf("read request body: %w", err)
	}
	r2 := req.Clone(req.Context())
	if int64(len(buf)) > t.cfg.MaxBufferedBody {
		rest := req.Body
		r2.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), rest), rest}
		return body{replayable: false}, r2, nil
	}
	req.Body.Close()
	get := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	r2.Body, _ = get()
	r2.GetBody = get
	r2.ContentLength = int64(len(buf))
	return body{replayable: true, getBody: get}, r2, nil
}

// send sends one attempt of req with token (or none).
func (t *Transport) send(req *http.Request, b body, token string, first bool) (*http.Response, error) {
	r := req.Clone(req.Context())
	if !first || req.Body == nil {
		if b.getBody == nil {
			return nil, errors.New("request body cannot be replayed")
		}
		rc, err := b.getBody()
		if err != nil {
			return nil, fmt.Errorf("replay request body: %w", err)
		}
		r.Body = rc
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	return t.base.RoundTrip(r)
}

// discard drains a little of a response body and closes it, so the
// connection can be reused.
func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// RoundTrip implements http.RoundTripper with the refresh rules of DESIGN
// §3.1.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	t.count(statRequests)
	key, err := ServerKey(req.URL.String())
	if err == nil {
		// Tokens never travel in clear text, except on loopback.
		err = oauth.CheckEndpointURL(key)
	}
	if err != nil {
		closeBody(req)
		return nil, err
	}
	b, req, err := t.prepareBody(req)
	if err != nil {
		return nil, err
	}
	g, err := t.currentGrant(ctx, key)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	// Rule 8: refresh a token that is about to expire before sending it.
	// prior is that refresh: the one refresh of this logical request
	// (rule 5), which a 401 then waits for instead of starting another.
	var prior *pendingRefresh
	if g != nil && g.RefreshToken != "" && t.expiresSoon(g) {
		if !t.now().Before(g.Expiry) {
			// Expired: the request cannot succeed without the refresh, so
			// it waits. A refusal (rule 3) or an unavailable authorization
			// server (rule 4) is this request's answer; the dead token is
			// not sent.
			ng, err := t.refreshGrant(ctx, key, g.AccessToken, true)
			if err != nil {
				closeBody(req)
				return nil, err
			}
			g = ng
			prior = finishedRefresh(ng)
		} else if t.proactiveAllowed(key) {
			// Still valid: refresh in the background and send the current
			// token; a slow or failing token endpoint does not hold the
			// request up.
			prior = t.refreshInBackground(ctx, key, g.AccessToken)
		}
	}
	token := ""
	if g != nil {
		token = g.AccessToken
	}
	t.emit(Event{Kind: EventRequest, Server: key, Method: req.Method, Request: req})
	resp, err := t.send(req, b, token, true)
	if err != nil {
		return nil, err
	}
	t.accepted(key, token, resp.StatusCode)
	return t.handle(ctx, req, b, key, g, token, prior, resp)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// handle decides what to do with the first answer to a request.
func (t *Transport) handle(ctx context.Context, req *http.Request, b body, key string, g *store.Grant, token string, prior *pendingRefresh, resp *http.Response) (*http.Response, error) {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		t.count(statUnauthorized)
		ch, _ := oauth.ParseBearerChallenge(resp.Header)
		t.emit(Event{Kind: EventUnauthorized, Server: key, Method: req.Method, Request: req, Status: resp.StatusCode, Challenge: strings.Join(resp.Header.Values("WWW-Authenticate"), ", ")})
		if !b.replayable {
			return resp, nil // rule 9: cannot retry, the 401 goes back as is
		}
		noRefresh := g == nil || g.RefreshToken == ""
		switch {
		case token != "" && ch.Error == oauth.ErrorInvalidToken && !noRefresh:
			return t.refreshAndRetry(ctx, req, b, key, g, token, prior, resp)
		case token != "" && noRefresh && t.cfg.Authorizer != nil && (ch.Error == "" || ch.Error == oauth.ErrorInvalidToken):
			// Nothing to refresh with: sign in again (rule 6, last part),
			// rediscovering from this challenge (the resource may have moved
			// to another authorization server).
			discard(resp)
			return t.authorizeAndRetry(ctx, req, b, key, g, ch, nil, resp.StatusCode)
		case token != "" && ch.Error == oauth.ErrorInvalidToken:
			// Reload under the lock: another process may hold a refresh
			// token; else needs_reauth (no_refresh_token).
			return t.refreshAndRetry(ctx, req, b, key, g, token, nil, resp)
		case token != "":
			// Rule 6: no refresh on a 401 without error or with another
			// error; the answer goes back as it is.
			return resp, nil
		default:
			// No token was sent: authorize if we can (rule 6, last part).
			discard(resp)
			return t.authorizeAndRetry(ctx, req, b, key, g, ch, nil, resp.StatusCode)
		}
	case http.StatusForbidden:
		ch, ok := oauth.ParseBearerChallenge(resp.Header)
		if !ok || ch.Error != oauth.ErrorInsufficientScope {
			return resp, nil
		}
		t.emit(Event{Kind: EventForbidden, Server: key, Method: req.Method, Request: req, Status: resp.StatusCode, Challenge: strings.Join(resp.Header.Values("WWW-Authenticate"), ", ")})
		var granted []string
		if g != nil {
			granted = g.Scopes
		}
		// Only a POST may start a step-up sign-in (see authorizeAndRetry):
		// for the event stream (GET) or a DELETE the answer is the scope
		// error itself, not a needs-reauth.
		if t.cfg.Authorizer == nil || !b.replayable || req.Method != http.MethodPost {
			discard(resp)
			return nil, &InsufficientScopeError{Server: key, Required: ch.Scope, Granted: granted, Description: ch.ErrorDescription}
		}
		// Rule 6: step-up for the union of granted and challenged scopes,
		// once.
		discard(resp)
		union := slices.Clone(granted)
		for _, s := range ch.Scope {
			if !slices.Contains(union, s) {
				union = append(union, s)
			}
		}
		r2, err := t.authorizeAndRetry(ctx, req, b, key, g, ch, union, http.StatusForbidden)
		if err != nil {
			return nil, err
		}
		if r2.StatusCode == http.StatusForbidden {
			if ch2, ok := oauth.ParseBearerChallenge(r2.Header); ok && ch2.Error == oauth.ErrorInsufficientScope {
				discard(r2)
				return nil, &InsufficientScopeError{Server: key, Required: ch2.Scope, Granted: union, Description: ch2.ErrorDescription}
			}
		}
		return r2, nil
	}
	return resp, nil
}

// refreshAndRetry is rules 1, 2 and 5: one refresh, one retry. prior, when
// set, is the refresh this request already started or joined before it was
// sent (rule 8); it is the request's one refresh, and no other is started.
func (t *Transport) refreshAndRetry(ctx context.Context, req *http.Request, b body, key string, g *store.Grant, token string, prior *pendingRefresh, resp *http.Response) (*http.Response, error) {
	discard(resp)
	t.mu.Lock()
	rejected := t.rejected[key] == tokenHash(token)
	t.mu.Unlock()
	if rejected {
		// This token already came from a refresh and was rejected: do not
		// refresh again for it (rule 5 across reconnects). But another
		// process may have signed in since: use its grant (rule 7).
		if fresh, err := t.store.Load(ctx, key); err == nil && fresh.AccessToken != "" && fresh.AccessToken != token {
			t.adopt(fresh)
			return t.retry(ctx, req, b, key, fresh, ReasonRejectedAfterRefresh)
		}
		return nil, t.needsReauth(key, g, ReasonRejectedAfterRefresh, nil)
	}
	var ng *store.Grant
	var err error
	if prior != nil {
		// The refresh before sending: its failure is this request's
		// answer (rule 5: no second refresh).
		if ng, err = prior.wait(ctx); err != nil {
			return nil, err
		}
		if ng.AccessToken == token {
			// The token the refresh gave was sent, and rejected.
			return nil, t.rejectedAfterRefresh(key, ng)
		}
	} else {
		// With no refresh token in the cached grant, refreshGrant still
		// reloads under the lock: another process may have refreshed or
		// signed in.
		if ng, err = t.refreshGrant(ctx, key, token, false); err != nil {
			return nil, err
		}
	}
	t.count(statRetries)
	t.emit(Event{Kind: EventRetry, Server: key, Method: req.Method, Request: req})
	r2, err := t.send(req, b, ng.AccessToken, false)
	if err != nil {
		return nil, err
	}
	t.accepted(key, ng.AccessToken, r2.StatusCode)
	if r2.StatusCode == http.StatusUnauthorized {
		t.count(statUnauthorized)
		ch, _ := oauth.ParseBearerChallenge(r2.Header)
		t.emit(Event{Kind: EventUnauthorized, Server: key, Method: req.Method, Request: req, Status: r2.StatusCode, Challenge: strings.Join(r2.Header.Values("WWW-Authenticate"), ", ")})
		if ch.Error == oauth.ErrorInvalidToken {
			discard(r2)
			return nil, t.rejectedAfterRefresh(key, ng)
		}
	}
	return r2, nil
}

// rejectedAfterRefresh marks ng's access token, which a refresh gave and
// the server rejected, so no later request refreshes for it (rule 5), and
// returns the error.
func (t *Transport) rejectedAfterRefresh(key string, ng *store.Grant) *NeedsReauthError {
	t.mu.Lock()
	t.rejected[key] = tokenHash(ng.AccessToken)
	t.mu.Unlock()
	return t.needsReauth(key, ng, ReasonRejectedAfterRefresh, nil)
}

// authorizeAndRetry runs the interactive authorization (if configured) and
// sends the request once more.
func (t *Transport) authorizeAndRetry(ctx context.Context, req *http.Request, b body, key string, g *store.Grant, ch oauth.BearerChallenge, scopes []string, status int) (*http.Response, error) {
	// Another process may have signed in since this request was sent.
	if status == http.StatusUnauthorized {
		if fresh, err := t.store.Load(ctx, key); err == nil && fresh.AccessToken != "" && (g == nil || fresh.AccessToken != g.AccessToken) {
			t.adopt(fresh)
			return t.retry(ctx, req, b, key, fresh, ReasonRejectedAfterAuthorization)
		}
	}
	// Only a POST (a call the host makes) may start a sign-in: a GET is the
	// background event stream or its reconnect, a DELETE closes a session;
	// neither may open a browser by itself.
	if t.cfg.Authorizer == nil || req.Method != http.MethodPost {
		reason := ReasonNoGrant
		if g != nil {
			reason = ReasonNoRefreshToken
		}
		return nil, t.needsReauth(key, g, reason, nil)
	}
	ng, err := t.authorizeOnce(ctx, key, ch, scopes)
	if err != nil {
		var ne *NeedsReauthError
		if errors.As(err, &ne) {
			t.count(statNeedsReauth)
			t.emit(Event{Kind: EventNeedsReauth, Server: key, Err: err})
		}
		return nil, err
	}
	return t.retry(ctx, req, b, key, ng, ReasonRejectedAfterAuthorization)
}

// retry sends the request once more with g's token; a 401 then is final.
func (t *Transport) retry(ctx context.Context, req *http.Request, b body, key string, g *store.Grant, reason string) (*http.Response, error) {
	t.count(statRetries)
	t.emit(Event{Kind: EventRetry, Server: key, Method: req.Method, Request: req})
	r2, err := t.send(req, b, g.AccessToken, false)
	if err != nil {
		return nil, err
	}
	t.accepted(key, g.AccessToken, r2.StatusCode)
	if r2.StatusCode == http.StatusUnauthorized {
		t.count(statUnauthorized)
		discard(r2)
		return nil, t.needsReauth(key, g, reason, nil)
	}
	return r2, nil
}

// needsReauth builds the error, counts it, and fires OnNeedsReauth once per
// grant.
func (t *Transport) needsReauth(key string, g *store.Grant, reason string, oe *oauth.Error) *NeedsReauthError {
	return t.needsReauthLater(nil, key, g, reason, oe)
}

// later collects the calls of user hooks made during a refresh, so they
// run after it: after the grant's lock is released (a hook that waits for
// a person must not hold up every process's refresh of the grant) and
// after the requests waiting for the refresh have its result.
type later struct{ fns []namedHook }

type namedHook struct {
	name string
	f    func()
}

// hook runs f (a call of user hooks) now, recovering a panic, when l is
// nil; else it queues it on l.
func (t *Transport) hook(l *later, name string, f func()) {
	if l == nil {
		t.callHook(name, f)
		return
	}
	l.fns = append(l.fns, namedHook{name, f})
}

// runHooks runs the hooks queued on l (nil: none), each recovered.
func (t *Transport) runHooks(l *later) {
	if l == nil {
		return
	}
	for _, h := range l.fns {
		t.callHook(h.name, h.f)
	}
}

// needsReauthLater is needsReauth with the hook and event queued on l.
func (t *Transport) needsReauthLater(l *later, key string, g *store.Grant, reason string, oe *oauth.Error) *NeedsReauthError {
	e := &NeedsReauthError{Server: key, Reason: reason}
	if g != nil {
		e.Issuer = g.Issuer
		e.Scopes = slices.Clone(g.Scopes)
	}
	if oe != nil {
		e.ErrorCode, e.ErrorDescription, e.Err = oe.Code, oe.Description, oe
	}
	t.count(statNeedsReauth)
	t.mu.Lock()
	fire := !t.reauthed[key]
	t.reauthed[key] = true
	t.mu.Unlock()
	if fire {
		t.log.Warn("grant needs a new authorization", "grant_id", grantID(key), "server", key, "reason", reason, "error_code", e.ErrorCode)
	}
	t.hook(l, "OnNeedsReauth", func() {
		t.emit(Event{Kind: EventNeedsReauth, Server: key, Err: e})
		if fire && t.cfg.OnNeedsReauth != nil {
			t.cfg.OnNeedsReauth(e)
		}
	})
	return e
}

// expiresSoon reports whether g's access token expires within the jittered
// refresh margin (rule 8).
func (t *Transport) expiresSoon(g *store.Grant) bool {
	if t.cfg.RefreshMargin < 0 || g.Expiry.IsZero() {
		return false
	}
	m := t.cfg.RefreshMargin
	// A token that lives less than twice the margin is refreshed at half
	// its life, not on every request.
	if !g.UpdatedAt.IsZero() {
		if life := g.Expiry.Sub(g.UpdatedAt); life > 0 && m > life/2 {
			m = life / 2
		}
	}
	m += time.Duration(rand.Int64N(int64(m)/5 + 1))
	return !t.now().Add(m).Before(g.Expiry)
}
