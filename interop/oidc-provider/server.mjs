// server.mjs runs panva's oidc-provider (https://github.com/panva/node-oidc-provider)
// as the authorization server of MCP servers, for the Go tests in
// internal/oidcinterop. It listens on 127.0.0.1 only.
//
//   node server.mjs --resource URL [--resource URL...] [--opaque-resource URL...] [--port N]
//
// Every --resource is an MCP server that gets JWT access tokens (RFC 9068)
// with aud = that URL; every --opaque-resource one that gets opaque access
// tokens, checked by introspection (RFC 7662). Both kinds live
// EVERGRANT_OIDC_ACCESS_TOKEN_TTL seconds (default 5) and carry the scope
// mcp:tools. --port 0 (the default) picks a free port.
//
// The resource server's own client for introspection is
// "mcp-resource-server" with the secret in EVERGRANT_OIDC_RS_SECRET (the
// feature is off without it).
//
// Once listening, it prints one JSON line on stdout:
//
//   {"issuer":"http://127.0.0.1:PORT","version":"9.x.y"}
//
// What oidc-provider decides is left to oidc-provider: its own login and
// consent pages (devInteractions), its default policy for issuing refresh
// tokens (offline_access must be granted), rotation of refresh tokens on
// every use, and revocation of the whole grant when a rotated refresh token
// is presented again.
//
// Test-only, on the same loopback port: GET /__evergrant/stats?client_id=ID
// answers what happened for that client, counted from oidc-provider's
// events: {"authorization_code":n,"refresh_token":n,"grant_errors":{"invalid_grant":n},
// "grants_revoked":n,"authorizations":n,"login_prompts":n,"consent_prompts":n}.
// It never returns token material.
//
// Nothing here prints tokens: stderr gets oidc-provider's warnings and one
// line per unexpected server error.

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    resource: { type: 'string', multiple: true, default: [] },
    'opaque-resource': { type: 'string', multiple: true, default: [] },
  },
});

const MCP_SCOPE = 'mcp:tools';
const accessTokenTTL = Number(process.env.EVERGRANT_OIDC_ACCESS_TOKEN_TTL || '5');
const rsSecret = process.env.EVERGRANT_OIDC_RS_SECRET || '';

// Resource indicators (RFC 8707) this server issues tokens for, by their
// exact URL, and the format of their access tokens.
const resources = new Map();
for (const r of args.resource) resources.set(r, 'jwt');
for (const r of args['opaque-resource']) resources.set(r, 'opaque');

const version = createRequire(import.meta.url)('oidc-provider/package.json').version;

// A fresh signing key per run: RS256 is oidc-provider's default algorithm
// for ID tokens and JWT access tokens alike.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

// stats counts oidc-provider's events by client_id.
const stats = new Map();
function count(clientId, name, sub) {
  if (!clientId) return;
  let s = stats.get(clientId);
  if (!s) {
    s = {
      authorization_code: 0, refresh_token: 0, grant_errors: {}, grants_revoked: 0,
      authorizations: 0, login_prompts: 0, consent_prompts: 0,
    };
    stats.set(clientId, s);
  }
  if (name === 'grant_errors') {
    s.grant_errors[sub] = (s.grant_errors[sub] || 0) + 1;
  } else {
    s[name] += 1;
  }
}

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(args.port), '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const clients = [];
if (rsSecret) {
  clients.push({
    client_id: 'mcp-resource-server',
    client_secret: rsSecret,
    grant_types: [],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  });
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // Scopes listed in the discovery document; the client asks for
  // offline_access only when it is listed here.
  scopes: ['openid', 'offline_access', MCP_SCOPE],
  // Any login name is a user; its account ID is the login name.
  async findAccount(_ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // Every other lifetime (refresh tokens, grants, sessions) is
  // oidc-provider's default.
  ttl: { AccessToken: accessTokenTTL },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: rsSecret !== '' },
    resourceIndicators: {
      enabled: true,
      async getResourceServerInfo(_ctx, resourceIndicator) {
        const format = resources.get(resourceIndicator);
        if (!format) {
          throw new Provider.errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: MCP_SCOPE,
          audience: resourceIndicator,
          accessTokenTTL,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
});

provider.on('grant.success', (ctx) => count(ctx.oidc.client?.clientId, ctx.oidc.params.grant_type));
provider.on('grant.error', (ctx, err) => count(ctx.oidc.client?.clientId, 'grant_errors', err.error || 'unknown'));
provider.on('grant.revoked', (ctx) => count(ctx.oidc.client?.clientId, 'grants_revoked'));
provider.on('authorization.success', (ctx) => count(ctx.oidc.client?.clientId, 'authorizations'));
provider.on('interaction.started', (ctx, prompt) => {
  if (prompt.name === 'login') count(ctx.oidc.client?.clientId, 'login_prompts');
  if (prompt.name === 'consent') count(ctx.oidc.client?.clientId, 'consent_prompts');
});
provider.on('server_error', (_ctx, err) => console.error(`oidc-provider server_error: ${err.message}`));

const callback = provider.callback();
server.on('request', (req, res) => {
  const u = new URL(req.url, issuer);
  if (u.pathname === '/__evergrant/stats' && req.method === 'GET') {
    const s = stats.get(u.searchParams.get('client_id')) || {};
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(s));
    return;
  }
  callback(req, res);
});

// Stop cleanly when the Go test closes stdin or signals.
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ issuer, version })}\n`);
