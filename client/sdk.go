package client

import (
	"errors"
	"net/http"
	"sync"
)

// ReauthRecorder is an http.RoundTripper that sends requests through
// another one (normally a *Transport) and remembers the NeedsReauthError a
// request failed with, so that a caller can still find it when the MCP
// client library between the Transport and the caller formatted it away.
//
// The official Go SDK (v1.8.0) keeps the error, for errors.As, on the path
// of a request: session.CallTool, ListTools and the other calls, and
// Client.Connect. It loses it (formats it with %v) when a stream it reads in
// the background fails: the standalone GET event stream (first connection
// and reconnections) and the resumption of a POST's event stream. That
// failure breaks the session, and every later call fails with an error that
// names it only in text. Err puts the NeedsReauthError back:
//
//	rec := client.NewReauthRecorder(tr)
//	t := &mcp.StreamableClientTransport{Endpoint: u, HTTPClient: &http.Client{Transport: rec}}
//	…
//	res, err := session.CallTool(ctx, params)
//	if err = rec.Err(err); errors.Is(err, client.ErrNeedsReauth) { … }
//
// Use one ReauthRecorder per session (it is cheap; the Transport underneath
// can be shared). A recorded error is forgotten when a later request to the
// same server, other than a DELETE (which ends a session), gets an answer
// other than 401 or 403: the server accepted a token again.
type ReauthRecorder struct {
	base http.RoundTripper

	mu   sync.Mutex
	errs map[string]*NeedsReauthError // by ServerKey
	last string                       // key of the most recent recording
}

// NewReauthRecorder returns a ReauthRecorder that sends requests with base;
// nil means http.DefaultTransport.
func NewReauthRecorder(base http.RoundTripper) *ReauthRecorder {
	if base == nil {
		base = http.DefaultTransport
	}
	return &ReauthRecorder{base: base, errs: map[string]*NeedsReauthError{}}
}

// RoundTrip implements http.RoundTripper.
func (r *ReauthRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	key, kerr := ServerKey(req.URL.String())
	if kerr != nil {
		return resp, err
	}
	var ne *NeedsReauthError
	switch {
	case errors.As(err, &ne):
		// Keep the first error until it is cleared: it names the cause
		// (say, refresh_rejected with invalid_grant), while the ones after
		// it only repeat that there is no grant left (no_refresh_token).
		r.mu.Lock()
		if r.errs[key] == nil {
			r.errs[key] = ne
		}
		r.last = key
		r.mu.Unlock()
	case err == nil && req.Method != http.MethodDelete &&
		resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden:
		// The server accepted a token again. A DELETE does not count: it
		// ends a session, which the SDK does also after the failure.
		r.mu.Lock()
		delete(r.errs, key)
		r.mu.Unlock()
	}
	return resp, err
}

// CloseIdleConnections closes the idle connections of the underlying
// RoundTripper when it has that method.
func (r *ReauthRecorder) CloseIdleConnections() {
	if c, ok := r.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// NeedsReauth returns the first NeedsReauthError recorded for serverURL and
// not yet cleared by a later accepted request, or nil. An empty serverURL means
// the most recently recorded one.
func (r *ReauthRecorder) NeedsReauth(serverURL string) *NeedsReauthError {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := r.last
	if serverURL != "" {
		k, err := ServerKey(serverURL)
		if err != nil {
			return nil
		}
		key = k
	}
	return r.errs[key]
}

// Err returns err so that errors.As finds the recorded NeedsReauthError in
// it (and errors.Is(err, ErrNeedsReauth) holds) whenever one is recorded.
// That is err itself when it is nil, when nothing is recorded, or when the
// NeedsReauthError it carries is the recorded one. Otherwise it is an
// error with err's text that wraps the recorded NeedsReauthError first and
// err second: errors.Is and errors.As still find everything err wraps, and
// errors.As for a *NeedsReauthError finds the first one of the failure, the
// one that names its cause. (Both SDKs, when server/discover fails, fall
// back to initialize; that second request fails with no_refresh_token and
// its error is the one returned, while the cause was refresh_rejected.)
func (r *ReauthRecorder) Err(err error) error {
	if err == nil {
		return nil
	}
	first := r.NeedsReauth("")
	if first == nil {
		return err
	}
	var ne *NeedsReauthError
	if errors.As(err, &ne) && ne == first {
		return err
	}
	return &reauthLostError{err: err, reauth: first}
}

// reauthLostError is an MCP library's error with the NeedsReauthError it
// lost attached again.
type reauthLostError struct {
	err    error
	reauth *NeedsReauthError
}

func (e *reauthLostError) Error() string   { return e.err.Error() }
func (e *reauthLostError) Unwrap() []error { return []error{e.reauth, e.err} }
