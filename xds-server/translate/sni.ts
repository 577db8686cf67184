import { EXT } from '../../envoy/api/type-urls.js';
import { dnsCacheConfig, type EgressOptions } from './egress.js';
import { CEL_STRING_FEATURES, celBuilder } from './cel.js';
import { SESSION_FILTER_STATE } from './common.js';

/**
 * The SNI check of the `transparent` rung: a TLS tunnel's ClientHello must name the host the guest
 * asked the proxy for (CONNECT authority), or the tunnel is refused (`sni_mismatch`) before any
 * byte — or any TCP connection — reaches the upstream. Enforced by Envoy alone; the control plane
 * is not on the path.
 *
 * Listener A (the egress listener), for a CONNECT to an allowed *name* (exact or wildcard):
 *  1. the route first picks a dynamic forward proxy cluster that can never connect
 *     (`egress_sni_resolve`: circuit breakers at 0), so A's DFP filter resolves the authority
 *     through the shared DNS cache — the deny-set is applied exactly as before, and a name that
 *     resolves only to denied addresses is still answered `403 resolved_ip_denied`;
 *  2. a `set_filter_state` filter after it (reached only when the name resolved to an allowed
 *     address) records the CONNECT authority for the upstream internal connection, both as
 *     `portcullis.tunnel_authority` and as `envoy.upstream.dynamic_host`, then clears the route cache;
 *  3. with the authority recorded, the route now matches the tunnel route: the CONNECT is
 *     terminated (200) into the internal listener B. If step 2 ever did not happen, the request
 *     stays on the never-connecting cluster and fails (503): the check fails closed, never open.
 *
 * Internal listener B (`egress_sni`): `tls_inspector` reads the ClientHello; a network RBAC policy
 * with a CEL condition allows the connection only when the SNI, lower-cased, is the authority's
 * host (lower-cased, trailing dot ignored); the TCP proxy opens the upstream connection only on
 * downstream data (`upstream_connect_mode: ON_DOWNSTREAM_DATA`), i.e. after RBAC allowed it,
 * through A's dynamic forward proxy cluster to the authority's host (`envoy.upstream.dynamic_host`,
 * set in B from the recorded authority):
 * the entry A's lookup put in the shared DNS cache, whose addresses passed the deny-set filter; no
 * DNS lookup is made for a name the guest put in the SNI.
 *
 * Decisions (documented in README "Egress: transparent rung"):
 *  - a ClientHello without SNI to a name is refused (`sni_mismatch`): nothing binds such a
 *    handshake to the name that was allowed;
 *  - bytes that are not a TLS ClientHello inside a tunnel to a name (plain HTTP, SSH, …) are
 *    refused (`sni_mismatch`): the transparent rung passes TLS by name; plain HTTP goes through
 *    the proxy as absolute-form requests (`http://…`), which are unchanged;
 *  - a server-speaks-first protocol sends nothing: B gives up after `listener_filters_timeout`;
 *  - IP-literal authorities keep the direct path (no name to compare an SNI with).
 *
 * Every refusal is logged by B's listener access log (`egress_sni` lane of ALS); its RBAC
 * termination detail `rbac_access_denied_matched_policy[none]` is turned into a `network.denied`
 * event with reason `sni_mismatch` by xds-server/als.ts. B's entry carries A's stream id of the
 * tunnel, so the receiver drops A's own entry of a refused tunnel (its CONNECT was answered 200
 * before the ClientHello was read; no byte left the host) instead of recording it as egress.
 */

export const SNI = {
  listener: 'egress_sni',
  tunnelCluster: 'egress_sni_tunnel',
  resolveCluster: 'egress_sni_resolve',
  authorityKey: 'portcullis.tunnel_authority',
  /** the egress listener's stream id of the tunnel, so B's verdict is joined to A's access log entry */
  tunnelStreamKey: 'portcullis.tunnel_stream',
  sessionKey: SESSION_FILTER_STATE,
  /** A's route into B (its access log entries carry it as `route_name`) */
  tunnelRoute: 'sni-tunnel',
  /** Envoy's well-known key: the host a dynamic forward proxy cluster picks for a TCP connection */
  dynamicHostKey: 'envoy.upstream.dynamic_host',
  policy: 'sni-is-authority',
  logName: 'egress_sni',
} as const;

/** Largest ClientHello B buffers before the upstream connection exists. */
const MAX_CLIENT_HELLO = 65_536;

/** A's filter (after the DFP filter): hand the authority to B, then choose the route again. */
export function sniHopFilter(): Record<string, unknown> {
  return {
    name: 'portcullis.sni_hop',
    typed_config: {
      '@type': EXT.setFilterState,
      // the authority B compares the SNI with and connects to (only B reads it: on a bump tunnel it
      // is carried and ignored)
      on_request_headers: [
        {
          object_key: SNI.authorityKey,
          factory_key: 'envoy.string',
          format_string: { text_format_source: { inline_string: '%REQ(:authority)%' } },
          shared_with_upstream: 'ONCE',
          skip_if_empty: true,
        },
        {
          object_key: SNI.tunnelStreamKey,
          factory_key: 'envoy.string',
          format_string: { text_format_source: { inline_string: '%STREAM_ID%' } },
          shared_with_upstream: 'ONCE',
          skip_if_empty: true,
        },
      ],
      // the route is chosen again now that the authority is recorded (Envoy ≥ 1.40 field, overlay.ts)
      clear_route_cache: true,
    },
  };
}

/** A's CONNECT routes for a name at the transparent rung: tunnel into B once resolved, resolve first. */
export function sniConnectRoutes(tunnelTimeout: string): Array<Record<string, unknown>> {
  const connect = (cluster: string) => ({
    cluster,
    upgrade_configs: [{ upgrade_type: 'CONNECT', connect_config: {} }],
    timeout: '0s',
    max_stream_duration: { max_stream_duration: tunnelTimeout },
  });
  return [
    {
      name: SNI.tunnelRoute,
      match: { connect_matcher: {}, filter_state: [{ key: SNI.authorityKey, string_match: { safe_regex: { regex: '.+' } } }] },
      route: connect(SNI.tunnelCluster),
    },
    { name: 'sni-resolve', match: { connect_matcher: {} }, route: connect(SNI.resolveCluster) },
  ];
}

/**
 * `a.startsWith(s + ':') || a.startsWith(s + '.:')` where a = the CONNECT authority and s = the SNI,
 * both lower-cased. Authorities of names always carry a port (CONNECT); a missing authority is a CEL
 * error, which RBAC treats as no match (refused); an empty SNI never matches.
 */
export function sniIsAuthorityCondition(): Record<string, unknown> {
  const cel = celBuilder();
  const authority = () => cel.filterStateLower(SNI.authorityKey);
  const sni = () => cel.sniLower();
  const startsWith = (suffix: string) => cel.call('startsWith', [cel.concat(sni(), cel.str(suffix))], authority());
  return cel.or(startsWith(':'), startsWith('.:'));
}

/** B, its clusters, and A's never-connecting resolve cluster. `dfpCluster` is A's forward proxy cluster. */
export function sniResources(denySet: readonly string[], dnsCache: string, dfpCluster: string, o: EgressOptions) {
  const cache = dnsCacheConfig(dnsCache, denySet, o.dnsResolvers, o.dnsRefreshSeconds);
  const tcpLog = o.accessLogCluster
    ? [
        {
          name: 'envoy.access_loggers.tcp_grpc',
          typed_config: {
            '@type': EXT.tcpGrpcAccessLog,
            common_config: {
              log_name: SNI.logName,
              grpc_service: { envoy_grpc: { cluster_name: o.accessLogCluster } },
              transport_api_version: 'V3',
              buffer_flush_interval: '0.5s',
              buffer_size_bytes: 16384,
              filter_state_objects_to_log: [SNI.authorityKey, SNI.sessionKey, SNI.tunnelStreamKey],
            },
          },
        },
      ]
    : [];
  const listenerB = {
    name: SNI.listener,
    internal_listener: {},
    listener_filters: [{ name: 'envoy.filters.listener.tls_inspector', typed_config: { '@type': EXT.tlsInspector } }],
    listener_filters_timeout: '10s',
    continue_on_listener_filters_timeout: false,
    // one entry per tunnel, refused or not (the listener's own log also covers a tunnel that never
    // reached a filter chain)
    ...(tcpLog.length ? { access_log: tcpLog } : {}),
    filter_chains: [
      {
        name: SNI.policy,
        filters: [
          {
            // the host B's forward proxy connects to: the authority A resolved, never the SNI
            name: 'envoy.filters.network.set_filter_state',
            typed_config: {
              '@type': EXT.networkSetFilterState,
              on_new_connection: [
                {
                  object_key: SNI.dynamicHostKey,
                  factory_key: 'envoy.string',
                  format_string: { text_format_source: { inline_string: `%FILTER_STATE(${SNI.authorityKey}:PLAIN)%` } },
                  skip_if_empty: true,
                },
              ],
            },
          },
          {
            name: 'envoy.filters.network.rbac',
            typed_config: {
              '@type': EXT.networkRbac,
              stat_prefix: SNI.listener,
              rules: {
                action: 'ALLOW',
                policies: {
                  [SNI.policy]: {
                    permissions: [{ any: true }],
                    principals: [{ any: true }],
                    condition: sniIsAuthorityCondition(),
                    cel_config: CEL_STRING_FEATURES,
                  },
                },
              },
            },
          },
          {
            name: 'envoy.filters.network.tcp_proxy',
            typed_config: {
              '@type': EXT.tcpProxy,
              stat_prefix: SNI.listener,
              // A's forward proxy cluster, in TCP mode: the host is the authority A resolved and
              // checked (same DNS cache, same deny-set filter), never the SNI
              cluster: dfpCluster,
              // no upstream connection before the ClientHello passed RBAC
              upstream_connect_mode: 'ON_DOWNSTREAM_DATA',
              max_early_data_bytes: MAX_CLIENT_HELLO,
              idle_timeout: '300s',
            },
          },
        ],
      },
    ],
  };

  const tunnel = {
    name: SNI.tunnelCluster,
    connect_timeout: '2s',
    type: 'STATIC',
    load_assignment: {
      cluster_name: SNI.tunnelCluster,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { envoy_internal_address: { server_listener_name: SNI.listener } } } }] }],
    },
    transport_socket: {
      name: 'envoy.transport_sockets.internal_upstream',
      typed_config: {
        '@type': EXT.internalUpstream,
        transport_socket: { name: 'envoy.transport_sockets.raw_buffer', typed_config: { '@type': EXT.rawBuffer } },
      },
    },
  };

  // A's first route for a name: the DFP filter resolves through it; it never opens a connection
  const resolve = {
    name: SNI.resolveCluster,
    connect_timeout: '1s',
    lb_policy: 'CLUSTER_PROVIDED',
    cluster_type: { name: 'envoy.clusters.dynamic_forward_proxy', typed_config: { '@type': EXT.dfpCluster, dns_cache_config: cache } },
    circuit_breakers: { thresholds: [{ max_connections: 0, max_pending_requests: 0, max_requests: 0, max_retries: 0 }] },
  };

  return { listeners: [listenerB], clusters: [tunnel, resolve] };
}
