import { EXT } from '../../envoy/api/type-urls.js';
import { REVOCATION_REASONS, type SessionDenialEntry } from '../sessions.js';
import { CEL_STRING_FEATURES, celBuilder } from './cel.js';
import { ADS_SOURCE, celResponseFilter, denyReplyMapper, SESSION_HEADER } from './common.js';

/**
 * The session check of every tunnel, done by Envoy on the egress listener (A) — no call leaves
 * Envoy when a tunnel opens:
 *
 * 1. a Lua filter takes the session token out of `Proxy-Authorization` (`Basic base64(user:<token>)`,
 *    what a proxy URL `http://session:<token>@…` makes every client send, or `Bearer <token>`) into
 *    `x-portcullis-proxy-token`, and drops `Proxy-Authorization` (hop-by-hop: it never goes upstream);
 * 2. `jwt_authn` verifies it against the session signer's JWKS (runtime state, like the leaves):
 *    Ed25519 signature, audience, issuer, `exp` required (5 s skew). Verified tokens are cached per
 *    worker. Its config comes over ECDS (`portcullis.session_jwt`), so new signer keys reach Envoy
 *    without draining the listener or its open tunnels (the listener waits for the config before it
 *    serves). On success the `sid` and `exp` claims become `x-portcullis-session` and
 *    `x-portcullis-session-exp` (the filter before removed any guest-sent copy) and the token header
 *    is dropped; every virtual host says whether it needs a session, and the route table's default
 *    is that it does, so a virtual host that forgot to say is closed, not open;
 * 3. a header filter drops the token header wherever jwt_authn did not (a failed or skipped check);
 * 4. an RBAC filter with no rules of its own: the route table carries the DENY policies (one per
 *    revocation reason, the revoked sessions as principals), so a revocation is an RDS update and
 *    never drains a listener. The control plane publishes the list on every change and confirms
 *    that Envoy ACKed it.
 *
 * Refusals carry their reason like every other denial: no or a bad token → 407
 * `session_credential_missing` with `Proxy-Authenticate`; an expired token → 403 `session_expired`;
 * a revoked session → 403 with its revocation reason. Envoy's access log carries them to the audit
 * pipeline.
 */

export const SESSION_CHECK = {
  provider: 'session',
  requirement: 'session',
  tokenHeader: 'x-portcullis-proxy-token',
  sessionHeader: SESSION_HEADER,
  expHeader: 'x-portcullis-session-exp',
  /** the jwt_authn filter's name on A, and the name of its config (ECDS) */
  jwtFilter: 'portcullis.session_jwt',
  rbacFilter: 'envoy.filters.http.rbac',
  /** the tunnel's token expiry (epoch seconds), recorded by A for B's per-request expiry check */
  expKey: 'portcullis.session_exp',
  clockSkewSeconds: 5,
  jwtCacheSize: 4096,
} as const;

/** How Envoy verifies session tokens: the signer's public keys and the claims a token must carry. */
export interface SessionVerifier {
  /** public keys of the session signer (current, staged next, and retired ones in their overlap) */
  jwks: { keys: readonly unknown[] };
  audience: string;
  issuer?: string;
}

/**
 * Lua: base64 (RFC 4648, padding optional) decoded in plain Lua, since Envoy's Lua API has no
 * decoder. The password is everything after the first colon of `user:password`.
 */
export const PROXY_TOKEN_LUA = `
local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local value = {}
for i = 1, 64 do value[alphabet:byte(i)] = i - 1 end

local function b64decode(s)
  s = s:gsub('=+$', '')
  if #s % 4 == 1 or s:find('[^%w%+/]') then return nil end
  local out, acc, nbits = {}, 0, 0
  for i = 1, #s do
    acc = acc * 64 + value[s:byte(i)]
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local p = 2 ^ nbits
      local byte = math.floor(acc / p)
      out[#out + 1] = string.char(byte)
      acc = acc - byte * p
    end
  end
  return table.concat(out)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local v = headers:get('proxy-authorization')
  headers:remove('proxy-authorization')
  headers:remove('${SESSION_CHECK.tokenHeader}')
  if v == nil or #v > 8192 then return end
  local scheme, cred = v:match('^%s*(%a+)%s+(%S+)%s*$')
  if scheme == nil then return end
  scheme = scheme:lower()
  local token
  if scheme == 'bearer' then
    token = cred
  elseif scheme == 'basic' then
    local decoded = b64decode(cred)
    if decoded then
      local colon = decoded:find(':', 1, true)
      if colon then token = decoded:sub(colon + 1) end
    end
  end
  if token and #token > 0 then headers:add('${SESSION_CHECK.tokenHeader}', token) end
end
`;

/** A's filters of the session check, in order (after the filter that strips our headers as the guest sent them). */
export function sessionCheckFilters(): Record<string, unknown>[] {
  return [
    {
      name: 'envoy.filters.http.lua',
      typed_config: { '@type': EXT.lua, default_source_code: { inline_string: PROXY_TOKEN_LUA } },
    },
    // no default config: the listener is not served until Envoy has the signer's keys
    { name: SESSION_CHECK.jwtFilter, config_discovery: { config_source: ADS_SOURCE, type_urls: [EXT.jwtAuthn] } },
    {
      name: 'portcullis.drop_proxy_token',
      typed_config: { '@type': EXT.headerMutation, mutations: { request_mutations: [{ remove: SESSION_CHECK.tokenHeader }] } },
    },
    { name: SESSION_CHECK.rbacFilter, typed_config: { '@type': EXT.httpRbac } },
  ];
}

/** The session check's jwt_authn config: an ECDS resource (TypedExtensionConfig), so a key change never drains A. */
export function sessionJwtConfig(v: SessionVerifier): { name: string; typed_config: Record<string, unknown> } {
  return {
    name: SESSION_CHECK.jwtFilter,
    typed_config: {
      '@type': EXT.jwtAuthn,
      providers: {
        [SESSION_CHECK.provider]: {
          ...(v.issuer ? { issuer: v.issuer } : {}),
          audiences: [v.audience],
          local_jwks: { inline_string: JSON.stringify(v.jwks) },
          from_headers: [{ name: SESSION_CHECK.tokenHeader }],
          forward: false,
          require_expiration: true,
          clock_skew_seconds: SESSION_CHECK.clockSkewSeconds,
          claim_to_headers: [
            { header_name: SESSION_CHECK.sessionHeader, claim_name: 'sid' },
            { header_name: SESSION_CHECK.expHeader, claim_name: 'exp' },
          ],
          jwt_cache_config: { jwt_cache_size: SESSION_CHECK.jwtCacheSize },
        },
      },
      requirement_map: { [SESSION_CHECK.requirement]: { provider_name: SESSION_CHECK.provider } },
    },
  };
}

/** A virtual host's (or the route table's) word on the session check. */
export function sessionRequirement(required: boolean): Record<string, unknown> {
  return {
    [SESSION_CHECK.jwtFilter]: {
      '@type': EXT.jwtAuthnPerRoute,
      ...(required ? { requirement_name: SESSION_CHECK.requirement } : { disabled: true }),
    },
  };
}

/**
 * The route table's per-filter config: sessions are required unless a virtual host says otherwise,
 * and the revoked sessions are refused, one DENY policy per reason (`rbac_access_denied_matched_policy[<reason>]`).
 */
export function sessionRouteTableConfig(denials: readonly SessionDenialEntry[]): Record<string, unknown> {
  const byReason = new Map<string, string[]>();
  for (const d of denials) byReason.set(d.reason, [...(byReason.get(d.reason) ?? []), d.sessionId]);
  const policies: Record<string, unknown> = {};
  for (const [reason, ids] of [...byReason].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    policies[reason] = {
      permissions: [{ any: true }],
      principals: [{ or_ids: { ids: [...ids].sort().map((id) => ({ header: { name: SESSION_CHECK.sessionHeader, string_match: { exact: id } } })) } }],
    };
  }
  return {
    ...sessionRequirement(true),
    [SESSION_CHECK.rbacFilter]: {
      '@type': EXT.httpRbacPerRoute,
      ...(byReason.size ? { rbac: { rules: { action: 'DENY', policies } } } : {}),
    },
  };
}

/** A's local-reply mappers for the session check (before any other mapper). */
export function sessionReplyMappers(): Record<string, unknown>[] {
  return [
    denyReplyMapper(celResponseFilter("response.code_details == 'jwt_authn_access_denied{Jwt_is_expired}'"), 'session_expired'),
    denyReplyMapper(celResponseFilter("response.code_details.startsWith('jwt_authn_access_denied')"), 'session_credential_missing', {
      status: 407,
      headers: { 'proxy-authenticate': 'Basic realm="portcullis"' },
    }),
    // the revoked sessions' DENY policies are named after their reasons (sessionRouteTableConfig)
    ...REVOCATION_REASONS.map((r) => denyReplyMapper(celResponseFilter(`response.code_details == 'rbac_access_denied_matched_policy[${r}]'`), r)),
  ];
}

/**
 * B's per-request expiry check: `int(string(filter_state[exp])) + skew < int(request.time)` — the
 * token that opened the tunnel has expired, so the tunnel's next request is refused (`session_expired`),
 * by Envoy's clock alone. A tunnel without a recorded expiry never gets here: A requires `exp`, and
 * B's routes refuse a tunnel without a session.
 */
export function sessionExpiredCondition(): Record<string, unknown> {
  const cel = celBuilder();
  const exp = cel.call('int', [cel.call('string', [cel.call('_[_]', [cel.ident('filter_state'), cel.str(SESSION_CHECK.expKey)])])]);
  return cel.call('_<_', [cel.call('_+_', [exp, cel.int(SESSION_CHECK.clockSkewSeconds)]), cel.call('int', [cel.select(cel.ident('request'), 'time')])]);
}

export const SESSION_EXPIRY_FILTER = 'portcullis.session_expiry';

/** B's RBAC filter refusing requests in a tunnel whose token has expired (policy `session_expired`). */
export function sessionExpiryFilter(): Record<string, unknown> {
  return {
    name: SESSION_EXPIRY_FILTER,
    typed_config: {
      '@type': EXT.httpRbac,
      rules: {
        action: 'DENY',
        policies: {
          session_expired: { permissions: [{ any: true }], principals: [{ any: true }], condition: sessionExpiredCondition(), cel_config: CEL_STRING_FEATURES },
        },
      },
    },
  };
}
