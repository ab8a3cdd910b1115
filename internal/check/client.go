package check

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultClientTimeout bounds one scenario's run of the client under test
// when ClientOptions.Timeout is zero. A correct client needs about a second
// (proactive refresh waits a few seconds for a token to expire).
const DefaultClientTimeout = 15 * time.Second

// ClientOptions configure CheckClient.
type ClientOptions struct {
	// Command is the client under test and its arguments. It is run once
	// per scenario with the contract of the official MCP conformance suite:
	// the MCP server URL appended as the last argument, the scenario name in
	// MCP_CONFORMANCE_SCENARIO and "{}" in MCP_CONFORMANCE_CONTEXT. It must
	// authorize headlessly (follow the authorization URL and read the code
	// from the Location of the answer), then initialize, list the tools and
	// call each one. Required.
	Command []string
	// Scenarios are the names of the scenarios to run (see
	// ClientScenarios); empty means all.
	Scenarios []string
	// Timeout bounds one scenario's run of Command; zero means
	// DefaultClientTimeout. A client still running then is killed (with its
	// process group, where the platform has one).
	Timeout time.Duration
	// Parallel is how many scenarios run at once; zero or one means one
	// after the other. Each scenario has its own servers on its own port,
	// so running them together is safe unless the client shares state
	// between runs in a way keyed by something else than the server URL.
	Parallel int
	// Stderr receives the client's standard output and error, each line
	// prefixed with the scenario name (for --verbose); nil discards them.
	Stderr io.Writer
	// Logger receives the fixture's logs (authorization server, MCP
	// server). Nil discards.
	Logger *slog.Logger
	// OnResult, when set, is called with each result as its scenario ends
	// (for progress on stderr), one call at a time, in the order scenarios
	// end.
	OnResult func(Result)
}

// ClientScenario describes one scenario of CheckClient.
type ClientScenario struct {
	// Name is what MCP_CONFORMANCE_SCENARIO and ClientOptions.Scenarios
	// say, e.g. "refresh/retry-same-id".
	Name string `json:"name"`
	// Rule is the rule it checks: the anchor of the rule in docs/design.md,
	// e.g. "client-rule-1" (docs/design.md#client-rule-1).
	Rule string `json:"rule"`
	// Summary says what the fixture does and what a correct client does, in
	// a sentence.
	Summary string `json:"summary"`
	// Informational scenarios report Info, never Fail.
	Informational bool `json:"informational,omitempty"`
}

// ClientScenarios lists the scenarios of CheckClient in the order they run,
// for --help and the docs.
func ClientScenarios() []ClientScenario {
	out := make([]ClientScenario, len(clientScenarios))
	for i, s := range clientScenarios {
		out[i] = s.ClientScenario
	}
	return out
}

// clientRun is how the run of the client under test ended.
type clientRun struct {
	exitCode int // -1 when killed or not exited
	timedOut bool
	stopped  string // why the run was stopped as looping, "" if not
}

// ended says how the run ended, for details.
func (r clientRun) ended(timeout time.Duration) string {
	switch {
	case r.stopped != "":
		return "was stopped (" + r.stopped + ")"
	case r.timedOut:
		return fmt.Sprintf("was still running after %s and was killed", timeout)
	case r.exitCode < 0:
		return "ended without an exit status (killed by a signal)"
	default:
		return fmt.Sprintf("exited %d", r.exitCode)
	}
}

// finished reports whether the client exited by itself.
func (r clientRun) finished() bool { return r.stopped == "" && !r.timedOut && r.exitCode >= 0 }

// CheckClient runs the client under test (opts.Command) against each
// scenario's fixture and judges, from what the client sent to the
// authorization server and the MCP server, whether it follows the client
// refresh rules of docs/design.md#client-rules. The report's results are in
// the order of ClientScenarios, whatever the order of opts.Scenarios. An
// error means the check itself could not run (no command, an unknown
// scenario, a command that cannot be started, a fixture that cannot
// listen); a client that misbehaves is a Fail result.
func CheckClient(ctx context.Context, opts ClientOptions) (*Report, error) {
	if len(opts.Command) == 0 || opts.Command[0] == "" {
		return nil, errors.New("check: no client command given")
	}
	if _, err := exec.LookPath(opts.Command[0]); err != nil {
		return nil, fmt.Errorf("check: client command: %w", err)
	}
	scenarios, err := selectClientScenarios(opts.Scenarios)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultClientTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	par := max(opts.Parallel, 1)

	results := make([]Result, len(scenarios))
	errs := make([]error, len(scenarios))
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var outMu sync.Mutex // serializes lines written to opts.Stderr
	var resMu sync.Mutex // serializes OnResult
	for i, sc := range scenarios {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i], errs[i] = runClientScenario(ctx, opts, sc, &outMu)
			if errs[i] == nil && opts.OnResult != nil {
				resMu.Lock()
				defer resMu.Unlock()
				opts.OnResult(results[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &Report{Target: strings.Join(opts.Command, " "), Results: results}, nil
}

// selectClientScenarios returns the named scenarios in the order of
// ClientScenarios, each once.
func selectClientScenarios(names []string) ([]*clientScenario, error) {
	if len(names) == 0 {
		return clientScenarios, nil
	}
	known := make([]string, len(clientScenarios))
	for i, s := range clientScenarios {
		known[i] = s.Name
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("check: unknown client scenario %q (known: %s)", n, strings.Join(known, ", "))
		}
	}
	var out []*clientScenario
	for _, s := range clientScenarios {
		if slices.Contains(names, s.Name) {
			out = append(out, s)
		}
	}
	return out, nil
}

// runClientScenario starts the scenario's fixture, runs the client against
// it and judges what it did.
func runClientScenario(ctx context.Context, opts ClientOptions, sc *clientScenario, outMu *sync.Mutex) (Result, error) {
	f, err := newClientFixture(opts.Logger.With("scenario", sc.Name))
	if err != nil {
		return Result{}, fmt.Errorf("check: scenario %s: fixture: %w", sc.Name, err)
	}
	defer f.close()
	sc.setup(f)
	f.start()
	run, err := f.runCommand(ctx, opts, sc.Name, outMu)
	if err != nil {
		return Result{}, fmt.Errorf("check: scenario %s: %w", sc.Name, err)
	}
	outcome, detail := sc.judge(&clientJudge{log: f.snapshot(), run: run, timeout: opts.Timeout, mcpURL: f.mcpURL})
	if sc.Informational && outcome == Fail {
		outcome = Info
	}
	return Result{Scenario: sc.Name, Rule: sc.Rule, Outcome: outcome, Detail: detail}, nil
}

// runCommand runs the client under test against f until it exits, times
// out, is found looping, or ctx ends.
func (f *clientFixture) runCommand(ctx context.Context, opts ClientOptions, scenario string, outMu *sync.Mutex) (clientRun, error) {
	args := append(append([]string(nil), opts.Command[1:]...), f.mcpURL)
	cmd := exec.Command(opts.Command[0], args...)
	cmd.Env = append(os.Environ(), "MCP_CONFORMANCE_SCENARIO="+scenario, "MCP_CONFORMANCE_CONTEXT={}")
	var out io.Writer = io.Discard
	if opts.Stderr != nil {
		out = &prefixWriter{w: opts.Stderr, prefix: "[" + scenario + "] ", mu: outMu}
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Wait returns this long after the process exits even if a child it
	// left behind still holds the output pipes.
	cmd.WaitDelay = 2 * time.Second
	setProcessGroup(cmd)

	if err := cmd.Start(); err != nil {
		return clientRun{}, fmt.Errorf("start the client: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(opts.Timeout)
	defer timer.Stop()

	run := clientRun{exitCode: -1}
	var waitErr error
	select {
	case waitErr = <-done:
	case <-timer.C:
		run.timedOut = true
	case <-f.stop:
		run.stopped = f.stopWhy
	case <-ctx.Done():
	}
	if run.timedOut || run.stopped != "" || ctx.Err() != nil {
		killProcessGroup(cmd)
		waitErr = <-done
	} else if cmd.ProcessState != nil {
		run.exitCode = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		return run, ctx.Err()
	}
	var ee *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &ee) && !errors.Is(waitErr, exec.ErrWaitDelay) && run.finished() {
		return run, fmt.Errorf("wait for the client: %w", waitErr)
	}
	if pw, ok := out.(*prefixWriter); ok {
		pw.flush()
	}
	return run, nil
}

// prefixWriter writes whole lines to w, each with prefix.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mu     *sync.Mutex

	bufMu sync.Mutex
	buf   []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.emit(p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	// A client that never ends its lines still gets its output through.
	if len(p.buf) > 64<<10 {
		p.emit(p.buf)
		p.buf = nil
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	if len(p.buf) > 0 {
		p.emit(p.buf)
		p.buf = nil
	}
}

func (p *prefixWriter) emit(line []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bw := bufio.NewWriter(p.w)
	bw.WriteString(p.prefix)
	bw.Write(line)
	bw.WriteByte('\n')
	bw.Flush()
}
