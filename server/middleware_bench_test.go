package server_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/evergrant/evergrant/server"
)

const benchBody = `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}`

func benchHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, benchBody)
	})
}

func benchServe(b *testing.B, h http.Handler, auth bool) {
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "https://mcp.example.test/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`))
		if auth {
			req.Header.Set("Authorization", "Bearer tok-t")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

// BenchmarkHandlerWithoutAuth is the baseline of BenchmarkProtect:
// the same handler, no middleware.
func BenchmarkHandlerWithoutAuth(b *testing.B) { benchServe(b, benchHandler(), false) }

// BenchmarkProtect is the middleware's own overhead (the verifier is
// an in-memory function, so token cryptography is not counted; see
// BenchmarkJWTVerify for that): header parsing, the SDK's TokenInfo
// hand-over, and the response holder of POSTs.
func BenchmarkProtect(b *testing.B) {
	benchServe(b, protect(b, server.Config{}, benchHandler()), true)
}
