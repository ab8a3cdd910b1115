// headless_provider.mjs: an in-memory OAuthClientProvider for the MCP
// TypeScript SDK whose "user agent" is headless: redirectToAuthorization
// fetches the authorization URL without following the redirect (the server
// auto-approves) and keeps the code from its Location. Shared by the
// interop scripts; it never prints a token, code or verifier.

import { randomBytes, randomInt } from 'node:crypto';

/** HeadlessProvider implements the SDK's OAuthClientProvider in memory. */
export class HeadlessProvider {
    /**
     * @param {object} opts
     * @param {string} opts.clientName  client_name sent in the registration
     * @param {(msg: string) => void} [opts.log]  where to report (stderr)
     */
    constructor({ clientName, log = () => {} }) {
        // A loopback redirect URI (RFC 8252); nothing listens there.
        this._redirectUrl = `http://127.0.0.1:${randomInt(49152, 65535)}/callback`;
        this._clientName = clientName;
        this._log = log;
        this._state = undefined;
        /** The code of the last authorization, if it succeeded; never printed. */
        this.code = undefined;
        /** How often the SDK sent the user agent to the authorization endpoint. */
        this.redirects = 0;
        /** What the last authorization response looked like (no secrets). */
        this.lastAuthorization = { status: undefined, redirectsToRedirectUri: false, stateMatches: false, error: undefined };
    }
    get redirectUrl() {
        return this._redirectUrl;
    }
    get clientMetadata() {
        return {
            client_name: this._clientName,
            redirect_uris: [this._redirectUrl],
            token_endpoint_auth_method: 'none',
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code']
        };
    }
    state() {
        this._state = randomBytes(16).toString('base64url');
        return this._state;
    }
    clientInformation() {
        return this._clientInformation;
    }
    saveClientInformation(info) {
        // Stored unchanged: the SDK stamps it with its authorization server.
        this._clientInformation = info;
    }
    tokens() {
        return this._tokens;
    }
    saveTokens(tokens) {
        this._tokens = tokens;
    }
    invalidateCredentials(scope) {
        this._log(`the SDK invalidated credentials: ${scope}`);
        if (scope === 'all' || scope === 'client') {
            this._clientInformation = undefined;
        }
        if (scope === 'all' || scope === 'tokens') {
            this._tokens = undefined;
        }
        if (scope === 'all' || scope === 'verifier') {
            this._codeVerifier = undefined;
        }
    }
    async redirectToAuthorization(authorizationUrl) {
        this.redirects++;
        this.code = undefined;
        this._log(`the SDK sent the user agent to the authorization endpoint (time ${this.redirects})`);
        const response = await fetch(authorizationUrl, { redirect: 'manual' });
        await response.body?.cancel();
        const location = response.headers.get('location');
        const target = location ? new URL(location, authorizationUrl) : undefined;
        const a = {
            status: response.status,
            redirectsToRedirectUri: target !== undefined && `${target.origin}${target.pathname}` === this._redirectUrl,
            stateMatches: target?.searchParams.get('state') === this._state,
            error: target?.searchParams.get('error') ?? undefined
        };
        this.lastAuthorization = a;
        if (!a.redirectsToRedirectUri) {
            this._log(`the authorization endpoint answered ${a.status} without a redirect to the redirect URI`);
        } else if (!a.stateMatches) {
            this._log('the authorization response carried another state; ignored');
        } else if (a.error) {
            this._log(`the authorization endpoint answered error=${a.error}`);
        } else {
            this.code = target.searchParams.get('code') ?? undefined;
        }
    }
    saveCodeVerifier(verifier) {
        this._codeVerifier = verifier;
    }
    codeVerifier() {
        if (!this._codeVerifier) {
            throw new Error('no code verifier saved');
        }
        return this._codeVerifier;
    }
}
