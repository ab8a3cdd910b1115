package client_test

// Helpers shared by the client tests. The tests run real components on
// loopback: the fixture's authorization server and MCP endpoint
// (internal/fixture), the official Go SDK's MCP server and clients. A test
// that needs time to pass moves a testclock.Clock that the Transport and
// the authorization server share, instead of sleeping; a bound on a wait
// (hdBound) only turns a hang into a failure.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/store"
)

// invalidToken and ccInvalidToken are challenges of an expired or revoked
// access token.
const (
	invalidToken   = `Bearer error="invalid_token", error_description="expired"`
	ccInvalidToken = `Bearer error="invalid_token", error_description="the access token expired"`
)

// rig is a fixture stack plus a transport that holds a grant for it.
type rig struct {
	t     *testing.T
	st    *fixture.Stack
	store *store.Memory
	tr    *client.Transport
	hc    *http.Client
	hooks atomic.Int32
	reau  atomic.Pointer[client.NeedsReauthError]
}

// newRig authorizes once with a headless authorizer, then returns a rig
// whose transport has the given authorizer (nil: none) and no proactive
// refresh unless cfg says otherwise.
func newRig(t *testing.T, opts fixture.Options, cfg client.Config) *rig {
	t.Helper()
	r := &rig{t: t, st: fixture.New(t, opts), store: &store.Memory{}}
	boot := client.NewTransport(client.Config{Store: r.store, Authorizer: &client.HeadlessAuthorizer{},
		ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, ClientAuthMethod: cfg.ClientAuthMethod})
	if err := boot.Authorize(context.Background(), r.st.URL); err != nil {
		t.Fatalf("initial authorization: %v", err)
	}
	cfg.Store = r.store
	if cfg.RefreshMargin == 0 {
		cfg.RefreshMargin = -1
	}
	cfg.OnNeedsReauth = func(e *client.NeedsReauthError) { r.hooks.Add(1); r.reau.Store(e) }
	r.tr = client.NewTransport(cfg)
	r.hc = &http.Client{Transport: r.tr}
	return r
}

func (r *rig) grant() *store.Grant {
	r.t.Helper()
	key, _ := client.ServerKey(r.st.URL)
	g, err := r.store.Load(context.Background(), key)
	if err != nil {
		r.t.Fatalf("load grant: %v", err)
	}
	return g
}

func rpcBody(id int) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}`, id))
}

// call sends a JSON-RPC POST and returns the response (body read) or error.
func (r *rig) call(method string, id int) (*http.Response, []byte, error) {
	r.t.Helper()
	var body io.Reader
	if method == http.MethodPost {
		body = bytes.NewReader(rpcBody(id))
	}
	req, _ := http.NewRequest(method, r.st.URL, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b, nil
}

func responseID(t *testing.T, b []byte) int {
	t.Helper()
	var m struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("response %q: %v", b, err)
	}
	return m.ID
}

// ccRoundTripFunc adapts a function to http.RoundTripper.
type ccRoundTripFunc func(*http.Request) (*http.Response, error)

func (f ccRoundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ccCancelAtRefresh is a Base for a caller that gives up while its refresh
// is in flight: once armed is set, a request to the token endpoint calls
// cancel (the caller's) and is held until release is called, so that the
// token endpoint answers only after the caller has its error. The test
// calls release then; it is also called when the test ends.
func ccCancelAtRefresh(t *testing.T, cancel context.CancelFunc) (base http.RoundTripper, armed *atomic.Bool, release func()) {
	armed = new(atomic.Bool)
	gaveUp := make(chan struct{})
	release = sync.OnceFunc(func() { close(gaveUp) })
	t.Cleanup(release)
	base = ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		if armed.Load() && strings.HasSuffix(r.URL.Path, "/token") {
			cancel()
			select {
			case <-gaveUp:
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	return base, armed, release
}

// ccAuthorize starts a fixture, builds a Transport on cfg (a store.Memory
// and a HeadlessAuthorizer unless cfg names others) and signs in.
func ccAuthorize(t *testing.T, opts fixture.Options, cfg client.Config) (*fixture.Stack, *client.Transport) {
	t.Helper()
	st := fixture.New(t, opts)
	if cfg.Store == nil {
		cfg.Store = new(store.Memory)
	}
	if cfg.Authorizer == nil {
		cfg.Authorizer = &client.HeadlessAuthorizer{}
	}
	tr := client.NewTransport(cfg)
	if err := tr.Authorize(t.Context(), st.URL); err != nil {
		t.Fatalf("Authorize: %v", err)
	}
	return st, tr
}

// onClock returns fixture options whose authorization server runs on
// clock, so that the tokens it issues expire when the clock says. (The
// fixture's MCP endpoint asks the authorization server about every token,
// so it follows that clock too.)
func onClock(clock *testclock.Clock, opts fixture.Options) fixture.Options {
	adjust := opts.AuthServer
	opts.AuthServer = func(c *authserver.Config) {
		if adjust != nil {
			adjust(c)
		}
		c.Now = clock.Now
	}
	return opts
}

// ccAccessToken returns the access token stored for the fixture's server.
func ccAccessToken(t *testing.T, tr *client.Transport, st *fixture.Stack) string {
	t.Helper()
	g, err := tr.Grant(t.Context(), st.URL)
	if err != nil || g == nil {
		t.Fatalf("Grant: %v, %v", g, err)
	}
	return g.AccessToken
}

// ccBody is a JSON-RPC request with the given id.
func ccBody(id int) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/list"}`, id)
}

// ccPost sends a JSON-RPC request with the given id and returns the
// response, its body read and closed.
func ccPost(ctx context.Context, hc *http.Client, url string, id int, hdr ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(ccBody(id)))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}

// ccCheckEcho checks that a response is the fixture's echo of request id.
func ccCheckEcho(resp *http.Response, data []byte, id int) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d, want 200 (body %q)", resp.StatusCode, data)
	}
	var m struct {
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("response %q: %v", data, err)
	}
	if got, want := string(m.ID), fmt.Sprint(id); got != want {
		return fmt.Errorf("response carries id %s, want %s", got, want)
	}
	return nil
}

// ccForceOld makes the resource server answer 401 invalid_token to every
// request that carries old, as if it had expired.
func ccForceOld(st *fixture.Stack, old string) {
	st.ForceFunc(func(_ *http.Request, token string) *fixture.Forced {
		if token == old {
			return &fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken}
		}
		return nil
	})
}

// ccGate holds up to n callers until all n have arrived (or a bound
// passes), so that n requests are known to have failed before any refresh.
type ccGate struct {
	n       int
	arrived atomic.Int32
	all     chan struct{}
	once    sync.Once
}

func ccNewGate(n int) *ccGate { return &ccGate{n: n, all: make(chan struct{})} }

func (g *ccGate) wait() {
	if int(g.arrived.Add(1)) >= g.n {
		g.once.Do(func() { close(g.all) })
	}
	select {
	case <-g.all:
	case <-time.After(hdBound):
	}
}

// ccOldTokenGate is a Base on which each MCP request sent with the access
// token in old (which the test sets once it has that token) waits, once
// answered, at the gate: all n have their 401 before any refresh.
type ccOldTokenGate struct {
	*ccGate
	old atomic.Value // string
}

func ccNewOldTokenGate(n int) *ccOldTokenGate {
	g := &ccOldTokenGate{ccGate: ccNewGate(n)}
	g.old.Store("")
	return g
}

func (g *ccOldTokenGate) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && r.URL.Path == "/mcp" && r.Header.Get("Authorization") == "Bearer "+g.old.Load().(string) {
		g.wait()
	}
	return resp, err
}

// hdBound turns a wait that would hang without a fix into a failure.
const hdBound = 10 * time.Second

// hdRecv receives from ch or fails the test after hdBound.
func hdRecv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hdBound):
		t.Fatalf("%s did not happen", what)
		panic("unreachable")
	}
}

// waitIdle waits until tr has no background work left (Transport.Wait),
// failing the test after hdBound.
func waitIdle(t *testing.T, tr *client.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hdBound)
	defer cancel()
	if err := tr.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
}

// hdTokenGate is a Base that holds token endpoint requests, once armed,
// until it is opened, and counts them.
type hdTokenGate struct {
	armed   atomic.Bool
	hits    atomic.Int32
	hit     chan struct{} // closed at the first request held
	hitOnce sync.Once
	open    chan struct{}
	once    sync.Once
}

func newTokenGate(t *testing.T) *hdTokenGate {
	g := &hdTokenGate{hit: make(chan struct{}), open: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

func (g *hdTokenGate) release() { g.once.Do(func() { close(g.open) }) }

func (g *hdTokenGate) RoundTrip(r *http.Request) (*http.Response, error) {
	if g.armed.Load() && strings.HasSuffix(r.URL.Path, authserver.PathToken) {
		g.hits.Add(1)
		g.hitOnce.Do(func() { close(g.hit) })
		select {
		case <-g.open:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Protocol versions the SDK client can be asked for: its default (the
// 2026-07-28 revision: server/discover, no standalone GET stream) and the
// 2025-11-25 revision (initialize, a standalone GET event stream when the
// server is stateful).
const (
	sdkProtoLatest = ""
	sdkProto251125 = "2025-11-25"
)

type sdkEchoIn struct {
	Text string `json:"text"`
}

type sdkEchoOut struct {
	Text string `json:"text"`
}

// sdkServer is the official SDK's streamable HTTP handler serving one tool,
// "echo", that returns its input.
func sdkServer(stateless bool) http.Handler {
	s := mcp.NewServer(&mcp.Implementation{Name: "evergrant-test", Version: "1"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "returns its input"},
		func(_ context.Context, _ *mcp.CallToolRequest, in sdkEchoIn) (*mcp.CallToolResult, sdkEchoOut, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, sdkEchoOut(in), nil
		})
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, &mcp.StreamableHTTPOptions{Stateless: stateless})
}

// sdkTokenTTL is the access token lifetime of an sdkStack on a clock.
const sdkTokenTTL = 10 * time.Minute

// sdkStack starts the fixture with the SDK server; wrap, when not nil,
// wraps the SDK handler. With a clock, the authorization server runs on it
// and its access tokens live sdkTokenTTL; without one, it runs on the real
// time with its default lifetimes.
func sdkStack(t *testing.T, clock *testclock.Clock, stateless bool, wrap func(http.Handler) http.Handler) *fixture.Stack {
	t.Helper()
	h := sdkServer(stateless)
	if wrap != nil {
		h = wrap(h)
	}
	opts := fixture.Options{Handler: h}
	if clock != nil {
		opts.AccessTokenTTL = sdkTokenTTL
		opts = onClock(clock, opts)
	}
	return fixture.New(t, opts)
}

// sdkTransport returns a Transport that signs in headlessly, and the store
// it keeps its grant in.
func sdkTransport(cfg client.Config) (*client.Transport, store.Store) {
	if cfg.Store == nil {
		cfg.Store = new(store.Memory)
	}
	if cfg.Authorizer == nil {
		cfg.Authorizer = &client.HeadlessAuthorizer{}
	}
	return client.NewTransport(cfg), cfg.Store
}

// sdkSignedIn returns a Transport without an Authorizer holding a grant for
// st.URL (signed in by another Transport sharing its store): a host that
// cannot show a sign-in right now, so a lost grant stays lost.
func sdkSignedIn(t *testing.T, st *fixture.Stack, cfg client.Config) *client.Transport {
	t.Helper()
	signer, s := sdkTransport(client.Config{})
	if err := signer.Authorize(t.Context(), st.URL); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	cfg.Store, cfg.Authorizer = s, nil
	return client.NewTransport(cfg)
}

// sdkModes are the server modes and protocol versions the tests run in.
var sdkModes = []struct {
	name      string
	stateless bool
	proto     string
}{
	{"stateful/latest", false, sdkProtoLatest},
	{"stateless/latest", true, sdkProtoLatest},
	{"stateful/2025-11-25", false, sdkProto251125},
	{"stateless/2025-11-25", true, sdkProto251125},
}

// expire moves clock past the expiry of the stored access token, at the
// server too: the server rounds exp up to a whole second, so the token may
// live up to a second past the client's expires_in-based Expiry.
func expire(t *testing.T, clock *testclock.Clock, tr *client.Transport, serverURL string) {
	t.Helper()
	g, err := tr.Grant(t.Context(), serverURL)
	if err != nil || g == nil || g.Expiry.IsZero() {
		t.Fatalf("grant: %v, %+v", err, g != nil)
	}
	clock.Set(g.Expiry.Add(1250 * time.Millisecond))
}

// checkNeedsReauth checks that err carries a *client.NeedsReauthError for
// a refused refresh, through errors.As and errors.Is.
func checkNeedsReauth(t *testing.T, err error, reason client.Reason) *client.NeedsReauthError {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) {
		t.Fatalf("errors.As(*client.NeedsReauthError) fails on %T: %v", err, err)
	}
	if !errors.Is(err, client.ErrNeedsReauth) {
		t.Errorf("errors.Is(err, client.ErrNeedsReauth) = false: %v", err)
	}
	if reason != "" && ne.Reason != reason {
		t.Errorf("reason: got %q, want %q (%v)", ne.Reason, reason, ne)
	}
	return ne
}

// streamCutter ends the server's open GET event streams on demand, as a
// server restart or a proxy timeout would, so the client reconnects.
type streamCutter struct {
	h       http.Handler
	mu      sync.Mutex
	cancels map[*http.Request]context.CancelFunc
	gets    atomic.Int32
	// opened receives a value (when there is room) each time a stream
	// opens.
	opened chan struct{}
}

func newStreamCutter() *streamCutter {
	return &streamCutter{cancels: map[*http.Request]context.CancelFunc{}, opened: make(chan struct{}, 16)}
}

func (c *streamCutter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		c.h.ServeHTTP(w, r)
		return
	}
	c.gets.Add(1)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	c.mu.Lock()
	c.cancels[r] = cancel
	c.mu.Unlock()
	select {
	case c.opened <- struct{}{}:
	default:
	}
	defer func() {
		c.mu.Lock()
		delete(c.cancels, r)
		c.mu.Unlock()
	}()
	c.h.ServeHTTP(w, r.WithContext(ctx))
}

func (c *streamCutter) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cancels)
}

func (c *streamCutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cancel := range c.cancels {
		cancel()
	}
}

// rfAuthorizer is a HeadlessAuthorizer that counts its sign-ins, records
// the authorization URLs and fails while fail is set.
type rfAuthorizer struct {
	client.HeadlessAuthorizer
	mu    sync.Mutex
	urls  []*url.URL
	fail  atomic.Bool
	calls atomic.Int32
}

var errDeclined = errors.New("the user declined")

func (a *rfAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	a.calls.Add(1)
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.urls = append(a.urls, u)
	a.mu.Unlock()
	if a.fail.Load() {
		return nil, errDeclined
	}
	return a.HeadlessAuthorizer.Authorize(ctx, authURL)
}

func (a *rfAuthorizer) last() *url.URL {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.urls) == 0 {
		return nil
	}
	return a.urls[len(a.urls)-1]
}

// rfRig is a fixture stack and a Transport with an rfAuthorizer, signed in
// once, on a fake clock.
type rfRig struct {
	t     *testing.T
	st    *fixture.Stack
	clock *testclock.Clock
	authz *rfAuthorizer
	tr    *client.Transport
	hooks atomic.Int32
	mu    sync.Mutex
	evs   []client.Event
}

func newRFRig(t *testing.T, cfg client.Config) *rfRig {
	t.Helper()
	return newRFRigWith(t, cfg, nil)
}

// newRFRigWith is newRFRig with setup run on the stack before the sign-in.
func newRFRigWith(t *testing.T, cfg client.Config, setup func(*fixture.Stack)) *rfRig {
	t.Helper()
	r := &rfRig{t: t, st: fixture.New(t, fixture.Options{AccessTokenTTL: 10 * time.Minute}),
		clock: testclock.New(time.Now()), authz: &rfAuthorizer{}}
	if setup != nil {
		setup(r.st)
	}
	cfg.Store = &store.Memory{}
	cfg.Authorizer = r.authz
	cfg.Now = r.clock.Now
	cfg.OnNeedsReauth = func(*client.NeedsReauthError) { r.hooks.Add(1) }
	cfg.OnEvent = func(e client.Event) {
		r.mu.Lock()
		r.evs = append(r.evs, e)
		r.mu.Unlock()
	}
	r.tr = client.NewTransport(cfg)
	if err := r.tr.Authorize(t.Context(), r.st.URL); err != nil {
		t.Fatalf("sign-in: %v", err)
	}
	return r
}

// call sends one tools/call POST; a nil error means a 200.
func (r *rfRig) call(id int) error {
	r.t.Helper()
	req, _ := http.NewRequestWithContext(r.t.Context(), http.MethodPost, r.st.URL, bytes.NewReader(rpcBody(id)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// wait waits for the Transport's background work (a refresh and its hooks).
func (r *rfRig) wait() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.tr.Wait(ctx); err != nil {
		r.t.Fatalf("Wait: %v", err)
	}
}

func (r *rfRig) events(kind client.EventKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.evs {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// wantRefused checks that err is the remembered refusal: refresh_rejected
// with invalid_grant.
func wantRefused(t *testing.T, err error, what string) {
	t.Helper()
	var ne *client.NeedsReauthError
	if !errors.As(err, &ne) || ne.Reason != client.ReasonRefreshRejected || ne.ErrorCode != "invalid_grant" {
		t.Fatalf("%s: %v, want needs_reauth refresh_rejected (invalid_grant)", what, err)
	}
}
