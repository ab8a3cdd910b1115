package check

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// The scenarios of CheckClient, one per rule of docs/design.md#client-rules
// that a program can be judged on from the outside. Each forces the
// behaviour within the client's normal run (authorize, initialize,
// tools/list, tools/call for each tool) and judges from what reached the
// authorization server and the MCP server.

// clientProactiveTTL is the access token lifetime of the proactive
// scenario; clientProactiveHold is how long after that token's expiry the
// answer to tools/list is held, so the next request goes out after it.
const (
	clientProactiveTTL  = 2 * time.Second
	clientProactiveHold = 300 * time.Millisecond
)

// clientMaxUnavailableRefreshes bounds the refresh grants a client may send
// while the token endpoint is failing, across its whole run, on top of
// the bound of one per rejected request (docs/design.md#client-rule-5): one
// for the rejected call, one for closing the session, one for the event
// stream. More is a loop (docs/design.md#client-rule-4).
const clientMaxUnavailableRefreshes = 3

// clientScenario is a scenario: its description, how it sets up the
// fixture, and how it judges the client.
type clientScenario struct {
	ClientScenario
	// setup configures the fixture before the client starts.
	setup func(*clientFixture)
	// judge returns the outcome and the detail.
	judge func(*clientJudge) (Outcome, string)
}

// clientScenarios is the list, in the order of the rules. It is not
// modified.
var clientScenarios = []*clientScenario{
	{
		ClientScenario: ClientScenario{
			Name: "refresh/retry-same-id", Rule: "client-rule-1",
			Summary: "The first tools/call gets 401 invalid_token: the client refreshes once, without a new authorization, " +
				"and sends the same request again (same JSON-RPC id, byte-identical body) with the new token.",
		},
		setup: rejectFirstCall("tools/call", "first"),
		judge: judgeRetrySameID,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/rotation", Rule: "client-rule-2",
			Summary: "tools/list gets 401 invalid_token, then tools/call with the refreshed token does too: " +
				"the second refresh presents the rotated refresh token the first one returned, not the first again.",
		},
		setup: setupRotation,
		judge: judgeRotation,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/resource-and-client-auth", Rule: "client-rule-2",
			Summary: "The first tools/call gets 401 invalid_token: the refresh grant carries resource = the MCP server URL " +
				"(RFC 8707) and the client authentication of the registration.",
		},
		setup: rejectFirstCall("tools/call", "first"),
		judge: judgeResourceAndClientAuth,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/invalid-grant", Rule: "client-rule-3",
			Summary: "The first tools/call gets 401 invalid_token and the refresh gets invalid_grant: the client sends no " +
				"further refresh grant, does not loop through authorization (once at most), and exits non-zero.",
		},
		setup: func(f *clientFixture) {
			f.faults.RefuseRefresh(true)
			rejectFirstCall("tools/call", "first")(f)
		},
		judge: judgeInvalidGrant,
	},
	outageScenario(asUnavailable),
	outageScenario(asServerError),
	outageScenario(asBadGateway),
	outageScenario(asUnreachable),
	{
		ClientScenario: ClientScenario{
			Name: "refresh/retry-cap", Rule: "client-rule-5",
			Summary: "From the first tools/call on every token gets 401 invalid_token: at most one refresh and one retry " +
				"per logical request, then the client gives up.",
		},
		setup: setupRetryCap,
		judge: judgeRetryCap,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/no-refresh-on-403", Rule: "client-rule-6",
			Summary: "tools/call gets 403 insufficient_scope: the client sends no refresh grant (it may step up once " +
				"with a new authorization, or report the error).",
		},
		setup: setupForbidden,
		judge: judgeNoRefreshOn403,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/no-refresh-on-401-without-error", Rule: "client-rule-6",
			Summary: "The first tools/call gets 401 with a Bearer challenge without error: the client sends no refresh grant.",
		},
		setup: setupBare401,
		judge: judgeNoRefreshOnBare401,
	},
	{
		ClientScenario: ClientScenario{
			Name: "refresh/proactive", Rule: "client-rule-8", Informational: true,
			Summary: "Access tokens live 2 s and the answer to tools/list waits until the first one has expired: " +
				"does the client refresh before it sends an expired token?",
		},
		setup: setupProactive,
		judge: judgeProactive,
	},
}

// rejectFirstCall answers the first request of rpcMethod that carries a
// token issued here with 401 invalid_token, and every later request with
// that token too (it is dead, as an expired token is).
func rejectFirstCall(rpcMethod, tag string) func(*clientFixture) {
	return func(f *clientFixture) {
		f.script = func(r *clientMCPRequest) clientAction {
			if r.rpcMethod == rpcMethod && r.tokenNo != 0 && f.once(tag) {
				f.dead[r.tokenNo] = true
				return clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token expired"), tag: tag}
			}
			return clientAction{}
		}
	}
}

func setupRotation(f *clientFixture) {
	f.script = func(r *clientMCPRequest) clientAction {
		switch {
		case r.tokenNo == 0:
		case r.rpcMethod == "tools/list" && f.once("first"):
			f.dead[r.tokenNo] = true
			return clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token expired"), tag: "first"}
		case r.rpcMethod == "tools/call" && f.state["first"] > 0 && f.once("second"):
			// The first token is dead, so this is a later one.
			f.dead[r.tokenNo] = true
			return clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token expired"), tag: "second"}
		}
		return clientAction{}
	}
}

// clientOutage is one way the token endpoint fails in the scenarios of
// docs/design.md#client-rule-4: an answer the fixture gives instead of the
// authorization server's, or a connection closed without any answer.
type clientOutage struct {
	name string // the scenario's name
	// what completes "the token endpoint ..." in summaries and details.
	what string
	// status is the HTTP status; 0 closes the connection without an answer.
	status      int
	contentType string
	body        string
}

// The outages of docs/design.md#client-rule-4: an OAuth error answer with a
// 5xx status (RFC 6749 §5.2 has server_error and temporarily_unavailable for
// these), a proxy's HTML page, and no answer at all.
var (
	asUnavailable = &clientOutage{
		name: "refresh/as-unavailable", what: "answered 503 temporarily_unavailable",
		status: http.StatusServiceUnavailable, contentType: "application/json",
		body: `{"error":"temporarily_unavailable","error_description":"the token endpoint is down for maintenance"}`,
	}
	asServerError = &clientOutage{
		name: "refresh/as-server-error", what: "answered 500 server_error",
		status: http.StatusInternalServerError, contentType: "application/json",
		body: `{"error":"server_error","error_description":"the token endpoint failed"}`,
	}
	asBadGateway = &clientOutage{
		name: "refresh/as-bad-gateway", what: "answered 502 with a proxy's HTML page",
		status: http.StatusBadGateway, contentType: "text/html; charset=utf-8",
		body: "<!doctype html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n",
	}
	asUnreachable = &clientOutage{
		name: "refresh/as-unreachable", what: "closed the connection without an answer",
	}
)

// answer answers a token request as the outage does.
func (o *clientOutage) answer(w http.ResponseWriter) {
	if o.status == 0 {
		// The server closes the connection and does not log this panic.
		panic(http.ErrAbortHandler)
	}
	w.Header().Set("Content-Type", o.contentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(o.status)
	w.Write([]byte(o.body))
}

// outageScenario is the scenario of docs/design.md#client-rule-4 for o: the
// first tools/call gets 401 invalid_token, and from then on the token
// endpoint fails as o says.
func outageScenario(o *clientOutage) *clientScenario {
	return &clientScenario{
		ClientScenario: ClientScenario{
			Name: o.name, Rule: "client-rule-4",
			Summary: "The first tools/call gets 401 invalid_token and the token endpoint then " + o.what + ": the client " +
				"does not loop or sign in again, keeps its refresh token, and reports the failure.",
		},
		setup: func(f *clientFixture) {
			f.script = func(r *clientMCPRequest) clientAction {
				if r.rpcMethod == "tools/call" && r.tokenNo != 0 && f.once("first") {
					f.dead[r.tokenNo] = true
					f.outage = o
					return clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token expired"), tag: "first"}
				}
				return clientAction{}
			}
		},
		judge: func(j *clientJudge) (Outcome, string) { return judgeUnavailable(j, o) },
	}
}

func setupRetryCap(f *clientFixture) {
	f.script = func(r *clientMCPRequest) clientAction {
		if r.rpcMethod == "tools/call" && r.tokenNo != 0 && f.once("first") {
			f.allDead = true
			return clientAction{status: http.StatusUnauthorized, challenge: f.invalidToken("the access token is not accepted"), tag: "first"}
		}
		return clientAction{}
	}
}

func setupForbidden(f *clientFixture) {
	f.script = func(r *clientMCPRequest) clientAction {
		if r.rpcMethod == "tools/call" && r.tokenNo != 0 && !slices.Contains(r.scopes, clientScopeExtra) {
			return clientAction{status: http.StatusForbidden, challenge: f.insufficientScope(), tag: "forbidden"}
		}
		return clientAction{}
	}
}

func setupBare401(f *clientFixture) {
	f.script = func(r *clientMCPRequest) clientAction {
		if r.rpcMethod == "tools/call" && r.tokenNo != 0 && f.once("bare") {
			return clientAction{status: http.StatusUnauthorized, challenge: f.bareChallenge(), tag: "bare"}
		}
		return clientAction{}
	}
}

func setupProactive(f *clientFixture) {
	f.faults.SetAccessTokenTTL(clientProactiveTTL)
	f.script = func(r *clientMCPRequest) clientAction {
		if r.rpcMethod == "tools/list" && r.tokenNo != 0 && f.once("held") {
			hold := time.Until(f.accessExpiry(r.tokenNo).Add(clientProactiveHold))
			return clientAction{delay: max(hold, 0), tag: "held"}
		}
		return clientAction{}
	}
}

// clientJudge holds what a scenario's judge reads.
type clientJudge struct {
	log     *clientLog
	run     clientRun
	timeout time.Duration
	mcpURL  string
}

// tagged returns the MCP requests the script answered with tag.
func (j *clientJudge) tagged(tag string) []clientMCPRequest {
	var out []clientMCPRequest
	for _, r := range j.log.mcp {
		if r.tag == tag {
			out = append(out, r)
		}
	}
	return out
}

func (j *clientJudge) first(tag string) *clientMCPRequest {
	if t := j.tagged(tag); len(t) > 0 {
		return &t[0]
	}
	return nil
}

// refreshesAfter returns the refresh grants sent after seq.
func (j *clientJudge) refreshesAfter(seq int) []clientTokenRequest {
	var out []clientTokenRequest
	for _, t := range j.log.token {
		if t.seq > seq && t.grantType == oauth.GrantTypeRefreshToken {
			out = append(out, t)
		}
	}
	return out
}

// authzAfter returns the authorization requests sent after seq.
func (j *clientJudge) authzAfter(seq int) []clientAuthzRequest {
	var out []clientAuthzRequest
	for _, a := range j.log.authz {
		if a.seq > seq {
			out = append(out, a)
		}
	}
	return out
}

// next returns the first POST of the same JSON-RPC method after r.
func (j *clientJudge) next(r *clientMCPRequest) *clientMCPRequest {
	for i := range j.log.mcp {
		n := &j.log.mcp[i]
		if n.seq > r.seq && n.httpMethod == http.MethodPost && n.rpcMethod == r.rpcMethod {
			return n
		}
	}
	return nil
}

// answered reports whether a request with r's JSON-RPC id and method was
// answered 200 after r.
func (j *clientJudge) answered(r *clientMCPRequest) bool {
	for _, n := range j.log.mcp {
		if n.seq > r.seq && n.rpcMethod == r.rpcMethod && n.rpcID == r.rpcID && n.status == http.StatusOK {
			return true
		}
	}
	return false
}

// ended says how the run ended.
func (j *clientJudge) ended() string { return "it " + j.run.ended(j.timeout) }

// did summarizes the MCP requests, for details of a scenario that was not
// reached.
func (j *clientJudge) did() string {
	if len(j.log.mcp) == 0 {
		return "no MCP request"
	}
	const maxShown = 8
	var parts []string
	for i, r := range j.log.mcp {
		if i == maxShown {
			parts = append(parts, fmt.Sprintf("… %d more", len(j.log.mcp)-maxShown))
			break
		}
		parts = append(parts, describeRequest(&r)+fmt.Sprintf("→%d", r.status))
	}
	return strings.Join(parts, ", ")
}

// cause names, as " (after …)", the last MCP request answered 401 or 403
// before seq: what led the client to what it did at seq.
func (j *clientJudge) cause(seq int) string {
	var last *clientMCPRequest
	for i := range j.log.mcp {
		r := &j.log.mcp[i]
		if r.seq < seq && (r.status == http.StatusUnauthorized || r.status == http.StatusForbidden) {
			last = r
		}
	}
	if last == nil {
		return ""
	}
	return fmt.Sprintf(" (after %d to its %s)", last.status, describeRequest(last))
}

// describeRequest names a request: "tools/call id 3", "GET".
func describeRequest(r *clientMCPRequest) string {
	switch {
	case r.rpcMethod == "":
		return r.httpMethod
	case r.rpcID == "":
		return r.rpcMethod
	default:
		return r.rpcMethod + " id " + r.rpcID
	}
}

// notReached explains why the scenario's trigger never happened: the client
// did not get as far as sending what the scenario answers.
func (j *clientJudge) notReached(what string) (Outcome, string) {
	codes, codeFail := 0, 0
	for _, t := range j.log.token {
		if t.grantType == oauth.GrantTypeAuthorizationCode {
			if t.status == http.StatusOK {
				codes++
			} else {
				codeFail++
			}
		}
	}
	if codes == 0 {
		return Fail, fmt.Sprintf("never completed an authorization (%d authorization requests, %d refused code grants; MCP: %s) and %s; the scenario needs %s",
			len(j.log.authz), codeFail, j.did(), j.ended(), what)
	}
	return Fail, fmt.Sprintf("authorized but never sent %s (MCP: %s); %s", what, j.did(), j.ended())
}

// logicalRequests groups the requests after seq that were answered 401 into
// logical requests (docs/design.md#client-rule-5): a JSON-RPC request by its
// id, the event stream (every GET, reconnects included), the session's
// DELETE, a notification by its body. It returns how many there are and the
// one sent most often, with its count.
func (j *clientJudge) logicalRequests(seq int) (n int, most *clientMCPRequest, mostSent int) {
	key := func(r *clientMCPRequest) string {
		switch {
		case r.httpMethod != http.MethodPost:
			return r.httpMethod
		case r.rpcID != "":
			return "id " + r.rpcID
		default:
			return "body " + r.bodyHash
		}
	}
	rejected := map[string]bool{}
	sent := map[string]int{}
	for i := range j.log.mcp {
		r := &j.log.mcp[i]
		if r.seq < seq {
			continue
		}
		k := key(r)
		sent[k]++
		if r.status == http.StatusUnauthorized {
			rejected[k] = true
		}
		if r.httpMethod == http.MethodPost && r.rpcID != "" && (most == nil || sent[k] > mostSent) {
			most, mostSent = r, sent[k]
		}
	}
	return len(rejected), most, mostSent
}

// plural formats n with a noun, pluralized with "s".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// times formats a count of repetitions: "once", "twice", "3 times".
func times(n int) string {
	switch n {
	case 1:
		return "once"
	case 2:
		return "twice"
	}
	return fmt.Sprintf("%d times", n)
}

func judgeRetrySameID(j *clientJudge) (Outcome, string) {
	f := j.first("first")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	call := describeRequest(f)
	refs := j.refreshesAfter(f.seq)
	authz := j.authzAfter(f.seq)
	retry := j.next(f)
	switch {
	case len(authz) > 0:
		return Fail, fmt.Sprintf("after 401 invalid_token on %s it ran the authorization flow again (%s, %s) "+
			"instead of refreshing with its refresh token", call, plural(len(authz), "authorization request"), plural(len(refs), "refresh grant"))
	case len(refs) == 0:
		return Fail, fmt.Sprintf("did not refresh after 401 invalid_token on %s; %s", call, j.ended())
	case len(refs) > 1:
		return Fail, fmt.Sprintf("sent %s for one 401 invalid_token on %s (one is enough)", plural(len(refs), "refresh grant"), call)
	case refs[0].status != http.StatusOK:
		return Fail, fmt.Sprintf("its refresh grant was refused (%d %s); see refresh/resource-and-client-auth", refs[0].status, refs[0].errorCode)
	case retry == nil:
		return Fail, fmt.Sprintf("refreshed once but did not send %s again; %s", call, j.ended())
	case retry.rpcID != f.rpcID:
		return Fail, fmt.Sprintf("retried tools/call with a new JSON-RPC id %s (the rejected request had id %s); "+
			"the retry must resend the same request", retry.rpcID, f.rpcID)
	case retry.bodyHash != f.bodyHash:
		return Fail, fmt.Sprintf("retried %s with a different body; the retry must be byte-identical", call)
	case retry.tokenNo == f.tokenNo:
		return Fail, fmt.Sprintf("refreshed but retried %s with the rejected access token", call)
	case retry.tokenNo != refs[0].accessNo:
		return Fail, fmt.Sprintf("refreshed but retried %s with another access token than the refresh returned", call)
	case retry.status != http.StatusOK:
		return Fail, fmt.Sprintf("retried %s with the same body, but the retry was answered %d", call, retry.status)
	case j.run.exitCode != 0:
		return Fail, fmt.Sprintf("refreshed once and retried %s with the same body (answered 200), but then %s; exit 0 expected",
			call, j.run.ended(j.timeout))
	}
	return Pass, fmt.Sprintf("refreshed once (no new authorization) and retried %s with the same body and the new token; exit 0", call)
}

func judgeRotation(j *clientJudge) (Outcome, string) {
	f1 := j.first("first")
	if f1 == nil {
		return j.notReached("tools/list with an access token")
	}
	r1 := j.refreshesAfter(f1.seq)
	switch {
	case len(r1) == 0:
		return Fail, fmt.Sprintf("did not refresh after 401 invalid_token on %s, so rotation was never tested; %s", describeRequest(f1), j.ended())
	case r1[0].status != http.StatusOK:
		return Fail, fmt.Sprintf("its first refresh grant was refused (%d %s), so rotation was never tested", r1[0].status, r1[0].errorCode)
	}
	f2 := j.first("second")
	if f2 == nil {
		return Fail, fmt.Sprintf("refreshed once, but never sent tools/call with the new access token (MCP: %s), so the second expiry "+
			"never came; %s", j.did(), j.ended())
	}
	r2 := j.refreshesAfter(f2.seq)
	if len(r2) == 0 {
		return Fail, fmt.Sprintf("did not refresh after the second 401 invalid_token (on %s); %s", describeRequest(f2), j.ended())
	}
	first, second := r1[0], r2[0]
	// The token the second refresh must present is the newest one issued
	// before it: normally the first refresh's, but a correct client may
	// have refreshed once more in between (for example for its event
	// stream).
	latest := first
	for _, r := range j.refreshesAfter(first.seq - 1) {
		if r.seq < second.seq && r.status == http.StatusOK && r.refreshOut != 0 {
			latest = r
		}
	}
	switch second.refreshNo {
	case latest.refreshOut:
	case first.refreshNo:
		return Fail, "the second refresh presented the first refresh token again instead of the rotated one the first refresh " +
			"returned; the authorization server took it as reuse and revoked the grant (RFC 9700 §4.14.2)"
	case -1:
		return Fail, "the second refresh presented a refresh token this authorization server never issued"
	default:
		return Fail, fmt.Sprintf("the second refresh presented refresh token #%d, not #%d, the newest one issued to it",
			second.refreshNo, latest.refreshOut)
	}
	if second.status != http.StatusOK {
		return Fail, fmt.Sprintf("the second refresh presented the rotated refresh token but was refused (%d %s)", second.status, second.errorCode)
	}
	tail := "and the call went through"
	if !j.answered(f2) {
		tail = fmt.Sprintf("but %s was not answered afterwards; %s", describeRequest(f2), j.ended())
	}
	return Pass, fmt.Sprintf("the second refresh presented the rotated refresh token the first refresh returned, %s", tail)
}

func judgeResourceAndClientAuth(j *clientJudge) (Outcome, string) {
	f := j.first("first")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	if len(refs) == 0 {
		return Fail, fmt.Sprintf("did not refresh after 401 invalid_token on %s, so the refresh grant could not be checked; %s",
			describeRequest(f), j.ended())
	}
	ref := refs[0]
	// What the client registered as; a client not registered here (pre-registered
	// or metadata document) is held to its authorization code grant.
	wantID, wantMethod, source := "", "", ""
	for _, r := range j.log.regs {
		if r.seq < ref.seq && (r.status == http.StatusCreated || r.status == http.StatusOK) {
			wantID, wantMethod, source = r.clientID, r.authMethod, "registered"
		}
	}
	if source == "" {
		for _, t := range j.log.token {
			if t.seq < ref.seq && t.grantType == oauth.GrantTypeAuthorizationCode && t.status == http.StatusOK {
				wantID, wantMethod, source = t.clientID, t.authMethod, "used on its authorization code grant"
			}
		}
	}
	var problems []string
	switch {
	case len(ref.resource) == 0:
		problems = append(problems, fmt.Sprintf("the refresh grant carried no resource parameter (RFC 8707 §2: resource=%s)", j.mcpURL))
	case len(ref.resource) > 1:
		problems = append(problems, fmt.Sprintf("the refresh grant carried %d resource parameters; one, the MCP server, is expected", len(ref.resource)))
	case !oauth.SameResource(ref.resource[0], j.mcpURL):
		problems = append(problems, fmt.Sprintf("the refresh grant carried resource=%s, not the MCP server %s", ref.resource[0], j.mcpURL))
	}
	if source != "" && ref.clientID != wantID {
		problems = append(problems, fmt.Sprintf("the refresh grant named another client_id than the one it %s", source))
	}
	if source != "" && ref.authMethod != wantMethod {
		problems = append(problems, fmt.Sprintf("the refresh grant authenticated with %s, but the client %s %s", ref.authMethod, source, wantMethod))
	}
	if ref.status != http.StatusOK {
		problems = append(problems, fmt.Sprintf("the authorization server refused it (%d %s)", ref.status, ref.errorCode))
	}
	if len(problems) > 0 {
		return Fail, strings.Join(problems, "; ")
	}
	return Pass, fmt.Sprintf("the refresh grant carried resource=%s and the client_id and client authentication (%s) the client %s",
		ref.resource[0], ref.authMethod, source)
}

func judgeInvalidGrant(j *clientJudge) (Outcome, string) {
	f := j.first("first")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	if len(refs) == 0 {
		return Fail, fmt.Sprintf("did not refresh after 401 invalid_token on %s, so the refusal was never tested; %s", describeRequest(f), j.ended())
	}
	refused := refs[0]
	more := refs[1:]
	authz := j.authzAfter(refused.seq)
	switch {
	case len(more) > 0:
		return Fail, fmt.Sprintf("after invalid_grant it sent %d more refresh grants: loops (a refused refresh token must be discarded); %s",
			len(more), j.ended())
	case len(authz) > 1:
		return Fail, fmt.Sprintf("after invalid_grant it ran the authorization %d times: a re-prompt loop; %s", len(authz), j.ended())
	case !j.run.finished():
		return Fail, fmt.Sprintf("after invalid_grant it sent no more refresh grants, but %s", j.run.ended(j.timeout))
	case j.run.exitCode == 0 && len(authz) > 0:
		return Fail, "after invalid_grant it authorized again and exited 0; without a configured interactive sign-in the request " +
			"must fail as needing a new sign-in, and the run exit non-zero"
	case j.run.exitCode == 0:
		return Fail, "after invalid_grant it exited 0; the request must fail as needing a new sign-in, and the run exit non-zero"
	}
	reauth := "did not authorize again"
	if len(authz) == 1 {
		reauth = "authorized again once" + j.cause(authz[0].seq)
	}
	return Pass, fmt.Sprintf("sent one refresh grant, got invalid_grant, sent no more, %s, and exited %d", reauth, j.run.exitCode)
}

func judgeUnavailable(j *clientJudge, o *clientOutage) (Outcome, string) {
	f := j.first("first")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	authz := j.authzAfter(f.seq)
	logical, most, mostSent := j.logicalRequests(f.seq)
	switch {
	case len(refs) == 0:
		return Fail, fmt.Sprintf("did not try to refresh after 401 invalid_token on %s, so the outage was never tested; %s", describeRequest(f), j.ended())
	case len(refs) > logical || len(refs) > clientMaxUnavailableRefreshes:
		return Fail, fmt.Sprintf("sent %s for %s while the token endpoint %s: loops; %s",
			plural(len(refs), "refresh grant"), plural(logical, "rejected request"), o.what, j.ended())
	case mostSent > 2:
		return Fail, fmt.Sprintf("sent %s %s while the token endpoint %s: loops", describeRequest(most), times(mostSent), o.what)
	case len(authz) > 0:
		return Fail, fmt.Sprintf("ran the authorization flow (%s) while the token endpoint was failing; "+
			"the refresh token must be kept and no sign-in started", plural(len(authz), "authorization request"))
	case !j.run.finished():
		return Fail, fmt.Sprintf("sent %s and no more, but %s", plural(len(refs), "refresh grant"), j.run.ended(j.timeout))
	case j.run.exitCode == 0 && !j.answered(f):
		return Fail, fmt.Sprintf("exited 0 though %s never succeeded; the failure must be reported", describeRequest(f))
	}
	kept := ""
	if len(refs) > 1 {
		same := true
		for _, r := range refs[1:] {
			same = same && r.refreshNo == refs[0].refreshNo
		}
		if same {
			kept = ", kept its refresh token (every attempt presented the same one)"
		} else {
			kept = ", presented different refresh tokens"
		}
	}
	return Pass, fmt.Sprintf("sent %s (the token endpoint %s) for %s%s, did not sign in again, and exited %d",
		plural(len(refs), "refresh grant"), o.what, plural(logical, "rejected request"), kept, j.run.exitCode)
}

func judgeRetryCap(j *clientJudge) (Outcome, string) {
	f := j.first("first")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	authz := j.authzAfter(f.seq)
	logical, most, mostSent := j.logicalRequests(f.seq)
	switch {
	case mostSent > 2:
		return Fail, fmt.Sprintf("sent %s and sent %s %s for one request: loops (at most one refresh and one retry per request); %s",
			plural(len(refs), "refresh grant"), describeRequest(most), times(mostSent), j.ended())
	case len(refs) > logical:
		return Fail, fmt.Sprintf("sent %s for %s: loops (at most one refresh per request); %s",
			plural(len(refs), "refresh grant"), plural(logical, "rejected request"), j.ended())
	case len(authz) > 1:
		return Fail, fmt.Sprintf("ran the authorization %d times while every token was rejected: loops; %s", len(authz), j.ended())
	case !j.run.finished():
		return Fail, fmt.Sprintf("sent %s and no more, but %s", plural(len(refs), "refresh grant"), j.run.ended(j.timeout))
	case len(refs) == 0:
		return Pass, fmt.Sprintf("sent no refresh grant at all (nothing to cap; refresh/retry-same-id judges that) and exited %d", j.run.exitCode)
	}
	sent := 0
	for _, r := range j.log.mcp {
		if r.seq >= f.seq && r.rpcMethod == f.rpcMethod && r.rpcID == f.rpcID {
			sent++
		}
	}
	return Pass, fmt.Sprintf("sent %s %s in all and %s for %s, then gave up and exited %d",
		describeRequest(f), times(sent), plural(len(refs), "refresh grant"), plural(logical, "rejected request"), j.run.exitCode)
}

func judgeNoRefreshOn403(j *clientJudge) (Outcome, string) {
	f := j.first("forbidden")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	authz := j.authzAfter(f.seq)
	switch {
	case len(refs) > 0:
		return Fail, fmt.Sprintf("sent %s after 403 insufficient_scope on %s; a refresh cannot add scopes: "+
			"step up with a new authorization, or report the error", plural(len(refs), "refresh grant"), describeRequest(f))
	case len(authz) > 1:
		return Fail, fmt.Sprintf("after 403 insufficient_scope it ran the authorization %d times: a step-up loop (once is enough)", len(authz))
	case !j.run.finished():
		return Fail, fmt.Sprintf("sent no refresh grant, but %s", j.run.ended(j.timeout))
	case len(authz) == 1:
		res := "but the call was not answered afterwards"
		if j.answered(f) {
			res = "and the call then went through"
		}
		return Pass, fmt.Sprintf("no refresh grant; stepped up once (authorization for scope %q) %s; exited %d", authz[0].scope, res, j.run.exitCode)
	}
	return Pass, fmt.Sprintf("no refresh grant after 403 insufficient_scope on %s; no step-up; exited %d", describeRequest(f), j.run.exitCode)
}

func judgeNoRefreshOnBare401(j *clientJudge) (Outcome, string) {
	f := j.first("bare")
	if f == nil {
		return j.notReached("tools/call with an access token")
	}
	refs := j.refreshesAfter(f.seq)
	authz := j.authzAfter(f.seq)
	switch {
	case len(refs) > 0:
		return Fail, fmt.Sprintf("sent %s after a 401 without error on %s; only error=\"invalid_token\" calls for a refresh",
			plural(len(refs), "refresh grant"), describeRequest(f))
	case len(authz) > 1:
		return Fail, fmt.Sprintf("after a 401 without error it ran the authorization %d times: loops", len(authz))
	case !j.run.finished():
		return Fail, fmt.Sprintf("sent no refresh grant, but %s", j.run.ended(j.timeout))
	case len(authz) == 1:
		return Pass, fmt.Sprintf("no refresh grant after a 401 without error on %s; authorized again once; exited %d", describeRequest(f), j.run.exitCode)
	}
	return Pass, fmt.Sprintf("no refresh grant after a 401 without error on %s; exited %d", describeRequest(f), j.run.exitCode)
}

func judgeProactive(j *clientJudge) (Outcome, string) {
	h := j.first("held")
	if h == nil {
		_, d := j.notReached("tools/list with an access token")
		return Info, "could not judge: " + d
	}
	expired := j.tagged("expired")
	refs := j.refreshesAfter(0)
	if len(expired) == 0 {
		if len(refs) > 0 {
			return Info, fmt.Sprintf("refreshed before the access token expired (%s; no request went out with an expired token)",
				plural(len(refs), "refresh grant"))
		}
		return Info, fmt.Sprintf("sent no request after the access token expired, and never refreshed; %s", j.ended())
	}
	e := expired[0]
	after := j.refreshesAfter(e.seq)
	then := "it did not refresh then"
	if len(after) > 0 {
		then = "it refreshed only then"
	}
	return Info, fmt.Sprintf("did not refresh ahead of expiry: sent %s with an access token that had expired %s earlier and got 401 invalid_token; %s",
		describeRequest(&e), e.expiredBy.Round(10*time.Millisecond), then)
}
