import { EXT } from '../../envoy/api/type-urls.js';

/** Shared pieces of translated Envoy config (proto3 JSON). */

export const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' } as const;
export const DENY_HEADER = 'x-deny-reason';
/** Filter state where the egress listener records a request's (or tunnel's) session (bump.ts BUMP.sessionKey). */
export const SESSION_FILTER_STATE = 'portcullis.session';
/** The header carrying a request's session inside Envoy (set by the session check, never by a guest). */
export const SESSION_HEADER = 'x-portcullis-session';

/** `TypedStruct` carrying a message newer than our proto set; Envoy converts it itself. */
export function typedStruct(typeUrl: string, value: Record<string, unknown>): Record<string, unknown> {
  return { '@type': EXT.typedStruct, type_url: typeUrl, value };
}

export function routerFilter(): Record<string, unknown> {
  return { name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } };
}

/** A route answering 403 with the stable reason code in `x-deny-reason` and as the body. */
export function denyRoute(match: Record<string, unknown>, reason: string, name?: string): Record<string, unknown> {
  return {
    ...(name ? { name } : {}),
    match,
    direct_response: { status: 403, body: { inline_string: `${reason}\n` } },
    response_headers_to_add: [{ header: { key: DENY_HEADER, value: reason }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
  };
}

/**
 * Both request shapes a forward proxy sees: CONNECT (no path) and everything else. The empty prefix
 * matches any path, including one Envoy did not parse (an absolute URL on a CONNECT-only listener),
 * so no request falls through to a reason-less 404.
 */
export function bothMatches(extra: Record<string, unknown> = {}): Array<Record<string, unknown>> {
  return [{ connect_matcher: {}, ...extra }, { prefix: '', ...extra }];
}

/** Anchored, case-insensitive RE2 for an authority `host[:port]`. */
export function authorityRegex(hostPattern: string): string {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  if (hostPattern.startsWith('*.')) return `(?i)^([^.:/]+\\.)+${esc(hostPattern.slice(2))}\\.?(:[0-9]+)?$`;
  if (hostPattern.includes(':')) return `(?i)^\\[${esc(hostPattern)}\\](:[0-9]+)?$`; // IPv6 literal
  return `(?i)^${esc(hostPattern)}\\.?(:[0-9]+)?$`;
}

/** The authority forms a destination is reached by, for virtual host domains. */
export function authorityDomains(host: string, kind: 'exact' | 'wildcard' | 'ip', ports: readonly number[]): string[] {
  const h = kind === 'ip' && host.includes(':') ? `[${host}]` : host;
  const out: string[] = [];
  for (const p of ports) {
    out.push(`${h}:${p}`);
    // absolute-form http:// requests without an explicit port carry the bare host
    if (p === 80) out.push(h);
  }
  return out;
}

export function sortByName<T extends { name?: unknown }>(xs: T[]): T[] {
  return xs.sort((a, b) => (String(a.name) < String(b.name) ? -1 : String(a.name) > String(b.name) ? 1 : 0));
}

/**
 * gRPC access log to the control plane (ALS). Periodic entries for long tunnels come from the HCM's
 * `access_log_options.access_log_flush_interval`; entries are cumulative per stream.
 */
export function grpcAccessLog(logName: string, cluster: string): Record<string, unknown> {
  return {
    name: 'envoy.access_loggers.http_grpc',
    typed_config: {
      '@type': EXT.httpGrpcAccessLog,
      common_config: {
        log_name: logName,
        grpc_service: { envoy_grpc: { cluster_name: cluster } },
        transport_api_version: 'V3',
        buffer_flush_interval: '0.5s',
        buffer_size_bytes: 16384,
        // the session A recorded for the request or tunnel (the header may be gone before the log is written)
        filter_state_objects_to_log: [SESSION_FILTER_STATE],
      },
      additional_request_headers_to_log: [SESSION_HEADER],
      additional_response_headers_to_log: [DENY_HEADER],
    },
  };
}

/**
 * Local reply for a forward-proxy request whose name resolved only to deny-set addresses (the DNS
 * cache dropped every one of them, so Envoy reports a DNS failure, response flag DF).
 */
export function resolvedIpDeniedReply(): { mappers: Record<string, unknown>[] } {
  return { mappers: [denyReplyMapper({ response_flag_filter: { flags: ['DF'] } }, 'resolved_ip_denied')] };
}

/**
 * A local-reply mapper: what `filter` matches is answered with `reason` in `x-deny-reason` and as the
 * body, as a deny route is; 403 unless `status` says otherwise, with any `headers` added.
 */
export function denyReplyMapper(
  filter: Record<string, unknown>,
  reason: string,
  opts: { status?: number; headers?: Record<string, string> } = {},
): Record<string, unknown> {
  const add = (key: string, value: string) => ({ header: { key, value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' });
  return {
    filter,
    status_code: opts.status ?? 403,
    headers_to_add: [add(DENY_HEADER, reason), ...Object.entries(opts.headers ?? {}).map(([k, v]) => add(k, v))],
    body: { inline_string: `${reason}\n` },
  };
}

/** A local-reply (or access-log) filter: a CEL expression over the response, e.g. its `code_details`. */
export function celResponseFilter(expression: string): Record<string, unknown> {
  return {
    extension_filter: {
      name: 'envoy.access_loggers.extension_filters.cel',
      typed_config: { '@type': EXT.celAccessLogFilter, expression },
    },
  };
}
