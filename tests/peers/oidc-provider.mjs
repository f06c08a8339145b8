// A real OpenID Connect server for the tests: node-oidc-provider (from the committed npm lockfile),
// configured like Entra ID where it can be (PKCE required, form_post, refresh-token rotation, tid/oid
// claims), on loopback only.
//
//   node tests/peers/oidc-provider.mjs '<json>'        (or the JSON in OIDC_PROVIDER_CONFIG)
//
// Configuration (every key optional except port):
//   host              loopback address to listen on (127.0.0.1)
//   port              TCP port
//   issuer            issuer URL; default http://<host>:<port><issuer_path>
//   issuer_path       a path under which the provider is mounted, e.g. "/<tenant>/v2.0" ("")
//   clients           client metadata as the provider takes it: client_id, client_secret, redirect_uris,
//                     token_endpoint_auth_method (client_secret_post | client_secret_basic | private_key_jwt
//                     with jwks), grant_types (default authorization_code + refresh_token), scope …
//   scopes            scopes the server knows (openid offline_access profile email)
//   pkce_required     true
//   rotate_refresh_token                            true: each refresh returns a new refresh token, and
//                                                   presenting a used one revokes the whole grant
//   offline_access_without_prompt_consent           true: grant offline_access like Entra does, without
//                                                   the client sending prompt=consent (see below)
//   authorization_response_iss_parameter_supported  true: advertise and send RFC 9207 `iss`
//   response_modes_supported                        ["form_post", "query", "fragment"]
//   ttl               seconds: access_token 3600, id_token 3600, refresh_token 1209600,
//                     authorization_code 60, session 1209600, grant 1209600, interaction 600
//   users             [{ sub, claims: { tid, oid, name, preferred_username, email, … } }]; login_hint
//                     picks one by sub or preferred_username, else the first
//   expires_in_as_string  false: token responses carry "expires_in": "3600" (a string), as Azure AD B2C does
//   interactive       false: log in and consent without a page; true: show a login page and a consent
//                     page, each with one button marked data-peer-continue for a browser to click
//
// Prints `READY <issuer>` on stdout once listening; exits on SIGTERM/SIGINT.
//
// Test endpoints (at the root, outside issuer_path):
//   POST /__test/rotate-keys            new signing key with a new kid, used for new id_tokens; the
//                                       old keys stay in the JWKS. Answers {kid, kids}.
//   GET  /__test/token-requests         {counts: {<grant_type>: n}, requests: [{grant_type, client_id,
//                                       client_auth, ok, error}]}
//   GET  /__test/authorization-requests the query parameters of every authorization request, as sent
//   POST /__test/deny-next              the next authorization ends with error=access_denied and an
//                                       error_description with HTML in it; a JSON body {error,
//                                       error_description} overrides either.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const raw = process.argv[2] ?? process.env.OIDC_PROVIDER_CONFIG;
if (!raw) {
  console.error('usage: node tests/peers/oidc-provider.mjs \'{"port": 8080, "clients": [...]}\'');
  process.exit(2);
}
const cfg = JSON.parse(raw);
const host = cfg.host ?? '127.0.0.1';
if (!['127.0.0.1', '::1', 'localhost'].includes(host) && !host.startsWith('127.')) {
  console.error(`refusing to listen on ${host}: loopback only`);
  process.exit(2);
}
const urlHost = host.includes(':') ? `[${host}]` : host;
const issuer = cfg.issuer ?? `http://${urlHost}:${cfg.port}${cfg.issuer_path ?? ''}`;
const prefix = new URL(issuer).pathname.replace(/\/$/, '');
const opt = (key, dflt) => cfg[key] ?? dflt;
const offlineWithoutPrompt = opt('offline_access_without_prompt_consent', true);
const issParameter = opt('authorization_response_iss_parameter_supported', true);
const responseModes = opt('response_modes_supported', ['form_post', 'query', 'fragment']);
const interactive = opt('interactive', false);
const ttl = { access_token: 3600, id_token: 3600, refresh_token: 1209600, authorization_code: 60,
  session: 1209600, grant: 1209600, interaction: 600, ...cfg.ttl };
const users = cfg.users ?? [{
  sub: 'user-1',
  claims: {
    tid: '11111111-1111-4111-8111-111111111111',
    oid: '22222222-2222-4222-8222-222222222222',
    name: 'Test User',
    preferred_username: 'test.user@example.test',
    email: 'test.user@example.test',
  },
}];
const claimNames = [...new Set(users.flatMap((u) => Object.keys(u.claims ?? {})))];

// State kept across key rotations (the memory adapter's storage is module-wide, so grants, codes
// and tokens survive a rebuild of the Provider object too).
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
const signingKeys = [];
const tokenRequests = [];
const authorizationRequests = [];
let denyNext = null;
let provider;
let handler;

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  // No `alg` on the key, like Entra's JWKS.
  return { ...privateKey.export({ format: 'jwk' }), use: 'sig', kid: `peer-${crypto.randomBytes(6).toString('hex')}` };
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`;
}

function build() {
  const p = new Provider(issuer, {
    clients: (cfg.clients ?? []).map((c) => ({
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      ...c,
    })),
    scopes: opt('scopes', ['openid', 'offline_access', 'profile', 'email']),
    claims: { openid: ['sub', ...claimNames] },
    // Entra puts tid/oid/name/preferred_username in the id_token itself.
    conformIdTokenClaims: false,
    pkce: { required: () => opt('pkce_required', true) },
    rotateRefreshToken: opt('rotate_refresh_token', true),
    jwks: { keys: signingKeys },
    cookies: { keys: cookieKeys },
    ttl: {
      AccessToken: ttl.access_token,
      IdToken: ttl.id_token,
      RefreshToken: ttl.refresh_token,
      AuthorizationCode: ttl.authorization_code,
      ClientCredentials: ttl.access_token,
      Session: ttl.session,
      Grant: ttl.grant,
      Interaction: ttl.interaction,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      dPoP: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      resourceIndicators: { enabled: false },
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(_ctx, sub) {
      const user = users.find((u) => u.sub === sub);
      return user && { accountId: sub, claims: async () => ({ ...user.claims, sub }) };
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      const rows = Object.entries(out).map(([k, v]) => `<p><b>${escapeHtml(k)}</b>: ${escapeHtml(v)}</p>`);
      ctx.body = page('Error', rows.join(''));
    },
  });

  // Discovery and authorization responses as configured.
  p.use(async (ctx, next) => {
    await next();
    const route = ctx.oidc?.route;
    if (route === 'token' && opt('expires_in_as_string', false) && ctx.body && typeof ctx.body.expires_in === 'number') {
      ctx.body.expires_in = String(ctx.body.expires_in);
    }
    if (route === 'discovery' && ctx.body && typeof ctx.body === 'object') {
      ctx.body.response_modes_supported = responseModes;
      if (!issParameter) delete ctx.body.authorization_response_iss_parameter_supported;
    }
    if (!issParameter && (route === 'authorization' || route === 'resume')) {
      const location = ctx.response.get('Location');
      if (location) {
        const url = new URL(location, issuer);
        const hash = new URLSearchParams(url.hash.slice(1));
        if (url.searchParams.has('iss') || hash.has('iss')) {
          url.searchParams.delete('iss');
          hash.delete('iss');
          url.hash = hash.toString();
          ctx.set('Location', url.href);
        }
      } else if (typeof ctx.body === 'string') {
        ctx.body = ctx.body.replace(/<input type="hidden" name="iss" value="[^"]*"\/>\n?/, '');
      }
    }
  });

  const record = (ctx, err) => {
    const body = ctx.oidc?.body ?? {};
    let clientAuth = 'none';
    if (/^basic /i.test(ctx.get('authorization'))) clientAuth = 'client_secret_basic';
    else if (body.client_assertion) clientAuth = 'client_assertion';
    else if (body.client_secret) clientAuth = 'client_secret_post';
    tokenRequests.push({
      grant_type: String(body.grant_type ?? 'unknown'),
      client_id: ctx.oidc?.client?.clientId ?? null,
      client_auth: clientAuth,
      ok: !err,
      error: err ? String(err.error ?? err.message) : null,
    });
  };
  p.on('grant.success', (ctx) => record(ctx));
  p.on('grant.error', (ctx, err) => record(ctx, err));
  p.on('server_error', (_ctx, err) => console.error('server_error', err));

  provider = p;
  handler = p.callback();
}

function pickUser(loginHint) {
  return users.find((u) => loginHint && (u.sub === loginHint || u.claims?.preferred_username === loginHint))
    ?? users[0];
}

async function finishLogin(req, res, details) {
  const user = pickUser(details.params.login_hint);
  await provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
}

async function finishConsent(req, res, details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const saved = await grant.save();
  await provider.interactionFinished(req, res, { consent: grantId ? {} : { grantId: saved } }, {
    mergeWithLastSubmission: true,
  });
}

function html(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(body);
}

function json(res, status, value) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(value));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(req, res, uid, action) {
  if (action && req.method !== 'POST') return html(res, 405, page('Error', '<p>POST only</p>'));
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return html(res, 400, page('Error', '<p>interaction mismatch</p>'));
  if (denyNext) {
    const result = denyNext;
    denyNext = null;
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  const { prompt, params } = details;
  const form = (path, label) => `<form method="post" action="/interaction/${escapeHtml(uid)}/${path}">
<button type="submit" data-peer-continue>${escapeHtml(label)}</button></form>`;
  if (prompt.name === 'login') {
    if (!interactive || action === 'login') return finishLogin(req, res, details);
    const user = pickUser(params.login_hint);
    return html(res, 200, page('Sign in', form('login', `Sign in as ${user.claims?.name ?? user.sub}`)));
  }
  if (!interactive || action === 'confirm') return finishConsent(req, res, details);
  const scopes = `<p>${escapeHtml(params.client_id)} asks for: ${escapeHtml(params.scope ?? '')}</p>`;
  return html(res, 200, page('Consent', scopes + form('confirm', 'Accept')));
}

async function admin(req, res, path) {
  if (req.method === 'GET' && path === '/__test/token-requests') {
    const counts = {};
    for (const r of tokenRequests) counts[r.grant_type] = (counts[r.grant_type] ?? 0) + 1;
    return json(res, 200, { counts, requests: tokenRequests });
  }
  if (req.method === 'GET' && path === '/__test/authorization-requests') {
    return json(res, 200, authorizationRequests);
  }
  if (req.method === 'POST' && path === '/__test/rotate-keys') {
    const key = newSigningKey();
    signingKeys.unshift(key); // the first RSA key signs new id_tokens
    build();
    return json(res, 200, { kid: key.kid, kids: signingKeys.map((k) => k.kid) });
  }
  if (req.method === 'POST' && path === '/__test/deny-next') {
    const text = await readBody(req);
    denyNext = {
      error: 'access_denied',
      error_description: 'The user denied access <script>alert(1)</script> <b>bold</b>',
      ...(text ? JSON.parse(text) : {}),
    };
    return json(res, 200, denyNext);
  }
  return json(res, 404, { error: 'not_found' });
}

// The authorization endpoint: record what the client sent, then apply the knobs the provider has
// no option for.
function authorizationRequest(req, url) {
  const params = Object.fromEntries(url.searchParams);
  authorizationRequests.push(params);
  if (params.response_mode && !responseModes.includes(params.response_mode)) {
    return 'unsupported response_mode';
  }
  // node-oidc-provider follows OIDC Core §11 to the letter and drops offline_access unless the request
  // carries prompt=consent. Entra grants it without that, so with offline_access_without_prompt_consent
  // the consent prompt is added here (never next to prompt=none, which must not show a page). The
  // client's request, as recorded above, stays without it. An armed deny-next needs an interaction too.
  const prompts = new Set((params.prompt ?? '').split(' ').filter(Boolean));
  const wantsOffline = (params.scope ?? '').split(' ').includes('offline_access');
  if (!prompts.has('none') && ((offlineWithoutPrompt && wantsOffline) || denyNext)) {
    prompts.add('consent');
    url.searchParams.set('prompt', [...prompts].join(' '));
    req.url = `${url.pathname}${url.search}`;
  }
  return null;
}

async function route(req, res) {
  const url = new URL(req.url, issuer);
  const path = url.pathname;
  const m = path.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/);
  if (m) return interaction(req, res, m[1], m[2]);
  if (path.startsWith('/__test/')) return admin(req, res, path);
  if (prefix && !(path === prefix || path.startsWith(`${prefix}/`))) return json(res, 404, { error: 'not_found' });
  if (req.method === 'GET' && path === `${prefix}/auth`) {
    const refused = authorizationRequest(req, url);
    if (refused) return html(res, 400, page('Error', `<p>${escapeHtml(refused)}</p>`));
  }
  if (prefix) {
    // Mount the provider under the issuer's path (it derives its URLs from originalUrl).
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length) || '/';
  }
  return handler(req, res);
}

signingKeys.push(newSigningKey());
build();
const server = http.createServer((req, res) => {
  route(req, res).catch((err) => {
    console.error('peer error', err);
    if (!res.headersSent) html(res, 500, page('Error', `<p>${escapeHtml(err.message)}</p>`));
  });
});
server.listen(cfg.port, host, () => {
  process.stdout.write(`READY ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
