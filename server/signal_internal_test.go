package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The signal code is one constant, in the range JSON-RPC leaves to
// implementations and clear of the codes MCP and the Go SDK use, and it is
// the code every signal travels with (docs/design.md#signal-rule-3).
func TestSignals_CodeIsFixed(t *testing.T) {
	if signalCode < -32099 || signalCode > -32000 {
		t.Errorf("signalCode %d is outside -32099…-32000", signalCode)
	}
	for _, used := range []int64{-32000, -32001, -32020, -32021, -32022, -32042} {
		if signalCode == used {
			t.Errorf("signalCode %d is a code MCP or the Go SDK uses", signalCode)
		}
	}
	for _, sig := range []error{TokenExpired("upstream said no"), InsufficientScope("files.write")} {
		for _, err := range []error{sig, fmt.Errorf("calling the upstream: %w", sig)} {
			next := func(context.Context, string, mcp.Request) (mcp.Result, error) { return nil, err }
			_, got := signals(next)(context.Background(), "tools/call", nil)
			var je *jsonrpc.Error
			if !errors.As(got, &je) || je.Code != signalCode || errors.Unwrap(got) != nil {
				t.Errorf("%v: the middleware returned %#v, want a bare *jsonrpc.Error with code %d", err, got, signalCode)
			}
		}
	}
}
