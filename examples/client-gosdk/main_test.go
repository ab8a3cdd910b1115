package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

// TestRun runs the example against the fixture's authorization server and
// an official SDK server: it signs in (headless instead of the browser),
// lists the tools, and after the grant is revoked reports the lost grant
// with exit status 3.
func TestRun(t *testing.T) {
	s := mcp.NewServer(&mcp.Implementation{Name: "example-test", Version: "1"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "returns its input"},
		func(_ context.Context, _ *mcp.CallToolRequest, in struct{ Text string }) (*mcp.CallToolResult, struct{}, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, struct{}{}, nil
		})
	st := fixture.New(t, fixture.Options{Handler: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)})
	grants := new(store.Memory)

	var out, errOut bytes.Buffer
	if code := run(t.Context(), st.URL, client.Config{Store: grants, Authorizer: &client.HeadlessAuthorizer{}}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "echo\treturns its input") {
		t.Errorf("output: %q", out.String())
	}

	if _, err := st.AS.RevokeGrants(t.Context(), authserver.GrantFilter{}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run(t.Context(), st.URL, client.Config{Store: grants}, &out, &errOut); code != exitNeedsReauth {
		t.Fatalf("exit %d, want %d: %s", code, exitNeedsReauth, errOut.String())
	}
	if !strings.Contains(errOut.String(), "sign in to "+st.URL+" again (refresh_rejected: invalid_grant)") {
		t.Errorf("stderr: %q", errOut.String())
	}
}
