package client_test

// DESIGN §3.1 rule 7 (one refresh per grant, in one process) and rule 9
// (bodies that cannot be replayed are not retried).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

// ccInvalidToken is the challenge of an expired or revoked access token.
const ccInvalidToken = `Bearer error="invalid_token", error_description="the access token expired"`

// ccRoundTripFunc adapts a function to http.RoundTripper.
type ccRoundTripFunc func(*http.Request) (*http.Response, error)

func (f ccRoundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

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
	case <-time.After(10 * time.Second):
	}
}

func TestRule7_FiftyConcurrentRequestsOneRefresh(t *testing.T) {
	const n = 50
	gate := ccNewGate(n)
	var old atomic.Value // the access token before the expiry
	old.Store("")
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil && r.URL.Path == "/mcp" && r.Header.Get("Authorization") == "Bearer "+old.Load().(string) {
			// Every request with the old token has got its 401 before any
			// of them refreshes.
			gate.wait()
		}
		return resp, err
	})
	var events atomic.Int32
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{
		Base:      base,
		OnRefresh: func(client.RefreshEvent) { events.Add(1) },
	})
	hc := &http.Client{Transport: tr}
	tok := ccAccessToken(t, tr, st)
	old.Store(tok)
	ccForceOld(st, tok)

	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			id := 1000 + i
			resp, data, err := ccPost(t.Context(), hc, st.URL, id)
			if err == nil {
				err = ccCheckEcho(resp, data, id)
			}
			if err != nil {
				errs <- fmt.Errorf("request %d: %w", id, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if got := int(gate.arrived.Load()); got != n {
		t.Errorf("%d requests got a 401 for the old token, want %d", got, n)
	}
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refresh grants at the token endpoint = %d, want 1", got)
	}
	if s := tr.Stats(); s.Refreshes != 1 || s.RefreshFailure != 0 || s.Retries != n || s.Unauthorized != n || s.Requests != n {
		t.Errorf("Stats = %+v, want 1 refresh, %d retries, %d unauthorized, %d requests", s, n, n, n)
	}
	if got := events.Load(); got != 1 {
		t.Errorf("OnRefresh called %d times, want 1", got)
	}
	newTok := ccAccessToken(t, tr, st)
	if newTok == tok {
		t.Fatal("the stored access token did not change")
	}
	// Every request was sent twice, with the same body: once with the old
	// token (401), once with the new one (200).
	sent := map[string][]fixture.Request{}
	for _, r := range st.Requests() {
		sent[string(r.Body)] = append(sent[string(r.Body)], r)
	}
	if len(sent) != n {
		t.Errorf("%d distinct bodies reached the server, want %d", len(sent), n)
	}
	for body, rs := range sent {
		if len(rs) != 2 || rs[0].Token != tok || rs[0].Status != 401 || rs[1].Token != newTok || rs[1].Status != 200 {
			var got []string
			for _, r := range rs {
				got = append(got, fmt.Sprintf("%s/%d", fixture.TokenHash(r.Token), r.Status))
			}
			t.Errorf("body %s: sent as %v, want [old/401 new/200] (old %s, new %s)", body, got, fixture.TokenHash(tok), fixture.TokenHash(newTok))
		}
	}
}

// TestRule7_LateUnauthorizedForReplacedTokenSendsNoRefresh: a request
// whose token is older than the grant's current one retries with the
// current token, without a new refresh grant.
func TestRule7_LateUnauthorizedForReplacedTokenSendsNoRefresh(t *testing.T) {
	t.Run("same transport", func(t *testing.T) {
		held := make(chan struct{})
		release := make(chan struct{})
		var old atomic.Value
		old.Store("")
		base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := http.DefaultTransport.RoundTrip(r)
			if err == nil && r.Header.Get("X-CC-Hold") != "" && r.Header.Get("Authorization") == "Bearer "+old.Load().(string) {
				close(held)
				<-release // the 401 arrives after another request refreshed
			}
			return resp, err
		})
		st, tr := ccAuthorize(t, fixture.Options{}, client.Config{Base: base})
		hc := &http.Client{Transport: tr}
		tok := ccAccessToken(t, tr, st)
		old.Store(tok)
		ccForceOld(st, tok)

		late := make(chan error, 1)
		go func() {
			resp, data, err := ccPost(t.Context(), hc, st.URL, 1, "X-CC-Hold", "1")
			if err == nil {
				err = ccCheckEcho(resp, data, 1)
			}
			late <- err
		}()
		<-held
		resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := ccCheckEcho(resp, data, 2); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Fatalf("refreshes after the first 401 = %d, want 1", got)
		}
		close(release)
		if err := <-late; err != nil {
			t.Fatalf("late request: %v", err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Errorf("refreshes after the late 401 = %d, want 1", got)
		}
		newTok := ccAccessToken(t, tr, st)
		reqs := st.Requests()
		last := reqs[len(reqs)-1]
		if !bytes.Equal(last.Body, []byte(ccBody(1))) || last.Token != newTok || last.Status != 200 {
			t.Errorf("the late request was retried as %s with token %s (status %d), want %s with the current token %s",
				last.Body, fixture.TokenHash(last.Token), last.Status, ccBody(1), fixture.TokenHash(newTok))
		}
	})

	t.Run("two transports sharing a store", func(t *testing.T) {
		mem := new(store.Memory)
		st, a := ccAuthorize(t, fixture.Options{}, client.Config{Store: mem})
		b := client.NewTransport(client.Config{Store: mem})
		ha, hb := &http.Client{Transport: a}, &http.Client{Transport: b}
		// B sends once, so it has the old token in hand.
		if resp, data, err := ccPost(t.Context(), hb, st.URL, 1); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 1); err != nil {
			t.Fatal(err)
		}
		tok := ccAccessToken(t, a, st)
		ccForceOld(st, tok)

		if resp, data, err := ccPost(t.Context(), ha, st.URL, 2); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 2); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Fatalf("refreshes after A's 401 = %d, want 1", got)
		}
		if resp, data, err := ccPost(t.Context(), hb, st.URL, 3); err != nil {
			t.Fatal(err)
		} else if err := ccCheckEcho(resp, data, 3); err != nil {
			t.Fatal(err)
		}
		if got := st.Refreshes(); got != 1 {
			t.Errorf("refreshes after B's late 401 = %d, want 1", got)
		}
		newTok := ccAccessToken(t, a, st)
		reqs := st.Requests()
		if n := len(reqs); n < 2 || reqs[n-2].Token != tok || reqs[n-2].Status != 401 || reqs[n-1].Token != newTok || reqs[n-1].Status != 200 {
			var got []string
			for _, r := range reqs {
				got = append(got, fmt.Sprintf("%s/%d", fixture.TokenHash(r.Token), r.Status))
			}
			t.Errorf("requests %v: want B's last two with the old token %s/401, then A's token %s/200", got, fixture.TokenHash(tok), fixture.TokenHash(newTok))
		}
		if s := b.Stats(); s.Refreshes != 0 || s.Retries != 1 || s.Unauthorized != 1 {
			t.Errorf("B's Stats = %+v, want 0 refreshes, 1 retry, 1 unauthorized", s)
		}
	})
}

// TestRule7_CallerCancelDoesNotCancelRefresh: a caller that gives up while
// the refresh is in flight gets its context's error, but the refresh runs
// to the end and its result is saved and used.
func TestRule7_CallerCancelDoesNotCancelRefresh(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var armed atomic.Bool
	base := ccRoundTripFunc(func(r *http.Request) (*http.Response, error) {
		if armed.Load() && strings.HasSuffix(r.URL.Path, "/token") {
			// The refresh is on its way: the caller gives up 100ms in.
			time.AfterFunc(100*time.Millisecond, cancel)
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	refreshed := make(chan client.RefreshEvent, 4)
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{
		Base:      base,
		OnRefresh: func(ev client.RefreshEvent) { refreshed <- ev },
	})
	hc := &http.Client{Transport: tr}
	tok := ccAccessToken(t, tr, st)
	ccForceOld(st, tok)
	st.Faults().DelayToken(500 * time.Millisecond)
	armed.Store(true)

	_, _, err := ccPost(ctx, hc, st.URL, 1)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	armed.Store(false)

	select {
	case ev := <-refreshed:
		if ev.Outcome != "ok" || ev.Proactive {
			t.Fatalf("refresh event = %+v, want outcome ok after a 401", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the refresh did not complete after the caller cancelled")
	}
	st.Faults().DelayToken(0)

	// The refresh was saved to the store before anyone could use it.
	saved := ccAccessToken(t, tr, st)
	if saved == "" || saved == tok {
		t.Fatalf("the store holds %s, want a new access token (old %s)", fixture.TokenHash(saved), fixture.TokenHash(tok))
	}
	if got := st.Refreshes(); got != 1 {
		t.Fatalf("refreshes = %d, want 1", got)
	}
	reqs := st.TokenRequests("refresh_token")
	if reqs[0].Status != http.StatusOK {
		t.Errorf("the refresh grant got status %d, want 200", reqs[0].Status)
	}

	resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 2); err != nil {
		t.Fatal(err)
	}
	if got := st.Refreshes(); got != 1 {
		t.Errorf("refreshes after the next request = %d, want 1", got)
	}
	all := st.Requests()
	if last := all[len(all)-1]; last.Token != saved || last.Status != 200 {
		t.Errorf("next request sent token %s (status %d), want the refreshed %s", fixture.TokenHash(last.Token), last.Status, fixture.TokenHash(saved))
	}
}

// ccReader hides its reader's type, so http.NewRequest sets no GetBody and
// no ContentLength: a body the Transport can only replay by buffering.
type ccReader struct{ r io.Reader }

func (c *ccReader) Read(p []byte) (int, error) { return c.r.Read(p) }

// ccPaddedBody is a JSON-RPC request of exactly size bytes.
func ccPaddedBody(t *testing.T, id, size int) []byte {
	t.Helper()
	head := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"pad":"`, id)
	tail := `"}}`
	n := size - len(head) - len(tail)
	if n < 0 {
		t.Fatalf("size %d too small", size)
	}
	return []byte(head + strings.Repeat("x", n) + tail)
}

// TestRule9_BodyWithoutGetBody: a body without GetBody is buffered up to
// MaxBufferedBody and retried byte-identically; a larger one is sent once
// and the 401 comes back as the response.
func TestRule9_BodyWithoutGetBody(t *testing.T) {
	const limit = 1024
	for _, tc := range []struct {
		name    string
		size    int
		retried bool
	}{
		{"small body is buffered and retried", 200, true},
		{"body of exactly MaxBufferedBody is retried", limit, true},
		{"larger body is not retried", limit + 1, false},
		{"much larger body is not retried", 8 * limit, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, tr := ccAuthorize(t, fixture.Options{}, client.Config{MaxBufferedBody: limit})
			tok := ccAccessToken(t, tr, st)
			body := ccPaddedBody(t, 42, tc.size)
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, st.URL, &ccReader{bytes.NewReader(body)})
			if err != nil {
				t.Fatal(err)
			}
			if req.GetBody != nil {
				t.Fatal("test setup: the request has GetBody")
			}
			req.Header.Set("Content-Type", "application/json")
			st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			reqs := st.Requests()
			if tc.retried {
				if err := ccCheckEcho(resp, data, 42); err != nil {
					t.Fatal(err)
				}
				if st.Refreshes() != 1 || len(reqs) != 2 {
					t.Fatalf("refreshes %d, requests %d; want 1 and 2", st.Refreshes(), len(reqs))
				}
				for i, r := range reqs {
					if !bytes.Equal(r.Body, body) {
						t.Errorf("attempt %d sent %d bytes that differ from the %d of the request", i+1, len(r.Body), len(body))
					}
				}
				if reqs[0].Token != tok || reqs[1].Token == tok || reqs[1].Status != 200 {
					t.Errorf("attempts sent tokens %s, %s; want the old then a new one", fixture.TokenHash(reqs[0].Token), fixture.TokenHash(reqs[1].Token))
				}
				return
			}
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d, want the 401 as it came", resp.StatusCode)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != ccInvalidToken {
				t.Errorf("WWW-Authenticate = %q, want %q", got, ccInvalidToken)
			}
			if st.Refreshes() != 0 || len(reqs) != 1 {
				t.Errorf("refreshes %d, requests %d; want 0 and 1", st.Refreshes(), len(reqs))
			}
			if len(reqs) > 0 && !bytes.Equal(reqs[0].Body, body) {
				t.Errorf("the server got %d bytes that differ from the %d of the request", len(reqs[0].Body), len(body))
			}
			if s := tr.Stats(); s.Retries != 0 || s.Refreshes != 0 || s.Unauthorized != 1 {
				t.Errorf("Stats = %+v, want no retry, no refresh, 1 unauthorized", s)
			}
		})
	}
}

// TestRule7_RefreshHasItsOwnTimeout: a refresh that takes longer than
// RefreshTimeout fails as unavailable (rule 4: the refresh token is kept),
// even for a caller with no deadline, and a later request refreshes with
// the kept token.
func TestRule7_RefreshHasItsOwnTimeout(t *testing.T) {
	st, tr := ccAuthorize(t, fixture.Options{}, client.Config{RefreshTimeout: 200 * time.Millisecond})
	hc := &http.Client{Transport: tr}
	before, err := tr.Grant(t.Context(), st.URL)
	if err != nil {
		t.Fatal(err)
	}
	st.Faults().DelayToken(5 * time.Second)
	st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
	_, _, err = ccPost(context.Background(), hc, st.URL, 1)
	var ue *client.RefreshUnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow refresh: %v, want a RefreshUnavailableError caused by the refresh's deadline", err)
	}
	after, _ := tr.Grant(t.Context(), st.URL)
	if after.RefreshToken != before.RefreshToken || after.AccessToken != before.AccessToken {
		t.Fatal("the grant changed after a refresh that timed out")
	}
	st.Faults().DelayToken(0)
	st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
	resp, data, err := ccPost(t.Context(), hc, st.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ccCheckEcho(resp, data, 2); err != nil {
		t.Fatal(err)
	}
	if s := tr.Stats(); s.Refreshes != 2 || s.RefreshFailure != 1 || s.NeedsReauth != 0 {
		t.Errorf("Stats = %+v, want 2 refreshes, 1 failure, no needs-reauth", s)
	}
}
