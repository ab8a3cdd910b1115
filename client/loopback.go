package client

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/evergrant/evergrant/internal/browser"
)

// LoopbackAuthorizer is the interactive Authorizer for people: it opens the
// authorization URL in the system browser and receives the redirect on a
// listener on 127.0.0.1 (RFC 8252 §7.3).
type LoopbackAuthorizer struct {
	// Open shows the authorization URL to the user; nil means opening the
	// system browser. The CLI's --no-browser prints it instead.
	Open func(authURL string) error

	ln       net.Listener
	redirect string
	srv      *http.Server
	mu       sync.Mutex
	waiting  map[string]chan url.Values // by state
	serving  bool                       // srv serves ln; guarded by mu
	closed   bool                       // Close was called; guarded by mu
}

// NewLoopbackAuthorizer listens on addr (for example "127.0.0.1:0" for a
// free port). Close releases the listener.
func NewLoopbackAuthorizer(addr string) (*LoopbackAuthorizer, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("loopback authorizer: %q is not a loopback IP address", host)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	a := &LoopbackAuthorizer{ln: ln, redirect: "http://" + ln.Addr().String() + "/callback", waiting: map[string]chan url.Values{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/callback", a.callback)
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

// RedirectURI implements Authorizer.
func (a *LoopbackAuthorizer) RedirectURI() string { return a.redirect }

// Close stops the listener, letting a response being written (the
// "Signed in" page) finish for up to two seconds. An Authorize after Close
// fails.
func (a *LoopbackAuthorizer) Close() error {
	a.mu.Lock()
	closed, serving := a.closed, a.serving
	a.closed = true
	a.mu.Unlock()
	if closed {
		return nil
	}
	if !serving {
		// Authorize never ran: the server never took the listener over.
		return a.ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		return a.srv.Close()
	}
	return nil
}

var callbackPage = template.Must(template.New("cb").Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>evergrant: {{.Title}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:30em;margin:4em auto;padding:0 1em}</style></head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p></body></html>`))

// signedInText is shown in the browser after a successful sign-in.
const signedInText = "evergrant received the authorization and keeps it renewed. You can close this window and go back to the terminal."

func (a *LoopbackAuthorizer) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	a.mu.Lock()
	ch, ok := a.waiting[q.Get("state")]
	if ok {
		delete(a.waiting, q.Get("state"))
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		callbackPage.Execute(w, map[string]string{"Title": "Unexpected sign-in response", "Text": "evergrant is not waiting for this sign-in. Start it again from the command line."})
		return
	}
	ch <- q
	if q.Get("error") != "" {
		callbackPage.Execute(w, map[string]string{"Title": "Sign-in was not completed", "Text": "The authorization server said: " + q.Get("error") + ". You can close this window."})
		return
	}
	callbackPage.Execute(w, map[string]string{"Title": "Signed in", "Text": signedInText})
}

// Authorize implements Authorizer: it shows authURL and waits for the
// redirect whose state matches the one in authURL.
func (a *LoopbackAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, errors.New("loopback authorizer: closed")
	}
	if !a.serving {
		a.serving = true
		go a.srv.Serve(a.ln)
	}
	a.mu.Unlock()
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	state := u.Query().Get("state")
	if state == "" {
		return nil, errors.New("authorization URL has no state")
	}
	ch := make(chan url.Values, 1)
	a.mu.Lock()
	a.waiting[state] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.waiting, state)
		a.mu.Unlock()
	}()
	open := a.Open
	if open == nil {
		open = browser.Open
	}
	if err := open(authURL); err != nil {
		return nil, fmt.Errorf("open the browser: %w", err)
	}
	select {
	case q := <-ch:
		return q, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
