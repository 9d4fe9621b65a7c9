// An MCP server (Streamable HTTP, the official TypeScript SDK) whose tools need an access token
// from an Authio project: it verifies Bearer JWTs against the project's published keys, and tells
// clients where to get one with RFC 9728 protected-resource metadata.
//
//   ISSUER    the project's issuer, e.g. https://auth.example.com/p/<project id> (required)
//   RESOURCE  this server's own MCP URL, e.g. https://mcp.example.com/mcp; declare it in the
//             project (POST /v1/projects/{p}/resources with scope mcp:tools). Default:
//             http://HOST:PORT/mcp
//   PORT      0 picks a free port (default 3000); HOST defaults to 127.0.0.1
//
// Once listening it prints one JSON line on stdout: {"port": ..., "resource": ..., "resource_metadata": ...}.
import http from 'node:http';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const ISSUER = process.env.ISSUER?.replace(/\/$/, '');
if (!ISSUER) {
    console.error('ISSUER is required: the Authio project issuer, {public_url}/p/{project_id}');
    process.exit(2);
}
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT ?? 3000);
const SCOPES = ['mcp:tools'];

// RFC 9068 access tokens signed with the project's keys; the key set is fetched on first use
// and again when a token names a key it does not hold (key rotation).
const jwks = createRemoteJWKSet(new URL(`${ISSUER}/.well-known/jwks.json`));

let RESOURCE; // this server's MCP URL: the `aud` its tokens must carry
let MCP_PATH;
let METADATA_PATH; // RFC 9728 3.1: the well-known suffix goes before the resource's path
let METADATA_URL;

function metadata() {
    return {
        resource: RESOURCE,
        authorization_servers: [ISSUER],
        scopes_supported: SCOPES,
        bearer_methods_supported: ['header'],
        resource_name: 'Authio example MCP server'
    };
}

/** RFC 6750 3: a challenge naming the metadata document, with the error when a token was refused. */
function refuse(res, status, error, description) {
    const params = [];
    if (error) {
        params.push(`error="${error}"`, `error_description="${description}"`);
    }
    params.push(`scope="${SCOPES.join(' ')}"`, `resource_metadata="${METADATA_URL}"`);
    res.writeHead(status, {
        'content-type': 'application/json',
        'www-authenticate': `Bearer ${params.join(', ')}`,
        'cache-control': 'no-store'
    });
    res.end(JSON.stringify(error ? { error, error_description: description } : { error: 'unauthorized' }));
}

/** The request's token, verified: signature by the issuer's keys, `iss`, `aud` = this resource, `exp`, `typ`. */
async function authenticate(req) {
    const header = req.headers.authorization ?? '';
    const [scheme, token] = header.split(' ');
    if (!header) {
        return { status: 401 };
    }
    if (scheme.toLowerCase() !== 'bearer' || !token) {
        return { status: 401, error: 'invalid_request', description: 'send the token as Authorization: Bearer' };
    }
    let payload;
    try {
        ({ payload } = await jwtVerify(token, jwks, {
            issuer: ISSUER,
            audience: RESOURCE,
            typ: 'at+jwt',
            requiredClaims: ['exp', 'sub']
        }));
    } catch (e) {
        return { status: 401, error: 'invalid_token', description: describe(e) };
    }
    const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : [];
    if (!SCOPES.every(s => scopes.includes(s))) {
        return { status: 403, error: 'insufficient_scope', description: `the token lacks ${SCOPES.join(' ')}` };
    }
    return {
        auth: {
            token,
            clientId: payload.client_id,
            scopes,
            expiresAt: payload.exp,
            resource: new URL(RESOURCE),
            extra: { sub: payload.sub, iss: payload.iss, aud: payload.aud }
        }
    };
}

function describe(e) {
    switch (e?.code) {
        case 'ERR_JWT_EXPIRED':
            return 'the token has expired';
        case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
            return e.claim === 'aud' ? 'the token is not for this resource' : `the token's ${e.claim} is not accepted`;
        case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
        case 'ERR_JWKS_NO_MATCHING_KEY':
            return 'the token is not signed by the authorization server';
        default:
            return 'the token is not valid';
    }
}

/** A fresh server per request (stateless Streamable HTTP): one tool, `whoami`. */
function mcpServer() {
    const server = new McpServer({ name: 'authio-example-mcp-server', version: '1.0.0' });
    server.registerTool(
        'whoami',
        { title: 'Who am I', description: 'The signed-in user (sub) and the client the token was issued to' },
        async extra => {
            const who = {
                sub: extra.authInfo.extra.sub,
                client_id: extra.authInfo.clientId,
                scopes: extra.authInfo.scopes,
                aud: extra.authInfo.extra.aud
            };
            return { content: [{ type: 'text', text: JSON.stringify(who) }] };
        }
    );
    return server;
}

const httpServer = http.createServer(async (req, res) => {
    const path = new URL(req.url, 'http://localhost').pathname;
    try {
        if (req.method === 'GET' && (path === METADATA_PATH || path === '/.well-known/oauth-protected-resource')) {
            res.writeHead(200, { 'content-type': 'application/json', 'access-control-allow-origin': '*' });
            res.end(JSON.stringify(metadata()));
            return;
        }
        if (path !== MCP_PATH) {
            res.writeHead(404, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ error: 'not_found' }));
            return;
        }
        const verdict = await authenticate(req);
        if (!verdict.auth) {
            refuse(res, verdict.status, verdict.error, verdict.description);
            return;
        }
        if (req.method !== 'POST') {
            // Stateless: no standalone SSE stream (GET) and no session to end (DELETE).
            res.writeHead(405, { allow: 'POST', 'content-type': 'application/json' });
            res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed' }, id: null }));
            return;
        }
        req.auth = verdict.auth;
        const server = mcpServer();
        const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
        res.on('close', () => {
            transport.close();
            server.close();
        });
        await server.connect(transport);
        await transport.handleRequest(req, res);
    } catch (e) {
        console.error(e);
        if (!res.headersSent) {
            res.writeHead(500, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32603, message: 'Internal error' }, id: null }));
        }
    }
});

httpServer.listen(PORT, HOST, () => {
    const { port } = httpServer.address();
    const host = HOST.includes(':') ? `[${HOST}]` : HOST;
    RESOURCE = process.env.RESOURCE || `http://${host}:${port}/mcp`;
    const resource = new URL(RESOURCE);
    MCP_PATH = resource.pathname;
    METADATA_PATH = `/.well-known/oauth-protected-resource${MCP_PATH === '/' ? '' : MCP_PATH}`;
    METADATA_URL = new URL(METADATA_PATH, resource.origin).href;
    console.log(JSON.stringify({ port, resource: RESOURCE, resource_metadata: METADATA_URL }));
});

for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => process.exit(0));
}
