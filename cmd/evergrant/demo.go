package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/stack"
	"github.com/evergrant/evergrant/server"
)

// The demo's lifetimes. The clock jumps, so they can be realistic.
const (
	demoAccessTTL      = 5 * time.Minute
	demoRefreshTTL     = 24 * time.Hour
	demoUpstreamMaxAge = 2 * time.Minute
	demoBurst          = 20
	demoSubject        = "demo-user"
	// demoTimeout bounds the whole demo (real time), well under the 30 s
	// promised; it normally takes a fraction of a second.
	demoTimeout = 25 * time.Second
	// demoCallTimeout bounds one MCP call.
	demoCallTimeout = 10 * time.Second
)

// pastAccessTTL is how far the clock jumps to expire an access token: its
// lifetime plus the verifier's clock-skew leeway, plus a second.
const pastAccessTTL = demoAccessTTL + server.DefaultLeeway + time.Second

const demoUsage = `Usage: evergrant demo [flags]

Plays the whole refresh story on this machine in a few seconds, with nothing
to configure. It starts, on a free loopback port, the authorization server, an
MCP server (tools whoami and upstream_search) and a fake upstream API, and
runs a client (evergrant's Transport under the official Go MCP SDK) through:

  1 sign in      the first call has no grant: the client signs in (PKCE,
                 auto-approved)
  2 expiry       the access token expires: 401 invalid_token, one silent
                 refresh, the call is retried and succeeds
  3 upstream     the upstream API rejects the token: upstream_search answers
                 401, the client refreshes and retries with the same JSON-RPC id
  4 burst        20 concurrent calls over an expired token: exactly one refresh
  5 revoked      the grant is revoked at the authorization server: the call
                 ends in needs_reauth, which the host reports with the command
                 to sign in again

Nothing waits: the servers and the client share a clock that the demo moves
forward. The timeline on stdout has one line per event (demo clock, act,
request with its JSON-RPC method and id, each 401 with its WWW-Authenticate
challenge, each refresh and whether it rotated the refresh token, each retry,
the needs_reauth), then a summary. No token is ever printed.

--json prints one JSON object instead: requests, unauthorized, refreshes,
retries and needs_reauth (the client's counters), failed (calls and background
requests that failed, other than the planned needs_reauth), burst {calls,
refreshes, failed}, upstream_signal, and each act with ok and its counters.

Exit status: 0 when the story went as planned, 1 otherwise (the reason on
stderr), 2 for a usage error.

Flags:
`

// runDemo is `evergrant demo`: it plays the refresh story (see demoUsage)
// and prints its timeline and summary, or --json.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	jsonOut := fs.Bool("json", false, "print one JSON object with the summary instead of the timeline")
	verbose := fs.Bool("verbose", false, "also show the authorization server requests, the session's close, and every line of the burst")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), demoUsage)
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	d := &demo{verbose: *verbose, clk: newDemoClock(), actRefreshes: map[int][]client.RefreshEvent{}}
	if !*jsonOut {
		d.out = stdout
	}
	rep, err := d.run(ctx, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "evergrant demo: %s\n", redact(err.Error()))
		return exitError
	}
	if *jsonOut {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			fmt.Fprintf(stderr, "evergrant demo: %v\n", err)
			return exitError
		}
		stdout.Write(append([]byte(redact(string(b))), '\n'))
	} else {
		d.printSummary(stdout, rep)
	}
	if !rep.OK {
		for _, p := range rep.Problems {
			fmt.Fprintf(stderr, "evergrant demo: %s\n", p)
		}
		fmt.Fprintln(stderr, "evergrant demo: the story did not go as planned")
		return exitError
	}
	return exitOK
}

// demoReport is the summary, and the --json output.
type demoReport struct {
	OK      bool   `json:"ok"`
	MCPURL  string `json:"mcp_url"`
	Issuer  string `json:"issuer"`
	Elapsed string `json:"elapsed"`
	// ClockAdvanced is how far the demo moved the shared clock.
	ClockAdvanced string `json:"clock_advanced"`

	// The client's counters (client.Stats) from the first request to the
	// end of act 5.
	Requests        int64 `json:"requests"`
	Unauthorized    int64 `json:"unauthorized"`
	Refreshes       int64 `json:"refreshes"`
	Rotated         int64 `json:"rotated"`
	RefreshFailures int64 `json:"refresh_failures"`
	Retries         int64 `json:"retries"`
	NeedsReauth     int64 `json:"needs_reauth"`
	Authorizations  int64 `json:"authorizations"`
	// Failed counts the calls (connect, tools/call) that did not succeed,
	// other than the planned needs_reauth of act 5, and the background
	// requests (event stream, notifications) that failed.
	Failed int `json:"failed"`

	Burst          demoBurstReport     `json:"burst"`
	UpstreamSignal *demoSignalReport   `json:"upstream_signal,omitempty"`
	NeedsReauthErr *demoReauthReport   `json:"needs_reauth_error,omitempty"`
	Acts           []*demoActReport    `json:"acts"`
	Problems       []string            `json:"problems,omitempty"`
	Lifetimes      demoLifetimesReport `json:"lifetimes"`
}

type demoLifetimesReport struct {
	AccessToken    string `json:"access"`
	RefreshToken   string `json:"refresh"`
	UpstreamMaxAge string `json:"upstream_max_age"`
}

type demoBurstReport struct {
	Calls        int   `json:"calls"`
	Refreshes    int64 `json:"refreshes"`
	Failed       int   `json:"failed"`
	Unauthorized int64 `json:"unauthorized"`
	Retries      int64 `json:"retries"`
}

// demoSignalReport is what the MCP server saw of the upstream-signalled
// call (act 3): the POSTs with the call's JSON-RPC id.
type demoSignalReport struct {
	Tool          string          `json:"tool"`
	ID            json.RawMessage `json:"id,omitempty"`
	Statuses      []int           `json:"statuses"`
	Challenge     string          `json:"challenge,omitempty"`
	IDPreserved   bool            `json:"id_preserved"`
	BodyIdentical bool            `json:"body_identical"`
}

type demoReauthReport struct {
	Reason    string `json:"reason"`
	ErrorCode string `json:"error_code,omitempty"`
	Hint      string `json:"hint"`
}

type demoActReport struct {
	Act  int    `json:"act"`
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// ClockAtStart is the demo clock when the act began.
	ClockAtStart string `json:"clock_at_start"`
	Detail       string `json:"detail,omitempty"`
	Error        string `json:"error,omitempty"`
	Requests     int64  `json:"requests"`
	Unauthorized int64  `json:"unauthorized"`
	Refreshes    int64  `json:"refreshes"`
	Retries      int64  `json:"retries"`
	NeedsReauth  int64  `json:"needs_reauth"`
}

// demoClock is the clock the servers and the client share: real time plus
// an offset the demo moves forward.
type demoClock struct {
	start time.Time
	off   atomic.Int64
}

func newDemoClock() *demoClock { return &demoClock{start: time.Now()} }

// Now returns the demo time.
func (c *demoClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

// Advance moves the clock forward by d.
func (c *demoClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// Offset is the demo time since the start, as +mm:ss.mmm.
func (c *demoClock) Offset() string {
	d := c.Now().Sub(c.start)
	return fmt.Sprintf("+%02d:%02d.%03d", int(d/time.Minute), int(d%time.Minute/time.Second), int(d%time.Second/time.Millisecond))
}

// demo is one run of the story.
type demo struct {
	out     io.Writer // the timeline; nil with --json
	verbose bool
	clk     *demoClock

	st     *stack.Stack
	tr     *client.Transport
	rec    *mcpRecorder
	authz  *demoAuthorizer
	mcpURL string

	mu           sync.Mutex
	act          int
	closing      bool // after act 5: events are no longer part of the story
	done         bool // run has returned: nothing more goes on the timeline
	condense     bool // print only the first wire line of each kind (burst)
	seen         map[string]int
	suppressed   int
	failed       int
	problems     []string
	rotated      int64
	actRefreshes map[int][]client.RefreshEvent
}

// line prints one timeline line for the current act.
func (d *demo) line(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lineLocked(format, args...)
}

func (d *demo) lineLocked(format string, args ...any) {
	if d.out == nil || d.done {
		return
	}
	fmt.Fprintf(d.out, "%s  act %d  %s\n", d.clk.Offset(), d.act, redact(fmt.Sprintf(format, args...)))
}

// vline prints a timeline line with --verbose only.
func (d *demo) vline(format string, args ...any) {
	if d.verbose {
		d.line(format, args...)
	}
}

// say prints text without the time and act columns (act headers and
// what the demo does next).
func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.out != nil && !d.done {
		fmt.Fprintf(d.out, format+"\n", args...)
	}
}

// countFailure counts an unexpected failure at a call site; the act's
// error says what it was.
func (d *demo) countFailure() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed++
}

// fail counts an unexpected failure and records what it was: a background
// request, or one call of the burst.
func (d *demo) fail(what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed++
	d.problems = append(d.problems, redact(fmt.Sprintf("act %d: %s", d.act, what)))
}

// run plays the story. An error means the demo could not be set up; a
// story that went differently is reported in the demoReport.
func (d *demo) run(ctx context.Context, stderr io.Writer) (*demoReport, error) {
	realStart := time.Now()
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	base := "http://" + ln.Addr().String()
	st, err := stack.New(stack.Config{
		BaseURL: base, AutoApprove: true, Subject: demoSubject,
		AccessTokenTTL: demoAccessTTL, RefreshTokenTTL: demoRefreshTTL, UpstreamTokenMaxAge: demoUpstreamMaxAge,
		Now: d.clk.Now,
	})
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("start the stack: %w", err)
	}
	d.st, d.mcpURL = st, st.MCPURL
	d.rec = &mcpRecorder{h: st.Handler}
	srv := &http.Server{Handler: d.rec, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	fmt.Fprintf(stderr, "evergrant demo: authorization server, MCP server and fake upstream on %s; the clock jumps instead of waiting\n", base)

	// The client side: this project's Transport under the official Go SDK.
	// Every request it sends goes through wireTap, which puts it on the
	// timeline; callTap above it names each request by its JSON-RPC
	// message.
	ht := http.DefaultTransport.(*http.Transport).Clone()
	defer ht.CloseIdleConnections()
	wire := &wireTap{base: ht, d: d}
	d.authz = &demoAuthorizer{HeadlessAuthorizer: client.HeadlessAuthorizer{Client: &http.Client{Transport: wire}}}
	d.authz.allowed.Store(true)
	d.tr = client.NewTransport(client.Config{
		Base:          wire,
		Authorizer:    d.authz,
		ClientName:    "evergrant demo",
		RefreshMargin: -1, // no refresh before expiry: show the 401 and its recovery
		OnEvent:       d.onEvent,
		Now:           d.clk.Now,
	})
	hc := &http.Client{Transport: &callTap{next: d.tr, d: d}}

	rep := &demoReport{MCPURL: st.MCPURL, Issuer: st.Issuer,
		Lifetimes: demoLifetimesReport{AccessToken: demoAccessTTL.String(), RefreshToken: demoRefreshTTL.String(), UpstreamMaxAge: demoUpstreamMaxAge.String()}}
	d.say("evergrant demo: access tokens live %v, the upstream accepts tokens up to %v old, refresh tokens rotate", demoAccessTTL, demoUpstreamMaxAge)
	d.say("MCP server %s; clock = time on the demo clock, which jumps instead of waiting", st.MCPURL)

	var sess *mcp.ClientSession
	cl := mcp.NewClient(&mcp.Implementation{Name: "evergrant-demo", Version: version}, nil)
	acts := []struct {
		name string
		fn   func(context.Context, *demoActReport) error
	}{
		{"sign in", func(ctx context.Context, a *demoActReport) error {
			d.say("the first call has no grant: the client discovers the authorization server, registers, and signs in (PKCE, auto-approved)")
			cctx, ccancel := context.WithTimeout(ctx, demoCallTimeout)
			defer ccancel()
			s, err := cl.Connect(cctx, &mcp.StreamableClientTransport{Endpoint: st.MCPURL, HTTPClient: hc}, nil)
			if err != nil {
				d.countFailure()
				return fmt.Errorf("connect: %w", err)
			}
			sess = s
			// From now on the host never signs in by itself: a new sign-in is
			// the user's decision (evergrant login).
			d.authz.allowed.Store(false)
			if err := d.whoami(ctx, sess); err != nil {
				return err
			}
			if err := d.search(ctx, sess, "refresh"); err != nil {
				return err
			}
			if n := d.tr.Stats().Authorizations; n != 1 {
				return fmt.Errorf("%d authorizations, want 1", n)
			}
			a.Detail = "signed in once; whoami and upstream_search answered"
			return nil
		}},
		{"access-token expiry", func(ctx context.Context, a *demoActReport) error {
			d.clk.Advance(pastAccessTTL)
			d.say("the clock jumps %v: the access token (lifetime %v) has expired", pastAccessTTL, demoAccessTTL)
			s0 := d.tr.Stats()
			if err := d.whoami(ctx, sess); err != nil {
				return err
			}
			s := d.tr.Stats()
			if s.Unauthorized-s0.Unauthorized < 1 || s.Refreshes-s0.Refreshes != 1 || s.Retries-s0.Retries < 1 {
				return fmt.Errorf("want a 401, one refresh and a retry; got %d, %d, %d", s.Unauthorized-s0.Unauthorized, s.Refreshes-s0.Refreshes, s.Retries-s0.Retries)
			}
			if err := d.refreshesOK(2); err != nil {
				return err
			}
			a.Detail = "401 invalid_token, one refresh, retried, answered"
			return nil
		}},
		{"upstream-signalled expiry", func(ctx context.Context, a *demoActReport) error {
			jump := demoUpstreamMaxAge + time.Second
			d.clk.Advance(jump)
			d.say("the clock jumps %v: the upstream API now refuses the token (older than %v), though it is still valid at the MCP server", jump, demoUpstreamMaxAge)
			mark := d.rec.len()
			s0 := d.tr.Stats()
			if err := d.search(ctx, sess, "expiry"); err != nil {
				return err
			}
			s := d.tr.Stats()
			if s.Refreshes-s0.Refreshes != 1 {
				return fmt.Errorf("%d refreshes, want 1", s.Refreshes-s0.Refreshes)
			}
			if err := d.refreshesOK(3); err != nil {
				return err
			}
			sig := d.rec.signal(mark)
			rep.UpstreamSignal = sig
			switch {
			case len(sig.Statuses) != 2 || sig.Statuses[0] != http.StatusUnauthorized || sig.Statuses[1] != http.StatusOK:
				return fmt.Errorf("the MCP server saw statuses %v for tools/call, want [401 200]", sig.Statuses)
			case !sig.IDPreserved:
				return errors.New("the retried call had another JSON-RPC id")
			case !strings.Contains(sig.Challenge, `error="invalid_token"`):
				return fmt.Errorf("the signal's challenge %q lacks invalid_token", sig.Challenge)
			}
			d.line("the MCP server saw tools/call id=%s twice: 401, then 200 (same id, same bytes: %v)", sig.ID, sig.BodyIdentical)
			a.Detail = fmt.Sprintf("upstream_search answered 401, refreshed, retried with the same id %s", sig.ID)
			return nil
		}},
		{fmt.Sprintf("burst of %d", demoBurst), func(ctx context.Context, a *demoActReport) error {
			d.clk.Advance(pastAccessTTL)
			d.say("the clock jumps %v: the access token has expired; %d calls start at once", pastAccessTTL, demoBurst)
			d.mu.Lock()
			d.condense, d.seen, d.suppressed = !d.verbose, map[string]int{}, 0
			d.mu.Unlock()
			s0 := d.tr.Stats()
			var wg sync.WaitGroup
			var failed atomic.Int64
			start := make(chan struct{})
			for i := range demoBurst {
				wg.Go(func() {
					<-start
					if _, err := d.call(ctx, sess, "whoami", nil); err != nil {
						failed.Add(1)
						d.fail(fmt.Sprintf("burst call %d: %v", i+1, err))
					}
				})
			}
			close(start)
			wg.Wait()
			s := d.tr.Stats()
			d.mu.Lock()
			d.condense = false
			suppressed := d.suppressed
			d.mu.Unlock()
			if suppressed > 0 {
				d.line("… %d more lines like these (--verbose shows every line)", suppressed)
			}
			rep.Burst = demoBurstReport{Calls: demoBurst, Refreshes: s.Refreshes - s0.Refreshes, Failed: int(failed.Load()),
				Unauthorized: s.Unauthorized - s0.Unauthorized, Retries: s.Retries - s0.Retries}
			d.line("burst: %d calls, %d answered, %d failed; %d × 401, %d refresh, %d retries",
				demoBurst, demoBurst-rep.Burst.Failed, rep.Burst.Failed, rep.Burst.Unauthorized, rep.Burst.Refreshes, rep.Burst.Retries)
			if rep.Burst.Refreshes != 1 || rep.Burst.Failed != 0 {
				return fmt.Errorf("%d refreshes and %d failed calls, want 1 and 0", rep.Burst.Refreshes, rep.Burst.Failed)
			}
			if err := d.refreshesOK(4); err != nil {
				return err
			}
			a.Detail = fmt.Sprintf("%d concurrent calls over an expired token, one refresh", demoBurst)
			return nil
		}},
		{"revoked refresh token", func(ctx context.Context, a *demoActReport) error {
			n, err := st.AS.RevokeGrants(ctx, authserver.GrantFilter{Subject: demoSubject})
			if err != nil {
				return err
			}
			d.line("the authorization server revokes %d grant(s) of %s, refresh token included", n, demoSubject)
			d.clk.Advance(pastAccessTTL)
			d.say("the clock jumps %v: the access token has expired; the next call cannot be saved by a refresh", pastAccessTTL)
			s0 := d.tr.Stats()
			_, err = d.call(ctx, sess, "whoami", nil)
			var ne *client.NeedsReauthError
			if !errors.As(err, &ne) {
				if err == nil {
					err = errors.New("the call succeeded")
				}
				return fmt.Errorf("want a *client.NeedsReauthError at the call site, got: %v", err)
			}
			hint := reauthHint(d.mcpURL)
			rep.NeedsReauthErr = &demoReauthReport{Reason: string(ne.Reason), ErrorCode: ne.ErrorCode, Hint: hint}
			code := ""
			if ne.ErrorCode != "" {
				code = " (" + ne.ErrorCode + ")"
			}
			d.line("host: whoami failed: needs_reauth: %s%s; %s", ne.Reason, code, hint)
			if ne.Reason != client.ReasonRefreshRejected {
				return fmt.Errorf("needs_reauth reason %q, want %q", ne.Reason, client.ReasonRefreshRejected)
			}
			if s := d.tr.Stats(); s.NeedsReauth-s0.NeedsReauth != 1 {
				return fmt.Errorf("%d needs_reauth events, want 1", s.NeedsReauth-s0.NeedsReauth)
			}
			a.Detail = "refresh refused (" + ne.ErrorCode + "); the host got needs_reauth and told the user how to sign in again"
			return nil
		}},
	}

	for i, act := range acts {
		a := &demoActReport{Act: i + 1, Name: act.name}
		rep.Acts = append(rep.Acts, a)
		if ctx.Err() != nil {
			a.Error = "not run: " + context.Cause(ctx).Error()
			continue
		}
		if i > 0 && sess == nil {
			a.Error = "not run: no session"
			continue
		}
		d.mu.Lock()
		d.act = i + 1
		d.mu.Unlock()
		d.say("\n== act %d: %s ==", i+1, act.name)
		a.ClockAtStart = d.clk.Offset()
		s0 := d.tr.Stats()
		err := act.fn(ctx, a)
		s := d.tr.Stats()
		a.Requests, a.Unauthorized, a.Refreshes = s.Requests-s0.Requests, s.Unauthorized-s0.Unauthorized, s.Refreshes-s0.Refreshes
		a.Retries, a.NeedsReauth = s.Retries-s0.Retries, s.NeedsReauth-s0.NeedsReauth
		if err != nil {
			a.Error = redact(err.Error())
			d.line("act %d did not go as planned: %s", i+1, a.Error)
		} else {
			a.OK = true
		}
	}

	// The story is over; what the session's close does is not part of it.
	s := d.tr.Stats()
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	if sess != nil {
		if err := sess.Close(); err != nil {
			d.vline("session closed; the server could not be told: %v", err)
		} else {
			d.vline("session closed")
		}
	}
	select {
	case err := <-serveErr:
		d.fail("the server stopped: " + err.Error())
	default:
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = true
	rep.Requests, rep.Unauthorized, rep.Refreshes, rep.RefreshFailures = s.Requests, s.Unauthorized, s.Refreshes, s.RefreshFailure
	rep.Retries, rep.NeedsReauth, rep.Authorizations = s.Retries, s.NeedsReauth, s.Authorizations
	rep.Rotated = d.rotated
	rep.Failed = d.failed
	rep.Problems = append(rep.Problems, d.problems...)
	for _, a := range rep.Acts {
		if !a.OK {
			rep.Problems = append(rep.Problems, fmt.Sprintf("act %d (%s): %s", a.Act, a.Name, a.Error))
		}
	}
	if len(rep.Problems) == 0 && rep.NeedsReauth != 1 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d needs_reauth events in all, want exactly 1", rep.NeedsReauth))
	}
	rep.OK = len(rep.Problems) == 0
	rep.Elapsed = time.Since(realStart).Round(time.Millisecond).String()
	rep.ClockAdvanced = time.Duration(d.clk.off.Load()).String()
	return rep, nil
}

// refreshesOK checks that the refreshes of an act succeeded.
func (d *demo) refreshesOK(act int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.actRefreshes[act] {
		if r.Outcome != "ok" {
			return fmt.Errorf("a refresh ended %q: %v", r.Outcome, r.Err)
		}
	}
	return nil
}

// call calls a tool; a result with isError is an error.
func (d *demo) call(ctx context.Context, sess *mcp.ClientSession, tool string, args map[string]any) (*mcp.CallToolResult, error) {
	ctx, cancel := context.WithTimeout(ctx, demoCallTimeout)
	defer cancel()
	res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		return nil, err
	}
	if res.IsError {
		var text []string
		for _, c := range res.Content {
			if t, ok := c.(*mcp.TextContent); ok {
				text = append(text, t.Text)
			}
		}
		return nil, fmt.Errorf("%s: tool error: %s", tool, strings.Join(text, " "))
	}
	return res, nil
}

// whoami calls whoami and puts the answer on the timeline.
func (d *demo) whoami(ctx context.Context, sess *mcp.ClientSession) error {
	res, err := d.call(ctx, sess, "whoami", nil)
	if err != nil {
		d.countFailure()
		return fmt.Errorf("whoami: %w", err)
	}
	var out struct {
		Subject string   `json:"subject"`
		Scopes  []string `json:"scopes"`
	}
	b, _ := json.Marshal(res.StructuredContent)
	if json.Unmarshal(b, &out) != nil || out.Subject != demoSubject {
		d.countFailure()
		return fmt.Errorf("whoami answered %s", b)
	}
	d.line("whoami answered: subject %s, scopes %s", out.Subject, strings.Join(out.Scopes, " "))
	return nil
}

// search calls upstream_search and puts the answer on the timeline.
func (d *demo) search(ctx context.Context, sess *mcp.ClientSession, q string) error {
	res, err := d.call(ctx, sess, "upstream_search", map[string]any{"query": q})
	if err != nil {
		d.countFailure()
		return fmt.Errorf("upstream_search: %w", err)
	}
	var out struct {
		Results []string `json:"results"`
	}
	b, _ := json.Marshal(res.StructuredContent)
	if json.Unmarshal(b, &out) != nil || len(out.Results) == 0 {
		d.countFailure()
		return fmt.Errorf("upstream_search answered %s", b)
	}
	d.line("upstream_search answered: %d results (%q, …)", len(out.Results), out.Results[0])
	return nil
}

// onEvent is the Transport's OnEvent. Requests, 401s and retries are on
// the timeline from wireTap, which knows which JSON-RPC message each is;
// this prints the rest.
func (d *demo) onEvent(e client.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return
	}
	switch e.Kind {
	case client.EventRefresh:
		r := e.Refresh
		if r == nil {
			return
		}
		d.actRefreshes[d.act] = append(d.actRefreshes[d.act], *r)
		kind := "after a 401"
		if r.Proactive {
			kind = "before expiry"
		}
		switch r.Outcome {
		case "ok":
			rot := "refresh token rotated"
			if r.Rotated {
				d.rotated++
			} else {
				rot = "refresh token kept (not rotated)"
			}
			d.lineLocked("refresh %s: ok, %s (grant %s)", kind, rot, r.GrantID)
		default:
			d.lineLocked("refresh %s: %s: %v (grant %s)", kind, r.Outcome, r.Err, r.GrantID)
		}
	case client.EventNeedsReauth:
		reason := ""
		var ne *client.NeedsReauthError
		if errors.As(e.Err, &ne) {
			reason = string(ne.Reason)
			if ne.ErrorCode != "" {
				reason += " (" + ne.ErrorCode + ")"
			}
		}
		d.lineLocked("needs_reauth: %s: the grant is gone; the call fails with *client.NeedsReauthError", reason)
	case client.EventAuthorize:
		d.lineLocked("signed in: authorization code with PKCE, auto-approved; grant stored (in memory)")
	case client.EventForbidden:
		d.lineLocked("%s -> 403  %s", e.Method, e.Challenge)
	}
}

// callKey is the context key of a *wireCall.
type callKey struct{}

// wireCall is one request the MCP SDK sent, as the Transport sees it.
type wireCall struct {
	label    string          // "POST tools/call whoami id=3"
	id       json.RawMessage // JSON-RPC id, nil for notifications, GET, DELETE
	attempts atomic.Int32
}

// callTap is the RoundTripper the SDK's http.Client uses: it names each
// request by its JSON-RPC message for the timeline, and counts failed
// background requests.
type callTap struct {
	next http.RoundTripper
	d    *demo
}

// RoundTrip implements http.RoundTripper.
func (t *callTap) RoundTrip(req *http.Request) (*http.Response, error) {
	c := &wireCall{}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		if req.GetBody != nil {
			if rc, err := req.GetBody(); err == nil {
				body, _ = io.ReadAll(io.LimitReader(rc, 1<<20))
				rc.Close()
			}
		} else {
			b, err := io.ReadAll(req.Body)
			req.Body.Close()
			if err != nil {
				return nil, err
			}
			body = b
			req = req.Clone(req.Context())
			req.Body = io.NopCloser(bytes.NewReader(b))
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		}
	}
	c.label, c.id = describeRPC(req.Method, body)
	req = req.WithContext(context.WithValue(req.Context(), callKey{}, c))
	resp, err := t.next.RoundTrip(req)
	if c.id == nil { // a background request: nobody waits on it at a call site
		bad := err != nil || resp.StatusCode >= 400 && !(req.Method == http.MethodGet && resp.StatusCode == http.StatusMethodNotAllowed)
		t.d.mu.Lock()
		closing := t.d.closing
		t.d.mu.Unlock()
		if bad && !closing {
			what := ""
			if err != nil {
				what = err.Error()
			} else {
				what = resp.Status
			}
			t.d.fail(c.label + ": " + what)
		}
	}
	return resp, err
}

// describeRPC names a request by its JSON-RPC message.
func describeRPC(method string, body []byte) (string, json.RawMessage) {
	switch method {
	case http.MethodGet:
		return "GET event stream", nil
	case http.MethodDelete:
		return "DELETE session", nil
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		return method + " batch", nil
	}
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if json.Unmarshal(body, &m) != nil {
		return method, nil
	}
	if string(m.ID) == "null" {
		m.ID = nil
	}
	label := method + " " + m.Method
	if m.Method == "" {
		label = method + " response"
	}
	var p struct {
		Name string `json:"name"`
	}
	if m.Method == "tools/call" && json.Unmarshal(m.Params, &p) == nil && p.Name != "" {
		label += " " + p.Name
	}
	if m.ID != nil {
		label += " id=" + string(m.ID)
	}
	return label, m.ID
}

// wireTap is the Transport's Base: every request it sends, to the MCP
// server or to the authorization server, passes here and goes on the
// timeline with its answer's status and, for a 401, its challenge.
type wireTap struct {
	base http.RoundTripper
	d    *demo
}

// RoundTrip implements http.RoundTripper.
func (w *wireTap) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := w.base.RoundTrip(req)
	d := w.d
	c, _ := req.Context().Value(callKey{}).(*wireCall)
	mcpReq := c != nil && req.URL.Path == stack.MCPPath
	if !mcpReq {
		// The authorization server, the resource metadata.
		if err != nil {
			d.vline("%s %s -> %v", req.Method, req.URL.Path, err)
		} else {
			d.vline("%s %s -> %d", req.Method, req.URL.Path, resp.StatusCode)
		}
		return resp, err
	}
	retry := c.attempts.Add(1) > 1
	label := c.label
	if retry {
		label = "retry " + label
	}
	var text, kind string
	switch {
	case err != nil:
		text, kind = fmt.Sprintf("%s -> %v", label, err), "error"
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		ch := strings.Join(resp.Header.Values("WWW-Authenticate"), ", ")
		text, kind = fmt.Sprintf("%s -> %d  WWW-Authenticate: %s", label, resp.StatusCode, ch), fmt.Sprint(resp.StatusCode)
	default:
		text, kind = fmt.Sprintf("%s -> %d", label, resp.StatusCode), fmt.Sprint(resp.StatusCode)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		if d.verbose {
			d.lineLocked("%s", text)
		}
		return resp, err
	}
	if d.condense {
		k := fmt.Sprintf("%v %s", retry, kind)
		d.seen[k]++
		if d.seen[k] > 1 {
			d.suppressed++
			return resp, err
		}
	}
	d.lineLocked("%s", text)
	return resp, err
}

// demoAuthorizer signs in headlessly (the stack auto-approves) while
// allowed: only in act 1. Afterwards the host, like one using a grant from
// `evergrant login`, never signs in by itself.
type demoAuthorizer struct {
	client.HeadlessAuthorizer
	allowed atomic.Bool
}

// Authorize implements client.Authorizer.
func (a *demoAuthorizer) Authorize(ctx context.Context, authURL string) (url.Values, error) {
	if !a.allowed.Load() {
		return nil, errors.New("the demo signs in only at the start; sign in again with evergrant login")
	}
	return a.HeadlessAuthorizer.Authorize(ctx, authURL)
}

// mcpRecorder wraps the stack's handler and records the POSTs to the MCP
// endpoint as the server saw them: body, status and challenge.
type mcpRecorder struct {
	h  http.Handler
	mu sync.Mutex
	ex []mcpExchange
}

type mcpExchange struct {
	body      []byte
	status    int
	challenge string
}

func (r *mcpRecorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ex)
}

// ServeHTTP implements http.Handler.
func (r *mcpRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != stack.MCPPath {
		r.h.ServeHTTP(w, req)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(w, "cannot read the request", http.StatusBadRequest)
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	r.mu.Lock()
	i := len(r.ex)
	r.ex = append(r.ex, mcpExchange{body: body})
	r.mu.Unlock()
	r.h.ServeHTTP(&statusRecorder{ResponseWriter: w, rec: r, i: i}, req)
}

// signal describes the tools/call POSTs since mark: the upstream-signalled
// call and its retry.
func (r *mcpRecorder) signal(mark int) *demoSignalReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &demoSignalReport{Tool: "upstream_search", Statuses: []int{}}
	var first []byte
	s.IDPreserved, s.BodyIdentical = true, true
	for _, e := range r.ex[mark:] {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
		}
		if json.Unmarshal(e.body, &m) != nil || m.Method != "tools/call" {
			continue
		}
		s.Statuses = append(s.Statuses, e.status)
		if first == nil {
			first, s.ID, s.Challenge = e.body, m.ID, e.challenge
			continue
		}
		s.IDPreserved = s.IDPreserved && bytes.Equal(m.ID, s.ID)
		s.BodyIdentical = s.BodyIdentical && bytes.Equal(e.body, first)
	}
	if len(s.Statuses) < 2 {
		s.IDPreserved, s.BodyIdentical = false, false
	}
	return s
}

// statusRecorder notes the status and challenge as soon as the header is
// written (a streaming answer ends much later).
type statusRecorder struct {
	http.ResponseWriter
	rec *mcpRecorder
	i   int
}

func (w *statusRecorder) set(code int) {
	w.rec.mu.Lock()
	if e := &w.rec.ex[w.i]; e.status == 0 {
		e.status = code
		e.challenge = strings.Join(w.Header().Values("WWW-Authenticate"), ", ")
	}
	w.rec.mu.Unlock()
}

// WriteHeader implements http.ResponseWriter.
func (w *statusRecorder) WriteHeader(code int) {
	w.set(code)
	w.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (w *statusRecorder) Write(b []byte) (int, error) {
	w.set(http.StatusOK)
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher.
func (w *statusRecorder) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// printSummary prints the summary table after the timeline.
func (d *demo) printSummary(w io.Writer, rep *demoReport) {
	fmt.Fprintln(w, "\n== summary ==")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "act\tresult\trequests\t401s\trefreshes\tretries\tneeds_reauth")
	for _, a := range rep.Acts {
		res := "ok"
		if !a.OK {
			res = "FAILED"
		}
		fmt.Fprintf(tw, "%d %s\t%s\t%d\t%d\t%d\t%d\t%d\n", a.Act, a.Name, res, a.Requests, a.Unauthorized, a.Refreshes, a.Retries, a.NeedsReauth)
	}
	fmt.Fprintf(tw, "total\t\t%d\t%d\t%d\t%d\t%d\n", rep.Requests, rep.Unauthorized, rep.Refreshes, rep.Retries, rep.NeedsReauth)
	tw.Flush()
	fmt.Fprintf(w, "\nrefresh tokens rotated: %d of %d refreshes (%d refused); sign-ins: %d; failed: %d\n",
		rep.Rotated, rep.Refreshes, rep.RefreshFailures, rep.Authorizations, rep.Failed)
	if rep.Burst.Calls > 0 {
		fmt.Fprintf(w, "burst: %d calls, %d refresh, %d failed\n", rep.Burst.Calls, rep.Burst.Refreshes, rep.Burst.Failed)
	}
	if s := rep.UpstreamSignal; s != nil {
		fmt.Fprintf(w, "upstream signal: tools/call id=%s answered %v; same id on retry: %v\n", s.ID, s.Statuses, s.IDPreserved)
	}
	if r := rep.NeedsReauthErr; r != nil {
		fmt.Fprintf(w, "needs_reauth: %s %s; %s\n", r.Reason, r.ErrorCode, r.Hint)
	}
	fmt.Fprintf(w, "the demo clock moved %s in %s of real time\n", rep.ClockAdvanced, rep.Elapsed)
	if rep.OK {
		fmt.Fprintln(w, "the story went as planned.")
	} else {
		fmt.Fprintln(w, "the story did NOT go as planned (see stderr).")
	}
}

// tokenLike matches runs that could be token material: long base64url
// strings. Nothing the demo prints should contain one; redact is a safety
// net, not the mechanism.
var tokenLike = regexp.MustCompile(`[A-Za-z0-9_-]{32,}`)

// redact replaces anything that looks like a token.
func redact(s string) string { return tokenLike.ReplaceAllString(s, "[redacted]") }
