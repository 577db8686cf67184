import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { EventSink } from '../common/events.js';
import type { StreamAccessLogsMessage__Output } from '../envoy/generated/envoy/service/accesslog/v3/StreamAccessLogsMessage.js';
import type { StreamAccessLogsResponse } from '../envoy/generated/envoy/service/accesslog/v3/StreamAccessLogsResponse.js';
import type { HTTPAccessLogEntry__Output } from '../envoy/generated/envoy/data/accesslog/v3/HTTPAccessLogEntry.js';
import type { TCPAccessLogEntry__Output } from '../envoy/generated/envoy/data/accesslog/v3/TCPAccessLogEntry.js';
import { envoyServices } from './grpc.js';
import { SNI } from './translate/sni.js';
import { setBounded } from '../common/bounded.js';
import { SESSION_FILTER_STATE, SESSION_HEADER } from './translate/common.js';

/**
 * The access-log receiver (gRPC ALS): Envoy streams an entry per request and, for long CONNECT
 * tunnels, periodic intermediate entries (cumulative). Each becomes a `network.egress` event (lane,
 * destination, outcome, reason, bytes) for the audit pipeline and the exfil tripwire. Bytes are
 * turned into deltas per stream here, so consumers never double count. ALS is best-effort: budgets
 * are enforced by refusing the next connection, never by trusting that every entry arrives.
 */

export interface NetworkEvent {
  lane: string;
  node: string;
  streamId: string;
  intermediate: boolean;
  method: string;
  authority: string;
  status: number;
  reason: string | null;
  session: string | null;
  upstream: string | null;
  downstream: string | null;
  /** bytes since the previous entry of this stream (client → upstream, upstream → client) */
  bytesOut: number;
  bytesIn: number;
  durationMs: number | null;
  /** the ClientHello's SNI, on entries of the SNI-checking listener */
  sni?: string | null;
  /** on a refusal of the SNI-checking listener: the egress listener's stream id of the tunnel */
  tunnelStreamId?: string | null;
}

/** How long the egress listener's entry of an SNI-checked tunnel waits for the check's verdict. */
export const SNI_VERDICT_WAIT_MS = 2000;
const MAX_VERDICTS = 4096;

export class AccessLogReceiver {
  private readonly lastBytes = new Map<string, { out: number; in: number }>();
  /**
   * The SNI check's verdict per tunnel (by the egress listener's stream id), and the egress
   * listener's final entries of SNI-checked tunnels still waiting for one: a refused tunnel is one
   * `network.denied` event, never also an egress entry (its CONNECT was answered 200 before the
   * ClientHello was read, and no byte of it left the host).
   */
  private readonly verdicts = new Map<string, 'refused' | 'passed'>();
  private readonly waiting = new Map<string, { ev: NetworkEvent; timer: NodeJS.Timeout }>();
  private readonly log: Logger;
  constructor(private readonly deps: { logger: Logger; metrics: Metrics; events: EventSink; onEntry?: (e: NetworkEvent) => void }) {
    this.log = deps.logger.child({ component: 'als' });
  }

  register(server: { addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void }): void {
    const svc = envoyServices().als.envoy.service.accesslog.v3.AccessLogService;
    server.addService(svc.service, {
      StreamAccessLogs: (call: grpc.ServerReadableStream<StreamAccessLogsMessage__Output, StreamAccessLogsResponse>, cb: grpc.sendUnaryData<StreamAccessLogsResponse>) => {
        let node = '';
        let lane = '';
        call.on('data', (m: StreamAccessLogsMessage__Output) => {
          if (m.identifier) {
            node = m.identifier.node?.id ?? node;
            lane = m.identifier.log_name || lane;
          }
          for (const e of m.http_logs?.log_entry ?? []) this.http(lane, node, e);
          for (const e of m.tcp_logs?.log_entry ?? []) this.tcp(lane, node, e);
          this.deps.metrics.inc('als_entries_total', { kind: m.http_logs ? 'http' : 'tcp' }, (m.http_logs?.log_entry.length ?? 0) + (m.tcp_logs?.log_entry.length ?? 0));
        });
        call.on('end', () => cb(null, {}));
        call.on('error', () => undefined);
      },
    });
  }

  private http(lane: string, node: string, e: HTTPAccessLogEntry__Output): void {
    const c = e.common_properties;
    const streamId = c?.stream_id ?? '';
    const outTotal = Number(c?.downstream_wire_bytes_received ?? e.request?.request_body_bytes ?? 0);
    const inTotal = Number(c?.downstream_wire_bytes_sent ?? e.response?.response_body_bytes ?? 0);
    const prev = this.lastBytes.get(streamId) ?? { out: 0, in: 0 };
    const ev: NetworkEvent = {
      lane,
      node,
      streamId,
      intermediate: !!c?.intermediate_log_entry,
      method: String(e.request?.request_method ?? ''),
      authority: e.request?.authority ?? '',
      status: e.response?.response_code?.value ?? 0,
      reason: e.response?.response_headers?.['x-deny-reason'] ?? null,
      session: e.request?.request_headers?.[SESSION_HEADER] || filterStateString(c?.filter_state_objects?.[SESSION_FILTER_STATE]) || null,
      upstream: addr(c?.upstream_remote_address),
      downstream: addr(c?.downstream_remote_address),
      bytesOut: Math.max(0, outTotal - prev.out),
      bytesIn: Math.max(0, inTotal - prev.in),
      durationMs: c?.duration ? Number(c.duration.seconds) * 1000 + Math.round(c.duration.nanos / 1e6) : null,
    };
    if (ev.intermediate) this.lastBytes.set(streamId, { out: outTotal, in: inTotal });
    else this.lastBytes.delete(streamId);
    if (!ev.intermediate && c?.route_name === SNI.tunnelRoute) {
      const verdict = this.verdicts.get(streamId);
      this.verdicts.delete(streamId);
      if (verdict === 'refused') {
        this.deps.metrics.inc('als_refused_tunnel_entries_total');
        return;
      }
      if (verdict === undefined) {
        const timer = setTimeout(() => {
          this.waiting.delete(streamId);
          this.emitHttp(ev);
        }, SNI_VERDICT_WAIT_MS);
        timer.unref();
        this.waiting.set(streamId, { ev, timer });
        return;
      }
    }
    this.emitHttp(ev);
  }

  private emitHttp(ev: NetworkEvent): void {
    const lane = ev.lane;
    this.deps.metrics.inc('egress_bytes_total', { lane, dir: 'out' }, ev.bytesOut);
    this.deps.metrics.inc('egress_bytes_total', { lane, dir: 'in' }, ev.bytesIn);
    this.deps.events.emit({
      type: ev.status === 403 ? 'network.denied' : 'network.egress',
      severity: ev.status === 403 ? 'warning' : 'info',
      source: 'envoy',
      ...(ev.session ? { sessionId: ev.session } : {}),
      data: { ...ev },
    });
    this.deps.onEntry?.(ev);
    this.log.debug({ lane, authority: ev.authority, status: ev.status, reason: ev.reason }, 'access log');
  }

  /**
   * TCP entries come from the SNI-checking listener: a tunnel it refused becomes a `network.denied`
   * event (`sni_mismatch`). Bytes are not counted here: the tunnel's own entry on the egress
   * listener already counts them.
   */
  private tcp(lane: string, node: string, e: TCPAccessLogEntry__Output): void {
    if (lane !== SNI_LOG_NAME) return;
    const reason = sniRefusal(e);
    const c = e.common_properties;
    const tunnelStreamId = filterStateString(c?.filter_state_objects?.[SNI.tunnelStreamKey]) || null;
    if (tunnelStreamId && !c?.intermediate_log_entry) this.verdict(tunnelStreamId, reason ? 'refused' : 'passed');
    if (!reason) return;
    const session = filterStateString(c?.filter_state_objects?.['portcullis.session']) || null;
    const ev: NetworkEvent = {
      lane,
      node,
      streamId: c?.stream_id ?? '',
      intermediate: false,
      method: 'CONNECT',
      authority: filterStateString(c?.filter_state_objects?.['portcullis.tunnel_authority']) ?? '',
      status: 403,
      reason,
      session,
      upstream: null,
      downstream: addr(c?.downstream_remote_address),
      bytesOut: 0,
      bytesIn: 0,
      durationMs: c?.duration ? Number(c.duration.seconds) * 1000 + Math.round(c.duration.nanos / 1e6) : null,
      sni: c?.tls_properties?.tls_sni_hostname || null,
      tunnelStreamId,
    };
    this.deps.metrics.inc('egress_sni_refused_total', { reason });
    this.deps.events.emit({ type: 'network.denied', severity: 'warning', source: 'envoy', ...(session ? { sessionId: session } : {}), data: { ...ev } });
    this.deps.onEntry?.(ev);
    this.log.debug({ lane, authority: ev.authority, reason }, 'tunnel refused');
  }

  /** Emit every egress entry still waiting for a verdict, as it is (at shutdown: nothing is lost). */
  flush(): void {
    for (const [id, w] of [...this.waiting]) {
      clearTimeout(w.timer);
      this.waiting.delete(id);
      this.emitHttp(w.ev);
    }
  }

  /** The SNI check's verdict on a tunnel: settles the egress entry waiting for it, or is kept for it. */
  private verdict(tunnelStreamId: string, v: 'refused' | 'passed'): void {
    const w = this.waiting.get(tunnelStreamId);
    if (w) {
      clearTimeout(w.timer);
      this.waiting.delete(tunnelStreamId);
      if (v === 'passed') this.emitHttp(w.ev);
      else this.deps.metrics.inc('als_refused_tunnel_entries_total');
      return;
    }
    setBounded(this.verdicts, tunnelStreamId, v, MAX_VERDICTS);
  }
}

/** Log name of the SNI-checking internal listener (xds-server/translate/sni.ts). */
export const SNI_LOG_NAME = 'egress_sni';

/**
 * Why the SNI-checking listener closed a tunnel, from its access log entry; null = not refused there.
 * RBAC reports `rbac_access_denied_matched_policy[…]`. A tunnel whose first bytes never came within
 * the listener's timeout (a server-speaks-first protocol, an idle client) never reached a filter
 * chain: no termination detail, no cluster, no response flag, no SNI.
 */
export function sniRefusal(e: TCPAccessLogEntry__Output): 'sni_mismatch' | null {
  const c = e.common_properties;
  if (!c || c.intermediate_log_entry) return null;
  const details = c.connection_termination_details ?? '';
  if (details.startsWith('rbac_access_denied')) return 'sni_mismatch';
  const flags = Object.values(c.response_flags ?? {}).some((v) => v === true || (typeof v === 'string' && v !== ''));
  const neverReachedChain = details === '' && !c.upstream_cluster && !c.upstream_remote_address && !flags && !c.tls_properties?.tls_sni_hostname;
  return neverReachedChain ? 'sni_mismatch' : null;
}

/** The string a `StringAccessor` filter state object serializes to (`google.protobuf.StringValue` in an Any). */
export function filterStateString(any: { type_url?: string; value?: Buffer | Uint8Array } | undefined): string | null {
  if (!any?.value || !any.type_url?.endsWith('google.protobuf.StringValue')) return null;
  const b = Buffer.from(any.value);
  if (b.length === 0) return '';
  if (b[0] !== 0x0a) return null;
  let len = 0;
  let shift = 0;
  let i = 1;
  for (; i < b.length; i++) {
    len |= (b[i]! & 0x7f) << shift;
    shift += 7;
    if (!(b[i]! & 0x80)) break;
  }
  return b.subarray(i + 1, i + 1 + len).toString('utf8');
}

function addr(a: { socket_address?: { address?: string; port_value?: number } | null } | null | undefined): string | null {
  const s = a?.socket_address;
  if (!s?.address) return null;
  return s.address.includes(':') ? `[${s.address}]:${s.port_value}` : `${s.address}:${s.port_value}`;
}
