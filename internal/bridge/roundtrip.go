package bridge

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// protocolRT adds the Mcp-Protocol-Version header that initialize
// negotiated to the requests the SDK's connection sends without it (the SDK
// learns the version only inside its own ClientSession), and keeps a
// refused POST from ending the session (keepSession).
type protocolRT struct {
	base http.RoundTripper
	b    *Bridge
}

func (p *protocolRT) RoundTrip(req *http.Request) (*http.Response, error) {
	p.b.mu.Lock()
	v := p.b.version
	p.b.mu.Unlock()
	if v != "" && req.Header.Get(headerProtocol) == "" {
		req = req.Clone(req.Context())
		req.Header.Set(headerProtocol, v)
	}
	resp, err := p.base.RoundTrip(req)
	if err != nil || req.Method != http.MethodPost {
		return resp, err
	}
	return p.b.keepSession(req, resp), nil
}

// errorBodyMax bounds how much of a refused POST's body is read to tell a
// JSON-RPC error from a page.
const errorBodyMax = 64 << 10

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
func (b *Bridge) keepSession(req *http.Request, resp *http.Response) *http.Response {
	switch c := resp.StatusCode; {
	case c/100 == 2, c == http.StatusNotFound, c == http.StatusTooManyRequests,
		c == http.StatusBadGateway, c == http.StatusServiceUnavailable, c == http.StatusGatewayTimeout:
		return resp
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyMax))
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
			raw, _ := io.ReadAll(io.LimitReader(rc, errorBodyMax))
			rc.Close()
			sent, _ = jsonrpc.DecodeMessage(raw)
		}
	}
	what := fmt.Sprintf("the server answered %s%s", resp.Status, bodySnippet(resp.Header.Get("Content-Type"), body))
	if c := resp.StatusCode; c == http.StatusUnauthorized || c == http.StatusForbidden {
		if b.command != "" {
			what += "; if it needs a new sign-in: " + b.command
		} else {
			what += "; it may need a new sign-in"
		}
	}
	sentReq, ok := sent.(*jsonrpc.Request)
	if !ok || !sentReq.IsCall() {
		b.log.Warn("the server refused a message; the session goes on", "status", resp.StatusCode, "detail", what)
		return replace(http.StatusAccepted, nil)
	}
	out, err := jsonrpc.EncodeMessage(&jsonrpc.Response{ID: sentReq.ID, Error: &jsonrpc.Error{
		Code: jsonrpc.CodeInternalError, Message: "evergrant bridge: " + b.url + ": " + what,
	}})
	if err != nil {
		return replace(resp.StatusCode, body)
	}
	return replace(resp.StatusCode, out)
}

// bodySnippet is ": " and the start of a text body, for an error message,
// or "" for a body that is empty or not text.
func bodySnippet(contentType string, body []byte) string {
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
