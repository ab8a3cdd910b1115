package server

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// maxHeld bounds what a holder keeps back; past it, the response is
// released as it is.
const maxHeld = 1 << 20

// holder wraps the ResponseWriter of a POST to the MCP endpoint. It holds
// the status line and body back until it knows whether the first JSON-RPC
// message is a tool signal: then it answers 401 or 403 with the challenge
// and the JSON-RPC error as body; otherwise it releases what it held and
// gets out of the way. Server-to-client requests (elicitation, sampling)
// are released at once, or the call would deadlock; notifications are held
// at most HoldNotifications. Flushes are swallowed while holding, which also
// swallows the SDK's early flushes and priming events.
//
// Once released, it keeps watching: a signal that comes too late (after a
// progress event went out) stays in the stream, and the token is marked
// rejected so its next request gets 401.
type holder struct {
	w     http.ResponseWriter
	m     *middleware
	token string // hash
	ti    *TokenInfo

	mu       sync.Mutex
	state    int // holding, released, replaced, finished
	status   int
	buf      bytes.Buffer // held bytes
	scan     bytes.Buffer // SSE bytes not yet parsed into events
	timer    *time.Timer
	ctype    string
	finished bool
}

const (
	holding = iota
	released
	replaced
)

func newHolder(w http.ResponseWriter, m *middleware, tokenHash string, ti *TokenInfo) *holder {
	return &holder{w: w, m: m, token: tokenHash, ti: ti}
}

// Header implements http.ResponseWriter. Headers go to the real writer's
// map; they are sent only when the holder releases or replaces.
func (h *holder) Header() http.Header { return h.w.Header() }

// WriteHeader implements http.ResponseWriter.
func (h *holder) WriteHeader(code int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == holding {
		if h.status == 0 {
			h.status = code
		}
		return
	}
	if h.state == released && !h.finished {
		h.w.WriteHeader(code)
	}
}

// Write implements http.ResponseWriter.
func (h *holder) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.finished {
		return 0, http.ErrHandlerTimeout
	}
	switch h.state {
	case replaced:
		return len(p), nil
	case released:
		h.watch(p)
		return h.w.Write(p)
	}
	if h.status == 0 {
		h.status = http.StatusOK
	}
	if h.ctype == "" {
		h.ctype, _, _ = mime.ParseMediaType(h.w.Header().Get("Content-Type"))
	}
	h.buf.Write(p)
	switch {
	case h.status != http.StatusOK:
		h.releaseLocked()
	case h.ctype == "application/json":
		h.decideJSON()
	case h.ctype == "text/event-stream":
		h.scan.Write(p)
		h.decideSSE()
	default:
		h.releaseLocked()
	}
	if h.state == holding && h.buf.Len() > maxHeld {
		h.releaseLocked()
	}
	return len(p), nil
}

// Flush implements http.Flusher; it is swallowed while holding.
func (h *holder) Flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == released && !h.finished {
		http.NewResponseController(h.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (h *holder) Unwrap() http.ResponseWriter { return h.w }

// finish runs when the handler returns: whatever is still held goes out.
func (h *holder) finish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == holding {
		if h.ctype == "application/json" && h.buf.Len() > 0 {
			h.decideJSON()
		}
		if h.state == holding && (h.status != 0 || h.buf.Len() > 0) {
			h.releaseLocked()
		}
	}
	if h.timer != nil {
		h.timer.Stop()
	}
	h.finished = true
}

// rpcMessage is enough of a JSON-RPC message to classify it.
type rpcMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Error  *struct {
		Code int64           `json:"code"`
		Data json.RawMessage `json:"data"`
	} `json:"error"`
}

// signalOf returns the signal a message carries, if it is one.
func (h *holder) signalOf(data []byte) (*signalData, bool) {
	var msg rpcMessage
	if json.Unmarshal(data, &msg) != nil || msg.Error == nil || msg.Error.Code != signalCode {
		return nil, false
	}
	var sd signalData
	if json.Unmarshal(msg.Error.Data, &sd) != nil || (sd.Status != http.StatusUnauthorized && sd.Status != http.StatusForbidden) {
		return nil, false
	}
	return &sd, true
}

func (h *holder) decideJSON() {
	data := bytes.TrimSpace(h.buf.Bytes())
	if !json.Valid(data) {
		return // wait for the rest
	}
	if sd, ok := h.signalOf(data); ok {
		h.replace(sd, data)
		return
	}
	h.releaseLocked()
}

// decideSSE looks at complete events: priming events (no data) keep
// holding; the first data event decides.
func (h *holder) decideSSE() {
	for h.state == holding {
		data, ok := h.nextEvent()
		if !ok {
			return
		}
		if len(data) == 0 {
			continue // priming event or comment
		}
		if sd, ok := h.signalOf(data); ok {
			h.replace(sd, data)
			return
		}
		var msg rpcMessage
		json.Unmarshal(data, &msg)
		switch {
		case msg.Method != "" && len(msg.ID) > 0:
			// A server-to-client request: the client must see it now.
			h.releaseLocked()
		case msg.Method != "":
			// A notification: hold it briefly.
			if h.m.cfg.HoldNotifications < 0 {
				h.releaseLocked()
			} else if h.timer == nil {
				h.timer = time.AfterFunc(h.m.cfg.HoldNotifications, h.timeout)
			}
		default:
			h.releaseLocked() // the response itself, not a signal
		}
	}
}

// nextEvent parses one complete SSE event from scan and returns its data.
func (h *holder) nextEvent() ([]byte, bool) {
	b := h.scan.Bytes()
	end, sep := bytes.Index(b, []byte("\n\n")), 2
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 && (end < 0 || i < end) {
		end, sep = i, 4
	}
	if end < 0 {
		if h.scan.Len() > maxHeld {
			h.scan.Reset()
		}
		return nil, false
	}
	event := b[:end]
	var data [][]byte
	for _, line := range bytes.Split(event, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(v, []byte(" ")))
		}
	}
	h.scan.Next(end + sep)
	return bytes.Join(data, []byte("\n")), true
}

func (h *holder) timeout() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == holding && !h.finished {
		h.releaseLocked()
	}
}

// releaseLocked sends what was held and switches to pass-through.
func (h *holder) releaseLocked() {
	if h.state != holding || h.finished {
		return
	}
	h.state = released
	if h.timer != nil {
		h.timer.Stop()
	}
	if h.status == 0 {
		h.status = http.StatusOK
	}
	h.w.WriteHeader(h.status)
	if h.buf.Len() > 0 {
		h.w.Write(h.buf.Bytes())
	}
	h.buf.Reset()
	http.NewResponseController(h.w).Flush()
}

// replace answers with the signal's status and challenge, and the JSON-RPC
// error as body.
func (h *holder) replace(sd *signalData, msg []byte) {
	h.state = replaced
	if h.timer != nil {
		h.timer.Stop()
	}
	if sd.Status == http.StatusUnauthorized {
		h.m.reject(h.token, h.ti.Expiry)
	}
	h.m.log.Info("tool signalled", "status", sd.Status, "error", sd.Error)
	hdr := h.w.Header()
	hdr.Del("Content-Length")
	hdr.Del("Connection")
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	ch := oauth.BearerChallenge{Realm: h.m.cfg.Realm, Error: sd.Error, ErrorDescription: sd.ErrorDescription,
		Scope: oauth.ParseScope(sd.Scope), ResourceMetadata: h.m.metadata}
	hdr.Set("WWW-Authenticate", ch.String())
	hdr.Add("Access-Control-Expose-Headers", "WWW-Authenticate")
	h.w.WriteHeader(sd.Status)
	h.w.Write(msg)
	h.buf.Reset()
}

// watch looks for a signal in a released SSE stream: too late to change
// the status, but the token is marked rejected so its next request gets a
// 401 (docs/design.md#signal-rule-6).
func (h *holder) watch(p []byte) {
	if h.ctype != "text/event-stream" {
		return
	}
	h.scan.Write(p)
	for {
		data, ok := h.nextEvent()
		if !ok {
			return
		}
		if sd, ok := h.signalOf(data); ok && sd.Status == http.StatusUnauthorized {
			h.m.reject(h.token, h.ti.Expiry)
			h.m.log.Info("tool signalled after the response started; token marked rejected", "status", sd.Status)
		}
	}
}
