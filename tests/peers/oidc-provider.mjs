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
//   GET  /__test/token-requests         {counts: {<grant_type>: n}, requests: [...]}: one entry per HTTP
//                                       request to the token endpoint (POST <issuer>/token), in order of
//                                       arrival, whatever became of it (answered by the provider, by an
//                                       injected fault, or abandoned by the client), so counts are "token
//                                       endpoint calls". Each entry: {at (Date.now() ms on arrival),
//                                       grant_type (from the form body), client_id (as presented: Basic
//                                       user, client_id field, or the client_assertion's sub), client_auth
//                                       (none | client_secret_basic | client_secret_post |
//                                       client_assertion), fault (null or what was applied: "status:503",
//                                       "error:invalid_grant", "delay", "hang", "omit_refresh_token",
//                                       "omit_expires_in", "expires_in_as_string", joined by "+", or
//                                       "abandoned"), status (HTTP status sent; null while in flight or
//                                       when abandoned), ok (a 2xx was sent), error (the `error` of the
//                                       JSON body sent), presented_refresh_token / issued_refresh_token
//                                       (first 16 hex digits of the sha256 of the refresh_token form field
//                                       / of the refresh_token in the body sent; null when none)}
//   POST /__test/token-faults           JSON array of faults, appended to a FIFO queue (answers {queued}).
//                                       A token request takes the first queued fault whose grant_types
//                                       (default ["refresh_token", "client_credentials"], so the sign-in's
//                                       code redemption is left alone unless asked) has its grant_type:
//                                         {status, retry_after, body}  answer at once with that status, a
//                                             Retry-After header when given and the JSON body when given
//                                             (else an empty body); the provider never sees the request,
//                                             so a refresh token is not consumed
//                                         {error, error_description, error_codes, …, status}  the same
//                                             with a JSON OAuth error body of every key other than the
//                                             control keys (status defaults to 400)
//                                         {delay_ms}  wait; if the client went away meanwhile, drop the
//                                             request unseen by the provider (recorded "abandoned", the
//                                             refresh token not consumed), else go on: with status/error
//                                             answer as above, else pass it to the provider
//                                         {hang: true}  never answer; recorded "abandoned" once the
//                                             client goes away; the provider never sees it
//                                         {omit_refresh_token: true}  the provider answers but does not
//                                             rotate for this request (the presented refresh token stays
//                                             valid) and refresh_token is stripped from the response
//                                         {omit_expires_in: true}, {expires_in_as_string: true}  strip
//                                             expires_in from the success response, or make it a string
//                                       Keys combine (delay_ms with any other; omit_* together).
//   GET  /__test/token-faults           how many faults are queued and not yet used (answers {queued})
//   DELETE /__test/token-faults         empty the fault queue (answers {cleared: n})
//   POST /__test/reuse-grace            {seconds}: a refresh token presented again within this many
//                                       seconds of the refresh that rotated it stands for the token
//                                       that refresh issued (if that one is still unused), as Amazon
//                                       Cognito's RetryGracePeriodSeconds (0-60 s) and the
//                                       grace periods of Ory Hydra and Curity do; after it, or when
//                                       the successor was used too, reuse revokes the grant as
//                                       before. 0 (the default) is strict. Such requests are logged
//                                       with reused_within_grace: true. Answers {seconds}.
//   POST /__test/revoke-grants          revoke every grant the provider has issued tokens for so far
//                                       (grant, refresh tokens, access tokens, codes), so the next
//                                       refresh gets a genuine invalid_grant. Answers {revoked: n}, n
//                                       the grants that still existed.
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
const tokenFaults = [];
// Refresh tokens spent by a rotation: raw presented token -> {at (ms answered), issued (raw)}.
const rotations = new Map();
let reuseGraceMs = 0;
// Grant ids seen in successful token responses, for /__test/revoke-grants.
const knownGrants = new Set();
// Per token request: {record, fault}, shared by the route wrapper, the koa middleware and
// rotateRefreshToken.
const tokenState = new WeakMap();
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
    rotateRefreshToken: (ctx) => !tokenState.get(ctx.req)?.fault?.omit_refresh_token
      && opt('rotate_refresh_token', true) === true,
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
    if (route === 'token' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      tokenSuccess(ctx);
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

  p.on('server_error', (_ctx, err) => console.error('server_error', err));

  provider = p;
  handler = p.callback();
}

// A successful token response from the provider: remember its grant, apply the request's fault
// (omit_* / expires_in_as_string) and the expires_in_as_string option.
function tokenSuccess(ctx) {
  const { entities } = ctx.oidc;
  for (const [name, entity] of Object.entries(entities)) {
    if (name === 'Grant' && entity?.jti) knownGrants.add(entity.jti);
    else if (entity?.grantId) knownGrants.add(entity.grantId);
  }
  const fault = tokenState.get(ctx.req)?.fault ?? {};
  if (fault.omit_refresh_token) delete ctx.body.refresh_token;
  if (fault.omit_expires_in) delete ctx.body.expires_in;
  if ((fault.expires_in_as_string || opt('expires_in_as_string', false)) && typeof ctx.body.expires_in === 'number') {
    ctx.body.expires_in = String(ctx.body.expires_in);
  }
}

const hash16 = (value) => (typeof value === 'string' && value
  ? crypto.createHash('sha256').update(value).digest('hex').slice(0, 16)
  : null);

function presentedClient(req, form) {
  const basic = /^basic (.+)$/i.exec(req.headers.authorization ?? '');
  if (basic) {
    const user = Buffer.from(basic[1], 'base64').toString('utf8').split(':')[0];
    try {
      return { clientId: decodeURIComponent(user), clientAuth: 'client_secret_basic' };
    } catch {
      return { clientId: user, clientAuth: 'client_secret_basic' };
    }
  }
  if (form.client_assertion) {
    let sub = null;
    try {
      sub = JSON.parse(Buffer.from(form.client_assertion.split('.')[1], 'base64url').toString('utf8')).sub ?? null;
    } catch { /* not a JWT */ }
    return { clientId: form.client_id ?? sub, clientAuth: 'client_assertion' };
  }
  return { clientId: form.client_id ?? null, clientAuth: form.client_secret ? 'client_secret_post' : 'none' };
}

// Keys of a fault object that steer it; the others make up an {error, …} shorthand's body.
const FAULT_CONTROL_KEYS = new Set(['grant_types', 'status', 'retry_after', 'body', 'delay_ms', 'hang',
  'omit_refresh_token', 'omit_expires_in', 'expires_in_as_string']);

function takeFault(grantType) {
  const i = tokenFaults.findIndex((f) => (f.grant_types ?? ['refresh_token', 'client_credentials']).includes(grantType));
  return i < 0 ? null : tokenFaults.splice(i, 1)[0];
}

function faultLabel(fault) {
  const parts = [];
  if (fault.delay_ms) parts.push('delay');
  if (fault.hang) parts.push('hang');
  if (fault.error) parts.push(`error:${fault.error}`);
  else if (fault.status) parts.push(`status:${fault.status}`);
  for (const flag of ['omit_refresh_token', 'omit_expires_in', 'expires_in_as_string']) if (fault[flag]) parts.push(flag);
  return parts.join('+') || 'none';
}

// The token endpoint. The form body is read here (the provider takes it from req.body, see
// shared/selective_body.js, warning once on stderr that the body was already parsed), so every
// request is recorded exactly once and faults can be applied before the provider sees it.
async function tokenEndpoint(req, res) {
  const at = Date.now();
  const text = await readBody(req);
  const form = Object.fromEntries(new URLSearchParams(text));
  const { clientId, clientAuth } = presentedClient(req, form);
  const record = {
    at,
    grant_type: String(form.grant_type ?? 'unknown'),
    client_id: clientId,
    client_auth: clientAuth,
    fault: null,
    status: null,
    ok: false,
    error: null,
    presented_refresh_token: hash16(form.refresh_token),
    issued_refresh_token: null,
    reused_within_grace: false,
  };
  const presentedRaw = form.refresh_token;
  // The token the provider is given (the successor, within a grace period).
  let forwardedRaw = presentedRaw;
  tokenRequests.push(record);

  // Fill in the record from what is actually sent, before it is sent.
  const chunks = [];
  const write = res.write.bind(res);
  const end = res.end.bind(res);
  res.write = (chunk, ...rest) => {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    return write(chunk, ...rest);
  };
  res.end = (chunk, ...rest) => {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    record.status = res.statusCode;
    record.ok = res.statusCode >= 200 && res.statusCode < 300;
    let body = null;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch { /* not JSON, or empty */ }
    if (body && typeof body === 'object') {
      record.error = typeof body.error === 'string' ? body.error : null;
      record.issued_refresh_token = hash16(body.refresh_token);
      if (record.ok && forwardedRaw && body.refresh_token && record.grant_type === 'refresh_token') {
        rotations.set(forwardedRaw, { at: Date.now(), issued: body.refresh_token });
      }
    }
    return end(chunk, ...rest);
  };
  let gone = false;
  res.once('close', () => {
    if (!res.writableEnded) gone = true;
  });

  const fault = takeFault(record.grant_type);
  if (fault) {
    record.fault = faultLabel(fault);
    if (fault.delay_ms) await new Promise((resolve) => { setTimeout(resolve, fault.delay_ms); });
    if (fault.hang) {
      if (!gone) await new Promise((resolve) => { res.once('close', resolve); });
      record.fault = 'abandoned';
      return;
    }
    if (gone || res.destroyed || req.socket?.destroyed) {
      record.fault = 'abandoned';
      return;
    }
    if (fault.error || fault.status) {
      const headers = { 'Cache-Control': 'no-store' };
      if (fault.retry_after !== undefined) headers['Retry-After'] = String(fault.retry_after);
      let body = fault.body;
      if (body === undefined && fault.error) {
        body = Object.fromEntries(Object.entries(fault).filter(([k]) => !FAULT_CONTROL_KEYS.has(k)));
      }
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      res.writeHead(fault.status ?? 400, headers);
      res.end(body === undefined ? undefined : JSON.stringify(body));
      return;
    }
  }
  tokenState.set(req, { record, fault });
  let forwarded = text;
  const spent = record.grant_type === 'refresh_token' && presentedRaw ? rotations.get(presentedRaw) : undefined;
  if (spent && reuseGraceMs > 0 && Date.now() - spent.at <= reuseGraceMs && !rotations.has(spent.issued)) {
    // Within the grace period: the spent token stands for its (unused) successor.
    record.reused_within_grace = true;
    forwardedRaw = spent.issued;
    forwarded = new URLSearchParams({ ...form, refresh_token: spent.issued }).toString();
  }
  // Already read: the provider falls back to req.body (a string it parses as a form).
  req.body = forwarded || {};
  return handler(req, res);
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
  if (req.method === 'POST' && path === '/__test/token-faults') {
    const text = await readBody(req);
    const value = text ? JSON.parse(text) : [];
    const faults = Array.isArray(value) ? value : [value];
    if (!faults.every((f) => f && typeof f === 'object' && !Array.isArray(f))) {
      return json(res, 400, { error: 'faults are JSON objects' });
    }
    tokenFaults.push(...faults);
    return json(res, 200, { queued: tokenFaults.length });
  }
  if (req.method === 'GET' && path === '/__test/token-faults') {
    return json(res, 200, { queued: tokenFaults.length });
  }
  if (req.method === 'DELETE' && path === '/__test/token-faults') {
    const cleared = tokenFaults.splice(0).length;
    return json(res, 200, { cleared });
  }
  if (req.method === 'POST' && path === '/__test/reuse-grace') {
    const body = JSON.parse((await readBody(req)) || '{}');
    reuseGraceMs = Math.max(0, Number(body.seconds ?? 0)) * 1000;
    return json(res, 200, { seconds: reuseGraceMs / 1000 });
  }
  if (req.method === 'POST' && path === '/__test/revoke-grants') {
    let revoked = 0;
    for (const grantId of [...knownGrants]) {
      const grant = await provider.Grant.find(grantId);
      if (grant) revoked += 1;
      await Promise.all([
        grant?.destroy(),
        provider.RefreshToken.revokeByGrantId(grantId),
        provider.AccessToken.revokeByGrantId(grantId),
        provider.AuthorizationCode.revokeByGrantId(grantId),
      ]);
      knownGrants.delete(grantId);
    }
    return json(res, 200, { revoked });
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
  if (req.method === 'POST' && path === `${prefix}/token`) {
    if (prefix) {
      req.originalUrl = req.url;
      req.url = req.url.slice(prefix.length) || '/';
    }
    return tokenEndpoint(req, res);
  }
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
