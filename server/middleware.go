package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"

	"github.com/evergrant/evergrant/oauth"
)

// signalCode is the JSON-RPC error code a tool signal travels with from
// the mcp.Server (the middleware signals, which Protect adds to it) to the
// HTTP layer (the holder). It is in the range JSON-RPC leaves to
// implementations and clear of the codes MCP and the Go SDK use (-32000,
// -32001, -32020…-32022, -32042). It is one constant, not a setting, so the
// two ends cannot disagree (docs/design.md#signal-rule-3).
const signalCode = -32060

// Config configures Protect.
type Config struct {
	// Resource is the canonical URL of the protected MCP endpoint, as
	// clients address it; it names this server in challenges and metadata,
	// and its path is where Protect mounts the endpoint. Required.
	Resource string
	// Metadata is the protected resource metadata document (RFC 9728 §2)
	// Protect serves. AuthorizationServers must name at least one issuer.
	// Its Resource may be left empty: it is set to Resource (a different
	// one is an error). Empty ScopesSupported means Scopes, and empty
	// BearerMethodsSupported means "header", the only method accepted.
	Metadata oauth.ProtectedResourceMetadata
	// Verifier checks tokens. Required.
	Verifier Verifier
	// Scopes are required of every request; a token lacking one gets 403
	// insufficient_scope. They are also named in the challenge to requests
	// without a token.
	Scopes []string
	// Realm, when set, is sent in challenges.
	Realm string
	// HoldNotifications is how long a POST response that so far carries
	// only notifications (progress) is held back in case the tool signals;
	// zero means 250ms, negative means not at all.
	HoldNotifications time.Duration
	// Logger receives one record per refused request, never with token
	// material. Nil discards.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

type tokenInfoKey struct{}

// TokenInfoFromContext returns the verified token of the request, or nil.
// Tool handlers of the official Go SDK also find it, as an auth.TokenInfo,
// in req.Extra.TokenInfo.
func TokenInfoFromContext(ctx context.Context) *TokenInfo {
	ti, _ := ctx.Value(tokenInfoKey{}).(*TokenInfo)
	return ti
}

// middleware is the bearer middleware of Protect.
type middleware struct {
	cfg      Config
	metadata string
	log      *slog.Logger
	now      func() time.Time

	mu       sync.Mutex
	rejected map[string]time.Time // token hash -> until
}

// maxRejected bounds the set of tokens marked rejected by a late signal.
const maxRejected = 100000

// newMiddleware checks cfg and returns the bearer middleware for it, which
// admits only requests with a valid bearer token for cfg.Resource and
// answers the others with the challenges of RFC 6750 §3 and RFC 9728 §5.1
// (docs/design.md#server-rules):
//
//   - no token: 401, Bearer resource_metadata (and scope when configured),
//     no error;
//   - invalid, expired, wrong audience or issuer: 401 invalid_token;
//   - missing scope: 403 insufficient_scope with the scopes needed;
//   - malformed request (several Authorization headers, a token in the
//     URL, a malformed Bearer credential): 400 invalid_request;
//   - verifier unavailable: 503, because the fault is not the client's,
//     with Retry-After: 5 s, or the delay the verifier's error reports
//     through a RetryAfter() time.Duration method in its chain (the
//     JWTVerifier does when a key set refetch is rate-limited).
//
// It also turns tool signals (TokenExpired, InsufficientScope) into 401 or
// 403 answers on the same HTTP response (docs/design.md#signal-rules). The
// verified token reaches handlers through TokenInfoFromContext and, for
// the official Go SDK, as req.Extra.TokenInfo.
func newMiddleware(cfg Config) (*middleware, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("server: Config.Verifier is required")
	}
	res, err := oauth.CanonicalResource(cfg.Resource)
	if err != nil {
		return nil, fmt.Errorf("server: Config.Resource: %w", err)
	}
	cfg.Resource = res
	m := &middleware{cfg: cfg, log: cfg.Logger, now: cfg.Now, rejected: map[string]time.Time{}}
	// Every challenge names the path-inserted metadata URL, where Protect
	// serves the document (RFC 9728 §5.1, docs/design.md#server-rule-9).
	if m.metadata, err = oauth.ProtectedResourceMetadataURL(res); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.cfg.HoldNotifications == 0 {
		m.cfg.HoldNotifications = 250 * time.Millisecond
	}
	return m, nil
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// challenge writes a Bearer challenge answer.
func (m *middleware) challenge(w http.ResponseWriter, status int, ch oauth.BearerChallenge) {
	ch.Realm = m.cfg.Realm
	ch.ResourceMetadata = m.metadata
	h := w.Header()
	h.Set("WWW-Authenticate", ch.String())
	// Browser-based clients must be able to read the challenge.
	h.Add("Access-Control-Expose-Headers", "WWW-Authenticate")
	if ch.Error == "" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		fmt.Fprintln(w, http.StatusText(status))
		return
	}
	oauth.WriteError(w, &oauth.Error{Code: ch.Error, Description: ch.ErrorDescription, StatusCode: status})
}

// bearerToken extracts the token of RFC 6750 §2.1 from the Authorization
// header, the only place evergrant accepts one. ok=false with a message
// means a malformed request.
func bearerToken(r *http.Request) (token string, msg string) {
	if r.URL.Query().Has("access_token") {
		return "", "access tokens are accepted only in the Authorization header"
	}
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return "", ""
	}
	if len(vals) > 1 {
		return "", "more than one Authorization header"
	}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", "" // another scheme: no bearer token
	}
	tok := strings.TrimLeft(rest, " ")
	if tok == "" || !isToken68(tok) {
		return "", "malformed Bearer credentials"
	}
	return tok, ""
}

// isToken68 checks RFC 6750 §2.1 b64token syntax.
func isToken68(s string) bool {
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

func (m *middleware) wrap(next http.Handler) http.Handler {
	// The SDK keeps its TokenInfo under a private context key that only its
	// own RequireBearerToken sets; run it behind ours with a verifier that
	// hands over what we verified.
	sdk := auth.RequireBearerToken(func(ctx context.Context, _ string, _ *http.Request) (*auth.TokenInfo, error) {
		ti := TokenInfoFromContext(ctx)
		if ti == nil {
			return nil, auth.ErrInvalidToken
		}
		return sdkTokenInfo(ti), nil
	}, &auth.RequireBearerTokenOptions{AllowMissingExpiration: true, ClockSkew: time.Hour})(next)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			next.ServeHTTP(w, r) // CORS preflights carry no credentials
			return
		}
		tok, bad := bearerToken(r)
		switch {
		case bad != "":
			m.log.Info("request refused", "reason", "invalid_request", "detail", bad)
			m.challenge(w, http.StatusBadRequest, oauth.BearerChallenge{Error: oauth.ErrorInvalidRequest, ErrorDescription: bad})
			return
		case tok == "":
			m.challenge(w, http.StatusUnauthorized, oauth.BearerChallenge{Scope: m.cfg.Scopes})
			return
		}
		h := hashToken(tok)
		if m.isRejected(h) {
			m.log.Info("request refused", "reason", "invalid_token", "detail", "token rejected earlier by a tool")
			m.challenge(w, http.StatusUnauthorized, oauth.BearerChallenge{Error: oauth.ErrorInvalidToken, ErrorDescription: "the access token was rejected upstream"})
			return
		}
		ti, err := m.cfg.Verifier.Verify(r.Context(), tok)
		switch {
		case errors.Is(err, ErrInvalidToken):
			m.log.Info("request refused", "reason", "invalid_token", "detail", err.Error())
			m.challenge(w, http.StatusUnauthorized, oauth.BearerChallenge{Error: oauth.ErrorInvalidToken, ErrorDescription: describe(err)})
			return
		case err != nil || ti == nil:
			m.log.Warn("token verification unavailable", "error", err)
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(err)))
			oauth.WriteError(w, &oauth.Error{Code: oauth.ErrorTemporarilyUnavailable, Description: "the access token could not be verified now", StatusCode: http.StatusServiceUnavailable})
			return
		}
		if missing := missingScopes(ti.Scopes, m.cfg.Scopes); len(missing) > 0 {
			m.log.Info("request refused", "reason", "insufficient_scope", "missing", strings.Join(missing, " "))
			m.challenge(w, http.StatusForbidden, oauth.BearerChallenge{Error: oauth.ErrorInsufficientScope, Scope: m.cfg.Scopes,
				ErrorDescription: "the access token lacks a required scope"})
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), tokenInfoKey{}, ti))
		if r.Method != http.MethodPost {
			sdk.ServeHTTP(w, r)
			return
		}
		hw := newHolder(w, m, h, ti)
		defer hw.finish()
		sdk.ServeHTTP(hw, r)
	})
}

// Retry-After bounds, in seconds, of a 503 for an unavailable verifier.
const (
	defaultRetryAfter = 5
	maxRetryAfter     = 3600
)

// retryAfterSeconds is the Retry-After of a 503 for err: the delay an error
// in its chain reports with a RetryAfter() time.Duration method, rounded up
// to whole seconds and clamped to [1 s, 1 h], or 5 s.
func retryAfterSeconds(err error) int {
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) {
		return defaultRetryAfter
	}
	switch d := ra.RetryAfter(); {
	case d <= 0:
		return defaultRetryAfter
	case d >= maxRetryAfter*time.Second:
		return maxRetryAfter
	default:
		return int((d + time.Second - 1) / time.Second)
	}
}

// describe turns a verifier error into an error_description: the first
// line of its text, without the sentinel prefix.
func describe(err error) string {
	s := strings.TrimPrefix(err.Error(), ErrInvalidToken.Error()+": ")
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func missingScopes(have, need []string) []string {
	var out []string
	for _, s := range need {
		if !slices.Contains(have, s) {
			out = append(out, s)
		}
	}
	return out
}

// sdkTokenInfo converts ti for the official Go SDK: the subject becomes the
// UserID sessions are bound to, and Extra holds ti.Extra plus the verified
// "client_id" and "issuer", which a claim of the same name in ti.Extra
// does not override.
func sdkTokenInfo(ti *TokenInfo) *auth.TokenInfo {
	extra := make(map[string]any, len(ti.Extra)+2)
	maps.Copy(extra, ti.Extra)
	extra["client_id"] = ti.ClientID
	extra["issuer"] = ti.Issuer
	return &auth.TokenInfo{Scopes: ti.Scopes, Expiration: ti.Expiry, UserID: ti.Subject, Extra: extra}
}

// reject marks a token rejected until its expiry (a tool said it no longer
// works upstream), so its next request gets 401 invalid_token.
func (m *middleware) reject(h string, until time.Time) {
	now := m.now()
	if until.IsZero() || until.Sub(now) > time.Hour {
		until = now.Add(time.Hour)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.rejected) >= maxRejected {
		for k, u := range m.rejected {
			if now.After(u) {
				delete(m.rejected, k)
			}
		}
		if len(m.rejected) >= maxRejected {
			return
		}
	}
	m.rejected[h] = until
}

func (m *middleware) isRejected(h string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	until, ok := m.rejected[h]
	if ok && m.now().After(until) {
		delete(m.rejected, h)
		return false
	}
	return ok
}

// BearerToken returns the bearer token of a request's header, or "". A tool
// reads it from req.Extra.Header (the header of the very request, also in
// stateful mode, where the handler's context is the session's).
//
// Mind the MCP specification's ban on token passthrough: a token issued for
// this server must not be sent to another service. Send it upstream only
// when the upstream accepts this server's audience as its own (as the
// example's fake upstream does, standing in for an API behind the same
// resource); otherwise obtain a token for the upstream
// (docs/design.md#server-rule-15, docs/design.md#server-upstream).
func BearerToken(h http.Header) string {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}
