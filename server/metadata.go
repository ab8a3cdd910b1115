package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/evergrant/evergrant/oauth"
)

// metadataHandler serves an RFC 9728 protected resource metadata document,
// with CORS for GET so browser-based clients can discover it
// (docs/design.md#server-rule-9).
func metadataHandler(md oauth.ProtectedResourceMetadata) http.Handler {
	body, err := json.Marshal(md)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		switch r.Method {
		case http.MethodOptions:
			h.Set("Access-Control-Allow-Methods", "GET, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "MCP-Protocol-Version, Content-Type")
			w.WriteHeader(http.StatusNoContent)
			return
		case http.MethodGet, http.MethodHead:
		default:
			h.Set("Allow", "GET, HEAD, OPTIONS")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if err != nil {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "public, max-age=300")
		w.Write(body)
	})
}

// metadataPaths returns the paths at which the metadata of resource is
// served: the path-inserted well-known path (RFC 9728 §3.1) and, for a
// resource with a path, the root one that clients try next.
func metadataPaths(resource string) ([]string, error) {
	urls, err := oauth.ProtectedResourceMetadataURLs(resource)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("server: metadata URL %q: %w", u, err)
		}
		paths = append(paths, pu.EscapedPath())
	}
	return paths, nil
}
