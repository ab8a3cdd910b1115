// Package bridge serves a remote MCP server (streamable HTTP) to a host on
// stdio: newline-delimited JSON-RPC on stdin and stdout, forwarded both
// ways, including the server's own requests and notifications on its event
// streams. It is what "evergrant bridge" runs (docs/design.md#cli).
//
// The HTTP requests go through the RoundTripper of Config, normally a
// *client.Transport on the stored grant, which refreshes silently
// (docs/design.md#client-rule-1). When a request fails because a new
// sign-in is needed (docs/design.md#client-rule-3), the host gets a
// JSON-RPC error with code CodeNeedsReauth that says how to sign in again,
// and the bridge goes on: the next request works once the user has signed
// in.
package bridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
)

const (
	// sendTimeout bounds forwarding one notification or response.
	sendTimeout = time.Minute
	// drainTimeout is how long the bridge waits, after stdin closes, for
	// the answers to requests still on their way.
	drainTimeout = 5 * time.Second
	// reinitTimeout bounds opening a new session with the server.
	reinitTimeout = 30 * time.Second
	// maxMessage bounds one message from the host or one event of the
	// server's stream, as the SDK's stdio transport does.
	maxMessage = mcp.DefaultMaxLineLength
	// Reconnection delays of the server's event stream (GET).
	streamMinDelay = time.Second
	streamMaxDelay = 30 * time.Second
)

// MCP names the bridge needs to know.
const (
	methodInitialize  = "initialize"
	methodInitialized = "notifications/initialized"
	methodCancelled   = "notifications/cancelled"
	methodListen      = "subscriptions/listen"
	headerSession     = "Mcp-Session-Id"
	headerProtocol    = "Mcp-Protocol-Version"
	headerLastEvent   = "Last-Event-ID"
	statelessProtocol = "2026-07-28" // SEP-2575: no initialize, no GET stream
	requestPrefix     = "evergrant-bridge-"
)

// Config configures a Bridge. URL is required.
type Config struct {
	// URL is the remote MCP server's streamable HTTP endpoint.
	URL string
	// Transport sends the HTTP requests to the server: normally a
	// *client.Transport, which attaches the grant's token and refreshes it.
	// Nil means http.DefaultTransport (no authorization).
	Transport http.RoundTripper
	// Logger receives the bridge's records (never token material); nil
	// discards them. The host's stdout carries only JSON-RPC.
	Logger *slog.Logger
	// LoginCommand returns the command a person runs to sign in again, for
	// the error the host gets when a new sign-in is needed (its message and
	// its data's "login") and for the logs. Nil means the errors say to
	// sign in again without naming a command.
	LoginCommand func(SignIn) string
}

// SignIn describes the new sign-in a request needs.
type SignIn struct {
	// NewClient is set when the authorization server no longer knows the
	// client registration (invalid_client), so the sign-in must register
	// the client again.
	NewClient bool
	// Scopes, when not empty, are the scopes the sign-in must ask for: the
	// ones granted and the ones the server asked for (insufficient_scope).
	Scopes []string
}

// Bridge forwards messages between a host on stdio and a remote MCP server.
// When the server forgets the session (it restarted, say), the bridge opens
// a new one, initializing it as the host did; a request the server refuses
// fails alone, with a JSON-RPC error that says why.
type Bridge struct {
	// The remote side is the official Go SDK's StreamableClientTransport
	// used as a bare mcp.Connection: Write POSTs a message (with the session
	// id the server assigned), Read returns what arrives on the POSTs'
	// answers (JSON or SSE). Two things the SDK does only for its own
	// ClientSession (through an unexported hook) the bridge does itself:
	// sending Mcp-Protocol-Version after initialize (protocolRT), and the
	// standalone GET event stream that carries the server's requests and
	// notifications outside of a request (standalone).

	url     string
	login   func(SignIn) string
	command string // login's command for a plain sign-in, or ""
	hint    string // "sign in again with: " and command
	log     *slog.Logger
	hc      *http.Client
	rec     *client.ReauthRecorder

	// set by Serve
	ctx    context.Context // the bridge's lifetime
	cancel context.CancelFunc
	host   *hostWriter

	sessMu sync.Mutex // serializes opening sessions

	mu       sync.Mutex
	served   bool
	sess     *session // the current session; nil or broken means open a new one
	nsess    int
	closing  bool
	pending  map[jsonrpc.ID]*pendingCall           // the host's requests without an answer yet
	waiters  map[jsonrpc.ID]chan *jsonrpc.Response // the bridge's own requests
	initReq  *jsonrpc.Request                      // the host's initialize, replayed on a new session
	initDone bool                                  // the host's initialize succeeded
	version  string                                // protocol version initialize negotiated
}

// New returns a Bridge for cfg. Run it with Serve.
func New(cfg Config) *Bridge {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b := &Bridge{
		url:     cfg.URL,
		login:   cfg.LoginCommand,
		log:     logger,
		pending: map[jsonrpc.ID]*pendingCall{},
		waiters: map[jsonrpc.ID]chan *jsonrpc.Response{},
	}
	b.command, b.hint = b.signInCommand(SignIn{}), b.signInHint(SignIn{})
	b.rec = client.NewReauthRecorder(cfg.Transport)
	b.hc = &http.Client{Transport: &protocolRT{base: b.rec, b: b}}
	return b
}

// Serve forwards the host's messages from stdin to the server and the
// server's messages to stdout, one per line, until stdin ends or ctx is
// done. When stdin ends, it waits briefly (5 s at most) for the answers to
// the host's pending requests. Then it ends the session with the server
// and returns: nil when stdin ended, ctx.Err() when ctx was done, or the
// error reading stdin (a line longer than the SDK's limit, 16 MiB). Serve
// may be called only once; a second call returns an error.
func (b *Bridge) Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	b.mu.Lock()
	if b.served {
		b.mu.Unlock()
		return errors.New("bridge: Serve called twice")
	}
	b.served = true
	b.ctx, b.cancel = context.WithCancel(ctx)
	b.host = &hostWriter{w: stdout}
	b.mu.Unlock()
	return b.run(ctx, stdin)
}

// run forwards until stdin closes or the context is done.
func (b *Bridge) run(parent context.Context, stdin io.Reader) error {
	defer b.cancel()
	b.log.Info("bridging stdio to the server")
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 0, 64<<10), maxMessage)
		for sc.Scan() {
			select {
			case lines <- bytes.Clone(sc.Bytes()):
			case <-b.ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
	}()
	var result error
loop:
	for {
		select {
		case <-b.ctx.Done():
			b.log.Info("interrupted")
			result = parent.Err()
			break loop
		case line := <-lines:
			b.fromHost(line)
		case err := <-readErr:
			if err != nil {
				b.log.Error("reading stdin", "error", err)
				result = fmt.Errorf("bridge: reading stdin: %w", err)
			} else {
				b.log.Info("stdin closed")
			}
			b.drain(drainTimeout)
			break loop
		}
	}
	b.shutdown()
	return result
}

// drain waits up to d for the answers to the host's pending requests.
func (b *Bridge) drain(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && b.ctx.Err() == nil {
		b.mu.Lock()
		n := 0
		for _, pc := range b.pending {
			if pc.method != methodListen {
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
func (b *Bridge) shutdown() {
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
func (b *Bridge) fromHost(line []byte) {
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
func (b *Bridge) forwardCall(req *jsonrpc.Request) {
	ctx, cancel := context.WithCancel(b.ctx)
	pc := &pendingCall{method: req.Method, cancel: cancel}
	b.mu.Lock()
	b.pending[req.ID] = pc
	if req.Method == methodInitialize {
		b.initReq = req
	}
	b.mu.Unlock()
	b.log.Debug("forwarding request", "method", req.Method, "id", req.ID.Raw())
	go func() {
		for attempt := 0; ; attempt++ {
			s, err := b.current()
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
					b.fail(req.ID, pc, errSessionEnded)
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

// forwardNotification sends a notification of the host to the server. It is
// sent before the next message of the host is read, so the server sees them
// in the host's order (notifications/initialized before the next request).
func (b *Bridge) forwardNotification(req *jsonrpc.Request) {
	b.log.Debug("forwarding notification", "method", req.Method)
	b.send(req, req.Method)
	if req.Method == methodCancelled {
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
func (b *Bridge) forwardResponse(resp *jsonrpc.Response) {
	b.log.Debug("forwarding response", "id", resp.ID.Raw())
	b.send(resp, "response")
}

// send forwards a message nobody waits an answer for; a failure is logged.
func (b *Bridge) send(msg jsonrpc.Message, what string) {
	var err error
	for attempt := 0; ; attempt++ {
		var s *session
		if s, err = b.current(); err != nil {
			break
		}
		ctx, cancel := context.WithTimeout(b.ctx, sendTimeout)
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

// fromRemote forwards one message of the server to the host.
func (b *Bridge) fromRemote(s *session, msg jsonrpc.Message) {
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
		if pc != nil && pc.method == methodInitialize && m.Error == nil {
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

// hostWriter writes messages to the host, one per line.
type hostWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (h *hostWriter) write(msg jsonrpc.Message) {
	data, err := jsonrpc.EncodeMessage(msg)
	if err != nil {
		return
	}
	h.writeRaw(data)
}

func (h *hostWriter) writeRaw(data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.w.Write(append(data, '\n'))
}
