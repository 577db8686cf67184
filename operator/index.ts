import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { JSONWebKeySet } from 'jose';
import type { EventBus } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import type { AuditAppender } from '../audit/require-audit.js';
import type { Ir } from '../policy/ir.js';
import { OperatorApi, type CaRotator, type PolicyStatusSource } from './api.js';
import { OPERATOR_SOCKET_FILE } from './client.js';
import { Denylist, type SessionRevoker } from './denylist.js';
import { KillSwitch, type OperatorSandbox } from './kill.js';
import { ReplayCache, SoarAdmin } from './soar-in.js';
import { loadOrCreateWebhookKey, publishJwks, type WebhookSigningKey } from './soar-keys.js';
import { SoarOutbox, type SoarOutboxOptions, type WebhookTarget } from './soar-out.js';
import { Tripwire, tripwireConfigOf } from './tripwire.js';

export { OperatorApi, isLoopback, type OperatorApiOptions, type SessionView, type PolicyStatusSource, type CaRotator } from './api.js';
export { OperatorClient, defaultSocketPath, OPERATOR_SOCKET_FILE, type OperatorClientOptions, type OperatorResponse } from './client.js';
export { Denylist, DENYLIST_FILE, type DenyEntry, type DenyKind, type SessionRevoker } from './denylist.js';
export { KillSwitch, type ActionActor, type ActionOptions, type KillAllResult, type KillResult, type OperatorSandbox, type SandboxOutcome } from './kill.js';
export { ADMIN_REFUSALS, AdminActionSchema, MAX_ADMIN_TOKEN_LIFETIME_SEC, REPLAY_FILE, ReplayCache, SOAR_ADMIN_AUDIENCE, SoarAdmin, type AdminRefusal } from './soar-in.js';
export { generateWebhookKey, loadOrCreateWebhookKey, publishJwks, SOAR_JWKS_FILE, type WebhookSigningKey } from './soar-keys.js';
export { backoffDelay, OUTBOX_FILE, SOAR_EVENT_TYPES, SoarOutbox, WEBHOOK_JWT_TYP, type DeliveryStatus, type OutboxEvent, type WebhookTarget } from './soar-out.js';
export { normalizeAuthority, Tripwire, tripwireConfigOf, type TripInfo, type TripwireConfig } from './tripwire.js';

export const ENVOY_ALS_DROPPED_STAT = 'access_logs.grpc_access_log.logs_dropped';

export interface OperatorPlaneOptions {
  /** operator state: socket, outbox, replay cache, denylist, webhook JWKS (created 0700) */
  dataDir: string;
  logger: Logger;
  events: EventBus;
  metrics: Metrics;
  audit: AuditAppender;
  /** the compiled policy: tripwire budgets, webhooks */
  ir: Ir;
  /** the control plane (policy status) */
  controlPlane?: PolicyStatusSource;
  /** the egress edge's session authority (`JwtSessions`) and any other revoker (supervisor credentials …) */
  revokers?: SessionRevoker[];
  supervisor?: OperatorSandbox;
  minter?: CaRotator;
  /**
   * Public keys of the SOAR platform for admin calls (the policy has no field for them yet): a
   * JWKS, or a JWKS file re-read on every call. Without them the admin API answers 404.
   */
  soarAdminKeys?: JSONWebKeySet | string;
  soarAdminAudience?: string;
  /** default `<dataDir>/operator.sock` */
  socketPath?: string;
  tcp?: { host?: string; port: number; token: string };
  /** Envoy admin stats, polled for the ALS drop counter */
  envoyStats?: () => Promise<Record<string, number>>;
  envoyStatsEveryMs?: number;
  outbox?: Pick<SoarOutboxOptions, 'backoff' | 'timeoutMs' | 'concurrency' | 'fetch' | 'issuer'>;
  tripwire?: { lanes?: readonly string[]; staleStreamMs?: number; sweepEveryMs?: number };
}

export interface OperatorPlane {
  api: OperatorApi;
  denylist: Denylist;
  kill: KillSwitch;
  outbox: SoarOutbox;
  tripwire: Tripwire;
  soarAdmin: SoarAdmin | null;
  /** the webhook signers' public keys */
  webhookJwks(): JSONWebKeySet;
  /** apply a new policy: tripwire budgets, webhook list and keys */
  updatePolicy(ir: Ir): Promise<void>;
  close(): Promise<void>;
}

/**
 * Start the operator plane inside the control-plane process (`portcullis up` calls this after the
 * audit writer and the control plane are up). Everything it owns is closed by `close()`.
 */
export async function startOperatorPlane(o: OperatorPlaneOptions): Promise<OperatorPlane> {
  const log = o.logger.child({ component: 'operator' });
  const closers: (() => Promise<void> | void)[] = [];
  const closeAll = async () => {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch((e: unknown) => log.warn({ err: (e as Error).message }, 'operator plane close step failed'));
  };
  try {
    const denylist = await Denylist.open({ dataDir: o.dataDir, enforcers: o.revokers ?? [], logger: o.logger, metrics: o.metrics });
    closers.push(() => denylist.close());

    let webhookKeys: WebhookSigningKey[] = [];
    let jwks: JSONWebKeySet = { keys: [] };
    const targetsOf = async (ir: Ir): Promise<WebhookTarget[]> => {
      const out: WebhookTarget[] = [];
      for (const w of ir.soar.webhooks) out.push({ url: w.url, key: await loadOrCreateWebhookKey(w.signingKeyFile, log) });
      return out;
    };
    const targets = await targetsOf(o.ir);
    webhookKeys = targets.map((t) => t.key);
    jwks = (await publishJwks(o.dataDir, webhookKeys)).jwks;

    const outbox = await SoarOutbox.open({ dataDir: o.dataDir, logger: o.logger, metrics: o.metrics, targets, ...(o.outbox ?? {}) });
    closers.push(() => outbox.close());
    closers.push(outbox.attach(o.events));

    let kill!: KillSwitch;
    const tripwire = new Tripwire({
      config: tripwireConfigOf(o.ir),
      events: o.events,
      metrics: o.metrics,
      logger: o.logger,
      ...(o.tripwire?.lanes ? { lanes: o.tripwire.lanes } : {}),
      ...(o.tripwire?.staleStreamMs !== undefined ? { staleStreamMs: o.tripwire.staleStreamMs } : {}),
      onKill: (info) =>
        kill.kill(info.sessionId, {
          actor: { id: 'tripwire', type: 'system' },
          denyReason: 'exfil_budget_exceeded',
          failClosed: false,
          note: `${info.trigger} budget exceeded: ${info.bytes} bytes, ${info.destinations} destinations in ${info.config.windowSeconds} s`,
        }),
    });
    closers.push(tripwire.attach(o.events, o.tripwire?.sweepEveryMs ?? 1000));

    kill = new KillSwitch({
      denylist,
      ...(o.supervisor ? { sandbox: o.supervisor } : {}),
      audit: o.audit,
      events: o.events,
      metrics: o.metrics,
      logger: o.logger,
      sessionSources: [() => tripwire.activeSessions()],
    });

    let soarAdmin: SoarAdmin | null = null;
    if (o.soarAdminKeys !== undefined) {
      const replay = await ReplayCache.open(o.dataDir);
      closers.push(() => replay.close());
      const src = o.soarAdminKeys;
      let fileKeys: JSONWebKeySet = { keys: [] };
      if (typeof src === 'string') fileKeys = await readJwksFile(src);
      soarAdmin = new SoarAdmin({
        keys: () => (typeof src === 'string' ? fileKeys : src),
        ...(o.soarAdminAudience ? { audience: o.soarAdminAudience } : {}),
        replay,
        kill,
        audit: o.audit,
        logger: o.logger,
        metrics: o.metrics,
      });
      if (typeof src === 'string') {
        // re-read on a timer so a rotated SOAR key takes effect without a restart
        const t = setInterval(() => {
          readJwksFile(src).then(
            (k) => (fileKeys = k),
            (e: unknown) => log.warn({ err: (e as Error).message }, 'SOAR admin JWKS unreadable; keeping the previous keys'),
          );
        }, 10_000);
        t.unref();
        closers.push(() => clearInterval(t));
      }
    }

    if (o.envoyStats) {
      const poll = () =>
        o.envoyStats!().then(
          (s) => {
            let n = 0;
            for (const [k, v] of Object.entries(s)) if (k === ENVOY_ALS_DROPPED_STAT || k.endsWith(`.${ENVOY_ALS_DROPPED_STAT}`)) n += v;
            tripwire.setEnvoyDropped(n);
          },
          () => o.metrics.inc('tripwire_envoy_stats_failed_total'),
        );
      const t = setInterval(poll, o.envoyStatsEveryMs ?? 5000);
      t.unref();
      closers.push(() => clearInterval(t));
    }

    const api = await OperatorApi.start({
      kill,
      denylist,
      audit: o.audit,
      logger: o.logger,
      metrics: o.metrics,
      events: o.events,
      outbox,
      webhookJwks: () => jwks,
      tripwire,
      ...(o.controlPlane ? { policy: o.controlPlane } : {}),
      ...(soarAdmin ? { soarAdmin } : {}),
      ...(o.minter ? { minter: o.minter } : {}),
      socketPath: o.socketPath ?? join(o.dataDir, OPERATOR_SOCKET_FILE),
      ...(o.tcp ? { tcp: o.tcp } : {}),
    });
    closers.push(() => api.close());

    return {
      api,
      denylist,
      kill,
      outbox,
      tripwire,
      soarAdmin,
      webhookJwks: () => jwks,
      async updatePolicy(ir: Ir) {
        tripwire.setConfig(tripwireConfigOf(ir));
        const t = await targetsOf(ir);
        webhookKeys = t.map((x) => x.key);
        jwks = (await publishJwks(o.dataDir, webhookKeys)).jwks;
        outbox.setTargets(t);
      },
      close: closeAll,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

async function readJwksFile(file: string): Promise<JSONWebKeySet> {
  const v = JSON.parse(await readFile(file, 'utf8')) as JSONWebKeySet;
  if (!Array.isArray(v?.keys)) throw new Error(`${file} is not a JWKS (no "keys" array)`);
  return v;
}
