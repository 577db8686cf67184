import type { Ir, IrDestination } from '../../policy/ir.js';
import { BUMP, bumpVirtualHost, tunnelFilterState, type BumpOptions } from './bump.js';
import { SESSION_CHECK, sessionCheckFilters, sessionJwtConfig, sessionReplyMappers, sessionRequirement, sessionRouteTableConfig, type SessionVerifier } from './session-check.js';
import type { SessionDenialEntry } from '../sessions.js';
import { PortcullisError } from '../../common/errors.js';
import { EXT } from '../../envoy/api/type-urls.js';
import { parseCidr } from '../../policy/ip.js';
import { sniConnectRoutes, sniHopFilter, sniResources } from './sni.js';
import {
  ADS_SOURCE,
  authorityDomains,
  authorityRegex,
  bothMatches,
  denyRoute,
  routerFilter,
  resolvedIpDeniedReply,
  grpcAccessLog,
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
 *    denied addresses never gets a connection, reason `resolved_ip_denied`;
 *  - on the egress lane, a CONNECT to a *name* at the transparent rung is tunnelled through an
 *    internal listener that refuses the tunnel unless its TLS ClientHello names that host as SNI
 *    (`sni_mismatch`, sni.ts); IP literals and the storage lane keep the direct path;
 *  - a tunnel to a bump / external-sds destination (and with `sessionsRequired`, to any destination)
 *    must present a valid, unrevoked session token, checked by Envoy itself (session-check.ts).
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
  /** static cluster of the control plane's gRPC server: access logs (ALS) go there when set */
  accessLogCluster?: string;
  /** the bump / external-sds rungs (TLS termination, leaves over SDS, credential injection) */
  bump?: BumpOptions;
  /**
   * Every tunnel must present a valid session (on transparent destinations too), so a revoked or
   * tripped session is refused at its next connection at every rung. Needs `bump`.
   */
  sessionsRequired?: boolean;
  /**
   * Only connections from these source ranges (CIDR) are served; any other source matches no filter
   * chain and is closed. For a listener bound on 0.0.0.0 so sandbox networks reach it: the sandbox
   * address pool (and loopback) only, never the LAN.
   */
  sourcePrefixRanges?: readonly string[];
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

export interface ProxyDestination {
  host: string;
  kind: 'exact' | 'wildcard' | 'ip';
  ports: readonly number[];
  rung: IrDestination['rung'];
}

interface ProxyLane {
  listener: string;
  routes: string;
  cluster: string;
  dnsCache: string;
  statPrefix: string;
  /** CONNECT only (the storage lane), or CONNECT and absolute-form http:// (egress) */
  connectOnly: boolean;
  /**
   * TLS tunnels to a name must carry that name as SNI (sni.ts): CONNECTs to names go through the
   * SNI-checking internal listener. Unset = the direct path (the storage lane).
   */
  sniCheck?: boolean;
}

/** An explicit forward proxy: listener + route table + dynamic forward proxy cluster. */
/**
 * Runtime state of the session check (supplied by the control plane): the signer's keys, needed
 * whenever a tunnel needs a session, and the revoked sessions.
 */
export interface SessionState {
  verifier?: SessionVerifier;
  denials?: readonly SessionDenialEntry[];
}

export function forwardProxyLane(lane: ProxyLane, ir: Ir, dests: readonly ProxyDestination[], o: EgressOptions, session: SessionState = {}) {
  const cache = dnsCacheConfig(lane.dnsCache, ir.denySet, o.dnsResolvers, o.dnsRefreshSeconds);
  const withSessions = !!o.bump && (!!o.sessionsRequired || dests.some((d) => d.rung === 'bump' || d.rung === 'external-sds'));
  const verifier = session.verifier;
  if (withSessions && !verifier) {
    throw new PortcullisError('resource_invalid', `${lane.listener}: tunnels need a session, but the session signer's keys were not supplied`);
  }
  const withSni = !!lane.sniCheck && dests.some((d) => d.rung === 'transparent' && d.kind !== 'ip');
  const listener = {
    name: lane.listener,
    address: { socket_address: { address: o.listen.address, port_value: o.listen.port } },
    per_connection_buffer_limit_bytes: 1_048_576,
    filter_chains: [
      {
        ...(o.sourcePrefixRanges?.length ? { filter_chain_match: { source_prefix_ranges: o.sourcePrefixRanges.map(cidrRange) } } : {}),
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': EXT.hcm,
              stat_prefix: lane.statPrefix,
              codec_type: 'AUTO',
              rds: { route_config_name: lane.routes, config_source: ADS_SOURCE },
              upgrade_configs: [{ upgrade_type: 'CONNECT' }],
              // absolute-form requests are parsed on both lanes, so the route table can answer them
              // with a reason (the storage lane's routes refuse everything but CONNECT)
              http_protocol_options: { allow_absolute_url: true },
              strip_trailing_host_dot: true,
              normalize_path: true,
              merge_slashes: true,
              path_with_escaped_slashes_action: 'REJECT_REQUEST',
              request_headers_timeout: '10s',
              stream_idle_timeout: '300s',
              common_http_protocol_options: { idle_timeout: '300s', headers_with_underscores_action: 'REJECT_REQUEST' },
              use_remote_address: true,
              ...(o.accessLogCluster
                ? { access_log: [grpcAccessLog(lane.listener, o.accessLogCluster)], access_log_options: { access_log_flush_interval: '1s' } }
                : {}),
              http_filters: [
                // the session, expiry, token and authority headers are ours (set by the session check,
                // recorded for the tunnel, access-logged as the session): whatever the guest sent under
                // those names goes first
                stripInternalHeaders(),
                // the session check runs where a virtual host (or the route table's default) asks for it
                ...(withSessions ? [...sessionCheckFilters(), tunnelFilterState()] : []),
                {
                  name: 'envoy.filters.http.dynamic_forward_proxy',
                  typed_config: { '@type': EXT.httpDfp, dns_cache_config: cache },
                },
                ...(withSni ? [sniHopFilter()] : []),
                routerFilter(),
              ],
              local_reply_config: withSessions ? { mappers: [...sessionReplyMappers(), ...resolvedIpDeniedReply().mappers] } : resolvedIpDeniedReply(),
            },
          },
        ],
      },
    ],
  };

  const vhosts = proxyVirtualHosts(dests, { ...lane, sniCheck: withSni }, o);
  // every virtual host says whether it needs a session; the route table's default is that it does
  // (closed), and carries the revoked sessions' DENY policies
  if (withSessions) for (const vh of vhosts) vh.typed_per_filter_config ??= sessionRequirement(false);
  const routes = { name: lane.routes, ...(withSessions ? { typed_per_filter_config: sessionRouteTableConfig(session.denials ?? []) } : {}), virtual_hosts: vhosts };

  const cluster = {
    name: lane.cluster,
    connect_timeout: '5s',
    lb_policy: 'CLUSTER_PROVIDED',
    cluster_type: {
      name: 'envoy.clusters.dynamic_forward_proxy',
      typed_config: { '@type': EXT.dfpCluster, dns_cache_config: cache },
    },
    circuit_breakers: { thresholds: [{ max_connections: 4096, max_pending_requests: 4096, max_requests: 4096 }] },
  };

  const sni = withSni ? sniResources(ir.denySet, lane.dnsCache, lane.cluster, o) : { listeners: [], clusters: [] };
  return {
    listeners: [listener, ...sni.listeners],
    routes: [routes],
    clusters: [cluster, ...sni.clusters],
    extensions: withSessions ? [sessionJwtConfig(verifier!)] : [],
  };
}

/** Drops the headers that carry Portcullis' own session and authority, as a guest sent them. */
function stripInternalHeaders(): Record<string, unknown> {
  return {
    name: 'envoy.filters.http.header_mutation',
    typed_config: {
      '@type': EXT.headerMutation,
      mutations: {
        request_mutations: [BUMP.sessionHeader, BUMP.authorityHeader, SESSION_CHECK.expHeader, SESSION_CHECK.tokenHeader].map((remove) => ({ remove })),
      },
    },
  };
}

export function egressResources(ir: Ir, o: EgressOptions, session: SessionState = {}) {
  if (ir.egress.defaultRung === 'deny-all') {
    // Deny-all: the listener answers everything with `rung_deny_all`; no forward proxy at all.
    const lane = forwardProxyLane(EGRESS_LANE, ir, [], o, session);
    const routes = lane.routes[0]!;
    routes.virtual_hosts = [
      {
        name: 'deny-all',
        domains: ['*'],
        ...('typed_per_filter_config' in routes ? { typed_per_filter_config: sessionRequirement(false) } : {}),
        routes: bothMatches().map((m) => denyRoute(m, 'rung_deny_all')),
      },
    ];
    return lane;
  }
  return forwardProxyLane(EGRESS_LANE, ir, ir.egress.destinations, o, session);
}

const EGRESS_LANE: ProxyLane = {
  listener: EGRESS.listener,
  routes: EGRESS.routes,
  cluster: EGRESS.dfpCluster,
  dnsCache: EGRESS.dnsCache,
  statPrefix: 'egress',
  connectOnly: false,
  sniCheck: true,
};

function vhostName(d: ProxyDestination): string {
  return `dest:${d.host}`;
}

export function proxyVirtualHosts(dests: readonly ProxyDestination[], lane: ProxyLane, o: EgressOptions): Array<Record<string, unknown>> {
  const vhosts: Array<Record<string, unknown>> = [];
  const tunnelTimeout = `${o.maxTunnelSeconds ?? 3600}s`;
  const denyMatches = bothMatches();
  // One virtual host per destination host; several destinations may share a host (different ports).
  const byHost = new Map<string, ProxyDestination[]>();
  for (const d of dests) byHost.set(d.host, [...(byHost.get(d.host) ?? []), d]);
  for (const [host, ds] of byHost) {
    const allowPorts = ds.filter((d) => d.rung === 'transparent').flatMap((d) => d.ports);
    const denyPorts = ds.filter((d) => d.rung === 'deny-all').flatMap((d) => d.ports);
    const kind = ds[0]!.kind;
    if (allowPorts.length) {
      // a TLS tunnel to a name must present that name as SNI (sni.ts); IP literals keep the direct path
      const routes: Array<Record<string, unknown>> =
        lane.sniCheck && kind !== 'ip'
          ? sniConnectRoutes(tunnelTimeout)
          : [
              {
                match: { connect_matcher: {} },
                route: {
                  cluster: lane.cluster,
                  upgrade_configs: [{ upgrade_type: 'CONNECT', connect_config: {} }],
                  timeout: '0s',
                  max_stream_duration: { max_stream_duration: tunnelTimeout },
                },
              },
            ];
      // an absolute-form request goes upstream as it is: without the headers we set (the session, its
      // token's expiry; the access log takes the session from the filter state)
      if (!lane.connectOnly) {
        routes.push({
          match: { prefix: '/' },
          route: { cluster: lane.cluster, timeout: '60s' },
          request_headers_to_remove: [BUMP.sessionHeader, SESSION_CHECK.expHeader, BUMP.authorityHeader],
        });
      }
      else routes.push(denyRoute({ prefix: '' }, 'destination_not_allowed'));
      vhosts.push({
        name: vhostName(ds[0]!),
        domains: authorityDomains(host, kind, allowPorts),
        ...(o.sessionsRequired && o.bump && !lane.connectOnly ? { typed_per_filter_config: sessionRequirement(true) } : {}),
        routes,
      });
    }
    if (denyPorts.length) {
      vhosts.push({
        name: `${vhostName(ds[0]!)}:deny`,
        domains: authorityDomains(host, kind, denyPorts),
        routes: denyMatches.map((m) => denyRoute(m, 'rung_deny_all')),
      });
    }
    // bump / external-sds destinations go through the TLS-terminating listener (bump.ts); without
    // the bump options (no minter, no session check) they cannot be served, and are refused
    const bumped = ds.filter((d) => d.rung === 'bump' || d.rung === 'external-sds');
    if (bumped.length) {
      const domains = authorityDomains(host, kind, bumped.flatMap((d) => d.ports)).filter((dm) => dm !== host);
      vhosts.push(
        o.bump
          ? bumpVirtualHost(host, domains, o)
          : { name: `${vhostName(ds[0]!)}:bump-unavailable`, domains, routes: denyMatches.map((m) => denyRoute(m, 'session_credential_missing')) },
      );
    }
  }
  // Catch-all: known hosts on another port, then everything else.
  const portRoutes: Array<Record<string, unknown>> = [];
  for (const host of byHost.keys()) {
    const header = { name: ':authority', string_match: { safe_regex: { regex: authorityRegex(host) } } };
    for (const m of denyMatches) portRoutes.push(denyRoute({ ...m, headers: [header] }, 'port_not_allowed'));
  }
  vhosts.push({
    name: 'not-allowed',
    domains: ['*'],
    routes: [...portRoutes, ...denyMatches.map((m) => denyRoute(m, 'destination_not_allowed'))],
  });
  return vhosts;
}
