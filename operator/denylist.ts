import { join } from 'node:path';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { RevocationReason } from '../xds-server/sessions.js';
import { Journal } from './journal.js';

/**
 * The session denylist. Adding a session revokes it at every enforcer at once (synchronously,
 * before anything else happens): the egress edge (`JwtSessions`: the control plane publishes the
 * RBAC policy that refuses the session's next tunnel and the deny route that refuses its next request
 * inside a bumped tunnel, and `enforced()` confirms Envoy holds them), the supervisor's credential
 * issuer, and whoever else registered. The list is persisted (`operator-denylist.jsonl` in the
 * data dir) and re-applied on start, so a restart does not re-open a killed session.
 */

export const DENYLIST_FILE = 'operator-denylist.jsonl';
export const DEFAULT_DENYLIST_RETENTION_MS = 24 * 3600_000;

export type DenyKind = 'kill' | 'quarantine' | 'revoke' | 'exfil';

export interface DenyEntry {
  sessionId: string;
  /** the reason Envoy and the gateway answer with */
  reason: RevocationReason;
  kind: DenyKind;
  /** who did it: `operator:…`, `soar:…`, `tripwire` */
  actor: string;
  /** ms since the epoch */
  at: number;
  note?: string;
}

/** Anything that can refuse a session from now on (JwtSessions, SessionCredentials, the gateway …). */
export interface SessionRevoker {
  revoke(sessionId: string, reason?: RevocationReason): void;
  /**
   * For an enforcer that applies a revocation elsewhere (the egress edge: Envoy refuses the session
   * inside open tunnels once it holds the new routes): resolves true once every revocation so far
   * is in force there, false when that is not confirmed within the enforcer's own bound.
   */
  enforced?(): Promise<boolean>;
}

export interface DenylistOptions {
  /** directory of the journal; omitted: in memory only */
  dataDir?: string;
  enforcers?: SessionRevoker[];
  logger: Logger;
  metrics?: Metrics;
  clock?: () => number;
  /** entries older than this are dropped at open (session credentials live ≤ 1 h); default 24 h */
  retentionMs?: number;
}

export class Denylist {
  private readonly entries = new Map<string, DenyEntry>();
  private readonly enforcers: SessionRevoker[];
  private readonly clock: () => number;
  private readonly log: Logger;

  private constructor(
    private readonly o: DenylistOptions,
    private readonly journal: Journal<DenyEntry> | null,
  ) {
    this.enforcers = [...(o.enforcers ?? [])];
    this.clock = o.clock ?? Date.now;
    this.log = o.logger.child({ component: 'denylist' });
  }

  static async open(o: DenylistOptions): Promise<Denylist> {
    if (!o.dataDir) return new Denylist(o, null);
    const { journal, records } = await Journal.open<DenyEntry>(join(o.dataDir, DENYLIST_FILE));
    const d = new Denylist(o, journal);
    const horizon = d.clock() - (o.retentionMs ?? DEFAULT_DENYLIST_RETENTION_MS);
    for (const r of records) {
      if (typeof r?.sessionId !== 'string' || typeof r.at !== 'number' || r.at < horizon) continue;
      if (!d.entries.has(r.sessionId)) d.entries.set(r.sessionId, r);
    }
    if (records.length > d.entries.size) await journal.compact([...d.entries.values()]);
    for (const e of d.entries.values()) d.enforce(e);
    return d;
  }

  /** Register another enforcer; every session already denied is revoked there too. */
  addEnforcer(e: SessionRevoker): void {
    this.enforcers.push(e);
    for (const x of this.entries.values()) this.apply(e, x);
  }

  /**
   * Deny a session. Every enforcer is told before this returns its promise; the promise resolves
   * once the entry is persisted. A session already denied keeps its first entry (returned, with
   * `added: false`).
   */
  add(input: Omit<DenyEntry, 'at'> & { at?: number }): { entry: DenyEntry; added: boolean; persisted: Promise<boolean> } {
    const existing = this.entries.get(input.sessionId);
    if (existing) return { entry: existing, added: false, persisted: Promise.resolve(true) };
    const entry: DenyEntry = { ...input, at: input.at ?? this.clock() };
    if (entry.note === undefined) delete entry.note;
    this.entries.set(entry.sessionId, entry);
    this.enforce(entry);
    this.o.metrics?.inc('operator_denylist_added_total', { kind: entry.kind });
    const persisted = this.journal
      ? this.journal.append(entry).then(
          () => true,
          (e: unknown) => {
            this.o.metrics?.inc('operator_denylist_persist_failed_total');
            this.log.error({ err: (e as Error).message }, 'denylist entry could not be persisted; it is enforced until restart');
            return false;
          },
        )
      : Promise.resolve(true);
    return { entry, added: true, persisted };
  }

  has(sessionId: string): boolean {
    return this.entries.has(sessionId);
  }

  /** True once every enforcer that can tell confirms the revocations so far are in force; never rejects. */
  async enforced(): Promise<boolean> {
    const confirm = this.enforcers.filter((e) => e.enforced).map((e) => Promise.resolve().then(() => e.enforced!()).catch(() => false));
    return (await Promise.all(confirm)).every(Boolean);
  }

  get(sessionId: string): DenyEntry | undefined {
    return this.entries.get(sessionId);
  }

  /** Newest first. */
  list(): DenyEntry[] {
    return [...this.entries.values()].sort((a, b) => b.at - a.at);
  }

  async close(): Promise<void> {
    await this.journal?.close();
  }

  private enforce(e: DenyEntry): void {
    for (const x of this.enforcers) this.apply(x, e);
  }

  private apply(x: SessionRevoker, e: DenyEntry): void {
    try {
      x.revoke(e.sessionId, e.reason);
    } catch (err) {
      this.o.metrics?.inc('operator_denylist_enforcer_failed_total');
      this.log.error({ err: (err as Error).message }, 'an enforcer failed to revoke a session');
    }
  }
}
