import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import type { EventBus, PortcullisEvent } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import { Journal } from './journal.js';
import type { WebhookSigningKey } from './soar-keys.js';

/**
 * SOAR webhooks out, from a durable outbox.
 *
 * Outbox: `soar-outbox.jsonl` in the data dir, an append-only journal of
 *   {"t":"e","ev":{id,seq,type,…},"to":[url…]}   an event to deliver to these webhooks
 *   {"t":"a","id":…,"to":url,"at":ms}            acknowledged (2xx) by that webhook
 *   {"t":"d","id":…,"to":url,"at":ms,"why":…}    given up: the webhook refused it for good (4xx)
 * each fdatasync'ed (group commit) before it counts. An event is sent only once its "e" record is
 * durable; on open, every "e" without an "a"/"d" for a webhook is pending again, in `seq` order.
 * Acknowledged events are never sent again; an event can be sent twice only if the process dies
 * between a 2xx and the fsync of its "a" record, or when a request timed out after the receiver
 * had taken it — receivers dedupe by `jti` (= the event id). The journal is compacted to the
 * pending events once enough have been settled.
 *
 * Delivery: one queue per (webhook, session) — events of one session reach a webhook in order,
 * a session's next event waits until the previous one is settled; events of different sessions
 * (up to `concurrency` at a time) do not wait for each other. A failed attempt (connection error,
 * timeout, 408/425/429/5xx) backs the whole webhook off exponentially with jitter; a permanent
 * refusal (other 4xx) settles that one event as dead (visible in `deliveries()`).
 *
 * Wire format: `POST <url>`, `content-type: application/jwt`, body a compact JWS (EdDSA, Ed25519),
 * protected header `{alg, kid, typ: "portcullis-soar-event+jwt"}`, claims
 * `{iss, aud, iat, exp, jti, sub?, event}` where `event` = `{id, seq, type, time, severity, source,
 * sessionId?, data}`. Signed at each attempt (fresh iat/exp, same jti). Receivers verify with the
 * JWKS Portcullis publishes (soar-keys.ts).
 */

export const SOAR_EVENT_TYPES = [
  'session.flagged',
  'policy.violation',
  'auth.anomaly',
  'exfil.tripped',
  'config.nack',
  'config.reload_refused',
  'config.trust_profile.downgraded',
] as const;
export type SoarEventType = (typeof SOAR_EVENT_TYPES)[number];

export const OUTBOX_FILE = 'soar-outbox.jsonl';
export const WEBHOOK_JWT_TYP = 'portcullis-soar-event+jwt';
export const WEBHOOK_TOKEN_LIFETIME_SEC = 300;
const MAX_DATA_BYTES = 64 * 1024;

export interface WebhookTarget {
  url: string;
  key: WebhookSigningKey;
  /** `aud` claim; default: the URL */
  audience?: string;
}

export interface OutboxEvent {
  id: string;
  seq: number;
  type: string;
  time: string;
  severity: PortcullisEvent['severity'];
  source: string;
  sessionId?: string;
  data: Record<string, unknown>;
}

type Rec = { t: 'e'; ev: OutboxEvent; to: string[] } | { t: 'a'; id: string; to: string; at: number } | { t: 'd'; id: string; to: string; at: number; why: string };

export type DeliveryState = 'pending' | 'delivered' | 'dead';

export interface DeliveryStatus {
  eventId: string;
  seq: number;
  type: string;
  sessionId?: string;
  target: string;
  state: DeliveryState;
  attempts: number;
  lastError?: string;
  lastStatus?: number;
  nextAttemptAt?: number;
  settledAt?: number;
}

export interface TargetSummary {
  url: string;
  kid: string | null;
  pending: number;
  delivered: number;
  dead: number;
  consecutiveFailures: number;
  nextAttemptAt: number | null;
  lastError: string | null;
}

export interface SoarOutboxOptions {
  dataDir: string;
  logger: Logger;
  metrics?: Metrics;
  targets?: WebhookTarget[];
  /** `iss` claim (default `portcullis`) */
  issuer?: string;
  /** first retry delay and cap, ms (defaults 500 ms and 60 s) */
  backoff?: { baseMs?: number; maxMs?: number };
  /** per-attempt timeout (default 10 s) */
  timeoutMs?: number;
  /** sessions in flight per webhook at once (default 4) */
  concurrency?: number;
  /** settled deliveries kept for `deliveries()` (default 1000) */
  keepSettled?: number;
  /** compact the journal after this many settled records (default 1000) */
  compactAfter?: number;
  now?: () => number;
  random?: () => number;
  fetch?: typeof fetch;
}

/** Exponential backoff with jitter: the n-th consecutive failure waits between half and all of min(max, base·2^(n-1)). */
export function backoffDelay(failures: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, Math.min(30, failures - 1)));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

interface Item {
  ev: OutboxEvent;
  status: DeliveryStatus;
  ready: boolean;
}

class TargetState {
  readonly lanes = new Map<string, Item[]>();
  readonly inflight = new Set<string>();
  failures = 0;
  nextAt = 0;
  lastError: string | null = null;
  timer: NodeJS.Timeout | null = null;
  delivered = 0;
  dead = 0;
  constructor(
    readonly url: string,
    public target: WebhookTarget | null,
  ) {}
  pending(): number {
    let n = 0;
    for (const l of this.lanes.values()) n += l.length;
    return n;
  }
}

export class SoarOutbox {
  private readonly targets = new Map<string, TargetState>();
  private readonly settled: DeliveryStatus[] = [];
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly fetchFn: typeof fetch;
  private readonly idleWaiters: (() => void)[] = [];
  private seq = 0;
  private settledSinceCompact = 0;
  private closed = false;

  private constructor(
    private readonly o: SoarOutboxOptions,
    private readonly journal: Journal<Rec>,
  ) {
    this.log = o.logger.child({ component: 'soar-out' });
    this.now = o.now ?? Date.now;
    this.random = o.random ?? Math.random;
    this.fetchFn = o.fetch ?? fetch;
  }

  static async open(o: SoarOutboxOptions): Promise<SoarOutbox> {
    const { journal, records } = await Journal.open<Rec>(join(o.dataDir, OUTBOX_FILE));
    const box = new SoarOutbox(o, journal);
    box.restore(records);
    const live = box.pendingRecords();
    if (records.length > live.length) await journal.compact(live);
    box.setTargets(o.targets ?? []);
    return box;
  }

  /** Replace the webhook list (policy reload). Events already queued for a removed URL stay pending. */
  setTargets(targets: readonly WebhookTarget[]): void {
    const urls = new Set(targets.map((t) => t.url));
    for (const t of targets) {
      const s = this.targets.get(t.url) ?? new TargetState(t.url, null);
      s.target = t;
      this.targets.set(t.url, s);
    }
    for (const [url, s] of this.targets) if (!urls.has(url)) s.target = null;
    for (const s of this.targets.values()) this.pump(s);
  }

  /** Forward every SOAR-relevant bus event. Returns the unsubscribe function. */
  attach(bus: Pick<EventBus, 'on'>, types: readonly string[] = SOAR_EVENT_TYPES): () => void {
    const want = new Set(types);
    return bus.on((e) => {
      if (!want.has(e.type)) return;
      this.enqueue(e).durable.catch(() => undefined);
    });
  }

  /**
   * Queue `e` for every configured webhook. `durable` resolves once it is in the journal; delivery
   * starts then. With no webhook configured nothing is queued (`id` is still returned).
   */
  enqueue(e: Omit<PortcullisEvent, 'time'> & { time?: string }): { id: string; durable: Promise<void> } {
    const id = randomUUID();
    const to = [...this.targets.values()].filter((t) => t.target !== null).map((t) => t.url);
    if (this.closed || to.length === 0) {
      if (to.length === 0) this.o.metrics?.inc('soar_events_unrouted_total', { type: e.type });
      return { id, durable: this.closed ? Promise.reject(new Error('outbox closed')) : Promise.resolve() };
    }
    const ev: OutboxEvent = {
      id,
      seq: ++this.seq,
      type: e.type,
      time: e.time ?? new Date(this.now()).toISOString(),
      severity: e.severity,
      source: e.source,
      ...(e.sessionId ? { sessionId: e.sessionId } : {}),
      data: boundedData(e.data),
    };
    const items = to.map((url) => this.queueItem(url, ev, false));
    this.o.metrics?.inc('soar_events_enqueued_total', { type: e.type });
    const durable = this.journal.append({ t: 'e', ev, to }).then(
      () => {
        for (const [url, it] of items) {
          it.ready = true;
          this.pump(this.targets.get(url)!);
        }
      },
      (err: unknown) => {
        this.o.metrics?.inc('soar_outbox_write_failed_total');
        this.log.error({ err: (err as Error).message, type: e.type }, 'SOAR event could not be written to the outbox; delivering it anyway (not durable)');
        for (const [url, it] of items) {
          it.ready = true;
          this.pump(this.targets.get(url)!);
        }
        throw err;
      },
    );
    return { id, durable };
  }

  /** Delivery state: a summary per webhook and the pending and recently settled deliveries. */
  deliveries(): { targets: TargetSummary[]; items: DeliveryStatus[] } {
    const pending: DeliveryStatus[] = [];
    for (const s of this.targets.values()) for (const l of s.lanes.values()) for (const it of l) pending.push({ ...it.status });
    pending.sort((a, b) => a.seq - b.seq);
    const targets = [...this.targets.values()].map((s) => ({
      url: s.url,
      kid: s.target?.key.kid ?? null,
      pending: s.pending(),
      delivered: s.delivered,
      dead: s.dead,
      consecutiveFailures: s.failures,
      nextAttemptAt: s.failures > 0 ? s.nextAt : null,
      lastError: s.lastError,
    }));
    return { targets, items: [...pending, ...this.settled.map((x) => ({ ...x }))] };
  }

  /** Resolves when nothing is pending for any configured webhook. */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.targets.values()) if (s.timer) clearTimeout(s.timer);
    await this.journal.close();
  }

  // -------------------------------------------------------------------------------------------

  private restore(records: Rec[]): void {
    const settled = new Set<string>();
    for (const r of records) if (r.t === 'a' || r.t === 'd') settled.add(`${r.id} ${r.to}`);
    for (const r of records) {
      if (r.t !== 'e') continue;
      this.seq = Math.max(this.seq, r.ev.seq);
      for (const url of r.to) if (!settled.has(`${r.ev.id} ${url}`)) this.queueItem(url, r.ev, true);
    }
    for (const s of this.targets.values()) for (const l of s.lanes.values()) l.sort((a, b) => a.ev.seq - b.ev.seq);
  }

  private queueItem(url: string, ev: OutboxEvent, ready: boolean): [string, Item] {
    let s = this.targets.get(url);
    if (!s) {
      s = new TargetState(url, null);
      this.targets.set(url, s);
    }
    const lane = ev.sessionId ?? '';
    const item: Item = {
      ev,
      ready,
      status: { eventId: ev.id, seq: ev.seq, type: ev.type, ...(ev.sessionId ? { sessionId: ev.sessionId } : {}), target: url, state: 'pending', attempts: 0 },
    };
    const l = s.lanes.get(lane);
    if (l) l.push(item);
    else s.lanes.set(lane, [item]);
    return [url, item];
  }

  private pendingRecords(): Rec[] {
    const byId = new Map<string, { ev: OutboxEvent; to: string[] }>();
    for (const s of this.targets.values()) {
      for (const l of s.lanes.values()) {
        for (const it of l) {
          const r = byId.get(it.ev.id) ?? { ev: it.ev, to: [] };
          r.to.push(s.url);
          byId.set(it.ev.id, r);
        }
      }
    }
    return [...byId.values()].sort((a, b) => a.ev.seq - b.ev.seq).map((r) => ({ t: 'e' as const, ev: r.ev, to: r.to }));
  }

  private pump(s: TargetState): void {
    if (this.closed || s.target === null) return;
    const now = this.now();
    if (s.nextAt > now) {
      this.schedule(s, s.nextAt - now);
      return;
    }
    const max = Math.max(1, this.o.concurrency ?? 4);
    for (const [lane, items] of s.lanes) {
      if (s.inflight.size >= max) break;
      if (s.inflight.has(lane)) continue;
      const head = items[0];
      if (!head?.ready) continue;
      s.inflight.add(lane);
      void this.send(s, lane, head);
    }
  }

  private schedule(s: TargetState, ms: number): void {
    if (s.timer) clearTimeout(s.timer);
    s.timer = setTimeout(() => {
      s.timer = null;
      this.pump(s);
    }, ms);
    s.timer.unref();
  }

  private async send(s: TargetState, lane: string, item: Item): Promise<void> {
    const target = s.target!;
    item.status.attempts++;
    this.o.metrics?.inc('soar_delivery_attempts_total');
    let outcome: { ok: true; status: number } | { ok: false; permanent: boolean; status?: number; error: string };
    try {
      const body = await this.sign(target, item.ev);
      const res = await this.fetchFn(target.url, {
        method: 'POST',
        headers: { 'content-type': 'application/jwt', 'x-portcullis-event-id': item.ev.id, 'x-portcullis-event-type': item.ev.type },
        body,
        redirect: 'error',
        signal: AbortSignal.timeout(this.o.timeoutMs ?? 10_000),
      });
      await res.arrayBuffer().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) outcome = { ok: true, status: res.status };
      else outcome = { ok: false, permanent: isPermanent(res.status), status: res.status, error: `HTTP ${res.status}` };
    } catch (e) {
      outcome = { ok: false, permanent: false, error: describeFetchError(e) };
    }
    s.inflight.delete(lane);
    const now = this.now();
    if (outcome.ok || outcome.permanent) {
      const items = s.lanes.get(lane)!;
      items.shift();
      if (items.length === 0) s.lanes.delete(lane);
      item.status.state = outcome.ok ? 'delivered' : 'dead';
      item.status.lastStatus = outcome.status!;
      item.status.settledAt = now;
      delete item.status.nextAttemptAt;
      if (outcome.ok) {
        s.delivered++;
        s.failures = 0;
        s.nextAt = 0;
        s.lastError = null;
        this.o.metrics?.inc('soar_delivered_total');
        void this.journal.append({ t: 'a', id: item.ev.id, to: s.url, at: now }).catch((e: unknown) => this.ackFailed(e));
      } else {
        s.dead++;
        item.status.lastError = outcome.error;
        this.o.metrics?.inc('soar_dead_total');
        this.log.error({ url: s.url, type: item.ev.type, status: outcome.status }, 'webhook refused an event for good; it will not be retried');
        void this.journal.append({ t: 'd', id: item.ev.id, to: s.url, at: now, why: outcome.error }).catch((e: unknown) => this.ackFailed(e));
      }
      this.settle(item.status);
    } else {
      s.failures++;
      s.lastError = outcome.error;
      item.status.lastError = outcome.error;
      if (outcome.status !== undefined) item.status.lastStatus = outcome.status;
      const delay = backoffDelay(s.failures, this.o.backoff?.baseMs ?? 500, this.o.backoff?.maxMs ?? 60_000, this.random);
      s.nextAt = now + delay;
      item.status.nextAttemptAt = s.nextAt;
      this.o.metrics?.inc('soar_delivery_failures_total');
      this.log.warn({ url: s.url, error: outcome.error, failures: s.failures, retryInMs: delay }, 'webhook delivery failed; retrying');
    }
    this.pump(s);
    if (this.isIdle()) for (const w of this.idleWaiters.splice(0)) w();
  }

  private async sign(t: WebhookTarget, ev: OutboxEvent): Promise<string> {
    const iat = Math.floor(this.now() / 1000);
    const jwt = new SignJWT({ event: ev as unknown as Record<string, unknown> })
      .setProtectedHeader({ alg: 'EdDSA', kid: t.key.kid, typ: WEBHOOK_JWT_TYP })
      .setIssuer(this.o.issuer ?? 'portcullis')
      .setAudience(t.audience ?? t.url)
      .setIssuedAt(iat)
      .setExpirationTime(iat + WEBHOOK_TOKEN_LIFETIME_SEC)
      .setJti(ev.id);
    if (ev.sessionId) jwt.setSubject(ev.sessionId);
    return jwt.sign(t.key.privateKey);
  }

  private settle(st: DeliveryStatus): void {
    this.settled.push({ ...st });
    const keep = this.o.keepSettled ?? 1000;
    while (this.settled.length > keep) this.settled.shift();
    if (++this.settledSinceCompact >= (this.o.compactAfter ?? 1000)) {
      this.settledSinceCompact = 0;
      void this.journal.compact(this.pendingRecords()).catch((e: unknown) => this.log.warn({ err: (e as Error).message }, 'outbox compaction failed'));
    }
  }

  private ackFailed(e: unknown): void {
    this.o.metrics?.inc('soar_outbox_write_failed_total');
    this.log.error({ err: (e as Error).message }, 'could not record a settled delivery; it may be sent again after a restart');
  }

  private isIdle(): boolean {
    for (const s of this.targets.values()) if (s.target !== null && s.pending() > 0) return false;
    return true;
  }
}

function isPermanent(status: number): boolean {
  return status >= 400 && status < 500 && status !== 408 && status !== 425 && status !== 429;
}

function describeFetchError(e: unknown): string {
  const err = e as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (err?.name === 'TimeoutError') return 'timeout';
  return err?.cause?.code ?? err?.cause?.message ?? err?.message ?? 'error';
}

/** JSON-clean data with secret-looking keys redacted, bounded in size. */
function boundedData(data: Record<string, unknown>): Record<string, unknown> {
  const clean = redact(data ?? {}, 0) as Record<string, unknown>;
  const text = JSON.stringify(clean);
  return text.length <= MAX_DATA_BYTES ? clean : { truncated: true, bytes: text.length };
}

const SECRET_KEY = /^(secret|token|password|private_?key|authorization|credential|cookie|set-cookie|proxy-authorization)$/i;

function redact(v: unknown, depth: number): unknown {
  if (depth > 12) return '[too deep]';
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : redact(x, depth + 1)));
  if (typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (x === undefined || typeof x === 'function' || typeof x === 'symbol') continue;
      out[k] = SECRET_KEY.test(k) ? '[redacted]' : redact(x, depth + 1);
    }
    return out;
  }
  return null;
}
