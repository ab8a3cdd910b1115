// Package upstream is the model of an MCP server that wraps an upstream API
// with the user's delegated token, built on the official Go SDK and
// evergrant's server package. `evergrant serve` and `evergrant demo` run it;
// examples/upstream-server runs it on its own.
//
// Its tool upstream_search calls the upstream with the caller's token. When
// the upstream rejects the token, the tool returns server.TokenExpired, and
// the client gets HTTP 401 invalid_token on that very request, refreshes,
// and calls again with the same JSON-RPC id. Side effects: the tool signals
// before it does anything it could not repeat.
package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/server"
)

// SearchInput is the argument of upstream_search.
type SearchInput struct {
	Query string `json:"query,omitempty" jsonschema:"what to search for"`
}

// SearchOutput is the result of upstream_search.
type SearchOutput struct {
	Query   string   `json:"query"`
	Results []string `json:"results"`
}

// WhoamiOutput is the result of whoami.
type WhoamiOutput struct {
	Subject  string   `json:"subject"`
	ClientID string   `json:"client_id"`
	Scopes   []string `json:"scopes"`
}

// NewMCPServer returns the MCP server with the tools whoami,
// upstream_search and save_note (which needs NotesScope); searchURL is the
// upstream's search endpoint. hc sends the upstream requests (nil: a client
// with a 10s timeout).
//
// Serve it with server.Protect, given the server itself: Protect adds the
// middleware that turns its tools' signals into 401 and 403 answers on the
// HTTP response. Without it, a signal is an ordinary tool error.
func NewMCPServer(searchURL string, hc *http.Client) *mcp.Server {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	srv := mcp.NewServer(&mcp.Implementation{Name: "evergrant-example", Version: "0.1.0"}, nil)

	mcp.AddTool(srv, &mcp.Tool{Name: "whoami", Description: "Who the caller is: subject, client and scopes of the access token."},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, WhoamiOutput, error) {
			ti := req.Extra.TokenInfo
			if ti == nil {
				return nil, WhoamiOutput{}, errors.New("no token information")
			}
			cid, _ := ti.Extra["client_id"].(string)
			return nil, WhoamiOutput{Subject: ti.UserID, ClientID: cid, Scopes: ti.Scopes}, nil
		})

	mcp.AddTool(srv, &mcp.Tool{Name: "upstream_search", Description: "Search the upstream API with the caller's delegated token."},
		func(ctx context.Context, req *mcp.CallToolRequest, in SearchInput) (*mcp.CallToolResult, SearchOutput, error) {
			tok := server.BearerToken(req.Extra.Header)
			u := searchURL + "?q=" + url.QueryEscape(in.Query)
			hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return nil, SearchOutput{}, err
			}
			hreq.Header.Set("Authorization", "Bearer "+tok)
			resp, err := hc.Do(hreq)
			if err != nil {
				return nil, SearchOutput{}, fmt.Errorf("upstream unreachable: %w", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				// The upstream no longer accepts the delegated token: tell the
				// client, so it refreshes and calls again. Nothing was done yet.
				return nil, SearchOutput{}, server.TokenExpired("the upstream API rejected the access token")
			}
			if resp.StatusCode != http.StatusOK {
				return nil, SearchOutput{}, fmt.Errorf("upstream answered %d", resp.StatusCode)
			}
			var out SearchOutput
			if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
				return nil, SearchOutput{}, fmt.Errorf("upstream answer: %w", err)
			}
			return nil, out, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "save_note", Description: "Save a note upstream; needs the scope notes.write."},
		func(ctx context.Context, req *mcp.CallToolRequest, in NoteInput) (*mcp.CallToolResult, NoteOutput, error) {
			// A scope check inside the tool: the client gets 403
			// insufficient_scope naming the scope, and can step up.
			if ti := req.Extra.TokenInfo; ti == nil || !slices.Contains(ti.Scopes, NotesScope) {
				return nil, NoteOutput{}, server.InsufficientScope(NotesScope)
			}
			return nil, NoteOutput{Saved: true, Text: in.Text}, nil
		})
	return srv
}

// NotesScope is the scope save_note needs.
const NotesScope = "notes.write"

// NoteInput is the argument of save_note.
type NoteInput struct {
	Text string `json:"text,omitempty" jsonschema:"the note"`
}

// NoteOutput is the result of save_note.
type NoteOutput struct {
	Saved bool   `json:"saved"`
	Text  string `json:"text"`
}

// FakeAPI is a stand-in for an upstream API that accepts the authorization
// server's access tokens (verified with v) and rejects tokens older than
// MaxAge (when non-zero), so the upstream's rejection can be provoked on
// demand.
type FakeAPI struct {
	Verifier server.Verifier
	MaxAge   time.Duration
	Now      func() time.Time
}

// ServeHTTP answers GET ?q=… with a few results.
func (f *FakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := server.BearerToken(r.Header)
	if tok == "" {
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "no token", http.StatusUnauthorized)
		return
	}
	if _, err := f.Verifier.Verify(r.Context(), tok); err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	if f.MaxAge > 0 {
		now := time.Now
		if f.Now != nil {
			now = f.Now
		}
		if iat, ok := issuedAt(tok); !ok || now().Sub(iat) > f.MaxAge {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="token too old for the upstream"`)
			http.Error(w, "token too old", http.StatusUnauthorized)
			return
		}
	}
	q := r.URL.Query().Get("q")
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(SearchOutput{Query: q, Results: []string{
		"result 1 for " + q, "result 2 for " + q, "result 3 for " + q,
	}})
}

// issuedAt reads the iat claim of a JWT already verified by the caller.
func issuedAt(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Iat int64 `json:"iat"`
	}
	if json.Unmarshal(b, &c) != nil || c.Iat == 0 {
		return time.Time{}, false
	}
	return time.Unix(c.Iat, 0), true
}
