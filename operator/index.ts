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
import { ReplayCache, SOAR_ADMIN_AUDIENCE, SoarAdmin } from './soar-in.js';
import { loadOrCreateWebhookKey, loadSoarAdminKeys, publishJwks, type SoarAdminTrust, type WebhookSigningKey } from './soar-keys.js';
import { SoarOutbox, type SoarOutboxOptions, type WebhookTarget } from './soar-out.js';
import { Tripwire, tripwireConfigOf } from './tripwire.js';

export { OperatorApi, isLoopback, type OperatorApiOptions, type SessionView, type PolicyStatusSource, type CaRotator } from './api.js';
export { OperatorClient, defaultSocketPath, OPERATOR_SOCKET_FILE, type OperatorClientOptions, type OperatorResponse } from './client.js';
export { Denylist, DENYLIST_FILE, type DenyEntry, type DenyKind, type SessionRevoker } from './denylist.js';
export { KillSwitch, type ActionActor, type ActionOptions, type KillAllResult, type KillResult, type OperatorSandbox, type SandboxOutcome } from './kill.js';
export { ADMIN_REFUSALS, AdminActionSchema, MAX_ADMIN_TOKEN_LIFETIME_SEC, REPLAY_FILE, ReplayCache, SOAR_ADMIN_AUDIENCE, SoarAdmin, type AdminRefusal } from './soar-in.js';
export {
  generateWebhookKey,
  loadOrCreateWebhookKey,
  loadSoarAdminKeys,
  publishJwks,
  SOAR_ADMIN_KEY_ISSUES,
  SOAR_JWKS_FILE,
  type SoarAdminKeyIssue,
  type SoarAdminTrust,
  type WebhookSigningKey,
} from './soar-keys.js';
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
   * More places that know live sessions, for kill-all (the MCP gateway's `liveSessions`, so MCP
   * sessions that have no sandbox yet are revoked too).
   */
  sessionSources?: (() => Iterable<string>)[];
  /** how often the SOAR admin JWKS files (`soar.admin.keys`) are re-read; default 10 s, 0 = never */
  soarAdminKeysEveryMs?: number;
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
  /** answers 404 while the policy has no `soar.admin` */
  soarAdmin: SoarAdmin;
  /** the SOAR admin trust now live (null: the admin API is off) */
  soarAdminTrust(): SoarAdminTrust | null;
  /** the webhook signers' public keys */
  webhookJwks(): JSONWebKeySet;
  /**
   * Apply a new policy: tripwire budgets, webhook list and keys, SOAR admin audience and keys.
   * Everything is loaded first; if anything fails (an unreadable or invalid admin JWKS: PolicyError
   * `policy_invalid` with a `soar_admin_*` issue) it throws and nothing changes.
   */
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
    // the SOAR admin trust first: a policy whose admin keys cannot be read does not start
    let adminTrust = await loadSoarAdminKeys(o.ir);
    let currentIr = o.ir;
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
      sessionSources: [() => tripwire.activeSessions(), ...(o.sessionSources ?? [])],
    });

    const replay = await ReplayCache.open(o.dataDir);
    closers.push(() => replay.close());
    const soarAdmin = new SoarAdmin({
      keys: () => adminTrust?.jwks ?? { keys: [] },
      audience: () => adminTrust?.audience ?? SOAR_ADMIN_AUDIENCE,
      keyName: (kid) => adminTrust?.keyNames.get(kid),
      enabled: () => adminTrust !== null,
      replay,
      kill,
      audit: o.audit,
      logger: o.logger,
      metrics: o.metrics,
    });
    const everyMs = o.soarAdminKeysEveryMs ?? 10_000;
    if (everyMs > 0) {
      // re-read on a timer so a rotated SOAR key takes effect without a policy change
      const t = setInterval(() => {
        const ir = currentIr;
        loadSoarAdminKeys(ir).then(
          (k) => {
            if (ir === currentIr) adminTrust = k;
          },
          (e: unknown) => {
            o.metrics.inc('soar_admin_keys_reload_failed_total');
            log.warn({ err: (e as Error).message }, 'SOAR admin JWKS unreadable or invalid; keeping the previous keys');
          },
        );
      }, everyMs);
      t.unref();
      closers.push(() => clearInterval(t));
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
      soarAdmin,
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
      soarAdminTrust: () => adminTrust,
      webhookJwks: () => jwks,
      async updatePolicy(ir: Ir) {
        // load everything that can fail before changing anything
        const trust = await loadSoarAdminKeys(ir);
        const t = await targetsOf(ir);
        const published = await publishJwks(o.dataDir, t.map((x) => x.key));
        tripwire.setConfig(tripwireConfigOf(ir));
        webhookKeys = t.map((x) => x.key);
        jwks = published.jwks;
        outbox.setTargets(t);
        adminTrust = trust;
        currentIr = ir;
      },
      close: closeAll,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}
