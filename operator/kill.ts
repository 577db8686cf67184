import { performance } from 'node:perf_hooks';
import { PortcullisError, isPortcullisError } from '../common/errors.js';
import type { EventSink } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import { apiActivity, type EndpointInput, type OcsfEvent } from '../audit/ocsf.js';
import { requireAudit, type AuditAppender } from '../audit/require-audit.js';
import type { SandboxService, SessionInfo } from '../sandbox/api.js';
import type { RevocationReason } from '../xds-server/sessions.js';
import type { DenyEntry, DenyKind, Denylist } from './denylist.js';

/**
 * The kill switch. Order, for one session or all of them:
 *   1. the attempt is audited (operator and SOAR actions fail closed: no audit record, no action);
 *   2. the session is denylisted — Envoy refuses its next tunnel from this moment, the gateway
 *      refuses its MCP calls, no credential is minted or injected for it; the deny route that
 *      refuses its next request inside an open bumped tunnel is published at once;
 *   3. only then the supervisor tears the sandbox down (ordered teardown), which also closes every
 *      connection the sandbox still holds; meanwhile the edge confirms it holds the deny routes
 *      (`edgeEnforced`: the call returns only after both);
 *   4. the outcome is audited, a `session.killed` event emitted.
 * Protective kills (the exfil tripwire) do not wait for the audit log: they revoke first and
 * record afterwards, because refusing to stop an exfiltration for want of a log line is worse.
 */

/** The supervisor as the operator plane uses it; `quarantine` is optional (see `quarantine`). */
export type OperatorSandbox = Pick<SandboxService, 'listSessions' | 'getSession' | 'destroySession'> & {
  quarantine?(sessionId: string, reason: string): Promise<void>;
};

export interface ActionActor {
  /** `operator:<name>`, `soar:<client>`, `tripwire` */
  id: string;
  type: 'admin' | 'soar' | 'system';
  name?: string;
}

export interface ActionOptions {
  actor: ActionActor;
  /** free text kept with the denylist entry and the audit record */
  note?: string;
  requestId?: string;
  src?: EndpointInput;
  /** default true; false only for protective, automatic kills */
  failClosed?: boolean;
  /** what Envoy answers the session with from now on (default `session_revoked`) */
  denyReason?: RevocationReason;
}

export type SandboxOutcome = 'destroyed' | 'already_gone' | 'not_found' | 'no_supervisor' | 'quarantined' | 'kept';

export interface KillResult {
  sessionId: string;
  /** false when the session was denied before (its first entry stays) */
  newlyDenied: boolean;
  deny: DenyEntry;
  sandbox: SandboxOutcome;
  /** ms from the call to the revocation at every enforcer */
  revokeMs: number;
  /** every enforcer that can tell confirmed the revocation is in force (Envoy holds the deny routes) */
  edgeEnforced: boolean;
  /** ms spent in the supervisor's teardown */
  teardownMs: number;
  totalMs: number;
}

export interface KillAllResult {
  sessions: KillResult[];
  failed: { sessionId: string; code: string }[];
  /** ms from the call until every session was revoked */
  revokeAllMs: number;
  /** see KillResult.edgeEnforced */
  edgeEnforced: boolean;
  totalMs: number;
}

export interface KillSwitchOptions {
  denylist: Denylist;
  sandbox?: OperatorSandbox;
  audit: AuditAppender;
  events: EventSink;
  metrics: Metrics;
  logger: Logger;
  /** more places that know live sessions (the tripwire's recent ones, the edge's …) for kill-all */
  sessionSources?: (() => Iterable<string>)[];
  /** monotonic ms, for latencies */
  now?: () => number;
  /** wall clock for audit records */
  clock?: () => number;
  /** parallel teardowns during kill-all (default 8) */
  teardownConcurrency?: number;
}

const LIVE_STATES: ReadonlySet<SessionInfo['state']> = new Set(['creating', 'ready', 'quarantined']);
const KEEP_SAMPLES = 1000;

export class KillSwitch {
  private readonly now: () => number;
  private readonly clock: () => number;
  private readonly log: Logger;
  private readonly samples: number[] = [];

  constructor(private readonly o: KillSwitchOptions) {
    this.now = o.now ?? (() => performance.now());
    this.clock = o.clock ?? Date.now;
    this.log = o.logger.child({ component: 'kill-switch' });
  }

  get sandbox(): OperatorSandbox | undefined {
    return this.o.sandbox;
  }

  /** Kill latencies (ms, call → done) of the recent kills, oldest first. */
  latencies(): number[] {
    return [...this.samples];
  }

  async kill(sessionId: string, opts: ActionOptions): Promise<KillResult> {
    const t0 = this.now();
    const reason = opts.denyReason ?? 'session_revoked';
    const kind: DenyKind = reason === 'exfil_budget_exceeded' ? 'exfil' : 'kill';
    const act = async (): Promise<KillResult> => {
      const d = this.deny(sessionId, kind, reason, opts);
      const revokeMs = this.now() - t0;
      const t1 = this.now();
      const edge = this.edgeEnforced();
      const sandbox = await this.teardown(sessionId, reason === 'exfil_budget_exceeded' ? 'exfil_budget_exceeded' : 'operator_kill');
      const teardownMs = this.now() - t1;
      const edgeEnforced = await edge;
      await d.persisted;
      const totalMs = this.now() - t0;
      this.record(totalMs);
      this.o.events.emit({
        type: 'session.killed',
        severity: 'warning',
        source: 'operator',
        sessionId,
        data: { actor: opts.actor.id, reason, sandbox, edgeEnforced, revokeMs: round(revokeMs), totalMs: round(totalMs) },
      });
      return { sessionId, newlyDenied: d.added, deny: d.entry, sandbox, revokeMs, edgeEnforced, teardownMs, totalMs };
    };
    return this.audited(this.event('session.kill', 'delete', { type: 'session', id: sessionId }, opts, sessionId), act, opts);
  }

  /** Every live session: all revoked first, then torn down in parallel. */
  async killAll(opts: ActionOptions): Promise<KillAllResult> {
    const t0 = this.now();
    const act = async (): Promise<KillAllResult> => {
      const ids = this.liveSessions();
      const revoked = ids.map((id) => ({ id, d: this.deny(id, 'kill', 'session_revoked', opts) }));
      const revokeAllMs = this.now() - t0;
      const edge = this.edgeEnforced();
      const tornDown: Omit<KillResult, 'edgeEnforced'>[] = [];
      const failed: { sessionId: string; code: string }[] = [];
      let next = 0;
      const worker = async () => {
        while (next < revoked.length) {
          const { id, d } = revoked[next++]!;
          const t1 = this.now();
          try {
            const sandbox = await this.teardown(id, 'operator_kill_all');
            const teardownMs = this.now() - t1;
            tornDown.push({ sessionId: id, newlyDenied: d.added, deny: d.entry, sandbox, revokeMs: revokeAllMs, teardownMs, totalMs: this.now() - t0 });
          } catch (e) {
            failed.push({ sessionId: id, code: isPortcullisError(e) ? e.code : 'internal' });
          }
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, this.o.teardownConcurrency ?? 8) }, worker));
      const edgeEnforced = await edge;
      const sessions: KillResult[] = tornDown.map((r) => ({ ...r, edgeEnforced }));
      await Promise.all(revoked.map((r) => r.d.persisted));
      const totalMs = this.now() - t0;
      this.record(totalMs);
      this.o.events.emit({
        type: 'session.killed_all',
        severity: 'warning',
        source: 'operator',
        data: { actor: opts.actor.id, sessions: ids.length, failed: failed.length, edgeEnforced, revokeAllMs: round(revokeAllMs), totalMs: round(totalMs) },
      });
      if (failed.length) {
        throw new PortcullisError('sandbox_failed', `${failed.length} of ${ids.length} sandboxes could not be torn down (all were revoked)`, {
          details: { failed, revoked: ids.length },
        });
      }
      return { sessions, failed, revokeAllMs, edgeEnforced, totalMs };
    };
    return this.audited(this.event('session.kill_all', 'delete', { type: 'session', id: '*' }, opts), act, opts);
  }

  /**
   * Cut the session's egress and keep its sandbox for forensics: the session is denylisted, and the
   * supervisor's own `quarantine` (network cut, processes frozen) runs when it has one.
   */
  async quarantine(sessionId: string, opts: ActionOptions): Promise<{ sessionId: string; deny: DenyEntry; newlyDenied: boolean; sandbox: SandboxOutcome; edgeEnforced: boolean }> {
    const act = async () => {
      const d = this.deny(sessionId, 'quarantine', 'session_revoked', opts);
      const edge = this.edgeEnforced();
      let sandbox: SandboxOutcome = 'no_supervisor';
      const sb = this.o.sandbox;
      if (sb) {
        const info = sb.getSession(sessionId);
        if (!info) sandbox = 'not_found';
        else if (!LIVE_STATES.has(info.state)) sandbox = 'already_gone';
        else if (sb.quarantine) {
          await sb.quarantine(sessionId, opts.note ?? 'operator_quarantine');
          sandbox = 'quarantined';
        } else sandbox = 'kept';
      }
      const edgeEnforced = await edge;
      await d.persisted;
      this.o.events.emit({ type: 'session.quarantined', severity: 'warning', source: 'operator', sessionId, data: { actor: opts.actor.id, sandbox, edgeEnforced } });
      return { sessionId, deny: d.entry, newlyDenied: d.added, sandbox, edgeEnforced };
    };
    return this.audited(this.event('session.quarantine', 'update', { type: 'session', id: sessionId }, opts, sessionId), act, opts);
  }

  /** Denylist only: the session's credentials stop working; the sandbox is left alone. */
  async revoke(sessionId: string, opts: ActionOptions): Promise<{ sessionId: string; deny: DenyEntry; newlyDenied: boolean; edgeEnforced: boolean }> {
    const act = async () => {
      const d = this.deny(sessionId, 'revoke', opts.denyReason ?? 'session_revoked', opts);
      const edgeEnforced = await this.edgeEnforced();
      await d.persisted;
      this.o.events.emit({ type: 'session.revoked', severity: 'warning', source: 'operator', sessionId, data: { actor: opts.actor.id, edgeEnforced } });
      return { sessionId, deny: d.entry, newlyDenied: d.added, edgeEnforced };
    };
    return this.audited(this.event('session.revoke', 'update', { type: 'session', id: sessionId }, opts, sessionId), act, opts);
  }

  /** The enforcers' confirmation (Denylist.enforced never throws); an unconfirmed edge is logged and counted. */
  private async edgeEnforced(): Promise<boolean> {
    const ok = await this.o.denylist.enforced();
    if (!ok) {
      this.o.metrics.inc('operator_edge_unconfirmed_total');
      this.log.warn('the edge did not confirm the revocation in time: open tunnels are cut by teardown, new ones are refused');
    }
    return ok;
  }

  /** Sessions a kill-all must reach: the supervisor's live ones and every other source's. */
  liveSessions(): string[] {
    const ids = new Set<string>();
    for (const s of this.o.sandbox?.listSessions() ?? []) if (LIVE_STATES.has(s.state)) ids.add(s.sessionId);
    for (const src of this.o.sessionSources ?? []) {
      try {
        // sessions only the edge knows: nothing to do for those already denied
        for (const id of src()) if (!this.o.denylist.has(id)) ids.add(id);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'a session source failed during kill-all');
      }
    }
    return [...ids];
  }

  // -------------------------------------------------------------------------------------------

  private deny(sessionId: string, kind: DenyKind, reason: RevocationReason, opts: ActionOptions) {
    return this.o.denylist.add({ sessionId, reason, kind, actor: opts.actor.id, ...(opts.note ? { note: opts.note.slice(0, 512) } : {}) });
  }

  private async teardown(sessionId: string, reason: string): Promise<SandboxOutcome> {
    const sb = this.o.sandbox;
    if (!sb) return 'no_supervisor';
    const info = sb.getSession(sessionId);
    if (!info) return 'not_found';
    if (!LIVE_STATES.has(info.state)) return 'already_gone';
    try {
      await sb.destroySession(sessionId, reason);
    } catch (e) {
      throw new PortcullisError('sandbox_failed', `teardown of the session's sandbox failed (the session is revoked)`, {
        cause: e,
        details: { revoked: true },
      });
    }
    return 'destroyed';
  }

  private record(ms: number): void {
    this.samples.push(ms);
    if (this.samples.length > KEEP_SAMPLES) this.samples.shift();
    this.o.metrics.inc('operator_kills_total');
    this.o.metrics.set('operator_kill_last_ms', round(ms));
  }

  private event(operation: string, activity: 'delete' | 'update', resource: { type: string; id: string }, opts: ActionOptions, sessionId?: string): OcsfEvent {
    return apiActivity({
      time: this.clock(),
      actor: { id: opts.actor.id.slice(0, 1024), type: opts.actor.type, ...(opts.actor.name ? { name: opts.actor.name.slice(0, 1024) } : {}) },
      outcome: 'attempt',
      severity: 'high',
      activity,
      operation,
      service: 'operator',
      resource: { type: resource.type, id: resource.id.slice(0, 1024) },
      ...(sessionId ? { sessionId: sessionId.slice(0, 256) } : {}),
      ...(opts.requestId ? { requestId: opts.requestId.slice(0, 256) } : {}),
      ...(opts.src ? { src: opts.src } : {}),
      ...(opts.note ? { message: opts.note.slice(0, 4096) } : {}),
      ...(opts.denyReason ? { unmapped: { deny_reason: opts.denyReason } } : {}),
    });
  }

  private async audited<T>(event: OcsfEvent, act: () => Promise<T>, opts: ActionOptions): Promise<T> {
    if (opts.failClosed !== false) return requireAudit(this.o.audit, event, act, { clock: this.clock });
    // protective: act first, record afterwards (best effort, failures counted)
    let result: T;
    try {
      result = await act();
    } catch (e) {
      this.appendLater({ ...event, status_id: 2, status: 'Failure', status_detail: isPortcullisError(e) ? e.code : 'error' });
      throw e;
    }
    this.appendLater({ ...event, status_id: 1, status: 'Success' });
    return result;
  }

  private appendLater(e: OcsfEvent): void {
    this.o.audit.append({ ...e, time: this.clock() }).catch((err: unknown) => {
      this.o.metrics.inc('operator_audit_failed_total');
      this.log.error({ err: (err as Error).message, operation: (e.api as { operation?: string } | undefined)?.operation }, 'audit of a protective action failed');
    });
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
