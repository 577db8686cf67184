import type { Logger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { EventBus } from '../common/events.js';
import { PortcullisError, ResourceInvalidError } from '../common/errors.js';
import type { Ir } from '../policy/ir.js';
import { XdsServer } from './server.js';
import { SnapshotCache, type NackRecord } from './cache.js';
import { buildSnapshot, SnapshotInconsistentError, type Snapshot } from './snapshot.js';
import { translate, type TranslateOptions } from './translate/index.js';
import { AccessLogReceiver } from './als.js';
import fs from 'node:fs';
import { AuthzRouter } from './authz-router.js';
import type { RevocationReason, SessionAuthority, SessionDenialEntry } from './sessions.js';
import { bumpSecretNames, credentialSecretName } from './translate/bump.js';
import { allowListPolicy, MintRefusedError, type Minter } from '../sds-minter/index.js';
import { XDS } from '../envoy/api/type-urls.js';
import { setBounded } from '../common/bounded.js';

/** Distinct SNIs served on demand (wildcard bump rules) before new names are refused. */
export const MAX_ON_DEMAND_LEAVES = 1024;
/** A host name as an SNI (no `leaf:`/`cred:` prefixes, no IP literal forms with colons). */
const ON_DEMAND_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\.?$/;

/**
 * The control plane: owns the xDS server and the snapshot cache, turns a compiled policy (IR) into
 * a validated snapshot and publishes it. A policy that does not translate, or whose resources fail
 * pre-push validation, is refused: the last good snapshot stays live, and the refusal is reported
 * (log, `config.reload_refused` event, `status()`).
 */

export interface ControlPlaneOptions {
  logger: Logger;
  events?: EventBus;
  metrics?: Metrics;
  /** snapshot key: an Envoy node id, or `cluster:<name>` for every Envoy of a node cluster */
  nodeKey: string;
  translate: TranslateOptions;
  holdOffMs?: number;
  /** clusters that live in Envoy's bootstrap (xDS, ext_authz, ALS) */
  staticClusters?: readonly string[];
  /** needed for the bump / external-sds rungs: session checks and the per-SNI leaves */
  bump?: { sessions: SessionAuthority; minter: Minter };
}

export interface RefusedReload {
  at: string;
  code: string;
  message: string;
}

export interface ControlPlaneStatus {
  liveVersion: string | null;
  lastNack: NackRecord | null;
  lastRefused: RefusedReload | null;
  xdsAddress: string | null;
}

export class ControlPlane {
  readonly events: EventBus;
  readonly metrics: Metrics;
  readonly server: XdsServer;
  private readonly log: Logger;
  private live?: Snapshot;
  private lastRefused: RefusedReload | null = null;

  constructor(private readonly o: ControlPlaneOptions) {
    this.events = o.events ?? new EventBus();
    this.metrics = o.metrics ?? new Metrics();
    this.log = o.logger.child({ component: 'control-plane' });
    this.server = new XdsServer({
      logger: o.logger,
      events: this.events,
      metrics: this.metrics,
      cache: new SnapshotCache({ holdOffMs: o.holdOffMs ?? 50 }),
    });
    // Envoy's access logs come back over the same gRPC server (cluster `portcullis_xds`).
    this.als = new AccessLogReceiver({ logger: o.logger, metrics: this.metrics, events: this.events });
    this.als.register(this.server);
    // One ext_authz service for every listener; lanes are added by the parts that need them.
    this.authz = new AuthzRouter(o.logger);
    this.authz.register(this.server);
    if (o.bump) this.server.cache.onMissing((key, typeUrl, names) => this.onMissingSecrets(key, typeUrl, names));
    // a revoked session is refused by Envoy at its next tunnel and its next request inside an open
    // bumped tunnel, from what we publish: publish again on every revocation (and new signer keys)
    this.unsubscribe = o.bump?.sessions.onChange?.(() => this.sessionsChanged());
    this.server.cache.onAck((a) => {
      if (a.key !== this.o.nodeKey || a.typeUrl !== XDS.route) return;
      this.routeAcks.set(a.nodeId, a.version);
      for (const w of [...this.ackWaiters]) w();
    });
  }

  /** Publication order of each snapshot version (identical content has one version: its latest). */
  private readonly versionSeq = new Map<string, number>();
  private seq = 0;
  /** The publication where the set of session denials last changed, and that set. */
  private denialsSeq = 0;
  private denialsKey = '[]';
  /** The route version each Envoy of this node key last acknowledged. */
  private readonly routeAcks = new Map<string, string>();
  private readonly ackWaiters = new Set<() => void>();

  /**
   * The egress edge as one revoker (for the operator's denylist): the session authority records the
   * revocation, the published routes refuse the session's next tunnel and its next request inside an
   * open bumped tunnel, and `enforced()` confirms every Envoy holds those routes.
   */
  edgeRevoker(): { revoke(sessionId: string, reason?: RevocationReason): void; enforced(): Promise<boolean> } {
    const sessions = this.o.bump?.sessions;
    if (!sessions?.revoke) throw new PortcullisError('internal', 'the control plane has no session authority that can revoke');
    return { revoke: (id, reason) => sessions.revoke!(id, reason), enforced: () => this.sessionDenialsEnforced() };
  }

  private routesCarryDenials(): boolean {
    if (!this.routeAcks.size) return false;
    for (const v of this.routeAcks.values()) if ((this.versionSeq.get(v) ?? 0) < this.denialsSeq) return false;
    return true;
  }

  /**
   * Resolves true once every Envoy of this node key has acknowledged routes that carry the current
   * session denials (so a revoked session is refused inside its open tunnels from then on); false
   * when that is not confirmed within `timeoutMs` (an Envoy disconnected, none connected yet).
   */
  async sessionDenialsEnforced(timeoutMs = 2000): Promise<boolean> {
    if (this.denialsPending) this.publishSessionDenials();
    if (this.routesCarryDenials()) return true;
    return new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.ackWaiters.delete(check);
        resolve(ok);
      };
      const check = () => {
        if (this.routesCarryDenials()) done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      timer.unref();
      this.ackWaiters.add(check);
    });
  }

  private readonly unsubscribe: (() => void) | undefined;
  private readonly als: AccessLogReceiver;
  private denialsPending = false;

  /** Session changes come in bursts (kill-all): one publication per turn of the event loop. */
  private sessionsChanged(): void {
    if (this.denialsPending) return;
    this.denialsPending = true;
    setImmediate(() => this.publishSessionDenials());
  }

  /**
   * Publish the current session denials now (with the policy and secrets already live: nothing is
   * read again, so a bad credential file cannot hold a revocation back). Returns the snapshot that
   * carries them, or undefined when nothing is live yet.
   */
  publishSessionDenials(): Snapshot | undefined {
    this.denialsPending = false;
    if (!this.lastIr || !this.lastSecrets) return undefined;
    try {
      const snap = this.publish(this.lastIr, this.lastSecrets, true);
      this.metrics.inc('session_denials_published_total');
      return snap;
    } catch (e) {
      // the last good snapshot stays live (the same policy and secrets with one more denial cannot
      // fail to translate unless something is badly wrong): the kill switch's teardown still cuts the
      // session's sandbox, and `enforced()` reports the edge unconfirmed
      this.metrics.inc('session_denials_publish_failed_total');
      this.log.error({ err: (e as Error).message }, 'session denials could not be published');
      return undefined;
    }
  }

  private denials(): SessionDenialEntry[] {
    return this.o.bump?.sessions.denials?.() ?? [];
  }

  /** SNIs Envoy's on-demand certificate selector asked for (wildcard bump rules), bounded. */
  private readonly onDemand = new Set<string>();
  private lastIr?: Ir;

  /**
   * Envoy asks for a secret the snapshot lacks: for a wildcard bump rule, the secret name is the
   * guest's SNI. Mint a leaf that covers it (only if the policy allows it at a bump rung) and publish
   * at once, so the paused handshake resumes with it. Anything else stays missing: it is never
   * answered, so the handshake waiting on it fails at the client's timeout, and nothing is ever issued
   * for a name the policy does not allow.
   */
  private onMissingSecrets(key: string, typeUrl: string, names: readonly string[]): void {
    if (key !== this.o.nodeKey || typeUrl !== XDS.secret || !this.lastIr || !this.o.bump) return;
    const added: string[] = [];
    for (const name of names) {
      if (this.onDemand.has(name) || !ON_DEMAND_NAME.test(name)) continue;
      if (this.onDemand.size >= MAX_ON_DEMAND_LEAVES) {
        this.metrics.inc('sds_on_demand_refused_total', { reason: 'capacity' });
        this.log.warn({ max: MAX_ON_DEMAND_LEAVES }, 'on-demand leaf refused: too many distinct names');
        continue;
      }
      if (!this.o.bump.minter.allows(name)) {
        this.metrics.inc('sds_on_demand_refused_total', { reason: 'not_allowed' });
        continue;
      }
      this.onDemand.add(name);
      added.push(name);
    }
    if (!added.length) return;
    this.metrics.inc('sds_on_demand_leaves_total', {}, added.length);
    try {
      this.apply(this.lastIr, { immediate: true });
    } catch {
      for (const n of added) this.onDemand.delete(n);
    }
  }

  readonly authz: AuthzRouter;

  /**
   * Secret material for the snapshot, gathered at the edge: a leaf per bump host from the minter and
   * each file-sourced credential, formatted for injection. Values never leave the snapshot.
   */
  private secretsFor(ir: Ir): Record<string, unknown>[] {
    if (!this.o.bump || !this.o.translate.egress.bump) return [];
    const want = bumpSecretNames(ir);
    const minter = this.o.bump.minter;
    minter.setPolicy(allowListPolicy(want.mintable));
    const out: Record<string, unknown>[] = want.leaves.map((h) => minter.leafSecret(h) as unknown as Record<string, unknown>);
    // leaves Envoy asked for by SNI (wildcard rules), kept while the policy still allows them
    for (const name of [...this.onDemand]) {
      try {
        const secret = minter.leafSecret(name) as unknown as Record<string, unknown>;
        out.push({ ...secret, name });
      } catch (e) {
        if (!(e instanceof MintRefusedError)) throw e;
        this.onDemand.delete(name);
      }
    }
    for (const d of ir.egress.destinations) {
      const c = d.credential;
      if (!c || c.source.kind !== 'file' || out.some((x) => x.name === credentialSecretName(c.name))) continue;
      let raw: string;
      try {
        raw = fs.readFileSync(c.source.path, 'utf8').trim();
      } catch (e) {
        throw new PortcullisError('credential_unavailable', `credential "${c.name}" cannot be read from its file`, { cause: e });
      }
      if (!raw) throw new PortcullisError('credential_unavailable', `credential "${c.name}" file is empty`);
      out.push({ name: credentialSecretName(c.name), generic_secret: { secret: { inline_string: c.format.replace('{secret}', raw) } } });
    }
    return out;
  }

  async listen(address = '127.0.0.1:0'): Promise<string> {
    return this.server.listen(address);
  }

  private lastSecrets?: Record<string, unknown>[];

  /** Translate, validate and publish. Returns the new snapshot, or throws (last good stays live). */
  apply(ir: Ir, opts: { immediate?: boolean } = {}): Snapshot {
    let secrets: Record<string, unknown>[];
    try {
      secrets = this.secretsFor(ir);
    } catch (e) {
      throw this.refused(e);
    }
    const snap = this.publish(ir, secrets, !!opts.immediate);
    this.metrics.inc('policy_applied_total');
    this.log.info({ version: snap.version }, 'configuration published');
    this.events.emit({ type: 'config.published', severity: 'info', source: 'control-plane', data: { version: snap.version } });
    return snap;
  }

  private publish(ir: Ir, secrets: Record<string, unknown>[], immediate: boolean): Snapshot {
    let snap: Snapshot;
    const denials = this.denials();
    try {
      const t = translate(ir, { ...this.o.translate, secrets, sessionDenials: denials, ...(this.o.bump ? { sessionVerifier: this.o.bump.sessions.verifier() } : {}) });
      snap = buildSnapshot(t.input, { staticClusters: [...t.staticClusters, ...(this.o.staticClusters ?? [])] });
    } catch (e) {
      throw this.refused(e);
    }
    this.live = snap;
    this.lastIr = ir;
    this.lastSecrets = secrets;
    const seq = ++this.seq;
    // (moved to the newest place; versions older than the last 256 publications are never waited on again)
    this.versionSeq.delete(snap.version);
    setBounded(this.versionSeq, snap.version, seq, 256);
    const key = JSON.stringify(denials);
    if (key !== this.denialsKey) {
      this.denialsKey = key;
      this.denialsSeq = seq;
    }
    if (immediate) this.server.cache.setNow(this.o.nodeKey, snap);
    else this.server.cache.set(this.o.nodeKey, snap);
    return snap;
  }

  /** A refused configuration: reported, and the error to throw (the last good one stays live). */
  private refused(e: unknown): PortcullisError {
    const err = e instanceof PortcullisError ? e : new PortcullisError('internal', 'translation failed', { cause: e });
    this.lastRefused = { at: new Date().toISOString(), code: err.code, message: err.message };
    this.metrics.inc('policy_apply_refused_total', { code: err.code });
    this.log.error({ code: err.code, err: err.message }, 'configuration refused; the last good configuration stays live');
    this.events.emit({
      type: 'config.reload_refused',
      severity: 'error',
      source: 'control-plane',
      data: { code: err.code, message: err.message, issues: issuesOf(e) },
    });
    return err;
  }

  get snapshot(): Snapshot | undefined {
    return this.live;
  }

  status(): ControlPlaneStatus {
    const nacks = this.server.cache.nackHistory();
    return {
      liveVersion: this.live?.version ?? null,
      lastNack: nacks.at(-1) ?? null,
      lastRefused: this.lastRefused,
      xdsAddress: this.server.address ?? null,
    };
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    await this.server.close();
    // entries Envoy sent before the server closed, still waiting for the SNI check's verdict
    this.als.flush();
  }
}

function issuesOf(e: unknown): unknown[] {
  if (e instanceof ResourceInvalidError) return e.issues.slice(0, 20);
  if (e instanceof SnapshotInconsistentError) return e.problems.slice(0, 20);
  return [];
}
