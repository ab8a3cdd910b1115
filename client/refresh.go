package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// refreshGrant returns a grant whose access token is not failed, refreshing
// the grant if nobody else has (DESIGN §3.1 rule 7): one refresh per grant
// however many requests ask at once, in this process (singleflight) and
// across processes sharing the store (its lock). The refresh runs on its own
// timeout, detached from the callers' contexts, because a refresh token the
// server consumed must not be lost to one caller's cancellation; each caller
// waits only as long as its own context allows.
func (t *Transport) refreshGrant(ctx context.Context, key, failed string, proactive bool) (*store.Grant, error) {
	flight := key + "\x00" + tokenHash(failed)
	ch := t.refresh.DoChan(flight, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.RefreshTimeout)
		defer cancel()
		l := &later{}
		g, err := t.refreshLocked(rctx, key, failed, proactive, l)
		l.run() // hooks run once the grant's lock is released
		return g, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*store.Grant).Clone(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refreshLocked is the lock, reload, refresh-if-needed, save protocol.
func (t *Transport) refreshLocked(ctx context.Context, key, failed string, proactive bool, l *later) (*store.Grant, error) {
	unlock, err := t.store.Lock(ctx, key)
	if err != nil {
		return nil, &RefreshUnavailableError{Server: key, Err: fmt.Errorf("lock grant: %w", err)}
	}
	defer unlock()
	g, err := t.store.Load(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		t.forget(key)
		return nil, t.needsReauthLater(l, key, nil, ReasonNoGrant, nil)
	}
	if err != nil {
		return nil, &RefreshUnavailableError{Server: key, Err: fmt.Errorf("load grant: %w", err)}
	}
	// Someone else refreshed (or signed in) since this token was sent: use
	// their result without a new grant (rule 7).
	if g.AccessToken != "" && g.AccessToken != failed && !(proactive && t.expiresSoon(g)) {
		t.remember(g)
		return g, nil
	}
	if g.RefreshToken == "" {
		t.remember(g)
		return nil, t.needsReauthLater(l, key, g, ReasonNoRefreshToken, nil)
	}
	start := t.now()
	t.count(statRefreshes)
	resp, err := t.tokenRequest(ctx, g, url.Values{
		"grant_type":    {oauth.GrantTypeRefreshToken},
		"refresh_token": {g.RefreshToken},
	})
	ev := RefreshEvent{Server: key, GrantID: grantID(key), Proactive: proactive, Latency: t.now().Sub(start)}
	var oe *oauth.Error
	switch {
	case errors.As(err, &oe) && rejectsRefresh(oe.Status()):
		// Rule 3: the refresh token is refused: discard it, keep the rest of
		// the grant (client registration, endpoints) for a new sign-in.
		g.RefreshToken = ""
		if !proactive || g.Expiry.IsZero() || !t.now().Before(g.Expiry) {
			// Keep an access token that is still good (a refused proactive
			// refresh); drop one that has been rejected.
			g.AccessToken, g.Expiry = "", time.Time{}
		}
		g.UpdatedAt = t.now()
		if serr := t.store.Save(ctx, g); serr != nil {
			t.log.Error("save grant after refused refresh", "grant_id", ev.GrantID, "error", serr)
		}
		if oe.Code == oauth.ErrorInvalidClient {
			// The authorization server no longer knows this client (it was
			// reset, or the registration expired): forget the registration,
			// so the next sign-in registers again instead of failing.
			if derr := t.store.DeleteRegistration(ctx, g.Issuer, g.ClientID); derr != nil {
				t.log.Error("forget stale registration", "grant_id", ev.GrantID, "error", derr)
			}
		}
		t.remember(g)
		ev.Outcome, ev.Err = "rejected", oe
		t.refreshed(l, ev)
		return nil, t.needsReauthLater(l, key, g, ReasonRefreshRejected, oe)
	case err != nil:
		// Rule 4: unreachable, timed out or 5xx: keep the refresh token.
		ue := &RefreshUnavailableError{Server: key, Issuer: g.Issuer, Err: err}
		var se *statusError
		if oe != nil {
			ue.StatusCode = oe.Status()
		} else if errors.As(err, &se) {
			ue.StatusCode = se.status
		}
		ev.Outcome, ev.Err = "unavailable", ue
		t.refreshed(l, ev)
		return nil, ue
	}
	// Rule 2: rotation replaces the refresh token; an answer without one
	// keeps the old one. The grant is saved before anyone retries.
	ev.Rotated = resp.RefreshToken != "" && resp.RefreshToken != g.RefreshToken
	t.apply(g, resp)
	if err := t.store.Save(ctx, g); err != nil {
		if err = t.store.Save(ctx, g); err != nil {
			// The new tokens are good but not saved: use them in this process
			// and report it (other processes still hold the consumed refresh
			// token, so their next refresh will fail).
			t.log.Error("save refreshed grant", "grant_id", ev.GrantID, "error", err)
			ev.Err = fmt.Errorf("the refreshed grant could not be saved: %w", err)
		}
	}
	t.remember(g)
	ev.Outcome = "ok"
	t.refreshed(l, ev)
	return g, nil
}

// rejectsRefresh reports whether a token endpoint status means the refresh
// token was refused, as opposed to a passing failure.
func rejectsRefresh(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}

func (t *Transport) refreshed(l *later, ev RefreshEvent) {
	if ev.Outcome != "ok" {
		t.count(statRefreshFailure)
	}
	t.log.Info("refresh", "grant_id", ev.GrantID, "server", ev.Server, "outcome", ev.Outcome,
		"rotated", ev.Rotated, "proactive", ev.Proactive, "latency", ev.Latency, "error", errString(ev.Err))
	l.do(func() {
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

func (t *Transport) forget(key string) {
	t.mu.Lock()
	delete(t.cache, key)
	t.mu.Unlock()
}

// tokenRequest posts form to g's token endpoint with the client
// authentication of g's registration and the resource indicator (RFC 8707).
// An OAuth error answer is returned as *oauth.Error.
func (t *Transport) tokenRequest(ctx context.Context, g *store.Grant, form url.Values) (*oauth.TokenResponse, error) {
	if g.Resource != "" {
		form.Set("resource", g.Resource)
	}
	return t.postToken(ctx, g.TokenEndpoint, clientCreds{g.ClientID, g.ClientSecret, g.AuthMethod}, form)
}

type clientCreds struct{ id, secret, method string }

func (c clientCreds) authMethod() string {
	if c.method != "" {
		return c.method
	}
	if c.secret != "" {
		return oauth.AuthMethodClientSecretBasic
	}
	return oauth.AuthMethodNone
}

func (t *Transport) postToken(ctx context.Context, endpoint string, c clientCreds, form url.Values) (*oauth.TokenResponse, error) {
	if err := oauth.CheckEndpointURL(endpoint); err != nil {
		return nil, fmt.Errorf("token endpoint: %w", err)
	}
	basic := false
	switch c.authMethod() {
	case oauth.AuthMethodClientSecretBasic:
		basic = true
	case oauth.AuthMethodClientSecretPost:
		form.Set("client_id", c.id)
		form.Set("client_secret", c.secret)
	default:
		form.Set("client_id", c.id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if basic {
		// RFC 6749 §2.3.1: form-urlencode both parts first.
		req.SetBasicAuth(url.QueryEscape(c.id), url.QueryEscape(c.secret))
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
