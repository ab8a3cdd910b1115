package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// session is one connection (MCP session) with the server.
type session struct {
	n      int
	conn   mcp.Connection
	ctx    context.Context // cancelled when the session ends
	cancel context.CancelFunc
	// guarded by Bridge.mu
	broken    bool
	streaming bool // the GET stream was started
}

// pendingCall is a request of the host the server has not answered.
type pendingCall struct {
	method string
	cancel context.CancelFunc
	// guarded by Bridge.mu
	sess    *session // the session it was sent on
	written bool     // the server accepted it
}

var errSessionEnded = errors.New("the session with the server ended")

// current returns the current session with the server, opening a new one
// (and initializing it again as the host did) when the last one ended.
func (b *Bridge) current() (*session, error) {
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
	s = &session{n: b.nsess, conn: conn}
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
func (b *Bridge) reinitialize(s *session, init *jsonrpc.Request) error {
	id, _ := jsonrpc.MakeID(fmt.Sprintf("%sinitialize-%d", requestPrefix, s.n))
	ch := make(chan *jsonrpc.Response, 1)
	b.mu.Lock()
	b.waiters[id] = ch
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.waiters, id)
		b.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(s.ctx, reinitTimeout)
	defer cancel()
	if err := s.conn.Write(ctx, &jsonrpc.Request{ID: id, Method: methodInitialize, Params: init.Params}); err != nil {
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
	if err := s.conn.Write(ctx, &jsonrpc.Request{Method: methodInitialized, Params: json.RawMessage(`{}`)}); err != nil {
		return err
	}
	b.log.Info("opened a new session with the server", "session", s.n)
	return nil
}

// initialized notes the result of an initialize on s, and reports whether
// to start the GET stream (once per session, and not with the stateless
// protocol, which has none). b.mu is held.
func (b *Bridge) initialized(s *session, result json.RawMessage) (stream bool) {
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	json.Unmarshal(result, &r)
	if r.ProtocolVersion != "" {
		b.version = r.ProtocolVersion
	}
	if s.streaming || r.ProtocolVersion >= statelessProtocol {
		return false
	}
	s.streaming = true
	return true
}

// readRemote forwards what the server sends on s to the host until s ends.
func (b *Bridge) readRemote(s *session) {
	for {
		msg, err := s.conn.Read(s.ctx)
		if err != nil {
			b.endSession(s, err, true)
			return
		}
		b.fromRemote(s, msg)
	}
}

// endSession ends s after err. The host's requests pending on it are
// answered with an error, and the next message of the host opens a new
// session.
func (b *Bridge) endSession(s *session, err error, logIt bool) {
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
		pc *pendingCall
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
		b.answerError(f.id, fmt.Errorf("%w: %w", errSessionEnded, err))
	}
}

// fail answers the host's request id with an error, unless it was answered
// already.
func (b *Bridge) fail(id jsonrpc.ID, pc *pendingCall, err error) {
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

// standalone keeps the GET event stream of s open, forwarding what the
// server sends on it (its requests and notifications outside of a request),
// and reconnecting when it ends, until s ends.
func (b *Bridge) standalone(s *session) {
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
			req.Header.Set(headerSession, id)
		}
		if lastID != "" {
			req.Header.Set(headerLastEvent, lastID)
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
			delay = nextDelay(delay)
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
			delay = nextDelay(delay)
			if ra := retryAfter(resp.Header.Get("Retry-After")); ra > delay {
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
			delay = streamMinDelay
		default:
			delay = nextDelay(delay)
		}
	}
}

// nextDelay is the reconnection delay after d: doubling, from
// streamMinDelay up to streamMaxDelay.
func nextDelay(d time.Duration) time.Duration {
	if d < streamMinDelay {
		return streamMinDelay
	}
	return min(2*d, streamMaxDelay)
}

// retryAfter is the wait a Retry-After header asks for in seconds
// (RFC 9110 §10.2.3), clamped to streamMaxDelay; 0 when absent or in
// another form.
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, streamMaxDelay)
}
