package oidcinterop

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestParseForms(t *testing.T) {
	page := `<!DOCTYPE html><html><head><title>Sign &amp; in</title>
<style>.a > .b { color: red }</style></head><body>
<!-- <form action="/commented-out" method="post"></form> -->
<form action="/search"><input name=q value='x > y'></form>
<FORM autocomplete="off" action="http://127.0.0.1:1/interaction/abc?x=1&amp;y=2" method="POST">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
  <input required type="password" name="password">
  <input type="checkbox" name="remember" value="yes" checked>
  <input type="checkbox" name="spam" value="yes">
  <button type="submit" name="action" value="ok">Sign-in</button>
  <button type="submit" name="other" value="no">Other</button>
</FORM></body></html>`
	forms := ParseForms(page)
	want := []Form{
		{Action: "/search", Method: "GET", Inputs: []Input{{Type: "text", Name: "q", Value: "x > y"}}},
		{
			Action: "http://127.0.0.1:1/interaction/abc?x=1&y=2", Method: "POST",
			Inputs: []Input{
				{Type: "hidden", Name: "prompt", Value: "login"},
				{Type: "text", Name: "login"},
				{Type: "password", Name: "password"},
				{Type: "checkbox", Name: "remember", Value: "yes", Checked: true},
				{Type: "checkbox", Name: "spam", Value: "yes"},
			},
			Submitter: Input{Type: "submit", Name: "action", Value: "ok"},
		},
	}
	if !reflect.DeepEqual(forms, want) {
		t.Errorf("ParseForms:\n got %+v\nwant %+v", forms, want)
	}
	if got := pageTitle(page); got != "Sign & in" {
		t.Errorf("pageTitle = %q", got)
	}
}

// TestFormAuthorizer runs the authorizer against a small server with a
// login page, a consent page and a session cookie: the first authorization
// submits both forms, the second finds the session and submits none.
func TestFormAuthorizer(t *testing.T) {
	var posted []url.Values
	mux := http.NewServeMux()
	finish := func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1/callback?code=c1&state=s1", http.StatusSeeOther)
	}
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		if c, err := r.Cookie("session"); err == nil && c.Value == "alice" {
			finish(w, r)
			return
		}
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<html><title>Sign in</title><form method="post" action="/login">
<input type="hidden" name="csrf" value="t0k"><input name="user"><input type="password" name="pw">
<button>Sign in</button></form></html>`)
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		posted = append(posted, r.PostForm)
		http.SetCookie(w, &http.Cookie{Name: "session", Value: r.PostForm.Get("user"), Path: "/"})
		http.Redirect(w, r, "/consent", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /consent", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<form action="consent" method="post"><input type="hidden" name="prompt" value="consent"/><button type="submit">Continue</button></form>`)
	})
	mux.HandleFunc("POST /consent", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		posted = append(posted, r.PostForm)
		finish(w, r)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	a := NewFormAuthorizer("alice", "secret")
	for i, wantForms := range []int64{2, 2} {
		q, err := a.Authorize(t.Context(), srv.URL+"/authorize?scope=a+b&prompt=consent")
		if err != nil {
			t.Fatalf("authorization %d: %v", i, err)
		}
		if q.Get("code") != "c1" || q.Get("state") != "s1" {
			t.Errorf("authorization %d: redirect query %v", i, q)
		}
		if c := a.Counts(); c.LoginForms+c.OtherForms != wantForms {
			t.Errorf("authorization %d: %+v; want %d forms in all", i, c, wantForms)
		}
	}
	want := []url.Values{
		{"csrf": {"t0k"}, "user": {"alice"}, "pw": {"secret"}},
		{"prompt": {"consent"}},
	}
	if !reflect.DeepEqual(posted, want) {
		t.Errorf("posted %v, want %v", posted, want)
	}
	if c := a.Counts(); c != (FormCounts{Authorizations: 2, LoginForms: 1, OtherForms: 1}) {
		t.Errorf("counts %+v", c)
	}
	if scope, prompt := a.LastRequest(); scope != "a b" || prompt != "consent" {
		t.Errorf("LastRequest = %q, %q", scope, prompt)
	}

	// A page without a form is an error naming the page, not a hang.
	mux.HandleFunc("GET /oops", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `<html><title>oops! something went wrong</title><p>bad request</p></html>`)
	})
	if _, err := a.Authorize(t.Context(), srv.URL+"/oops"); err == nil || !strings.Contains(err.Error(), "oops! something went wrong") {
		t.Errorf("a page without a form: err = %v", err)
	}
}
