import { describe, expect, it } from 'vitest';
import { XDS, EXT } from '../../envoy/api/type-urls.js';
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';
import { generateTokenKey, localJwks } from '../../mcp/token.js';
import { buildSnapshot } from '../snapshot.js';
import { translate } from './index.js';
import { callerBucket, ingressResources, INGRESS, JWT_CACHE_SIZE, PROTECTED_RESOURCE_PATH, protectedResourceMetadata, type IngressOptions } from './ingress.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const ir = (mcp: string): Ir => compileText(`${HEAD}mcp:\n${mcp}`, { file: 'p.yaml', baseDir: '/etc/portcullis' });

const LOCAL = ir(`  listen: 127.0.0.1:8443
  limits: { connectionsPerCaller: 8, requestsPerMinute: 120, maxBodyBytes: 1Mi }
  tools:
    rules:
      - { callers: ["*"], tools: [exec], effect: allow }
`);
const OIDC = ir(`  auth: { mode: oidc, issuer: "https://idp.example.com/", audience: [mcp-a, mcp-b], jwksUri: "https://idp.example.com/.well-known/jwks.json", callerClaim: email }
  tools:
    rules:
      - { callers: ["*"], tools: [exec], effect: allow }
`);
const key = await generateTokenKey();
const OPTS: IngressOptions = { gateway: { address: '127.0.0.1', port: 9100 }, authzCluster: 'portcullis_authz', localJwks: localJwks(key), gatewayOriginSecret: 'o-secret' };

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
function parts(ir: Ir, o: IngressOptions = OPTS) {
  const r = ingressResources(ir, o);
  const listener = r.listeners[0] as Obj;
  const hcm = listener.filter_chains[0].filters.find((f: Obj) => f.name === 'envoy.filters.network.http_connection_manager').typed_config as Obj;
  const filters = hcm.http_filters as Obj[];
  const byName = (n: string) => filters.find((f) => f.name === n)!.typed_config as Obj;
  return { r, listener, hcm, filters, byName, routes: (r.routes[0] as Obj).virtual_hosts[0].routes as Obj[] };
}

function snapshot(ir: Ir, o: IngressOptions = OPTS) {
  const r = ingressResources(ir, o);
  return buildSnapshot({ [XDS.listener]: r.listeners, [XDS.route]: r.routes, [XDS.cluster]: r.clusters }, { staticClusters: r.staticClusters });
}

describe('MCP ingress translation', () => {
  it('passes pre-push validation (every field known to Envoy’s protos, every reference resolved) in local and oidc modes', () => {
    expect(() => snapshot(LOCAL)).not.toThrow();
    expect(() => snapshot(OIDC, { ...OPTS, localJwks: undefined, gateway: { socketPath: '/run/portcullis/gw.sock' } })).not.toThrow();
  });

  it('filters run in the order strip → jwt_authn → per-caller rate → body cap → ext_authz → router', () => {
    const { filters } = parts(LOCAL);
    expect(filters.map((f) => f.name)).toEqual([
      'envoy.filters.http.header_mutation',
      'envoy.filters.http.jwt_authn',
      'envoy.filters.http.local_ratelimit',
      'envoy.filters.http.buffer',
      'envoy.filters.http.ext_authz',
      'envoy.filters.http.router',
    ]);
    expect(parts(LOCAL).byName('envoy.filters.http.header_mutation').mutations.request_mutations).toEqual([{ remove: 'x-portcullis-caller' }, { remove: 'x-portcullis-origin' }]);
  });

  it('jwt_authn: every path needs a token except the RFC 9728 document; the caller header comes from the verified claim', () => {
    const jwt = parts(LOCAL).byName('envoy.filters.http.jwt_authn');
    expect(jwt.rules).toEqual([{ match: { prefix: PROTECTED_RESOURCE_PATH } }, { match: { prefix: '/' }, requires: { provider_name: INGRESS.provider } }]);
    const p = jwt.providers[INGRESS.provider];
    expect(p).toMatchObject({
      issuer: 'portcullis-local',
      audiences: ['portcullis-mcp'],
      forward: false,
      require_expiration: true,
      from_headers: [{ name: 'authorization', value_prefix: 'Bearer ' }],
      claim_to_headers: [{ header_name: 'x-portcullis-caller', claim_name: 'sub' }],
      jwt_cache_config: { jwt_cache_size: JWT_CACHE_SIZE },
    });
    // the caller header is the identity downstream; the payload is not copied into every check and log
    expect(p).not.toHaveProperty('payload_in_metadata');
    expect(JSON.parse(p.local_jwks.inline_string).keys[0]).not.toHaveProperty('d');
    const o = parts(OIDC, { ...OPTS, localJwks: undefined }).byName('envoy.filters.http.jwt_authn').providers[INGRESS.provider];
    expect(o).toMatchObject({ issuer: 'https://idp.example.com/', audiences: ['mcp-a', 'mcp-b'], claim_to_headers: [{ claim_name: 'email' }] });
    expect(o.remote_jwks.http_uri).toMatchObject({ uri: 'https://idp.example.com/.well-known/jwks.json', cluster: INGRESS.jwksCluster });
    expect(() => ingressResources(LOCAL, { ...OPTS, localJwks: undefined })).toThrow(/JWKS/);
  });

  it('the OIDC JWKS cluster verifies the IdP’s certificate chain and name', () => {
    const c = ingressResources(OIDC, { ...OPTS, localJwks: undefined }).clusters.find((x) => x.name === INGRESS.jwksCluster) as Obj;
    const tls = c.transport_socket.typed_config;
    expect(tls.sni).toBe('idp.example.com');
    expect(tls.common_tls_context.validation_context.trusted_ca.filename).toBeTruthy();
    expect(tls.common_tls_context.validation_context.match_typed_subject_alt_names).toEqual([{ san_type: 'DNS', matcher: { exact: 'idp.example.com' } }]);
  });

  it('limits come from the policy: per-caller bucket = requestsPerMinute, body cap = maxBodyBytes, ext_authz fails closed with the body', () => {
    const { byName, r } = parts(LOCAL);
    const vhost = (r.routes[0] as Obj).virtual_hosts[0];
    const rl = vhost.typed_per_filter_config['envoy.filters.http.local_ratelimit'];
    expect(rl['@type']).toBe(EXT.typedStruct);
    expect(rl.value.descriptors).toEqual([{ entries: [{ key: INGRESS.rateLimitKey }], token_bucket: { max_tokens: 20, tokens_per_fill: 1, fill_interval: '0.5s' } }]);
    expect(rl.value.rate_limits[0].actions[0].request_headers.header_name).toBe('x-portcullis-caller');
    expect(rl.value.filter_enforced.default_value.numerator).toBe(100);
    expect(rl.value.always_consume_default_token_bucket).toBe(false);
    const post = (vhost.routes as Obj[]).find((x) => x.route && x.match.headers[0].string_match.exact === 'POST')!;
    expect(post.typed_per_filter_config['envoy.filters.http.buffer'].buffer.max_request_bytes).toBe(1024 * 1024);
    expect(post.typed_per_filter_config['envoy.filters.http.ext_authz'].check_settings.with_request_body).toEqual({ max_request_bytes: 1024 * 1024, allow_partial_message: false, pack_as_bytes: true });
    const ea = byName('envoy.filters.http.ext_authz');
    expect(ea).toMatchObject({ failure_mode_allow: false, with_request_body: { allow_partial_message: false } });
    expect(ea).not.toHaveProperty('metadata_context_namespaces');
    expect(ea.allowed_headers.patterns).toContainEqual({ exact: 'x-portcullis-caller' });
    expect(JSON.stringify(ea.allowed_headers)).not.toContain('authorization');
  });

  it('a change of limits or tool rules leaves the listener as it was (no drain of in-flight calls)', () => {
    const other = ir(`  listen: 127.0.0.1:8443
  limits: { connectionsPerCaller: 2, requestsPerMinute: 7, maxBodyBytes: 2Mi }
  tools:
    rules:
      - { callers: [someone], tools: [read_file], effect: deny }
`);
    const a = ingressResources(LOCAL, OPTS);
    const b = ingressResources(other, OPTS);
    expect(JSON.stringify(b.listeners)).toBe(JSON.stringify(a.listeners));
    expect(JSON.stringify(b.routes)).not.toBe(JSON.stringify(a.routes));
  });

  it('the per-caller bucket refills at exactly requestsPerMinute, at most every 50 ms, with ten seconds of burst', () => {
    const perMinute = (b: { tokens_per_fill: number; fill_interval: string }) => (b.tokens_per_fill * 60) / Number(b.fill_interval.slice(0, -1));
    for (const rpm of [1, 7, 60, 600, 1200, 2000, 60_000, 1_000_000]) {
      const b = callerBucket(rpm);
      expect(Math.abs(perMinute(b) - rpm) / rpm, String(rpm)).toBeLessThan(0.01);
      expect(Number(b.fill_interval.slice(0, -1))).toBeGreaterThanOrEqual(0.05);
      expect(b.max_tokens).toBe(Math.max(b.tokens_per_fill, Math.ceil(rpm / 6)));
    }
  });

  it('routes: only /mcp (POST, GET, DELETE) reaches the gateway, with the origin secret; GET/DELETE unbuffered; SSE-safe timeouts', () => {
    const { routes, hcm } = parts(LOCAL);
    const toGw = routes.filter((r) => r.route);
    expect(toGw.map((r) => [r.match.path, r.match.headers[0].string_match.exact])).toEqual([
      ['/mcp', 'POST'],
      ['/mcp', 'GET'],
      ['/mcp', 'DELETE'],
    ]);
    for (const r of toGw) {
      expect(r.route).toMatchObject({ cluster: INGRESS.gatewayCluster, timeout: '0s' });
      expect(r.request_headers_to_add).toEqual([{ header: { key: 'x-portcullis-origin', value: 'o-secret' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }]);
      expect(r.typed_per_filter_config['envoy.filters.http.ext_authz']).toMatchObject({ check_settings: { context_extensions: { lane: 'mcp' } } });
    }
    expect(toGw[0]!.typed_per_filter_config['envoy.filters.http.buffer']).toMatchObject({ buffer: { max_request_bytes: 1024 * 1024 } });
    expect(toGw[1]!.typed_per_filter_config['envoy.filters.http.buffer'].disabled).toBe(true);
    expect(routes.at(-1)).toMatchObject({ match: { prefix: '/' }, direct_response: { status: 404 } });
    expect(hcm).toMatchObject({ use_remote_address: true, xff_num_trusted_hops: 0, normalize_path: true, merge_slashes: true, path_with_escaped_slashes_action: 'REJECT_REQUEST' });
    expect(hcm.common_http_protocol_options.headers_with_underscores_action).toBe('REJECT_REQUEST');
  });

  it('401s point at the RFC 9728 document, which names the resource (and the IdP in oidc mode)', () => {
    const { hcm } = parts(LOCAL, { ...OPTS, publicUrl: 'https://mcp.example.com/' });
    const m401 = hcm.local_reply_config.mappers.find((m: Obj) => m.filter.status_code_filter?.comparison.value.default_value === 401);
    expect(JSON.stringify(m401.headers_to_add)).toContain('resource_metadata=\\"https://mcp.example.com/.well-known/oauth-protected-resource\\"');
    expect(protectedResourceMetadata(LOCAL, { ...OPTS, publicUrl: 'https://mcp.example.com' })).toEqual({
      resource: 'https://mcp.example.com/mcp',
      bearer_methods_supported: ['header'],
      resource_name: 'Portcullis MCP gateway',
    });
    expect(protectedResourceMetadata(OIDC, OPTS).authorization_servers).toEqual(['https://idp.example.com/']);
  });

  it('translate() adds the ingress only when asked, with the authz cluster as a static cluster', () => {
    const egress = { listen: { address: '127.0.0.1', port: 15001 } };
    const without = translate(LOCAL, { egress });
    expect((without.input[XDS.listener] as Obj[]).map((l) => l.name)).not.toContain(INGRESS.listener);
    const withIt = translate(LOCAL, { egress, ingress: OPTS });
    expect((withIt.input[XDS.listener] as Obj[]).map((l) => l.name)).toContain(INGRESS.listener);
    expect(withIt.staticClusters).toContain('portcullis_authz');
    expect(() => buildSnapshot(withIt.input, { staticClusters: withIt.staticClusters })).not.toThrow();
  });
});
