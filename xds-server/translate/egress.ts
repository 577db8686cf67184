import type { Ir, IrDestination } from '../../policy/ir.js';
import { EXT } from '../../envoy/api/type-urls.js';
import { parseCidr } from '../../policy/ip.js';
import {
  ADS_SOURCE,
  DENY_HEADER,
  authorityDomains,
  authorityRegex,
  bothMatches,
  denyRoute,
  routerFilter,
} from './common.js';

/**
 * Guest egress: one listener, an explicit forward proxy (HTTP CONNECT and absolute-form requests).
 *
 * Decision (mirrors policy/explain.ts, so `explain` and Envoy agree):
 *  - default rung `deny-all` → every request 403 `rung_deny_all`;
 *  - one virtual host per allowed destination, domains `host:port` (exact before wildcard, longer
 *    suffix first — Envoy's own virtual-host precedence is exactly the IR's specificity order);
 *  - destinations at rung `deny-all` → 403 `rung_deny_all`;
 *  - the catch-all virtual host: a known host on another port → 403 `port_not_allowed`, anything
 *    else → 403 `destination_not_allowed`;
 *  - connections go through the dynamic forward proxy, whose DNS cache drops every resolved address
 *    inside the deny-set (`resolved_address_filter`, Envoy ≥ 1.39): a name that resolves only to
 *    denied addresses never gets a connection, reason `resolved_ip_denied`.
 */

export const EGRESS = {
  listener: 'egress',
  routes: 'egress-routes',
  dfpCluster: 'egress_dfp',
  dnsCache: 'egress_dns',
} as const;

export interface EgressOptions {
  /** where the sandboxes reach the egress listener */
  listen: { address: string; port: number };
  /** DNS servers Envoy's forward proxy resolves with (`ip:port`); unset = system resolver */
  dnsResolvers?: readonly string[];
  /** upper bound on a CONNECT tunnel's life, so a revoked session's tunnel is cut (seconds) */
  maxTunnelSeconds?: number;
  /** how often cached names are re-resolved (seconds, default 30); every answer is filtered again */
  dnsRefreshSeconds?: number;
}

export const DNS_CACHE_CONFIG_TYPE = 'type.googleapis.com/envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig';

/** The DNS cache shared by the forward-proxy filter and cluster (they must carry identical config). */
export function dnsCacheConfig(name: string, denySet: readonly string[], resolvers?: readonly string[], refreshSeconds = 30): Record<string, unknown> {
  return {
    name,
    dns_lookup_family: 'ALL',
    host_ttl: `${Math.max(60, refreshSeconds * 2)}s`,
    max_hosts: 4096,
    dns_refresh_rate: `${refreshSeconds}s`,
    ...(resolvers?.length
      ? {
          typed_dns_resolver_config: {
            name: 'envoy.network.dns_resolver.cares',
            typed_config: {
              '@type': EXT.caresResolver,
              resolvers: resolvers.map(toSocketAddress),
              use_resolvers_as_fallback: false,
              dns_resolver_options: { no_default_search_domain: true },
            },
          },
        }
      : {}),
    // Envoy ≥ 1.39 (envoy/api/overlay.ts): resolved addresses inside these ranges are dropped before
    // a connection is made.
    resolved_address_filter: { ranges: denySet.map(cidrRange) },
  };
}

function cidrRange(cidr: string): { address_prefix: string; prefix_len: number } {
  const c = parseCidr(cidr);
  if (!c) throw new Error(`invalid deny-set CIDR ${cidr}`);
  const slash = cidr.lastIndexOf('/');
  return { address_prefix: cidr.slice(0, slash), prefix_len: Number(cidr.slice(slash + 1)) };
}

function toSocketAddress(hostPort: string): Record<string, unknown> {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(hostPort);
  const address = m ? m[1]! : hostPort;
  const port = m ? Number(m[2]) : 53;
  return { socket_address: { address, port_value: port } };
}

export function egressResources(ir: Ir, o: EgressOptions) {
  const cache = dnsCacheConfig(EGRESS.dnsCache, ir.denySet, o.dnsResolvers, o.dnsRefreshSeconds);
  const listener = {
    name: EGRESS.listener,
    address: { socket_address: { address: o.listen.address, port_value: o.listen.port } },
    per_connection_buffer_limit_bytes: 1_048_576,
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': EXT.hcm,
              stat_prefix: 'egress',
              codec_type: 'AUTO',
              rds: { route_config_name: EGRESS.routes, config_source: ADS_SOURCE },
              upgrade_configs: [{ upgrade_type: 'CONNECT' }],
              http_protocol_options: { allow_absolute_url: true },
              strip_trailing_host_dot: true,
              normalize_path: true,
              merge_slashes: true,
              path_with_escaped_slashes_action: 'REJECT_REQUEST',
              request_headers_timeout: '10s',
              stream_idle_timeout: '300s',
              common_http_protocol_options: { idle_timeout: '300s', headers_with_underscores_action: 'REJECT_REQUEST' },
              use_remote_address: true,
              http_filters: [
                {
                  name: 'envoy.filters.http.dynamic_forward_proxy',
                  typed_config: { '@type': EXT.httpDfp, dns_cache_config: cache },
                },
                routerFilter(),
              ],
              local_reply_config: {
                mappers: [
                  {
                    // every name resolved only to denied addresses: the DNS cache dropped them
                    filter: { response_flag_filter: { flags: ['DF'] } },
                    status_code: 403,
                    headers_to_add: [{ header: { key: DENY_HEADER, value: 'resolved_ip_denied' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
                    body: { inline_string: 'resolved_ip_denied\n' },
                  },
                ],
              },
            },
          },
        ],
      },
    ],
  };

  const routes = { name: EGRESS.routes, virtual_hosts: egressVirtualHosts(ir, o) };

  const cluster = {
    name: EGRESS.dfpCluster,
    connect_timeout: '5s',
    lb_policy: 'CLUSTER_PROVIDED',
    cluster_type: {
      name: 'envoy.clusters.dynamic_forward_proxy',
      typed_config: { '@type': EXT.dfpCluster, dns_cache_config: cache },
    },
    circuit_breakers: { thresholds: [{ max_connections: 4096, max_pending_requests: 4096, max_requests: 4096 }] },
  };

  return { listeners: [listener], routes: [routes], clusters: [cluster] };
}

function vhostName(d: IrDestination): string {
  return `dest:${d.host}`;
}

export function egressVirtualHosts(ir: Ir, o: EgressOptions): Array<Record<string, unknown>> {
  if (ir.egress.defaultRung === 'deny-all') {
    return [{ name: 'deny-all', domains: ['*'], routes: bothMatches().map((m) => denyRoute(m, 'rung_deny_all')) }];
  }
  const vhosts: Array<Record<string, unknown>> = [];
  const tunnelTimeout = `${o.maxTunnelSeconds ?? 3600}s`;
  // One virtual host per destination host; several IR destinations may share a host (different ports).
  const byHost = new Map<string, IrDestination[]>();
  for (const d of ir.egress.destinations) byHost.set(d.host, [...(byHost.get(d.host) ?? []), d]);
  for (const [host, dests] of byHost) {
    const allowPorts = dests.filter((d) => d.rung === 'transparent').flatMap((d) => d.ports);
    const denyPorts = dests.filter((d) => d.rung === 'deny-all').flatMap((d) => d.ports);
    const kind = dests[0]!.kind;
    if (allowPorts.length) {
      vhosts.push({
        name: vhostName(dests[0]!),
        domains: authorityDomains(host, kind, allowPorts),
        routes: [
          {
            match: { connect_matcher: {} },
            route: {
              cluster: EGRESS.dfpCluster,
              upgrade_configs: [{ upgrade_type: 'CONNECT', connect_config: {} }],
              timeout: '0s',
              max_stream_duration: { max_stream_duration: tunnelTimeout },
            },
          },
          { match: { prefix: '/' }, route: { cluster: EGRESS.dfpCluster, timeout: '60s' } },
        ],
      });
    }
    if (denyPorts.length) {
      vhosts.push({
        name: `${vhostName(dests[0]!)}:deny`,
        domains: authorityDomains(host, kind, denyPorts),
        routes: bothMatches().map((m) => denyRoute(m, 'rung_deny_all')),
      });
    }
    // bump / external-sds destinations are served by the TLS-terminating path
    const unsupported = dests.filter((d) => d.rung === 'bump' || d.rung === 'external-sds');
    if (unsupported.length) {
      vhosts.push({
        name: `${vhostName(dests[0]!)}:pending`,
        domains: authorityDomains(host, kind, unsupported.flatMap((d) => d.ports)),
        routes: bothMatches().map((m) => denyRoute(m, 'rung_deny_all')),
      });
    }
  }
  // Catch-all: known hosts on another port, then everything else.
  const portRoutes: Array<Record<string, unknown>> = [];
  for (const host of byHost.keys()) {
    const header = { name: ':authority', string_match: { safe_regex: { regex: authorityRegex(host) } } };
    for (const m of bothMatches({ headers: [header] })) portRoutes.push(denyRoute(m, 'port_not_allowed'));
  }
  vhosts.push({
    name: 'not-allowed',
    domains: ['*'],
    routes: [...portRoutes, ...bothMatches().map((m) => denyRoute(m, 'destination_not_allowed'))],
  });
  return vhosts;
}
