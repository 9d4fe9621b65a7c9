// An MCP client for the Rust test suite (tests/api/mcp.rs): the official TypeScript SDK's own OAuth
// support (StreamableHTTPClientTransport with an OAuthClientProvider) against an MCP server that
// Authio protects. The client knows only the MCP server's URL: the 401, the protected-resource
// metadata and the authorization server's metadata tell it the rest. Where the SDK hands the
// authorization URL to a browser, a scripted user answers the hosted pages over HTTP with a cookie
// jar (signs in with a password, allows or denies on the consent page); the redirect reaches this
// client's loopback callback, which hands the code to `transport.finishAuth`.
//
//   MODE         dynamic            RFC 7591 registration (clientInformation() is undefined at first);
//                                   then a token for another resource, offline access, refresh, and
//                                   the refresh after the user revokes the consent
//                metadata-document  the client_id is the URL of a Client ID Metadata Document this
//                                   script serves on loopback
//                blocked            CLIENT_IDS (JSON array) are known already; their authorization
//                                   requests are expected to fail
//   MCP_URL      the MCP server (its /mcp URL); MCP_URL_B another one (dynamic mode)
//   EMAIL, PASSWORD   the user; APPS_URL   the user's connected-apps page (dynamic mode)
//
// Prints one JSON line on stdout with what happened; progress goes to stderr.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { auth, discoverOAuthServerInfo, refreshAuthorization, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const env = name => {
    const v = process.env[name];
    if (!v) {
        throw new Error(`${name} is required`);
    }
    return v;
};
const MODE = env('MODE');
const MCP_URL = env('MCP_URL');
const SDK_VERSION = JSON.parse(
    readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')
).version;
const log = (...a) => console.error('[mcp client]', ...a);

// ---------------------------------------------------------------------------------------------
// Every HTTP exchange the SDK makes (MCP requests, discovery, registration, token), for the report.

const trace = [];
const tracingFetch = async (url, init) => {
    const res = await fetch(url, init);
    const u = new URL(String(url));
    const entry = `${init?.method ?? 'GET'} ${u.origin}${u.pathname} ${res.status}`;
    const challenge = res.headers.get('www-authenticate');
    trace.push(challenge ? `${entry} [${challenge}]` : entry);
    return res;
};

// ---------------------------------------------------------------------------------------------
// The client's loopback listener: the redirect_uri, and its Client ID Metadata Document.

function listen(handler) {
    return new Promise(resolve => {
        const server = http.createServer(handler);
        server.listen(0, '127.0.0.1', () => resolve(server));
    });
}

const callbacks = [];
const documentFetches = [];
let documentBody;
const loopback = await listen((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/callback') {
        callbacks.push(Object.fromEntries(url.searchParams));
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('You can close this window.');
    } else if (url.pathname === '/client.json' && documentBody) {
        documentFetches.push({ user_agent: req.headers['user-agent'] ?? null, accept: req.headers.accept ?? null });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(documentBody));
    } else {
        res.writeHead(404);
        res.end();
    }
});
const BASE = `http://127.0.0.1:${loopback.address().port}`;
const REDIRECT_URI = `${BASE}/callback`;
const DOCUMENT_URL = `${BASE}/client.json`;
const CLIENT_NAME = 'SDK Test Agent';

const clientMetadata = {
    client_name: CLIENT_NAME,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none'
};

// ---------------------------------------------------------------------------------------------
// The user: a cookie jar, the hosted pages' forms answered over HTTP.

const decode = s =>
    s.replace(/&(#x[0-9a-f]+|#[0-9]+|amp|lt|gt|quot|apos);/gi, (_, e) => {
        const named = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }[e.toLowerCase()];
        if (named) return named;
        return String.fromCodePoint(e[1].toLowerCase() === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    });
const attrs = tag => Object.fromEntries([...tag.matchAll(/([\w-]+)="([^"]*)"/g)].map(m => [m[1], decode(m[2])]));
const text = html =>
    decode(html.replace(/<style[\s\S]*?<\/style>/g, '').replace(/<[^>]+>/g, ' '))
        .replace(/\s+/g, ' ')
        .trim();

function forms(html, base) {
    return [...html.matchAll(/<form([^>]*)>([\s\S]*?)<\/form>/g)].map(m => {
        const a = attrs(m[1]);
        const inputs = [...m[2].matchAll(/<input([^>]*)>/g)].map(i => attrs(i[1]));
        const buttons = [...m[2].matchAll(/<button([^>]*)>/g)].map(b => attrs(b[1]));
        return {
            action: new URL(a.action ?? '', base).href,
            hidden: inputs.filter(i => i.type === 'hidden').map(i => [i.name, i.value ?? '']),
            names: inputs.map(i => i.name),
            buttons,
            html: m[2]
        };
    });
}

class User {
    constructor(email, password) {
        this.email = email;
        this.password = password;
        this.cookies = new Map();
        this.decision = 'allow';
        this.consentPages = [];
    }

    async fetch(url, { method = 'GET', form } = {}) {
        const headers = { accept: 'text/html' };
        if (this.cookies.size) {
            headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
        }
        let body;
        if (form) {
            headers['content-type'] = 'application/x-www-form-urlencoded';
            body = new URLSearchParams(form).toString();
        }
        const res = await fetch(url, { method, headers, body, redirect: 'manual' });
        for (const c of res.headers.getSetCookie()) {
            const [pair, ...rest] = c.split(';');
            const at = pair.indexOf('=');
            const [k, v] = [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
            if (!v || rest.some(r => /^\s*max-age=0\s*$/i.test(r))) {
                this.cookies.delete(k);
            } else {
                this.cookies.set(k, v);
            }
        }
        return res;
    }

    /** Open an authorization URL and act as a person would until the browser leaves the
     * authorization server (back at the client) or a page ends the journey. */
    async authorize(start) {
        let url = String(start);
        let request = {};
        const steps = [];
        for (let i = 0; i < 20; i++) {
            const res = await this.fetch(url, request);
            steps.push(`${request.method ?? 'GET'} ${new URL(url).pathname} ${res.status}`);
            request = {};
            if (res.status >= 300 && res.status < 400) {
                await res.body?.cancel();
                url = new URL(res.headers.get('location'), url).href;
                continue;
            }
            const html = await res.text();
            if (url.startsWith(REDIRECT_URI)) {
                return { at_client: true, steps };
            }
            if (res.status !== 200) {
                return { at_client: false, status: res.status, page: text(html).slice(0, 400), steps };
            }
            const found = forms(html, url);
            const signin = found.find(f => f.names.includes('password'));
            const consent = found.find(f => f.buttons.some(b => b.name === 'decision'));
            if (signin) {
                request = { method: 'POST', form: [...signin.hidden, ['email', this.email], ['password', this.password]] };
                url = signin.action;
            } else if (consent) {
                const section = html.match(/<section aria-label="the application asking">([\s\S]*?)<\/section>/);
                this.consentPages.push(text(section ? section[1] : html));
                request = { method: 'POST', form: [...consent.hidden, ['decision', this.decision]] };
                url = consent.action;
            } else {
                return { at_client: false, status: 200, page: text(html).slice(0, 400), steps };
            }
        }
        return { at_client: false, page: 'too many steps', steps };
    }

    /** On the connected-apps page: what is listed, and revoke the entries of `clientName`. */
    async revoke(appsUrl, clientName) {
        const res = await this.fetch(appsUrl);
        const html = await res.text();
        const sections = [...html.matchAll(/<section[^>]*aria-label="connected application">([\s\S]*?)<\/section>/g)];
        const listed = sections.map(s => text(s[1]).replace(/ Revoke access$/, ''));
        let revoked = 0;
        let after = '';
        for (const s of sections.filter(s => text(s[1]).startsWith(clientName))) {
            const form = forms(s[1], appsUrl).find(f => f.action.endsWith('/revoke'));
            // The csrf field is the page's own: the same in every form.
            const r = await this.fetch(form.action, { method: 'POST', form: form.hidden });
            after = text(await r.text());
            if (r.status === 200) {
                revoked += 1;
            }
        }
        return { status: res.status, listed, revoked, notice: after.includes('Access revoked') };
    }
}

// ---------------------------------------------------------------------------------------------
// The OAuthClientProvider: state kept in memory, the browser is the scripted user.

class Provider {
    constructor(user, { clientInformation, clientMetadataUrl } = {}) {
        this.user = user;
        this._client = clientInformation;
        if (clientMetadataUrl) {
            this.clientMetadataUrl = clientMetadataUrl;
        }
        this.registrations = 0;
        this.authorizations = [];
        this.invalidated = [];
    }
    get redirectUrl() {
        return REDIRECT_URI;
    }
    get clientMetadata() {
        return clientMetadata;
    }
    state() {
        this._state = randomBytes(16).toString('base64url');
        return this._state;
    }
    clientInformation() {
        return this._client;
    }
    saveClientInformation(info) {
        if (!this._client || info.client_id !== this._client.client_id) {
            this.registrations += 1;
        }
        this._client = info;
    }
    tokens() {
        return this._tokens;
    }
    saveTokens(tokens) {
        this._tokens = tokens;
    }
    saveCodeVerifier(v) {
        this._verifier = v;
    }
    codeVerifier() {
        return this._verifier;
    }
    invalidateCredentials(scope) {
        this.invalidated.push(scope);
        if (scope === 'all' || scope === 'client') this._client = undefined;
        if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
        if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
    }
    async redirectToAuthorization(url) {
        const params = Object.fromEntries(url.searchParams);
        delete params.code_challenge;
        delete params.state;
        const before = callbacks.length;
        const journey = await this.user.authorize(url);
        const back = callbacks.length > before ? callbacks[callbacks.length - 1] : undefined;
        this.authorizations.push({
            endpoint: `${url.origin}${url.pathname}`,
            params,
            journey,
            callback: back && { ...back, code: back.code ? '(a code)' : undefined, state_matches: back.state === this._state }
        });
        this.code = back?.code;
        log('authorization', JSON.stringify(this.authorizations.at(-1)));
    }
}

// ---------------------------------------------------------------------------------------------

const claims = jwt => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

function newClient() {
    return new Client({ name: 'authio-mcp-test-client', version: '1.0.0' });
}

/** Connect as the SDK's examples do: a first attempt that ends at the authorization server (or not),
 * `finishAuth` with the code the callback got, and a second connection with the token. */
async function connectWithOAuth(provider, url = MCP_URL) {
    const first = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: tracingFetch });
    const client = newClient();
    try {
        await client.connect(first);
        return { client, transport: first, interactive: false };
    } catch (e) {
        if (!(e instanceof UnauthorizedError)) {
            throw e;
        }
        if (!provider.code) {
            const err = new Error('no authorization code came back');
            err.authorization = provider.authorizations.at(-1);
            throw err;
        }
        await first.finishAuth(provider.code);
        provider.code = undefined;
    }
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: tracingFetch });
    const second = newClient();
    await second.connect(transport);
    return { client: second, transport, interactive: true };
}

async function whoami(client) {
    const tools = await client.listTools();
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    return { tools: tools.tools.map(t => t.name), ...JSON.parse(result.content[0].text) };
}

function tokenSummary(tokens) {
    const c = claims(tokens.access_token);
    return {
        iss: c.iss,
        aud: c.aud,
        sub: c.sub,
        client_id: c.client_id,
        scope: tokens.scope,
        typ: JSON.parse(Buffer.from(tokens.access_token.split('.')[0], 'base64url').toString()).typ,
        has_id_token: Boolean(tokens.id_token),
        has_refresh_token: Boolean(tokens.refresh_token)
    };
}

/** Present `token` to an MCP server as its first request would. */
async function present(url, token) {
    const res = await fetch(url, {
        method: 'POST',
        headers: {
            authorization: `Bearer ${token}`,
            'content-type': 'application/json',
            accept: 'application/json, text/event-stream'
        },
        body: JSON.stringify({
            jsonrpc: '2.0',
            id: 1,
            method: 'initialize',
            params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'probe', version: '1' } }
        })
    });
    await res.body?.cancel();
    return { status: res.status, www_authenticate: res.headers.get('www-authenticate') };
}

async function dynamic(user) {
    const out = {};
    // (a) The standard flow: nothing known but the MCP server's URL.
    const provider = new Provider(user);
    const { client, interactive } = await connectWithOAuth(provider);
    out.interactive = interactive;
    out.registrations = provider.registrations;
    out.client_id = provider.clientInformation()?.client_id;
    out.authorization = provider.authorizations[0];
    out.consent_page = user.consentPages[0];
    out.whoami = await whoami(client);
    out.token = tokenSummary(provider.tokens());
    await client.close();

    // The token for this server, presented to another one the same project protects.
    out.other_resource = await present(env('MCP_URL_B'), provider.tokens().access_token);
    const bare = await fetch(MCP_URL, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    await bare.body?.cancel();
    out.no_token = { status: bare.status, www_authenticate: bare.headers.get('www-authenticate') };

    // Offline access asked for explicitly with the SDK's auth() (a wider scope: consent again).
    // The standard flow above already brought a refresh token (a plain OAuth 2.1 request);
    // the client forgets its tokens so that auth() authorizes rather than refreshes.
    out.refresh_token_in_standard_flow = Boolean(provider.tokens().refresh_token);
    provider.invalidateCredentials('tokens');
    const scope = 'mcp:tools offline_access';
    const started = await auth(provider, { serverUrl: MCP_URL, scope, fetchFn: tracingFetch });
    const offline = { started, authorization: provider.authorizations.at(-1), consent_page: user.consentPages.at(-1) };
    offline.finished = await auth(provider, {
        serverUrl: MCP_URL,
        scope,
        authorizationCode: provider.code,
        fetchFn: tracingFetch
    });
    offline.token = tokenSummary(provider.tokens());
    const firstRefresh = provider.tokens().refresh_token;
    // auth() with a refresh token refreshes.
    offline.refreshed = await auth(provider, { serverUrl: MCP_URL, fetchFn: tracingFetch });
    offline.refresh_rotated = Boolean(provider.tokens().refresh_token) && provider.tokens().refresh_token !== firstRefresh;
    const again = await connectWithOAuth(provider);
    offline.whoami_after_refresh = await whoami(again.client);
    offline.interactive_after_refresh = again.interactive;
    await again.client.close();
    out.offline = offline;

    // The user revokes the client's access at their connected apps.
    out.revocation = await user.revoke(env('APPS_URL'), CLIENT_NAME);
    const info = await discoverOAuthServerInfo(MCP_URL, { fetchFn: tracingFetch });
    try {
        await refreshAuthorization(info.authorizationServerUrl, {
            metadata: info.authorizationServerMetadata,
            clientInformation: provider.clientInformation(),
            refreshToken: provider.tokens().refresh_token,
            resource: info.resourceMetadata.resource,
            fetchFn: tracingFetch
        });
        out.refresh_after_revocation = { refused: false };
    } catch (e) {
        out.refresh_after_revocation = { refused: true, error: e.errorCode ?? e.message, class: e.constructor.name };
    }
    // The access token already issued is a JWT: the MCP server verifies it alone, until it expires.
    out.access_token_after_revocation = await present(MCP_URL, provider.tokens().access_token);
    // The SDK, its refresh refused, starts over: the consent is asked again (and denied this time).
    user.decision = 'deny';
    const restarted = await auth(provider, { serverUrl: MCP_URL, fetchFn: tracingFetch });
    out.after_revocation = {
        auth: restarted,
        invalidated: provider.invalidated,
        consent_asked: user.consentPages.length,
        callback: provider.authorizations.at(-1).callback
    };
    return out;
}

async function metadataDocument(user) {
    const out = {};
    documentBody = { client_id: DOCUMENT_URL, ...clientMetadata };
    out.document_url = DOCUMENT_URL;
    // The SDK's own way: clientMetadataUrl, used when the server says
    // client_id_metadata_document_supported. This SDK takes https URLs only.
    const sdkWay = new Provider(user, { clientMetadataUrl: DOCUMENT_URL });
    let provider = sdkWay;
    let connected;
    try {
        connected = await connectWithOAuth(sdkWay);
        out.sdk_client_metadata_url = { accepted: true };
    } catch (e) {
        out.sdk_client_metadata_url = { accepted: false, error: `${e.constructor.name}: ${e.message}` };
        // The same client id, given to the SDK as the client's known information (a development
        // project reads an http document on loopback).
        provider = new Provider(user, { clientInformation: { client_id: DOCUMENT_URL } });
        connected = await connectWithOAuth(provider);
    }
    out.interactive = connected.interactive;
    out.registrations = provider.registrations;
    out.client_id = provider.clientInformation().client_id;
    out.authorization = provider.authorizations[0];
    out.whoami = await whoami(connected.client);
    out.token = tokenSummary(provider.tokens());
    await connected.client.close();
    out.consent_page = user.consentPages[0];
    out.document_fetches = documentFetches.length;
    return out;
}

async function blocked(user) {
    const out = [];
    for (const clientId of JSON.parse(env('CLIENT_IDS'))) {
        const provider = new Provider(user, { clientInformation: { client_id: clientId } });
        let connected = false;
        let error;
        try {
            await connectWithOAuth(provider);
            connected = true;
        } catch (e) {
            error = e.message;
        }
        out.push({ client_id: clientId, connected, error, authorization: provider.authorizations[0] });
    }
    return { attempts: out };
}

const report = { mode: MODE, sdk_version: SDK_VERSION };
const timer = setTimeout(() => {
    console.log(JSON.stringify({ ...report, error: 'timed out', trace }));
    process.exit(1);
}, 90_000);
try {
    const user = new User(env('EMAIL'), env('PASSWORD'));
    const run = { dynamic, 'metadata-document': metadataDocument, blocked }[MODE];
    if (!run) {
        throw new Error(`MODE is dynamic, metadata-document or blocked, not ${MODE}`);
    }
    Object.assign(report, await run(user));
    report.ok = true;
} catch (e) {
    report.ok = false;
    report.error = `${e.constructor.name}: ${e.message}`;
    if (e.authorization) report.authorization = e.authorization;
    log(e.stack);
}
report.trace = trace;
clearTimeout(timer);
console.log(JSON.stringify(report));
loopback.close();
process.exit(0);
