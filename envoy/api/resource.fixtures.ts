import { EXT, XDS } from './type-urls.js';

/**
 * Valid resources in proto3 JSON (snake_case), shared by the validator's unit tests, its benchmark
 * and the real-Envoy cross-check. Each returns a fresh object so a test can mutate it.
 */

export function listenerWithHcm(): Record<string, any> {
  return {
    name: 'ingress',
    address: { socket_address: { address: '127.0.0.1', port_value: 10000 } },
    per_connection_buffer_limit_bytes: 32768,
    listener_filters: [{ name: 'envoy.filters.listener.tls_inspector', typed_config: { '@type': EXT.tlsInspector } }],
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': EXT.hcm,
              stat_prefix: 'ingress_http',
              codec_type: 'AUTO',
              stream_idle_timeout: '300s',
              request_headers_timeout: '10s',
              use_remote_address: true,
              xff_num_trusted_hops: 0,
              normalize_path: true,
              merge_slashes: true,
              path_with_escaped_slashes_action: 'REJECT_REQUEST',
              common_http_protocol_options: { headers_with_underscores_action: 'REJECT_REQUEST', idle_timeout: '3600s' },
              max_request_headers_kb: 60,
              upgrade_configs: [{ upgrade_type: 'CONNECT' }],
              route_config: {
                name: 'local_route',
                virtual_hosts: [
                  {
                    name: 'backend',
                    domains: ['*'],
                    routes: [
                      {
                        match: { prefix: '/' },
                        route: { cluster: 'backend', timeout: '0s', idle_timeout: '0.25s' },
                      },
                    ],
                  },
                ],
              },
              access_log: [
                {
                  name: 'envoy.access_loggers.stdout',
                  typed_config: { '@type': EXT.stdoutAccessLog, log_format: { json_format: { path: '%REQ(:PATH)%', code: '%RESPONSE_CODE%' } } },
                },
              ],
              http_filters: [
                {
                  name: 'envoy.filters.http.buffer',
                  typed_config: { '@type': EXT.buffer, max_request_bytes: 1048576 },
                },
                { name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } },
              ],
            },
          },
        ],
      },
    ],
  };
}

export function staticCluster(): Record<string, any> {
  return {
    name: 'backend',
    type: 'STATIC',
    connect_timeout: '0.25s',
    lb_policy: 'ROUND_ROBIN',
    load_assignment: {
      cluster_name: 'backend',
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 8443 } } } }] }],
    },
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': EXT.httpProtocolOptions,
        explicit_http_config: { http2_protocol_options: {} },
        common_http_protocol_options: { max_requests_per_connection: 1000 },
      },
    },
    transport_socket: {
      name: 'envoy.transport_sockets.tls',
      typed_config: {
        '@type': EXT.upstreamTls,
        sni: 'backend.example.com',
        common_tls_context: {
          alpn_protocols: ['h2'],
          validation_context: {
            trusted_ca: { filename: '/etc/ssl/certs/ca-certificates.crt' },
            match_typed_subject_alt_names: [{ san_type: 'DNS', matcher: { exact: 'backend.example.com' } }],
          },
        },
      },
    },
  };
}

export function routeConfiguration(): Record<string, any> {
  return {
    name: 'egress_routes',
    virtual_hosts: [
      {
        name: 'api',
        domains: ['api.example.com:443'],
        request_headers_to_add: [{ header: { key: 'x-portcullis-session', value: 's-1' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
        request_headers_to_remove: ['x-internal'],
        routes: [
          {
            name: 'connect',
            match: { connect_matcher: {} },
            route: { cluster: 'dfp', upgrade_configs: [{ upgrade_type: 'CONNECT', connect_config: {} }], timeout: '0s' },
          },
          {
            match: { prefix: '/v1/', headers: [{ name: ':method', string_match: { exact: 'POST' } }] },
            route: { cluster: 'backend', timeout: '15s', retry_policy: { retry_on: '5xx', num_retries: 2, per_try_timeout: '1.5s' } },
            typed_per_filter_config: {
              'envoy.filters.http.buffer': { '@type': EXT.bufferPerRoute, disabled: true },
            },
          },
        ],
      },
      {
        name: 'deny',
        domains: ['*'],
        routes: [
          {
            match: { prefix: '/' },
            direct_response: { status: 403, body: { inline_string: 'denied' } },
            response_headers_to_add: [{ header: { key: 'x-deny-reason', value: 'destination_not_allowed' } }],
          },
        ],
      },
    ],
  };
}

export function clusterLoadAssignment(): Record<string, any> {
  return {
    cluster_name: 'backend',
    endpoints: [
      {
        locality: { region: 'local' },
        lb_endpoints: [
          { endpoint: { address: { socket_address: { address: '10.0.0.1', port_value: 8080 } } }, load_balancing_weight: 1 },
          { endpoint: { address: { socket_address: { address: '10.0.0.2', port_value: 8080 } } }, health_status: 'HEALTHY' },
        ],
      },
    ],
    policy: { overprovisioning_factor: 140 },
  };
}

export function tlsSecret(): Record<string, any> {
  return {
    name: 'leaf:api.example.com',
    tls_certificate: {
      certificate_chain: { inline_string: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' },
      private_key: { inline_string: '-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n' },
    },
  };
}

export function genericSecret(): Record<string, any> {
  return { name: 'cred:github', generic_secret: { secret: { inline_string: 'token-abc' } } };
}

export const VALID_EXAMPLES: readonly { typeUrl: string; make: () => Record<string, any> }[] = [
  { typeUrl: XDS.listener, make: listenerWithHcm },
  { typeUrl: XDS.cluster, make: staticCluster },
  { typeUrl: XDS.route, make: routeConfiguration },
  { typeUrl: XDS.endpoint, make: clusterLoadAssignment },
  { typeUrl: XDS.secret, make: tlsSecret },
  { typeUrl: XDS.secret, make: genericSecret },
];

/** A RouteConfiguration with `n` routes spread over virtual hosts of 100 routes each. */
export function largeRouteConfiguration(n: number): Record<string, any> {
  const vhosts: Record<string, any>[] = [];
  for (let i = 0; i < n; i++) {
    const v = Math.floor(i / 100);
    if (!vhosts[v]) vhosts[v] = { name: `vh${v}`, domains: [`host${v}.example.com`, `host${v}.example.com:443`], routes: [] };
    vhosts[v].routes.push({
      name: `r${i}`,
      match: { prefix: `/p${i}/`, headers: [{ name: 'x-tenant', string_match: { exact: `t${i % 7}` } }] },
      route: { cluster: `c${i % 50}`, timeout: '15s', prefix_rewrite: '/' },
      request_headers_to_add: [{ header: { key: 'x-route', value: `r${i}` }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
    });
  }
  return { name: 'big', virtual_hosts: vhosts };
}

/** The bootstrap message, for checking fixtures with `envoy --mode validate` (not an xDS type). */
export const BOOTSTRAP_TYPE_URL = 'type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap';

/**
 * A static bootstrap holding every fixture: the listener (its HCM serving `routeConfiguration()`
 * inline), the TLS cluster, a cluster built from `clusterLoadAssignment()`, and both secrets.
 */
export function bootstrapWithFixtures(): Record<string, any> {
  const listener = listenerWithHcm();
  const hcm = listener.filter_chains[0].filters[0].typed_config;
  hcm.route_config = routeConfiguration();
  const dfp: Record<string, any> = { ...staticCluster(), name: 'dfp', load_assignment: { ...clusterLoadAssignment(), cluster_name: 'dfp' } };
  delete dfp.transport_socket;
  return {
    node: { id: 'validator-check', cluster: 'portcullis' },
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: 0 } } },
    static_resources: {
      listeners: [listener],
      clusters: [staticCluster(), dfp],
      secrets: [tlsSecret(), genericSecret()],
    },
  };
}
