package oauth_test

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/oauth"
)

type params = map[string]string

func TestParseChallenges(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []oauth.Challenge
	}{
		{
			name:   "RFC 9110 §11.6.1 example",
			values: []string{`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`},
			want: []oauth.Challenge{
				{Scheme: "Newauth", Params: params{"realm": "apps", "type": "1", "title": `Login to "apps"`}},
				{Scheme: "Basic", Params: params{"realm": "simple"}},
			},
		},
		{
			name:   "token68",
			values: []string{`Basic dXNlcjpwYXNz`},
			want:   []oauth.Challenge{{Scheme: "Basic", Token68: "dXNlcjpwYXNz"}},
		},
		{
			name:   "token68 with padding and slash, then another challenge",
			values: []string{`Negotiate a/b+c==, Bearer realm="x"`},
			want: []oauth.Challenge{
				{Scheme: "Negotiate", Token68: "a/b+c=="},
				{Scheme: "Bearer", Params: params{"realm": "x"}},
			},
		},
		{
			name:   "token68 that looks like a parameter name",
			values: []string{`Basic realm`},
			want:   []oauth.Challenge{{Scheme: "Basic", Token68: "realm"}},
		},
		{
			name:   "RFC 6750 §3 example",
			values: []string{`Bearer realm="example"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "example"}}},
		},
		{
			// The RFC folds the line; HTTP/1.1 parsers replace obs-fold
			// with spaces (RFC 9112 §5.2) and HTTP/2 has none.
			name: "RFC 6750 §3 invalid_token example",
			values: []string{`Bearer realm="example", ` +
				`error="invalid_token", ` +
				`error_description="The access token expired"`},
			want: []oauth.Challenge{{Scheme: "Bearer", Params: params{
				"realm": "example", "error": "invalid_token", "error_description": "The access token expired",
			}}},
		},
		{
			name:   "RFC 9728 §5.1 example",
			values: []string{`Bearer resource_metadata="https://resource.example.com/.well-known/oauth-protected-resource"`},
			want: []oauth.Challenge{{Scheme: "Bearer", Params: params{
				"resource_metadata": "https://resource.example.com/.well-known/oauth-protected-resource",
			}}},
		},
		{
			name:   "RFC 9728 §5.2 example",
			values: []string{`Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource"`},
			want: []oauth.Challenge{{Scheme: "Bearer", Params: params{
				"error": "insufficient_scope", "scope": "files:read files:write",
				"resource_metadata": "https://mcp.example.com/.well-known/oauth-protected-resource",
			}}},
		},
		{
			name:   "challenges across field lines",
			values: []string{`Basic realm="a"`, `Bearer error="invalid_token"`, `Negotiate`},
			want: []oauth.Challenge{
				{Scheme: "Basic", Params: params{"realm": "a"}},
				{Scheme: "Bearer", Params: params{"error": "invalid_token"}},
				{Scheme: "Negotiate"},
			},
		},
		{
			name:   "schemes without parameters",
			values: []string{`Negotiate, NTLM`},
			want:   []oauth.Challenge{{Scheme: "Negotiate"}, {Scheme: "NTLM"}},
		},
		{
			name:   "mixed case scheme and parameter names",
			values: []string{`bEaReR Realm="x", ERROR=invalid_token`},
			want:   []oauth.Challenge{{Scheme: "bEaReR", Params: params{"realm": "x", "error": "invalid_token"}}},
		},
		{
			name:   "empty list elements and BWS around '='",
			values: []string{`, ,Bearer realm = "x" ,, error=	"invalid_token",,  ,Basic realm="y",`},
			want: []oauth.Challenge{
				{Scheme: "Bearer", Params: params{"realm": "x", "error": "invalid_token"}},
				{Scheme: "Basic", Params: params{"realm": "y"}},
			},
		},
		{
			name:   "escapes in quoted-string",
			values: []string{`Bearer realm="a\\b\"c\d", error_description="tab\	and space\ "`},
			want: []oauth.Challenge{{Scheme: "Bearer", Params: params{
				"realm": `a\b"cd`, "error_description": "tab\tand space ",
			}}},
		},
		{
			name:   "comma and equals inside quoted-string",
			values: []string{`Bearer realm="a, Basic b=c", scope="x"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "a, Basic b=c", "scope": "x"}}},
		},
		{
			name:   "empty quoted-string",
			values: []string{`Bearer realm=""`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": ""}}},
		},
		{
			name:   "obs-text in quoted-string",
			values: []string{"Bearer realm=\"caf\xc3\xa9\""},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "café"}}},
		},
		{
			name:   "no values",
			values: nil,
			want:   nil,
		},
		{
			name:   "only separators",
			values: []string{"", " ,\t, "},
			want:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oauth.ParseChallenges(tt.values)
			if err != nil {
				t.Errorf("ParseChallenges(%q) error: %v", tt.values, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseChallenges(%q)\n got %#v\nwant %#v", tt.values, got, tt.want)
			}
		})
	}
}

// Malformed input: every challenge that could be read is returned together
// with an error wrapping ErrMalformedChallenge.
func TestParseChallengesMalformed(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   []oauth.Challenge
	}{
		{
			name:   "unterminated quote",
			values: []string{`Bearer realm="abc`},
			want:   []oauth.Challenge{{Scheme: "Bearer"}},
		},
		{
			name:   "unterminated quote keeps earlier parameters",
			values: []string{`Bearer error="invalid_token", realm="abc\`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "invalid_token"}}},
		},
		{
			name:   "'=' alone",
			values: []string{`=`},
			want:   nil,
		},
		{
			name:   "'=' alone before a challenge",
			values: []string{`=, Bearer realm="x"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "x"}}},
		},
		{
			name:   "parameter without a scheme",
			values: []string{`realm="x"`, `Bearer error="invalid_token"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "invalid_token"}}},
		},
		{
			name:   "parameter after token68",
			values: []string{`Basic abc=, realm="x"`},
			want:   []oauth.Challenge{{Scheme: "Basic", Token68: "abc="}},
		},
		{
			name:   "control character in quoted-string",
			values: []string{"Bearer error=\"invalid_token\", error_description=\"bad\x01thing\", scope=\"a\""},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "invalid_token", "scope": "a"}}},
		},
		{
			name:   "CR LF in quoted-string",
			values: []string{"Bearer realm=\"a\r\nb\""},
			want:   []oauth.Challenge{{Scheme: "Bearer"}},
		},
		{
			name:   "control character after scheme",
			values: []string{"Bearer\x00realm=\"x\", Basic"},
			want:   []oauth.Challenge{{Scheme: "Bearer"}, {Scheme: "Basic"}},
		},
		{
			name:   "missing value",
			values: []string{`Bearer error="invalid_token", realm=, scope="a"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "invalid_token", "scope": "a"}}},
		},
		{
			// "realm=" is a token68 by the grammar; what follows cannot
			// belong to a token68 challenge.
			name:   "token68 form of a missing value",
			values: []string{`Bearer realm=, error="invalid_token"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Token68: "realm="}},
		},
		{
			name:   "junk after a value",
			values: []string{`Bearer realm="x" junk, error="invalid_token"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "x", "error": "invalid_token"}}},
		},
		{
			name:   "repeated parameter: first wins",
			values: []string{`Bearer error="invalid_token", error="insufficient_scope"`},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "invalid_token"}}},
		},
		{
			name:   "quoted string in place of a scheme",
			values: []string{`"Bearer", Basic`},
			want:   []oauth.Challenge{{Scheme: "Basic"}},
		},
		{
			name:   "bad character after scheme",
			values: []string{`Bearer/1 realm="x"`},
			want:   []oauth.Challenge{{Scheme: "Bearer"}},
		},
		{
			name:   "invalid quoted-pair",
			values: []string{"Bearer realm=\"a\\\x7fb\", error=x"},
			want:   []oauth.Challenge{{Scheme: "Bearer", Params: params{"error": "x"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := oauth.ParseChallenges(tt.values)
			if !errors.Is(err, oauth.ErrMalformedChallenge) {
				t.Errorf("ParseChallenges(%q) error = %v, want ErrMalformedChallenge", tt.values, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseChallenges(%q)\n got %#v\nwant %#v", tt.values, got, tt.want)
			}
		})
	}
}

func TestParseChallengesLimits(t *testing.T) {
	t.Run("MaxChallenges", func(t *testing.T) {
		v := strings.Repeat("Basic, ", oauth.MaxChallenges) + "Bearer"
		got, err := oauth.ParseChallenges([]string{v})
		if !errors.Is(err, oauth.ErrMalformedChallenge) {
			t.Errorf("error = %v, want ErrMalformedChallenge", err)
		}
		if len(got) != oauth.MaxChallenges {
			t.Errorf("got %d challenges, want %d", len(got), oauth.MaxChallenges)
		}
		if _, ok := oauth.ParseBearerChallenge(http.Header{"Www-Authenticate": {v}}); ok {
			t.Error("ParseBearerChallenge found the Bearer challenge beyond MaxChallenges")
		}
	})
	t.Run("MaxChallengeBytes", func(t *testing.T) {
		big := `Basic realm="` + strings.Repeat("x", oauth.MaxChallengeBytes) + `"`
		got, err := oauth.ParseChallenges([]string{`Bearer realm="first"`, big, `Bearer realm="last"`})
		if !errors.Is(err, oauth.ErrMalformedChallenge) {
			t.Errorf("error = %v, want ErrMalformedChallenge", err)
		}
		want := []oauth.Challenge{{Scheme: "Bearer", Params: params{"realm": "first"}}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %#v, want %#v", got, want)
		}
	})
	t.Run("many parameters stay within the byte limit", func(t *testing.T) {
		v := "Bearer " + strings.Repeat("a=b, ", oauth.MaxChallengeBytes/5-2)
		got, err := oauth.ParseChallenges([]string{v})
		if len(got) != 1 {
			t.Fatalf("got %d challenges, want 1 (err %v)", len(got), err)
		}
	})
}

func TestParseWWWAuthenticate(t *testing.T) {
	h := http.Header{}
	h.Add("WWW-Authenticate", `Basic realm="a"`)
	h.Add("www-authenticate", `Bearer error="invalid_token"`) // Add canonicalises the name
	h.Add("Www-Authenticate", `Bearer realm="b"`)
	got, err := oauth.ParseWWWAuthenticate(h)
	if err != nil {
		t.Fatal(err)
	}
	want := []oauth.Challenge{
		{Scheme: "Basic", Params: params{"realm": "a"}},
		{Scheme: "Bearer", Params: params{"error": "invalid_token"}},
		{Scheme: "Bearer", Params: params{"realm": "b"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
}

func TestChallengeIs(t *testing.T) {
	c := oauth.Challenge{Scheme: "BEARER"}
	if !c.Is("Bearer") || !c.Is("bearer") || c.Is("Basic") || c.Is("Bearer ") {
		t.Errorf("Is misbehaves for %q", c.Scheme)
	}
}

func TestChallengeString(t *testing.T) {
	tests := []struct {
		c    oauth.Challenge
		want string
	}{
		{oauth.Challenge{Scheme: "Negotiate"}, `Negotiate`},
		{oauth.Challenge{Scheme: "Basic", Token68: "dXNlcjpwYXNz"}, `Basic dXNlcjpwYXNz`},
		{oauth.Challenge{Scheme: "Basic", Token68: "abc=", Params: params{"realm": "x"}}, `Basic abc=`},
		{oauth.Challenge{Scheme: "Basic", Token68: "not token68"}, `Basic`},
		{
			oauth.Challenge{Scheme: "Newauth", Params: params{"realm": "apps", "type": "1", "title": `Login to "apps"`}},
			`Newauth realm="apps", title="Login to \"apps\"", type="1"`,
		},
		{oauth.Challenge{Scheme: "X", Params: params{"a": `back\slash`}}, `X a="back\\slash"`},
		{oauth.Challenge{Scheme: "X", Params: params{"a": "line\r\nbreak\x00"}}, `X a="line  break "`},
		{oauth.Challenge{Scheme: "X", Params: params{"bad name": "v", "ok": "v"}}, `X ok="v"`},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

// Challenge.String followed by ParseChallenges gives the challenges back.
func TestChallengeRoundTrip(t *testing.T) {
	values := []string{
		`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`,
		`Basic dXNlcjpwYXNz, Bearer error="invalid_token", error_description="a\\b"`,
		"Bearer realm=\"tab\there\", scope=\"a b\"",
	}
	cs, err := oauth.ParseChallenges(values)
	if err != nil {
		t.Fatal(err)
	}
	var formatted []string
	for _, c := range cs {
		formatted = append(formatted, c.String())
	}
	again, err := oauth.ParseChallenges([]string{strings.Join(formatted, ", ")})
	if err != nil {
		t.Fatalf("reparse of %q: %v", formatted, err)
	}
	if !reflect.DeepEqual(again, cs) {
		t.Errorf("round trip\n got %#v\nwant %#v", again, cs)
	}
}

func TestBearerChallengeString(t *testing.T) {
	tests := []struct {
		name string
		b    oauth.BearerChallenge
		want string
	}{
		{"empty", oauth.BearerChallenge{}, `Bearer`},
		{
			"no token (server-rule-2)",
			oauth.BearerChallenge{ResourceMetadata: "https://mcp.example.com/.well-known/oauth-protected-resource/mcp", Scope: []string{"files:read"}},
			`Bearer scope="files:read", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"`,
		},
		{
			"all parameters in order",
			oauth.BearerChallenge{
				Realm: "example", Error: oauth.ErrorInsufficientScope, ErrorDescription: "need more",
				ErrorURI: "https://ex.com/e", Scope: []string{"a", "b"}, ResourceMetadata: "https://ex.com/rm",
			},
			`Bearer realm="example", error="insufficient_scope", error_description="need more", error_uri="https://ex.com/e", scope="a b", resource_metadata="https://ex.com/rm"`,
		},
		{
			"realm escapes",
			oauth.BearerChallenge{Realm: `say "hi" \o/`},
			`Bearer realm="say \"hi\" \\o/"`,
		},
		{
			"description outside the RFC 6750 set",
			oauth.BearerChallenge{Error: oauth.ErrorInvalidToken, ErrorDescription: "token \"abc\" expired\r\nSet-Cookie: x=1 \\ café\x7f"},
			`Bearer error="invalid_token", error_description="token 'abc' expired  Set-Cookie: x=1 / caf??"`,
		},
		{
			"CR LF in realm",
			oauth.BearerChallenge{Realm: "a\r\nb"},
			`Bearer realm="a  b"`,
		},
		{
			"scope tokens",
			oauth.BearerChallenge{Scope: []string{"a", "", "a", "b\"c", "d e", "é"}},
			`Bearer scope="a b?c d?e ?"`,
		},
		{
			"URIs percent-encoded",
			oauth.BearerChallenge{ErrorURI: "https://ex.com/a b\"\\\n", ResourceMetadata: "https://ex.com/é"},
			`Bearer error_uri="https://ex.com/a%20b%22%5C%0A", resource_metadata="https://ex.com/%C3%A9"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.b.String()
			if got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if strings.ContainsAny(got, "\r\n\x00") {
				t.Errorf("String() = %q holds CR, LF or NUL", got)
			}
			// The formatted challenge parses back without error.
			if _, err := oauth.ParseChallenges([]string{got}); err != nil {
				t.Errorf("ParseChallenges(%q): %v", got, err)
			}
		})
	}
}

func TestBearerChallengeRoundTrip(t *testing.T) {
	b := oauth.BearerChallenge{
		Realm: `r "q" \`, Error: oauth.ErrorInvalidToken, ErrorDescription: "The access token expired",
		ErrorURI: "https://ex.com/err", Scope: []string{"files:read", "files:write"},
		ResourceMetadata: "https://ex.com/.well-known/oauth-protected-resource/mcp",
	}
	got, ok := oauth.ParseBearerChallenge(http.Header{"Www-Authenticate": {b.String()}})
	if !ok {
		t.Fatalf("no Bearer challenge in %q", b.String())
	}
	if !reflect.DeepEqual(got, b) {
		t.Errorf("round trip\n got %#v\nwant %#v", got, b)
	}
}

func TestParseBearerChallenge(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   oauth.BearerChallenge
		ok     bool
	}{
		{"none", nil, oauth.BearerChallenge{}, false},
		{"only Basic", []string{`Basic realm="x"`}, oauth.BearerChallenge{}, false},
		{
			"after another challenge in the same value",
			[]string{`Basic realm="x", Bearer error="invalid_token", scope="a  b a"`},
			oauth.BearerChallenge{Error: "invalid_token", Scope: []string{"a", "b"}},
			true,
		},
		{
			"first of two",
			[]string{`bearer error="invalid_token"`, `Bearer error="insufficient_scope"`},
			oauth.BearerChallenge{Error: "invalid_token"},
			true,
		},
		{
			"after a malformed value",
			[]string{`Basic realm="unterminated`, `Bearer error="invalid_token"`},
			oauth.BearerChallenge{Error: "invalid_token"},
			true,
		},
		{
			"before a malformed part",
			[]string{`Bearer error="invalid_token", Basic realm="unterminated`},
			oauth.BearerChallenge{Error: "invalid_token"},
			true,
		},
		{
			"bare Bearer",
			[]string{`Bearer`},
			oauth.BearerChallenge{},
			true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := oauth.ParseBearerChallenge(http.Header{"Www-Authenticate": tt.values})
			if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseBearerChallenge(%q) = %#v, %v; want %#v, %v", tt.values, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// FuzzParseChallenges checks that ParseChallenges never panics, that what it
// returns formats into something it parses again, and that a Bearer challenge
// survives BearerChallenge.String: reparsing gives the same BearerChallenge,
// except where String had to sanitise a value (characters RFC 6750 does not
// allow); then formatting is a fixed point from the first reparse on.
func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple"`,
		`Basic dXNlcjpwYXNz`,
		`Bearer realm="example", error="invalid_token", error_description="The access token expired"`,
		`Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource"`,
		`Bearer realm="a\\b\"c", error_uri="https://x/ y"`,
		`, ,Bearer realm = "x" ,, error=	"invalid_token"`,
		`Bearer realm="abc`,
		"Bearer realm=\"a\x01b\"",
		`=`,
	} {
		f.Add(s, "")
	}
	f.Add(`Basic realm="a"`, `Bearer scope="a b"`)
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		cs, _ := oauth.ParseChallenges([]string{v1, v2})
		if len(cs) > oauth.MaxChallenges {
			t.Fatalf("%d challenges, more than MaxChallenges", len(cs))
		}
		for _, c := range cs {
			s := c.String()
			again, err := oauth.ParseChallenges([]string{s})
			if err != nil || len(again) != 1 {
				t.Fatalf("Challenge.String() = %q: reparse gave %d challenges, error %v", s, len(again), err)
			}
			if !again[0].Is(c.Scheme) {
				t.Fatalf("scheme %q became %q", c.Scheme, again[0].Scheme)
			}
			if !c.Is("Bearer") {
				continue
			}
			b := oauth.BearerChallengeFrom(c)
			s1 := b.String()
			if strings.ContainsAny(s1, "\r\n\x00") {
				t.Fatalf("BearerChallenge.String() = %q holds CR, LF or NUL", s1)
			}
			b1, ok := oauth.ParseBearerChallenge(http.Header{"Www-Authenticate": {s1}})
			if !ok {
				t.Fatalf("no Bearer challenge in %q", s1)
			}
			if clean(b) && !reflect.DeepEqual(b1, b) {
				t.Fatalf("Bearer round trip of %q via %q\n got %#v\nwant %#v", v1, s1, b1, b)
			}
			if s2 := b1.String(); s2 != s1 {
				t.Fatalf("BearerChallenge.String not a fixed point: %q then %q", s1, s2)
			}
		}
	})
}

// clean reports whether b holds only what BearerChallenge.String writes
// unchanged.
func clean(b oauth.BearerChallenge) bool {
	for _, c := range []byte(b.Realm) {
		if c < 0x20 && c != '\t' || c == 0x7F {
			return false
		}
	}
	nqs := func(s string, space bool) bool {
		for _, c := range []byte(s) {
			if c < 0x20 || c > 0x7E || c == '"' || c == '\\' || (c == ' ' && !space) {
				return false
			}
		}
		return true
	}
	if !nqs(b.Error, true) || !nqs(b.ErrorDescription, true) || !nqs(b.ErrorURI, false) || !nqs(b.ResourceMetadata, false) {
		return false
	}
	for _, s := range b.Scope {
		if !nqs(s, false) {
			return false
		}
	}
	return true
}
