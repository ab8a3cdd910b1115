// Package client is evergrant's OAuth client for MCP servers over HTTP: an
// http.RoundTripper that authorizes (discovery, registration, PKCE), keeps
// grants in a store, and keeps a session working through token expiry by
// refreshing silently and retrying the original request once.
//
// The rules it follows are the client rules of the repository's design
// document, docs/design.md#client-rules; each is cited by its anchor (for
// example client-rule-5) in a comment where it is implemented, and named
// in the test that checks it. docs/client-refresh.md explains the refresh
// behaviour for users: when a request waits, when it is retried, and what
// a host sees when the user must sign in again.
package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
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
	// DefaultRefreshBackoff is how long, after a proactive refresh found the
	// authorization server unavailable, no other proactive refresh of the
	// grant starts; it doubles with each such failure up to
	// MaxRefreshBackoff.
	DefaultRefreshBackoff = 5 * time.Second
	// MaxRefreshBackoff caps that doubling (unless RefreshBackoff is
	// larger).
	MaxRefreshBackoff = time.Minute
)

// authHTTPTimeout bounds each request to an authorization server
// (discovery, registration, token, revocation).
const authHTTPTimeout = 30 * time.Second

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
	// OmitConsentPrompt stops the Transport from sending prompt=consent
	// with an authorization request that asks for offline_access. OpenID
	// providers issue a refresh token for offline_access only with that
	// prompt (OpenID Connect Core 1.0 §11), so without it the user would
	// sign in again at every access-token expiry; OAuth servers that are
	// not OpenID providers ignore the parameter. See
	// docs/design.md#client-discovery.
	OmitConsentPrompt bool

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
	// server unavailable (client-rule-4), no other proactive refresh of that grant
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
	// Outcome says how the refresh ended.
	Outcome Outcome
	// Rotated reports whether the answer carried a new refresh token.
	Rotated bool
	// Proactive is true for a refresh before expiry, false after a 401.
	Proactive bool
	Latency   time.Duration
	Err       error
}

// Outcome is how a refresh ended.
type Outcome string

// Outcomes of a refresh.
const (
	// OutcomeOK: the authorization server issued new tokens.
	OutcomeOK Outcome = "ok"
	// OutcomeRejected: the authorization server refused the refresh token
	// (docs/design.md#client-rule-3).
	OutcomeRejected Outcome = "rejected"
	// OutcomeUnavailable: the authorization server failed or was
	// unreachable; the refresh token is kept (docs/design.md#client-rule-4).
	OutcomeUnavailable Outcome = "unavailable"
)

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
	// EventNoRefreshToken: a sign-in that asked for offline_access got no
	// refresh token, so the user will have to sign in again when the
	// access token expires.
	EventNoRefreshToken EventKind = "no_refresh_token"
	// EventSaveFailed: a refreshed grant could not be saved to the store
	// (Err is a *SaveError); EventSaved: it was saved later.
	EventSaveFailed EventKind = "save_failed"
	EventSaved      EventKind = "saved"
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
	SaveFailures   int64 // refreshed grants the store failed to save
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

	mu     sync.Mutex
	grants map[string]*grantState // by server key; see grant.go

	stats counters
	bg    tracker // background goroutines (refreshes and their hooks)
}

// counters are the Transport's Stats, counted as they happen.
type counters struct {
	requests, unauthorized, refreshes, refreshFailures atomic.Int64
	retries, needsReauth, authorizations, saveFailures atomic.Int64
}

// NewTransport returns a Transport for cfg.
func NewTransport(cfg Config) *Transport {
	t := &Transport{
		cfg:    cfg,
		base:   cfg.Base,
		store:  cfg.Store,
		log:    cfg.Logger,
		now:    cfg.Now,
		grants: map[string]*grantState{},
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
		Timeout:   authHTTPTimeout,
		// Authorization server answers are read as they come; a redirect
		// from a token or registration endpoint is an error.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return t
}

// Stats returns the counters.
func (t *Transport) Stats() Stats {
	c := &t.stats
	return Stats{
		Requests:       c.requests.Load(),
		Unauthorized:   c.unauthorized.Load(),
		Refreshes:      c.refreshes.Load(),
		RefreshFailure: c.refreshFailures.Load(),
		Retries:        c.retries.Load(),
		NeedsReauth:    c.needsReauth.Load(),
		Authorizations: c.authorizations.Load(),
		SaveFailures:   c.saveFailures.Load(),
	}
}

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
//
// Wait then saves, once more, every refreshed grant the store failed to
// save, and returns an error matching ErrGrantNotSaved (one *SaveError per
// grant, joined) if any still cannot be saved: the process should then
// tell its user that the new tokens are lost when it exits.
func (t *Transport) Wait(ctx context.Context) error {
	select {
	case <-t.bg.idle():
	case <-ctx.Done():
		return ctx.Err()
	}
	t.mu.Lock()
	states := make([]*grantState, 0, len(t.grants))
	for _, gs := range t.grants {
		states = append(states, gs)
	}
	t.mu.Unlock()
	var errs []error
	for _, gs := range states {
		if err := t.saveUnsaved(ctx, gs, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// saveUnsaved saves gs's grant that a refresh obtained and the store failed
// to save, when a new attempt is due (or now, with force), under the
// grant's lock. It returns a *SaveError when the store fails again.
func (t *Transport) saveUnsaved(ctx context.Context, gs *grantState, force bool) error {
	g := gs.toSave(t.now(), force)
	if g == nil {
		return nil
	}
	err := t.withLock(ctx, gs.key, func() error { return t.store.Save(ctx, g) })
	if err != nil {
		gs.saveFailed(g, t.now())
		t.log.Warn("the refreshed grant still cannot be saved", "grant_id", gs.id, "error", err)
		return &SaveError{Server: gs.key, Err: err}
	}
	gs.savedNow(g)
	t.log.Info("the refreshed grant is saved now", "grant_id", gs.id)
	t.emit(Event{Kind: EventSaved, Server: gs.key})
	return nil
}

// withLock runs f holding the store's lock for key.
func (t *Transport) withLock(ctx context.Context, key string, f func() error) error {
	unlock, err := t.store.Lock(ctx, key)
	if err != nil {
		return fmt.Errorf("lock grant: %w", err)
	}
	defer unlock()
	return f()
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

// currentGrant returns gs's grant from the cache, else the store (nil when
// none is stored).
func (t *Transport) currentGrant(ctx context.Context, gs *grantState) (*store.Grant, error) {
	if g := gs.usable(); g != nil {
		return g, nil
	}
	g, err := t.store.Load(ctx, gs.key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load grant: %w", err)
	}
	gs.loaded(g)
	return g, nil
}

// checkRefused fails a request for a grant whose refresh the authorization
// server refused (docs/design.md#client-rule-3), until a new sign-in: with
// the refusal's reason and OAuth error, without sending a token and
// without starting a sign-in. The store is read first, for a sign-in made
// by another process since.
func (t *Transport) checkRefused(ctx context.Context, gs *grantState) error {
	if gs.refusal() == nil {
		return nil
	}
	g, err := t.store.Load(ctx, gs.key)
	switch {
	case err == nil:
		gs.loaded(g)
	case errors.Is(err, store.ErrNotFound):
		g = nil
	default:
		return fmt.Errorf("load grant: %w", err)
	}
	r := gs.refusal()
	if r == nil {
		return nil
	}
	return t.needsReauth(nil, gs, g, r.reason, r.oe)
}

// RoundTrip implements http.RoundTripper with the refresh rules of
// docs/design.md#client-rules: it prepares the request (its grant, a
// replayable body, a refresh of a token about to expire), sends it, and
// decides on the answer.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.stats.requests.Add(1)
	c, err := t.prepare(req)
	if err != nil {
		return nil, err
	}
	t.emit(Event{Kind: EventRequest, Server: c.key(), Method: c.req.Method, Request: c.req})
	resp, err := t.send(c, c.token, true)
	if err != nil {
		return nil, err
	}
	return t.decide(c, resp)
}

// prepare makes the call of req: its grant, its replayable body, and the
// refresh of a token about to expire (docs/design.md#client-rule-8). On an
// error req's body is closed.
func (t *Transport) prepare(req *http.Request) (*call, error) {
	ctx := req.Context()
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
	c := &call{req: req, body: b, gs: t.grant(key)}
	// A refreshed grant the store failed to save is saved again when due;
	// the request goes on with it either way (it is the cached grant).
	_ = t.saveUnsaved(ctx, c.gs, false)
	if err := t.checkRefused(ctx, c.gs); err != nil {
		closeBody(req)
		return nil, err
	}
	if c.g, err = t.currentGrant(ctx, c.gs); err != nil {
		closeBody(req)
		return nil, err
	}
	if g := c.g; g != nil && g.RefreshToken != "" && t.expiresSoon(g) {
		if !t.now().Before(g.Expiry) {
			// Expired: the request cannot succeed without the refresh, so
			// it waits. A refusal (client-rule-3) or an unavailable
			// authorization server (client-rule-4) is this request's
			// answer; the dead token is not sent.
			ng, err := t.refreshGrant(ctx, c.gs, g.AccessToken, true)
			if err != nil {
				closeBody(req)
				return nil, err
			}
			c.g, c.prior = ng, finishedRefresh(ng)
		} else {
			// Still valid: refresh in the background and send the current
			// token; a slow or failing token endpoint does not hold the
			// request up.
			c.prior = t.refreshInBackground(ctx, c.gs, g.AccessToken)
			if c.prior != nil && t.almostExpired(g) {
				// Unless the token may expire on the way: then wait for the
				// refresh. If the authorization server is unavailable, the
				// token is still sent while it is valid.
				ng, err := c.prior.wait(ctx)
				switch {
				case err == nil:
					c.g = ng
				case !errors.Is(err, ErrRefreshUnavailable):
					closeBody(req)
					return nil, err
				}
			}
		}
	}
	if c.g != nil {
		c.token = c.g.AccessToken
	}
	return c, nil
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

// needsReauth builds the error for gs's grant g (nil: none), counts it,
// logs it and fires OnNeedsReauth once per grant
// (docs/design.md#client-rule-3). The hook and the event run now when l is
// nil; else they are queued on l, to run after the refresh.
func (t *Transport) needsReauth(l *later, gs *grantState, g *store.Grant, reason Reason, oe *oauth.Error) *NeedsReauthError {
	e := &NeedsReauthError{Server: gs.key, Reason: reason}
	if g != nil {
		e.Issuer = g.Issuer
		e.Scopes = slices.Clone(g.Scopes)
	}
	if oe != nil {
		e.ErrorCode, e.ErrorDescription, e.Err = oe.Code, oe.Description, oe
	}
	t.stats.needsReauth.Add(1)
	fire := gs.needsReauth()
	if fire {
		t.log.Warn("grant needs a new authorization", "grant_id", gs.id, "server", gs.key, "reason", reason, "error_code", e.ErrorCode)
	}
	t.hook(l, "OnNeedsReauth", func() {
		t.emit(Event{Kind: EventNeedsReauth, Server: gs.key, Err: e})
		if fire && t.cfg.OnNeedsReauth != nil {
			t.cfg.OnNeedsReauth(e)
		}
	})
	return e
}

// margin is how long before g's access token expires it is refreshed
// (client-rule-8): RefreshMargin, but at most half the token's life, so
// that a token that lives less than twice the margin is refreshed at half
// its life, not on every request. Zero means no proactive refresh.
func (t *Transport) margin(g *store.Grant) time.Duration {
	if t.cfg.RefreshMargin < 0 || g.Expiry.IsZero() {
		return 0
	}
	m := t.cfg.RefreshMargin
	if !g.UpdatedAt.IsZero() {
		if life := g.Expiry.Sub(g.UpdatedAt); life > 0 && m > life/2 {
			m = life / 2
		}
	}
	return m
}

// expiresSoon reports whether g's access token expires within the jittered
// refresh margin (client-rule-8).
func (t *Transport) expiresSoon(g *store.Grant) bool {
	m := t.margin(g)
	if m == 0 {
		return false
	}
	m += time.Duration(rand.Int64N(int64(m)/5 + 1))
	return !t.now().Add(m).Before(g.Expiry)
}

// almostExpired reports whether g's still valid access token has so little
// time left (a quarter of the margin) that it may expire on the way: a
// request then waits for the refresh already running rather than send it,
// so that a healthy session sees no 401 whatever the token endpoint's
// latency (client-rule-8).
func (t *Transport) almostExpired(g *store.Grant) bool {
	m := t.margin(g)
	return m > 0 && !t.now().Add(m/4).Before(g.Expiry)
}
