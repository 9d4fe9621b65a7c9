// An OpenID Provider for the upstream sign-in tests: panva's oidc-provider (OpenID Certified),
// configured with one confidential client, PKCE required, and interactions that complete at
// once for the account the test chose (POST /__next: sub, email, email_verified, and the
// `groups` claim for scope `groups`). /__tamper/token forwards to /token and
// breaks the id_token's signature, for the test that such a token is refused.
import http from 'node:http';
import Provider from 'oidc-provider';

const { PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI } = process.env;
const issuer = `http://127.0.0.1:${PORT}`;
let next = { sub: 'upstream-user-1', email: 'upstream@example.com', email_verified: true };
const accounts = new Map();

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URI.split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  conformIdTokenClaims: false,
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, ...accounts.get(id) }),
  }),
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['authio-test-cookie-key'] },
});
const handler = provider.callback();

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
}

http.createServer(async (req, res) => {
  try {
    if (req.url === '/__next' && req.method === 'POST') {
      next = JSON.parse((await body(req)).toString());
      res.writeHead(204).end();
      return;
    }
    if (req.url === '/__tamper/token' && req.method === 'POST') {
      const payload = await body(req);
      const upstream = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: { 'content-type': req.headers['content-type'], authorization: req.headers.authorization },
        body: payload,
      });
      const json = await upstream.json();
      if (json.id_token) {
        const [h, p, s] = json.id_token.split('.');
        const flipped = (s[0] === 'A' ? 'B' : 'A') + s.slice(1);
        json.id_token = [h, p, flipped].join('.');
      }
      res.writeHead(upstream.status, { 'content-type': 'application/json' }).end(JSON.stringify(json));
      return;
    }
    if (req.url.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        accounts.set(next.sub, { email: next.email, email_verified: next.email_verified, groups: next.groups });
        await provider.interactionFinished(req, res, { login: { accountId: next.sub } }, { mergeWithLastSubmission: false });
        return;
      }
      const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    handler(req, res);
  } catch (e) {
    console.error(e);
    res.writeHead(500).end(String(e));
  }
}).listen(Number(PORT), '127.0.0.1', () => console.log('ready'));
