import { describe, expect, it } from 'vitest';
import { XDS } from '../../envoy/api/type-urls.js';
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';
import { buildSnapshot } from '../snapshot.js';
import { translate, type TranslateOptions } from './index.js';
import { EGRESS } from './egress.js';
import { SNI, sniIsAuthorityCondition } from './sni.js';
import { filterStateString, sniRefusal } from '../als.js';
import type { TCPAccessLogEntry__Output } from '../../envoy/generated/envoy/data/accesslog/v3/TCPAccessLogEntry.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const ir = (egress: string, extra = ''): Ir => compileText(`${HEAD}egress:\n${egress}${extra}`, { file: 'p.yaml', baseDir: '/etc/portcullis' });

const MIXED = ir(`  rung: transparent
  allow:
    - { host: api.example.com, ports: [443] }
    - { host: "*.pythonhosted.org" }
    - { host: 203.0.113.7, ports: [443] }
`, `storage:
  backends: [{ host: s3.example.internal, ports: [443] }]
`);
const OPTS: TranslateOptions = {
  egress: { listen: { address: '127.0.0.1', port: 15001 }, accessLogCluster: 'portcullis_xds' },
  storage: { listen: { address: '127.0.0.1', port: 15002 } },
};

function resources(i: Ir, o: TranslateOptions = OPTS) {
  const t = translate(i, o);
  const listeners = t.input[XDS.listener] as Obj[];
  const clusters = t.input[XDS.cluster] as Obj[];
  const routes = t.input[XDS.route] as Obj[];
  return { t, listeners, clusters, routes, listener: (n: string) => listeners.find((l) => l.name === n), vhosts: (n: string) => routes.find((r) => r.name === n)!.virtual_hosts as Obj[] };
}

describe('egress SNI check (transparent rung)', () => {
  it('a name is resolved on a never-connecting cluster first, then tunnelled into the SNI-checking listener; an IP literal keeps the direct path', () => {
    const r = resources(MIXED);
    const byName = (n: string) => r.vhosts(EGRESS.routes).find((v) => v.name === n)!;
    for (const name of ['dest:api.example.com', 'dest:*.pythonhosted.org']) {
      const routes = byName(name).routes as Obj[];
      expect(routes.map((x) => x.name ?? x.route?.cluster)).toEqual(['sni-tunnel', 'sni-resolve', EGRESS.dfpCluster]);
      expect(routes[0]!.match).toEqual({ connect_matcher: {}, filter_state: [{ key: SNI.authorityKey, string_match: { safe_regex: { regex: '.+' } } }] });
      expect(routes[0]!.route.cluster).toBe(SNI.tunnelCluster);
      expect(routes[1]!.route.cluster).toBe(SNI.resolveCluster);
      // absolute-form http:// is not a tunnel: unchanged
      expect(routes[2]!.match).toEqual({ prefix: '/' });
    }
    const ip = byName('dest:203.0.113.7').routes as Obj[];
    expect(ip[0]!.route.cluster).toBe(EGRESS.dfpCluster);
    expect(JSON.stringify(ip)).not.toContain('sni');
  });

  it('the resolve cluster can never open a connection (fails closed if the route is not chosen again)', () => {
    const resolve = resources(MIXED).clusters.find((c) => c.name === SNI.resolveCluster)!;
    expect(resolve.circuit_breakers.thresholds[0]).toMatchObject({ max_connections: 0, max_pending_requests: 0, max_requests: 0 });
    // same DNS cache as the forward proxy filter (Envoy requires identical settings)
    const dfp = resources(MIXED).clusters.find((c) => c.name === EGRESS.dfpCluster)!;
    expect(resolve.cluster_type.typed_config.dns_cache_config).toEqual(dfp.cluster_type.typed_config.dns_cache_config);
  });

  it('listener A: the hop filter runs after the forward proxy filter, before the router, and re-selects the route', () => {
    const hcm = resources(MIXED).listener(EGRESS.listener)!.filter_chains[0].filters[0].typed_config as Obj;
    const names = (hcm.http_filters as Obj[]).map((f) => f.name);
    // (first: the guest's own x-portcullis-* headers are dropped)
    expect(names).toEqual(['envoy.filters.http.header_mutation', 'envoy.filters.http.dynamic_forward_proxy', 'portcullis.sni_hop', 'envoy.filters.http.router']);
    const hop = (hcm.http_filters as Obj[])[2]!.typed_config;
    expect(hop.clear_route_cache).toBe(true);
    expect(hop.on_request_headers.map((v: Obj) => [v.object_key, v.shared_with_upstream, v.format_string.text_format_source.inline_string])).toEqual([
      [SNI.authorityKey, 'ONCE', '%REQ(:authority)%'],
      // A's own stream id of the tunnel, so B's verdict is joined to A's access log entry
      [SNI.tunnelStreamKey, 'ONCE', '%STREAM_ID%'],
    ]);
  });

  it('listener B: TLS inspector, RBAC (SNI is the authority), then a TCP proxy that connects only on data, through the forward proxy cluster', () => {
    const b = resources(MIXED).listener(SNI.listener)!;
    expect(b.internal_listener).toEqual({});
    expect(b.listener_filters.map((f: Obj) => f.name)).toEqual(['envoy.filters.listener.tls_inspector']);
    expect(b.continue_on_listener_filters_timeout).toBe(false);
    expect(b.filter_chains).toHaveLength(1);
    const [host, rbac, tcp] = b.filter_chains[0].filters as Obj[];
    // the forward proxy connects to the recorded authority, never to the SNI
    expect(host!.typed_config.on_new_connection[0]).toMatchObject({ object_key: SNI.dynamicHostKey, format_string: { text_format_source: { inline_string: `%FILTER_STATE(${SNI.authorityKey}:PLAIN)%` } } });
    expect(rbac!.name).toBe('envoy.filters.network.rbac');
    expect(rbac!.typed_config.rules.action).toBe('ALLOW');
    expect(rbac!.typed_config.rules.policies[SNI.policy].condition).toEqual(sniIsAuthorityCondition());
    expect(tcp!.name).toBe('envoy.filters.network.tcp_proxy');
    expect(tcp!.typed_config).toMatchObject({ cluster: EGRESS.dfpCluster, upstream_connect_mode: 'ON_DOWNSTREAM_DATA' });
    // every tunnel B handles is logged to the control plane, with the authority, the session and A's stream id
    expect(b.access_log[0].typed_config.common_config).toMatchObject({ log_name: SNI.logName, filter_state_objects_to_log: [SNI.authorityKey, SNI.sessionKey, SNI.tunnelStreamKey] });
  });

  it('the CEL condition: lower-cased SNI + ":" (or ".:") is a prefix of the lower-cased authority', () => {
    const text = JSON.stringify(sniIsAuthorityCondition());
    for (const s of ['"function":"_||_"', '"function":"startsWith"', '"function":"lowerAscii"', '"function":"string"', '"name":"filter_state"', `"string_value":"${SNI.authorityKey}"`, '"field":"requested_server_name"', '"string_value":":"', '"string_value":".:"']) {
      expect(text).toContain(s);
    }
    // deterministic (goldens), and every node has its own id
    expect(sniIsAuthorityCondition()).toEqual(sniIsAuthorityCondition());
    const ids = [...text.matchAll(/"id":"(\d+)"/g)].map((m) => m[1]);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('not on the storage lane, not without names at the transparent rung, not at deny-all', () => {
    const r = resources(MIXED);
    expect(JSON.stringify(r.vhosts('storage-routes'))).not.toContain('sni');
    const ipOnly = resources(ir(`  rung: transparent
  allow:
    - { host: 203.0.113.7, ports: [443] }
`));
    expect(ipOnly.listener(SNI.listener)).toBeUndefined();
    expect(ipOnly.clusters.map((c) => c.name)).not.toContain(SNI.tunnelCluster);
    const denyAll = resources(ir(`  rung: deny-all
  allow:
    - { host: api.example.com, ports: [443] }
`));
    expect(denyAll.listener(SNI.listener)).toBeUndefined();
  });

  it('the snapshot is consistent and passes pre-push validation', () => {
    const r = resources(MIXED);
    expect(() => buildSnapshot(r.t.input, { staticClusters: r.t.staticClusters })).not.toThrow();
  });
});

describe('access-log receiver: refusals of the SNI-checking listener', () => {
  const stringValue = (s: string) => ({ type_url: 'type.googleapis.com/google.protobuf.StringValue', value: Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(s)]), Buffer.from(s)]) });
  const entry = (common: Obj): TCPAccessLogEntry__Output => ({ common_properties: common, connection_properties: null }) as unknown as TCPAccessLogEntry__Output;

  it('RBAC termination details → sni_mismatch; an allowed tunnel → nothing', () => {
    expect(sniRefusal(entry({ connection_termination_details: 'rbac_access_denied_matched_policy[none]' }))).toBe('sni_mismatch');
    expect(sniRefusal(entry({ connection_termination_details: '', upstream_remote_address: { socket_address: { address: '203.0.113.7', port_value: 443 } }, upstream_cluster: 'egress_dfp' }))).toBeNull();
    expect(sniRefusal(entry({ connection_termination_details: 'rbac_access_denied_matched_policy[none]', intermediate_log_entry: true }))).toBeNull();
  });

  it('reads StringAccessor filter state objects', () => {
    expect(filterStateString(stringValue('api.example.com:443'))).toBe('api.example.com:443');
    expect(filterStateString({ type_url: 'type.googleapis.com/google.protobuf.Struct', value: Buffer.from([1]) })).toBeNull();
    expect(filterStateString(undefined)).toBeNull();
  });
});
