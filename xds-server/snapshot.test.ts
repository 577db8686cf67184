import { describe, expect, it } from 'vitest';
import { buildSnapshot, SnapshotInconsistentError } from './snapshot.js';
import { edsCluster, httpListener, loadAssignment, routeConfig, tlsListener, tlsSecret } from '../test/harness/sample-resources.js';
import { XDS } from '../envoy/api/type-urls.js';
import { ResourceInvalidError } from '../common/errors.js';

const CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n';

function full() {
  return {
    [XDS.listener]: [httpListener('http', 10000, 'main'), tlsListener('https', 10001, 'main', 'cert')],
    [XDS.route]: [routeConfig('main', [{ name: 'all', domains: ['*'], cluster: 'up' }])],
    [XDS.cluster]: [edsCluster('up')],
    [XDS.endpoint]: [loadAssignment('up', '127.0.0.1', 8080)],
    [XDS.secret]: [tlsSecret('cert', CERT, KEY)],
  };
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof SnapshotInconsistentError) return e.problems.map((p) => `${p.resource} ${p.rule} ${p.path}`);
    throw e;
  }
  return [];
}

describe('buildSnapshot', () => {
  it('builds a consistent snapshot whose version is a content hash', () => {
    const a = buildSnapshot(full());
    const b = buildSnapshot(full());
    expect(a.version).toBe(b.version);
    expect(a.version).toMatch(/^v-[0-9a-f]{12}$/);
    const changed = full();
    changed[XDS.endpoint] = [loadAssignment('up', '127.0.0.1', 8081)];
    expect(buildSnapshot(changed).version).not.toBe(a.version);
    expect([...a.resources.get(XDS.listener)!.keys()]).toEqual(['http', 'https']);
    expect(buildSnapshot(full(), { version: 'v7' }).version).toBe('v7');
  });

  it('refuses a listener whose RDS route is missing', () => {
    const s = full();
    s[XDS.route] = [];
    expect(problemsOf(() => buildSnapshot(s))).toEqual([
      'http reference.route filter_chains[0].filters[0].typed_config.rds.route_config_name',
      'https reference.route filter_chains[0].filters[0].typed_config.rds.route_config_name',
    ]);
  });

  it('refuses a route to a missing cluster, an EDS cluster without endpoints, a missing secret', () => {
    const s = full();
    s[XDS.route] = [routeConfig('main', [{ name: 'all', domains: ['*'], cluster: 'nope' }])];
    s[XDS.endpoint] = [];
    s[XDS.secret] = [];
    expect(problemsOf(() => buildSnapshot(s)).sort()).toEqual([
      'https reference.secret filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name',
      'main reference.cluster virtual_hosts[0].routes[0].route.cluster',
      'up reference.endpoint eds_cluster_config',
    ]);
  });

  it('accepts references to declared static clusters and external secrets', () => {
    const s = full();
    s[XDS.route] = [routeConfig('main', [{ name: 'all', domains: ['*'], cluster: 'portcullis_authz' }])];
    s[XDS.secret] = [];
    expect(() => buildSnapshot(s, { staticClusters: ['portcullis_authz'], externalSecrets: ['cert'] })).not.toThrow();
  });

  it('refuses duplicate names and invalid resources, reporting every problem', () => {
    const s = full();
    s[XDS.cluster] = [edsCluster('up'), edsCluster('up')];
    const l = httpListener('bad', 10002, 'main') as { filter_chains: Array<{ filters: Array<{ typed_config: Record<string, unknown> }> }> };
    l.filter_chains[0]!.filters[0]!.typed_config.stat_prefix = '';
    l.filter_chains[0]!.filters[0]!.typed_config.stat_prefx = 'x';
    s[XDS.listener] = [...s[XDS.listener], l];
    try {
      buildSnapshot(s);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ResourceInvalidError);
      const rules = (e as ResourceInvalidError).issues.map((i) => `${i.resource}:${i.rule}`).sort();
      expect(rules).toEqual(['bad:string.min_len = 1', 'bad:unknown field', 'up:unique']);
    }
  });
});
