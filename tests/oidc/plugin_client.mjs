// The credential plugin's side of the fixture (`kubegate get-token`): a PUBLIC native
// client, the test users, a sign-in page, the device flow, revocation and counters.
// Kept apart from server.mjs so the client-credentials clients behave as before.
//
// The client `kubegate-cli` (no secret, token_endpoint_auth_method none):
//   grants        authorization_code, refresh_token, device_code (RFC 8628)
//   PKCE          required (S256; oidc-provider refuses plain)
//   redirect      http://127.0.0.1/callback on ANY port: application_type native makes
//                 oidc-provider ignore the port of loopback redirects (RFC 8252 7.3)
//   refresh       a refresh token with every code or device grant, rotated on every use
//                 (oidc-provider's default for public clients); revocable
// Users sign in at /interaction/<uid> with a username only (no password): alice is
// in `devs`, bob in `guests`. Consent is granted without a page. ID tokens carry
// `sub` (the username), `name` and `groups`.

import { parse } from 'node:querystring';

export const CLIENT_ID = 'kubegate-cli';

const USERS = {
  alice: ['devs'],
  bob: ['guests'],
};

export const CLIENT = {
  client_id: CLIENT_ID,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/callback'],
};

// Settable by POST /test/id-token-ttl?seconds=N (a short lifetime forces refreshes).
let idTokenTtl = 10 * 60;
// Tokens served by the token endpoint, per grant type, since start.
const grants = {};
let current = null; // the provider serving now (server.mjs swaps it on key rotation)

export function providerOptions() {
  return {
    // Claims of the test users go into the ID token (not only to userinfo), under the
    // openid scope, so a code-flow ID token names the groups the gateway maps.
    conformIdTokenClaims: false,
    claims: { openid: ['sub', 'name', 'groups'] },
    findAccount: async (_ctx, id) => {
      const groups = USERS[id];
      if (groups === undefined) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, name: id, groups }) };
    },
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    // oidc-provider drops offline_access unless the request says prompt=consent; the
    // plugin's client gets a refresh token with every code or device grant instead (as
    // Keycloak and others do), other clients keep the default rule.
    issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && (client.clientId === CLIENT_ID || code.scopes.has('offline_access')),
  };
}

export function features() {
  return {
    revocation: { enabled: true },
    deviceFlow: { enabled: true },
  };
}

export function ttl() {
  return { IdToken: () => idTokenTtl };
}

export function attach(provider) {
  current = provider;
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params?.grant_type ?? 'unknown';
    grants[type] = (grants[type] ?? 0) + 1;
  });
}

function page(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!DOCTYPE html><html><head><title>Test sign-in</title></head><body>${body}</body></html>`);
}

async function readForm(req) {
  let data = '';
  for await (const chunk of req) {
    data += chunk;
    if (data.length > 64 * 1024) throw new Error('form too large');
  }
  return parse(data);
}

async function interaction(req, res) {
  const details = await current.interactionDetails(req, res);
  const { uid, prompt, params } = details;
  if (prompt.name === 'login') {
    if (req.method !== 'POST') {
      page(res, 200, `<h1>Sign in</h1><form method="post" action="/interaction/${uid}">`
        + '<input name="login" placeholder="username"><button type="submit">Sign in</button></form>');
      return;
    }
    const form = await readForm(req);
    const login = String(form.login ?? '');
    if (USERS[login] === undefined) {
      page(res, 200, `<h1>Sign in</h1><p class="error">unknown user</p><form method="post" action="/interaction/${uid}">`
        + '<input name="login" placeholder="username"><button type="submit">Sign in</button></form>');
      return;
    }
    await current.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  // consent: a test provider grants what was asked.
  const { accountId } = details.session;
  let grant = details.grantId
    ? await current.Grant.find(details.grantId)
    : new current.Grant({ accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await current.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

// Routes of this file; true when it answered.
export function handle(req, res, path, _handler, sendJson) {
  if (path === '/test/stats' && req.method === 'GET') {
    sendJson(res, 200, { grants });
    return true;
  }
  if (path === '/test/id-token-ttl' && req.method === 'POST') {
    req.resume();
    const seconds = Number(new URL(req.url, 'http://x').searchParams.get('seconds'));
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > 86400) {
      sendJson(res, 400, { error: 'seconds must be 1..86400' });
      return true;
    }
    idTokenTtl = seconds;
    sendJson(res, 200, { id_token_ttl: seconds });
    return true;
  }
  if (path.startsWith('/interaction/') && current) {
    interaction(req, res).catch((err) => {
      console.error('interaction failed', err);
      if (!res.headersSent) page(res, 400, `<h1>Sign-in failed</h1><p>${String(err.message).replace(/[<>&]/g, '')}</p>`);
    });
    return true;
  }
  return false;
}
