package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// codeNeedsReauth is the JSON-RPC error code of the answer the bridge gives
// to a request it could not forward because a new sign-in is needed. It is
// in the implementation-defined range, next to the server signal's default
// (-32060), and clear of the codes MCP and the Go SDK use (-32000, -32001,
// -32002, -32020…-32022, -32042).
const codeNeedsReauth = -32061

// codeRejectedByTransport is the code of the Go SDK's jsonrpc2.ErrRejected
// ("rejected by transport"), which its streamable client wraps around a
// failed POST. It names no cause, so the bridge answers with the whole
// error (server down, grant unreadable, refresh unavailable) instead.
const codeRejectedByTransport = -32005

const (
	// bridgeSendTimeout bounds forwarding one notification or response.
	bridgeSendTimeout = time.Minute
	// bridgeDrainTimeout is how long the bridge waits, after stdin closes,
	// for the answers to requests still on their way.
	bridgeDrainTimeout = 5 * time.Second
	// bridgeReinitTimeout bounds opening a new session with the server.
	bridgeReinitTimeout = 30 * time.Second
	// bridgeMaxMessage bounds one message from the host or one event of the
	// server's stream, as the SDK's stdio transport does.
	bridgeMaxMessage = mcp.DefaultMaxLineLength
	// Reconnection delays of the server's event stream (GET).
	bridgeStreamMinDelay = time.Second
	bridgeStreamMaxDelay = 30 * time.Second
)

// MCP names the bridge needs to know.
const (
	bridgeInitialize        = "initialize"
	bridgeInitialized       = "notifications/initialized"
	bridgeCancelled         = "notifications/cancelled"
	bridgeListen            = "subscriptions/listen"
	bridgeSessionHeader     = "Mcp-Session-Id"
	bridgeProtocolHeader    = "Mcp-Protocol-Version"
	bridgeLastEventHeader   = "Last-Event-ID"
	bridgeStatelessProtocol = "2026-07-28" // SEP-2575: no initialize, no GET stream
	bridgeRequestPrefix     = "evergrant-bridge-"
)

const bridgeUsage = `Usage: evergrant bridge [flags] URL

Serves the remote MCP server at URL (streamable HTTP) to a host on stdio
(newline-delimited JSON-RPC on stdin and stdout), forwarding every message
both ways: requests, responses and notifications, including the server's own
requests and notifications on its event streams.

It uses the grant "evergrant login URL" stored, and refreshes it silently
when the access token expires or the server rejects it; it never opens a
browser. When a new sign-in is needed, the pending request gets a JSON-RPC
error (code -32061) whose message says which command to run and whose data
is {"reason": "needs_reauth", ...}; the bridge keeps running, and requests
succeed again once you have signed in from a terminal. Several bridges for
the same server share one grant and refresh it once.

If the server forgets the session (it restarted, say), the bridge opens a
new one, initializing it as the host did. Logs go to stderr only.

Exit codes: 0 stdin closed (or interrupted), 1 stdin could not be read (a
line over 16 MiB), 2 usage error.

In a host's configuration (Claude Desktop and most others):

  {
    "mcpServers": {
      "example": {
        "command": "evergrant",
        "args": ["bridge", "https://mcp.example.com/mcp"]
      }
    }
  }

Flags:
`

func runBridge(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return bridgeMain(ctx, args, os.Stdin, stdout, stderr)
}

// bridgeMain is the bridge command with its stdin as a parameter, so tests
// can run it in-process.
func bridgeMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	var g globalFlags
	// The bridge's stderr is the host's log, and the only place where a
	// missing sign-in or an unreadable grant shows before a request fails.
	g.registerLevel(fs, "warn")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), bridgeUsage)
		fs.PrintDefaults()
	}
	pos, code, ok := parseArgs(fs, args, 1, 1, stdout, stderr)
	if !ok {
		return code
	}
	serverURL := pos[0]
	if err := checkServerURL(serverURL); err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	logger, err := g.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	key, err := client.ServerKey(serverURL)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitUsage
	}
	st, err := g.openStore()
	if err != nil {
		fmt.Fprintf(stderr, "evergrant bridge: %v\n", err)
		return exitError
	}
	hint := loginHint(serverURL, g.configDir)
	tlog := logger // the Transport names the server itself
	logger = logger.With("server", serverURL)
	if gr, err := st.Load(ctx, key); errors.Is(err, store.ErrNotFound) || err == nil && gr.AccessToken == "" && gr.RefreshToken == "" {
		logger.Warn("no sign-in stored for this server: requests will fail until you sign in", "hint", hint)
	} else if err != nil {
		logger.Warn("cannot read the stored grant", "error", err)
	}

	tr := client.NewTransport(client.Config{
		Store:  st,
		Logger: tlog,
		OnNeedsReauth: func(e *client.NeedsReauthError) {
			logger.Error("needs_reauth: "+hint, "reason", e.Reason, "error_code", e.ErrorCode)
		},
	})
	b := newBridge(ctx, serverURL, g.configDir, logger, stdout, tr)
	code = b.run(stdin)
	// A refresh still running in the background must be saved before the
	// process exits, or a rotated refresh token is lost.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionWaitTimeout)
	defer cancel()
	if err := tr.Wait(wctx); err != nil {
		logger.Warn("exiting while a refresh is still running; its result may be lost", "error", err)
	}
	return code
}

// bridge forwards messages between a host on stdio and a remote MCP server.
//
// The remote side is the official Go SDK's StreamableClientTransport used as
// a bare mcp.Connection: Write POSTs a message (with the session id the
// server assigned), Read returns what arrives on the POSTs' answers (JSON or
// SSE). Two things the SDK does only for its own ClientSession (through an
// unexported hook) the bridge does itself: sending Mcp-Protocol-Version after
// initialize (bridgeProtocolRT), and the standalone GET event stream that
// carries the server's requests and notifications outside of a request
// (standalone).
type bridge struct {
	ctx    context.Context // the bridge's lifetime
	cancel context.CancelFunc
	url    string
	dir    string // --config-dir, for the sign-in hints
	hint   string // "sign in again with: evergrant login …"
	log    *slog.Logger
	hc     *http.Client
	rec    *client.ReauthRecorder
	host   *bridgeHostWriter

	sessMu sync.Mutex // serializes opening sessions

	mu       sync.Mutex
	sess     *bridgeSession // the current session; nil or broken means open a new one
	nsess    int
	closing  bool
	pending  map[jsonrpc.ID]*bridgeCall            // the host's requests without an answer yet
	waiters  map[jsonrpc.ID]chan *jsonrpc.Response // the bridge's own requests
	initReq  *jsonrpc.Request                      // the host's initialize, replayed on a new session
	initDone bool                                  // the host's initialize succeeded
	version  string                                // protocol version initialize negotiated
}

// bridgeSession is one connection (MCP session) with the server.
type bridgeSession struct {
	n      int
	conn   mcp.Connection
	ctx    context.Context // cancelled when the session ends
	cancel context.CancelFunc
	// guarded by bridge.mu
	broken    bool
	streaming bool // the GET stream was started
}

// bridgeCall is a request of the host the server has not answered.
type bridgeCall struct {
	method string
	cancel context.CancelFunc
	// guarded by bridge.mu
	sess    *bridgeSession // the session it was sent on
	written bool           // the server accepted it
}

func newBridge(ctx context.Context, serverURL, configDir string, logger *slog.Logger, stdout io.Writer, tr http.RoundTripper) *bridge {
	b := &bridge{
		url:     serverURL,
		dir:     configDir,
		hint:    loginHint(serverURL, configDir),
		log:     logger,
		host:    &bridgeHostWriter{w: stdout},
		pending: map[jsonrpc.ID]*bridgeCall{},
		waiters: map[jsonrpc.ID]chan *jsonrpc.Response{},
	}
	b.ctx, b.cancel = context.WithCancel(ctx)
	b.rec = client.NewReauthRecorder(tr)
	b.hc = &http.Client{Transport: &bridgeProtocolRT{base: b.rec, b: b}}
	return b
}

// run forwards until stdin closes or the context is done, and returns the
// exit code.
func (b *bridge) run(stdin io.Reader) int {
	defer b.cancel()
	b.log.Info("bridging stdio to the server")
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 0, 64<<10), bridgeMaxMessage)
		for sc.Scan() {
			select {
			case lines <- bytes.Clone(sc.Bytes()):
			case <-b.ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
	}()
	code := exitOK
loop:
	for {
		select {
		case <-b.ctx.Done():
			b.log.Info("interrupted")
			break loop
		case line := <-lines:
			b.fromHost(line)
		case err := <-readErr:
			if err != nil {
				b.log.Error("reading stdin", "error", err)
				code = exitError
			} else {
				b.log.Info("stdin closed")
			}
			b.drain(bridgeDrainTimeout)
			break loop
		}
	}
	b.shutdown()
	return code
}

// drain waits up to d for the answers to the host's pending requests.
func (b *bridge) drain(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && b.ctx.Err() == nil {
		b.mu.Lock()
		n := 0
		for _, pc := range b.pending {
			if pc.method != bridgeListen {
				n++
			}
		}
		b.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shutdown ends the session with the server (DELETE) and stops everything.
func (b *bridge) shutdown() {
	b.mu.Lock()
	b.closing = true
	s := b.sess
	b.sess = nil
	for id, pc := range b.pending {
		pc.cancel()
		delete(b.pending, id)
	}
	b.mu.Unlock()
	if s != nil {
		s.conn.Close() // the SDK bounds its DELETE
		s.cancel()
	}
	b.cancel()
}

// fromHost handles one line of stdin: a message or a batch of them.
func (b *bridge) fromHost(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var msgs []jsonrpc.Message
	var err error
	if line[0] == '[' {
		var raws []json.RawMessage
		if err = json.Unmarshal(line, &raws); err == nil {
			for _, raw := range raws {
				var m jsonrpc.Message
				if m, err = jsonrpc.DecodeMessage(raw); err != nil {
					break
				}
				msgs = append(msgs, m)
			}
		}
	} else {
		var m jsonrpc.Message
		if m, err = jsonrpc.DecodeMessage(line); err == nil {
			msgs = append(msgs, m)
		}
	}
	if err != nil {
		code := jsonrpc.CodeInvalidRequest
		if !json.Valid(line) {
			code = jsonrpc.CodeParseError
		}
		b.log.Warn("ignoring a message from the host that is not JSON-RPC", "error", err)
		data, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": nil,
			"error": map[string]any{"code": code, "message": "evergrant bridge: " + err.Error()}})
		b.host.writeRaw(data)
		return
	}
	for _, m := range msgs {
		switch m := m.(type) {
		case *jsonrpc.Request:
			if m.IsCall() {
				b.forwardCall(m)
			} else {
				b.forwardNotification(m)
			}
		case *jsonrpc.Response:
			b.forwardResponse(m)
		}
	}
}

// forwardCall sends a request of the host to the server; the answer comes
// back through the session's reader, or from fail.
func (b *bridge) forwardCall(req *jsonrpc.Request) {
	ctx, cancel := context.WithCancel(b.ctx)
	pc := &bridgeCall{method: req.Method, cancel: cancel}
	b.mu.Lock()
	b.pending[req.ID] = pc
	if req.Method == bridgeInitialize {
		b.initReq = req
	}
	b.mu.Unlock()
	b.log.Debug("forwarding request", "method", req.Method, "id", req.ID.Raw())
	go func() {
		for attempt := 0; ; attempt++ {
			s, err := b.session()
			if err != nil {
				b.fail(req.ID, pc, err)
				return
			}
			b.mu.Lock()
			pc.sess = s
			b.mu.Unlock()
			// The SDK reads the answer's event stream with this context: it
			// lives until the answer has reached the host (or the host
			// cancels).
			err = s.conn.Write(ctx, req)
			if err == nil {
				b.mu.Lock()
				pc.written = true
				broken := s.broken
				b.mu.Unlock()
				if broken {
					// The session ended while the request was on its way;
					// endSession did not see it written.
					b.fail(req.ID, pc, errBridgeSessionEnded)
				}
				return
			}
			if attempt == 0 && errors.Is(err, mcp.ErrSessionMissing) {
				// The server forgot the session (it restarted, say) and did
				// not read the request: send it on a new session.
				b.endSession(s, err, true)
				continue
			}
			b.fail(req.ID, pc, err)
			return
		}
	}()
}

var errBridgeSessionEnded = errors.New("the session with the server ended")

// forwardNotification sends a notification of the host to the server. It is
// sent before the next message of the host is read, so the server sees them
// in the host's order (notifications/initialized before the next request).
func (b *bridge) forwardNotification(req *jsonrpc.Request) {
	b.log.Debug("forwarding notification", "method", req.Method)
	b.send(req, req.Method)
	if req.Method == bridgeCancelled {
		// The host gave up on the request: stop waiting for its answer.
		var p struct {
			RequestID any `json:"requestId"`
		}
		if json.Unmarshal(req.Params, &p) == nil {
			if id, err := jsonrpc.MakeID(p.RequestID); err == nil {
				b.mu.Lock()
				pc := b.pending[id]
				delete(b.pending, id)
				b.mu.Unlock()
				if pc != nil {
					pc.cancel()
				}
			}
		}
	}
}

// forwardResponse sends the host's answer to a request of the server.
func (b *bridge) forwardResponse(resp *jsonrpc.Response) {
	b.log.Debug("forwarding response", "id", resp.ID.Raw())
	b.send(resp, "response")
}

// send forwards a message nobody waits an answer for; a failure is logged.
func (b *bridge) send(msg jsonrpc.Message, what string) {
	var err error
	for attempt := 0; ; attempt++ {
		var s *bridgeSession
		if s, err = b.session(); err != nil {
			break
		}
		ctx, cancel := context.WithTimeout(b.ctx, bridgeSendTimeout)
		err = s.conn.Write(ctx, msg)
		cancel()
		_, isResp := msg.(*jsonrpc.Response)
		if attempt == 0 && !isResp && errors.Is(err, mcp.ErrSessionMissing) {
			// As in forwardCall. (An answer to a request of the old
			// session is of no use to a new one.)
			b.endSession(s, err, true)
			continue
		}
		break
	}
	if err != nil && b.ctx.Err() == nil {
		if ne := b.needsReauth(err); ne != nil {
			b.log.Warn("could not forward a message to the server: needs_reauth", "message", what, "reason", ne.Reason, "hint", b.hint)
		} else {
			b.log.Warn("could not forward a message to the server", "message", what, "error", err)
		}
	}
}

// session returns the current session with the server, opening a new one
// (and initializing it again as the host did) when the last one ended.
func (b *bridge) session() (*bridgeSession, error) {
	b.sessMu.Lock()
	defer b.sessMu.Unlock()
	b.mu.Lock()
	s, closing, replay, init := b.sess, b.closing, b.initDone, b.initReq
	b.mu.Unlock()
	if closing {
		return nil, errors.New("the bridge is shutting down")
	}
	if s != nil {
		return s, nil
	}
	t := &mcp.StreamableClientTransport{Endpoint: b.url, HTTPClient: b.hc, DisableStandaloneSSE: true}
	conn, err := t.Connect(b.ctx) // no I/O yet
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.nsess++
	s = &bridgeSession{n: b.nsess, conn: conn}
	b.mu.Unlock()
	s.ctx, s.cancel = context.WithCancel(b.ctx)
	go b.readRemote(s)
	if replay {
		if err := b.reinitialize(s, init); err != nil {
			b.endSession(s, err, false)
			return nil, err
		}
	}
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		s.conn.Close()
		s.cancel()
		return nil, errors.New("the bridge is shutting down")
	}
	b.sess = s
	b.mu.Unlock()
	return s, nil
}

// reinitialize replays the host's initialize on a new session, so that the
// host's session goes on after the server forgot the old one (it restarted,
// say).
func (b *bridge) reinitialize(s *bridgeSession, init *jsonrpc.Request) error {
	id, _ := jsonrpc.MakeID(fmt.Sprintf("%sinitialize-%d", bridgeRequestPrefix, s.n))
	ch := make(chan *jsonrpc.Response, 1)
	b.mu.Lock()
	b.waiters[id] = ch
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.waiters, id)
		b.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(s.ctx, bridgeReinitTimeout)
	defer cancel()
	if err := s.conn.Write(ctx, &jsonrpc.Request{ID: id, Method: bridgeInitialize, Params: init.Params}); err != nil {
		return err
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("initialize: %w", r.Error)
		}
		b.mu.Lock()
		stream := b.initialized(s, r.Result)
		b.mu.Unlock()
		if stream {
			go b.standalone(s)
		}
	case <-ctx.Done():
		return fmt.Errorf("initialize: %w", ctx.Err())
	}
	if err := s.conn.Write(ctx, &jsonrpc.Request{Method: bridgeInitialized, Params: json.RawMessage(`{}`)}); err != nil {
		return err
	}
	b.log.Info("opened a new session with the server", "session", s.n)
	return nil
}

// initialized notes the result of an initialize on s, and reports whether
// to start the GET stream (once per session, and not with the stateless
// protocol, which has none). b.mu is held.
func (b *bridge) initialized(s *bridgeSession, result json.RawMessage) (stream bool) {
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	json.Unmarshal(result, &r)
	if r.ProtocolVersion != "" {
		b.version = r.ProtocolVersion
	}
	if s.streaming || r.ProtocolVersion >= bridgeStatelessProtocol {
		return false
	}
	s.streaming = true
	return true
}

// readRemote forwards what the server sends on s to the host until s ends.
func (b *bridge) readRemote(s *bridgeSession) {
	for {
		msg, err := s.conn.Read(s.ctx)
		if err != nil {
			b.endSession(s, err, true)
			return
		}
		b.fromRemote(s, msg)
	}
}

// fromRemote forwards one message of the server to the host.
func (b *bridge) fromRemote(s *bridgeSession, msg jsonrpc.Message) {
	switch m := msg.(type) {
	case *jsonrpc.Response:
		b.mu.Lock()
		if ch, ok := b.waiters[m.ID]; ok {
			delete(b.waiters, m.ID)
			b.mu.Unlock()
			ch <- m
			return
		}
		pc := b.pending[m.ID]
		delete(b.pending, m.ID)
		stream := false
		if pc != nil && pc.method == bridgeInitialize && m.Error == nil {
			b.initDone = true
			stream = b.initialized(s, m.Result)
		}
		b.mu.Unlock()
		b.log.Debug("forwarding answer", "id", m.ID.Raw(), "error", m.Error != nil)
		b.host.write(m)
		if pc != nil {
			pc.cancel()
		}
		if stream {
			// After the host has the answer: what comes on the stream
			// follows it.
			go b.standalone(s)
		}
	case *jsonrpc.Request:
		b.log.Debug("forwarding from the server", "method", m.Method, "request", m.IsCall())
		b.host.write(m)
	}
}

// endSession ends s after err. The host's requests pending on it are
// answered with an error, and the next message of the host opens a new
// session.
func (b *bridge) endSession(s *bridgeSession, err error, logIt bool) {
	b.mu.Lock()
	if s.broken || b.closing {
		s.broken = true
		b.mu.Unlock()
		return
	}
	s.broken = true
	if b.sess == s {
		b.sess = nil
	}
	type failed struct {
		id jsonrpc.ID
		pc *bridgeCall
	}
	var lost []failed
	for id, pc := range b.pending {
		if pc.sess == s && pc.written {
			delete(b.pending, id)
			lost = append(lost, failed{id, pc})
		}
	}
	b.mu.Unlock()
	s.cancel()
	go s.conn.Close()
	if logIt && b.ctx.Err() == nil {
		b.log.Warn("the session with the server ended; the next request opens a new one", "session", s.n, "error", err)
	}
	for _, f := range lost {
		f.pc.cancel()
		b.answerError(f.id, fmt.Errorf("%w: %w", errBridgeSessionEnded, err))
	}
}

// fail answers the host's request id with an error, unless it was answered
// already.
func (b *bridge) fail(id jsonrpc.ID, pc *bridgeCall, err error) {
	b.mu.Lock()
	cur, ok := b.pending[id]
	if ok && cur == pc {
		delete(b.pending, id)
	}
	b.mu.Unlock()
	if !ok || cur != pc {
		return
	}
	pc.cancel()
	if b.ctx.Err() != nil {
		return
	}
	b.answerError(id, err)
}

func (b *bridge) answerError(id jsonrpc.ID, err error) {
	we := b.wireError(err)
	b.log.Info("answering a request with an error", "id", id.Raw(), "code", we.Code, "message", we.Message)
	b.host.write(&jsonrpc.Response{ID: id, Error: we})
}

// needsReauth returns the NeedsReauthError behind err, also when the SDK
// formatted it away (the ReauthRecorder kept it).
func (b *bridge) needsReauth(err error) *client.NeedsReauthError {
	var ne *client.NeedsReauthError
	if errors.As(err, &ne) {
		return ne
	}
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		return nil // the server answered
	}
	if errors.As(b.rec.Err(err), &ne) {
		return ne
	}
	return nil
}

// bridgeReauthData is the data of the needs_reauth error. It never holds
// token material.
type bridgeReauthData struct {
	Reason           string   `json:"reason"` // "needs_reauth" or "insufficient_scope"
	Cause            string   `json:"cause,omitempty"`
	Server           string   `json:"server"`
	Issuer           string   `json:"issuer,omitempty"`
	Error            string   `json:"error,omitempty"`
	ErrorDescription string   `json:"error_description,omitempty"`
	Scopes           []string `json:"scopes,omitempty"`
	Required         []string `json:"required_scopes,omitempty"`
	Login            string   `json:"login"`
}

// wireError is the JSON-RPC error the host gets for a request that failed
// with err. The sign-in hints are those of the other commands
// (reportSessionError).
func (b *bridge) wireError(err error) *jsonrpc.Error {
	if ne := b.needsReauth(err); ne != nil {
		hint := b.hint
		if ne.ErrorCode == oauth.ErrorInvalidClient {
			// The authorization server forgot the client registration: a
			// plain login would reuse it and fail.
			hint = loginHint(b.url, b.dir, "--new-client")
		}
		data, _ := json.Marshal(bridgeReauthData{
			Reason: "needs_reauth", Cause: ne.Reason, Server: ne.Server, Issuer: ne.Issuer,
			Error: ne.ErrorCode, ErrorDescription: ne.ErrorDescription, Scopes: ne.Scopes,
			Login: strings.TrimPrefix(hint, "sign in again with: "),
		})
		return &jsonrpc.Error{
			Code:    codeNeedsReauth,
			Message: fmt.Sprintf("needs_reauth: %s needs a new sign-in (%s); %s", b.url, ne.Reason, hint),
			Data:    data,
		}
	}
	var se *client.InsufficientScopeError
	if errors.As(err, &se) {
		hint := loginHint(b.url, b.dir, "--scope", shellQuote(oauth.FormatScope(union(se.Granted, se.Required))))
		data, _ := json.Marshal(bridgeReauthData{
			Reason: "insufficient_scope", Server: se.Server, Scopes: se.Granted, Required: se.Required,
			Login: strings.TrimPrefix(hint, "sign in again with: "),
		})
		return &jsonrpc.Error{
			Code:    codeNeedsReauth,
			Message: fmt.Sprintf("insufficient_scope: %s needs scopes the sign-in lacks (%s); %s", b.url, strings.Join(se.Required, " "), hint),
			Data:    data,
		}
	}
	var we *jsonrpc.Error
	if errors.As(err, &we) && we.Code != codeRejectedByTransport {
		return we // the server's own answer, from a 4xx
	}
	return &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: fmt.Sprintf("evergrant bridge: %s: %v", b.url, err)}
}

// bridgeProtocolRT adds the Mcp-Protocol-Version header that initialize
// negotiated to the requests the SDK's connection sends without it (the SDK
// learns the version only inside its own ClientSession).
type bridgeProtocolRT struct {
	base http.RoundTripper
	b    *bridge
}

func (p *bridgeProtocolRT) RoundTrip(req *http.Request) (*http.Response, error) {
	p.b.mu.Lock()
	v := p.b.version
	p.b.mu.Unlock()
	if v != "" && req.Header.Get(bridgeProtocolHeader) == "" {
		req = req.Clone(req.Context())
		req.Header.Set(bridgeProtocolHeader, v)
	}
	resp, err := p.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodPost {
		return resp, err
	}
	return p.b.keepSession(req, resp), nil
}

// bridgeErrorBodyMax bounds how much of a refused POST's body is read to
// tell a JSON-RPC error from a page.
const bridgeErrorBodyMax = 64 << 10

// keepSession makes a refusal of one POST fail only that message. The SDK's
// streamable client ends the whole connection on an error status whose body
// is not a JSON-RPC error (a proxy's 400 or 413 page, a 401 without
// error="invalid_token", which the Transport passes on, a 403 without a
// scope challenge), and with it every request in flight and the server
// session's state. Statuses the SDK treats itself are left alone: 2xx, 404
// (a lost session, which the bridge reopens) and the transient 429, 502,
// 503 and 504. For a request, keepSession answers with a JSON-RPC error for
// its id instead; for a notification or a response of the host, it answers
// 202 and logs what was refused.
func (b *bridge) keepSession(req *http.Request, resp *http.Response) *http.Response {
	switch c := resp.StatusCode; {
	case c/100 == 2, c == http.StatusNotFound, c == http.StatusTooManyRequests,
		c == http.StatusBadGateway, c == http.StatusServiceUnavailable, c == http.StatusGatewayTimeout:
		return resp
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, bridgeErrorBodyMax))
	resp.Body.Close()
	replace := func(status int, b []byte) *http.Response {
		r := *resp
		r.StatusCode, r.Status = status, fmt.Sprintf("%d %s", status, http.StatusText(status))
		r.Header = resp.Header.Clone()
		r.Header.Set("Content-Type", "application/json")
		r.Header.Del("Content-Length")
		r.ContentLength = int64(len(b))
		r.Body = io.NopCloser(bytes.NewReader(b))
		return &r
	}
	if m, err := jsonrpc.DecodeMessage(body); err == nil {
		if r, ok := m.(*jsonrpc.Response); ok && r.Error != nil {
			return replace(resp.StatusCode, body) // the server's own error: the SDK reads it
		}
	}
	var sent jsonrpc.Message
	if req.GetBody != nil {
		if rc, err := req.GetBody(); err == nil {
			raw, _ := io.ReadAll(io.LimitReader(rc, bridgeErrorBodyMax))
			rc.Close()
			sent, _ = jsonrpc.DecodeMessage(raw)
		}
	}
	what := fmt.Sprintf("the server answered %s%s", resp.Status, bridgeBodySnippet(resp.Header.Get("Content-Type"), body))
	if c := resp.StatusCode; c == http.StatusUnauthorized || c == http.StatusForbidden {
		what += "; if it needs a new sign-in: " + strings.TrimPrefix(b.hint, "sign in again with: ")
	}
	call, ok := sent.(*jsonrpc.Request)
	if !ok || !call.IsCall() {
		b.log.Warn("the server refused a message; the session goes on", "status", resp.StatusCode, "detail", what)
		return replace(http.StatusAccepted, nil)
	}
	out, err := jsonrpc.EncodeMessage(&jsonrpc.Response{ID: call.ID, Error: &jsonrpc.Error{
		Code: jsonrpc.CodeInternalError, Message: "evergrant bridge: " + b.url + ": " + what,
	}})
	if err != nil {
		return replace(resp.StatusCode, body)
	}
	return replace(resp.StatusCode, out)
}

// bridgeRetryAfter is the wait a Retry-After header asks for in seconds
// (RFC 9110 §10.2.3), clamped to bridgeStreamMaxDelay; 0 when absent or in
// another form.
func bridgeRetryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, bridgeStreamMaxDelay)
}

// bridgeBodySnippet is ": " and the start of a text body, for an error
// message, or "" for a body that is empty or not text.
func bridgeBodySnippet(contentType string, body []byte) string {
	if !strings.HasPrefix(contentType, "text/plain") && !strings.HasPrefix(contentType, "application/json") {
		return "" // an HTML page or worse: the status says enough
	}
	text := strings.Join(strings.Fields(strings.ToValidUTF8(string(body), "")), " ")
	text = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, text)
	if len(text) > 200 {
		text = strings.ToValidUTF8(text[:200], "") + "…"
	}
	if text == "" {
		return ""
	}
	return ": " + text
}

// standalone keeps the GET event stream of s open, forwarding what the
// server sends on it (its requests and notifications outside of a request),
// and reconnecting when it ends, until s ends.
func (b *bridge) standalone(s *bridgeSession) {
	var lastID string
	var delay time.Duration
	paused := false
	for {
		if delay > 0 {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, b.url, nil)
		if err != nil {
			return
		}
		req.Header.Set("Accept", "text/event-stream")
		if id := s.conn.SessionID(); id != "" {
			req.Header.Set(bridgeSessionHeader, id)
		}
		if lastID != "" {
			req.Header.Set(bridgeLastEventHeader, lastID)
		}
		resp, err := b.hc.Do(req)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if ne := b.needsReauth(err); ne != nil {
				if !paused {
					b.log.Warn("the server's event stream is paused until you sign in again", "reason", ne.Reason, "hint", b.hint)
					paused = true
				}
			} else {
				b.log.Info("the server's event stream failed; reconnecting", "error", err)
			}
			delay = bridgeNextDelay(delay)
			continue
		}
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		switch {
		case resp.StatusCode == http.StatusNotFound && s.conn.SessionID() != "":
			resp.Body.Close()
			b.endSession(s, fmt.Errorf("%w (GET answered 404)", mcp.ErrSessionMissing), true)
			return
		case resp.StatusCode == http.StatusMethodNotAllowed:
			resp.Body.Close()
			b.log.Debug("the server offers no event stream")
			return
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode/100 == 5:
			// An outage or a proxy's timeout: the stream is still wanted.
			resp.Body.Close()
			delay = bridgeNextDelay(delay)
			if ra := bridgeRetryAfter(resp.Header.Get("Retry-After")); ra > delay {
				delay = ra
			}
			b.log.Info("the server's event stream is unavailable; reconnecting", "status", resp.StatusCode, "delay", delay)
			continue
		case resp.StatusCode/100 != 2 || mt != "text/event-stream":
			resp.Body.Close()
			b.log.Warn("the server's event stream is not available; its requests and notifications outside of a request will be missed",
				"status", resp.StatusCode, "content_type", mt)
			return
		}
		if paused {
			b.log.Info("the server's event stream resumed")
			paused = false
		}
		b.log.Debug("event stream open")
		progress, retry := b.readStream(s, resp.Body, &lastID)
		resp.Body.Close()
		if s.ctx.Err() != nil {
			return
		}
		switch {
		case retry > 0:
			delay = retry
		case progress:
			delay = bridgeStreamMinDelay
		default:
			delay = bridgeNextDelay(delay)
		}
	}
}

func bridgeNextDelay(d time.Duration) time.Duration {
	if d < bridgeStreamMinDelay {
		return bridgeStreamMinDelay
	}
	return min(2*d, bridgeStreamMaxDelay)
}

// readStream reads server-sent events from body, forwarding the messages
// to the host, until the stream ends. It reports whether any message came
// and the reconnection delay the server asked for.
func (b *bridge) readStream(s *bridgeSession, body io.Reader, lastID *string) (progress bool, retry time.Duration) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), bridgeMaxMessage)
	var data bytes.Buffer
	hasData := false
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if line == "" { // dispatch
			if hasData && (event == "" || event == "message") {
				if msg, err := jsonrpc.DecodeMessage(data.Bytes()); err != nil {
					b.log.Warn("ignoring an event of the server that is not JSON-RPC", "error", err)
				} else {
					progress = true
					b.fromRemote(s, msg)
				}
			}
			data.Reset()
			hasData, event = false, ""
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if data.Len()+len(value)+1 > bridgeMaxMessage {
				// An event that never ends: drop the stream rather than memory.
				b.log.Warn("the server's event is larger than the limit; dropping the stream", "limit", bridgeMaxMessage)
				return progress, retry
			}
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "event":
			event = value
		case "id":
			*lastID = value
		case "retry":
			var ms int64
			if _, err := fmt.Sscan(value, &ms); err == nil && ms >= 0 {
				// Bounded: a server may not make the bridge spin or stop.
				retry = min(max(time.Duration(ms)*time.Millisecond, bridgeStreamMinDelay), bridgeStreamMaxDelay)
			}
		}
	}
	return progress, retry
}

// bridgeHostWriter writes messages to the host, one per line.
type bridgeHostWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (h *bridgeHostWriter) write(msg jsonrpc.Message) {
	data, err := jsonrpc.EncodeMessage(msg)
	if err != nil {
		return
	}
	h.writeRaw(data)
}

func (h *bridgeHostWriter) writeRaw(data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.w.Write(append(data, '\n'))
}
