package client

import (
	"sync"
	"time"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// grantState is what a Transport knows of one grant (the grant for one MCP
// server) beyond what the store holds: the last grant it saw, what it
// remembers of the grant's failures, and the refreshes it runs for it. It
// is the only place that changes that state; each change is a method named
// after the event that causes it. The store stays the source of truth for
// the grant itself: a grantState is a cache plus memory of failures, and
// forgets the failures whenever a new grant arrives.
//
// Its methods are safe for concurrent use. They never call out (no store,
// no network, no hooks) while holding the lock.
type grantState struct {
	key string // the server key (ServerKey) the grant is stored under
	id  string // grantID(key), for logs

	mu sync.Mutex
	// cached is the last grant seen; nil before the first load or after
	// the store lost it.
	cached *store.Grant
	// rejected is the hash of an access token that a refresh gave and the
	// server rejected (docs/design.md#client-rule-5): no request refreshes
	// for that token again.
	rejected string
	// reauthed records that OnNeedsReauth fired for the current grant
	// (docs/design.md#client-rule-3: once per grant).
	reauthed bool
	// refused is the authorization server's refusal of the grant's refresh
	// token, remembered until a new sign-in (docs/design.md#client-rule-3):
	// until then every request fails with it, no token is sent and no
	// sign-in starts by itself. Nil when the grant was not refused.
	refused *refusal
	// backoff holds proactive refreshes back after one found the
	// authorization server unavailable (docs/design.md#client-rule-8).
	backoff backoffState
	// pending are the proactive refreshes running in the background, by
	// the hash of the access token they refresh away from.
	pending map[string]*pendingRefresh
	// disc is the discovery result for the server
	// (docs/design.md#client-discovery).
	disc *discovered
	// unsaved is a grant a refresh obtained that the store failed to
	// save (docs/design.md#client-rule-2): kept here, used by this
	// Transport, and saved again before later requests (not before
	// nextSave) and by Wait. Nil when everything is saved.
	unsaved  *store.Grant
	nextSave time.Time
	// saveDelay is the wait after the last failed save, doubling.
	saveDelay time.Duration
}

// Bounds of the wait between two attempts to save an unsaved grant.
const (
	minSaveDelay = time.Second
	maxSaveDelay = time.Minute
)

// refusal is a refused refresh: why, and the access token the grant held
// then (its hash; "" when it held none), so that a grant with another
// token, from a new sign-in, ends it.
type refusal struct {
	reason Reason
	oe     *oauth.Error
	token  string
}

// backoffState holds proactive refreshes of a grant back until until.
type backoffState struct {
	until time.Time
	delay time.Duration
}

func newGrantState(key string) *grantState {
	return &grantState{key: key, id: grantID(key), pending: map[string]*pendingRefresh{}}
}

// grant returns the state of key's grant, creating it on first use.
func (t *Transport) grant(key string) *grantState {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.grants[key]
	if s == nil {
		s = newGrantState(key)
		t.grants[key] = s
	}
	return s
}

// usable returns the cached grant when it holds an access token. A cached
// grant without one (its refresh was refused) is not usable: the caller
// looks in the store again, where another process may have signed in.
// The grant returned is shared: callers must not modify it.
func (s *grantState) usable() *store.Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached != nil && s.cached.AccessToken != "" {
		return s.cached
	}
	return nil
}

// loaded caches a grant read from the store. A grant with an access token
// not seen before (someone signed in, perhaps in another process) is a new
// grant: the once-per-grant hook may fire again, and the rejected-token
// mark stays only if it is about that very token.
func (s *grantState) loaded(g *store.Grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.AccessToken != "" && (s.cached == nil || s.cached.AccessToken != g.AccessToken) {
		if s.refused == nil || s.refused.token != tokenHash(g.AccessToken) {
			// A new sign-in: the refusal and the hook's flag are over.
			s.refused = nil
			s.reauthed = false
		}
		if s.rejected != tokenHash(g.AccessToken) {
			s.rejected = ""
		}
	}
	s.cached = g.Clone()
}

// changed caches a grant this Transport changed itself without renewing it
// (a refused refresh dropped its refresh token); what is remembered of its
// failures stays.
func (s *grantState) changed(g *store.Grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cached = g.Clone()
}

// renewed caches a grant just obtained by a refresh or a sign-in and
// forgets the old grant's failures: the rejected-token mark, the
// once-per-grant needs-reauth flag and the proactive refresh backoff. A
// later failure is handled anew.
func (s *grantState) renewed(g *store.Grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cached = g.Clone()
	s.rejected = ""
	s.reauthed = false
	s.refused = nil
	s.backoff = backoffState{}
	s.unsaved, s.saveDelay = nil, 0
}

// saveFailed records that the store failed to save g, a grant the
// Transport holds and uses: it is tried again after a delay that doubles
// from minSaveDelay to maxSaveDelay.
func (s *grantState) saveFailed(g *store.Grant, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsaved = g.Clone()
	s.saveDelay = min(max(2*s.saveDelay, minSaveDelay), maxSaveDelay)
	s.nextSave = now.Add(s.saveDelay)
}

// toSave returns the unsaved grant when a save is due (or at any time when
// force is set), else nil.
func (s *grantState) toSave(now time.Time, force bool) *store.Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsaved == nil || !force && now.Before(s.nextSave) {
		return nil
	}
	return s.unsaved.Clone()
}

// savedNow records that g, the unsaved grant, is now saved.
func (s *grantState) savedNow(g *store.Grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsaved != nil && s.unsaved.AccessToken == g.AccessToken {
		s.unsaved, s.saveDelay = nil, 0
	}
}

// refusedNow records that the authorization server refused the refresh
// token of g (docs/design.md#client-rule-3), which is cached as it is now:
// the refresh token is gone, and the access token too unless it was still
// valid. The grant stays refused until a new sign-in.
func (s *grantState) refusedNow(g *store.Grant, reason Reason, oe *oauth.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cached = g.Clone()
	s.refused = &refusal{reason: reason, oe: oe}
	if g.AccessToken != "" {
		s.refused.token = tokenHash(g.AccessToken)
	}
	s.backoff = backoffState{}
}

// refusal returns the grant's refusal, or nil when it was not refused.
func (s *grantState) refusal() *refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// lost forgets the cached grant: the store no longer has it (a sign-out
// deleted it), so an unsaved grant is not saved back either.
func (s *grantState) lost() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cached = nil
	s.unsaved, s.saveDelay = nil, 0
}

// rejectedAfterRefresh marks token, which a refresh gave and the server
// rejected, so that no later request refreshes for it
// (docs/design.md#client-rule-5).
func (s *grantState) rejectedAfterRefresh(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejected = tokenHash(token)
}

// isRejected reports whether token was marked by rejectedAfterRefresh.
func (s *grantState) isRejected(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected != "" && s.rejected == tokenHash(token)
}

// accepted is told that the server accepted token (an answer below 400).
// If it was marked rejected, the rejection was a passing failure of the
// server: the mark goes, so a later 401 for it is refreshed again.
func (s *grantState) accepted(token string, status int) {
	if token == "" || status >= 400 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejected != "" && s.rejected == tokenHash(token) {
		s.rejected = ""
	}
}

// needsReauth records that the grant needs a new sign-in and reports
// whether this is the first time for the current grant, when
// OnNeedsReauth fires (docs/design.md#client-rule-3).
func (s *grantState) needsReauth() (first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first = !s.reauthed
	s.reauthed = true
	return first
}

// startProactive starts a background refresh away from the still valid
// access token failed, or finds the one running: it returns the refresh to
// wait for and whether the caller must start it. While the backoff after
// an unavailable authorization server lasts, no new refresh starts and p
// is nil. The backoff check and the start are one step, so two requests
// cannot both start a refresh past the backoff.
func (s *grantState) startProactive(failed string, now time.Time) (p *pendingRefresh, start bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := tokenHash(failed)
	if p := s.pending[h]; p != nil {
		return p, false
	}
	if now.Before(s.backoff.until) {
		return nil, false
	}
	p = &pendingRefresh{done: make(chan struct{})}
	s.pending[h] = p
	return p, true
}

// proactiveDone delivers the result of the background refresh p away from
// failed to the requests waiting for it.
func (s *grantState) proactiveDone(failed string, p *pendingRefresh, g *store.Grant, err error) {
	s.mu.Lock()
	delete(s.pending, tokenHash(failed))
	p.g, p.err = g, err
	s.mu.Unlock()
	close(p.done)
}

// unavailable holds proactive refreshes back after one found the
// authorization server unavailable (docs/design.md#client-rule-4): for
// base after the first failure, doubling with each further one up to
// MaxRefreshBackoff (or base, if larger).
func (s *grantState) unavailable(now time.Time, base time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := base
	if s.backoff.delay > 0 {
		d = min(2*s.backoff.delay, max(MaxRefreshBackoff, base))
	}
	s.backoff = backoffState{until: now.Add(d), delay: d}
}

// endBackoff ends the proactive refresh backoff: the grant was refreshed
// (here or by another process) or its refresh refused, so the
// authorization server answers again.
func (s *grantState) endBackoff() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backoff = backoffState{}
}

// discovery returns the cached discovery result, or nil.
func (s *grantState) discovery() *discovered {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.disc
}

// setDiscovery caches a discovery result.
func (s *grantState) setDiscovery(d *discovered) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disc = d
}
