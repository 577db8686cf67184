import net from 'node:net';
import type { Ir } from '../../policy/ir.js';
import { EXT } from '../../envoy/api/type-urls.js';
import { duration } from '../../envoy/bootstrap.js';
import { EXPLANATIONS, jsonRpcErrorBody, type McpReason } from '../../mcp/errors.js';
import { CALLER_HEADER, MCP_PATH, ORIGIN_HEADER } from '../../mcp/headers.js';
import { DEFAULT_AUDIENCE, LOCAL_ISSUER } from '../../mcp/token.js';
import { INGRESS_EDGE_LOG_NAME, INGRESS_LOG_NAME, JWT_FILTER, LEASE_METADATA_KEY, MCP_AUTHZ_LANE, callerClaimOf } from '../authz.js';
import { ADS_SOURCE, DENY_HEADER, routerFilter, typedStruct } from './common.js';

/**
 * MCP ingress: the only way to the MCP gateway. One listener, one HCM, hardened as in
 * shared/ENVOY-NOTES.md. HTTP filters, in order:
 *
 * 1. `header_mutation` strips any client-sent copy of the caller and origin headers;
 * 2. `jwt_authn`: local mode validates tokens from `portcullis token issue` against the inline JWKS
 *    of the local key; oidc mode validates issuer + audiences against the IdP's remote JWKS. Every
 *    path requires a token except the RFC 9728 metadata document. On success the caller claim is
 *    copied into `x-portcullis-caller`: the one identity the rate limiter, ext_authz and the gateway
 *    all use (filter 1 removed any client-sent copy, so only jwt_authn can have set it). The token
 *    itself is not forwarded, and the payload is not put in the dynamic metadata: nothing reads it,
 *    and every ext_authz check and every access-log entry would carry it. Verified tokens are cached
 *    (JWT_CACHE_SIZE, LRU, tokens up to 4 KiB), so a caller's repeated requests skip the signature
 *    check; a hit re-checks `exp`/`nbf`, with Envoy's fixed 60 s skew instead of our 30 s, and a new
 *    JWKS (a new filter config) starts an empty cache. Failure → 401 with
 *    `WWW-Authenticate: Bearer resource_metadata="…/.well-known/oauth-protected-resource"`;
 * 3. `local_ratelimit`: one token bucket per caller (dynamic descriptor keyed by the caller header),
 *    `requestsPerMinute` sustained with a burst of ten seconds' worth, 429 `rate_limited`. It runs
 *    before the body is buffered and before ext_authz, so a caller over its rate costs Envoy a
 *    cached token lookup and a local reply, and the control plane nothing but a batched log entry;
 * 4. `buffer`: body cap `maxBodyBytes`, 413 `body_too_large` (off for GET/DELETE);
 * 5. `ext_authz` (gRPC, control plane, failure closed) with the body: closed schema + per-tool
 *    decision + the per-caller concurrency ceiling (xds-server/authz.ts);
 * 6. router → the gateway cluster, with the origin secret added.
 *
 * Streamable HTTP: route `timeout: 0s` (no response deadline: SSE), an idle timeout above the
 * SDK's 15 s keep-alive, and `max_stream_duration` bounding any stream.
 */

export const INGRESS = {
  listener: 'mcp_ingress',
  routes: 'mcp-ingress-routes',
  gatewayCluster: 'mcp_gateway',
  jwksCluster: 'mcp_jwks',
  provider: 'portcullis',
  rateLimitKey: 'mcp_caller',
} as const;

export const PROTECTED_RESOURCE_PATH = '/.well-known/oauth-protected-resource';
/**
 * The listener's body ceiling (the policy schema's maximum); the policy's own `maxBodyBytes` is set
 * per route. Everything a policy changes (limits, tool rules) is in RDS or ext_authz, so a policy
 * change never rebuilds the listener: rebuilding drains it and cuts in-flight tool calls and SSE
 * streams once the drain time ends.
 */
export const BODY_CEILING = 64 * 1024 * 1024;

export interface IngressOptions {
  /** the gateway: TCP on loopback or a unix socket */
  gateway: { address: string; port: number } | { socketPath: string };
  /** bootstrap static cluster (HTTP/2) of the control plane's gRPC server: ext_authz and ALS */
  authzCluster: string;
  /** local mode: the public JWKS of the local token key (mcp/token.ts localJwks) */
  localJwks?: { keys: readonly unknown[] };
  /** local mode audiences; default [portcullis-mcp] */
  localAudiences?: readonly string[];
  /** where clients reach the listener (RFC 9728 `resource`, WWW-Authenticate); default http://<listen> */
  publicUrl?: string;
  /** added as `x-portcullis-origin` to every forwarded request (the gateway's originSecret) */
  gatewayOriginSecret?: string;
  /** override `ir.mcp.listen` */
  listen?: { address: string; port: number };
  /** CA bundle for fetching an OIDC JWKS; default the system bundle */
  jwksCaFile?: string;
  /** bound on any request/stream on the MCP route; default 3600 s */
  maxStreamSeconds?: number;
  /** per-caller buckets kept by the rate limiter (LRU); default 10000 */
  maxTrackedCallers?: number;
  /** listener-wide ceiling on downstream connections (authenticated or not); default 4096 */
  maxConnections?: number;
}

/** verified tokens jwt_authn keeps (per worker) so a caller's next request skips the signature check */
export const JWT_CACHE_SIZE = 1024;

export const DEFAULT_SYSTEM_CA = '/etc/ssl/certs/ca-certificates.crt';

const header = (key: string, value: string) => ({ header: { key, value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' });
const methodIs = (m: string) => ({ name: ':method', string_match: { exact: m } });
const disabled = {
  'envoy.filters.http.ext_authz': { '@type': EXT.extAuthzPerRoute, disabled: true },
  'envoy.filters.http.buffer': { '@type': EXT.bufferPerRoute, disabled: true },
};

function listenOf(ir: Ir, o: IngressOptions): { address: string; port: number } {
  return o.listen ?? { address: ir.mcp.listen.host, port: ir.mcp.listen.port };
}

export function publicUrlOf(ir: Ir, o: IngressOptions): string {
  if (o.publicUrl) return o.publicUrl.replace(/\/+$/, '');
  const l = listenOf(ir, o);
  return `http://${l.address.includes(':') ? `[${l.address}]` : l.address}:${l.port}`;
}

/** The RFC 9728 protected-resource metadata Envoy serves. */
export function protectedResourceMetadata(ir: Ir, o: IngressOptions): Record<string, unknown> {
  const base = publicUrlOf(ir, o);
  return {
    resource: `${base}${MCP_PATH}`,
    ...(ir.mcp.auth.mode === 'oidc' ? { authorization_servers: [ir.mcp.auth.issuer] } : {}),
    bearer_methods_supported: ['header'],
    resource_name: 'Portcullis MCP gateway',
  };
}

function replyBody(reason: McpReason): Record<string, unknown> {
  return {
    text_format_source: { inline_string: jsonRpcErrorBody(null, { reason, message: EXPLANATIONS[reason] }).replace(/%/g, '%%') },
    content_type: 'application/json',
  };
}

function localReplies(ir: Ir, o: IngressOptions): Record<string, unknown> {
  const metadataUrl = `${publicUrlOf(ir, o)}${PROTECTED_RESOURCE_PATH}`;
  const status = (code: number) => ({ status_code_filter: { comparison: { op: 'EQ', value: { default_value: code, runtime_key: `mcp_ingress.reply_${code}` } } } });
  const flags = (...f: string[]) => ({ response_flag_filter: { flags: f } });
  const unauthorized = {
    headers_to_add: [header('www-authenticate', `Bearer realm="portcullis", resource_metadata="${metadataUrl}"`), header(DENY_HEADER, 'unauthorized')],
    body_format_override: replyBody('unauthorized'),
  };
  // The first matching mapper wins. ext_authz denials (flag UAEX) already carry their reason, header
  // and JSON-RPC body: they pass unchanged, so the mappers below only see Envoy's own replies.
  return {
    mappers: [
      { filter: { and_filter: { filters: [flags('UAEX'), { or_filter: { filters: [status(400), status(403), status(429), status(500)] } }] } }, headers_to_add: [] },
      // jwt_authn: missing, malformed, expired, bad signature (401) …
      { filter: status(401), ...unauthorized },
      // … and a wrong audience or issuer, which jwt_authn answers 403: the caller has no valid token
      { filter: status(403), status_code: 401, ...unauthorized },
      { filter: status(429), headers_to_add: [header(DENY_HEADER, 'rate_limited')], body_format_override: replyBody('rate_limited') },
      // the buffer filter (or ext_authz's own buffer) refusing an oversize body
      { filter: status(413), headers_to_add: [header(DENY_HEADER, 'body_too_large')], body_format_override: replyBody('body_too_large') },
      // ext_authz unreachable or failing (closed), or the gateway unreachable, reset or slow:
      // nothing about why
      {
        filter: { or_filter: { filters: [flags('UAEX', 'UF', 'UH', 'URX', 'UC', 'UT', 'UR', 'UO', 'NC'), status(502), status(503), status(504)] } },
        headers_to_add: [header(DENY_HEADER, 'unavailable')],
        body_format_override: replyBody('unavailable'),
      },
    ],
  };
}

function jwtProvider(ir: Ir, o: IngressOptions): Record<string, unknown> {
  const common = {
    from_headers: [{ name: 'authorization', value_prefix: 'Bearer ' }],
    forward: false,
    claim_to_headers: [{ header_name: CALLER_HEADER, claim_name: callerClaimOf(ir) }],
    require_expiration: true,
    clock_skew_seconds: 30,
    jwt_cache_config: { jwt_cache_size: JWT_CACHE_SIZE },
  };
  if (ir.mcp.auth.mode === 'local') {
    if (!o.localJwks || o.localJwks.keys.length === 0) throw new Error('ingress: local auth mode needs the local token JWKS (localJwks)');
    return {
      ...common,
      issuer: LOCAL_ISSUER,
      audiences: [...(o.localAudiences ?? [DEFAULT_AUDIENCE])],
      local_jwks: { inline_string: JSON.stringify(o.localJwks) },
      // local tokens live no longer than the policy's token TTL
      max_lifetime: `${ir.sessions.tokenTtlSeconds + 60}s`,
    };
  }
  return {
    ...common,
    issuer: ir.mcp.auth.issuer,
    audiences: [...ir.mcp.auth.audiences],
    remote_jwks: {
      http_uri: { uri: ir.mcp.auth.jwksUri, cluster: INGRESS.jwksCluster, timeout: '5s' },
      cache_duration: '600s',
      async_fetch: { fast_listener: false, failed_refetch_duration: '10s' },
      retry_policy: { num_retries: 3, retry_back_off: { base_interval: '0.5s', max_interval: '5s' } },
    },
  };
}

type Named = { name: string } & Record<string, unknown>;

function jwksCluster(ir: Ir, o: IngressOptions): Named | undefined {
  if (ir.mcp.auth.mode !== 'oidc') return undefined;
  const u = new URL(ir.mcp.auth.jwksUri);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const tls = u.protocol === 'https:';
  const port = u.port ? Number(u.port) : tls ? 443 : 80;
  const ip = net.isIP(host) !== 0;
  return {
    name: INGRESS.jwksCluster,
    type: ip ? 'STATIC' : 'LOGICAL_DNS',
    ...(ip ? {} : { dns_lookup_family: 'V4_PREFERRED' }),
    connect_timeout: '5s',
    load_assignment: {
      cluster_name: INGRESS.jwksCluster,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: host, port_value: port } } } }] }],
    },
    ...(tls
      ? {
          transport_socket: {
            name: 'envoy.transport_sockets.tls',
            typed_config: {
              '@type': EXT.upstreamTls,
              ...(ip ? {} : { sni: host }),
              common_tls_context: {
                validation_context: {
                  trusted_ca: { filename: o.jwksCaFile ?? DEFAULT_SYSTEM_CA },
                  match_typed_subject_alt_names: [{ san_type: ip ? 'IP_ADDRESS' : 'DNS', matcher: { exact: host } }],
                },
              },
            },
          },
        }
      : {}),
  };
}

function gatewayCluster(o: IngressOptions): Named {
  const address = 'socketPath' in o.gateway ? { pipe: { path: o.gateway.socketPath } } : { socket_address: { address: o.gateway.address, port_value: o.gateway.port } };
  return {
    name: INGRESS.gatewayCluster,
    type: 'STATIC',
    connect_timeout: '1s',
    load_assignment: { cluster_name: INGRESS.gatewayCluster, endpoints: [{ lb_endpoints: [{ endpoint: { address } }] }] },
    circuit_breakers: { thresholds: [{ max_connections: 1024, max_pending_requests: 1024, max_requests: 1024 }] },
    common_http_protocol_options: { idle_timeout: '60s' },
  };
}

/**
 * A caller's token bucket for `requestsPerMinute`: refilled steadily at exactly that rate (a fill
 * every ≥ 50 ms, Envoy's minimum), holding at most ten seconds' worth, so a caller cannot spend a
 * whole minute's budget in one burst against the shared gateway.
 */
export function callerBucket(rpm: number): { max_tokens: number; tokens_per_fill: number; fill_interval: string } {
  const perFill = Math.max(1, Math.ceil((rpm * 0.05) / 60));
  const fillMs = Math.max(50, Math.round((60_000 * perFill) / rpm));
  return { max_tokens: Math.max(perFill, Math.ceil(rpm / 6)), tokens_per_fill: perFill, fill_interval: duration(fillMs) };
}

export function ingressResources(ir: Ir, o: IngressOptions) {
  const l = listenOf(ir, o);
  const lim = ir.mcp.limits;
  const maxStream = `${o.maxStreamSeconds ?? 3600}s`;
  const rpm = lim.requestsPerMinute;

  const httpFilters = [
    {
      name: 'envoy.filters.http.header_mutation',
      typed_config: {
        '@type': EXT.headerMutation,
        mutations: { request_mutations: [{ remove: CALLER_HEADER }, { remove: ORIGIN_HEADER }] },
      },
    },
    {
      name: JWT_FILTER,
      typed_config: {
        '@type': EXT.jwtAuthn,
        providers: { [INGRESS.provider]: jwtProvider(ir, o) },
        rules: [
          // RFC 9728 discovery is public; every other path needs a valid token
          { match: { prefix: PROTECTED_RESOURCE_PATH } },
          { match: { prefix: '/' }, requires: { provider_name: INGRESS.provider } },
        ],
        strip_failure_response: false,
      },
    },
    {
      // configured per virtual host (RDS), below
      name: 'envoy.filters.http.local_ratelimit',
      typed_config: typedStruct(EXT.localRateLimit, { stat_prefix: 'mcp_ingress_callers' }),
    },
    {
      // the listener carries the schema's ceiling; the policy's limit is set per route (RDS)
      name: 'envoy.filters.http.buffer',
      typed_config: { '@type': EXT.buffer, max_request_bytes: BODY_CEILING },
    },
    {
      name: 'envoy.filters.http.ext_authz',
      typed_config: {
        '@type': EXT.extAuthz,
        grpc_service: { envoy_grpc: { cluster_name: o.authzCluster }, timeout: '2s' },
        transport_api_version: 'V3',
        failure_mode_allow: false,
        status_on_error: { code: 'ServiceUnavailable' },
        with_request_body: { max_request_bytes: BODY_CEILING, allow_partial_message: false, pack_as_bytes: true },
        // the bearer token never reaches the control plane; the caller header is the verified claim
        allowed_headers: { patterns: [{ exact: 'x-request-id' }, { exact: 'content-type' }, { exact: 'mcp-session-id' }, { exact: CALLER_HEADER }] },
        include_peer_certificate: false,
        stat_prefix: 'mcp_ingress',
      },
    },
    routerFilter(),
  ];
  (httpFilters.at(-1)!.typed_config as Record<string, unknown>).suppress_envoy_headers = true;

  const hcm = {
    '@type': EXT.hcm,
    stat_prefix: 'mcp_ingress',
    codec_type: 'AUTO',
    rds: { route_config_name: INGRESS.routes, config_source: ADS_SOURCE },
    use_remote_address: true,
    xff_num_trusted_hops: 0,
    normalize_path: true,
    merge_slashes: true,
    path_with_escaped_slashes_action: 'REJECT_REQUEST',
    request_headers_timeout: '10s',
    stream_idle_timeout: '300s',
    max_request_headers_kb: 32,
    server_header_transformation: 'OVERWRITE',
    server_name: 'portcullis',
    common_http_protocol_options: { idle_timeout: '300s', headers_with_underscores_action: 'REJECT_REQUEST', max_stream_duration: maxStream },
    http_protocol_options: { allow_absolute_url: false },
    http2_protocol_options: { max_concurrent_streams: 64, initial_stream_window_size: 1_048_576, initial_connection_window_size: 4_194_304 },
    access_log: [ingressAccessLog(o.authzCluster, true), ingressAccessLog(o.authzCluster, false)],
    http_filters: httpFilters,
    local_reply_config: localReplies(ir, o),
  };

  const listener = {
    name: INGRESS.listener,
    address: { socket_address: { address: l.address, port_value: l.port } },
    per_connection_buffer_limit_bytes: 1_048_576,
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.connection_limit',
            typed_config: { '@type': EXT.connectionLimit, stat_prefix: 'mcp_ingress', max_connections: o.maxConnections ?? 4096 },
          },
          { name: 'envoy.filters.network.http_connection_manager', typed_config: hcm },
        ],
      },
    ],
  };

  const metadata = JSON.stringify(protectedResourceMetadata(ir, o));
  const wellKnown = (p: string) => ({
    match: { path: p, headers: [methodIs('GET')] },
    direct_response: { status: 200, body: { inline_string: metadata } },
    response_headers_to_add: [header('content-type', 'application/json'), header('cache-control', 'max-age=300')],
    typed_per_filter_config: disabled,
  });
  const toGateway = (method: string, buffered: boolean) => ({
    match: { path: MCP_PATH, headers: [methodIs(method)] },
    route: {
      cluster: INGRESS.gatewayCluster,
      timeout: '0s',
      idle_timeout: '120s',
      max_stream_duration: { max_stream_duration: maxStream },
    },
    ...(o.gatewayOriginSecret ? { request_headers_to_add: [header(ORIGIN_HEADER, o.gatewayOriginSecret)] } : {}),
    typed_per_filter_config: {
      // the control plane's ext_authz service serves several listeners: this is the MCP decision
      'envoy.filters.http.ext_authz': {
        '@type': EXT.extAuthzPerRoute,
        check_settings: {
          context_extensions: { lane: MCP_AUTHZ_LANE },
          with_request_body: { max_request_bytes: lim.maxBodyBytes, allow_partial_message: false, pack_as_bytes: true },
        },
      },
      'envoy.filters.http.buffer': buffered ? { '@type': EXT.bufferPerRoute, buffer: { max_request_bytes: lim.maxBodyBytes } } : disabled['envoy.filters.http.buffer'],
    },
  });
  const deny = (match: Record<string, unknown>, status: number, reason: McpReason) => ({
    match,
    direct_response: { status, body: { inline_string: jsonRpcErrorBody(null, { reason, message: EXPLANATIONS[reason] }) } },
    response_headers_to_add: [header(DENY_HEADER, reason), header('content-type', 'application/json')],
    typed_per_filter_config: disabled,
  });

  const routes = {
    name: INGRESS.routes,
    validate_clusters: false,
    virtual_hosts: [
      {
        name: 'mcp',
        domains: ['*'],
        routes: [
          wellKnown(PROTECTED_RESOURCE_PATH),
          wellKnown(`${PROTECTED_RESOURCE_PATH}${MCP_PATH}`),
          toGateway('POST', true),
          toGateway('GET', false),
          toGateway('DELETE', false),
          { ...deny({ path: MCP_PATH }, 405, 'method_not_allowed'), response_headers_to_add: [header(DENY_HEADER, 'method_not_allowed'), header('content-type', 'application/json'), header('allow', 'GET, POST, DELETE')] },
          deny({ prefix: '/' }, 404, 'not_found'),
        ],
        response_headers_to_add: [header('x-content-type-options', 'nosniff')],
        typed_per_filter_config: {
          // Envoy ≥ 1.35: a descriptor entry without a value is a wildcard, one bucket per value
          // (max_dynamic_descriptors, LRU), and the config carries its own `rate_limits`. Newer than
          // our protos: sent as a TypedStruct. On the virtual host, so the buckets are shared by its
          // routes and a policy change is an RDS update (no listener drain).
          'envoy.filters.http.local_ratelimit': typedStruct(EXT.localRateLimit, {
            stat_prefix: 'mcp_ingress_callers',
            filter_enabled: { default_value: { numerator: 100, denominator: 'HUNDRED' }, runtime_key: 'mcp_ingress.ratelimit_enabled' },
            filter_enforced: { default_value: { numerator: 100, denominator: 'HUNDRED' }, runtime_key: 'mcp_ingress.ratelimit_enforced' },
            rate_limits: [{ actions: [{ request_headers: { header_name: CALLER_HEADER, descriptor_key: INGRESS.rateLimitKey } }] }],
            descriptors: [{ entries: [{ key: INGRESS.rateLimitKey }], token_bucket: callerBucket(rpm) }],
            // required here; spent only by requests naming no caller (the public metadata document)
            token_bucket: callerBucket(rpm),
            max_dynamic_descriptors: o.maxTrackedCallers ?? 10_000,
            always_consume_default_token_bucket: false,
            rate_limited_as_resource_exhausted: false,
          }),
        },
      },
    ],
    // a client must not learn or steer internals through these
    request_headers_to_remove: ['x-envoy-original-path'],
    response_headers_to_remove: ['x-envoy-upstream-service-time', 'x-powered-by'],
  };

  const clusters: Named[] = [gatewayCluster(o)];
  const jwks = jwksCluster(ir, o);
  if (jwks) clusters.push(jwks);
  return { listeners: [listener], routes: [routes], clusters, staticClusters: [o.authzCluster] };
}

/**
 * Two access logs over ALS. Requests ext_authz admitted (they hold a concurrency lease, marked in
 * the ext_authz dynamic metadata) are logged one entry per message as each ends, under
 * `mcp_ingress`: that entry releases the lease. Everything Envoy refused or answered itself (401,
 * 429, 413, 404, ext_authz denials) goes, batched, under `mcp_ingress_edge`, so a flood of refused
 * requests costs the control plane little and is still recorded.
 */
function ingressAccessLog(cluster: string, leased: boolean): Record<string, unknown> {
  return {
    name: 'envoy.access_loggers.http_grpc',
    filter: {
      metadata_filter: {
        matcher: { filter: 'envoy.filters.http.ext_authz', path: [{ key: LEASE_METADATA_KEY }], value: { bool_match: true }, invert: !leased },
        match_if_key_not_found: !leased,
      },
    },
    typed_config: {
      '@type': EXT.httpGrpcAccessLog,
      common_config: {
        log_name: leased ? INGRESS_LOG_NAME : INGRESS_EDGE_LOG_NAME,
        grpc_service: { envoy_grpc: { cluster_name: cluster } },
        transport_api_version: 'V3',
        buffer_flush_interval: leased ? '0.05s' : '1s',
        buffer_size_bytes: leased ? 0 : 16_384,
      },
      additional_response_headers_to_log: [DENY_HEADER],
    },
  };
}

export { grpcStaticCluster } from '../../envoy/bootstrap.js';
