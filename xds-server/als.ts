import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { EventSink } from '../common/events.js';
import type { StreamAccessLogsMessage__Output } from '../envoy/generated/envoy/service/accesslog/v3/StreamAccessLogsMessage.js';
import type { StreamAccessLogsResponse } from '../envoy/generated/envoy/service/accesslog/v3/StreamAccessLogsResponse.js';
import type { HTTPAccessLogEntry__Output } from '../envoy/generated/envoy/data/accesslog/v3/HTTPAccessLogEntry.js';
import { envoyServices } from './grpc.js';

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
}

export class AccessLogReceiver {
  private readonly lastBytes = new Map<string, { out: number; in: number }>();
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
      session: e.request?.request_headers?.['x-portcullis-session'] ?? null,
      upstream: addr(c?.upstream_remote_address),
      downstream: addr(c?.downstream_remote_address),
      bytesOut: Math.max(0, outTotal - prev.out),
      bytesIn: Math.max(0, inTotal - prev.in),
      durationMs: c?.duration ? Number(c.duration.seconds) * 1000 + Math.round(c.duration.nanos / 1e6) : null,
    };
    if (ev.intermediate) this.lastBytes.set(streamId, { out: outTotal, in: inTotal });
    else this.lastBytes.delete(streamId);
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
}

function addr(a: { socket_address?: { address?: string; port_value?: number } | null } | null | undefined): string | null {
  const s = a?.socket_address;
  if (!s?.address) return null;
  return s.address.includes(':') ? `[${s.address}]:${s.port_value}` : `${s.address}:${s.port_value}`;
}
