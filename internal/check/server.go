package check

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/evergrant/evergrant/oauth"
)

// DefaultServerTimeout bounds each request CheckServer sends when
// ServerOptions.Timeout is zero.
const DefaultServerTimeout = 10 * time.Second

// Bounds on what CheckServer reads from the server under test.
const (
	// serverMaxChallengeBody bounds the body of a 401/403 (only a snippet
	// of it is ever shown).
	serverMaxChallengeBody = 64 << 10
	// serverMaxRPCBody bounds a JSON-RPC answer, JSON or an SSE stream.
	serverMaxRPCBody = 1 << 20
	// serverMaxAuthServers bounds how many authorization_servers are checked.
	serverMaxAuthServers = 4
	// serverMaxRedirects bounds the redirects followed for a metadata GET.
	serverMaxRedirects = 5
	// serverSnippetLen bounds how much of a server-supplied text a detail
	// quotes.
	serverSnippetLen = 300
)

// serverProtocolVersion is the MCP revision the probes' initialize asks for.
const serverProtocolVersion = "2025-11-25"

// ServerOptions configures CheckServer.
type ServerOptions struct {
	// URL is the MCP endpoint to probe, for example
	// https://mcp.example.com/mcp. Required.
	URL string
	// Token (--token) is an access token the server should accept. With it,
	// token/valid checks that it is accepted and token/insufficient-scope
	// can run; without it they are skipped. It is sent only to URL, and
	// never appears in a Result.
	Token string
	// ScopeProbe (--scope-probe) is a request the server must refuse with
	// 403 insufficient_scope because Token lacks a scope it needs: either
	// the name of a tool (sent as tools/call with empty arguments), or a
	// JSON object {"method": "...", "params": {...}} for any other request.
	// Empty skips token/insufficient-scope.
	ScopeProbe string
	// Scenarios selects what to run: scenario names, or a group (the part
	// before the slash, "challenge", "metadata", "token"). Empty runs all.
	Scenarios []string
	// HTTPClient sends the requests; nil means a client on
	// http.DefaultTransport. Its redirect policy is replaced: redirects
	// are followed (up to 5) for metadata GETs only, never for requests to
	// the MCP endpoint.
	HTTPClient *http.Client
	// Timeout bounds each request; zero means DefaultServerTimeout.
	Timeout time.Duration
	// Now returns the current time, for the expired token; nil means
	// time.Now.
	Now func() time.Time
}

// ServerScenario describes a scenario, for help texts and --scenario.
type ServerScenario struct {
	Name    string `json:"name"`
	Rule    string `json:"rule"`
	Summary string `json:"summary"`
}

// serverProbe is one probe of CheckServer.
type serverProbe struct {
	ServerScenario
	run func(r *serverRun, ctx context.Context) Result
}

// serverProbes lists the probes in the order they run and are reported.
var serverProbes = []serverProbe{
	{ServerScenario{"challenge/no-token", "RFC 6750 §3.1, RFC 9728 §5.1",
		"a request without a token gets 401 with a Bearer challenge that has resource_metadata and no error"},
		(*serverRun).noToken},
	{ServerScenario{"challenge/garbage-token", "RFC 6750 §3.1",
		`a request with a garbage token gets 401 Bearer error="invalid_token"`},
		(*serverRun).garbageToken},
	{ServerScenario{"challenge/expired-token", "RFC 6750 §3.1",
		`a request with an expired-looking JWT gets 401 Bearer error="invalid_token"`},
		(*serverRun).expiredToken},
	{ServerScenario{"metadata/resource", "RFC 9728 §3.3, §5.1",
		"the resource_metadata URL of the challenge serves protected resource metadata naming this server"},
		(*serverRun).resourceMetadata},
	{ServerScenario{"metadata/resource-well-known", "RFC 9728 §3, §3.3",
		"the well-known URL of this server serves protected resource metadata naming it"},
		(*serverRun).resourceMetadataWellKnown},
	{ServerScenario{"metadata/authorization-server", "RFC 8414 §3, §3.3",
		"the authorization server metadata is found at the well-known URLs, in the MCP order, and its issuer matches"},
		(*serverRun).authServerMetadata},
	{ServerScenario{"metadata/pkce-s256", "RFC 7636 §4.2, RFC 8414 §2",
		"the authorization server lists S256 in code_challenge_methods_supported"},
		(*serverRun).pkceS256},
	{ServerScenario{"token/valid", "RFC 6750 §2.1",
		"with --token: initialize with the token is accepted"},
		(*serverRun).validToken},
	{ServerScenario{"token/insufficient-scope", "RFC 6750 §3.1",
		"with --token and --scope-probe: a request the token's scopes do not allow gets 403 insufficient_scope naming the scope"},
		(*serverRun).insufficientScope},
}

// ServerScenarios lists the scenarios of CheckServer in the order they run.
func ServerScenarios() []ServerScenario {
	out := make([]ServerScenario, len(serverProbes))
	for i, s := range serverProbes {
		out[i] = s.ServerScenario
	}
	return out
}

// CheckServer probes the MCP server at opts.URL from the outside, as a
// client would meet it, and reports one Result per selected scenario (see
// ServerScenarios and docs/check.md). What the server answers becomes a
// Result, never an error: CheckServer returns an error only for unusable
// options (a bad URL, an unknown scenario, a malformed ScopeProbe, a Token
// that would travel over plain http to a non-loopback host), or when ctx
// ends, in which case the report holds the results so far.
func CheckServer(ctx context.Context, opts ServerOptions) (*Report, error) {
	r, err := newServerRun(opts)
	if err != nil {
		return nil, err
	}
	selected, err := selectServerProbes(opts.Scenarios)
	if err != nil {
		return nil, err
	}
	defer r.close(ctx)
	rep := &Report{Target: opts.URL}
	for _, s := range selected {
		res := s.run(r, ctx)
		if err := ctx.Err(); err != nil {
			// The last result may only say that ctx ended; leave it out.
			return rep, err
		}
		res.Scenario, res.Rule = s.Name, s.Rule
		res.Detail = r.redact(res.Detail)
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// selectServerProbes returns the scenarios names selects, in run order.
func selectServerProbes(names []string) ([]serverProbe, error) {
	if len(names) == 0 {
		return serverProbes, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSuffix(strings.TrimSpace(n), "/")
		found := false
		for _, s := range serverProbes {
			if s.Name == n || strings.HasPrefix(s.Name, n+"/") {
				want[s.Name], found = true, true
			}
		}
		if !found {
			known := make([]string, len(serverProbes))
			for i, s := range serverProbes {
				known[i] = s.Name
			}
			return nil, fmt.Errorf("check: unknown server scenario %q; known: %s", n, strings.Join(known, ", "))
		}
	}
	var out []serverProbe
	for _, s := range serverProbes {
		if want[s.Name] {
			out = append(out, s)
		}
	}
	return out, nil
}

// serverScopeProbe is the JSON-RPC method and params of a ScopeProbe.
type serverScopeProbe struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// parseServerScopeProbe turns ServerOptions.ScopeProbe into a request.
func parseServerScopeProbe(s string) (*serverScopeProbe, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if s[0] == '{' {
		var p serverScopeProbe
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("check: scope probe: want a tool name or {\"method\":…,\"params\":…}: %w", err)
		}
		if p.Method == "" {
			return nil, errors.New("check: scope probe: no method")
		}
		if len(p.Params) > 0 && p.Params[0] != '{' && p.Params[0] != '[' {
			return nil, errors.New("check: scope probe: params must be an object or an array")
		}
		return &p, nil
	}
	params, _ := json.Marshal(map[string]any{"name": s, "arguments": map[string]any{}})
	return &serverScopeProbe{Method: "tools/call", Params: params}, nil
}

// serverRun is the state of one CheckServer call. Probes share what they
// learn (the no-token challenge, the metadata, the session) through it, so
// each scenario also runs on its own.
type serverRun struct {
	url     string // as given; requests go here
	canon   string // canonical form, for comparisons
	token   string
	probe   *serverScopeProbe
	hc      *http.Client
	timeout time.Duration
	now     func() time.Time

	// unreachable is set when the MCP endpoint could not be reached at all,
	// so later probes do not wait for the same timeout again.
	unreachable error

	noTokenAns *serverAnswer

	prmDone  bool
	prm      *oauth.ProtectedResourceMetadata // from the advertised URL
	prmWhy   Result                           // the metadata/resource result
	wkDone   bool
	wkPrm    *oauth.ProtectedResourceMetadata
	wkResult Result

	asDone   bool
	as       []*oauth.AuthServerMetadata
	asResult Result

	sessDone bool
	sess     *serverSession
	sessAns  *serverAnswer
	sessSkip string
}

// serverSession is what initialize with the token established.
type serverSession struct {
	id       string // Mcp-Session-Id, empty for a stateless server
	protocol string
}

func newServerRun(opts ServerOptions) (*serverRun, error) {
	if opts.URL == "" {
		return nil, errors.New("check: no server URL")
	}
	canon, err := oauth.CanonicalResource(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("check: server URL: %w", err)
	}
	if opts.Token != "" {
		// RFC 6750 §5.3 and the MCP specification require TLS; never send
		// someone's token in clear text across a network.
		if err := oauth.CheckEndpointURL(opts.URL); err != nil {
			return nil, fmt.Errorf("check: refusing to send --token: %w", err)
		}
		if strings.ContainsAny(opts.Token, " \t\r\n") {
			return nil, errors.New("check: the token holds whitespace; give the access token alone, without \"Bearer \"")
		}
	}
	probe, err := parseServerScopeProbe(opts.ScopeProbe)
	if err != nil {
		return nil, err
	}
	r := &serverRun{url: opts.URL, canon: canon, token: opts.Token, probe: probe,
		timeout: opts.Timeout, now: opts.Now}
	if r.timeout <= 0 {
		r.timeout = DefaultServerTimeout
	}
	if r.now == nil {
		r.now = time.Now
	}
	hc := http.Client{}
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	}
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		// A redirected POST would carry the token somewhere else; report
		// the 3xx instead. Metadata GETs may be redirected, as browsers
		// and most clients allow.
		if via[0].Method != http.MethodGet {
			return http.ErrUseLastResponse
		}
		if len(via) >= serverMaxRedirects {
			return fmt.Errorf("stopped after %d redirects", serverMaxRedirects)
		}
		return nil
	}
	r.hc = &hc
	return r, nil
}

// redact removes the caller's token from a text that might quote it (a
// server may echo what it was sent).
func (r *serverRun) redact(s string) string {
	if r.token == "" {
		return s
	}
	return strings.ReplaceAll(s, r.token, "[token]")
}

// close ends the session token/valid opened, if any, even when ctx has
// ended.
func (r *serverRun) close(ctx context.Context) {
	if r.sess == nil || r.sess.id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(r.timeout, 5*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, r.url, nil)
	if err != nil {
		return
	}
	r.mcpHeaders(req, r.token, r.sess)
	if resp, err := r.hc.Do(req); err == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, serverMaxChallengeBody))
		resp.Body.Close()
	}
}

// serverAnswer is what the MCP endpoint said to one POST.
type serverAnswer struct {
	status int
	header http.Header
	// body is the start of a non-2xx body, for snippets.
	body []byte
	// rpc is the JSON-RPC response of a 2xx answer, when one was found.
	rpc *serverRPC
	// rpcErr says why no JSON-RPC response was found in a 2xx answer.
	rpcErr error
	err    error // transport failure: no answer at all
}

// serverRPC is a JSON-RPC response.
type serverRPC struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (r *serverRun) mcpHeaders(req *http.Request, token string, sess *serverSession) {
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("User-Agent", "evergrant-check")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if sess != nil {
		if sess.id != "" {
			req.Header.Set("Mcp-Session-Id", sess.id)
		}
		if sess.protocol != "" {
			req.Header.Set("Mcp-Protocol-Version", sess.protocol)
		}
	}
}

// post sends one JSON-RPC message to the MCP endpoint.
func (r *serverRun) post(ctx context.Context, token string, sess *serverSession, msg any) *serverAnswer {
	if r.unreachable != nil {
		return &serverAnswer{err: r.unreachable}
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return &serverAnswer{err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return &serverAnswer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	r.mcpHeaders(req, token, sess)
	resp, err := r.hc.Do(req)
	if err != nil {
		err = serverURLError(err)
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.unreachable = err
		}
		return &serverAnswer{err: err}
	}
	defer resp.Body.Close()
	a := &serverAnswer{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		a.rpc, a.rpcErr = readServerRPC(resp)
	} else {
		a.body, _ = io.ReadAll(io.LimitReader(resp.Body, serverMaxChallengeBody))
	}
	return a
}

// serverURLError drops the *url.Error wrapper, whose text repeats the
// method and URL the details already name.
func serverURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// readServerRPC finds the JSON-RPC response in a 2xx answer: the body of
// an application/json answer, or the first SSE event carrying a response
// (one with an id and a result or error) of a text/event-stream.
func readServerRPC(resp *http.Response) (*serverRPC, error) {
	body := io.LimitReader(resp.Body, serverMaxRPCBody)
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		data, err := io.ReadAll(body)
		if err != nil {
			return nil, err
		}
		return parseServerRPC(data)
	case "text/event-stream":
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 0, 64<<10), serverMaxRPCBody)
		var data []byte
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if len(data) > 0 {
					if rpc, err := parseServerRPC(data); err == nil {
						return rpc, nil
					}
				}
				data = data[:0]
			case strings.HasPrefix(line, "data:"):
				if len(data) > 0 {
					data = append(data, '\n')
				}
				data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")...)
			}
		}
		if len(data) > 0 {
			if rpc, err := parseServerRPC(data); err == nil {
				return rpc, nil
			}
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("the event stream ended without a JSON-RPC response")
	case "":
		return nil, errors.New("no Content-Type")
	default:
		return nil, fmt.Errorf("Content-Type %s is neither application/json nor text/event-stream", mt)
	}
}

func parseServerRPC(data []byte) (*serverRPC, error) {
	var rpc serverRPC
	if err := json.Unmarshal(data, &rpc); err != nil {
		return nil, fmt.Errorf("not a JSON-RPC response: %w", err)
	}
	if len(rpc.ID) == 0 || (rpc.Result == nil && rpc.Error == nil) {
		return nil, errors.New("not a JSON-RPC response (no id, or neither result nor error)")
	}
	return &rpc, nil
}

// serverInitialize is the JSON-RPC request every challenge probe sends.
func serverInitialize(id int) map[string]any {
	return map[string]any{
		"jsonrpc": "2.0", "id": id, "method": "initialize",
		"params": map[string]any{
			"protocolVersion": serverProtocolVersion,
			"capabilities":    map[string]any{},
			"clientInfo":      map[string]any{"name": "evergrant-check", "version": "1"},
		},
	}
}

// describe says in a few words what an answer was, for details: headline
// and the start of a non-200 body.
func (a *serverAnswer) describe() string {
	s := a.headline()
	if a.err == nil && len(a.body) > 0 && a.status != http.StatusOK {
		s += ", body " + fmt.Sprintf("%q", serverSnippet(string(a.body)))
	}
	return s
}

// headline is the status and the WWW-Authenticate fields of an answer.
func (a *serverAnswer) headline() string {
	if a.err != nil {
		return "no answer: " + a.err.Error()
	}
	s := fmt.Sprintf("%d", a.status)
	if v := a.header.Values("Www-Authenticate"); len(v) > 0 {
		s += " with WWW-Authenticate: " + serverSnippet(strings.Join(v, ", "))
	} else if a.status == http.StatusUnauthorized || a.status == http.StatusForbidden {
		s += " without WWW-Authenticate"
	}
	if loc := a.header.Get("Location"); loc != "" && a.status >= 300 && a.status < 400 {
		s += " (redirect to " + serverSnippet(loc) + ")"
	}
	return s
}

// bearer returns the Bearer challenge of an answer and whether it had one;
// malformed describes a syntax problem of the WWW-Authenticate fields.
func (a *serverAnswer) bearer() (ch oauth.BearerChallenge, ok bool, malformed string) {
	cs, err := oauth.ParseWWWAuthenticate(a.header)
	if err != nil {
		malformed = strings.TrimPrefix(err.Error(), "oauth: ")
	}
	for _, c := range cs {
		if c.Is("Bearer") {
			return oauth.BearerChallengeFrom(c), true, malformed
		}
	}
	return oauth.BearerChallenge{}, false, malformed
}

// serverSnippet makes a server-supplied text safe and short enough to quote:
// control characters become spaces and it is cut at serverSnippetLen bytes.
func serverSnippet(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > serverSnippetLen {
		cut := serverSnippetLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func serverPass(format string, args ...any) Result {
	return Result{Outcome: Pass, Detail: fmt.Sprintf(format, args...)}
}
func serverFail(format string, args ...any) Result {
	return Result{Outcome: Fail, Detail: fmt.Sprintf(format, args...)}
}
func serverInfo(format string, args ...any) Result {
	return Result{Outcome: Info, Detail: fmt.Sprintf(format, args...)}
}
func serverSkip(format string, args ...any) Result {
	return Result{Outcome: Skip, Detail: fmt.Sprintf(format, args...)}
}

// ---- challenge/no-token -------------------------------------------------

// noTokenAnswer sends (once) the initialize without a token.
func (r *serverRun) noTokenAnswer(ctx context.Context) *serverAnswer {
	if r.noTokenAns == nil {
		r.noTokenAns = r.post(ctx, "", nil, serverInitialize(1))
	}
	return r.noTokenAns
}

// noToken: RFC 6750 §3.1 ("If the request lacks any authentication
// information ..., the resource server SHOULD NOT include an error code"),
// RFC 9728 §5.1 (resource_metadata in the challenge).
func (r *serverRun) noToken(ctx context.Context) Result {
	a := r.noTokenAnswer(ctx)
	if a.err != nil {
		return serverFail("POST initialize without a token got %s", a.describe())
	}
	if a.status != http.StatusUnauthorized {
		if a.status >= 200 && a.status < 300 {
			return serverFail("POST initialize without a token got %d: the endpoint is not protected, so there is nothing to check (or the URL is not the protected MCP endpoint)", a.status)
		}
		return serverFail("POST initialize without a token got %s; want 401 with a Bearer challenge, which is what starts a client's authorization", a.describe())
	}
	if len(a.header.Values("Www-Authenticate")) == 0 {
		return serverFail("401 without WWW-Authenticate: a client cannot discover the authorization server; send WWW-Authenticate: Bearer resource_metadata=\"<metadata URL>\" (RFC 9110 §11.6.1, RFC 9728 §5.1)")
	}
	ch, ok, malformed := a.bearer()
	if !ok {
		return serverFail("%s: no Bearer challenge; send WWW-Authenticate: Bearer resource_metadata=\"<metadata URL>\"", a.describe())
	}
	if malformed != "" {
		return serverFail("%s: the header is malformed (%s), which strict clients refuse; quote parameter values and separate them with commas (RFC 9110 §11.6.1)", a.describe(), serverSnippet(malformed))
	}
	if ch.Error != "" {
		return serverFail("%s: a request without a token must get a challenge without error (RFC 6750 §3.1); error=%q tells a client its token went bad, and a client that refreshes on it refreshes a token it never sent", a.describe(), ch.Error)
	}
	if ch.ResourceMetadata == "" {
		return serverFail("%s: no resource_metadata parameter, so clients must guess the metadata URL; add resource_metadata=\"<protected resource metadata URL>\" (RFC 9728 §5.1)", a.describe())
	}
	return serverPass("%s; no error", a.headline())
}

// ---- challenge/garbage-token, challenge/expired-token -------------------

// serverRandomToken returns n random bytes, base64url-encoded: a valid
// RFC 6750 §2.1 b64token, so that no server may call it malformed.
func serverRandomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (r *serverRun) garbageToken(ctx context.Context) Result {
	return r.invalidTokenProbe(ctx, "a garbage token", "garbage-"+serverRandomToken(24))
}

// expiredJWT builds a token shaped like an RFC 9068 access token for this
// server that expired an hour ago, with a random (so invalid) signature.
func (r *serverRun) expiredJWT(ctx context.Context) string {
	issuer := ""
	if prm := r.anyResourceMetadata(ctx); prm != nil && len(prm.AuthorizationServers) > 0 {
		issuer = prm.AuthorizationServers[0]
	} else if u, err := url.Parse(r.canon); err == nil {
		issuer = u.Scheme + "://" + u.Host
	}
	now := r.now()
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	header := enc(map[string]any{"alg": "ES256", "typ": "at+jwt", "kid": "evergrant-check"})
	claims := enc(map[string]any{
		"iss": issuer, "aud": r.canon, "sub": "evergrant-check", "client_id": "evergrant-check",
		"iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix(), "jti": serverRandomToken(12),
	})
	return header + "." + claims + "." + serverRandomToken(64)
}

func (r *serverRun) expiredToken(ctx context.Context) Result {
	return r.invalidTokenProbe(ctx, "an expired JWT (exp an hour ago, bad signature)", r.expiredJWT(ctx))
}

// invalidTokenProbe: RFC 6750 §3.1 invalid_token ("The access token
// provided is expired, revoked, malformed, or invalid for other reasons"),
// the error on which clients refresh (docs/design.md#client-rule-1).
func (r *serverRun) invalidTokenProbe(ctx context.Context, what, token string) Result {
	a := r.post(ctx, token, nil, serverInitialize(1))
	if a.err != nil {
		return serverFail("POST initialize with %s got %s", what, a.describe())
	}
	switch {
	case a.status >= 200 && a.status < 300:
		return serverFail("POST initialize with %s got %d: the server accepted a token nobody issued; it must verify tokens (signature, expiry, audience) and answer 401 invalid_token", what, a.status)
	case a.status == http.StatusForbidden:
		return serverFail("POST initialize with %s got %s; want 401 invalid_token: 403 means the token is good but lacks a scope, so a client will not refresh", what, a.describe())
	case a.status != http.StatusUnauthorized:
		return serverFail("POST initialize with %s got %s; want 401 with Bearer error=\"invalid_token\"", what, a.describe())
	}
	if len(a.header.Values("Www-Authenticate")) == 0 {
		return serverFail("POST initialize with %s got 401 without WWW-Authenticate; send Bearer error=\"invalid_token\", resource_metadata=\"…\" so a client knows to refresh (RFC 6750 §3.1)", what)
	}
	ch, ok, malformed := a.bearer()
	switch {
	case !ok:
		return serverFail("POST initialize with %s got %s: no Bearer challenge; send Bearer error=\"invalid_token\"", what, a.describe())
	case malformed != "":
		return serverFail("POST initialize with %s got %s: the header is malformed (%s)", what, a.describe(), serverSnippet(malformed))
	case ch.Error == "":
		return serverFail("POST initialize with %s got %s: no error=\"invalid_token\", so a client that follows the refresh proposal cannot tell a bad token from a missing one and signs the user in again instead of refreshing silently; add error=\"invalid_token\" (RFC 6750 §3.1)", what, a.describe())
	case ch.Error != oauth.ErrorInvalidToken:
		return serverFail("POST initialize with %s got %s: error=%q; a rejected token is error=\"invalid_token\" (RFC 6750 §3.1), the one error on which clients refresh", what, a.describe(), ch.Error)
	}
	return serverPass("%s", a.headline())
}

// ---- metadata/resource, metadata/resource-well-known --------------------

// getDocument fetches a metadata document: GET with a timeout, the body
// read up to oauth.MaxDocumentSize. status is 0 on a transport error.
func (r *serverRun) getDocument(ctx context.Context, u string) (status int, data []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "evergrant-check")
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, nil, serverURLError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, serverMaxChallengeBody))
		return resp.StatusCode, nil, nil
	}
	data, err = io.ReadAll(io.LimitReader(resp.Body, oauth.MaxDocumentSize+1))
	if err != nil {
		return resp.StatusCode, nil, err
	}
	if len(data) > oauth.MaxDocumentSize {
		return resp.StatusCode, nil, fmt.Errorf("document larger than %d bytes", oauth.MaxDocumentSize)
	}
	return resp.StatusCode, data, nil
}

// serverResourceMatch says how a metadata document's resource relates to the
// server URL.
type serverResourceMatch int

const (
	serverResourceOther  serverResourceMatch = iota // names another resource
	serverResourceExact                             // the same resource (canonical form)
	serverResourcePrefix                            // same origin, a path prefix on a segment boundary
)

func (r *serverRun) matchResource(resource string) serverResourceMatch {
	res, err := oauth.CanonicalResource(resource)
	if err != nil {
		return serverResourceOther
	}
	if res == r.canon {
		return serverResourceExact
	}
	ru, err1 := url.Parse(res)
	su, err2 := url.Parse(r.canon)
	if err1 != nil || err2 != nil || ru.Scheme != su.Scheme || ru.Host != su.Host || ru.RawQuery != "" {
		return serverResourceOther
	}
	if ru.EscapedPath() == "" || strings.HasPrefix(su.EscapedPath(), ru.EscapedPath()+"/") {
		return serverResourcePrefix
	}
	return serverResourceOther
}

// judgeResourceMetadata validates a protected resource metadata document
// fetched from u (RFC 9728 §3.2, §3.3; MCP authorization 2025-11-25:
// authorization_servers with at least one entry).
//
// The resource must name this server. RFC 9728 §3.3 asks for the identical
// URL; a same-origin path prefix (a resource covering several endpoints) is
// reported as Info: evergrant's client, the TypeScript SDK and
// draft-mcguinness-oauth-rfc9728bis accept it, strict RFC 9728 clients do
// not.
func (r *serverRun) judgeResourceMetadata(u string, data []byte) (*oauth.ProtectedResourceMetadata, Result) {
	var head struct {
		Resource any `json:"resource"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, serverFail("%s is not a JSON object: %s", u, serverSnippet(err.Error()))
	}
	resource, _ := head.Resource.(string)
	if resource == "" {
		return nil, serverFail("%s has no resource member; protected resource metadata must name the resource it describes (RFC 9728 §2)", u)
	}
	m := r.matchResource(resource)
	if m == serverResourceOther {
		return nil, serverFail("%s describes resource %q, not this server %q; clients must not use it (RFC 9728 §3.3): set resource to the server's URL", u, serverSnippet(resource), r.canon)
	}
	prm, err := oauth.ParseProtectedResourceMetadata(data, resource)
	if err != nil {
		return nil, serverFail("%s: %s", u, serverSnippet(strings.TrimPrefix(err.Error(), "oauth: ")))
	}
	if m == serverResourcePrefix {
		return prm, serverInfo("%s describes resource %q, a path prefix of this server %q: evergrant and the TypeScript SDK accept it, but RFC 9728 §3.3 asks for the identical URL and strict clients refuse it", u, serverSnippet(resource), r.canon)
	}
	return prm, serverPass("%s describes this server, authorization_servers %s", u, strings.Join(prm.AuthorizationServers, " "))
}

// advertisedMetadata fetches (once) the resource_metadata URL of the
// no-token challenge.
func (r *serverRun) advertisedMetadata(ctx context.Context) (*oauth.ProtectedResourceMetadata, Result) {
	if r.prmDone {
		return r.prm, r.prmWhy
	}
	r.prmDone = true
	r.prm, r.prmWhy = r.fetchAdvertised(ctx)
	return r.prm, r.prmWhy
}

func (r *serverRun) fetchAdvertised(ctx context.Context) (*oauth.ProtectedResourceMetadata, Result) {
	a := r.noTokenAnswer(ctx)
	if a.err != nil {
		return nil, serverSkip("no challenge to read resource_metadata from: %s", a.describe())
	}
	ch, ok, _ := a.bearer()
	if a.status != http.StatusUnauthorized || !ok || ch.ResourceMetadata == "" {
		return nil, serverSkip("the no-token answer advertises no resource_metadata (see challenge/no-token)")
	}
	u := ch.ResourceMetadata
	if err := oauth.CheckEndpointURL(u); err != nil {
		return nil, serverFail("resource_metadata %q: %s; clients refuse it (MCP authorization, Communication Security)", serverSnippet(u), serverSnippet(strings.TrimPrefix(err.Error(), "oauth: ")))
	}
	status, data, err := r.getDocument(ctx, u)
	switch {
	case err != nil:
		return nil, serverFail("GET %s: %s", u, serverSnippet(err.Error()))
	case status != http.StatusOK:
		return nil, serverFail("GET %s got %d: the URL the challenge advertises must serve the protected resource metadata (RFC 9728 §5.1)", u, status)
	}
	return r.judgeResourceMetadata(u, data)
}

func (r *serverRun) resourceMetadata(ctx context.Context) Result {
	_, res := r.advertisedMetadata(ctx)
	return res
}

// wellKnownMetadata fetches (once) the metadata at the well-known URLs,
// in the order the MCP specification gives (path-inserted, then root).
func (r *serverRun) wellKnownMetadata(ctx context.Context) (*oauth.ProtectedResourceMetadata, Result) {
	if r.wkDone {
		return r.wkPrm, r.wkResult
	}
	r.wkDone = true
	r.wkPrm, r.wkResult = r.fetchWellKnown(ctx)
	return r.wkPrm, r.wkResult
}

func (r *serverRun) fetchWellKnown(ctx context.Context) (*oauth.ProtectedResourceMetadata, Result) {
	urls, err := oauth.ProtectedResourceMetadataURLs(r.canon)
	if err != nil {
		return nil, serverFail("no well-known URL for %s: %s", r.canon, err)
	}
	var tried []string
	for i, u := range urls {
		status, data, err := r.getDocument(ctx, u)
		if err != nil {
			return nil, serverFail("GET %s: %s", u, serverSnippet(err.Error()))
		}
		if status >= 400 && status < 500 {
			tried = append(tried, fmt.Sprintf("%s (%d)", u, status))
			continue // clients try the next location
		}
		if status != http.StatusOK {
			return nil, serverFail("GET %s got %d; clients stop discovery at a server error", u, status)
		}
		prm, res := r.judgeResourceMetadata(u, data)
		if res.Outcome == Pass && i > 0 {
			res = serverInfo("served only at the root %s, not at %s (RFC 9728 §3 inserts the well-known path before the server's path); clients of the 2025-11-25 MCP revision fall back to the root, older ones may not: %s", u, urls[0], res.Detail)
		}
		return prm, res
	}
	return nil, serverFail("no protected resource metadata at the well-known URL: %s. Clients that discover before their first request, or cannot read WWW-Authenticate (browsers without Access-Control-Expose-Headers), look there; serve it at %s (RFC 9728 §3)", strings.Join(tried, ", "), urls[0])
}

func (r *serverRun) resourceMetadataWellKnown(ctx context.Context) Result {
	_, res := r.wellKnownMetadata(ctx)
	return res
}

// anyResourceMetadata returns the usable metadata: the advertised one,
// else the well-known one, else nil.
func (r *serverRun) anyResourceMetadata(ctx context.Context) *oauth.ProtectedResourceMetadata {
	if prm, _ := r.advertisedMetadata(ctx); prm != nil {
		return prm
	}
	prm, _ := r.wellKnownMetadata(ctx)
	return prm
}

// ---- metadata/authorization-server, metadata/pkce-s256 ------------------

// authServers fetches (once) the metadata of the resource's authorization
// servers.
func (r *serverRun) authServers(ctx context.Context) ([]*oauth.AuthServerMetadata, Result) {
	if r.asDone {
		return r.as, r.asResult
	}
	r.asDone = true
	r.as, r.asResult = r.fetchAuthServers(ctx)
	return r.as, r.asResult
}

func (r *serverRun) fetchAuthServers(ctx context.Context) ([]*oauth.AuthServerMetadata, Result) {
	prm := r.anyResourceMetadata(ctx)
	if prm == nil {
		return nil, serverSkip("no usable protected resource metadata names an authorization server (see metadata/resource)")
	}
	issuers := prm.AuthorizationServers
	if len(issuers) > serverMaxAuthServers {
		issuers = issuers[:serverMaxAuthServers]
	}
	var out []*oauth.AuthServerMetadata
	var found []string
	for _, issuer := range issuers {
		md, u, res := r.fetchAuthServer(ctx, issuer)
		if md == nil {
			return nil, res
		}
		out = append(out, md)
		found = append(found, u)
	}
	return out, serverPass("found at %s, issuer matches", strings.Join(found, ", "))
}

// fetchAuthServer tries the metadata URLs of issuer in the MCP order
// (RFC 8414 §3.1, then OpenID Connect Discovery), moving on after a 4xx as
// clients do, and validates the first document found (RFC 8414 §3.3: the
// issuer must be identical).
func (r *serverRun) fetchAuthServer(ctx context.Context, issuer string) (*oauth.AuthServerMetadata, string, Result) {
	urls, err := oauth.AuthServerMetadataURLs(issuer)
	if err != nil {
		return nil, "", serverFail("authorization server %q: %s", serverSnippet(issuer), serverSnippet(strings.TrimPrefix(err.Error(), "oauth: ")))
	}
	var tried []string
	for _, u := range urls {
		status, data, err := r.getDocument(ctx, u)
		if err != nil {
			return nil, "", serverFail("GET %s: %s", u, serverSnippet(err.Error()))
		}
		if status >= 400 && status < 500 {
			tried = append(tried, fmt.Sprintf("%s (%d)", u, status))
			continue
		}
		if status != http.StatusOK {
			return nil, "", serverFail("GET %s got %d; clients stop discovery at a server error", u, status)
		}
		var head struct {
			Issuer any `json:"issuer"`
		}
		if err := json.Unmarshal(data, &head); err != nil {
			return nil, "", serverFail("%s is not a JSON object: %s", u, serverSnippet(err.Error()))
		}
		if got, _ := head.Issuer.(string); got != issuer {
			return nil, "", serverFail("%s has issuer %q, not %q as listed in authorization_servers; clients must not use it (RFC 8414 §3.3): the issuer must be identical, character for character", u, serverSnippet(got), issuer)
		}
		md, err := oauth.ParseAuthServerMetadata(data, issuer)
		if err != nil {
			return nil, "", serverFail("%s: %s", u, serverSnippet(strings.TrimPrefix(err.Error(), "oauth: ")))
		}
		var missing []string
		if md.AuthorizationEndpoint == "" {
			missing = append(missing, "authorization_endpoint")
		}
		if md.TokenEndpoint == "" {
			missing = append(missing, "token_endpoint")
		}
		if len(missing) > 0 {
			return nil, "", serverFail("%s lacks %s, which a client needs for the authorization code flow (RFC 8414 §2)", u, strings.Join(missing, " and "))
		}
		return md, u, Result{}
	}
	return nil, "", serverFail("no authorization server metadata for issuer %s at %s (RFC 8414 §3; MCP authorization, Authorization Server Metadata Discovery)", issuer, strings.Join(tried, ", "))
}

func (r *serverRun) authServerMetadata(ctx context.Context) Result {
	_, res := r.authServers(ctx)
	return res
}

// pkceS256: the MCP authorization specification requires clients to use
// PKCE S256 and to refuse an authorization server whose metadata does not
// list it.
func (r *serverRun) pkceS256(ctx context.Context) Result {
	mds, res := r.authServers(ctx)
	if mds == nil {
		if res.Outcome == Skip {
			return res
		}
		return serverSkip("no usable authorization server metadata (see metadata/authorization-server)")
	}
	for _, md := range mds {
		if !md.SupportsS256() {
			methods := "is absent"
			if len(md.CodeChallengeMethodsSupported) > 0 {
				methods = "lists only " + strings.Join(md.CodeChallengeMethodsSupported, ", ")
			}
			return serverFail("authorization server %s: code_challenge_methods_supported %s; MCP clients must refuse an authorization server without S256, so nobody can sign in: list \"S256\"", md.Issuer, methods)
		}
	}
	return serverPass("code_challenge_methods_supported lists S256")
}

// ---- token/valid, token/insufficient-scope ------------------------------

// session sends (once) initialize with the caller's token.
func (r *serverRun) session(ctx context.Context) (*serverSession, *serverAnswer, string) {
	if r.sessDone {
		return r.sess, r.sessAns, r.sessSkip
	}
	r.sessDone = true
	if r.token == "" {
		r.sessSkip = "needs an access token the server accepts (--token)"
		return nil, nil, r.sessSkip
	}
	a := r.post(ctx, r.token, nil, serverInitialize(1))
	r.sessAns = a
	if a.err == nil && a.status >= 200 && a.status < 300 {
		s := &serverSession{id: a.header.Get("Mcp-Session-Id"), protocol: serverProtocolVersion}
		if a.rpc != nil && a.rpc.Result != nil {
			var res struct {
				ProtocolVersion string `json:"protocolVersion"`
			}
			if json.Unmarshal(a.rpc.Result, &res) == nil && res.ProtocolVersion != "" {
				s.protocol = res.ProtocolVersion
			}
		}
		r.sess = s
	}
	return r.sess, a, ""
}

// validToken: the token is accepted (RFC 6750 §2.1, Authorization header).
func (r *serverRun) validToken(ctx context.Context) Result {
	_, a, why := r.session(ctx)
	if why != "" {
		return serverSkip("%s", why)
	}
	if a.err != nil {
		return serverFail("POST initialize with the token got %s", a.describe())
	}
	switch {
	case a.status >= 200 && a.status < 300:
	case a.status == http.StatusUnauthorized:
		ch, _, _ := a.bearer()
		hint := "is it expired, or issued for another resource (its audience must be this server's URL, RFC 8707)?"
		if ch.Error == "" {
			hint = "the challenge has no error, as if no token had been sent: is the Authorization header read?"
		}
		return serverFail("POST initialize with the token got %s: %s", a.describe(), hint)
	case a.status == http.StatusForbidden:
		return serverFail("POST initialize with the token got %s: the token lacks a scope every request needs; get a token with the scope the challenge names", a.describe())
	default:
		return serverFail("POST initialize with the token got %s", a.describe())
	}
	var res struct {
		ProtocolVersion string `json:"protocolVersion"`
		ServerInfo      struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"serverInfo"`
	}
	switch {
	case a.rpc == nil:
		return serverPass("the token was accepted (%d), though no JSON-RPC response was found in the answer: %s", a.status, serverSnippet(a.rpcErr.Error()))
	case a.rpc.Error != nil:
		return serverPass("the token was accepted (%d); initialize itself answered JSON-RPC error %d %q", a.status, a.rpc.Error.Code, serverSnippet(a.rpc.Error.Message))
	}
	json.Unmarshal(a.rpc.Result, &res)
	return serverPass("the token was accepted: initialize answered %d, protocol %s, server %q %s", a.status,
		serverSnippet(res.ProtocolVersion), serverSnippet(res.ServerInfo.Name), serverSnippet(res.ServerInfo.Version))
}

// insufficientScope: a request the token's scopes do not allow gets 403
// with Bearer error="insufficient_scope" and the scope it needs (RFC 6750
// §3.1; MCP authorization 2025-11-25, Scope Challenge Handling), so a
// client steps up instead of refreshing (docs/design.md#client-rule-6) or
// showing the model an error.
func (r *serverRun) insufficientScope(ctx context.Context) Result {
	if r.token == "" {
		return serverSkip("needs an access token the server accepts (--token) and a request it lacks the scope for (--scope-probe)")
	}
	if r.probe == nil {
		return serverSkip("needs --scope-probe: a tool (or {\"method\":…,\"params\":…}) that needs a scope the token lacks")
	}
	sess, a, _ := r.session(ctx)
	if sess == nil {
		return serverSkip("the token was not accepted (%s), so no session to send the probe in (see token/valid)", a.describe())
	}
	what := r.probe.Method
	if r.probe.Method == "tools/call" {
		var p struct {
			Name string `json:"name"`
		}
		json.Unmarshal(r.probe.Params, &p)
		what = fmt.Sprintf("tools/call %q", serverSnippet(p.Name))
	}
	n := r.post(ctx, r.token, sess, map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"})
	if n.err != nil || n.status < 200 || n.status >= 300 {
		return serverSkip("notifications/initialized with the token got %s, so the probe could not be sent", n.describe())
	}
	msg := map[string]any{"jsonrpc": "2.0", "id": 2, "method": r.probe.Method}
	if len(r.probe.Params) > 0 {
		msg["params"] = r.probe.Params
	}
	a = r.post(ctx, r.token, sess, msg)
	if a.err != nil {
		return serverFail("%s got %s", what, a.describe())
	}
	switch {
	case a.status >= 200 && a.status < 300:
		switch {
		case a.rpc == nil:
			return serverFail("%s got %d without a readable JSON-RPC response (%s); want 403 insufficient_scope", what, a.status, serverSnippet(a.rpcErr.Error()))
		case a.rpc.Error != nil:
			return serverFail("%s got %d with JSON-RPC error %d %q: a client cannot tell that more scope would help, so it cannot step up; answer HTTP 403 with WWW-Authenticate: Bearer error=\"insufficient_scope\", scope=\"<needed>\"", what, a.status, a.rpc.Error.Code, serverSnippet(a.rpc.Error.Message))
		case serverToolError(a.rpc.Result) != "":
			return serverFail("%s got %d with a tool error result (%q): the model sees a failure and the client cannot step up; answer HTTP 403 with WWW-Authenticate: Bearer error=\"insufficient_scope\", scope=\"<needed>\" (with evergrant's server package, return server.InsufficientScope from the tool)", what, a.status, serverSnippet(serverToolError(a.rpc.Result)))
		}
		return serverFail("%s succeeded (%d): the token has the scope after all, or the server does not check it; give --scope-probe a request that needs a scope the token lacks", what, a.status)
	case a.status == http.StatusUnauthorized:
		return serverFail("%s got %s: a missing scope is 403 insufficient_scope; a 401 makes clients refresh (or sign in again) and get the same token scopes back, in a loop", what, a.describe())
	case a.status != http.StatusForbidden:
		return serverFail("%s got %s; want 403 with Bearer error=\"insufficient_scope\", scope=\"<needed>\"", what, a.describe())
	}
	ch, ok, _ := a.bearer()
	switch {
	case !ok:
		return serverFail("%s got %s: no Bearer challenge; a client cannot learn what scope to ask for: send Bearer error=\"insufficient_scope\", scope=\"<needed>\", resource_metadata=\"…\"", what, a.describe())
	case ch.Error != oauth.ErrorInsufficientScope:
		return serverFail("%s got %s: want error=\"insufficient_scope\" (RFC 6750 §3.1)", what, a.describe())
	case len(ch.Scope) == 0:
		return serverFail("%s got %s: no scope parameter, so a client does not know what to ask for when it steps up; name the scopes the operation needs (RFC 6750 §3; MCP authorization, Scope Challenge Handling)", what, a.describe())
	}
	return serverPass("%s got %s", what, a.headline())
}

// serverToolError returns the text of a CallToolResult with isError set, or ""
// (also for results that are not tool results).
func serverToolError(result json.RawMessage) string {
	var res struct {
		IsError bool `json:"isError"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	}
	if json.Unmarshal(result, &res) != nil || !res.IsError {
		return ""
	}
	for _, c := range res.Content {
		if c.Type == "text" && c.Text != "" {
			return c.Text
		}
	}
	return "isError"
}
