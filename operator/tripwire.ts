import type { EventBus, EventSink, PortcullisEvent } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { Ir } from '../policy/ir.js';
import type { NetworkEvent } from '../xds-server/als.js';

/**
 * The exfiltration tripwire (NFR-SEC-57): per session, egress bytes (out + in) and distinct
 * destinations over a sliding window, from the access logs (`network.egress` events; bytes are
 * already deltas per stream, see xds-server/als.ts). Payload-independent, so it works at every
 * rung.
 *
 * Only the tunnel leg is counted: lanes in `lanes` (default: the egress listener, `egress`, where
 * transparent CONNECTs, bump CONNECTs and absolute-form requests are logged). The inner requests of
 * a bumped tunnel (`egress_bump`) carry the same bytes again and are not counted.
 *
 * Window: time is split into buckets of `bucketMs` (1 s, or window/1000 if larger). A bucket counts
 * while any part of it is inside the window, so usage is never under-counted, and is over-counted
 * by at most one bucket's worth of old traffic.
 *
 * Crossing a budget (bytes > bytesPerSession, or destinations > distinctDestinations) emits one
 * `exfil.tripped` event (the audit log and the SOAR outbox take it from the bus) and, with
 * `onTrip: kill`, calls `onKill` — the kill switch denylists the session with
 * `exfil_budget_exceeded`. With `alert`, the session re-arms once it is back under both budgets.
 *
 * Lost access-log entries are counted, never silently absorbed: a long stream that logged
 * intermediate entries and then goes silent for `staleStreamMs` lost its final entry
 * (`tripwire_als_streams_lost_total`); Envoy's own drop counter is mirrored by `setEnvoyDropped`
 * (`tripwire_als_dropped_total`); bytes without a session are `tripwire_unattributed_bytes_total`.
 */

export interface TripwireConfig {
  bytesPerSession: number;
  distinctDestinations: number;
  windowSeconds: number;
  onTrip: 'alert' | 'kill';
}

export function tripwireConfigOf(ir: Ir): TripwireConfig {
  return { ...ir.egress.tripwire };
}

export interface TripInfo {
  sessionId: string;
  trigger: 'bytes' | 'destinations';
  bytes: number;
  destinations: number;
  config: TripwireConfig;
  /** the entry that crossed */
  lane: string;
  authority: string;
  at: number;
}

export interface TripwireOptions {
  config: TripwireConfig;
  events: EventSink;
  metrics: Metrics;
  logger: Logger;
  /** called for `onTrip: kill` (the kill switch); its failure is logged and counted */
  onKill?: (info: TripInfo) => Promise<unknown>;
  lanes?: readonly string[];
  /** a stream with intermediate entries silent this long lost its final entry (default 3 × 5 s + 5 s) */
  staleStreamMs?: number;
  /** sessions idle longer than their window are forgotten by `sweep` */
  now?: () => number;
}

interface SessionWindow {
  buckets: { start: number; bytes: number }[];
  bytes: number;
  dests: Map<string, number>;
  tripped: TripInfo | null;
  lastSeen: number;
}

export interface SessionUsage {
  sessionId: string;
  bytes: number;
  destinations: number;
  tripped: boolean;
  trippedAt: number | null;
}

export class Tripwire {
  private cfg: TripwireConfig;
  private readonly sessions = new Map<string, SessionWindow>();
  private readonly streams = new Map<string, number>();
  private readonly lanes: Set<string>;
  private readonly now: () => number;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private envoyDropped = 0;

  constructor(private readonly o: TripwireOptions) {
    this.cfg = { ...o.config };
    this.lanes = new Set(o.lanes ?? ['egress']);
    this.now = o.now ?? Date.now;
    this.log = o.logger.child({ component: 'tripwire' });
  }

  get config(): TripwireConfig {
    return { ...this.cfg };
  }

  /** New budgets (policy reload). Current windows are kept and judged by the new budgets at the next entry. */
  setConfig(c: TripwireConfig): void {
    this.cfg = { ...c };
  }

  private get windowMs(): number {
    return this.cfg.windowSeconds * 1000;
  }

  private get bucketMs(): number {
    return Math.max(1000, Math.ceil(this.windowMs / 1000));
  }

  /** Follow `network.egress` events on the bus; `sweepEveryMs` > 0 also starts the periodic sweep. */
  attach(bus: Pick<EventBus, 'on'>, sweepEveryMs = 1000): () => void {
    const off = bus.on((e: PortcullisEvent) => {
      if (e.type === 'network.egress') this.observe(e.data as unknown as NetworkEvent);
    });
    if (sweepEveryMs > 0) {
      this.timer = setInterval(() => this.sweep(), sweepEveryMs);
      this.timer.unref();
    }
    return () => {
      off();
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
    };
  }

  /** Account one access-log entry. Returns the trip it caused, if any. */
  observe(ev: NetworkEvent): TripInfo | null {
    if (!this.lanes.has(ev.lane)) return null;
    const now = this.now();
    const bytes = Math.max(0, Number(ev.bytesOut) || 0) + Math.max(0, Number(ev.bytesIn) || 0);
    this.trackStream(ev, now);
    const sid = ev.session || null;
    if (!sid) {
      this.o.metrics.inc('tripwire_unattributed_bytes_total', {}, bytes);
      return null;
    }
    if (isRefusal(ev)) return null;
    const w = this.window(sid, now);
    if (bytes > 0) {
      const start = now - (now % this.bucketMs);
      const last = w.buckets.at(-1);
      if (last && last.start === start) last.bytes += bytes;
      else w.buckets.push({ start, bytes });
      w.bytes += bytes;
    }
    const dest = normalizeAuthority(ev.authority);
    if (dest) w.dests.set(dest, now);
    w.lastSeen = now;
    this.o.metrics.inc('tripwire_bytes_total', {}, bytes);
    return this.judge(sid, w, ev, now);
  }

  /** Usage of one session in the current window. */
  usage(sessionId: string): SessionUsage {
    const w = this.sessions.get(sessionId);
    if (!w) return { sessionId, bytes: 0, destinations: 0, tripped: false, trippedAt: null };
    this.expire(w, this.now());
    return { sessionId, bytes: w.bytes, destinations: w.dests.size, tripped: w.tripped !== null, trippedAt: w.tripped?.at ?? null };
  }

  /** Sessions with traffic in the current window. */
  activeSessions(): string[] {
    const now = this.now();
    return [...this.sessions.entries()].filter(([, w]) => now - w.lastSeen < this.windowMs + this.bucketMs).map(([id]) => id);
  }

  /** Mirror Envoy's `access_logs.grpc_access_log.logs_dropped` (cumulative). */
  setEnvoyDropped(total: number): void {
    if (total > this.envoyDropped) this.o.metrics.inc('tripwire_als_dropped_total', {}, total - this.envoyDropped);
    this.envoyDropped = Math.max(this.envoyDropped, total);
  }

  status(): { config: TripwireConfig; sessions: SessionUsage[]; lost: { streams: number; envoyDropped: number; unattributedBytes: number } } {
    return {
      config: this.config,
      sessions: [...this.sessions.keys()].map((id) => this.usage(id)),
      lost: {
        streams: this.o.metrics.get('tripwire_als_streams_lost_total'),
        envoyDropped: this.o.metrics.get('tripwire_als_dropped_total'),
        unattributedBytes: this.o.metrics.get('tripwire_unattributed_bytes_total'),
      },
    };
  }

  /** Expire windows, forget idle sessions, count streams whose final entry never came. */
  sweep(): void {
    const now = this.now();
    for (const [id, w] of this.sessions) {
      this.expire(w, now);
      if (w.tripped && this.cfg.onTrip === 'alert' && !this.over(w)) w.tripped = null;
      if (w.bytes === 0 && w.dests.size === 0 && now - w.lastSeen >= this.windowMs + this.bucketMs && (w.tripped === null || this.cfg.onTrip === 'alert')) {
        this.sessions.delete(id);
      }
    }
    const stale = this.o.staleStreamMs ?? 20_000;
    for (const [sid, last] of this.streams) {
      if (now - last >= stale) {
        this.streams.delete(sid);
        this.o.metrics.inc('tripwire_als_streams_lost_total');
      }
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  // -------------------------------------------------------------------------------------------

  private trackStream(ev: NetworkEvent, now: number): void {
    if (!ev.streamId) return;
    if (ev.intermediate) this.streams.set(ev.streamId, now);
    else this.streams.delete(ev.streamId);
  }

  private window(sid: string, now: number): SessionWindow {
    let w = this.sessions.get(sid);
    if (!w) {
      w = { buckets: [], bytes: 0, dests: new Map(), tripped: null, lastSeen: now };
      this.sessions.set(sid, w);
    }
    this.expire(w, now);
    return w;
  }

  /** Drop buckets and destinations that lie wholly before the window (now - window, now]. */
  private expire(w: SessionWindow, now: number): void {
    const horizon = now - this.windowMs;
    while (w.buckets.length > 0 && w.buckets[0]!.start + this.bucketMs <= horizon) w.bytes -= w.buckets.shift()!.bytes;
    for (const [d, t] of w.dests) if (t - (t % this.bucketMs) + this.bucketMs <= horizon) w.dests.delete(d);
  }

  private over(w: SessionWindow): boolean {
    return w.bytes > this.cfg.bytesPerSession || w.dests.size > this.cfg.distinctDestinations;
  }

  private judge(sid: string, w: SessionWindow, ev: NetworkEvent, now: number): TripInfo | null {
    if (w.tripped) {
      if (this.cfg.onTrip === 'alert' && !this.over(w)) w.tripped = null;
      else return null;
    }
    if (!this.over(w)) return null;
    const info: TripInfo = {
      sessionId: sid,
      trigger: w.bytes > this.cfg.bytesPerSession ? 'bytes' : 'destinations',
      bytes: w.bytes,
      destinations: w.dests.size,
      config: this.config,
      lane: ev.lane,
      authority: ev.authority,
      at: now,
    };
    w.tripped = info;
    this.o.metrics.inc('tripwire_trips_total', { trigger: info.trigger, on_trip: this.cfg.onTrip });
    this.log.warn({ trigger: info.trigger, bytes: info.bytes, destinations: info.destinations, onTrip: this.cfg.onTrip }, 'exfil tripwire tripped');
    this.o.events.emit({
      type: 'exfil.tripped',
      severity: 'critical',
      source: 'tripwire',
      sessionId: sid,
      time: new Date(now).toISOString(),
      data: {
        trigger: info.trigger,
        bytes: info.bytes,
        destinations: info.destinations,
        budgetBytes: this.cfg.bytesPerSession,
        budgetDestinations: this.cfg.distinctDestinations,
        windowSeconds: this.cfg.windowSeconds,
        onTrip: this.cfg.onTrip,
        lane: ev.lane,
        authority: ev.authority,
        reason: 'exfil_budget_exceeded',
      },
    });
    if (this.cfg.onTrip === 'kill' && this.o.onKill) {
      this.o.onKill(info).catch((e: unknown) => {
        this.o.metrics.inc('tripwire_kill_failed_total');
        this.log.error({ err: (e as Error).message }, 'tripwire kill failed');
      });
    }
    return info;
  }
}

/** A refused request (Portcullis' own denial, or the proxy's auth challenge) moved no payload. */
function isRefusal(ev: NetworkEvent): boolean {
  return ev.reason !== null && ev.reason !== undefined && ev.reason !== '' ? true : ev.status === 407;
}

/** `Host.:PORT` → `host:port` (lower case, no trailing dot); the port only when written. */
export function normalizeAuthority(a: string): string {
  const s = (a ?? '').trim().toLowerCase();
  if (!s) return '';
  let host: string;
  let port: string;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    host = s.slice(0, end + 1);
    port = s.slice(end + 1).replace(/^:/, '');
  } else {
    const i = s.lastIndexOf(':');
    host = i >= 0 ? s.slice(0, i) : s;
    port = i >= 0 ? s.slice(i + 1) : '';
  }
  host = host.replace(/\.$/, '');
  return port ? `${host}:${port}` : host;
}
