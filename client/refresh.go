package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// refreshGrant returns a grant whose access token is not failed, refreshing
// the grant if nobody else has (docs/design.md#client-rule-7): one refresh per grant
// however many requests ask at once, in this process (singleflight) and
// across processes sharing the store (its lock). The refresh runs on its own
// timeout, detached from the callers' contexts, because a refresh token the
// server consumed must not be lost to one caller's cancellation; each caller
// waits only as long as its own context allows.
//
// The hooks of the refresh run after it, outside the flight, in the
// goroutine of the caller that started it: the other callers have their
// result by then and do not wait for them.
func (t *Transport) refreshGrant(ctx context.Context, gs *grantState, failed string, proactive bool) (*store.Grant, error) {
	g, hooks, err := t.refreshFlight(ctx, gs, failed, proactive)
	t.runHooks(hooks)
	return g, err
}

// flightResult is what a refresh flight delivers to its callers.
type flightResult struct {
	g     *store.Grant
	err   error
	hooks *later
	owner *int // identifies the call that started the flight
}

// refreshFlight starts or joins the refresh flight of gs's grant away from
// the access token failed. It returns the hooks of the refresh (to run once
// the caller is ready) only to the caller that started the flight; if that
// caller gives up, a background goroutine runs them when the flight ends.
func (t *Transport) refreshFlight(ctx context.Context, gs *grantState, failed string, proactive bool) (*store.Grant, *later, error) {
	me := new(int)
	ch := t.refresh.DoChan(flightKey(gs.key, failed), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.RefreshTimeout)
		defer cancel()
		l := &later{}
		g, err := t.refreshLocked(rctx, gs, failed, proactive, l)
		return &flightResult{g: g, err: err, hooks: l, owner: me}, nil
	})
	select {
	case r := <-ch:
		fr := r.Val.(*flightResult)
		var hooks *later
		if fr.owner == me {
			hooks = fr.hooks
		}
		if fr.err != nil {
			return nil, hooks, fr.err
		}
		return fr.g.Clone(), hooks, nil
	case <-ctx.Done():
		t.bg.add()
		go func() {
			defer t.bg.done()
			if fr := (<-ch).Val.(*flightResult); fr.owner == me {
				t.runHooks(fr.hooks)
			}
		}()
		return nil, nil, ctx.Err()
	}
}

func flightKey(key, failed string) string { return key + "\x00" + tokenHash(failed) }

// pendingRefresh is the refresh a request started or joined before it was
// sent (docs/design.md#client-rule-8): running in the background, or finished.
type pendingRefresh struct {
	done chan struct{} // closed when g and err are set
	g    *store.Grant
	err  error
}

// finishedRefresh is a pendingRefresh that gave g.
func finishedRefresh(g *store.Grant) *pendingRefresh {
	p := &pendingRefresh{done: make(chan struct{}), g: g}
	close(p.done)
	return p
}

// wait returns the refresh's result, waiting for it as long as ctx allows.
func (p *pendingRefresh) wait(ctx context.Context) (*store.Grant, error) {
	select {
	case <-p.done:
		if p.err != nil {
			return nil, p.err
		}
		return p.g.Clone(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refreshInBackground starts a proactive refresh of gs's grant away from
// the still valid access token failed, or joins the one running, without
// waiting for it; nil while the backoff after an unavailable authorization
// server lasts. The refresh is the same single flight as any other; its
// hooks run in the background goroutine after the result is delivered.
func (t *Transport) refreshInBackground(ctx context.Context, gs *grantState, failed string) *pendingRefresh {
	p, start := gs.startProactive(failed, t.now())
	if !start {
		return p
	}
	t.bg.add()
	go func() {
		defer t.bg.done()
		// Detached from the request, which may end first; the refresh is
		// bounded by RefreshTimeout.
		g, hooks, err := t.refreshFlight(context.WithoutCancel(ctx), gs, failed, true)
		gs.proactiveDone(failed, p, g, err)
		t.runHooks(hooks)
	}()
	return p
}

// saveContext is the context a grant is saved with once the token
// endpoint has answered: detached from the refresh's deadline, which may
// pass between the answer and the save, with a short timeout of its own.
func saveContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
}

// refreshLocked is the lock, reload, refresh-if-needed, save protocol.
func (t *Transport) refreshLocked(ctx context.Context, gs *grantState, failed string, proactive bool, l *later) (*store.Grant, error) {
	key := gs.key
	unlock, err := t.store.Lock(ctx, key)
	if err != nil {
		return nil, &RefreshUnavailableError{Server: key, Err: fmt.Errorf("lock grant: %w", err)}
	}
	defer unlock()
	g, err := t.store.Load(ctx, key)
	if u := gs.toSave(t.now(), true); u != nil && err == nil && !g.UpdatedAt.After(u.UpdatedAt) {
		// The store still holds the grant from before a refresh it failed
		// to save: its refresh token was consumed. Refresh from the grant
		// this Transport kept, and try to save it now, under the lock.
		g, err = u, nil
		if serr := t.store.Save(ctx, u); serr == nil {
			gs.savedNow(u)
		} else {
			gs.saveFailed(u, t.now())
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		gs.lost()
		return nil, t.needsReauth(l, gs, nil, ReasonNoGrant, nil)
	}
	if err != nil {
		return nil, &RefreshUnavailableError{Server: key, Err: fmt.Errorf("load grant: %w", err)}
	}
	// Someone else refreshed (or signed in) since this token was sent: use
	// their result without a new grant (client-rule-7).
	if g.AccessToken != "" && g.AccessToken != failed && !(proactive && t.expiresSoon(g)) {
		gs.loaded(g)
		gs.endBackoff()
		return g, nil
	}
	if g.RefreshToken == "" {
		gs.changed(g)
		return nil, t.needsReauth(l, gs, g, ReasonNoRefreshToken, nil)
	}
	start := t.now()
	t.stats.refreshes.Add(1)
	resp, err := t.tokenRequest(ctx, g, url.Values{
		"grant_type":    {oauth.GrantTypeRefreshToken},
		"refresh_token": {g.RefreshToken},
	})
	ev := RefreshEvent{Server: key, GrantID: gs.id, Proactive: proactive, Latency: t.now().Sub(start)}
	// The token endpoint has answered: what it said is saved even if the
	// refresh's deadline passes now.
	sctx, cancel := saveContext(ctx)
	defer cancel()
	var oe *oauth.Error
	switch {
	case errors.As(err, &oe) && rejectsRefresh(oe.Status()):
		// client-rule-3: the refresh token is refused: discard it, keep the rest of
		// the grant (client registration, endpoints) for a new sign-in.
		g.RefreshToken = ""
		if !proactive || g.Expiry.IsZero() || !t.now().Before(g.Expiry) {
			// Keep an access token that is still good (a refused proactive
			// refresh); drop one that has been rejected.
			g.AccessToken, g.Expiry = "", time.Time{}
		}
		g.UpdatedAt = t.now()
		if serr := t.store.Save(sctx, g); serr != nil {
			t.log.Error("save grant after refused refresh", "grant_id", ev.GrantID, "error", serr)
		}
		if oe.Code == oauth.ErrorInvalidClient {
			// The authorization server no longer knows this client (it was
			// reset, or the registration expired): forget the registration,
			// so the next sign-in registers again instead of failing.
			if derr := t.store.DeleteRegistration(sctx, g.Issuer, g.ClientID); derr != nil {
				t.log.Error("forget stale registration", "grant_id", ev.GrantID, "error", derr)
			}
		}
		gs.refusedNow(g, ReasonRefreshRejected, oe)
		ev.Outcome, ev.Err = OutcomeRejected, oe
		t.refreshed(l, ev)
		return nil, t.needsReauth(l, gs, g, ReasonRefreshRejected, oe)
	case err != nil:
		// client-rule-4: unreachable, timed out or 5xx: keep the refresh token.
		ue := &RefreshUnavailableError{Server: key, Issuer: g.Issuer, Err: err}
		var se *statusError
		if oe != nil {
			ue.StatusCode = oe.Status()
		} else if errors.As(err, &se) {
			ue.StatusCode = se.status
		}
		gs.unavailable(t.now(), t.cfg.RefreshBackoff)
		ev.Outcome, ev.Err = OutcomeUnavailable, ue
		t.refreshed(l, ev)
		return nil, ue
	}
	// client-rule-2: rotation replaces the refresh token; an answer without one
	// keeps the old one. The grant is saved before anyone retries.
	ev.Rotated = resp.RefreshToken != "" && resp.RefreshToken != g.RefreshToken
	t.apply(g, resp)
	saveErr := t.store.Save(sctx, g)
	if saveErr != nil {
		saveErr = t.store.Save(sctx, g)
	}
	// A successful refresh: failures remembered for the grant are over.
	gs.renewed(g)
	if saveErr != nil {
		// The new tokens are good but not saved: keep and use them in this
		// process, save them again before later requests and in Wait, and
		// report it (other processes still hold the consumed refresh token,
		// so their next refresh will fail).
		gs.saveFailed(g, t.now())
		t.stats.saveFailures.Add(1)
		t.log.Error("the refreshed grant could not be saved; it is kept in memory and saved again later",
			"grant_id", ev.GrantID, "error", saveErr)
		ev.Err = &SaveError{Server: key, Err: saveErr}
		t.hook(l, "OnEvent", func() { t.emit(Event{Kind: EventSaveFailed, Server: key, Err: ev.Err}) })
	}
	ev.Outcome = OutcomeOK
	t.refreshed(l, ev)
	return g, nil
}

// rejectsRefresh reports whether a token endpoint status means the refresh
// token was refused, as opposed to a passing failure.
func rejectsRefresh(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}

func (t *Transport) refreshed(l *later, ev RefreshEvent) {
	if ev.Outcome != OutcomeOK {
		t.stats.refreshFailures.Add(1)
	}
	t.log.Info("refresh", "grant_id", ev.GrantID, "server", ev.Server, "outcome", ev.Outcome,
		"rotated", ev.Rotated, "proactive", ev.Proactive, "latency", ev.Latency, "error", errString(ev.Err))
	t.hook(l, "OnRefresh", func() {
		t.emit(Event{Kind: EventRefresh, Server: ev.Server, Refresh: &ev, Err: ev.Err})
		if t.cfg.OnRefresh != nil {
			t.cfg.OnRefresh(ev)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// apply copies a token response into g.
func (t *Transport) apply(g *store.Grant, resp *oauth.TokenResponse) {
	g.AccessToken = resp.AccessToken
	g.TokenType = resp.TokenType
	if resp.RefreshToken != "" {
		g.RefreshToken = resp.RefreshToken
	}
	g.Expiry = time.Time{}
	if resp.ExpiresIn > 0 {
		g.Expiry = t.now().Add(time.Duration(resp.ExpiresIn) * time.Second)
	}
	if resp.Scope != "" {
		g.Scopes = oauth.ParseScope(resp.Scope)
	}
	g.UpdatedAt = t.now()
}

// tokenRequest posts form to g's token endpoint with the client
// authentication of g's registration and the resource indicator (RFC 8707).
// An OAuth error answer is returned as *oauth.Error.
func (t *Transport) tokenRequest(ctx context.Context, g *store.Grant, form url.Values) (*oauth.TokenResponse, error) {
	if g.Resource != "" {
		form.Set("resource", g.Resource)
	}
	return t.postToken(ctx, g.TokenEndpoint, oauth.ClientAuth{ID: g.ClientID, Secret: g.ClientSecret, Method: g.AuthMethod}, form)
}

// postToken posts form to a token endpoint authenticated as c and
// returns the token response; an OAuth error answer is returned as
// *oauth.Error.
func (t *Transport) postToken(ctx context.Context, endpoint string, c oauth.ClientAuth, form url.Values) (*oauth.TokenResponse, error) {
	if err := oauth.CheckEndpointURL(endpoint); err != nil {
		return nil, fmt.Errorf("token endpoint: %w", err)
	}
	req, err := oauth.NewFormRequest(ctx, endpoint, form, c)
	if err != nil {
		return nil, err
	}
	resp, err := t.authc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("token request: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAuthResponse))
	if err != nil {
		return nil, fmt.Errorf("read token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		if oe, perr := oauth.ParseError(resp.StatusCode, data); perr == nil {
			return nil, oe
		}
		// Not an RFC 6749 §5.2 answer (a proxy's page, a misrouted
		// request): not a refusal of the grant, so the refresh token stays.
		return nil, &statusError{status: resp.StatusCode}
	}
	tr, err := oauth.ParseTokenResponse(data)
	if err != nil {
		return nil, fmt.Errorf("token response: %w", err)
	}
	return tr, nil
}

// statusError is a token endpoint answer that is not an OAuth error.
type statusError struct{ status int }

func (e *statusError) Error() string {
	return fmt.Sprintf("token endpoint answered HTTP %d without an OAuth error", e.status)
}
