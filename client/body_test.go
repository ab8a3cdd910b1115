package client_test

// Only a request whose body can be sent again is retried, and the
// caller's request is never modified (docs/design.md#client-rule-9).

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
)

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
// and the 401 comes back as the response (docs/design.md#client-rule-9).
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

// TestRule9_RequestNotModified: the caller's request is not modified (the
// net/http RoundTripper contract), not even by a retry
// (docs/design.md#client-rule-9).
func TestRule9_RequestNotModified(t *testing.T) {
	r := newRig(t, fixture.Options{}, client.Config{})
	req, _ := http.NewRequest(http.MethodPost, r.st.URL, bytes.NewReader(rpcBody(3)))
	r.st.Force(fixture.Forced{Status: 401, Challenge: invalidToken})
	resp, err := r.tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if req.Header.Get("Authorization") != "" {
		t.Fatal("RoundTrip set a header on the caller's request")
	}
	if !strings.Contains(r.st.Requests()[1].Token, ".") {
		t.Fatal("retry carried no JWT")
	}
}
