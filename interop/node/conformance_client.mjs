// conformance_client.mjs is an MCP client built on the MCP TypeScript SDK
// (@modelcontextprotocol/sdk) the way an ordinary host application uses it,
// run under the client contract of the official MCP conformance suite, so
// that `evergrant check client` can judge what the SDK does about refresh
// (internal/check, recorded in internal/check/testdata/client-typescript-sdk.json).
//
// Contract: node conformance_client.mjs <mcp-server-url>, with the scenario
// name in MCP_CONFORMANCE_SCENARIO and "{}" in MCP_CONFORMANCE_CONTEXT (both
// only logged: the client behaves alike in every scenario, as a host does).
//
// What it does, with the SDK's Client, StreamableHTTPClientTransport and an
// in-memory OAuthClientProvider:
//   1. connect: the server answers 401; the SDK discovers the metadata,
//      registers a public client and calls redirectToAuthorization. The
//      provider plays the user agent headlessly: it fetches the authorization
//      URL without following the redirect (the authorization server
//      auto-approves) and keeps the code from the Location. Then
//      transport.finishAuth(code) and a reconnect with a new transport, as
//      the SDK's simpleOAuthClient example does. This is the only sign-in the
//      host completes: a later UnauthorizedError fails the run, as it would in
//      a host without a person at hand.
//   2. wait until the standalone event stream (the GET the SDK opens, without
//      waiting for it, once the session is initialized) has been answered, at
//      most 2 s; see "Why wait" below;
//   3. list the tools and call each one, one after another, with {} (or with
//      every required string argument filled in);
//   4. close.
//
// Everything after connecting is left to the SDK: reacting to 401 and 403,
// refreshing, retrying. The provider implements the whole OAuthClientProvider
// interface, including the optional invalidateCredentials, through which the
// SDK discards a refresh token the authorization server refused (without it,
// as in the SDK's example provider, the SDK presents the refused refresh
// token a second time), and stores what saveTokens and saveClientInformation
// receive unchanged.
//
// Why wait: connect() resolves while the SDK's GET for the event stream is
// still on its way. When the host's first request is then answered 401
// invalid_token (the refresh/rotation scenario rejects the first tools/list),
// the order in which the GET and that request reach the server decides what
// the SDK does. GET first: one refresh follows. GET answered 401 while the
// POST's refresh is in flight: the SDK sends a second refresh grant with the
// same refresh token (it does not share one refresh between concurrent
// requests), which a rotating authorization server takes as reuse, revoking
// the grant. GET later: it refreshes a second time, in sequence. Without the
// wait, one of the last two happened in about one run in ten on a loaded
// 2-CPU machine. The wait makes the order the usual one, so that the recorded
// results say what the SDK does about each scenario's rule, not which packet
// won; the concurrent refresh is a finding of its own.
//
// Exit status: 0 when every step succeeded, 1 otherwise (the failed step and
// the error on stderr), 2 for a usage error. Logs go to stderr; tokens,
// codes, PKCE verifiers and client secrets are never printed.


import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

import { HeadlessProvider } from './headless_provider.mjs';

const mcpUrl = process.argv[process.argv.length - 1];
if (process.argv.length < 3 || !/^https?:\/\//.test(mcpUrl)) {
    console.error('usage: node conformance_client.mjs <mcp-server-url> (scenario in MCP_CONFORMANCE_SCENARIO)');
    process.exit(2);
}
const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? '';

/** log writes one line to stderr. */
function log(msg) {
    console.error(`conformance_client: ${msg}`);
}

/** describeError names an error by class and message (messages here carry no secrets). */
function describeError(err) {
    if (!(err instanceof Error)) {
        return String(err);
    }
    const code = err.code !== undefined ? ` (code ${err.code})` : '';
    return `${err.name}${code}: ${err.message}`;
}

/** fail reports the failed step and exits 1. */
function fail(stepName, err) {
    log(`step "${stepName}" failed: ${describeError(err)}`);
    process.exit(1);
}

/** step runs fn and, if it throws, reports which step failed and exits 1. */
async function step(name, fn) {
    try {
        return await fn();
    } catch (err) {
        fail(name, err);
    }
}

// --- The run -----------------------------------------------------------------

log(`scenario ${scenario || '(none)'}, server ${mcpUrl}`);
const provider = new HeadlessProvider({ clientName: 'evergrant check client (MCP TypeScript SDK Client)', log });
const client = new Client({ name: 'evergrant-check-typescript-sdk', version: '0.0.0' }, { capabilities: {} });
client.onerror = err => log(`client error: ${describeError(err)}`);
// hostFetch is the transport's fetch: the platform's, noting when the GET for
// the event stream has been answered (headers in; the stream stays open).
const mcpHref = new URL(mcpUrl).href;
let streamAnswered;
const streamStatus = new Promise(resolve => (streamAnswered = resolve));
async function hostFetch(input, init) {
    const response = await fetch(input, init);
    const url = input instanceof Request ? input.url : String(input);
    const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    if (method === 'GET' && new URL(url).href === mcpHref) {
        streamAnswered(response.status);
    }
    return response;
}
const newTransport = () => new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider, fetch: hostFetch });

// 1. Connect; the first attempt ends in UnauthorizedError after the SDK sent
// the user agent to the authorization endpoint.
let transport = newTransport();
try {
    await client.connect(transport);
    log('connected without authorization');
} catch (err) {
    if (!(err instanceof UnauthorizedError)) {
        fail('connect', err);
    }
    if (!provider.code) {
        fail('authorize', new Error('no authorization code came back'));
    }
    await step('finish authorization', () => transport.finishAuth(provider.code));
    transport = newTransport();
    await step('reconnect', () => client.connect(transport));
    log('authorized and connected');
}
const redirectsAtConnect = provider.redirects;

// 2. Let the SDK's event stream GET be answered first (see "Why wait").
let waitTimer;
const stream = await Promise.race([
    streamStatus,
    new Promise(resolve => (waitTimer = setTimeout(() => resolve(undefined), 2000)))
]);
clearTimeout(waitTimer);
log(stream === undefined ? 'no answer to an event stream GET within 2 s; going on' : `event stream GET answered ${stream}`);

// 3. Tools.
const { tools } = await step('tools/list', () => client.listTools());
log(`tools: ${tools.map(t => t.name).join(', ') || '(none)'}`);
for (const tool of tools) {
    const args = {};
    const schema = tool.inputSchema ?? {};
    for (const name of schema.required ?? []) {
        if (schema.properties?.[name]?.type === 'string') {
            args[name] = 'evergrant';
        }
    }
    const res = await step(`tools/call ${tool.name}`, () => client.callTool({ name: tool.name, arguments: args }));
    if (res.isError) {
        fail(`tools/call ${tool.name}`, new Error('the tool answered with an error result'));
    }
    log(`called ${tool.name}`);
}
if (provider.redirects > redirectsAtConnect) {
    // The SDK started a sign-in on its own and still got through (it cannot
    // here: the host completes no second sign-in); say so for the record.
    log(`the SDK sent the user agent to the authorization endpoint ${provider.redirects - redirectsAtConnect} more time(s)`);
}

// 4. Close.
await step('close', () => client.close());
log('done');
process.exit(0);
