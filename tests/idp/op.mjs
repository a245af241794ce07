// A loopback OpenID Provider for tests: npm `oidc-provider` 9.13.3 (pinned in
// tools/npm/package.json, installed into .tools/node by scripts/bootstrap). Run with Node 22:
//
//   $NODE22 tests/idp/op.mjs [--port N] [--clients JSON] [--groups JSON]
//                            [--groups-claim NAME] [--groups-scope SCOPE] [--claims JSON]
//
// Every option may also come from the environment (the flag wins):
//   IDP_PORT          port on 127.0.0.1; 0 (default) picks a free one
//   IDP_CLIENTS       JSON array of confidential clients:
//                       [{"client_id": "gw", "client_secret": "s", "redirect_uris": ["http://127.0.0.1:8080/cb"]}]
//                     Any other client metadata in an entry is passed through (e.g.
//                     "token_endpoint_auth_method": "client_secret_post"). Defaults per client:
//                     grant_types [authorization_code, refresh_token], response_types [code],
//                     token_endpoint_auth_method client_secret_basic, application_type web
//                     (so redirect_uris match EXACTLY, port included).
//   IDP_GROUPS        JSON map login -> list of groups, e.g. {"alice":["eng"],"bob":["sales"]};
//                     logins not in the map get []
//   IDP_GROUPS_CLAIM  name of the claim carrying the groups (default "groups"; e.g. "roles")
//   IDP_GROUPS_SCOPE  scope that releases that claim (default "groups"); "openid" puts it in
//                     every ID token without asking for an extra scope (Entra-like)
//   IDP_CLAIMS        JSON map login -> extra/overriding claims, e.g. {"carol":{"email_verified":false}}
//   OIDC_PROVIDER_DIR where the oidc-provider package lives (default
//                     <repo>/.tools/node/node_modules/oidc-provider)
//
// Behaviour: issuer http://127.0.0.1:<port>; PKCE (S256) required for every client;
// devInteractions login (any login, any password; the login becomes `sub`) followed by a
// consent page; ID token signed RS256 with a key generated at startup and carrying sub, email,
// email_verified (scope email), name, preferred_username (scope profile) and the groups claim
// (scope IDP_GROUPS_SCOPE) next to nonce/at_hash etc. Refresh tokens need scope offline_access
// AND prompt=consent on the authorization request (oidc-provider rule).
//
// stdout carries exactly one line, `READY <issuer>`, once listening; everything else
// (oidc-provider notices and warnings, errors) goes to stderr. SIGTERM/SIGINT: close and exit 0.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// oidc-provider prints NOTICEs with console.info; keep stdout for the READY line alone.
console.info = (...a) => console.error(...a);
console.log = (...a) => console.error(...a);

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');

function option(flag, envName, fallback) {
  const i = process.argv.indexOf(flag);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`${flag}=`));
  if (eq) return eq.slice(flag.length + 1);
  const v = process.env[envName];
  return v === undefined || v === '' ? fallback : v;
}

function jsonOption(flag, envName, fallback) {
  const raw = option(flag, envName, undefined);
  if (raw === undefined) return fallback;
  try {
    return JSON.parse(raw);
  } catch (e) {
    console.error(`op.mjs: ${flag}/${envName} is not valid JSON: ${e.message}`);
    process.exit(2);
  }
}

const port = Number(option('--port', 'IDP_PORT', '0'));
const clientsIn = jsonOption('--clients', 'IDP_CLIENTS', []);
const groupsByLogin = jsonOption('--groups', 'IDP_GROUPS', {});
const groupsClaim = option('--groups-claim', 'IDP_GROUPS_CLAIM', 'groups');
const groupsScope = option('--groups-scope', 'IDP_GROUPS_SCOPE', 'groups');
const extraClaims = jsonOption('--claims', 'IDP_CLAIMS', {});
const providerDir = option('--oidc-provider-dir', 'OIDC_PROVIDER_DIR',
  join(ROOT, '.tools', 'node', 'node_modules', 'oidc-provider'));

if (!Array.isArray(clientsIn)) {
  console.error('op.mjs: IDP_CLIENTS must be a JSON array');
  process.exit(2);
}

// ESM bare imports resolve from this file's directory, not from .tools: load by path.
const pkg = JSON.parse(readFileSync(join(providerDir, 'package.json'), 'utf8'));
const { default: Provider } = await import(pathToFileURL(join(providerDir, pkg.main ?? 'lib/index.js')).href);

const clients = clientsIn.map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

// Scope -> claims it releases. conformIdTokenClaims: false below puts them in the ID token.
const claims = {
  acr: null,
  sid: null,
  auth_time: null,
  iss: null,
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'preferred_username'],
};
claims[groupsScope] = [...new Set([...(claims[groupsScope] ?? []), groupsClaim])];

function accountClaims(login) {
  const name = login.charAt(0).toUpperCase() + login.slice(1);
  return {
    sub: login,
    email: `${login}@example.test`,
    email_verified: true,
    name,
    preferred_username: login,
    [groupsClaim]: Array.isArray(groupsByLogin[login]) ? groupsByLogin[login] : [],
    ...(extraClaims[login] ?? {}),
  };
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `test-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };

const server = createServer();
await new Promise((ok, fail) => {
  server.once('error', fail);
  server.listen(port, '127.0.0.1', ok);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims,
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    async claims() {
      return { ...accountClaims(id), sub: id }; // sub must equal accountId
    },
  }),
});

for (const event of ['server_error', 'authorization.error', 'grant.error', 'introspection.error', 'revocation.error', 'userinfo.error', 'end_session.error']) {
  provider.on(event, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`op.mjs ${event}: ${err ? `${err.name}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}` : ''}`);
  });
}

server.on('request', provider.callback());
process.stdout.write(`READY ${issuer}\n`);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
