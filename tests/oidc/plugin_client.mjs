// The credential plugin's side of the fixture (`kubegate get-token`): a PUBLIC native
// client, the test users, a sign-in page, the device flow, revocation and counters.
// Kept apart from server.mjs so the client-credentials clients behave as before.
//
// The client `kubegate-cli` (no secret, token_endpoint_auth_method none):
//   grants        authorization_code, refresh_token, device_code (RFC 8628)
//   PKCE          required (S256; oidc-provider refuses plain)
//   redirect      http://127.0.0.1/callback on ANY port: application_type native makes
//                 oidc-provider ignore the port of loopback redirects (RFC 8252 7.3);
//                 and urn:ietf:wg:oauth:2.0:oob for the keyboard flow
//                 (`--grant-type authcode-keyboard`): instead of redirecting there, the
//                 provider shows a page with the code in <code id="code">, as Google's
//                 out-of-band page did, for the person to paste at the terminal
//   refresh       a refresh token with every code or device grant, rotated on every use
//                 (oidc-provider's default for public clients); revocable
// Users are server.mjs's test users (alice in `devs` and `web-users`, bob in `guests`); for
// this client its login page takes a username only. Consent is granted without a page. ID
// tokens carry `sub` (the username), `name` and `groups`.

export const CLIENT_ID = 'kubegate-cli';
// The out-of-band redirect URI of the keyboard flow.
export const OOB = 'urn:ietf:wg:oauth:2.0:oob';


export const CLIENT = {
  client_id: CLIENT_ID,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/callback', OOB],
};

// Settable by POST /test/id-token-ttl?seconds=N (a short lifetime forces refreshes).
let idTokenTtl = 10 * 60;
// Tokens served by the token endpoint, per grant type, since start.
const grants = {};
let current = null; // the provider serving now (server.mjs swaps it on key rotation)

export function providerOptions() {
  return {
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

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// The out-of-band "redirect": the authorization endpoint's 303 to urn:ietf:wg:oauth:2.0:oob
// becomes a page showing the code (or the error) the redirect would have carried.
async function showOutOfBandCode(ctx, next) {
  await next();
  const location = ctx.status === 303 ? ctx.response.get('location') : '';
  if (!location.startsWith(`${OOB}?`)) return;
  const params = new URLSearchParams(location.slice(OOB.length + 1));
  const code = params.get('code');
  ctx.response.remove('location');
  ctx.status = code ? 200 : 400;
  ctx.type = 'html';
  ctx.body = code
    ? `<!doctype html><html><head><title>Test provider: your code</title></head><body>
<h1>Test provider: copy this code</h1><p>Paste it at the terminal that asked for it.</p>
<p><code id="code">${escapeHtml(code)}</code></p></body></html>`
    : `<!doctype html><html><head><title>Test provider: sign-in refused</title></head><body>
<h1>Sign-in refused</h1><p id="error">${escapeHtml(params.get('error'))}</p></body></html>`;
}

export function attach(provider) {
  current = provider;
  provider.use(showOutOfBandCode);
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params?.grant_type ?? 'unknown';
    grants[type] = (grants[type] ?? 0) + 1;
  });
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
  return false;
}
