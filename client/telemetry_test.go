package client_test

// Telemetry without secrets (docs/design.md#client-rule-10): refreshes are
// logged with log/slog (grant id, outcome, latency, rotation) and never
// with token material; counters and hooks are available to the host, and
// a panicking hook is recovered.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/oauth"
	"github.com/evergrant/evergrant/store"
)

// lgBuffer is a concurrency-safe log sink.
type lgBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lgBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lgBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// records decodes the JSON records written so far.
func (b *lgBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func lgLogger(w *lgBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lgSecrets collects token material: every value the test must not find
// in logs or errors.
type lgSecrets struct {
	vals map[string]string // value -> what it is
}

func (s *lgSecrets) add(what, v string) {
	if len(v) < 8 {
		return // too short to search for meaningfully (none of ours are)
	}
	if s.vals == nil {
		s.vals = map[string]string{}
	}
	s.vals[v] = what
	// Parts that identify the secret on their own: a JWT's signature,
	// and the head of an opaque value.
	if parts := strings.Split(v, "."); len(parts) == 3 {
		s.vals[parts[2]] = what + " (signature)"
	} else if len(v) >= 24 {
		s.vals[v[:16]] = what + " (prefix)"
	}
}

// fromStack collects what the fixture saw: access tokens at the resource
// server, codes, verifiers, refresh tokens and secrets at the token
// endpoint.
func (s *lgSecrets) fromStack(st *fixture.Stack) {
	for _, r := range st.Requests() {
		s.add("access token", r.Token)
	}
	for _, r := range st.TokenRequests("") {
		s.add("authorization code", r.Form.Get("code"))
		s.add("code verifier", r.Form.Get("code_verifier"))
		s.add("refresh token", r.Form.Get("refresh_token"))
		s.add("client secret", r.Form.Get("client_secret"))
	}
}

// fromStore collects the tokens and secrets of every stored grant and of a
// registration.
func (s *lgSecrets) fromStore(t *testing.T, st store.Store, issuer, redirect string) {
	gs, err := st.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		s.add("access token", g.AccessToken)
		s.add("refresh token", g.RefreshToken)
		s.add("client secret", g.ClientSecret)
	}
	if reg, err := st.LoadRegistration(t.Context(), issuer, redirect); err == nil {
		s.add("client secret", reg.ClientSecret)
	}
}

// check reports every secret found in text.
func (s *lgSecrets) check(t *testing.T, where, text string) {
	t.Helper()
	for v, what := range s.vals {
		if strings.Contains(text, v) {
			t.Errorf("%s contains a %s", where, what)
		}
	}
}

// TestRule10_NoTokenMaterialInLogsAndCounters: two Transports (a public
// client, and a confidential one on a file store) go through sign-in,
// refresh, refusal and an unavailable token endpoint; their Stats, events
// and hooks agree with what the servers saw, the refresh records carry what
// a host needs, and no token, code, verifier or secret appears in a log, an
// event or an error (docs/design.md#client-rule-10).
func TestRule10_NoTokenMaterialInLogsAndCounters(t *testing.T) {
	var clientLog, asLog lgBuffer
	const preID, preSecret = "lg-confidential-client", "Zq7u-secret-5f8e2a9c71b04d36e1"
	st := fixture.New(t, fixture.Options{
		Logger: lgLogger(&asLog),
		Clients: []authserver.ClientConfig{{
			ID: preID, Secret: preSecret, AuthMethod: oauth.AuthMethodClientSecretPost,
			RedirectURIs: []string{"http://127.0.0.1/callback"},
		}},
	})
	var (
		mu      sync.Mutex
		events  []client.Event
		refresh []client.RefreshEvent
		reauth  []*client.NeedsReauthError
		errs    []error
	)
	cfg := func(s store.Store, extra func(*client.Config)) client.Config {
		c := client.Config{
			Store:      s,
			Authorizer: &client.HeadlessAuthorizer{},
			Logger:     lgLogger(&clientLog),
			OnEvent: func(e client.Event) {
				mu.Lock()
				events = append(events, e)
				mu.Unlock()
			},
			OnRefresh: func(e client.RefreshEvent) {
				mu.Lock()
				refresh = append(refresh, e)
				mu.Unlock()
			},
			OnNeedsReauth: func(e *client.NeedsReauthError) {
				mu.Lock()
				reauth = append(reauth, e)
				mu.Unlock()
			},
		}
		if extra != nil {
			extra(&c)
		}
		return c
	}
	call := func(hc *http.Client, id int) error {
		resp, data, err := ccPost(t.Context(), hc, st.URL, id)
		if err == nil {
			err = ccCheckEcho(resp, data, id)
		}
		if err != nil {
			errs = append(errs, err)
		}
		return err
	}
	expire := func() {
		st.Force(fixture.Forced{Status: http.StatusUnauthorized, Challenge: ccInvalidToken})
	}

	// A: a public client from dynamic registration.
	memA := new(store.Memory)
	a := client.NewTransport(cfg(memA, nil))
	ha := &http.Client{Transport: a}
	if err := a.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	if err := call(ha, 1); err != nil { // works
		t.Fatal(err)
	}
	expire()
	if err := call(ha, 2); err != nil { // refresh with rotation, retry
		t.Fatal(err)
	}
	st.Faults().RefuseRefresh(true)
	expire()
	err := call(ha, 3) // refresh refused: needs reauth
	if !errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("after a refused refresh: %v, want ErrNeedsReauth", err)
	}
	st.Faults().RefuseRefresh(false)
	// The grant stays refused until a new sign-in, which no request
	// starts by itself (docs/design.md#client-rule-3): sign in.
	if err := a.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	if err := call(ha, 4); err != nil { // the new grant works
		t.Fatal(err)
	}
	st.Faults().FailTokenEndpoint(http.StatusServiceUnavailable)
	expire()
	err = call(ha, 5) // refresh unavailable
	if !errors.Is(err, client.ErrRefreshUnavailable) {
		t.Fatalf("with the token endpoint failing: %v, want ErrRefreshUnavailable", err)
	}
	st.Faults().FailTokenEndpoint(0)

	// The counters of A add up, and match what the servers saw.
	regID := ""
	if g, _ := a.Grant(t.Context(), st.URL); g != nil {
		regID = g.ClientID
	}
	var aRefreshes int64
	for _, r := range st.TokenRequests(oauth.GrantTypeRefreshToken) {
		if r.Form.Get("client_id") == regID {
			aRefreshes++
		}
	}
	want := client.Stats{Requests: 5, Unauthorized: 3, Refreshes: 3, RefreshFailure: 2, Retries: 1, NeedsReauth: 1, Authorizations: 2}
	sa := a.Stats()
	if sa != want {
		t.Errorf("A's Stats = %+v, want %+v", sa, want)
	}
	if sa.Refreshes != aRefreshes || int(sa.Unauthorized) != st.Unauthorized() {
		t.Errorf("A's Stats = %+v; the token endpoint saw %d refreshes from A, the resource server answered 401 %d times", sa, aRefreshes, st.Unauthorized())
	}
	mu.Lock()
	kinds := map[client.EventKind]int64{}
	for _, e := range events {
		kinds[e.Kind]++
	}
	outcomes := map[client.Outcome]int64{}
	for _, e := range refresh {
		outcomes[e.Outcome]++
	}
	nReauth := len(reauth)
	mu.Unlock()
	if kinds[client.EventRefresh] != sa.Refreshes || kinds[client.EventRetry] != sa.Retries ||
		kinds[client.EventUnauthorized] != sa.Unauthorized || kinds[client.EventNeedsReauth] != sa.NeedsReauth ||
		kinds[client.EventAuthorize] != sa.Authorizations {
		t.Errorf("events %v do not match Stats %+v", kinds, sa)
	}
	if outcomes["ok"] != sa.Refreshes-sa.RefreshFailure || outcomes["rejected"]+outcomes["unavailable"] != sa.RefreshFailure {
		t.Errorf("refresh outcomes %v do not match Stats %+v", outcomes, sa)
	}
	if int64(nReauth) != sa.NeedsReauth {
		t.Errorf("OnNeedsReauth fired %d times, Stats.NeedsReauth = %d", nReauth, sa.NeedsReauth)
	}

	// B: a pre-registered confidential client (client_secret_post), on a
	// file store.
	fs, err := store.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := client.NewTransport(cfg(fs, func(c *client.Config) {
		c.ClientID, c.ClientSecret, c.ClientAuthMethod = preID, preSecret, oauth.AuthMethodClientSecretPost
	}))
	hb := &http.Client{Transport: b}
	if err := b.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	expire()
	if err := call(hb, 6); err != nil {
		t.Fatal(err)
	}
	st.Faults().RefuseRefresh(true)
	expire()
	if err := call(hb, 7); !errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("B after a refused refresh: %v, want ErrNeedsReauth", err)
	}
	st.Faults().RefuseRefresh(false)
	if s := b.Stats(); s.Refreshes != 2 || s.RefreshFailure != 1 || s.NeedsReauth != 1 || s.Authorizations != 1 {
		t.Errorf("B's Stats = %+v", s)
	}

	// The secrets.
	var sec lgSecrets
	sec.fromStack(st)
	sec.fromStore(t, memA, st.Issuer, "http://127.0.0.1/callback")
	sec.fromStore(t, fs, st.Issuer, "http://127.0.0.1/callback")
	sec.add("client secret", preSecret)
	kindsFound := map[string]bool{}
	for _, what := range sec.vals {
		kindsFound[strings.TrimSuffix(strings.TrimSuffix(what, " (signature)"), " (prefix)")] = true
	}
	for _, k := range []string{"access token", "refresh token", "authorization code", "code verifier", "client secret"} {
		if !kindsFound[k] {
			t.Errorf("test setup: no %s collected", k)
		}
	}

	sec.check(t, "the client's log", clientLog.String())
	sec.check(t, "the authorization server's log", asLog.String())
	for _, err := range errs {
		sec.check(t, fmt.Sprintf("error %q", err), err.Error())
	}
	mu.Lock()
	for _, e := range events {
		sec.check(t, fmt.Sprintf("%s event", e.Kind), fmt.Sprintf("%+v %+v", e, e.Refresh))
	}
	for _, e := range reauth {
		sec.check(t, "a NeedsReauthError", fmt.Sprintf("%+v %v", *e, e))
	}
	mu.Unlock()

	// The refresh records carry what a host needs.
	var n int
	for _, r := range clientLog.records(t) {
		if r["msg"] != "refresh" {
			continue
		}
		n++
		for _, k := range []string{"grant_id", "outcome", "latency", "rotated"} {
			if _, ok := r[k]; !ok {
				t.Errorf("refresh record %v has no %s", r, k)
			}
		}
		if id, _ := r["grant_id"].(string); id == "" || strings.Contains(st.URL, id) {
			t.Errorf("refresh record grant_id %q", id)
		}
		if r["outcome"] == "ok" && r["rotated"] != true {
			t.Errorf("refresh record %v: the fixture rotates refresh tokens, want rotated true", r)
		}
	}
	if want := int(sa.Refreshes + b.Stats().Refreshes); n != want {
		t.Errorf("%d refresh records, want %d", n, want)
	}
	if testing.Verbose() {
		t.Logf("client log:\n%s\nauthorization server log:\n%s", clientLog.String(), asLog.String())
	}
}

// TestRule10_PanickingHooksAreRecovered: a panic in a hook is recovered and
// logged, without token material, and the request is answered
// (docs/design.md#client-rule-10 and the hook contract of
// Config.OnRefresh).
func TestRule10_PanickingHooksAreRecovered(t *testing.T) {
	var logs lgBuffer
	r := newRig(t, fixture.Options{}, client.Config{})
	// A transport whose hooks all panic (newRig's OnNeedsReauth only
	// counts).
	r.tr = client.NewTransport(client.Config{Store: r.store, RefreshMargin: -1, Logger: lgLogger(&logs),
		OnRefresh:     func(client.RefreshEvent) { panic("refresh hook") },
		OnEvent:       func(client.Event) { panic("event hook") },
		OnNeedsReauth: func(*client.NeedsReauthError) { r.hooks.Add(1); panic("needs-reauth hook") },
	})
	r.hc = &http.Client{Transport: r.tr}
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if resp, _, err := r.call(http.MethodPost, 1); err != nil || resp.StatusCode != 200 {
		t.Fatalf("call 1: %v", err)
	}
	r.st.Faults().RefuseRefresh(true)
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	if _, _, err := r.call(http.MethodPost, 2); !errors.Is(err, client.ErrNeedsReauth) {
		t.Fatalf("call 2: %v, want needs_reauth", err)
	}
	if r.hooks.Load() != 1 {
		t.Fatalf("OnNeedsReauth ran %d times, want 1", r.hooks.Load())
	}
	seen := map[string]bool{}
	for _, rec := range logs.records(t) {
		if rec["msg"] == "hook panicked" {
			seen[rec["hook"].(string)] = true
		}
	}
	for _, h := range []string{"OnRefresh", "OnNeedsReauth", "OnEvent"} {
		if !seen[h] {
			t.Errorf("no log record of the panic in %s", h)
		}
	}
	var sec lgSecrets
	sec.fromStack(r.st)
	sec.fromStore(t, r.store, r.st.Issuer, "http://127.0.0.1/callback")
	sec.check(t, "the log", logs.String())
}
