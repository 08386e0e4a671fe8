// An OpenID Provider for tollgate's SSO tests: npm's oidc-provider (the certified
// implementation), on 127.0.0.1, with what the tests sign in with.
//
//   node oidc_provider.mjs --port PORT --redirect-uri URI [--auth-methods M1,M2]
//
// (or OIDC_PROVIDER_PORT, OIDC_REDIRECT_URI, OIDC_AUTH_METHODS). Prints the issuer URL on a
// line of its own once it listens; logs go to stderr.
//
// - Clients, all for the one redirect URI: `tollgate-public` (no secret: PKCE only),
//   `tollgate-confidential` (secret `confidential-secret-1234567890`, authenticated with the
//   first of --auth-methods, default `client_secret_basic,client_secret_post`: the methods
//   the discovery document lists, beside `none`; the token endpoint refuses it in any other
//   method), and `other-client` (public, to be the
//   audience an ID token was not minted for). PKCE (S256) is required of every client.
// - Accounts: `alice` (email verified, groups engineering and platform-admin) and `bob`
//   (email not verified, group sales), password `password-<name>`. ID tokens carry the
//   email, profile and groups claims of the scopes asked for (`groups` is a scope).
// - Sign-in without a browser: GET /interaction/{uid} is a small HTML form; POST
//   /interaction/{uid}/login (form: login, password) signs in and grants what the client
//   asked for; POST /interaction/{uid}/abort answers the client `access_denied`.
// - Faults for the refusal tests: POST /test/id-token-claims with a JSON object makes every
//   later token response carry an ID token with those claims laid over the real ones
//   (re-signed with the provider's key, so only the claims are wrong); DELETE stops it.

import Provider from 'oidc-provider';
import crypto from 'node:crypto';
import http from 'node:http';

function option(name, env) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && process.argv[i + 1] !== undefined) return process.argv[i + 1];
  return process.env[env];
}

const port = Number(option('port', 'OIDC_PROVIDER_PORT'));
const redirectUri = option('redirect-uri', 'OIDC_REDIRECT_URI');
const authMethods = (option('auth-methods', 'OIDC_AUTH_METHODS')
  ?? 'client_secret_basic,client_secret_post').split(',').filter(Boolean);
if (!Number.isInteger(port) || port <= 0 || !redirectUri) {
  console.error('usage: node oidc_provider.mjs --port PORT --redirect-uri URI [--auth-methods M1,M2]');
  process.exit(64);
}
const issuer = `http://127.0.0.1:${port}`;

const accounts = {
  alice: {
    sub: 'alice-subject',
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Example',
    groups: ['engineering', 'platform-admin'],
  },
  bob: {
    sub: 'bob-subject',
    email: 'bob@example.com',
    email_verified: false,
    name: 'Bob Example',
    groups: ['sales'],
  },
};
const bySubject = Object.fromEntries(Object.values(accounts).map((a) => [a.sub, a]));

// One RSA signing key, made for this run.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'sso-test', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'tollgate-public',
      token_endpoint_auth_method: 'none',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
    {
      client_id: 'tollgate-confidential',
      client_secret: 'confidential-secret-1234567890',
      token_endpoint_auth_method: authMethods[0],
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
    {
      client_id: 'other-client',
      token_endpoint_auth_method: 'none',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  clientAuthMethods: [...authMethods, 'none'],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // ID tokens carry the claims of the scopes asked for (as Dex and Keycloak send them),
  // not only `sub`.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  async findAccount(_ctx, sub) {
    const account = bySubject[sub];
    if (!account) return undefined;
    return { accountId: sub, async claims() { return { ...account }; } };
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});

let idTokenFault = null;

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

// The ID token with `fault` laid over its claims, signed again with the provider's key.
function resign(idToken, fault) {
  const [header, payload] = idToken.split('.');
  const claims = { ...JSON.parse(Buffer.from(payload, 'base64url')), ...fault };
  const input = `${header}.${b64url(JSON.stringify(claims))}`;
  const signature = crypto.sign('sha256', Buffer.from(input), privateKey);
  return `${input}.${b64url(signature)}`;
}

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== '/token' || ctx.status !== 200) return;
  // oidc-provider takes a secret in either place whatever the client is registered with;
  // this one is strict (as many providers are), so the tests see which method was used.
  const method = ctx.oidc?.client?.clientAuthMethod;
  if (method === 'client_secret_basic' || method === 'client_secret_post') {
    const used = ctx.headers.authorization ? 'client_secret_basic' : 'client_secret_post';
    if (used !== method) {
      ctx.status = 401;
      ctx.body = { error: 'invalid_client', error_description: `this client authenticates with ${method}, not ${used}` };
      return;
    }
  }
  if (idTokenFault && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, idTokenFault) };
  }
});

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'text/plain', 'interaction mismatch');
    return;
  }
  if (req.method === 'GET' && !action) {
    send(res, 200, 'text/html', `<!doctype html><title>Sign in</title>
<p>${escape(details.params.client_id)} asks to sign you in (${escape(details.prompt.name)}).</p>
<form method="post" action="/interaction/${escape(uid)}/login">
<input name="login"><input name="password" type="password"><button>Sign in</button></form>
<form method="post" action="/interaction/${escape(uid)}/abort"><button>Cancel</button></form>`);
    return;
  }
  if (req.method === 'POST' && action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const form = new URLSearchParams(await readBody(req));
    const account = accounts[form.get('login')];
    if (!account || form.get('password') !== `password-${form.get('login')}`) {
      send(res, 401, 'text/plain', 'wrong login or password');
      return;
    }
    // A first-party sign-in: grant whatever the client asked for.
    const grant = new provider.Grant({ accountId: account.sub, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, {
      login: { accountId: account.sub },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    return;
  }
  send(res, 405, 'text/plain', 'method not allowed');
}

const handle = provider.callback();
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    const step = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?$/);
    if (step) {
      await interaction(req, res, step[1], step[2]);
      return;
    }
    if (url.pathname === '/test/id-token-claims') {
      if (req.method === 'POST') {
        idTokenFault = JSON.parse(await readBody(req));
      } else if (req.method === 'DELETE') {
        idTokenFault = null;
      }
      send(res, 204, 'text/plain', '');
      return;
    }
    handle(req, res);
  } catch (e) {
    console.error(e);
    send(res, 500, 'text/plain', String(e?.message ?? e));
  }
});

server.on('clientError', (err, socket) => {
  console.error('client error:', err.code, err.message, JSON.stringify(err.rawPacket?.toString() ?? ''));
  socket.destroy();
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
