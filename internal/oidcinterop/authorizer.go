package oidcinterop

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FormAuthorizer is a client.Authorizer that signs in the way a person with
// a browser would, without the browser: it opens the authorization URL,
// follows redirects, fills in and submits the HTML form of each page the
// authorization server shows, and stops at the redirect to its redirect
// URI. A form with a password field is a login form: Login goes into its
// text and email fields, Password into its password field. Any other form
// (a consent page) is submitted as it is, which approves it.
//
// Its cookie jar is the browser's: a second authorization finds the
// authorization server's session of the first. Use one FormAuthorizer per
// user agent. It is safe for concurrent use, though a client authorizes
// one server at a time.
type FormAuthorizer struct {
	// Login and Password are typed into login forms.
	Login, Password string
	// RedirectURL is the redirect URI; default "http://127.0.0.1/callback".
	// Nothing needs to listen there: the redirect is caught, not followed.
	RedirectURL string

	client  *http.Client
	auths   atomic.Int64
	logins  atomic.Int64
	consent atomic.Int64

	mu                    sync.Mutex
	lastScope, lastPrompt string
}

// NewFormAuthorizer returns a FormAuthorizer for login with an empty
// cookie jar.
func NewFormAuthorizer(login, password string) *FormAuthorizer {
	jar, _ := cookiejar.New(nil)
	return &FormAuthorizer{
		Login:    login,
		Password: password,
		client: &http.Client{
			Jar:           jar,
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// FormCounts are what a FormAuthorizer did.
type FormCounts struct {
	// Authorizations counts Authorize calls.
	Authorizations int64
	// LoginForms and OtherForms count the forms submitted.
	LoginForms, OtherForms int64
}

// Counts returns the counters.
func (a *FormAuthorizer) Counts() FormCounts {
	return FormCounts{a.auths.Load(), a.logins.Load(), a.consent.Load()}
}

// LastRequest returns the scope and prompt parameters of the last
// authorization URL (empty when absent).
func (a *FormAuthorizer) LastRequest() (scope, prompt string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastScope, a.lastPrompt
}

// RedirectURI implements client.Authorizer.
func (a *FormAuthorizer) RedirectURI() string {
	if a.RedirectURL == "" {
		return "http://127.0.0.1/callback"
	}
	return a.RedirectURL
}

// maxSteps bounds the pages and redirects of one authorization.
const maxSteps = 20

// maxPage bounds a page read.
const maxPage = 1 << 20

// Authorize implements client.Authorizer.
func (a *FormAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	a.auths.Add(1)
	redirect, err := url.Parse(a.RedirectURI())
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, err
	}
	q := req.URL.Query()
	a.mu.Lock()
	a.lastScope, a.lastPrompt = q.Get("scope"), q.Get("prompt")
	a.mu.Unlock()
	for range maxSteps {
		resp, err := a.client.Do(req)
		if err != nil {
			return nil, err
		}
		page, err := io.ReadAll(io.LimitReader(resp.Body, maxPage))
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" {
			u, err := req.URL.Parse(loc)
			if err != nil {
				return nil, fmt.Errorf("bad redirect: %w", err)
			}
			if u.Scheme == redirect.Scheme && u.Hostname() == redirect.Hostname() && u.Path == redirect.Path {
				return u.Query(), nil
			}
			if req, err = http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil); err != nil {
				return nil, err
			}
			continue
		}
		forms := ParseForms(string(page))
		f := pickForm(forms)
		if f == nil {
			return nil, fmt.Errorf("%s answered %d with no form to submit (page title %q)", req.URL.Redacted(), resp.StatusCode, pageTitle(string(page)))
		}
		if req, err = a.submit(ctx, req.URL, f); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("too many pages and redirects during the authorization")
}

// submit builds the request that submits f, filled in, from the page at
// base.
func (a *FormAuthorizer) submit(ctx context.Context, base *url.URL, f *Form) (*http.Request, error) {
	action, err := base.Parse(f.Action)
	if err != nil {
		return nil, fmt.Errorf("form action: %w", err)
	}
	v := url.Values{}
	login := false
	for _, in := range f.Inputs {
		if in.Name == "" {
			continue
		}
		switch in.Type {
		case "password":
			login = true
			v.Add(in.Name, a.Password)
		case "text", "email":
			if in.Value == "" {
				v.Add(in.Name, a.Login)
			} else {
				v.Add(in.Name, in.Value)
			}
		case "checkbox", "radio":
			if in.Checked {
				v.Add(in.Name, in.Value)
			}
		case "submit", "button", "image", "reset", "file":
		default: // hidden and the rest: as the page has them
			v.Add(in.Name, in.Value)
		}
	}
	if f.Submitter.Name != "" {
		v.Add(f.Submitter.Name, f.Submitter.Value)
	}
	if login {
		a.logins.Add(1)
	} else {
		a.consent.Add(1)
	}
	if f.Method == http.MethodGet {
		action.RawQuery = v.Encode()
		return http.NewRequestWithContext(ctx, http.MethodGet, action.String(), nil)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(v.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// pickForm returns the first POST form, else the first form, else nil.
func pickForm(forms []Form) *Form {
	for i := range forms {
		if forms[i].Method == http.MethodPost {
			return &forms[i]
		}
	}
	if len(forms) > 0 {
		return &forms[0]
	}
	return nil
}

// Form is an HTML form as ParseForms found it.
type Form struct {
	// Action is the action attribute, unresolved; Method is "GET" or
	// "POST".
	Action, Method string
	Inputs         []Input
	// Submitter is the first submit button with a name, if any.
	Submitter Input
}

// Input is an input element (or a button) of a form.
type Input struct {
	// Type is lower case; "text" when the element has none.
	Type, Name, Value string
	Checked           bool
}

var (
	// tagRE matches the start and end tags that matter to a form, with
	// quoted attribute values that may hold '>'.
	tagRE = regexp.MustCompile(`(?is)<(/?)(form|input|button)\b((?:[^>"']|"[^"]*"|'[^']*')*)>`)
	// attrRE matches one attribute, with a value in double, single or no
	// quotes, or none.
	attrRE = regexp.MustCompile(`(?s)([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?`)
	// commentRE matches HTML comments, which may hold markup.
	commentRE = regexp.MustCompile(`(?s)<!--.*?-->`)
)

// ParseForms returns the forms of an HTML page, in order: enough of HTML
// for the login and consent pages of an authorization server (forms with
// input and button elements; no select or textarea), not a general parser.
func ParseForms(page string) []Form {
	page = commentRE.ReplaceAllString(page, "")
	var forms []Form
	var cur *Form
	for _, m := range tagRE.FindAllStringSubmatch(page, -1) {
		end, name, attrs := m[1] == "/", strings.ToLower(m[2]), parseAttrs(m[3])
		switch {
		case name == "form" && !end:
			method := strings.ToUpper(attrs["method"])
			if method != http.MethodPost {
				method = http.MethodGet
			}
			forms = append(forms, Form{Action: attrs["action"], Method: method})
			cur = &forms[len(forms)-1]
		case name == "form" && end:
			cur = nil
		case cur == nil || end:
		case name == "input":
			typ := strings.ToLower(attrs["type"])
			if typ == "" {
				typ = "text"
			}
			_, checked := attrs["checked"]
			cur.Inputs = append(cur.Inputs, Input{Type: typ, Name: attrs["name"], Value: attrs["value"], Checked: checked})
		case name == "button":
			typ := strings.ToLower(attrs["type"])
			if (typ == "" || typ == "submit") && attrs["name"] != "" && cur.Submitter.Name == "" {
				cur.Submitter = Input{Type: "submit", Name: attrs["name"], Value: attrs["value"]}
			}
		}
	}
	return forms
}

// parseAttrs returns the attributes of a tag by lower-case name, values
// unescaped; the first of duplicates wins, as in HTML.
func parseAttrs(s string) map[string]string {
	out := map[string]string{}
	for _, m := range attrRE.FindAllStringSubmatch(s, -1) {
		name := strings.ToLower(m[1])
		if _, ok := out[name]; ok {
			continue
		}
		out[name] = html.UnescapeString(m[2] + m[3] + m[4])
	}
	return out
}

var titleRE = regexp.MustCompile(`(?is)<title[^>]*>(.*?)</title>`)

// pageTitle returns the title of a page, for error messages.
func pageTitle(page string) string {
	m := titleRE.FindStringSubmatch(page)
	if m == nil {
		return ""
	}
	t := strings.TrimSpace(html.UnescapeString(m[1]))
	if len(t) > 80 {
		t = t[:80]
	}
	return t
}
