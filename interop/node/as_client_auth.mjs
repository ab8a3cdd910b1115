// as_client_auth.mjs drives an OAuth 2.1 authorization server through the
// client auth functions that the MCP TypeScript SDK exports, the way an MCP
// client built on that SDK would, and prints what it observed as one JSON
// object on stdout for a Go test to assert.
//
// Steps: authorization server metadata discovery from the issuer; dynamic
// client registration of a public client (token_endpoint_auth_method "none");
// an authorization request with PKCE, resource and scope (the server must
// auto-approve: the script reads code, state and iss from the redirect's
// Location header without following it); the code exchange; two refreshes,
// each with the newest refresh token; then a reuse of the first, already
// rotated, refresh token, which must be refused; then the newest refresh
// token, which a server that revokes the whole family on reuse also refuses.
//
// Inputs (flags win over environment variables):
//   --issuer   / EVERGRANT_ISSUER    the authorization server's issuer URL
//   --resource / EVERGRANT_RESOURCE  the resource (RFC 8707) to ask tokens for
//   --scope    / EVERGRANT_SCOPE     the scope to ask for (space separated)
//
// The output holds booleans and public values only: never a token, a code,
// a PKCE verifier or a client secret. On an unexpected failure the script
// names the failed step on stderr and exits 1.

import { readFile } from 'node:fs/promises';
import { randomBytes, randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';

import {
    discoverAuthorizationServerMetadata,
    exchangeAuthorization,
    refreshAuthorization,
    registerClient,
    startAuthorization
} from '@modelcontextprotocol/sdk/client/auth.js';
import { InvalidGrantError, OAuthError } from '@modelcontextprotocol/sdk/server/auth/errors.js';

const { values: flags } = parseArgs({
    options: {
        issuer: { type: 'string' },
        resource: { type: 'string' },
        scope: { type: 'string' }
    },
    strict: true
});

const issuer = flags.issuer ?? process.env.EVERGRANT_ISSUER;
const resource = flags.resource ?? process.env.EVERGRANT_RESOURCE;
const scope = flags.scope ?? process.env.EVERGRANT_SCOPE;
if (!issuer || !resource || !scope) {
    console.error('usage: node as_client_auth.mjs --issuer URL --resource URL --scope SCOPE (or EVERGRANT_ISSUER, EVERGRANT_RESOURCE, EVERGRANT_SCOPE)');
    process.exit(2);
}

/** step runs fn and, if it throws unexpectedly, reports which step failed (without secrets) and exits. */
async function step(name, fn) {
    try {
        return await fn();
    } catch (err) {
        console.error(`as_client_auth: step "${name}" failed: ${describeError(err)}`);
        process.exit(1);
    }
}

/** describeError names an error by class, OAuth error code and message. */
function describeError(err) {
    if (!(err instanceof Error)) {
        return String(err);
    }
    const code = err instanceof OAuthError ? ` (${err.errorCode})` : '';
    return `${err.name}${code}: ${err.message}`;
}

/** refusal runs a refresh that is expected to fail and describes how it failed. */
async function refusal(fn) {
    try {
        await fn();
        return { rejected: false };
    } catch (err) {
        return {
            rejected: true,
            error_name: err instanceof Error ? err.name : typeof err,
            oauth_error: err instanceof OAuthError,
            invalid_grant_error: err instanceof InvalidGrantError,
            error_code: err instanceof OAuthError ? err.errorCode : undefined
        };
    }
}

const sdkPackage = JSON.parse(
    await readFile(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')
);

const facts = {
    node_version: process.version,
    sdk_version: sdkPackage.version
};

// 1. Authorization server metadata (RFC 8414), discovered from the issuer.
const metadata = await step('discover metadata', async () => {
    const md = await discoverAuthorizationServerMetadata(issuer);
    if (!md) {
        throw new Error('no authorization server metadata found');
    }
    return md;
});
facts.metadata = {
    issuer: metadata.issuer,
    issuer_matches: metadata.issuer === issuer,
    s256_supported: (metadata.code_challenge_methods_supported ?? []).includes('S256'),
    iss_parameter_supported: metadata.authorization_response_iss_parameter_supported === true,
    registration_endpoint_present: typeof metadata.registration_endpoint === 'string',
    auth_method_none_supported: (metadata.token_endpoint_auth_methods_supported ?? []).includes('none'),
    refresh_token_grant_supported: (metadata.grant_types_supported ?? []).includes('refresh_token')
};

// 2. Dynamic client registration (RFC 7591) of a public client with a
// loopback redirect URI (RFC 8252); nothing listens there.
const redirectUri = `http://127.0.0.1:${randomInt(49152, 65535)}/callback`;
const clientInformation = await step('register client', () =>
    registerClient(issuer, {
        metadata,
        clientMetadata: {
            client_name: 'evergrant interop (MCP TypeScript SDK)',
            redirect_uris: [redirectUri],
            token_endpoint_auth_method: 'none',
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code']
        },
        scope
    })
);
facts.registration = {
    client_id_registered: typeof clientInformation.client_id === 'string' && clientInformation.client_id.length > 0,
    client_secret_issued: clientInformation.client_secret !== undefined,
    token_endpoint_auth_method: clientInformation.token_endpoint_auth_method,
    redirect_uris_echoed: JSON.stringify(clientInformation.redirect_uris) === JSON.stringify([redirectUri]),
    grant_types: clientInformation.grant_types
};

// 3. Authorization request with PKCE, resource (RFC 8707) and scope.
const state = randomBytes(16).toString('base64url');
const { authorizationUrl, codeVerifier } = await step('start authorization', () =>
    startAuthorization(issuer, {
        metadata,
        clientInformation,
        redirectUrl: redirectUri,
        scope,
        state,
        resource: new URL(resource)
    })
);
const params = authorizationUrl.searchParams;
facts.authorization_request = {
    pkce_s256: params.get('code_challenge_method') === 'S256' && (params.get('code_challenge') ?? '').length >= 43,
    resource_sent: params.get('resource') === new URL(resource).href,
    scope_sent: params.get('scope') === scope,
    state_sent: params.get('state') === state
};

// 4. The server auto-approves: read the redirect without following it.
const authorizeResponse = await step('authorization endpoint', () => fetch(authorizationUrl, { redirect: 'manual' }));
await authorizeResponse.body?.cancel();
const location = authorizeResponse.headers.get('location');
const redirect = location ? new URL(location, authorizationUrl) : undefined;
const code = redirect?.searchParams.get('code');
const iss = redirect?.searchParams.get('iss');
facts.authorization_response = {
    status: authorizeResponse.status,
    redirects_to_redirect_uri: redirect !== undefined && `${redirect.origin}${redirect.pathname}` === redirectUri,
    code_present: typeof code === 'string' && code.length > 0,
    error: redirect?.searchParams.get('error') ?? undefined,
    state_matches: redirect?.searchParams.get('state') === state,
    iss: iss ?? undefined,
    iss_matches_issuer: iss === issuer && iss === metadata.issuer
};
if (!facts.authorization_response.code_present) {
    console.log(JSON.stringify(facts));
    console.error(`as_client_auth: no authorization code in the response (HTTP ${authorizeResponse.status})`);
    process.exit(1);
}

// 5. Code exchange.
const tokens = await step('exchange authorization code', () =>
    exchangeAuthorization(issuer, {
        metadata,
        clientInformation,
        authorizationCode: code,
        codeVerifier,
        redirectUri,
        resource: new URL(resource)
    })
);
const r1 = tokens.refresh_token;
facts.token = {
    token_type: tokens.token_type,
    access_token_present: typeof tokens.access_token === 'string' && tokens.access_token.length > 0,
    refresh_token_present: typeof r1 === 'string' && r1.length > 0,
    expires_in: tokens.expires_in,
    scope: tokens.scope
};

// 6. Two refreshes, each with the newest refresh token.
const refresh = refreshToken => () =>
    refreshAuthorization(issuer, { metadata, clientInformation, refreshToken, resource: new URL(resource) });
const refreshed1 = await step('first refresh', refresh(r1));
const r2 = refreshed1.refresh_token;
const refreshed2 = await step('second refresh', refresh(r2));
const r3 = refreshed2.refresh_token;
facts.refresh = {
    token_types: [refreshed1.token_type, refreshed2.token_type],
    access_tokens_present: [refreshed1, refreshed2].every(t => typeof t.access_token === 'string' && t.access_token.length > 0),
    access_tokens_distinct: new Set([tokens.access_token, refreshed1.access_token, refreshed2.access_token]).size === 3,
    refresh_tokens_rotated: r1 !== r2 && r2 !== r3 && r1 !== r3
};

// 7. Reusing the first refresh token (rotated away in step 6) must be refused;
// and a server that revokes the family on reuse then refuses the newest too.
facts.reuse = await refusal(refresh(r1));
facts.after_reuse_newest = await refusal(refresh(r3));

console.log(JSON.stringify(facts));
