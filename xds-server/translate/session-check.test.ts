import { describe, expect, it } from 'vitest';
import { XDS } from '../../envoy/api/type-urls.js';
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';
import { buildSnapshot } from '../snapshot.js';
import { translate, type TranslateOptions } from './index.js';
import { BUMP } from './bump.js';
import { EGRESS } from './egress.js';
import { SESSION_CHECK, SESSION_EXPIRY_FILTER, sessionExpiredCondition, sessionRouteTableConfig, type SessionVerifier } from './session-check.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const ir = (egress: string): Ir => compileText(`${HEAD}egress:\n${egress}`, { file: 'p.yaml', baseDir: '/etc/portcullis' });

const MIXED = ir(`  rung: transparent
  allow:
    - { host: plain.example.com, ports: [443] }
    - { host: api.example.com, ports: [443], rung: bump }
    - { host: blocked.example.com, ports: [443], rung: deny-all }
`);
const DENY_ALL = ir('  rung: deny-all\n');
const VERIFIER: SessionVerifier = { jwks: { keys: [{ kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'k1' }] }, audience: 'portcullis-egress', issuer: 'portcullis-supervisor' };

function opts(sessionsRequired: boolean, verifier: SessionVerifier | null = VERIFIER): TranslateOptions {
  return {
    egress: { listen: { address: '127.0.0.1', port: 15001 }, accessLogCluster: 'portcullis_xds', bump: { controlPlaneCluster: 'portcullis_xds' }, sessionsRequired },
    ...(verifier ? { sessionVerifier: verifier } : {}),
    sessionDenials: [
      { sessionId: 'b-sess', reason: 'session_revoked' },
      { sessionId: 'a-sess', reason: 'session_revoked' },
      { sessionId: 'c-sess', reason: 'exfil_budget_exceeded' },
    ],
  };
}

function egress(i: Ir, o: TranslateOptions) {
  const t = translate(i, o);
  const listeners = t.input[XDS.listener] as Obj[];
  const routes = t.input[XDS.route] as Obj[];
  const a = listeners.find((l) => l.name === EGRESS.listener)!;
  const hcm = a.filter_chains[0].filters[0].typed_config;
  return { t, hcm, filters: (hcm.http_filters as Obj[]).map((f) => f.name as string), table: routes.find((r) => r.name === EGRESS.routes)!, routes, listeners };
}

const jwtOf = (cfg: Obj | undefined) => cfg?.[SESSION_CHECK.jwtFilter];

describe('the session check of every tunnel, in Envoy (listener A)', () => {
  it('runs in order: strip our headers → token out of Proxy-Authorization → jwt_authn → drop the token → RBAC → record for B; no ext_authz', () => {
    const { filters, hcm, t } = egress(MIXED, opts(true));
    expect(filters.slice(0, 6)).toEqual([
      'envoy.filters.http.header_mutation',
      'envoy.filters.http.lua',
      SESSION_CHECK.jwtFilter,
      'portcullis.drop_proxy_token',
      SESSION_CHECK.rbacFilter,
      'envoy.filters.http.set_filter_state',
    ]);
    expect(JSON.stringify(hcm)).not.toContain('ext_authz');
    const strip = (hcm.http_filters as Obj[])[0]!.typed_config.mutations.request_mutations.map((m: Obj) => m.remove);
    expect(strip).toEqual(expect.arrayContaining([SESSION_CHECK.sessionHeader, SESSION_CHECK.expHeader, SESSION_CHECK.tokenHeader, BUMP.authorityHeader]));
    // jwt_authn's config comes over ECDS (a key change never drains A), and A waits for it
    expect((hcm.http_filters as Obj[])[2]).toEqual({ name: SESSION_CHECK.jwtFilter, config_discovery: { config_source: { ads: {}, resource_api_version: 'V3' }, type_urls: [expect.stringContaining('jwt_authn.v3.JwtAuthentication')] } });
    const ecds = t.input[XDS.extensionConfig] as Obj[];
    expect(ecds.map((e) => e.name)).toEqual([SESSION_CHECK.jwtFilter]);
    const jwt = ecds[0]!.typed_config;
    const provider = jwt.providers[SESSION_CHECK.provider];
    expect(provider).toMatchObject({
      issuer: 'portcullis-supervisor',
      audiences: ['portcullis-egress'],
      from_headers: [{ name: SESSION_CHECK.tokenHeader }],
      forward: false,
      require_expiration: true,
      clock_skew_seconds: 5,
    });
    expect(JSON.parse(provider.local_jwks.inline_string)).toEqual(VERIFIER.jwks);
    expect(provider.claim_to_headers).toEqual([
      { header_name: SESSION_CHECK.sessionHeader, claim_name: 'sid' },
      { header_name: SESSION_CHECK.expHeader, claim_name: 'exp' },
    ]);
    // the tunnel's session and its token's expiry go to B
    const recorded = (hcm.http_filters as Obj[])[5]!.typed_config.on_request_headers.map((v: Obj) => v.object_key);
    expect(recorded).toEqual([BUMP.sessionKey, SESSION_CHECK.expKey, BUMP.authorityKey]);
  });

  it('the route table requires a session unless a virtual host says otherwise, and every virtual host says', () => {
    for (const required of [true, false]) {
      const { table } = egress(MIXED, opts(required));
      expect(jwtOf(table.typed_per_filter_config)).toEqual({ '@type': expect.stringContaining('jwt_authn.v3.PerRouteConfig'), requirement_name: SESSION_CHECK.requirement });
      const says = Object.fromEntries((table.virtual_hosts as Obj[]).map((vh) => [vh.name, jwtOf(vh.typed_per_filter_config)?.requirement_name ?? (jwtOf(vh.typed_per_filter_config)?.disabled ? 'off' : 'unsaid')]));
      expect(says).toEqual({
        'dest:plain.example.com': required ? 'session' : 'off',
        'dest:api.example.com:bump': 'session',
        'dest:blocked.example.com:deny': 'off',
        'not-allowed': 'off',
      });
    }
  });

  it('deny-all with sessions required: the one virtual host asks for no session, so the refusal keeps its reason', () => {
    const { table } = egress(DENY_ALL, opts(true));
    expect((table.virtual_hosts as Obj[]).map((vh) => [vh.name, jwtOf(vh.typed_per_filter_config)])).toEqual([['deny-all', expect.objectContaining({ disabled: true })]]);
  });

  it('revoked sessions are DENY policies of the route table, one per reason, sorted (so equal input gives equal bytes)', () => {
    const { table } = egress(MIXED, opts(true));
    const rbac = table.typed_per_filter_config[SESSION_CHECK.rbacFilter].rbac.rules;
    expect(rbac.action).toBe('DENY');
    expect(Object.keys(rbac.policies)).toEqual(['exfil_budget_exceeded', 'session_revoked']);
    const ids = (reason: string) => rbac.policies[reason].principals[0].or_ids.ids.map((p: Obj) => [p.header.name, p.header.string_match.exact]);
    expect(ids('session_revoked')).toEqual([
      [SESSION_CHECK.sessionHeader, 'a-sess'],
      [SESSION_CHECK.sessionHeader, 'b-sess'],
    ]);
    expect(ids('exfil_budget_exceeded')).toEqual([[SESSION_CHECK.sessionHeader, 'c-sess']]);
    // no revocations: the RBAC filter has nothing to enforce
    expect(sessionRouteTableConfig([])[SESSION_CHECK.rbacFilter]).toEqual({ '@type': expect.stringContaining('RBACPerRoute') });
  });

  it('each refusal of the check has its reason: 407 + Proxy-Authenticate without a valid token, 403 expired, 403 per revocation reason', () => {
    const { hcm } = egress(MIXED, opts(true));
    const mappers = hcm.local_reply_config.mappers as Obj[];
    const byExpr = mappers.map((m) => [m.filter.extension_filter?.typed_config?.expression ?? 'flags', m.status_code, m.headers_to_add.find((h: Obj) => h.header.key === 'x-deny-reason').header.value]);
    expect(byExpr.slice(0, 4)).toEqual([
      ["response.code_details == 'jwt_authn_access_denied{Jwt_is_expired}'", 403, 'session_expired'],
      ["response.code_details.startsWith('jwt_authn_access_denied')", 407, 'session_credential_missing'],
      ["response.code_details == 'rbac_access_denied_matched_policy[session_revoked]'", 403, 'session_revoked'],
      ["response.code_details == 'rbac_access_denied_matched_policy[exfil_budget_exceeded]'", 403, 'exfil_budget_exceeded'],
    ]);
    expect(mappers[1]!.headers_to_add.map((h: Obj) => h.header.key)).toContain('proxy-authenticate');
  });

  it('without the signer\'s keys, a lane whose tunnels need a session is refused, not served open', () => {
    expect(() => translate(MIXED, opts(false, null))).toThrow(/session signer's keys/);
    // no bump destination and no sessions required: nothing to check, nothing needed
    const plain = ir('  rung: transparent\n  allow:\n    - { host: plain.example.com, ports: [443] }\n');
    expect(() => translate(plain, opts(false, null))).not.toThrow();
    expect(JSON.stringify(translate(plain, opts(false, null)).input)).not.toContain(SESSION_CHECK.jwtFilter);
  });

  it('the whole translation passes the pre-push validator; a listener naming a filter config the snapshot lacks does not', () => {
    const t = translate(MIXED, opts(true));
    const build = () => buildSnapshot(t.input, { staticClusters: t.staticClusters, externalSecrets: ['leaf:api.example.com'] });
    expect(() => build()).not.toThrow();
    t.input[XDS.extensionConfig] = [];
    expect(() => build()).toThrow(/references extension "portcullis.session_jwt"/);
  });
});

describe('inside a bumped tunnel (listener B): the token\'s expiry, by Envoy\'s clock', () => {
  it('an RBAC DENY before the host check; deny routes of revoked sessions turn both off so their own reason wins', () => {
    const { listeners, routes } = egress(MIXED, opts(true));
    const b = listeners.find((l) => l.name === BUMP.listener)!;
    const hcm = b.filter_chains[0].filters[0].typed_config;
    const names = (hcm.http_filters as Obj[]).map((f) => f.name);
    expect(names.indexOf(SESSION_EXPIRY_FILTER)).toBeGreaterThan(-1);
    expect(names.indexOf(SESSION_EXPIRY_FILTER)).toBeLessThan(names.indexOf('envoy.filters.http.rbac'));
    const expiry = (hcm.http_filters as Obj[]).find((f) => f.name === SESSION_EXPIRY_FILTER)!.typed_config.rules;
    expect(expiry.action).toBe('DENY');
    expect(Object.keys(expiry.policies)).toEqual(['session_expired']);
    // the expiry mapper comes before the generic RBAC one (sni_mismatch)
    const reasons = (hcm.local_reply_config.mappers as Obj[]).map((m) => m.headers_to_add[0].header.value);
    expect(reasons.slice(0, 2)).toEqual(['session_expired', 'sni_mismatch']);
    const deny = (routes.find((r) => r.name === 'bump:api.example.com')!.virtual_hosts[0].routes as Obj[]).find((r) => r.name === 'deny:session_revoked')!;
    expect(Object.keys(deny.typed_per_filter_config).sort()).toEqual(['envoy.filters.http.rbac', SESSION_EXPIRY_FILTER].sort());
  });

  it('the condition is `int(string(filter_state[exp])) + 5 < int(request.time)`', () => {
    const c = JSON.stringify(sessionExpiredCondition());
    for (const s of ['"function":"_<_"', '"function":"_+_"', '"function":"int"', '"function":"string"', `"string_value":"${SESSION_CHECK.expKey}"`, '"int64_value":"5"', '"field":"time"']) {
      expect(c).toContain(s);
    }
  });
});
