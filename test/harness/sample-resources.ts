import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EXT, XDS, type XdsTypeUrl } from '../../envoy/api/type-urls.js';

/**
 * Small Envoy resources (proto3 JSON) for exercising the ADS server against a real Envoy: an HTTP
 * listener whose routes come over RDS, an EDS cluster, a TLS listener whose certificate comes over
 * SDS. Every reference between them goes through ADS, so one snapshot exercises all five types.
 */

const ads = { ads: {}, resource_api_version: 'V3' };

export function httpListener(name: string, port: number, routeName: string): Record<string, unknown> {
  return {
    name,
    address: { socket_address: { address: '127.0.0.1', port_value: port } },
    filter_chains: [{ filters: [hcmFilter(name, { rds: { route_config_name: routeName, config_source: ads } })] }],
  };
}

export function tlsListener(name: string, port: number, routeName: string, secretName: string): Record<string, unknown> {
  return {
    name,
    address: { socket_address: { address: '127.0.0.1', port_value: port } },
    filter_chains: [
      {
        filters: [hcmFilter(name, { rds: { route_config_name: routeName, config_source: ads } })],
        transport_socket: {
          name: 'envoy.transport_sockets.tls',
          typed_config: {
            '@type': EXT.downstreamTls,
            common_tls_context: { tls_certificate_sds_secret_configs: [{ name: secretName, sds_config: ads }] },
          },
        },
      },
    ],
  };
}

function hcmFilter(statPrefix: string, routeSpecifier: Record<string, unknown>): Record<string, unknown> {
  return {
    name: 'envoy.filters.network.http_connection_manager',
    typed_config: {
      '@type': EXT.hcm,
      stat_prefix: statPrefix,
      ...routeSpecifier,
      http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } }],
    },
  };
}

export interface VhostSpec {
  name: string;
  domains: string[];
  cluster?: string;
  /** answer directly instead of routing */
  direct?: { status: number; body: string };
}

export function routeConfig(name: string, vhosts: VhostSpec[]): Record<string, unknown> {
  return {
    name,
    virtual_hosts: vhosts.map((v) => ({
      name: v.name,
      domains: v.domains,
      routes: [
        v.direct
          ? { match: { prefix: '/' }, direct_response: { status: v.direct.status, body: { inline_string: v.direct.body } } }
          : { match: { prefix: '/' }, route: { cluster: v.cluster } },
      ],
    })),
  };
}

/** A RouteConfiguration with `n` routes, for size benchmarks. */
export function bigRouteConfig(name: string, n: number, cluster: string): Record<string, unknown> {
  const routes = Array.from({ length: n }, (_, i) => ({
    name: `r${i}`,
    match: { path: `/svc/${i}` },
    route: { cluster, timeout: '5s' },
    request_headers_to_add: [{ header: { key: 'x-route', value: String(i) }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
  }));
  return { name, virtual_hosts: [{ name: 'all', domains: ['*'], routes }] };
}

export function edsCluster(name: string): Record<string, unknown> {
  return {
    name,
    type: 'EDS',
    connect_timeout: '1s',
    eds_cluster_config: { eds_config: ads },
  };
}

export function loadAssignment(clusterName: string, host: string, port: number): Record<string, unknown> {
  return {
    cluster_name: clusterName,
    endpoints: [{ locality: { region: 'local' }, load_balancing_weight: 1, lb_endpoints: [{ endpoint: { address: { socket_address: { address: host, port_value: port } } } }] }],
  };
}

export function tlsSecret(name: string, certPem: string, keyPem: string): Record<string, unknown> {
  return { name, tls_certificate: { certificate_chain: { inline_string: certPem }, private_key: { inline_string: keyPem } } };
}

/** A self-signed P-256 certificate for `localhost`, made by the system's openssl. */
export function selfSignedCert(cn = 'localhost'): { cert: string; key: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-cert-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`,
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
    ], { stdio: 'pipe' });
    return { cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'), key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface SampleOptions {
  httpPort: number;
  tlsPort: number;
  upstreamPort: number;
  cert: { cert: string; key: string };
  /** body of the direct response on vhost `hello` (lets a test see which version serves) */
  greeting?: string;
}

/** The five-type sample: listeners `http` and `https`, routes `main`, cluster + endpoints `upstream`, secret `server-cert`. */
export function sampleSnapshotInput(o: SampleOptions): Partial<Record<XdsTypeUrl, unknown[]>> {
  return {
    [XDS.listener]: [httpListener('http', o.httpPort, 'main'), tlsListener('https', o.tlsPort, 'main', 'server-cert')],
    [XDS.route]: [
      routeConfig('main', [
        { name: 'hello', domains: ['hello.test', 'hello.test:*'], direct: { status: 200, body: o.greeting ?? 'hello v1' } },
        { name: 'upstream', domains: ['*'], cluster: 'upstream' },
      ]),
    ],
    [XDS.cluster]: [edsCluster('upstream')],
    [XDS.endpoint]: [loadAssignment('upstream', '127.0.0.1', o.upstreamPort)],
    [XDS.secret]: [tlsSecret('server-cert', o.cert.cert, o.cert.key)],
  };
}
