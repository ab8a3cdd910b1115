package authserver_test

import (
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/testclock"
)

const csrfCookiePrefix = "evergrant_csrf_"

// csrfCookie is the name of the CSRF cookie of the consent request id.
func csrfCookie(id string) string {
	if len(id) > 12 {
		id = id[:12]
	}
	return csrfCookiePrefix + id
}

// consentEnv is a server that shows the consent page, with a registered
// public client and, when clk is non-nil, a hand-moved clock.
func consentEnv(t *testing.T, clk *testclock.Clock) (*env, string) {
	t.Helper()
	e := newEnv(t, func(c *authserver.Config) {
		c.AutoApprove = false
		if clk != nil {
			c.Now = clk.Now
		}
	})
	return e, e.RegisterPublic(loopbackRedir)
}

// consentPage is what GET /authorize returned when it showed the consent
// page: the response (body read), the body, and the form's hidden fields.
type consentPage struct {
	resp    *http.Response
	body    string
	request string // hidden field "request"
	csrf    string // hidden field "csrf"
	cookie  *http.Cookie
}

var (
	hiddenRequestRE = regexp.MustCompile(`<input type="hidden" name="request" value="([^"]*)">`)
	hiddenCSRFRE    = regexp.MustCompile(`<input type="hidden" name="csrf" value="([^"]*)">`)
	formActionRE    = regexp.MustCompile(`<form method="post" action="([^"]*)">`)
)

// getConsent sends the authorization request and expects the consent page.
func getConsent(t *testing.T, e *env, q url.Values) *consentPage {
	t.Helper()
	r, err := e.Client.Get(e.URL(authserver.PathAuthorize) + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	p := &consentPage{resp: r, body: string(b)}
	if r.StatusCode != http.StatusOK {
		t.Fatalf("authorization request: status %d (Location %q), want 200 with the consent page", r.StatusCode, r.Header.Get("Location"))
	}
	if m := hiddenRequestRE.FindStringSubmatch(p.body); m != nil {
		p.request = m[1]
	}
	if m := hiddenCSRFRE.FindStringSubmatch(p.body); m != nil {
		p.csrf = m[1]
	}
	if p.request == "" || p.csrf == "" {
		t.Fatalf("consent page has no request/csrf hidden fields:\n%s", p.body)
	}
	for _, c := range r.Cookies() {
		if c.Name == csrfCookie(p.request) {
			p.cookie = c
		}
	}
	if p.cookie == nil {
		t.Fatalf("consent page sets no %s cookie; Set-Cookie: %q", csrfCookie(p.request), r.Header.Values("Set-Cookie"))
	}
	return p
}

// submitConsent posts the consent form; cookie may be nil.
func submitConsent(t *testing.T, e *env, form url.Values, cookie *http.Cookie) (*http.Response, string) {
	t.Helper()
	return submitConsentTo(t, e.URL(authserver.PathConsent), e, form, cookie)
}

func submitConsentTo(t *testing.T, target string, e *env, form url.Values, cookie *http.Cookie) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, target, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if cookie != nil {
		req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	}
	r, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	return r, string(b)
}

// form returns the form the page would submit with the given button.
func (p *consentPage) form(action string) url.Values {
	return url.Values{"request": {p.request}, "csrf": {p.csrf}, "action": {action}}
}

// wantForbidden checks a refused consent submission: 403, an HTML page, no
// redirect anywhere.
func wantForbidden(t *testing.T, what string, r *http.Response, body string) {
	t.Helper()
	if r.StatusCode != http.StatusForbidden {
		t.Errorf("%s: status %d, want 403", what, r.StatusCode)
	}
	if loc := r.Header.Get("Location"); loc != "" {
		t.Errorf("%s: redirected to %q, want no redirect", what, loc)
	}
	if strings.Contains(body, "code=") || strings.Contains(body, loopbackRedir) {
		t.Errorf("%s: refusal page mentions a code or the redirect URI:\n%s", what, body)
	}
}

func TestConsent_PageIsProtected(t *testing.T) {
	e, id := consentEnv(t, nil)
	_, challenge := pkce()
	p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	h := p.resp.Header

	if loc := h.Get("Location"); loc != "" {
		t.Errorf("consent page carries Location %q", loc)
	}
	for _, tt := range []struct{ header, want string }{
		{"Content-Type", "text/html"},
		{"X-Frame-Options", "DENY"},
		{"Content-Security-Policy", "frame-ancestors 'none'"},
		{"Cache-Control", "no-store"},
	} {
		if got := h.Get(tt.header); !strings.Contains(got, tt.want) {
			t.Errorf("%s = %q, want it to contain %q", tt.header, got, tt.want)
		}
	}
	if got := h.Get("X-Frame-Options"); !strings.EqualFold(got, "DENY") {
		t.Errorf("X-Frame-Options = %q, want DENY", got)
	}

	c := p.cookie
	if !c.HttpOnly {
		t.Error("CSRF cookie is not HttpOnly")
	}
	if c.SameSite != http.SameSiteStrictMode {
		t.Errorf("CSRF cookie SameSite = %v, want Strict", c.SameSite)
	}
	if c.Value == "" || c.Value != p.csrf {
		t.Errorf("CSRF cookie value %q does not equal the form's csrf field %q", c.Value, p.csrf)
	}
	if c.Path != authserver.PathConsent {
		t.Errorf("CSRF cookie Path = %q, want %q (sent only with the form)", c.Path, authserver.PathConsent)
	}
	if c.MaxAge <= 0 || c.MaxAge > int(time.Hour/time.Second) {
		t.Errorf("CSRF cookie MaxAge = %d, want a short positive lifetime", c.MaxAge)
	}
	if m := formActionRE.FindStringSubmatch(p.body); m == nil || m[1] != authserver.PathConsent {
		t.Errorf("form action = %v, want %q", m, authserver.PathConsent)
	}
	if len(p.csrf) < 22 || p.request == p.csrf {
		t.Errorf("csrf token %q is short or equals the request id", p.csrf)
	}

	// The page tells the user what is being asked.
	for _, want := range []string{"test client", "mcp:tools", testResource, "http://127.0.0.1", "demo-user"} {
		if !strings.Contains(p.body, want) {
			t.Errorf("consent page does not mention %q", want)
		}
	}

	// Every showing gets fresh values.
	p2 := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	if p2.request == p.request || p2.csrf == p.csrf {
		t.Error("two consent pages share a request id or CSRF token")
	}
}

func TestConsent_HTMLIsEscaped(t *testing.T) {
	e := newEnv(t, func(c *authserver.Config) { c.AutoApprove = false })
	const evil = `<script>alert("pwned")</script><img src=x onerror=alert(1)>`
	st, resp := e.Register(map[string]any{
		"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none",
		"client_name": evil,
	})
	if st != http.StatusCreated {
		t.Fatalf("register: %d %v", st, resp)
	}
	_, challenge := pkce()
	p := getConsent(t, e, authParams(str(resp, "client_id"), loopbackRedir, challenge))
	lower := strings.ToLower(p.body)
	for _, bad := range []string{"<script", "<img", "onerror=alert(1)>"} {
		if strings.Contains(lower, bad) {
			t.Errorf("consent page contains %q unescaped", bad)
		}
	}
	if !strings.Contains(p.body, "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;") {
		t.Errorf("consent page does not show the escaped client name:\n%s", p.body)
	}
}

func TestConsent_ApproveRedirectsWithCode(t *testing.T) {
	e, id := consentEnv(t, nil)
	verifier, challenge := pkce()
	p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	r, _ := submitConsent(t, e, p.form("approve"), p.cookie)
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("approve: status %d, want 303", r.StatusCode)
	}
	q := redirectParams(t, r, loopbackRedir)
	if q.Get("error") != "" {
		t.Fatalf("approve: error %s: %s", q.Get("error"), q.Get("error_description"))
	}
	if q.Get("code") == "" || q.Get("state") != "st-123" || q.Get("iss") != e.AS.Issuer() {
		t.Fatalf("approve redirect query %v, want code, state=st-123, iss=%s", q, e.AS.Issuer())
	}
	if cc := r.Header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Errorf("approve redirect Cache-Control = %q, want no-store", cc)
	}
	cleared := false
	for _, c := range r.Cookies() {
		if strings.HasPrefix(c.Name, csrfCookiePrefix) && c.MaxAge < 0 {
			cleared = true
		}
	}
	if !cleared {
		t.Errorf("approve does not clear the CSRF cookie; Set-Cookie: %q", r.Header.Values("Set-Cookie"))
	}

	st, tok := e.Exchange(id, loopbackRedir, q.Get("code"), verifier)
	if st != http.StatusOK || str(tok, "access_token") == "" || str(tok, "refresh_token") == "" {
		t.Fatalf("exchange of the consented code: %d %v", st, tok)
	}
	in := e.Introspect(str(tok, "access_token"))
	if in["active"] != true || in["sub"] != "demo-user" || in["client_id"] != id || in["scope"] != "mcp:tools" {
		t.Errorf("introspection of the consented token: %v", in)
	}
}

func TestConsent_DenyRedirectsAccessDenied(t *testing.T) {
	e, id := consentEnv(t, nil)
	_, challenge := pkce()
	p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	r, _ := submitConsent(t, e, p.form("deny"), p.cookie)
	if r.StatusCode != http.StatusSeeOther {
		t.Fatalf("deny: status %d, want 303", r.StatusCode)
	}
	q := redirectParams(t, r, loopbackRedir)
	if q.Get("error") != "access_denied" || q.Get("state") != "st-123" || q.Get("iss") != e.AS.Issuer() {
		t.Fatalf("deny redirect query %v, want error=access_denied, state=st-123, iss=%s", q, e.AS.Issuer())
	}
	if q.Has("code") {
		t.Fatalf("deny redirect carries a code: %v", q)
	}
}

// TestConsent_UnknownActionDenies: only an explicit approve approves.
func TestConsent_UnknownActionDenies(t *testing.T) {
	e, id := consentEnv(t, nil)
	for _, action := range []string{"", "APPROVE", "approve ", "yes"} {
		_, challenge := pkce()
		p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
		f := p.form(action)
		if action == "" {
			f.Del("action")
		}
		r, _ := submitConsent(t, e, f, p.cookie)
		q := redirectParams(t, r, loopbackRedir)
		if q.Get("error") != "access_denied" || q.Has("code") {
			t.Errorf("action %q: redirect query %v, want access_denied and no code", action, q)
		}
	}
}

func TestConsent_CSRFCookieMustMatch(t *testing.T) {
	e, id := consentEnv(t, nil)
	_, challenge := pkce()
	p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	other := getConsent(t, e, authParams(id, loopbackRedir, challenge)) // another pending request

	cookie := func(v string) *http.Cookie { return &http.Cookie{Name: csrfCookie(p.request), Value: v} }
	for _, tt := range []struct {
		name   string
		form   url.Values
		cookie *http.Cookie
		query  string // added to the form's action URL
	}{
		{"missing cookie", p.form("approve"), nil, ""},
		{"empty cookie", p.form("approve"), cookie(""), ""},
		{"wrong cookie", p.form("approve"), cookie(other.csrf), ""},
		{"wrong csrf field", url.Values{"request": {p.request}, "csrf": {other.csrf}, "action": {"approve"}}, p.cookie, ""},
		{"csrf field and cookie agree but belong to another request", url.Values{"request": {p.request}, "csrf": {other.csrf}, "action": {"approve"}}, other.cookie, ""},
		{"missing csrf field", url.Values{"request": {p.request}, "action": {"approve"}}, p.cookie, ""},
		{"empty csrf field and cookie", url.Values{"request": {p.request}, "csrf": {""}, "action": {"approve"}}, cookie(""), ""},
		{"unknown request id", url.Values{"request": {"no-such-request"}, "csrf": {p.csrf}, "action": {"approve"}}, p.cookie, ""},
		{"missing request id", url.Values{"csrf": {p.csrf}, "action": {"approve"}}, p.cookie, ""},
		{"csrf in the query, not the form", url.Values{"request": {p.request}, "action": {"approve"}}, p.cookie, "?csrf=" + url.QueryEscape(p.csrf)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, body := submitConsentTo(t, e.URL(authserver.PathConsent)+tt.query, e, tt.form, tt.cookie)
			wantForbidden(t, tt.name, r, body)
		})
	}

	// Failed attempts do not consume the user's pending request.
	r, _ := submitConsent(t, e, p.form("approve"), p.cookie)
	if q := redirectParams(t, r, loopbackRedir); q.Get("code") == "" {
		t.Fatalf("the genuine submission after failed attempts: %v", q)
	}
}

func TestConsent_FormIsSingleUse(t *testing.T) {
	for _, first := range []string{"approve", "deny"} {
		t.Run(first, func(t *testing.T) {
			e, id := consentEnv(t, nil)
			_, challenge := pkce()
			p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
			r, _ := submitConsent(t, e, p.form(first), p.cookie)
			if r.StatusCode != http.StatusSeeOther {
				t.Fatalf("first submission: status %d", r.StatusCode)
			}
			for _, again := range []string{"approve", "deny"} {
				r, body := submitConsent(t, e, p.form(again), p.cookie)
				wantForbidden(t, first+" then "+again, r, body)
			}
		})
	}
}

func TestConsent_ExpiredRequestRefused(t *testing.T) {
	for _, tt := range []struct {
		after time.Duration
		ok    bool
	}{
		{9*time.Minute + 59*time.Second, true},
		{10*time.Minute + time.Second, false},
		{2 * time.Hour, false}, // long after: also after the pending-request GC ran
	} {
		t.Run(tt.after.String(), func(t *testing.T) {
			clk := newClock()
			e, id := consentEnv(t, clk)
			verifier, challenge := pkce()
			p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
			clk.Advance(tt.after)
			r, body := submitConsent(t, e, p.form("approve"), p.cookie)
			if !tt.ok {
				wantForbidden(t, "approve after "+tt.after.String(), r, body)
				return
			}
			q := redirectParams(t, r, loopbackRedir)
			if q.Get("code") == "" {
				t.Fatalf("approve after %v: %v", tt.after, q)
			}
			// The code's own lifetime starts at approval, not at the page.
			clk.Advance(30 * time.Second)
			if st, m := e.Exchange(id, loopbackRedir, q.Get("code"), verifier); st != http.StatusOK {
				t.Fatalf("exchange 30s after a late approval: %d %v", st, m)
			}
		})
	}
}

func TestConsent_EndpointAcceptsPOSTOnly(t *testing.T) {
	e, id := consentEnv(t, nil)
	_, challenge := pkce()
	p := getConsent(t, e, authParams(id, loopbackRedir, challenge))
	req, _ := http.NewRequest(http.MethodGet, e.URL(authserver.PathConsent)+"?"+p.form("approve").Encode(), nil)
	req.AddCookie(&http.Cookie{Name: csrfCookie(p.request), Value: p.csrf})
	r, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed || r.Header.Get("Location") != "" {
		t.Fatalf("GET consent: status %d, Location %q; want 405 and no redirect", r.StatusCode, r.Header.Get("Location"))
	}
	// The GET did not consume the request.
	r2, _ := submitConsent(t, e, p.form("approve"), p.cookie)
	if q := redirectParams(t, r2, loopbackRedir); q.Get("code") == "" {
		t.Fatalf("POST after a refused GET: %v", q)
	}
}

// Two consent pages open in one browser each keep their own CSRF cookie, so
// approving the first still works after the second was shown.
func TestConsent_TwoPagesInOneBrowser(t *testing.T) {
	e, id := consentEnv(t, nil)
	_, c1 := pkce()
	_, c2 := pkce()
	first := getConsent(t, e, authParams(id, loopbackRedir, c1))
	second := getConsent(t, e, authParams(id, loopbackRedir, c2))
	if first.cookie.Name == second.cookie.Name {
		t.Fatalf("both pages use cookie %q", first.cookie.Name)
	}
	for _, p := range []*consentPage{first, second} {
		r, _ := submitConsent(t, e, p.form("approve"), p.cookie)
		if q := redirectParams(t, r, loopbackRedir); q.Get("code") == "" {
			t.Fatalf("approve: %v", q)
		}
	}
}
