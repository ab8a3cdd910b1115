package authserver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/authserver"
)

// secretLedger records every secret value a test sees, and every error
// response body, so both can be checked against the logs afterwards.
type secretLedger struct {
	t       *testing.T
	secrets map[string]string // value -> what it is
	errors  []string          // bodies (and Location queries) of error answers
}

func (l *secretLedger) add(kind, v string) {
	l.t.Helper()
	if v == "" {
		l.t.Fatalf("empty %s recorded as a secret", kind)
	}
	l.secrets[v] = kind
}

// addJWT records an access token as a whole and each of its three parts.
func (l *secretLedger) addJWT(kind, tok string) {
	l.t.Helper()
	l.add(kind, tok)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		l.t.Fatalf("%s is not a JWS compact serialization", kind)
	}
	for i, name := range []string{"header", "payload", "signature"} {
		l.add(kind+" "+name, parts[i])
	}
}

// addTokens records the tokens of a successful token response.
func (l *secretLedger) addTokens(kind string, m map[string]any) {
	l.t.Helper()
	l.addJWT(kind+" access token", str(m, "access_token"))
	if rt := str(m, "refresh_token"); rt != "" {
		l.add(kind+" refresh token", rt)
	}
}

// call posts a form to an endpoint, records error answers, and returns the
// status and decoded body.
func (l *secretLedger) call(e *env, path string, form url.Values, basic []string) (int, map[string]any) {
	l.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.URL(path), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic != nil {
		req.SetBasicAuth(url.QueryEscape(basic[0]), url.QueryEscape(basic[1]))
	}
	return l.do(e, req)
}

func (l *secretLedger) do(e *env, req *http.Request) (int, map[string]any) {
	l.t.Helper()
	r, err := e.Client.Do(req)
	if err != nil {
		l.t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode >= 300 {
		l.errors = append(l.errors, string(b), r.Header.Get("Location"), r.Header.Get("WWW-Authenticate"))
	}
	var m map[string]any
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") && len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			l.t.Fatalf("%s: %v", req.URL.Path, err)
		}
	}
	return r.StatusCode, m
}

// authorize runs an authorization request and returns the redirect query;
// error redirects are recorded.
func (l *secretLedger) authorize(e *env, q url.Values, redirect string) url.Values {
	l.t.Helper()
	r := e.Authorize(q)
	got := redirectParams(l.t, r, redirect)
	if got.Get("error") != "" {
		l.errors = append(l.errors, r.Header.Get("Location"))
	}
	return got
}

func (l *secretLedger) register(e *env, md map[string]any) map[string]any {
	l.t.Helper()
	b, _ := json.Marshal(md)
	req, _ := http.NewRequest(http.MethodPost, e.URL(authserver.PathRegister), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	st, m := l.do(e, req)
	if st != http.StatusCreated {
		l.t.Fatalf("register: %d %v", st, m)
	}
	return m
}

func (l *secretLedger) want(what string, st, status int, m map[string]any, code string) {
	l.t.Helper()
	if st != status || (code != "" && str(m, "error") != code) {
		l.t.Fatalf("%s: %d %v, want %d %s", what, st, m, status, code)
	}
}

// logMessages returns the "msg" of every JSON log record.
func logMessages(t *testing.T, logs string) map[string]int {
	t.Helper()
	msgs := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		msgs[str(rec, "msg")]++
	}
	return msgs
}

func TestLogsContainNoSecrets(t *testing.T) {
	led := &secretLedger{t: t, secrets: map[string]string{}}
	const appRedirect = "https://app.example.test/cb"
	led.add("pre-registered client secret", rsClientSecret)
	led.add("pre-registered client secret", postSecret)

	e := newEnv(t, nil)
	tok := func(form url.Values, basic []string) (int, map[string]any) {
		return led.call(e, authserver.PathToken, form, basic)
	}
	codeForm := func(code, verifier, redirect string) url.Values {
		return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
			"code_verifier": {verifier}, "resource": {testResource}}
	}
	newCode := func(clientID, redirect string) (code, verifier string) {
		verifier, challenge := pkce()
		led.add("code verifier", verifier)
		led.add("code challenge", challenge)
		var q url.Values
		if redirect == appRedirect {
			// A self-registered client whose redirect URI is not on
			// loopback gets the consent page even with AutoApprove.
			page := getConsent(t, e, authParams(clientID, redirect, challenge))
			led.add("CSRF token", page.csrf)
			led.add("consent request id", page.request)
			r, _ := submitConsent(t, e, page.form("approve"), page.cookie)
			q = redirectParams(t, r, redirect)
		} else {
			q = led.authorize(e, authParams(clientID, redirect, challenge), redirect)
		}
		code = q.Get("code")
		led.add("authorization code", code)
		return code, verifier
	}

	// Dynamic registration: a confidential client and a public one.
	conf := led.register(e, map[string]any{
		"redirect_uris": []string{appRedirect}, "token_endpoint_auth_method": "client_secret_basic",
		"grant_types": []string{"authorization_code", "refresh_token"}, "client_name": "confidential",
	})
	confID, confSecret := str(conf, "client_id"), str(conf, "client_secret")
	led.add("client secret", confSecret)
	basic := []string{confID, confSecret}
	pub := led.register(e, map[string]any{
		"redirect_uris": []string{loopbackRedir}, "token_endpoint_auth_method": "none",
		"grant_types": []string{"authorization_code", "refresh_token"}, "client_name": "public",
	})
	pubID := str(pub, "client_id")

	// Confidential client: code, exchange, refresh, reuse of the rotated
	// refresh token (revokes the grant), replay of the code.
	code, verifier := newCode(confID, appRedirect)
	st, first := tok(codeForm(code, verifier, appRedirect), basic)
	led.want("exchange", st, http.StatusOK, first, "")
	led.addTokens("confidential", first)
	st, second := tok(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(first, "refresh_token")}}, basic)
	led.want("refresh", st, http.StatusOK, second, "")
	led.addTokens("confidential refreshed", second)
	st, m := tok(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(first, "refresh_token")}}, basic)
	led.want("rotated refresh token reuse", st, http.StatusBadRequest, m, "invalid_grant")
	st, m = tok(codeForm(code, verifier, appRedirect), basic)
	led.want("code replay", st, http.StatusBadRequest, m, "invalid_grant")

	// Wrong client secret (the code survives), then a wrong PKCE verifier.
	code, verifier = newCode(confID, appRedirect)
	wrongSecret, _ := pkce()
	led.add("wrong client secret", wrongSecret)
	st, m = tok(codeForm(code, verifier, appRedirect), []string{confID, wrongSecret})
	led.want("wrong client secret", st, http.StatusUnauthorized, m, "invalid_client")
	st, m = tok(url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appRedirect},
		"code_verifier": {verifier}, "client_id": {confID}, "client_secret": {wrongSecret}}, nil)
	led.want("client_secret_basic client using client_secret_post", st, http.StatusUnauthorized, m, "invalid_client")
	wrongVerifier, _ := pkce()
	led.add("wrong code verifier", wrongVerifier)
	st, m = tok(codeForm(code, wrongVerifier, appRedirect), basic)
	led.want("wrong code verifier", st, http.StatusBadRequest, m, "invalid_grant")
	// A verifier that is not even syntactically valid, and a redirect mismatch.
	code, verifier = newCode(confID, appRedirect)
	st, m = tok(codeForm(code, verifier+"!", appRedirect), basic)
	led.want("malformed code verifier", st, http.StatusBadRequest, m, "invalid_grant")
	led.add("malformed code verifier", verifier+"!")
	code, verifier = newCode(confID, appRedirect)
	st, m = tok(codeForm(code, verifier, appRedirect+"x"), basic)
	led.want("redirect mismatch at exchange", st, http.StatusBadRequest, m, "invalid_grant")

	// Public client: exchange, refresh, introspection, revocation.
	code, verifier = newCode(pubID, loopbackRedir)
	form := codeForm(code, verifier, loopbackRedir)
	form.Set("client_id", pubID)
	st, pubTok := tok(form, nil)
	led.want("public exchange", st, http.StatusOK, pubTok, "")
	led.addTokens("public", pubTok)
	st, pubTok2 := tok(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(pubTok, "refresh_token")}, "client_id": {pubID}}, nil)
	led.want("public refresh", st, http.StatusOK, pubTok2, "")
	led.addTokens("public refreshed", pubTok2)
	// The public client presents the confidential client's refresh token.
	st, m = tok(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(second, "refresh_token")}, "client_id": {pubID}}, nil)
	led.want("refresh token of another client", st, http.StatusBadRequest, m, "invalid_grant")

	rs := []string{rsClientID, rsClientSecret}
	for _, tk := range []string{str(pubTok2, "access_token"), str(pubTok2, "refresh_token"), str(first, "access_token")} {
		st, m = led.call(e, authserver.PathIntrospect, url.Values{"token": {tk}}, rs)
		led.want("introspection", st, http.StatusOK, m, "")
	}
	st, m = led.call(e, authserver.PathIntrospect, url.Values{"token": {str(pubTok2, "access_token")}}, []string{rsClientID, wrongSecret})
	led.want("introspection with a wrong secret", st, http.StatusUnauthorized, m, "invalid_client")
	st, m = led.call(e, authserver.PathIntrospect, url.Values{"token": {str(pubTok2, "access_token")}, "client_id": {pubID}}, nil)
	led.want("introspection by a public client", st, http.StatusUnauthorized, m, "invalid_client")

	st, m = led.call(e, authserver.PathRevoke, url.Values{"token": {str(pubTok2, "access_token")}, "client_id": {pubID}}, nil)
	led.want("revoke access token", st, http.StatusOK, m, "")
	st, m = led.call(e, authserver.PathRevoke, url.Values{"token": {str(pubTok2, "refresh_token")}, "client_id": {pubID}, "token_type_hint": {"refresh_token"}}, nil)
	led.want("revoke refresh token", st, http.StatusOK, m, "")
	st, m = led.call(e, authserver.PathRevoke, url.Values{"token": {str(second, "access_token")}, "client_id": {pubID}}, nil)
	led.want("revoke another client's token", st, http.StatusBadRequest, m, "")
	st, m = tok(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(pubTok2, "refresh_token")}, "client_id": {pubID}}, nil)
	led.want("refresh after revocation", st, http.StatusBadRequest, m, "invalid_grant")

	// client_secret_post pre-registered client, then revoke its grants
	// through the API.
	code, verifier = newCode(postClientID, loopbackRedir)
	form = codeForm(code, verifier, loopbackRedir)
	form.Set("client_id", postClientID)
	form.Set("client_secret", postSecret)
	st, postTok := tok(form, nil)
	led.want("client_secret_post exchange", st, http.StatusOK, postTok, "")
	led.addTokens("client_secret_post", postTok)
	if n, err := e.AS.RevokeGrants(context.Background(), authserver.GrantFilter{ClientID: postClientID}); err != nil || n != 1 {
		t.Fatalf("RevokeGrants = %d, %v", n, err)
	}
	form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {str(postTok, "refresh_token")}, "client_id": {postClientID}, "client_secret": {postSecret}}
	st, m = tok(form, nil)
	led.want("refresh after RevokeGrants", st, http.StatusBadRequest, m, "invalid_grant")

	// Authorization errors that are redirected (they carry no secrets, but
	// their descriptions are checked all the same).
	_, challenge := pkce()
	q := authParams(pubID, loopbackRedir, challenge)
	q.Set("code_challenge_method", "plain")
	if got := led.authorize(e, q, loopbackRedir); got.Get("error") != "invalid_request" {
		t.Fatalf("plain PKCE: %v", got)
	}

	// A second server with the consent page.
	c := newEnv(t, func(cfg *authserver.Config) { cfg.AutoApprove = false })
	cID := c.RegisterPublic(loopbackRedir)
	verifier, challenge = pkce()
	led.add("code verifier", verifier)
	led.add("code challenge", challenge)
	page := getConsent(t, c, authParams(cID, loopbackRedir, challenge))
	led.add("CSRF token", page.csrf)
	led.add("consent request id", page.request)
	r, body := submitConsent(t, c, url.Values{"request": {page.request}, "csrf": {"forged"}, "action": {"approve"}}, page.cookie)
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("forged consent: %d", r.StatusCode)
	}
	led.errors = append(led.errors, body)
	r, _ = submitConsent(t, c, page.form("approve"), page.cookie)
	q = redirectParams(t, r, loopbackRedir)
	led.add("authorization code", q.Get("code"))
	st, m = c.Exchange(cID, loopbackRedir, q.Get("code"), verifier)
	led.want("exchange after consent", st, http.StatusOK, m, "")
	led.addTokens("consented", m)
	r, body = submitConsent(t, c, page.form("approve"), page.cookie)
	if r.StatusCode != http.StatusForbidden {
		t.Fatalf("replayed consent: %d", r.StatusCode)
	}
	led.errors = append(led.errors, body)
	page = getConsent(t, c, authParams(cID, loopbackRedir, challenge))
	led.add("CSRF token", page.csrf)
	r, _ = submitConsent(t, c, page.form("deny"), page.cookie)
	if q := redirectParams(t, r, loopbackRedir); q.Get("error") != "access_denied" {
		t.Fatalf("deny: %v", q)
	}
	led.errors = append(led.errors, r.Header.Get("Location"))

	// The checks.
	logs := e.Logs.String() + c.Logs.String()
	if strings.TrimSpace(e.Logs.String()) == "" || strings.TrimSpace(c.Logs.String()) == "" {
		t.Fatal("a server logged nothing")
	}
	for v, kind := range led.secrets {
		if strings.Contains(logs, v) {
			t.Errorf("the logs contain a %s", kind)
		}
		for _, b := range led.errors {
			if strings.Contains(b, v) {
				t.Errorf("an error response contains a %s: %s", kind, b)
			}
		}
	}
	msgs := logMessages(t, logs)
	for _, want := range []string{
		"client registered",
		"authorization code issued",
		"tokens issued",
		"rotated refresh token reused; grant revoked",
		"authorization code replayed; grant revoked",
		"client authentication refused",
		"token request refused",
		"refresh token presented by another client",
		"access token revoked",
		"refresh token revoked; grant revoked",
		"grants revoked",
		"authorization refused",
		"consent refused",
		"authorization denied by user",
	} {
		if msgs[want] == 0 {
			t.Errorf("no log record %q; got %v", want, msgs)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
}
