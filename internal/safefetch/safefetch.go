// Package safefetch fetches small JSON documents from URLs that someone else
// chose, such as a Client ID Metadata Document named by an OAuth client_id
// (MCP SEP-991) or a discovery document named by a server, without letting
// that someone use the fetch to reach internal services (SSRF) or to tie up
// the fetcher.
//
// A Fetcher only speaks https, follows no redirects, ignores proxy settings
// in the environment, and checks every address it connects to at dial time,
// so a name that resolves (or re-resolves, as in DNS rebinding) to a
// loopback, private, link-local or otherwise special address is refused. The
// whole fetch is bounded in time and the body in size, and the body must be
// a JSON object served as application/json or a +json media type.
//
// Errors wrap the sentinel errors of this package, *StatusError or the
// underlying context and network errors, for use with errors.Is and
// errors.As. No error text contains any part of a response body.
package safefetch

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBytes is the body size limit used when Fetcher.MaxBytes is zero.
const DefaultMaxBytes = 64 << 10

// DefaultTimeout is the time limit used when Fetcher.Timeout is zero.
const DefaultTimeout = 5 * time.Second

var (
	// ErrForbiddenAddress means the URL's host is, resolves to, or would be
	// dialled at an address that may not be reached (loopback without
	// AllowLoopback, private, link-local, multicast and other special ranges).
	ErrForbiddenAddress = errors.New("safefetch: address not allowed")

	// ErrInsecureScheme means the URL is not https; plain http is accepted
	// only for a loopback host when AllowLoopback is set.
	ErrInsecureScheme = errors.New("safefetch: URL scheme must be https")

	// ErrTooLarge means the response body is larger than the limit.
	ErrTooLarge = errors.New("safefetch: response body too large")

	// ErrInvalidURL means the URL is not absolute, has no host, has
	// userinfo or a fragment, or has a host that looks like a non-canonical
	// numeric IPv4 address.
	ErrInvalidURL = errors.New("safefetch: invalid URL")

	// ErrContentType means the response's Content-Type is missing or is not
	// application/json or a +json media type.
	ErrContentType = errors.New("safefetch: response is not JSON")

	// ErrInvalidJSON means the response body is not a single JSON object,
	// or could not be decoded into the destination value.
	ErrInvalidJSON = errors.New("safefetch: invalid JSON document")
)

// StatusError is returned when the response status is not 200 OK, including
// any redirect, which is never followed. It carries nothing from the body.
type StatusError struct {
	// StatusCode is the HTTP status code of the response.
	StatusCode int
}

// Error implements the error interface.
func (e *StatusError) Error() string {
	if text := http.StatusText(e.StatusCode); text != "" {
		return fmt.Sprintf("safefetch: unexpected HTTP status %d %s", e.StatusCode, text)
	}
	return fmt.Sprintf("safefetch: unexpected HTTP status %d", e.StatusCode)
}

// Fetcher fetches JSON documents with SSRF protection and bounds. The zero
// value is ready to use with the defaults. A Fetcher is safe for concurrent
// use; its fields must not be changed after the first call to GetJSON, and it
// must not be copied after first use.
type Fetcher struct {
	// AllowLoopback permits plain http and https to loopback addresses
	// (127.0.0.0/8, ::1, "localhost"). For tests only; never on by default.
	AllowLoopback bool

	// MaxBytes bounds the body; 0 (or less) means DefaultMaxBytes.
	MaxBytes int64

	// Timeout bounds the whole fetch (dial, TLS, headers, body); 0 (or
	// less) means DefaultTimeout.
	Timeout time.Duration

	// UserAgent is sent as the User-Agent header when set.
	UserAgent string

	// TLSConfig is used for https when set (tests use the httptest server's
	// config or RootCAs). It is cloned when the Fetcher first fetches.
	TLSConfig *tls.Config

	// lookup replaces the system resolver when set; for tests.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	once   sync.Once
	client *http.Client
}

// httpClient returns the Fetcher's client, building it on first use.
func (f *Fetcher) httpClient() *http.Client {
	f.once.Do(func() {
		t := &http.Transport{
			Proxy:                  nil, // never use proxies from the environment
			DialContext:            f.dialContext,
			ForceAttemptHTTP2:      true,
			MaxIdleConns:           16,
			MaxIdleConnsPerHost:    2,
			IdleConnTimeout:        30 * time.Second,
			TLSHandshakeTimeout:    f.timeout(),
			ResponseHeaderTimeout:  f.timeout(),
			MaxResponseHeaderBytes: 64 << 10,
		}
		if f.TLSConfig != nil {
			t.TLSClientConfig = f.TLSConfig.Clone()
		}
		f.client = &http.Client{
			Transport: t,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	})
	return f.client
}

func (f *Fetcher) maxBytes() int64 {
	if f.MaxBytes <= 0 {
		return DefaultMaxBytes
	}
	return f.MaxBytes
}

func (f *Fetcher) timeout() time.Duration {
	if f.Timeout <= 0 {
		return DefaultTimeout
	}
	return f.Timeout
}

// GetJSON fetches rawURL and decodes a JSON object into v, which must be a
// non-nil pointer. It returns the response header (for caching decisions
// such as Cache-Control). With an error the header is returned when a
// response arrived (a *StatusError's may carry Retry-After, for instance);
// otherwise it is nil.
//
// The URL must be absolute https without userinfo or fragment (plain http
// only to a loopback host with AllowLoopback). The request carries
// Accept: application/json and is bounded by Timeout and by ctx.
func (f *Fetcher) GetJSON(ctx context.Context, rawURL string, v any) (http.Header, error) {
	if rv := reflect.ValueOf(v); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, fmt.Errorf("safefetch: GetJSON needs a non-nil pointer, got %T", v)
	}
	u, err := f.checkURL(rawURL)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	if u.Scheme == "http" {
		ctx = context.WithValue(ctx, loopbackOnlyKey{}, true)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	req.Header.Set("Accept", "application/json")
	if f.UserAgent != "" {
		req.Header.Set("User-Agent", f.UserAgent)
	}

	resp, err := f.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("safefetch: %w", err) // a *url.Error; no body yet
	}
	defer resp.Body.Close()
	// The Transport can hand back a response that raced with the end of
	// the context, possibly one the server made only because the request
	// was abandoned; the context's error is the truthful answer then.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("safefetch: %w", err)
	}

	if resp.StatusCode != http.StatusOK {
		return resp.Header, &StatusError{StatusCode: resp.StatusCode}
	}
	if err := checkContentType(resp.Header.Get("Content-Type")); err != nil {
		return resp.Header, err
	}
	limit := f.maxBytes()
	if resp.ContentLength > limit {
		return resp.Header, fmt.Errorf("%w: Content-Length %d exceeds %d bytes", ErrTooLarge, resp.ContentLength, limit)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err == nil {
		// Likewise a cancelled or timed-out read can end in a clean EOF;
		// a body cut short that way must not be used.
		err = ctx.Err()
	}
	if err != nil {
		return resp.Header, fmt.Errorf("safefetch: reading response body: %w", err)
	}
	if int64(len(body)) > limit {
		return resp.Header, fmt.Errorf("%w: body exceeds %d bytes", ErrTooLarge, limit)
	}
	if err := decodeObject(body, v); err != nil {
		return resp.Header, err
	}
	return resp.Header, nil
}

// checkURL parses rawURL and applies every rule that needs no network: form,
// scheme, and the host when it is an IP literal or a loopback name.
func (f *Fetcher) checkURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	switch {
	case !u.IsAbs() || u.Opaque != "":
		return nil, fmt.Errorf("%w: not an absolute hierarchical URL", ErrInvalidURL)
	case u.User != nil:
		return nil, fmt.Errorf("%w: userinfo not allowed", ErrInvalidURL)
	case u.Fragment != "" || strings.Contains(rawURL, "#"):
		return nil, fmt.Errorf("%w: fragment not allowed", ErrInvalidURL)
	case u.Hostname() == "":
		return nil, fmt.Errorf("%w: no host", ErrInvalidURL)
	}

	host := u.Hostname()
	loopback := false
	var addrErr error
	if a, err := netip.ParseAddr(host); err == nil {
		addrErr = checkAddr(a, f.AllowLoopback, false)
		loopback = classify(a) == classLoopback
	} else {
		name := strings.TrimSuffix(strings.ToLower(host), ".")
		if looksNumeric(name) {
			return nil, fmt.Errorf("%w: host %q looks like a non-canonical IPv4 address", ErrInvalidURL, host)
		}
		if isLoopbackName(name) {
			loopback = true
			if !f.AllowLoopback {
				addrErr = fmt.Errorf("%w: %s", ErrForbiddenAddress, name)
			}
		}
	}

	var schemeErr error
	switch u.Scheme {
	case "https":
	case "http":
		if !f.AllowLoopback || !loopback {
			schemeErr = fmt.Errorf("%w: got http for host %q", ErrInsecureScheme, host)
		}
	default:
		schemeErr = fmt.Errorf("%w: got %q", ErrInsecureScheme, u.Scheme)
	}
	// Both may apply, as for http://localhost without AllowLoopback; the
	// error then matches both sentinels.
	switch {
	case addrErr != nil && schemeErr != nil:
		return nil, fmt.Errorf("%w; %w", addrErr, schemeErr)
	case addrErr != nil:
		return nil, addrErr
	case schemeErr != nil:
		return nil, schemeErr
	}
	return u, nil
}

// looksNumeric reports whether the last label of a host name is numeric
// (decimal, or hexadecimal with 0x), as in "127.1", "0x7f.1" or
// "2130706433". No DNS top-level domain is numeric, but some resolvers and
// URL parsers read such names as IPv4 addresses, so they are refused.
func looksNumeric(name string) bool {
	last := name[strings.LastIndexByte(name, '.')+1:]
	if last == "" {
		return false
	}
	digits := last
	if strings.HasPrefix(last, "0x") {
		digits = last[2:]
		return strings.Trim(digits, "0123456789abcdef") == ""
	}
	return strings.Trim(digits, "0123456789") == ""
}

// checkContentType accepts application/json and any +json media type,
// ignoring parameters.
func checkContentType(header string) error {
	if header == "" {
		return fmt.Errorf("%w: no Content-Type", ErrContentType)
	}
	mediaType, _, err := mime.ParseMediaType(header)
	if err != nil {
		return fmt.Errorf("%w: unparsable Content-Type", ErrContentType)
	}
	if mediaType == "application/json" || strings.HasSuffix(mediaType, "+json") {
		return nil
	}
	if len(mediaType) > 64 {
		mediaType = mediaType[:64] + "..."
	}
	return fmt.Errorf("%w: Content-Type %q", ErrContentType, mediaType)
}

// decodeObject decodes body, which must hold exactly one JSON object, into v.
func decodeObject(body []byte, v any) error {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrInvalidJSON)
	}
	// json.Unmarshal validates the whole input first, so trailing data after
	// the object is an error and v is left untouched on a syntax error.
	if err := json.Unmarshal(trimmed, v); err != nil {
		return &jsonError{err: err}
	}
	return nil
}

// jsonError wraps a decoding error so that errors.Is(err, ErrInvalidJSON)
// and errors.As(err, **json.SyntaxError) work while the message leaves out
// the parts of the decoder's text that quote the body.
type jsonError struct {
	err error
}

func (e *jsonError) Error() string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(e.err, &syntax):
		return fmt.Sprintf("%v: syntax error at offset %d", ErrInvalidJSON, syntax.Offset)
	case errors.As(e.err, &typ):
		// typ.Field and typ.Value come from the body, so they stay out.
		return fmt.Sprintf("%v: wrong type at offset %d (want %s)", ErrInvalidJSON, typ.Offset, typ.Type)
	}
	return fmt.Sprintf("%v: cannot decode", ErrInvalidJSON)
}

func (e *jsonError) Unwrap() []error { return []error{ErrInvalidJSON, e.err} }
