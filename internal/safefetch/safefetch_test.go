package safefetch

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// All servers in these tests listen on 127.0.0.1 (httptest's default); no
// test dials any other address.

type doc struct {
	ClientID   string `json:"client_id"`
	ClientName string `json:"client_name"`
}

const secret = "BODY-SECRET-MARKER"

// jsonHandler serves body with the given content type and counts requests.
func jsonHandler(hits *atomic.Int32, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if hits != nil {
			hits.Add(1)
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		fmt.Fprint(w, body)
	}
}

// tlsFetcher starts an https server and returns a Fetcher that trusts it.
func tlsFetcher(t *testing.T, h http.Handler) (*httptest.Server, *Fetcher) {
	t.Helper()
	ts := httptest.NewUnstartedServer(h)
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut short by cancellation
	ts.StartTLS()
	t.Cleanup(ts.Close)
	f := &Fetcher{
		AllowLoopback: true,
		TLSConfig:     ts.Client().Transport.(*http.Transport).TLSClientConfig,
	}
	return ts, f
}

// httpFetcher starts a plain http server and returns a loopback-allowed Fetcher.
func httpFetcher(t *testing.T, h http.Handler) (*httptest.Server, *Fetcher) {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, &Fetcher{AllowLoopback: true}
}

func port(t *testing.T, ts *httptest.Server) string {
	t.Helper()
	u, err := url.Parse(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

func noBody(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Errorf("error text contains the response body: %v", err)
	}
}

func TestGetJSONSuccess(t *testing.T) {
	var gotAccept, gotUA string
	ts, f := tlsFetcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAccept = r.Header.Get("Accept")
		gotUA = r.Header.Get("User-Agent")
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Cache-Control", "max-age=300")
		fmt.Fprint(w, `  {"client_id":"https://c.example/meta","client_name":"Test","extra":[1,2]}`+"\n")
	}))
	f.UserAgent = "evergrant-test/1"
	var d doc
	h, err := f.GetJSON(context.Background(), ts.URL+"/meta?x=1", &d)
	if err != nil {
		t.Fatal(err)
	}
	if d.ClientID != "https://c.example/meta" || d.ClientName != "Test" {
		t.Errorf("decoded %+v", d)
	}
	if h.Get("Cache-Control") != "max-age=300" {
		t.Errorf("Cache-Control = %q", h.Get("Cache-Control"))
	}
	if gotAccept != "application/json" {
		t.Errorf("Accept = %q", gotAccept)
	}
	if gotUA != "evergrant-test/1" {
		t.Errorf("User-Agent = %q", gotUA)
	}
}

func TestGetJSONContentTypes(t *testing.T) {
	for _, ct := range []string{
		"application/json",
		"application/JSON; charset=UTF-8",
		"application/problem+json",
		"application/vnd.example+json; v=2",
	} {
		ts, f := tlsFetcher(t, jsonHandler(nil, ct, `{"client_id":"x"}`))
		var d doc
		if _, err := f.GetJSON(context.Background(), ts.URL, &d); err != nil || d.ClientID != "x" {
			t.Errorf("Content-Type %q: %v, %+v", ct, err, d)
		}
	}
}

func TestGetJSONWrongContentType(t *testing.T) {
	for _, ct := range []string{
		"", // Go would sniff; the handler below forces it empty
		"text/html",
		"text/plain; charset=utf-8",
		"application/jsonx",
		"application/json-seq",
		"application/javascript",
		"application/json; charset", // unparsable
	} {
		ts, f := tlsFetcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = []string{ct}
			if ct == "" {
				w.Header()["Content-Type"] = nil
			}
			fmt.Fprint(w, `{"client_id":"`+secret+`"}`)
		}))
		var d doc
		h, err := f.GetJSON(context.Background(), ts.URL, &d)
		if !errors.Is(err, ErrContentType) {
			t.Errorf("Content-Type %q: err = %v, want ErrContentType", ct, err)
		}
		if h == nil {
			t.Errorf("Content-Type %q: header not returned", ct)
		}
		noBody(t, err)
		if d.ClientID != "" {
			t.Errorf("Content-Type %q: decoded despite error", ct)
		}
	}
}

func TestGetJSONTooLarge(t *testing.T) {
	const limit = 100
	obj := func(n int) string { // a JSON object of exactly n bytes
		return `{"client_id":"` + strings.Repeat("a", n-len(`{"client_id":""}`)) + `"}`
	}
	tests := []struct {
		name    string
		size    int
		chunked bool
		wantErr bool
	}{
		{"at limit", limit, false, false},
		{"at limit chunked", limit, true, false},
		{"over limit", limit + 1, false, true},
		{"over limit chunked", limit + 1, true, true},
		{"far over chunked", 1 << 20, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := obj(tt.size)
			ts, f := tlsFetcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if tt.chunked {
					w.(http.Flusher).Flush() // no Content-Length
				}
				fmt.Fprint(w, body)
			}))
			f.MaxBytes = limit
			var d doc
			_, err := f.GetJSON(context.Background(), ts.URL, &d)
			if tt.wantErr != errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge: %v", err, tt.wantErr)
			}
			if !tt.wantErr && len(d.ClientID) != tt.size-len(`{"client_id":""}`) {
				t.Errorf("decoded wrong length %d", len(d.ClientID))
			}
		})
	}
}

func TestGetJSONGzipBounded(t *testing.T) {
	// A small compressed body that inflates past the limit is refused: the
	// limit applies to the decoded bytes.
	ts, f := tlsFetcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			t.Error("transport did not offer gzip; test is vacuous")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		fmt.Fprint(zw, `{"client_id":"`+strings.Repeat("a", 1<<20)+`"}`)
		zw.Close()
	}))
	var d doc
	if _, err := f.GetJSON(context.Background(), ts.URL, &d); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}

func TestGetJSONRedirectRefused(t *testing.T) {
	var targetHits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/target", jsonHandler(&targetHits, "application/json", `{}`))
	for _, code := range []int{301, 302, 303, 307, 308} {
		mux.HandleFunc(fmt.Sprintf("/r%d", code), func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/target", code)
		})
	}
	ts, f := tlsFetcher(t, mux)
	for _, code := range []int{301, 302, 303, 307, 308} {
		var d doc
		h, err := f.GetJSON(context.Background(), fmt.Sprintf("%s/r%d", ts.URL, code), &d)
		var se *StatusError
		if !errors.As(err, &se) || se.StatusCode != code {
			t.Errorf("%d: err = %v, want StatusError %d", code, err, code)
		}
		if h.Get("Location") != "/target" {
			t.Errorf("%d: header not returned with StatusError", code)
		}
	}
	if n := targetHits.Load(); n != 0 {
		t.Errorf("redirect target fetched %d times", n)
	}
}

func TestGetJSONStatus(t *testing.T) {
	for _, code := range []int{201, 204, 400, 404, 500, 503, 599} {
		ts, f := tlsFetcher(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			fmt.Fprint(w, `{"error":"`+secret+`"}`)
		}))
		var d doc
		_, err := f.GetJSON(context.Background(), ts.URL, &d)
		var se *StatusError
		if !errors.As(err, &se) || se.StatusCode != code {
			t.Errorf("%d: err = %v, want StatusError", code, err)
		}
		noBody(t, err)
	}
}

func TestGetJSONNotObject(t *testing.T) {
	for _, body := range []string{
		``,
		`   `,
		`[{"client_id":"` + secret + `"}]`,
		`"` + secret + `"`,
		`null`,
		`42`,
		`{"client_id":"x"} {"client_id":"y"}`,
		`{"client_id":"x"}garbage` + secret,
		`{"client_id":` + secret + `}`,
		`{"client_id":"x"`,
		"\ufeff{}",
		`{"client_id":["` + secret + `"]}`,
		`{"` + secret + `":1, "client_id":7}`,
	} {
		ts, f := tlsFetcher(t, jsonHandler(nil, "application/json", body))
		var d doc
		_, err := f.GetJSON(context.Background(), ts.URL, &d)
		if !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("body %q: err = %v, want ErrInvalidJSON", body, err)
		}
		noBody(t, err)
	}

	// The decoder's error stays reachable for errors.As.
	ts, f := tlsFetcher(t, jsonHandler(nil, "application/json", `{"client_id":`+secret+`}`))
	var d doc
	_, err := f.GetJSON(context.Background(), ts.URL, &d)
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		t.Errorf("err = %v, want a *json.SyntaxError inside", err)
	}
}

func TestGetJSONPlainHTTPLoopback(t *testing.T) {
	ts, f := httpFetcher(t, jsonHandler(nil, "application/json", `{"client_id":"plain"}`))
	p := port(t, ts)
	for _, u := range []string{
		"http://127.0.0.1:" + p + "/",
		"http://localhost:" + p + "/",
		"http://LOCALHOST.:" + p + "/",
	} {
		var d doc
		if _, err := f.GetJSON(context.Background(), u, &d); err != nil || d.ClientID != "plain" {
			t.Errorf("%s: %v, %+v", u, err, d)
		}
	}
}

func TestGetJSONInsecureScheme(t *testing.T) {
	var hits atomic.Int32
	ts := httptest.NewServer(jsonHandler(&hits, "application/json", `{}`))
	defer ts.Close()
	p := port(t, ts)

	tests := []struct {
		f    *Fetcher
		url  string
		want []error
	}{
		// Not loopback: refused before any network traffic, with or without AllowLoopback.
		{&Fetcher{}, "http://example.invalid/meta", []error{ErrInsecureScheme}},
		{&Fetcher{AllowLoopback: true}, "http://example.invalid/meta", []error{ErrInsecureScheme}},
		{&Fetcher{AllowLoopback: true}, "http://localhost.example.invalid/", []error{ErrInsecureScheme}},
		{&Fetcher{}, "ftp://example.invalid/meta", []error{ErrInsecureScheme}},
		{&Fetcher{AllowLoopback: true}, "file:///etc/passwd", []error{ErrInvalidURL}},
		{&Fetcher{AllowLoopback: true}, "ws://127.0.0.1:" + p + "/", []error{ErrInsecureScheme}},
		// Loopback without AllowLoopback: both rules are broken.
		{&Fetcher{}, "http://127.0.0.1:" + p + "/", []error{ErrInsecureScheme, ErrForbiddenAddress}},
		{&Fetcher{}, "http://localhost:" + p + "/", []error{ErrInsecureScheme, ErrForbiddenAddress}},
		// A private literal over http.
		{&Fetcher{AllowLoopback: true}, "http://10.0.0.1/", []error{ErrInsecureScheme, ErrForbiddenAddress}},
	}
	for _, tt := range tests {
		var d doc
		_, err := tt.f.GetJSON(context.Background(), tt.url, &d)
		for _, want := range tt.want {
			if !errors.Is(err, want) {
				t.Errorf("%s (AllowLoopback=%v): err = %v, want %v", tt.url, tt.f.AllowLoopback, err, want)
			}
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("server hit %d times", n)
	}
}

func TestGetJSONForbiddenLoopback(t *testing.T) {
	var hits atomic.Int32
	ts, f := tlsFetcher(t, jsonHandler(&hits, "application/json", `{}`))
	f.AllowLoopback = false
	p := port(t, ts)
	for _, u := range []string{
		ts.URL,
		"https://127.0.0.1:" + p + "/",
		"https://127.9.9.9:" + p + "/",
		"https://localhost:" + p + "/",
		"https://LocalHost.:" + p + "/",
		"https://foo.localhost:" + p + "/",
		"https://[::1]:" + p + "/",
		"https://[::ffff:127.0.0.1]:" + p + "/",
		"https://[fe80::1%25lo]:" + p + "/",
	} {
		var d doc
		_, err := f.GetJSON(context.Background(), u, &d)
		if !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("%s: err = %v, want ErrForbiddenAddress", u, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("server hit %d times", n)
	}
}

// TestDialTimeCheck goes past the URL checks, which only see literals and
// loopback names, to the check made when connecting: a name that resolves
// to a forbidden address (as a rebinding DNS server would arrange) is refused.
func TestDialTimeCheck(t *testing.T) {
	var hits atomic.Int32
	ts, _ := tlsFetcher(t, jsonHandler(&hits, "application/json", `{"client_id":"via-name"}`))
	p := port(t, ts)
	trust := ts.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	trust.ServerName = "127.0.0.1" // the test certificate's name

	resolveTo := func(addrs ...string) func(context.Context, string) ([]netip.Addr, error) {
		return func(_ context.Context, host string) ([]netip.Addr, error) {
			if host != "rebind.invalid" {
				return nil, fmt.Errorf("unexpected lookup of %q", host)
			}
			var out []netip.Addr
			for _, a := range addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out, nil
		}
	}
	u := "https://rebind.invalid:" + p + "/meta"

	// Resolves to loopback, loopback not allowed.
	f := &Fetcher{TLSConfig: trust, lookup: resolveTo("127.0.0.1")}
	var d doc
	if _, err := f.GetJSON(context.Background(), u, &d); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("loopback via DNS: err = %v, want ErrForbiddenAddress", err)
	}
	// Resolves to loopback and a private address: the whole name is
	// refused, even though loopback is allowed.
	f = &Fetcher{AllowLoopback: true, TLSConfig: trust, lookup: resolveTo("127.0.0.1", "10.0.0.1")}
	if _, err := f.GetJSON(context.Background(), u, &d); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("mixed answer: err = %v, want ErrForbiddenAddress", err)
	}
	f = &Fetcher{AllowLoopback: true, TLSConfig: trust, lookup: resolveTo("::ffff:169.254.169.254")}
	if _, err := f.GetJSON(context.Background(), u, &d); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("mapped metadata address: err = %v, want ErrForbiddenAddress", err)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("server hit %d times", n)
	}

	// Resolves to loopback, loopback allowed: the resolver path works.
	f = &Fetcher{AllowLoopback: true, TLSConfig: trust, lookup: resolveTo("127.0.0.1")}
	if _, err := f.GetJSON(context.Background(), u, &d); err != nil || d.ClientID != "via-name" {
		t.Errorf("allowed loopback via DNS: %v, %+v", err, d)
	}

	// The dialer itself, called as the Transport would.
	f = &Fetcher{}
	for _, addr := range []string{"127.0.0.1:" + p, "localhost:" + p, "[::1]:" + p} {
		if c, err := f.dialContext(context.Background(), "tcp", addr); !errors.Is(err, ErrForbiddenAddress) {
			if c != nil {
				c.Close()
			}
			t.Errorf("dialContext(%s) = %v, want ErrForbiddenAddress", addr, err)
		}
	}
	// The Control hook, which sees the address the socket connects to.
	ctl := f.control(false)
	for _, addr := range []string{"127.0.0.1:443", "10.0.0.1:443", "[::1]:443", "[fe80::1%lo]:443", "[::ffff:192.168.0.1]:80", "garbage"} {
		if err := ctl("tcp", addr, nil); !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("control(%s) = %v, want ErrForbiddenAddress", addr, err)
		}
	}
	if err := ctl("tcp", "8.8.8.8:443", nil); err != nil {
		t.Errorf("control(8.8.8.8:443) = %v, want nil", err)
	}
	if err := (&Fetcher{AllowLoopback: true}).control(true)("tcp", "8.8.8.8:80", nil); !errors.Is(err, ErrInsecureScheme) {
		t.Errorf("loopback-only control(8.8.8.8:80) = %v, want ErrInsecureScheme", err)
	}
}

func TestGetJSONInvalidURL(t *testing.T) {
	f := &Fetcher{AllowLoopback: true}
	for _, u := range []string{
		"",
		"/relative/path",
		"//127.0.0.1/meta",
		"https:opaque",
		"https:///nohost",
		"https://user:pass@127.0.0.1/",
		"https://user@127.0.0.1/",
		"https://127.0.0.1/meta#frag",
		"https://127.0.0.1/meta#",
		"https://127.1/",
		"https://0x7f.0.0.1/",
		"https://2130706433/",
		"https://example.0x10/",
		"https://exa mple.com/",
		"https://127.0.0.1:port/",
		"https://[::1/",
		"https://%31%32%37.0.0.1/", // Go refuses escapes in a host name
	} {
		var d doc
		_, err := f.GetJSON(context.Background(), u, &d)
		if !errors.Is(err, ErrInvalidURL) {
			t.Errorf("%q: err = %v, want ErrInvalidURL", u, err)
		}
	}
}

func TestGetJSONBadTarget(t *testing.T) {
	var f Fetcher
	var d doc
	for _, v := range []any{nil, d, (*doc)(nil), map[string]any{}} {
		if _, err := f.GetJSON(context.Background(), "https://example.invalid/", v); err == nil {
			t.Errorf("GetJSON into %T succeeded", v)
		}
	}
}

// blockingHandler waits until the client goes away (or a long time), after
// sending headers first when headersFirst is set.
func blockingHandler(headersFirst bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if headersFirst {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"client_id":`)
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}
}

func TestGetJSONTimeout(t *testing.T) {
	for _, headersFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("headersFirst=%v", headersFirst), func(t *testing.T) {
			ts, f := tlsFetcher(t, blockingHandler(headersFirst))
			f.Timeout = 150 * time.Millisecond
			start := time.Now()
			var d doc
			_, err := f.GetJSON(context.Background(), ts.URL, &d)
			elapsed := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want context.DeadlineExceeded", err)
			}
			if elapsed > 3*time.Second {
				t.Errorf("took %v with a 150ms timeout", elapsed)
			}
		})
	}
}

func TestGetJSONContextCancel(t *testing.T) {
	for _, headersFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("headersFirst=%v", headersFirst), func(t *testing.T) {
			ts, f := tlsFetcher(t, blockingHandler(headersFirst))
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			start := time.Now()
			var d doc
			_, err := f.GetJSON(ctx, ts.URL, &d)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("took %v after cancellation at 100ms", elapsed)
			}
		})
	}

	var hits atomic.Int32
	ts, f := tlsFetcher(t, jsonHandler(&hits, "application/json", `{}`))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var d doc
	if _, err := f.GetJSON(ctx, ts.URL, &d); !errors.Is(err, context.Canceled) {
		t.Errorf("pre-cancelled: err = %v, want context.Canceled", err)
	}
	if hits.Load() != 0 {
		t.Error("pre-cancelled request reached the server")
	}
}

func TestFetcherDefaults(t *testing.T) {
	var f Fetcher
	if f.maxBytes() != DefaultMaxBytes || f.timeout() != DefaultTimeout {
		t.Errorf("defaults: %d, %v", f.maxBytes(), f.timeout())
	}
	f.MaxBytes, f.Timeout = -1, -1
	if f.maxBytes() != DefaultMaxBytes || f.timeout() != DefaultTimeout {
		t.Errorf("negative: %d, %v", f.maxBytes(), f.timeout())
	}
	tr := f.httpClient().Transport.(*http.Transport)
	// Checked directly: ProxyFromEnvironment already skips loopback hosts,
	// so a test through a loopback server could not tell.
	if tr.Proxy != nil {
		t.Error("Transport.Proxy is set")
	}
	if c1, c2 := f.httpClient(), f.httpClient(); c1 != c2 {
		t.Error("client rebuilt")
	}
}

func TestGetJSONConcurrent(t *testing.T) {
	ts, f := tlsFetcher(t, jsonHandler(nil, "application/json", `{"client_id":"c"}`))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d doc
			if _, err := f.GetJSON(context.Background(), ts.URL, &d); err != nil || d.ClientID != "c" {
				errs <- fmt.Errorf("%v, %+v", err, d)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// FuzzCheckURL checks that whatever URL checkURL accepts from a Fetcher
// without AllowLoopback is https and does not name a non-public address.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{
		"https://example.com/meta", "http://example.com/", "https://127.0.0.1/",
		"https://[::ffff:10.0.0.1]/", "https://localhost./", "https://u@h/",
		"https://h/#f", "https://127.1/", "https://%31%30.0.0.1/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		fetcher := &Fetcher{}
		u, err := fetcher.checkURL(raw)
		if err != nil {
			return
		}
		if u.Scheme != "https" || u.User != nil || u.Fragment != "" || u.Hostname() == "" {
			t.Fatalf("accepted %q: %+v", raw, u)
		}
		host := u.Hostname()
		if a, err := netip.ParseAddr(host); err == nil && classify(a) != classPublic {
			t.Fatalf("accepted %q with host %s", raw, a)
		}
		if ip := net.ParseIP(host); ip != nil {
			if a, _ := netip.AddrFromSlice(ip); classify(a) != classPublic {
				t.Fatalf("accepted %q with host %s", raw, a)
			}
		}
		if isLoopbackName(strings.TrimSuffix(strings.ToLower(host), ".")) {
			t.Fatalf("accepted loopback name in %q", raw)
		}
	})
}
