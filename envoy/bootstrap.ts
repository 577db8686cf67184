import net from 'node:net';
import { EnvoyHarnessError } from '../common/errors.js';
import { BOOTSTRAP_EXT, EXT } from './api/type-urls.js';

/**
 * Envoy's v3 Bootstrap, built as proto3 JSON (snake_case field names, enums as strings, durations as
 * "1.5s"). Pure: options in, object out. Envoy itself is the judge of the result
 * (test/e2e/bootstrap-validate.test.ts runs `envoy --mode validate` on every golden case).
 */

/** Name of the static cluster that carries the ADS stream to our control plane. */
export const XDS_CLUSTER_NAME = 'portcullis_xds';
export const DEFAULT_NODE_CLUSTER = 'portcullis';
export const DEFAULT_MAX_DOWNSTREAM_CONNECTIONS = 10_000;
/** Reconnect backoff of the ADS stream. Envoy's own default (0.5 s doubling to 30 s) is slow for a local control plane. */
export const DEFAULT_XDS_RETRY = { baseMs: 250, maxMs: 5_000 } as const;

/** Where the control plane's ADS server listens. */
export type XdsAddress =
  | { host?: string; port: number }
  | { socketPath: string };

export interface BootstrapOptions {
  /** `node.id`: unique per Envoy; the control plane keys its snapshots by it. */
  nodeId: string;
  /** `node.cluster`, default `portcullis`. */
  nodeCluster?: string;
  /** `node.metadata` (a google.protobuf.Struct as JSON). */
  nodeMetadata?: Record<string, unknown>;
  /** The ADS server: an IP literal (default 127.0.0.1) and port, or a unix socket path. */
  xds: XdsAddress;
  /** State-of-the-world (`GRPC`) or incremental (`DELTA_GRPC`) ADS. Default `sotw`. */
  ads?: 'sotw' | 'delta';
  /** Reconnect backoff of the ADS stream, default 250 ms doubling up to 5 s. */
  xdsRetry?: { baseMs: number; maxMs: number };
  /**
   * `initial_fetch_timeout` of CDS and LDS. Unset = Envoy's default (15 s each; Envoy reports
   * PRE_INITIALIZING, then INITIALIZING, until CDS and then LDS arrive or time out). 0 = wait forever.
   */
  initialFetchTimeoutMs?: number;
  /** Admin port on 127.0.0.1; 0 (default) = ephemeral. The admin is never bound elsewhere. */
  adminPort?: number;
  /** Static clusters added after `portcullis_xds` (ext_authz, ALS, SDS, …), as proto3 JSON. */
  extraClusters?: readonly Record<string, unknown>[];
  /** Overload manager `global_downstream_max_connections`. Default 10000. */
  maxDownstreamConnections?: number;
  /** Adds the fixed-heap monitor: shrink the heap at 95 %, stop accepting requests at 98 %. */
  maxHeapBytes?: number;
  /**
   * DNS servers Envoy resolves with (c-ares), e.g. `["198.51.100.53:53"]`, `["[2001:db8::53]:53"]`, or
   * a bare IP (port 53). Unset = the system resolver.
   */
  dnsResolvers?: readonly string[];
  /** Values for the static runtime layer. */
  runtime?: Record<string, unknown>;
}

/** The bootstrap as proto3 JSON. Typed loosely: Envoy validates it. */
export interface EnvoyBootstrap {
  node: { id: string; cluster: string; metadata?: Record<string, unknown> };
  dynamic_resources: Record<string, unknown>;
  static_resources: { clusters: Record<string, unknown>[]; [k: string]: unknown };
  admin: Record<string, unknown>;
  [k: string]: unknown;
}

const MS_MAX = 315_576_000_000_000; // proto Duration upper bound, in ms

export function buildBootstrap(opts: BootstrapOptions): EnvoyBootstrap {
  if (typeof opts.nodeId !== 'string' || opts.nodeId.length === 0) usage('nodeId must be a non-empty string');
  const nodeCluster = opts.nodeCluster ?? DEFAULT_NODE_CLUSTER;
  if (nodeCluster.length === 0) usage('nodeCluster must not be empty');
  const ads = opts.ads ?? 'sotw';
  if (ads !== 'sotw' && ads !== 'delta') usage(`ads must be 'sotw' or 'delta', got ${String(ads)}`);
  const adminPort = opts.adminPort ?? 0;
  checkPort(adminPort, 'adminPort', true);
  const maxConns = opts.maxDownstreamConnections ?? DEFAULT_MAX_DOWNSTREAM_CONNECTIONS;
  if (!Number.isSafeInteger(maxConns) || maxConns <= 0) {
    usage(`maxDownstreamConnections must be a positive integer, got ${maxConns}`);
  }
  const retry = opts.xdsRetry ?? DEFAULT_XDS_RETRY;
  checkMs(retry.baseMs, 'xdsRetry.baseMs', 1);
  checkMs(retry.maxMs, 'xdsRetry.maxMs', retry.baseMs);

  const node: EnvoyBootstrap['node'] = { id: opts.nodeId, cluster: nodeCluster };
  if (opts.nodeMetadata !== undefined) node.metadata = opts.nodeMetadata;

  const adsSource = (): Record<string, unknown> => {
    const src: Record<string, unknown> = { ads: {}, resource_api_version: 'V3' };
    if (opts.initialFetchTimeoutMs !== undefined) {
      checkMs(opts.initialFetchTimeoutMs, 'initialFetchTimeoutMs', 0);
      src.initial_fetch_timeout = duration(opts.initialFetchTimeoutMs);
    }
    return src;
  };

  const extra = opts.extraClusters ?? [];
  const names = new Set<string>([XDS_CLUSTER_NAME]);
  for (const c of extra) {
    const name = c.name;
    if (typeof name !== 'string' || name.length === 0) usage('every extra cluster needs a name');
    if (names.has(name)) usage(`duplicate static cluster name "${name}"`);
    names.add(name);
  }

  const bootstrap: EnvoyBootstrap = {
    node,
    dynamic_resources: {
      ads_config: {
        api_type: ads === 'delta' ? 'DELTA_GRPC' : 'GRPC',
        transport_api_version: 'V3',
        grpc_services: [
          {
            envoy_grpc: {
              cluster_name: XDS_CLUSTER_NAME,
              retry_policy: {
                retry_back_off: { base_interval: duration(retry.baseMs), max_interval: duration(retry.maxMs) },
              },
            },
          },
        ],
        set_node_on_first_message_only: true,
      },
      cds_config: adsSource(),
      lds_config: adsSource(),
    },
    static_resources: {
      clusters: [xdsCluster(opts.xds), ...extra.map((c) => structuredClone(c))],
    },
    admin: {
      address: { socket_address: { address: '127.0.0.1', port_value: adminPort } },
      // The admin answers tests and operators even when the downstream connection limit is reached.
      ignore_global_conn_limit: true,
    },
    bootstrap_extensions: [
      { name: 'envoy.bootstrap.internal_listener', typed_config: { '@type': EXT.internalListenerBootstrap } },
    ],
    layered_runtime: {
      layers: [
        { name: 'static', static_layer: structuredClone(opts.runtime ?? {}) },
        { name: 'admin', admin_layer: {} },
      ],
    },
    overload_manager: overloadManager(maxConns, opts.maxHeapBytes),
  };

  if (opts.dnsResolvers !== undefined) {
    if (opts.dnsResolvers.length === 0) usage('dnsResolvers, when given, must list at least one server');
    bootstrap.typed_dns_resolver_config = {
      name: 'envoy.network.dns_resolver.cares',
      typed_config: {
        '@type': EXT.caresResolver,
        resolvers: opts.dnsResolvers.map((r) => ({ socket_address: parseHostPort(r, 53, 'dnsResolvers') })),
        use_resolvers_as_fallback: false,
        dns_resolver_options: { use_tcp_for_dns_lookups: false, no_default_search_domain: true },
      },
    };
  }
  return bootstrap;
}

function xdsCluster(addr: XdsAddress): Record<string, unknown> {
  let address: Record<string, unknown>;
  if ('socketPath' in addr) {
    if (typeof addr.socketPath !== 'string' || addr.socketPath.length === 0) usage('xds.socketPath must not be empty');
    address = { pipe: { path: addr.socketPath } };
  } else {
    const host = addr.host ?? '127.0.0.1';
    if (net.isIP(host) === 0) usage(`xds.host must be an IP literal (a STATIC cluster cannot resolve names), got "${host}"`);
    checkPort(addr.port, 'xds.port', false);
    address = { socket_address: { address: host, port_value: addr.port } };
  }
  // ADS is gRPC: without HTTP/2 on this cluster the stream never comes up (connected_state stays 0).
  return grpcStaticCluster(XDS_CLUSTER_NAME, address);
}

/** A static cluster for the control plane's gRPC services (ADS, ext_authz, ALS): HTTP/2. */
export function grpcStaticCluster(
  name: string,
  address: { host: string; port: number } | { socketPath: string } | Record<string, unknown>,
): Record<string, unknown> {
  const addr =
    'socketPath' in address
      ? { pipe: { path: address.socketPath } }
      : 'host' in address && 'port' in address
        ? { socket_address: { address: address.host, port_value: address.port } }
        : address;
  return {
    name,
    type: 'STATIC',
    connect_timeout: '1s',
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': EXT.httpProtocolOptions,
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
    load_assignment: { cluster_name: name, endpoints: [{ lb_endpoints: [{ endpoint: { address: addr } }] }] },
  };
}

function overloadManager(maxConns: number, maxHeapBytes: number | undefined): Record<string, unknown> {
  const monitors: Record<string, unknown>[] = [
    {
      name: 'envoy.resource_monitors.global_downstream_max_connections',
      typed_config: {
        '@type': BOOTSTRAP_EXT.downstreamConnectionsMonitor,
        // int64 in proto3 JSON is a string
        max_active_downstream_connections: String(maxConns),
      },
    },
  ];
  const om: Record<string, unknown> = { resource_monitors: monitors };
  if (maxHeapBytes !== undefined) {
    if (!Number.isSafeInteger(maxHeapBytes) || maxHeapBytes <= 0) {
      usage(`maxHeapBytes must be a positive integer, got ${maxHeapBytes}`);
    }
    const heap = 'envoy.resource_monitors.fixed_heap';
    monitors.push({
      name: heap,
      typed_config: { '@type': BOOTSTRAP_EXT.fixedHeapMonitor, max_heap_size_bytes: String(maxHeapBytes) },
    });
    om.refresh_interval = '0.25s';
    om.actions = [
      { name: 'envoy.overload_actions.shrink_heap', triggers: [{ name: heap, threshold: { value: 0.95 } }] },
      { name: 'envoy.overload_actions.stop_accepting_requests', triggers: [{ name: heap, threshold: { value: 0.98 } }] },
    ];
  }
  return om;
}

/** `host:port`, `[v6]:port`, or a bare IP (default port). Hosts must be IP literals. */
export function parseHostPort(s: string, defaultPort: number, what: string): { address: string; port_value: number } {
  let host: string;
  let port = defaultPort;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (v6) {
    host = v6[1]!;
    if (v6[2] !== undefined) port = Number(v6[2]);
  } else if (net.isIP(s) !== 0) {
    host = s;
  } else {
    const m = /^([^:]+):(\d+)$/.exec(s);
    if (!m) usage(`${what}: "${s}" is not ip, ip:port or [ipv6]:port`);
    host = m[1]!;
    port = Number(m[2]);
  }
  if (net.isIP(host) === 0) usage(`${what}: "${host}" is not an IP literal`);
  checkPort(port, what, false);
  return { address: host, port_value: port };
}

function checkPort(port: number, what: string, allowZero: boolean): void {
  if (!Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65_535) {
    usage(`${what} must be an integer port in ${allowZero ? 0 : 1}..65535, got ${port}`);
  }
}

function checkMs(ms: number, what: string, min: number): void {
  if (!Number.isInteger(ms) || ms < min || ms > MS_MAX) usage(`${what} must be an integer number of ms ≥ ${min}, got ${ms}`);
}

/** Milliseconds as a proto3 JSON Duration ("0.25s", "15s"). */
export function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  const rest = ms % 1000;
  return rest === 0 ? `${s}s` : `${s}.${String(rest).padStart(3, '0').replace(/0+$/, '')}s`;
}

function usage(message: string): never {
  throw new EnvoyHarnessError('usage', `bootstrap: ${message}`);
}
