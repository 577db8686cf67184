import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { EnvoyHarnessError } from '../common/errors.js';
import { BOOTSTRAP_EXT, EXT } from './api/type-urls.js';
import { buildBootstrap, duration, parseHostPort, XDS_CLUSTER_NAME, type BootstrapOptions } from './bootstrap.js';
import { expectGolden, goldenCases, staleGoldens } from '../test/harness/golden.js';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'testdata');

/** Golden inputs are `bootstrap-*.in.yaml` files holding BootstrapOptions. */
function bootstrapGoldenInputs(): { name: string; options: BootstrapOptions }[] {
  return goldenCases(dir)
    .filter((n) => n.startsWith('bootstrap-'))
    .map((name) => ({
      name,
      options: YAML.parse(fs.readFileSync(path.join(dir, `${name}.in.yaml`), 'utf8')) as BootstrapOptions,
    }));
}

describe('buildBootstrap golden files', () => {
  const cases = bootstrapGoldenInputs();
  it('has cases', () => expect(cases.length).toBeGreaterThanOrEqual(3));
  for (const c of cases) {
    it(c.name, () => expectGolden(dir, c.name, buildBootstrap(c.options)));
  }
  it('no stale outputs', () => expect(staleGoldens(dir).filter((n) => n.startsWith('bootstrap-'))).toEqual([]));
});

describe('buildBootstrap', () => {
  const base: BootstrapOptions = { nodeId: 'n1', xds: { port: 18000 } };

  it('speaks HTTP/2 to the xDS cluster', () => {
    const b = buildBootstrap(base);
    const xds = b.static_resources.clusters[0]!;
    expect(xds.name).toBe(XDS_CLUSTER_NAME);
    const po = (xds.typed_extension_protocol_options as Record<string, Record<string, unknown>>)[
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions'
    ]!;
    expect(po['@type']).toBe(EXT.httpProtocolOptions);
    expect(po.explicit_http_config).toEqual({ http2_protocol_options: {} });
  });

  it('binds the admin to 127.0.0.1 only', () => {
    expect(buildBootstrap(base).admin.address).toEqual({ socket_address: { address: '127.0.0.1', port_value: 0 } });
    expect(buildBootstrap({ ...base, adminPort: 9901 }).admin.address).toEqual({
      socket_address: { address: '127.0.0.1', port_value: 9901 },
    });
  });

  it('selects SotW or delta ADS', () => {
    const api = (b: ReturnType<typeof buildBootstrap>) => (b.dynamic_resources.ads_config as { api_type: string }).api_type;
    expect(api(buildBootstrap(base))).toBe('GRPC');
    expect(api(buildBootstrap({ ...base, ads: 'delta' }))).toBe('DELTA_GRPC');
  });

  it('limits downstream connections through the overload manager', () => {
    const om = buildBootstrap({ ...base, maxDownstreamConnections: 7 }).overload_manager as {
      resource_monitors: { name: string; typed_config: Record<string, unknown> }[];
    };
    expect(om.resource_monitors).toEqual([
      {
        name: 'envoy.resource_monitors.global_downstream_max_connections',
        typed_config: { '@type': BOOTSTRAP_EXT.downstreamConnectionsMonitor, max_active_downstream_connections: '7' },
      },
    ]);
  });

  it('copies extra clusters instead of aliasing them', () => {
    const extra = { name: 'als', type: 'STATIC', meta: { a: 1 } };
    const b = buildBootstrap({ ...base, extraClusters: [extra] });
    (b.static_resources.clusters[1] as { meta: { a: number } }).meta.a = 2;
    expect(extra.meta.a).toBe(1);
  });

  it.each<[string, Partial<BootstrapOptions>]>([
    ['empty node id', { nodeId: '' }],
    ['a host name for the xDS cluster', { xds: { host: 'localhost', port: 18000 } }],
    ['port 0 for the xDS cluster', { xds: { port: 0 } }],
    ['an out-of-range admin port', { adminPort: 70_000 }],
    ['a zero connection limit', { maxDownstreamConnections: 0 }],
    ['a duplicate cluster name', { extraClusters: [{ name: XDS_CLUSTER_NAME }] }],
    ['an unnamed extra cluster', { extraClusters: [{ type: 'STATIC' }] }],
    ['an empty resolver list', { dnsResolvers: [] }],
    ['a resolver host name', { dnsResolvers: ['dns.example:53'] }],
    ['a fractional fetch timeout', { initialFetchTimeoutMs: 1.5 }],
    ['a retry max below its base', { xdsRetry: { baseMs: 500, maxMs: 100 } }],
    ['an unknown ADS flavour', { ads: 'rest' as 'sotw' }],
  ])('rejects %s', (_what, patch) => {
    expect(() => buildBootstrap({ ...base, ...patch })).toThrow(EnvoyHarnessError);
  });
});

describe('helpers', () => {
  it.each([
    [0, '0s'],
    [250, '0.25s'],
    [1000, '1s'],
    [1500, '1.5s'],
    [15_005, '15.005s'],
  ])('duration(%i) = %s', (ms, s) => expect(duration(ms)).toBe(s));

  it('parses resolver addresses', () => {
    expect(parseHostPort('198.51.100.53:53', 53, 'r')).toEqual({ address: '198.51.100.53', port_value: 53 });
    expect(parseHostPort('198.51.100.53', 53, 'r')).toEqual({ address: '198.51.100.53', port_value: 53 });
    expect(parseHostPort('[2001:db8::1]:5353', 53, 'r')).toEqual({ address: '2001:db8::1', port_value: 5353 });
    expect(parseHostPort('2001:db8::1', 53, 'r')).toEqual({ address: '2001:db8::1', port_value: 53 });
    expect(() => parseHostPort('198.51.100.53:0', 53, 'r')).toThrow(EnvoyHarnessError);
  });
});
