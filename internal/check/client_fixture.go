package check

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/faults"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/oauth"
)

// Scopes of the fixture's authorization server. The resource metadata
// advertises only clientScopeBase; clientScopeExtra is what the 403
// scenario challenges for, so a client can step up to it.
const (
	clientScopeBase  = "mcp:tools"
	clientScopeExtra = "files.write"
)

// Loop detection: a client that crosses one of these bounds in one scenario
// is looping; its run is stopped at once instead of at the timeout. A
// correct client stays far below them (it sends about ten requests).
const (
	clientLoopRefreshes      = 20
	clientLoopAuthorizations = 10
	clientLoopMCPRequests    = 200
)

// clientFixture is one scenario's world on loopback: the stack of
// internal/stack with the embedded authorization server (auto-approve,
// fault injection) and, at /mcp, an MCP server of the official Go SDK
// behind the bearer middleware, with a scripted layer in front that can
// force answers. It records everything the client under test sends, in one
// sequence, without keeping token material: tokens are known by number
// (the order the authorization server issued them) and hash.
type clientFixture struct {
	srv    *http.Server
	ln     net.Listener
	mcpURL string
	prmURL string
	faults *faults.Injector
	// as is the authorization server, with its fault injector.
	as http.Handler
	// protected is the MCP server behind the bearer middleware.
	protected http.Handler
	// script decides about each MCP request, under mu; nil serves all.
	script func(*clientMCPRequest) clientAction

	stopOnce sync.Once
	stop     chan struct{} // closed when the client is found looping
	stopWhy  string        // set before stop is closed

	mu       sync.Mutex
	seq      int
	mcp      []*clientMCPRequest
	token    []*clientTokenRequest
	authz    []*clientAuthzRequest
	regs     []*clientRegistration
	access   map[string]*clientIssued // by token hash
	refresh  map[string]int           // refresh token hash -> number
	nAccess  int
	nRefresh int
	dead     map[int]bool  // access token numbers answered 401 invalid_token from now on
	allDead  bool          // every token is answered 401 invalid_token
	outage   *clientOutage // when set, token requests get its answer
	state    map[string]int
}

// clientIssued is an access token the authorization server issued.
type clientIssued struct {
	no      int
	expires time.Time // from expires_in, as the client sees it; zero: none
	scopes  []string
}

// clientMCPRequest is one request to the MCP endpoint.
type clientMCPRequest struct {
	seq        int
	at         time.Time
	httpMethod string
	rpcMethod  string // "" for a non-JSON-RPC request (GET, DELETE)
	rpcID      string // the id as raw JSON, "" for a notification or none
	bodyHash   string
	tokenHash  string // "" without a token
	tokenNo    int    // 0 without a token or for a token not issued here
	scopes     []string
	expiredBy  time.Duration // > 0: the token had expired this long ago
	status     int
	tag        string // the script's tag for this request, "" for none
}

// clientTokenRequest is one request to the token endpoint.
type clientTokenRequest struct {
	seq        int
	grantType  string
	clientID   string
	authMethod string // none, client_secret_basic, client_secret_post, or another
	resource   []string
	refreshNo  int // number of the refresh token presented; -1 unknown, 0 none
	status     int
	errorCode  string
	accessNo   int // number of the access token issued, 0 none
	refreshOut int // number of the refresh token issued, 0 none
}

// clientAuthzRequest is one request to the authorization endpoint.
type clientAuthzRequest struct {
	seq   int
	scope string
}

// clientRegistration is one dynamic client registration.
type clientRegistration struct {
	seq        int
	clientID   string
	authMethod string
	status     int
}

// clientAction is what the scripted layer does with an MCP request.
type clientAction struct {
	// delay holds the request before it is answered or served.
	delay time.Duration
	// status, when not zero, is answered instead of serving, with
	// challenge as WWW-Authenticate.
	status    int
	challenge string
	// tag marks the request in the record, for the judge.
	tag string
}

func newClientFixture(logger *slog.Logger) (*clientFixture, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	base := "http://" + ln.Addr().String()
	f := &clientFixture{
		stop:    make(chan struct{}),
		access:  map[string]*clientIssued{},
		refresh: map[string]int{},
		dead:    map[int]bool{},
		state:   map[string]int{},
	}
	mcpServer := clientMCPServer()
	st, err := stack.New(stack.Config{
		BaseURL:     base,
		AutoApprove: true,
		Scopes:      []string{clientScopeBase, clientScopeExtra},
		Faults:      true,
		// Conformance clients name a Client ID Metadata Document URL this
		// server cannot fetch; dynamic registration works for every client.
		AuthServer: func(c *authserver.Config) { c.DisableClientIDMetadata = true },
		Handler: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return mcpServer },
			&mcp.StreamableHTTPOptions{Logger: logger.With("component", "mcp-sdk")}),
		ResourceName: "evergrant check client fixture",
		WrapAuthServer: func(as http.Handler) http.Handler {
			f.as = as
			return http.HandlerFunc(f.serveAS)
		},
		WrapMCP: func(protected http.Handler) http.Handler {
			f.protected = protected
			return http.HandlerFunc(f.serveMCP)
		},
		Logger: logger,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	f.mcpURL, f.prmURL, f.faults = st.MCPURL, st.MetadataURL, st.Faults
	f.srv = &http.Server{Handler: st.Handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
	f.ln = ln
	return f, nil
}

// start serves; the scenario's setup is done by then.
func (f *clientFixture) start() {
	go f.srv.Serve(f.ln)
}

// clientMCPServer is the MCP server of every scenario: one tool, "echo".
func clientMCPServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "evergrant-check", Version: "1"}, nil)
	type echoIn struct {
		Text string `json:"text,omitempty" jsonschema:"text to return"`
	}
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "Returns its input."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + in.Text}}}, nil, nil
		})
	return s
}

func (f *clientFixture) close() {
	f.srv.Close()
	f.ln.Close()
}

// halt stops the client's run: it is looping.
func (f *clientFixture) halt(why string) {
	f.stopOnce.Do(func() {
		f.stopWhy = why
		close(f.stop)
	})
}

// checkLoop halts the run when a bound is crossed. Called with mu held.
func (f *clientFixture) checkLoop() {
	refreshes := 0
	for _, t := range f.token {
		if t.grantType == oauth.GrantTypeRefreshToken {
			refreshes++
		}
	}
	switch {
	case refreshes > clientLoopRefreshes:
		f.halt(fmt.Sprintf("more than %d refresh grants", clientLoopRefreshes))
	case len(f.authz) > clientLoopAuthorizations:
		f.halt(fmt.Sprintf("more than %d authorization requests", clientLoopAuthorizations))
	case len(f.mcp) > clientLoopMCPRequests:
		f.halt(fmt.Sprintf("more than %d MCP requests", clientLoopMCPRequests))
	}
}

func clientHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// bufferedResponse captures a handler's answer so it can be read before it
// is passed on.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}
func (b *bufferedResponse) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedResponse) copyTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	if b.status == 0 {
		b.status = http.StatusOK
	}
	w.WriteHeader(b.status)
	w.Write(b.body.Bytes())
}

// serveAS serves the authorization server, recording authorization,
// registration and token requests.
func (f *clientFixture) serveAS(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == authserver.PathAuthorize && r.Method == http.MethodGet:
		f.mu.Lock()
		f.seq++
		f.authz = append(f.authz, &clientAuthzRequest{seq: f.seq, scope: r.URL.Query().Get("scope")})
		f.checkLoop()
		f.mu.Unlock()
		f.as.ServeHTTP(w, r)
	case r.URL.Path == authserver.PathRegister && r.Method == http.MethodPost:
		f.mu.Lock()
		f.seq++
		reg := &clientRegistration{seq: f.seq}
		f.regs = append(f.regs, reg)
		f.mu.Unlock()
		out := &bufferedResponse{header: http.Header{}}
		f.as.ServeHTTP(out, r)
		var md oauth.ClientMetadata
		json.Unmarshal(out.body.Bytes(), &md)
		f.mu.Lock()
		reg.status, reg.clientID, reg.authMethod = out.status, md.ClientID, md.TokenEndpointAuthMethod
		if reg.authMethod == "" {
			reg.authMethod = oauth.AuthMethodClientSecretBasic // RFC 7591 §2 default
		}
		f.mu.Unlock()
		out.copyTo(w)
	case r.URL.Path == authserver.PathToken && r.Method == http.MethodPost:
		f.serveToken(w, r)
	default:
		f.as.ServeHTTP(w, r)
	}
}

func (f *clientFixture) serveToken(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	r.Body = io.NopCloser(bytes.NewReader(raw))
	form, _ := url.ParseQuery(string(raw))
	tr := &clientTokenRequest{grantType: form.Get("grant_type"), resource: form["resource"]}
	user, _, basic := r.BasicAuth()
	switch {
	case basic:
		tr.authMethod = oauth.AuthMethodClientSecretBasic
		tr.clientID, _ = url.QueryUnescape(user)
	case form.Get("client_assertion") != "":
		tr.authMethod = "private_key_jwt"
		tr.clientID = form.Get("client_id")
	case form.Has("client_secret"):
		tr.authMethod = oauth.AuthMethodClientSecretPost
		tr.clientID = form.Get("client_id")
	default:
		tr.authMethod = oauth.AuthMethodNone
		tr.clientID = form.Get("client_id")
	}
	f.mu.Lock()
	f.seq++
	tr.seq = f.seq
	if rt := form.Get("refresh_token"); rt != "" {
		tr.refreshNo = -1
		if n, ok := f.refresh[clientHash(rt)]; ok {
			tr.refreshNo = n
		}
	}
	f.token = append(f.token, tr)
	f.checkLoop()
	outage := f.outage
	if outage != nil {
		tr.status = outage.status
	}
	f.mu.Unlock()
	if outage != nil {
		outage.answer(w)
		return
	}

	out := &bufferedResponse{header: http.Header{}}
	f.as.ServeHTTP(out, r)
	now := time.Now()
	f.mu.Lock()
	tr.status = out.status
	if out.status == http.StatusOK {
		var resp oauth.TokenResponse
		if json.Unmarshal(out.body.Bytes(), &resp) == nil {
			if resp.AccessToken != "" {
				f.nAccess++
				is := &clientIssued{no: f.nAccess, scopes: oauth.ParseScope(resp.Scope)}
				if resp.ExpiresIn > 0 {
					is.expires = now.Add(time.Duration(resp.ExpiresIn) * time.Second)
				}
				f.access[clientHash(resp.AccessToken)] = is
				tr.accessNo = is.no
			}
			if resp.RefreshToken != "" {
				f.nRefresh++
				f.refresh[clientHash(resp.RefreshToken)] = f.nRefresh
				tr.refreshOut = f.nRefresh
			}
		}
	} else {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(out.body.Bytes(), &e)
		tr.errorCode = e.Error
	}
	f.mu.Unlock()
	out.copyTo(w)
}

// statusRecorder records the status of an answer that is streamed.
type statusRecorder struct {
	http.ResponseWriter
	f   *clientFixture
	req *clientMCPRequest
}

func (s *statusRecorder) WriteHeader(code int) {
	s.f.mu.Lock()
	if s.req.status == 0 {
		s.req.status = code
	}
	s.f.mu.Unlock()
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.f.mu.Lock()
	if s.req.status == 0 {
		s.req.status = http.StatusOK
	}
	s.f.mu.Unlock()
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if fl, ok := s.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// serveMCP records the request, asks the script what to do, and either
// answers as told or passes the request to the protected MCP server.
func (f *clientFixture) serveMCP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(w, "cannot read the request", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	req := &clientMCPRequest{at: time.Now(), httpMethod: r.Method, bodyHash: clientHash(string(body))}
	var msg struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if r.Method == http.MethodPost {
		trimmed := bytes.TrimSpace(body)
		switch {
		case len(trimmed) > 0 && trimmed[0] == '[':
			req.rpcMethod = "batch"
		case json.Unmarshal(body, &msg) == nil:
			req.rpcMethod = msg.Method
			if len(msg.ID) > 0 && string(msg.ID) != "null" {
				var cb bytes.Buffer
				if json.Compact(&cb, msg.ID) == nil {
					req.rpcID = cb.String()
				}
			}
		}
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		req.tokenHash = clientHash(strings.TrimSpace(tok))
	}

	f.mu.Lock()
	f.seq++
	req.seq = f.seq
	if is, ok := f.access[req.tokenHash]; ok {
		req.tokenNo, req.scopes = is.no, is.scopes
		if !is.expires.IsZero() && req.at.After(is.expires) {
			req.expiredBy = req.at.Sub(is.expires)
		}
	}
	f.mcp = append(f.mcp, req)
	f.checkLoop()
	var act clientAction
	switch {
	case req.expiredBy > 0:
		act = clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token expired"), tag: "expired"}
	case req.tokenHash != "" && (f.allDead || f.dead[req.tokenNo]):
		act = clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token is no longer valid"), tag: "dead"}
	case f.script != nil:
		act = f.script(req)
	}
	req.tag = act.tag
	f.mu.Unlock()

	if act.delay > 0 {
		select {
		case <-time.After(act.delay):
		case <-r.Context().Done():
			return
		}
	}
	rec := &statusRecorder{ResponseWriter: w, f: f, req: req}
	if act.status != 0 {
		if act.challenge != "" {
			rec.Header().Set("WWW-Authenticate", act.challenge)
		}
		rec.Header().Set("Content-Type", "application/json")
		rec.WriteHeader(act.status)
		code := "invalid_token"
		switch act.status {
		case http.StatusForbidden:
			code = oauth.ErrorInsufficientScope
		case http.StatusUnauthorized:
			if !strings.Contains(act.challenge, "error=") {
				code = "unauthorized"
			}
		}
		fmt.Fprintf(rec, "{\"error\":%q}\n", code)
		return
	}
	f.protected.ServeHTTP(rec, r)
}

// invalidToken is the challenge for a rejected token.
func (f *clientFixture) invalidToken(desc string) string {
	return oauth.BearerChallenge{Error: oauth.ErrorInvalidToken, ErrorDescription: desc, ResourceMetadata: f.prmURL}.String()
}

// bareChallenge is a 401 challenge without an error code.
func (f *clientFixture) bareChallenge() string {
	return oauth.BearerChallenge{ResourceMetadata: f.prmURL}.String()
}

// insufficientScope is the 403 challenge asking for clientScopeExtra.
func (f *clientFixture) insufficientScope() string {
	return oauth.BearerChallenge{Error: oauth.ErrorInsufficientScope, ErrorDescription: "this tool needs " + clientScopeExtra,
		Scope: []string{clientScopeBase, clientScopeExtra}, ResourceMetadata: f.prmURL}.String()
}

// once reports whether key is seen for the first time. Called with mu held.
func (f *clientFixture) once(key string) bool {
	f.state[key]++
	return f.state[key] == 1
}

// accessExpiry returns the expiry of access token no. Called with mu held.
func (f *clientFixture) accessExpiry(no int) time.Time {
	for _, is := range f.access {
		if is.no == no {
			return is.expires
		}
	}
	return time.Time{}
}

// clientLog is a snapshot of what the fixture recorded.
type clientLog struct {
	mcp   []clientMCPRequest
	token []clientTokenRequest
	authz []clientAuthzRequest
	regs  []clientRegistration
}

func (f *clientFixture) snapshot() *clientLog {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &clientLog{}
	for _, r := range f.mcp {
		l.mcp = append(l.mcp, *r)
	}
	for _, r := range f.token {
		l.token = append(l.token, *r)
	}
	for _, r := range f.authz {
		l.authz = append(l.authz, *r)
	}
	for _, r := range f.regs {
		l.regs = append(l.regs, *r)
	}
	return l
}
