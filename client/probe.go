package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/evergrant/evergrant/oauth"
)

// probeTimeout bounds NoOAuthMetadata as a whole.
const probeTimeout = 5 * time.Second

// NoOAuthMetadata reports whether the MCP server at serverURL publishes no
// OAuth metadata at all: whether every well-known URL of its protected
// resource metadata (RFC 9728) and of authorization server metadata
// (RFC 8414 and OpenID discovery) at its origin, the places discovery looks
// (docs/design.md#client-discovery), answers with a 4xx status (404,
// mostly). Then a failed sign-in most likely means that the server does not
// use OAuth, and saying so beats the error of the 2025-03-26 fallback (a
// registration endpoint that is not there).
//
// It answers false whenever it is not sure: a URL it cannot build, a
// server it cannot reach, a 5xx, a document that is there. It stops after
// 5 s, or when ctx is done; a caller whose own deadline has passed (a
// sign-in that timed out) passes context.WithoutCancel(ctx). hc sends the
// requests; nil means a client that follows no redirect.
func NoOAuthMetadata(ctx context.Context, hc *http.Client, serverURL string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	prm, err := oauth.ProtectedResourceMetadataURLs(serverURL)
	if err != nil {
		return false
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return false
	}
	asm, err := oauth.AuthServerMetadataURLs(u.Scheme + "://" + u.Host)
	if err != nil {
		return false
	}
	if hc == nil {
		hc = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	for _, m := range append(prm, asm...) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m, nil)
		if err != nil {
			return false
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			return false
		}
	}
	return true
}
