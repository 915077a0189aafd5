// Local OpenID provider fixture for kubegate end-to-end tests.
//
// Usage: node server.mjs [PORT]      (PORT 0 or absent = pick a free port)
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
//   GET/POST /interaction/<uid>  the test sign-in page (a username, no password)

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

const portArg = process.argv[2] ?? '0';
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${portArg}`);
  process.exit(2);
}

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
      plugin.CLIENT,
    ],
    // The credential plugin's users, sign-in pages and ID tokens (plugin_client.mjs).
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
let currentKid = null;

function rotate(issuer) {
  const jwk = newSigningKey();
  const provider = buildProvider(issuer, jwk);
  handler = provider.callback();
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
