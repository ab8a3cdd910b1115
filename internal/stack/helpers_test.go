package stack_test

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/stack"
)

// exchange is one POST to the MCP endpoint as the server saw it.
type exchange struct {
	body    []byte
	status  int
	wwwAuth string
}

// recorder wraps the stack's handler: it records POSTs to /mcp and counts
// grants at the token endpoint and visits to the authorization endpoint.
type recorder struct {
	h http.Handler

	mu            sync.Mutex
	ex            []exchange
	refreshes     int      // POST /token, grant_type=refresh_token
	codeGrants    int      // POST /token, grant_type=authorization_code
	authorizeGets int      // GET /authorize (interactive authorizations)
	refreshRes    []string // the resource parameter of each refresh grant
}

// statusWriter records status and WWW-Authenticate into the exchange as
// soon as the status is written (a streaming handler returns much later).
type statusWriter struct {
	http.ResponseWriter
	rec *recorder
	i   int
}

func (w *statusWriter) set(c int) {
	w.rec.mu.Lock()
	if e := &w.rec.ex[w.i]; e.status == 0 {
		e.status = c
		e.wwwAuth = w.Header().Get("WWW-Authenticate")
	}
	w.rec.mu.Unlock()
}

func (w *statusWriter) WriteHeader(c int) {
	w.set(c)
	w.ResponseWriter.WriteHeader(c)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.set(http.StatusOK)
	return w.ResponseWriter.Write(b)
}
func (w *statusWriter) Flush()                      { http.NewResponseController(w.ResponseWriter).Flush() }
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodPost && req.URL.Path == stack.MCPPath:
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		r.mu.Lock() // record in arrival order
		i := len(r.ex)
		r.ex = append(r.ex, exchange{body: body})
		r.mu.Unlock()
		r.h.ServeHTTP(&statusWriter{ResponseWriter: w, rec: r, i: i}, req)
		return
	case req.Method == http.MethodPost && req.URL.Path == authserver.PathToken:
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		r.mu.Lock()
		switch form.Get("grant_type") {
		case "refresh_token":
			r.refreshes++
			r.refreshRes = append(r.refreshRes, form.Get("resource"))
		case "authorization_code":
			r.codeGrants++
		}
		r.mu.Unlock()
	case req.Method == http.MethodGet && req.URL.Path == authserver.PathAuthorize:
		r.mu.Lock()
		r.authorizeGets++
		r.mu.Unlock()
	}
	r.h.ServeHTTP(w, req)
}

// recorderCounts is a snapshot of the recorder.
type recorderCounts struct {
	mcpPosts, refreshes, codeGrants, authorizeGets int
}

func (r *recorder) counts() recorderCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return recorderCounts{mcpPosts: len(r.ex), refreshes: r.refreshes, codeGrants: r.codeGrants, authorizeGets: r.authorizeGets}
}
