// mcp_client_refresh.mjs drives an MCP server protected by OAuth with the MCP
// TypeScript SDK's Client, StreamableHTTPClientTransport and an in-memory
// OAuthClientProvider, the way an application built on that SDK does, and
// prints what it observed as one JSON object (the last line of stdout) for a
// Go test to assert (the expiry signal: docs/design.md#signal-rule-1).
//
// Steps:
//   1. connect: the server answers 401; the SDK discovers the protected
//      resource and authorization server metadata, registers a public client,
//      and calls redirectToAuthorization, which fetches the authorization URL
//      without following the redirect (the server auto-approves) and keeps the
//      code; then transport.finishAuth(code) and a reconnect with a new
//      transport, as the SDK's simpleOAuthClient example does;
//   2. list tools, call whoami, call upstream_search;
//   3. print "READY" on stdout and wait for a line "GO" on stdin (meanwhile the
//      Go side makes the upstream reject the access token);
//   4. call upstream_search again: the server answers that POST with 401
//      invalid_token, and the SDK is expected to refresh (refresh_token grant)
//      and send the same message again;
//   5. only if step 4 failed: call upstream_search once more, to tell "the
//      SDK refreshed but did not retry" from "nothing works any more".
//
// Inputs (flags win over environment variables):
//   --mcp / EVERGRANT_MCP_URL   the MCP endpoint, e.g. http://127.0.0.1:8400/mcp
//   --query                     what to search for (default "refresh")
//
// The output holds booleans, counts, JSON-RPC ids and public values only:
// never a token, a code, a PKCE verifier or a client secret. On an unexpected
// failure the script names the failed step on stderr and exits 1.

import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

import { HeadlessProvider } from './headless_provider.mjs';

const { values: flags } = parseArgs({
    options: {
        mcp: { type: 'string' },
        query: { type: 'string', default: 'refresh' }
    },
    strict: true
});
const mcpUrl = flags.mcp ?? process.env.EVERGRANT_MCP_URL;
if (!mcpUrl) {
    console.error('usage: node mcp_client_refresh.mjs --mcp URL [--query Q] (or EVERGRANT_MCP_URL)');
    process.exit(2);
}
const query = flags.query;

/** describeError names an error by class and message (messages here carry no secrets). */
function describeError(err) {
    if (!(err instanceof Error)) {
        return String(err);
    }
    const code = err.code !== undefined ? ` (code ${err.code})` : '';
    return `${err.name}${code}: ${err.message}`;
}

/** step runs fn and, if it throws, reports which step failed and exits. */
async function step(name, fn) {
    try {
        return await fn();
    } catch (err) {
        console.error(`mcp_client_refresh: step "${name}" failed: ${describeError(err)}`);
        process.exit(1);
    }
}

// --- What the script counts --------------------------------------------------

const counts = {
    redirects_to_authorization: 0,
    authorization_code_grants: 0,
    refresh_grants: 0,
    save_tokens: 0,
    access_token_changes: 0,
    refresh_token_changes: 0
};
/** mcpPosts logs every POST to the MCP endpoint: JSON-RPC method and id, HTTP status, WWW-Authenticate error. */
const mcpPosts = [];

/** formParam reads a parameter of an x-www-form-urlencoded request body. */
function formParam(body, name) {
    if (body instanceof URLSearchParams) {
        return body.get(name);
    }
    if (typeof body === 'string') {
        return new URLSearchParams(body).get(name);
    }
    return null;
}

/** wwwAuthError extracts the error parameter of a WWW-Authenticate header. */
function wwwAuthError(header) {
    const m = /error="([^"]*)"/.exec(header ?? '');
    return m ? m[1] : undefined;
}

const mcpHref = new URL(mcpUrl).href;

/**
 * countingFetch is given to the transport as its fetch: the SDK sends both the
 * MCP requests and its OAuth requests (discovery, registration, token) through
 * it, so grants at the token endpoint and MCP POSTs are seen here.
 */
async function countingFetch(input, init) {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    const grant = method === 'POST' ? formParam(init?.body, 'grant_type') : null;
    if (grant === 'refresh_token') {
        counts.refresh_grants++;
    } else if (grant === 'authorization_code') {
        counts.authorization_code_grants++;
    }
    const response = await fetch(input, init);
    if (method === 'POST' && url.href === mcpHref && typeof init?.body === 'string') {
        let msg;
        try {
            msg = JSON.parse(init.body);
        } catch {
            msg = {};
        }
        mcpPosts.push({
            method: msg.method,
            id: msg.id,
            status: response.status,
            www_authenticate_error: wwwAuthError(response.headers.get('www-authenticate'))
        });
    }
    return response;
}

// --- The OAuthClientProvider -------------------------------------------------

/**
 * CountingProvider is the shared headless provider, counting what the story
 * asserts: saved tokens, changed tokens, authorizations.
 */
class CountingProvider extends HeadlessProvider {
    saveTokens(tokens) {
        counts.save_tokens++;
        const old = this.tokens();
        if (old !== undefined) {
            if (tokens.access_token !== old.access_token) {
                counts.access_token_changes++;
            }
            if (tokens.refresh_token !== old.refresh_token) {
                counts.refresh_token_changes++;
            }
        }
        super.saveTokens(tokens);
    }
    async redirectToAuthorization(authorizationUrl) {
        counts.redirects_to_authorization++;
        await super.redirectToAuthorization(authorizationUrl);
    }
}

// --- The story ---------------------------------------------------------------

const sdkPackage = JSON.parse(
    await readFile(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')
);
const facts = { node_version: process.version, sdk_version: sdkPackage.version };

const provider = new CountingProvider({ clientName: 'evergrant interop (MCP TypeScript SDK Client)' });
const authorization = () => ({ ...provider.lastAuthorization, code: provider.code });
const client = new Client({ name: 'evergrant-interop-refresh', version: '0.0.0' }, { capabilities: {} });
const newTransport = () => new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider, fetch: countingFetch });

// 1. Connect; the first attempt ends in UnauthorizedError after the SDK sent
// the user agent to the authorization endpoint.
let transport = newTransport();
let firstConnectUnauthorized = false;
try {
    await client.connect(transport);
} catch (err) {
    if (!(err instanceof UnauthorizedError)) {
        console.error(`mcp_client_refresh: step "connect" failed: ${describeError(err)}`);
        process.exit(1);
    }
    firstConnectUnauthorized = true;
}
facts.authorization = {
    first_connect_unauthorized: firstConnectUnauthorized,
    status: authorization().status,
    redirects_to_redirect_uri: authorization().redirectsToRedirectUri,
    state_matches: authorization().stateMatches,
    code_present: typeof authorization().code === 'string' && authorization().code.length > 0,
    error: authorization().error
};
if (firstConnectUnauthorized) {
    if (!facts.authorization.code_present) {
        console.log(JSON.stringify(facts));
        console.error(`mcp_client_refresh: no authorization code (HTTP ${authorization().status}, error ${authorization().error})`);
        process.exit(1);
    }
    await step('finish authorization', () => transport.finishAuth(authorization().code));
    transport = newTransport();
    await step('reconnect', () => client.connect(transport));
}
facts.tokens_after_authorization = {
    refresh_token_present: typeof provider.tokens()?.refresh_token === 'string',
    token_type: provider.tokens()?.token_type
};

// 2. Tools, whoami, a first search.
const tools = await step('list tools', () => client.listTools());
facts.tools = tools.tools.map(t => t.name).sort();
const whoami = await step('whoami', () => client.callTool({ name: 'whoami', arguments: {} }));
facts.whoami = { is_error: whoami.isError === true, subject: whoami.structuredContent?.subject };

/** search calls upstream_search and describes the outcome. */
async function search() {
    const postsBefore = mcpPosts.length;
    const out = {};
    try {
        const res = await client.callTool({ name: 'upstream_search', arguments: { query } });
        out.ok = res.isError !== true;
        out.is_error = res.isError === true;
        out.results = res.structuredContent?.results;
        if (res.isError) {
            out.error = JSON.stringify(res.content);
        }
    } catch (err) {
        out.ok = false;
        out.error = describeError(err);
        out.error_name = err instanceof Error ? err.name : typeof err;
        out.unauthorized_error = err instanceof UnauthorizedError;
    }
    out.mcp_posts = mcpPosts.slice(postsBefore);
    return out;
}
facts.first_search = await search();
facts.counts_before_signal = { ...counts };

// 3. Hand over to the Go side and wait for "GO".
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
const go = await new Promise(resolve => {
    lines.on('line', line => {
        if (line.trim() === 'GO') {
            resolve(true);
        }
    });
    lines.on('close', () => resolve(false));
    console.log('READY');
});
lines.close();
if (!go) {
    console.error('mcp_client_refresh: stdin closed before "GO"');
    process.exit(1);
}

// 4. The upstream now rejects the access token.
facts.second_search = await search();

// 5. Only if the SDK did not recover within the call: does a following call work?
if (!facts.second_search.ok) {
    facts.third_search = await search();
}

facts.counts = { ...counts };
facts.tokens_after = { refresh_token_present: typeof provider.tokens()?.refresh_token === 'string' };
await client.close();
console.log(JSON.stringify(facts));
