// Command client is the MCP client that the official MCP conformance suite
// (npm @modelcontextprotocol/conformance) drives to test evergrant's OAuth
// client Transport together with the official Go SDK.
//
// The suite runs it as
//
//	client [args...] <server-url>
//
// with the scenario name in MCP_CONFORMANCE_SCENARIO, an optional JSON
// object of scenario data in MCP_CONFORMANCE_CONTEXT (pre-registered client
// credentials, for example), and, from suite 0.2 on, the protocol version to
// speak in MCP_CONFORMANCE_PROTOCOL_VERSION.
//
// Every scenario goes through a client.Transport (memory store, headless
// authorizer), so a server that asks for authorization is handled alike in
// every scenario. The context's client_id and client_secret become the
// pre-registered client; the Client ID Metadata Document URL is the one the
// suite's basic-cimd scenario expects. The session speaks the protocol
// version the suite names (2025-11-25 when it names none): initialize for
// dated versions, server/discover for 2026-07-28.
//
// For auth/* scenarios, known or not, the client connects, lists the tools
// and calls each one with empty arguments, one after another. For the other
// scenarios it also answers elicitation (accepting with the schema's
// defaults), sampling and roots requests, and calls each tool with a value
// for every required argument, or the calls the context's "toolCalls" names;
// see toolCalls for the scenarios that need something else.
//
// Exit status: 0 when the scenario's steps all succeeded; 3 when a step
// needs a new sign-in (a line starting with "needs_reauth" is printed on
// stderr); 1 for any other failure, with the reason on stderr. Logs go to
// stderr; tokens and client secrets are never printed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/store"
)

const (
	// defaultProtocolVersion is spoken when the suite does not name one
	// (suite 0.1.x); those suites test the 2025-11-25 revision.
	defaultProtocolVersion = "2025-11-25"
	// redirectURI is the redirect URI the suite's own reference client
	// registers; the headless authorizer never fetches it.
	redirectURI = "http://localhost:3000/callback"
	// cimdURL is the Client ID Metadata Document URL the suite's basic-cimd
	// scenario expects as client_id (it is fixed in the suite, not passed in
	// the context).
	cimdURL = "https://conformance-test.local/client-metadata.json"
	// overallTimeout stays below the suite's default per-scenario timeout
	// (30 s), so the client reports its own error instead of being killed.
	overallTimeout = 25 * time.Second
	// exitNeedsReauth is the exit status when a new sign-in is needed.
	exitNeedsReauth = 3
)

func main() { os.Exit(run(os.Args[1:], os.Getenv)) }

func run(args []string, getenv func(string) string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		fmt.Fprintln(os.Stderr, "error: usage: client [args...] <server-url> (scenario in MCP_CONFORMANCE_SCENARIO)")
		return 1
	}
	serverURL := args[len(args)-1]
	sc := scenario{
		name:            getenv("MCP_CONFORMANCE_SCENARIO"),
		server:          serverURL,
		protocolVersion: getenv("MCP_CONFORMANCE_PROTOCOL_VERSION"),
		log:             log,
	}
	if sc.protocolVersion == "" {
		sc.protocolVersion = defaultProtocolVersion
	}
	var err error
	if sc.ctx, err = parseContext(getenv("MCP_CONFORMANCE_CONTEXT")); err != nil {
		fmt.Fprintf(os.Stderr, "error: MCP_CONFORMANCE_CONTEXT: %v\n", err)
		return 1
	}
	log.Info("scenario", "name", sc.name, "server", serverURL, "protocol_version", sc.protocolVersion,
		"context_keys", strings.Join(sc.ctx.keys(), ","))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, overallTimeout)
	defer cancel()

	err = sc.run(ctx)
	return sc.exitStatus(err)
}

// exitStatus reports err on stderr and maps it to the exit status.
func (sc *scenario) exitStatus(err error) int {
	if err == nil {
		sc.log.Info("scenario done", "name", sc.name)
		return 0
	}
	var nr *client.NeedsReauthError
	switch {
	case errors.As(err, &nr):
		fmt.Fprintf(os.Stderr, "needs_reauth: scenario %s: %v\n", sc.name, err)
		return exitNeedsReauth
	case sc.reauth() != nil:
		// The SDK reported the failure without the Transport's error in
		// its chain; the Transport said a new sign-in is needed.
		fmt.Fprintf(os.Stderr, "needs_reauth: scenario %s: %v (cause: %v)\n", sc.name, sc.reauth(), err)
		return exitNeedsReauth
	default:
		fmt.Fprintf(os.Stderr, "error: scenario %s: %v\n", sc.name, err)
		return 1
	}
}

// confContext is MCP_CONFORMANCE_CONTEXT: a JSON object whose keys depend on
// the scenario. Known keys: name; client_id and client_secret (pre-registered
// client, client credentials); issuer (pre-registration, 0.2); private_key_pem,
// signing_algorithm (private_key_jwt); idp_* (cross-app access); valid_jwt,
// wrong_audience_jwt, expired_jwt (workload identity).
type confContext map[string]json.RawMessage

func parseContext(raw string) (confContext, error) {
	if strings.TrimSpace(raw) == "" {
		return confContext{}, nil
	}
	var c confContext
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if c == nil {
		c = confContext{}
	}
	return c, nil
}

// str returns the string value of key, or "".
func (c confContext) str(key string) string {
	var s string
	if v, ok := c[key]; ok && json.Unmarshal(v, &s) == nil {
		return s
	}
	return ""
}

// keys lists the keys (never the values, which may be secrets).
func (c confContext) keys() []string {
	ks := make([]string, 0, len(c))
	for k := range c {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// unsupportedKeys are context keys for features this client does not have.
var unsupportedKeys = []string{
	"private_key_pem", "signing_algorithm",
	"idp_client_id", "idp_id_token", "idp_issuer", "idp_token_endpoint",
	"valid_jwt", "wrong_audience_jwt", "expired_jwt",
}

type scenario struct {
	name            string
	server          string
	protocolVersion string
	ctx             confContext
	log             *slog.Logger

	mu          sync.Mutex
	needsReauth *client.NeedsReauthError
}

func (sc *scenario) auth() bool { return strings.HasPrefix(sc.name, "auth/") }

func (sc *scenario) reauth() *client.NeedsReauthError {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.needsReauth
}

// transport builds the OAuth Transport from the scenario context.
func (sc *scenario) transport() *client.Transport {
	cfg := client.Config{
		Store:             &store.Memory{},
		Authorizer:        client.NewHeadlessAuthorizer(redirectURI, nil),
		ClientID:          sc.ctx.str("client_id"),
		ClientSecret:      sc.ctx.str("client_secret"),
		ClientAuthMethod:  sc.ctx.str("token_endpoint_auth_method"),
		ClientMetadataURL: cimdURL,
		ClientName:        "evergrant-conformance",
		Logger:            sc.log,
		OnNeedsReauth: func(e *client.NeedsReauthError) {
			sc.mu.Lock()
			sc.needsReauth = e
			sc.mu.Unlock()
		},
	}
	if u := sc.ctx.str("client_metadata_url"); u != "" {
		cfg.ClientMetadataURL = u
	}
	var ignored []string
	for _, k := range unsupportedKeys {
		if _, ok := sc.ctx[k]; ok {
			ignored = append(ignored, k)
		}
	}
	if len(ignored) > 0 {
		sc.log.Warn("the scenario context carries data for features this client does not implement; ignored",
			"keys", strings.Join(ignored, ","))
	}
	switch {
	case cfg.ClientID != "":
		sc.log.Info("client identity: pre-registered", "client_id", cfg.ClientID, "has_secret", cfg.ClientSecret != "")
	default:
		sc.log.Info("client identity: client ID metadata document if supported, else dynamic registration")
	}
	return client.NewTransport(cfg)
}

func (sc *scenario) run(ctx context.Context) error {
	tr := sc.transport()
	defer func() {
		// A refresh running in the background finishes (and is counted)
		// before the stats and the exit.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), client.DefaultRefreshTimeout+15*time.Second)
		defer cancel()
		tr.Wait(wctx)
		s := tr.Stats()
		sc.log.Info("transport stats", "requests", s.Requests, "unauthorized", s.Unauthorized,
			"authorizations", s.Authorizations, "refreshes", s.Refreshes, "retries", s.Retries,
			"needs_reauth", s.NeedsReauth)
	}()

	c := mcp.NewClient(&mcp.Implementation{Name: "evergrant-conformance-client", Version: "0.1.0"}, sc.clientOptions())
	if !sc.auth() {
		//lint:ignore SA1019 the conformance suite still tests roots, deprecated but in the protocol.
		c.AddRoots(&mcp.Root{URI: "file:///tmp/evergrant-conformance", Name: "conformance"})
	}
	t := &mcp.StreamableClientTransport{Endpoint: sc.server, HTTPClient: &http.Client{Transport: tr}}
	sc.log.Info("connecting")
	cs, err := c.Connect(ctx, t, &mcp.ClientSessionOptions{ProtocolVersion: sc.protocolVersion})
	if err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	defer cs.Close()
	if r := cs.InitializeResult(); r != nil {
		name := ""
		if r.ServerInfo != nil {
			name = r.ServerInfo.Name
		}
		sc.log.Info("initialized", "protocol_version", r.ProtocolVersion, "server", name)
	}

	var tools []*mcp.Tool
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			return fmt.Errorf("tools/list: %w", err)
		}
		tools = append(tools, tool)
	}
	sc.log.Info("tools listed", "count", len(tools))

	for _, call := range sc.toolCalls(tools) {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: call.Name, Arguments: call.Arguments})
		if err != nil {
			return fmt.Errorf("tools/call %s: %w", call.Name, err)
		}
		if res.IsError {
			// A tool's own failure is an answer, not a protocol error.
			sc.log.Warn("tool returned an error result", "tool", call.Name, "text", resultText(res))
		} else {
			sc.log.Info("tool called", "tool", call.Name, "text", resultText(res))
		}
	}
	if err := cs.Close(); err != nil && !errors.Is(err, mcp.ErrConnectionClosed) {
		sc.log.Info("close", "err", err)
	}
	return nil
}

// toolCall is one tools/call to make.
type toolCall struct {
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

// toolCalls decides which tools to call, with which arguments:
//   - auth/* scenarios: every listed tool, with empty arguments;
//   - a context with "toolCalls" (http-custom-headers): exactly those;
//   - json-schema-ref-no-deref: none (the scenario checks that listing the
//     tools does not fetch a network $ref; its server implements no tools);
//   - json-schema-2020-12-preservation: the echo tool gets the other tool's
//     inputSchema, verbatim, as its "schema" argument;
//   - otherwise every listed tool, with a value for each required argument.
func (sc *scenario) toolCalls(tools []*mcp.Tool) []toolCall {
	if sc.auth() {
		calls := make([]toolCall, 0, len(tools))
		for _, t := range tools {
			calls = append(calls, toolCall{Name: t.Name, Arguments: map[string]any{}})
		}
		return calls
	}
	if raw, ok := sc.ctx["toolCalls"]; ok {
		var calls []toolCall
		if err := json.Unmarshal(raw, &calls); err == nil {
			return calls
		}
		sc.log.Warn("context toolCalls is not a list of {name, arguments}; ignored")
	}
	switch sc.name {
	case "json-schema-ref-no-deref":
		return nil
	case "json-schema-2020-12-preservation":
		const echo = "json_schema_echo"
		var focal any
		for _, t := range tools {
			if t.Name != echo {
				focal = t.InputSchema
				break
			}
		}
		var calls []toolCall
		for _, t := range tools {
			args := argsFor(t.InputSchema)
			if t.Name == echo {
				args = map[string]any{"schema": focal}
			}
			calls = append(calls, toolCall{Name: t.Name, Arguments: args})
		}
		return calls
	}
	calls := make([]toolCall, 0, len(tools))
	for _, t := range tools {
		calls = append(calls, toolCall{Name: t.Name, Arguments: argsFor(t.InputSchema)})
	}
	return calls
}

// clientOptions sets the handlers for server-to-client requests. Auth
// scenarios need none.
func (sc *scenario) clientOptions() *mcp.ClientOptions {
	if sc.auth() {
		return &mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{}}
	}
	return &mcp.ClientOptions{
		ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			content := defaultsFor(req.Params.RequestedSchema)
			sc.log.Info("elicitation: accepting with the schema's defaults", "fields", len(content))
			return &mcp.ElicitResult{Action: "accept", Content: content}, nil
		},
		//lint:ignore SA1019 the conformance suite still tests sampling, deprecated but in the protocol.
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			sc.log.Info("sampling: answering with a fixed text")
			//lint:ignore SA1019 sampling, as above.
			return &mcp.CreateMessageResult{
				Content: &mcp.TextContent{Text: "This is a response from the evergrant conformance client."},
				Model:   "evergrant-conformance",
				Role:    "assistant",
			}, nil
		},
	}
}

// schemaProps decodes a JSON schema (as the SDK hands it over) into its
// properties and required list.
func schemaProps(schema any) (props map[string]map[string]any, required []string) {
	data, err := json.Marshal(schema)
	if err != nil {
		return nil, nil
	}
	var s struct {
		Properties map[string]map[string]any `json:"properties"`
		Required   []string                  `json:"required"`
	}
	if json.Unmarshal(data, &s) != nil {
		return nil, nil
	}
	return s.Properties, s.Required
}

// defaultsFor is the content of an accepted elicitation: every property's
// default (SEP-1034).
func defaultsFor(schema any) map[string]any {
	props, required := schemaProps(schema)
	out := map[string]any{}
	for name, p := range props {
		if v, ok := p["default"]; ok {
			out[name] = v
		} else if slices.Contains(required, name) {
			out[name] = sampleValue(p)
		}
	}
	return out
}

// argsFor makes arguments for a tool: a value for every required property.
func argsFor(schema any) map[string]any {
	props, required := schemaProps(schema)
	out := map[string]any{}
	for _, name := range required {
		out[name] = sampleValue(props[name])
	}
	return out
}

// sampleValue is a plausible value for a property schema.
func sampleValue(p map[string]any) any {
	if v, ok := p["default"]; ok {
		return v
	}
	if e, ok := p["enum"].([]any); ok && len(e) > 0 {
		return e[0]
	}
	if v, ok := p["const"]; ok {
		return v
	}
	t, _ := p["type"].(string)
	switch t {
	case "number", "integer":
		return 1
	case "boolean":
		return true
	case "array":
		return []any{}
	case "object":
		return argsFor(p)
	case "null":
		return nil
	default:
		return "test"
	}
}

// resultText is a short summary of a tool result's text content.
func resultText(r *mcp.CallToolResult) string {
	var parts []string
	for _, c := range r.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, t.Text)
		}
	}
	s := strings.Join(parts, " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
