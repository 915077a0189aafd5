// Local OpenID provider fixture for kubegate end-to-end tests.
//
// Usage: node server.mjs [PORT] [--web-redirect=URL]
//        (PORT 0 or absent = pick a free port; --web-redirect: the callback URL of the
//        gateway's sign-in page, registered for the web-page clients below)
//
// Listens on 127.0.0.1 over plain http. Issuer is exactly
// `http://127.0.0.1:<port>` (no trailing slash). Once listening it prints
// exactly one line to stdout, `READY http://127.0.0.1:<port>`; every other
// diagnostic goes to stderr.
//
// Built on panva's oidc-provider (see package.json for the pinned version).
// Extra test-only routes on the same port:
//   POST /test/rotate    new RSA key (k2, k3, ...); the old one leaves the JWKS
//   POST /test/shutdown  answer, then exit 0
//   POST /test/id-token-ttl?seconds=N  ID tokens issued from now on live N seconds
//   GET  /test/stats     {"grants": {"<grant_type>": count, ...}} tokens served per grant
//   GET/POST /interaction/<uid>   the test login page (see the web-page block below):
//                        user and password; the plugin's public client needs no password

import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

import * as plugin from './plugin_client.mjs';

// oidc-provider prints its NOTICE lines with console.info (stdout). Stdout is
// reserved for the single READY line, so send console.log/info to stderr.
console.log = console.error;
console.info = console.error;

const HOST = '127.0.0.1';
const CLIENT_ID = 'kubegate-test';
const CLIENT_SECRET = 'kubegate-test-secret';
// Clients whose tokens carry the claims the AuthenticationConfiguration (CEL) test maps:
// a tenant, prefixed and unrelated groups, a nested claim, and a tier its validation
// rule refuses for the second client.
const CEL_CLAIMS = {
  'kubegate-cel': 'gold',
  'kubegate-cel-blocked': 'blocked',
};
const RESOURCE = 'urn:kubegate';
const AUDIENCE = 'kubegate';
const TOKEN_TTL = 10 * 60; // seconds

const portArg = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? '0';
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${portArg}`);
  process.exit(2);
}

// ---- web page (kubegate's /kubegate/ sign-in page): confidential clients ----------------
// Two confidential clients for the gateway's sign-in page (authorization code, PKCE
// required, client_secret_basic), whose one redirect URI is the gateway's callback given
// with --web-redirect (its port is ephemeral). `kubegate-web-other` is a second client, so
// a test can sign in with a client the gateway does not accept as an audience. The test
// login page below signs in the users of WEB_USERS; their ID tokens carry `groups`.
const WEB_CLIENTS = ['kubegate-web', 'kubegate-web-other'];
const WEB_REDIRECT = (process.argv.find((a) => a.startsWith('--web-redirect=')) ?? '')
  .slice('--web-redirect='.length) || 'https://127.0.0.1/kubegate/callback';
const WEB_USERS = {
  alice: { password: 'alice-password', groups: ['devs', 'web-users'], email: 'alice@example.com' },
  bob: { password: 'bob-password', groups: ['guests'], email: 'bob@example.com' },
};

function webClients() {
  return WEB_CLIENTS.map((client_id) => ({
    client_id,
    client_secret: CLIENT_SECRET,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [WEB_REDIRECT],
    token_endpoint_auth_method: 'client_secret_basic',
  }));
}

// Provider settings the sign-in flow needs: the test accounts, `groups` in ID tokens, the
// login page's URL, PKCE for every client, and consent taken as given (first-party
// clients), so the login page is the only page a person sees.
const WEB_SETTINGS = {
  async findAccount(_ctx, id) {
    const user = WEB_USERS[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, groups: user.groups, email: user.email, name: id };
      },
    };
  },
  // groups and name under openid too: the plugin's client asks for openid alone.
  claims: { openid: ['sub', 'name', 'groups'], groups: ['groups'], email: ['email'], profile: ['name'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid groups email profile');
    // The default resource (RESOURCE above) applies to these clients too.
    for (const [indicator, server] of Object.entries(ctx.oidc.resourceServers ?? {})) {
      grant.addResourceScope(indicator, server.scope);
    }
    await grant.save();
    return grant;
  },
};

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// GET /interaction/<uid>: the login form. POST /interaction/<uid>: check the user and
// password and finish the login (a wrong one shows the form again with a message).
async function webInteraction(provider, req, res) {
  try {
    const details = await provider.interactionDetails(req, res);
    const uid = details.uid;
    if (details.prompt.name === 'consent') {
      // A test provider grants what was asked (offline_access, for instance, which
      // loadExistingGrant does not take as given).
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const missing = details.prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    let message = '';
    if (req.method === 'POST') {
      const body = await new Promise((resolve) => {
        let data = '';
        req.on('data', (c) => { data += c; });
        req.on('end', () => resolve(new URLSearchParams(data)));
      });
      const login = body.get('login') ?? '';
      const user = WEB_USERS[login];
      // The credential plugin's scripted browser (browser.mjs) gives a user name only.
      const passwordless = details.params.client_id === plugin.CLIENT_ID;
      if (user && (passwordless || body.get('password') === user.password)) {
        await provider.interactionFinished(req, res, { login: { accountId: login } },
          { mergeWithLastSubmission: false });
        return;
      }
      message = '<p id="error">Wrong user name or password.</p>';
    }
    const page = `<!doctype html><html><head><title>Test provider sign-in</title></head><body>
<h1>Test provider: sign in</h1>${message}<!-- prompt: ${escapeHtml(details.prompt.name)} ${escapeHtml(JSON.stringify(details.prompt.reasons))} -->
<form method="post" action="/interaction/${escapeHtml(uid)}">
<label>User <input name="login" autocomplete="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit" id="submit">Sign in</button></form></body></html>`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(page);
  } catch (err) {
    console.error('interaction failed', err);
    sendJson(res, 400, { error: 'interaction_failed', detail: String(err.message ?? err) });
  }
}
// ---- end of the web page block -------------------------------------------------------

let keyCounter = 0;
function newSigningKey() {
  keyCounter += 1;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k${keyCounter}`, alg: 'RS256', use: 'sig' };
}

function buildProvider(issuer, signingJwk) {
  const provider = new Provider(issuer, {
    clients: [
      ...[CLIENT_ID, ...Object.keys(CEL_CLAIMS)].map((client_id) => ({
        client_id,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
      })),
      ...webClients(),
      plugin.CLIENT,
    ],
    // One set of test users, one login page and consent taken as given, for the web-page
    // clients and the credential plugin's client alike; the plugin adds its refresh rule.
    ...WEB_SETTINGS,
    ...plugin.providerOptions(),
    jwks: { keys: [signingJwk] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      ...plugin.features(),
      resourceIndicators: {
        enabled: true,
        // client_credentials requests without a `resource` parameter get this one; the
        // plugin's sign-ins ask for ID tokens, not an access token for the gateway.
        defaultResource: async (_ctx, client) =>
          (client?.clientId === plugin.CLIENT_ID ? undefined : RESOURCE),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget(`unknown resource indicator ${resourceIndicator}`);
          }
          return {
            scope: 'openid',
            audience: AUDIENCE,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    // `sub` of a client_credentials JWT is the client id (oidc-provider sets it
    // after the extra claims, so it cannot be overridden here).
    extraTokenClaims: async (_ctx, token) => {
      const tier = CEL_CLAIMS[token.clientId];
      if (tier === undefined) return { groups: ['devs'] };
      return {
        tenant: 'acme',
        groups: ['devs', 'devs-oncall', 'marketing', 'system:masters'],
        org: { unit: 'payments', site: 'fra' },
        tier,
      };
    },
    ttl: {
      AccessToken: TOKEN_TTL,
      ClientCredentials: TOKEN_TTL,
      ...plugin.ttl(),
    },
    clientBasedCORS: () => false,
    // Cookies are unused for client_credentials; fixed keys silence the warning.
    cookies: { keys: ['kubegate-test-cookie-key'] },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  plugin.attach(provider);
  return provider;
}

let handler = null; // current provider's node (req, res) callback
let currentProvider = null; // the provider `handler` belongs to (for the login page)
let currentKid = null;

function rotate(issuer) {
  const jwk = newSigningKey();
  const provider = buildProvider(issuer, jwk);
  handler = provider.callback();
  currentProvider = provider;
  currentKid = jwk.kid;
  return currentKid;
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(data),
    'cache-control': 'no-store',
  });
  res.end(data);
}

const server = http.createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (plugin.handle(req, res, path, handler, sendJson)) {
    return;
  }
  if (path.startsWith('/test/')) {
    // Drain any body; these routes take no input.
    req.resume();
    if (req.method !== 'POST') {
      sendJson(res, 405, { error: 'method_not_allowed' });
      return;
    }
    if (path === '/test/rotate') {
      const previous = currentKid;
      const kid = rotate(server.issuer);
      console.error(`rotated signing key ${previous} -> ${kid}`);
      sendJson(res, 200, { kid });
      return;
    }
    if (path === '/test/shutdown') {
      sendJson(res, 200, { shutdown: true });
      res.on('finish', () => {
        server.close();
        process.exit(0);
      });
      return;
    }
    sendJson(res, 404, { error: 'not_found' });
    return;
  }
  if (!handler) {
    sendJson(res, 503, { error: 'not_ready' });
    return;
  }
  if (path.startsWith('/interaction/')) {
    webInteraction(currentProvider, req, res);
    return;
  }
  handler(req, res);
});

server.on('error', (err) => {
  console.error(`listen failed: ${err.message}`);
  process.exit(1);
});

server.listen(port, HOST, () => {
  const { port: actual } = server.address();
  server.issuer = `http://${HOST}:${actual}`;
  rotate(server.issuer);
  process.stdout.write(`READY ${server.issuer}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
