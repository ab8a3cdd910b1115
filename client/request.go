package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// call is one logical request (one RoundTrip): the caller's request, its
// replayable body, the grant it is sent with, and the refresh it already
// started or joined. A call is used by one goroutine.
type call struct {
	req  *http.Request
	body body
	gs   *grantState
	// g is the grant the request was sent with (nil: none was stored) and
	// token its access token ("" when none was sent).
	g     *store.Grant
	token string
	// prior is the refresh this request started or joined before it was
	// sent (docs/design.md#client-rule-8): its one refresh
	// (docs/design.md#client-rule-5), which a 401 then waits for instead
	// of starting another. Nil when there was none.
	prior *pendingRefresh
}

// key is the server key of the call's grant.
func (c *call) key() string { return c.gs.key }

// body is a request body that can be sent more than once.
type body struct {
	replayable bool
	getBody    func() (io.ReadCloser, error)
}

// prepareBody makes req's body replayable (docs/design.md#client-rule-9):
// through GetBody, or by buffering up to MaxBufferedBody. A larger body is
// sent once, as it is.
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

// send sends one attempt of c's request with token (or none); first is
// false for a retry, which replays the body.
func (t *Transport) send(c *call, token string, first bool) (*http.Response, error) {
	req := c.req
	r := req.Clone(req.Context())
	if !first || req.Body == nil {
		if c.body.getBody == nil {
			return nil, errors.New("request body cannot be replayed")
		}
		rc, err := c.body.getBody()
		if err != nil {
			return nil, fmt.Errorf("replay request body: %w", err)
		}
		r.Body = rc
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	c.gs.accepted(token, resp.StatusCode)
	return resp, nil
}

// discard drains a little of a response body and closes it, so the
// connection can be reused.
func discard(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// challengeEvent is the event of a 401 or 403 answer to c.
func challengeEvent(kind EventKind, c *call, resp *http.Response) Event {
	return Event{Kind: kind, Server: c.key(), Method: c.req.Method, Request: c.req, Status: resp.StatusCode,
		Challenge: strings.Join(resp.Header.Values("WWW-Authenticate"), ", ")}
}

// decide handles the first answer to a request: the rules of
// docs/design.md#client-rules decide whether it goes back as it is, or
// the request is refreshed, authorized or stepped up and sent once more.
func (t *Transport) decide(c *call, resp *http.Response) (*http.Response, error) {
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return t.unauthorized(c, resp)
	case http.StatusForbidden:
		return t.forbidden(c, resp)
	}
	return resp, nil
}

// unauthorized decides on a 401.
func (t *Transport) unauthorized(c *call, resp *http.Response) (*http.Response, error) {
	t.stats.unauthorized.Add(1)
	ch, _ := oauth.ParseBearerChallenge(resp.Header)
	t.emit(challengeEvent(EventUnauthorized, c, resp))
	if !c.body.replayable {
		return resp, nil // client-rule-9: cannot retry, the 401 goes back as is
	}
	noRefresh := c.g == nil || c.g.RefreshToken == ""
	switch {
	case c.token != "" && ch.Error == oauth.ErrorInvalidToken && !noRefresh:
		discard(resp)
		return t.refreshAndRetry(c)
	case c.token != "" && noRefresh && t.cfg.Authorizer != nil && (ch.Error == "" || ch.Error == oauth.ErrorInvalidToken):
		// Nothing to refresh with: sign in again (client-rule-6, last
		// part), rediscovering from this challenge (the resource may have
		// moved to another authorization server).
		discard(resp)
		return t.authorizeAndRetry(c, ch)
	case c.token != "" && ch.Error == oauth.ErrorInvalidToken:
		// Reload under the lock: another process may hold a refresh
		// token; else needs_reauth (no_refresh_token).
		discard(resp)
		c.prior = nil
		return t.refreshAndRetry(c)
	case c.token != "":
		// client-rule-6: no refresh on a 401 without error or with another
		// error; the answer goes back as it is.
		return resp, nil
	default:
		// No token was sent: authorize if we can (client-rule-6, last part).
		discard(resp)
		return t.authorizeAndRetry(c, ch)
	}
}

// forbidden decides on a 403: a 403 insufficient_scope is a step-up
// (docs/design.md#client-rule-6); any other 403 goes back as it is.
func (t *Transport) forbidden(c *call, resp *http.Response) (*http.Response, error) {
	ch, ok := oauth.ParseBearerChallenge(resp.Header)
	if !ok || ch.Error != oauth.ErrorInsufficientScope {
		return resp, nil
	}
	t.emit(challengeEvent(EventForbidden, c, resp))
	discard(resp)
	var granted []string
	if c.g != nil {
		granted = c.g.Scopes
	}
	// Only a POST may start a step-up sign-in (see authorizeAndRetry): for
	// the event stream (GET) or a DELETE the answer is the scope error
	// itself, not a needs-reauth.
	if t.cfg.Authorizer == nil || !c.body.replayable || c.req.Method != http.MethodPost {
		return nil, &InsufficientScopeError{Server: c.key(), Required: ch.Scope, Granted: granted, Description: ch.ErrorDescription}
	}
	// Step-up for the union of granted and challenged scopes, once.
	union := slices.Clone(granted)
	for _, s := range ch.Scope {
		if !slices.Contains(union, s) {
			union = append(union, s)
		}
	}
	ng, err := t.authorizeOnce(c.req.Context(), c.key(), ch, union)
	if err != nil {
		// The grant still works for all it covers: the answer is the scope
		// error, with the failed sign-in as its cause, not a needs-reauth.
		var ne *NeedsReauthError
		if errors.As(err, &ne) && ne.Reason == ReasonAuthorizationFailed && ne.Err != nil {
			err = ne.Err
		}
		return nil, &InsufficientScopeError{Server: c.key(), Required: ch.Scope, Granted: granted, Description: ch.ErrorDescription, Err: err}
	}
	r2, err := t.retry(c, ng, ReasonRejectedAfterAuthorization)
	if err != nil {
		return nil, err
	}
	if r2.StatusCode == http.StatusForbidden {
		if ch2, ok := oauth.ParseBearerChallenge(r2.Header); ok && ch2.Error == oauth.ErrorInsufficientScope {
			discard(r2)
			return nil, &InsufficientScopeError{Server: c.key(), Required: ch2.Scope, Granted: union, Description: ch2.ErrorDescription}
		}
	}
	return r2, nil
}

// refreshAndRetry is client-rules 1, 2 and 5: one refresh, one retry. When
// c.prior is set it is the request's one refresh, and no other is started.
func (t *Transport) refreshAndRetry(c *call) (*http.Response, error) {
	ctx := c.req.Context()
	if c.gs.isRejected(c.token) {
		// This token already came from a refresh and was rejected: do not
		// refresh again for it (client-rule-5 across reconnects). But
		// another process may have signed in since: use its grant
		// (client-rule-7).
		if fresh, err := t.store.Load(ctx, c.key()); err == nil && fresh.AccessToken != "" && fresh.AccessToken != c.token {
			c.gs.loaded(fresh)
			return t.retry(c, fresh, ReasonRejectedAfterRefresh)
		}
		return nil, t.needsReauth(nil, c.gs, c.g, ReasonRejectedAfterRefresh, nil)
	}
	var ng *store.Grant
	var err error
	if c.prior != nil {
		// The refresh before sending: its failure is this request's
		// answer (client-rule-5: no second refresh).
		if ng, err = c.prior.wait(ctx); err != nil {
			return nil, err
		}
		if ng.AccessToken == c.token {
			// The token the refresh gave was sent, and rejected.
			return nil, t.rejectedAfterRefresh(c.gs, ng)
		}
	} else {
		// With no refresh token in the cached grant, refreshGrant still
		// reloads under the lock: another process may have refreshed or
		// signed in.
		if ng, err = t.refreshGrant(ctx, c.gs, c.token, false); err != nil {
			return nil, err
		}
	}
	t.stats.retries.Add(1)
	t.emit(Event{Kind: EventRetry, Server: c.key(), Method: c.req.Method, Request: c.req})
	r2, err := t.send(c, ng.AccessToken, false)
	if err != nil {
		return nil, err
	}
	if r2.StatusCode == http.StatusUnauthorized {
		t.stats.unauthorized.Add(1)
		ch, _ := oauth.ParseBearerChallenge(r2.Header)
		t.emit(challengeEvent(EventUnauthorized, c, r2))
		if ch.Error == oauth.ErrorInvalidToken {
			discard(r2)
			return nil, t.rejectedAfterRefresh(c.gs, ng)
		}
	}
	return r2, nil
}

// rejectedAfterRefresh marks ng's access token, which a refresh gave and
// the server rejected, so no later request refreshes for it
// (client-rule-5), and returns the error.
func (t *Transport) rejectedAfterRefresh(gs *grantState, ng *store.Grant) *NeedsReauthError {
	gs.rejectedAfterRefresh(ng.AccessToken)
	return t.needsReauth(nil, gs, ng, ReasonRejectedAfterRefresh, nil)
}

// authorizeAndRetry runs the interactive authorization after a 401 (if
// configured) and sends the request once more.
func (t *Transport) authorizeAndRetry(c *call, ch oauth.BearerChallenge) (*http.Response, error) {
	ctx := c.req.Context()
	// Another process may have signed in since this request was sent.
	if fresh, err := t.store.Load(ctx, c.key()); err == nil && fresh.AccessToken != "" && (c.g == nil || fresh.AccessToken != c.g.AccessToken) {
		c.gs.loaded(fresh)
		return t.retry(c, fresh, ReasonRejectedAfterAuthorization)
	}
	// Only a POST (a call the host makes) may start a sign-in: a GET is the
	// background event stream or its reconnect, a DELETE closes a session;
	// neither may open a browser by itself.
	if t.cfg.Authorizer == nil || c.req.Method != http.MethodPost {
		reason := ReasonNoGrant
		if c.g != nil {
			reason = ReasonNoRefreshToken
		}
		return nil, t.needsReauth(nil, c.gs, c.g, reason, nil)
	}
	ng, err := t.authorizeOnce(ctx, c.key(), ch, nil)
	if err != nil {
		var ne *NeedsReauthError
		if errors.As(err, &ne) {
			t.stats.needsReauth.Add(1)
			t.emit(Event{Kind: EventNeedsReauth, Server: c.key(), Err: err})
		}
		return nil, err
	}
	return t.retry(c, ng, ReasonRejectedAfterAuthorization)
}

// retry sends the request once more with g's token; a 401 then is final,
// a NeedsReauthError with reason.
func (t *Transport) retry(c *call, g *store.Grant, reason Reason) (*http.Response, error) {
	t.stats.retries.Add(1)
	t.emit(Event{Kind: EventRetry, Server: c.key(), Method: c.req.Method, Request: c.req})
	r2, err := t.send(c, g.AccessToken, false)
	if err != nil {
		return nil, err
	}
	if r2.StatusCode == http.StatusUnauthorized {
		t.stats.unauthorized.Add(1)
		discard(r2)
		return nil, t.needsReauth(nil, c.gs, g, reason, nil)
	}
	return r2, nil
}
