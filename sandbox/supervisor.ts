import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import type { EventSink, PortcullisEvent } from '../common/events.js';
import { PortcullisError, type DenyReason, type ErrorCode } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Runtime, TrustProfile } from '../policy/schema.js';
import { requireAdmission, type DockerRuntimeKind } from './admission.js';
import { AgentClient, AgentError, type AgentExecRequest, type AgentExecResult } from './agent/client.js';
import { agentStdinPayload } from './agent/source.js';
import {
  ExecRequestSchema,
  type ExecRequest,
  type ExecResult,
  type FileEntry,
  type SandboxService,
  type SessionInfo,
} from './api.js';
import { memorySoftLimit, parseSupervisorConfig, type SupervisorConfig, type SupervisorConfigInput } from './config.js';
import { buildContainerSpec, sandboxLabels } from './container.js';
import { rotationDelayMs, SessionCredentials, SigningKeyRing, type IssuedCredential, type SessionClaims } from './credentials.js';
import { dockerExec } from './docker-exec.js';
import { baseSandboxEnv, EnvPolicy, proxyEnv, RESERVED_ENV } from './env.js';
import { applyEdit, decodeFileContent, denied, encodeFileContent, PathRules } from './files.js';
import { createSessionNetwork, Firewall, type CommandRunner, type SessionNetwork } from './network.js';
import { forceRemoveContainer, isNotFound, listInstanceResources, removeNetwork, sweepOrphans, type SweepReport } from './orphans.js';
import { setBounded } from '../common/bounded.js';

/**
 * The sandbox supervisor: one gVisor (or, where admitted, runc) sandbox per session, created through
 * Docker, reachable by the host over its agent channel, reaching nothing but the Envoy egress listener,
 * holding only its session credential, and torn down in a fixed order that needs nothing from the guest.
 *
 * Lifecycle transitions are events on the EventSink (types below); they carry `sandboxId` and, once a
 * session exists, `sessionId`.
 */

export const SUPERVISOR_EVENT_TYPES = [
  'sandbox.admission_refused',
  'sandbox.created',
  'sandbox.ready',
  'sandbox.pooled',
  'sandbox.claimed',
  'sandbox.runtime_mismatch',
  'sandbox.exec',
  'sandbox.env_stripped',
  'sandbox.oom',
  'sandbox.exited',
  'sandbox.quarantined',
  'sandbox.teardown_step',
  'sandbox.destroyed',
  'sandbox.orphans_cleaned',
  'session.credential_issued',
  'session.credential_rotated',
  'session.credential_revoked',
  'session.signing_key_rotated',
] as const;

/** Test-only access to internals (the agent clients of live sandboxes, the pool). */
export const SUPERVISOR_TEST_HOOKS = Symbol.for('portcullis.supervisor.test-hooks');

export interface SandboxDescription {
  sandboxId: string;
  containerId: string;
  ip: string;
  gateway: string;
  subnet: string;
  bridge: string;
  network: string;
  runtime: DockerRuntimeKind;
}

export interface SupervisorOptions {
  config: SupervisorConfigInput | SupervisorConfig;
  logger: Logger;
  events: EventSink;
  docker?: Docker;
  /** replaces the iptables runner (unit tests) */
  firewallRunner?: CommandRunner;
}

export interface SessionPolicy {
  trustProfile: TrustProfile;
  runtime: Runtime;
  sessions: SupervisorConfig['sessions'];
}

export interface TeardownStep {
  step: 'revoke_credential' | 'drop_network' | 'scrub' | 'kill' | 'remove';
  ok: boolean;
  ms: number;
  error?: string;
  detail?: Record<string, unknown>;
}

export const TEARDOWN_ORDER: readonly TeardownStep['step'][] = ['revoke_credential', 'drop_network', 'scrub', 'kill', 'remove'];

interface Sandbox {
  sandboxId: string;
  kind: DockerRuntimeKind;
  network?: SessionNetwork;
  containerId?: string;
  ip?: string;
  agent?: AgentClient;
  pooled: boolean;
  /** set once a session was bound to it; such a sandbox is never pooled again (NFR-SEC-68) */
  ranSession: boolean;
  teardown?: Promise<TeardownStep[]>;
  createdAt: number;
}

interface SessionRecord {
  info: SessionInfo;
  sandbox: Sandbox;
  credential?: IssuedCredential;
  rotateTimer?: NodeJS.Timeout;
  idleTimer?: NodeJS.Timeout;
  lifetimeTimer?: NodeJS.Timeout;
  inflight: number;
  destroying?: Promise<void>;
  /** revoked: no new credential, no egress path (the sandbox itself still runs) */
  egressRevoked?: boolean;
}

const SCRUB_PATHS = ['/workspace', '/tmp'];
const FILE_ROOTS = ['/workspace', '/tmp'];
const SANDBOX_HOME = '/home/sandbox';
const SANDBOX_UID = 10001;

function perr(code: ErrorCode | DenyReason, message: string, publicMessage?: string, details?: Record<string, unknown>): PortcullisError {
  return new PortcullisError(code, message, { ...(publicMessage ? { publicMessage } : {}), ...(details ? { details } : {}) });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Supervisor implements SandboxService {
  readonly config: SupervisorConfig;
  private readonly docker: Docker;
  private readonly log: Logger;
  private readonly events: EventSink;
  private readonly firewall: Firewall;
  private readonly envPolicy: EnvPolicy;
  private readonly pathRules: PathRules;
  private policy: SessionPolicy;
  private ring: SigningKeyRing | undefined;
  private creds: SessionCredentials | undefined;
  private caFiles: { bundle: string; deploymentCa: string } | undefined;

  private readonly sessions = new Map<string, SessionRecord>();
  /** destroyed sessions, for getSession (bounded) */
  private readonly recent = new Map<string, SessionInfo>();
  /** every sandbox this process created and has not finished tearing down (pool, sessions, in creation) */
  private readonly sandboxes = new Map<string, Sandbox>();
  private readonly pool: Sandbox[] = [];
  private poolFill: Promise<void> | undefined;
  private creating = 0;
  private started = false;
  private stopping = false;
  private reconcileTimer: NodeJS.Timeout | undefined;
  private reconciling: Promise<void> | undefined;

  constructor(opts: SupervisorOptions) {
    this.config = parseSupervisorConfig(opts.config as SupervisorConfigInput);
    const c = this.config;
    this.docker = opts.docker ?? new Docker({ socketPath: c.docker.socketPath });
    this.log = opts.logger.child({ component: 'supervisor', instance: c.instanceId });
    this.events = opts.events;
    this.firewall = new Firewall({
      instanceId: c.instanceId,
      egressPort: c.egress.port,
      agentPort: c.agentPort,
      logger: this.log,
      ...(opts.firewallRunner ? { run: opts.firewallRunner } : {}),
    });
    this.envPolicy = new EnvPolicy({ allow: c.env.allow, denyPatterns: c.env.denyPatterns, reserved: RESERVED_ENV });
    const pathDirs = baseSandboxEnv({ hasDeploymentCa: false }).PATH!.split(':');
    this.pathRules = new PathRules({ roots: FILE_ROOTS, home: SANDBOX_HOME, pathDirs, extraDeny: c.files.extraDeny, cwd: '/workspace' });
    this.policy = { trustProfile: c.trustProfile, runtime: c.runtime, sessions: { ...c.sessions } };
  }

  // -------------------------------------------------------------------------------------------
  // start / stop

  /**
   * Admission (NFR-SEC-38), Docker and the runtime, the image, the firewall chains, the orphan sweep
   * (NFR-REL-09), the trust store, the signing keys; then the warm pool fills in the background.
   */
  async start(): Promise<{ orphans: SweepReport }> {
    if (this.started) throw perr('sandbox_failed', 'supervisor already started');
    this.admit('start');
    const c = this.config;
    const rtName = this.dockerRuntimeName(this.kindFor(this.policy.runtime));
    let info: { Runtimes?: Record<string, unknown> };
    try {
      info = (await this.docker.info()) as typeof info;
    } catch (e) {
      throw new PortcullisError('sandbox_failed', `Docker Engine not reachable at ${c.docker.socketPath}: ${(e as Error).message}`, { cause: e });
    }
    if (!info.Runtimes || !(rtName in info.Runtimes)) {
      throw perr('runtime_mismatch', `Docker has no runtime '${rtName}' registered (have: ${Object.keys(info.Runtimes ?? {}).join(', ')})`);
    }
    try {
      await this.docker.getImage(c.image).inspect();
    } catch (e) {
      throw new PortcullisError('sandbox_failed', `sandbox image ${c.image} not found (bash sandbox/image/build.sh)`, { cause: e });
    }
    await this.firewall.ensureBase();
    const orphans = await sweepOrphans(this.docker, this.firewall, c.instanceId, new Set(), this.log);
    if (orphans.containers.length || orphans.networks.length || orphans.rules) {
      this.emit('sandbox.orphans_cleaned', 'warning', { sandboxId: 'orphans', containers: orphans.containers, networks: orphans.networks, rules: orphans.rules, errors: orphans.errors });
    }
    this.caFiles = await this.prepareTrustStore();
    this.ring = await SigningKeyRing.create({
      rotateEveryMs: c.signingKeys.rotateEveryHours * 3_600_000,
      overlapMs: c.signingKeys.overlapHours * 3_600_000,
      events: this.events,
    });
    this.ring.startAutoRotation();
    this.creds = new SessionCredentials(this.ring, { ttlSeconds: this.policy.sessions.tokenTtlSeconds });
    this.started = true;
    this.reconcileTimer = setInterval(() => void this.reconcile(), c.reconcileIntervalMs);
    this.reconcileTimer.unref();
    void this.fillPool();
    return { orphans };
  }

  /** Destroys every session and pooled sandbox, stops the timers. */
  async stop(reason = 'supervisor_stop'): Promise<void> {
    this.stopping = true;
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    this.reconcileTimer = undefined;
    this.ring?.stop();
    await this.poolFill?.catch(() => undefined);
    await this.reconciling?.catch(() => undefined);
    const work: Promise<unknown>[] = [];
    for (const id of [...this.sessions.keys()]) work.push(this.destroySession(id, reason).catch(() => undefined));
    for (const sb of this.pool.splice(0)) work.push(this.teardown(sb, undefined, reason));
    for (const sb of this.sandboxes.values()) if (!sb.teardown) work.push(this.teardown(sb, undefined, reason));
    await Promise.allSettled(work);
    if (this.caFiles) {
      for (const f of [this.caFiles.bundle, this.caFiles.deploymentCa]) fs.rmSync(f, { force: true });
      try {
        fs.rmdirSync(path.dirname(this.caFiles.bundle));
      } catch {
        // not empty or gone
      }
    }
    this.started = false;
  }

  /**
   * After stop(): removes the host firewall base chains when no other instance uses them (see
   * Firewall.releaseBaseIfUnused). Returns whether they were removed.
   */
  async releaseHostFirewall(): Promise<boolean> {
    if (this.started) throw perr('sandbox_failed', 'stop the supervisor first');
    return this.firewall.releaseBaseIfUnused();
  }

  /** A policy reload: later sessions are admitted against, and credentialed with, the new values. */
  setPolicy(p: SessionPolicy): void {
    requireAdmission(p.trustProfile, p.runtime);
    if (p.sessions.tokenTtlSeconds > 3600) throw new RangeError('tokenTtlSeconds above 3600 (NFR-SEC-10)');
    this.policy = { trustProfile: p.trustProfile, runtime: p.runtime, sessions: { ...p.sessions } };
    this.creds?.setTtlSeconds(p.sessions.tokenTtlSeconds);
  }

  // -------------------------------------------------------------------------------------------
  // sessions

  async createSession(owner: string): Promise<SessionInfo> {
    this.requireStarted();
    const kind = this.admit('session_create');
    if (this.sessions.size + this.creating >= this.config.maxSessions) {
      throw perr('capacity_exhausted', `session limit (${this.config.maxSessions}) reached`, 'no sandbox capacity');
    }
    this.creating++;
    const t0 = performance.now();
    let sb: Sandbox | undefined;
    let rec: SessionRecord | undefined;
    try {
      sb = await this.claimFromPool(kind);
      const fromPool = sb !== undefined;
      sb ??= await this.createSandbox(kind, false);
      sb.ranSession = true;
      sb.pooled = false;
      const sessionId = randomBytes(24).toString('base64url');
      const now = Date.now();
      rec = {
        info: {
          sessionId,
          owner,
          state: 'creating',
          createdAt: new Date(now).toISOString(),
          lastActiveAt: new Date(now).toISOString(),
          expiresAt: new Date(now + this.policy.sessions.absoluteLifetimeSeconds * 1000).toISOString(),
          runtime: kind,
        },
        sandbox: sb,
        inflight: 0,
      };
      this.sessions.set(sessionId, rec);
      await this.issueCredential(rec, 'issued');
      if (this.stopping) throw perr('sandbox_failed', 'supervisor stopping');
      rec.info.state = 'ready';
      this.armIdle(rec);
      const r = rec;
      rec.lifetimeTimer = setTimeout(() => void this.destroySession(r.info.sessionId, 'lifetime_expired').catch(() => undefined), this.policy.sessions.absoluteLifetimeSeconds * 1000);
      rec.lifetimeTimer.unref();
      this.emit('sandbox.ready', 'info', { sandboxId: sb.sandboxId, fromPool, runtime: kind, ms: Math.round(performance.now() - t0) }, sessionId);
      return { ...rec.info };
    } catch (e) {
      if (rec) {
        this.sessions.delete(rec.info.sessionId);
        rec.info.state = 'destroyed';
        this.remember(rec.info);
      }
      if (sb) await this.teardown(sb, rec, 'create_failed');
      if (e instanceof PortcullisError) throw e;
      throw new PortcullisError('sandbox_failed', `session create failed: ${(e as Error).message}`, { cause: e, publicMessage: 'sandbox could not be created' });
    } finally {
      this.creating--;
      void this.fillPool();
    }
  }

  getSession(sessionId: string): SessionInfo | undefined {
    const rec = this.sessions.get(sessionId);
    if (rec) return { ...rec.info };
    const old = this.recent.get(sessionId);
    return old ? { ...old } : undefined;
  }

  /** Live sessions (creating, ready, quarantined, destroying). */
  listSessions(): SessionInfo[] {
    return [...this.sessions.values()].map((r) => ({ ...r.info }));
  }

  async destroySession(sessionId: string, reason: string): Promise<void> {
    const rec = this.sessions.get(sessionId);
    if (!rec) {
      if (this.recent.has(sessionId)) return;
      throw perr('session_not_found', 'no such session', 'no such session');
    }
    if (rec.destroying) return rec.destroying;
    rec.info.state = 'destroying';
    this.clearTimers(rec);
    rec.destroying = (async () => {
      await this.teardown(rec.sandbox, rec, reason);
      rec.info.state = 'destroyed';
      this.sessions.delete(sessionId);
      this.remember(rec.info);
    })();
    return rec.destroying;
  }

  /**
   * SessionRevoker (the operator denylist calls it on revoke, kill and tripwire): the session's
   * credential is refused from now on and its egress path is dropped at once, so a tunnel already
   * open through the egress listener carries no further packet (the edge's own check only refuses
   * the next request or tunnel). The sandbox keeps running (exec and files still answer) until it
   * is destroyed; a kill destroys it right after.
   */
  revoke(sessionId: string, reason = 'revoked'): void {
    const rec = this.sessions.get(sessionId);
    if (!rec || rec.egressRevoked) return;
    rec.egressRevoked = true;
    if (rec.rotateTimer) clearTimeout(rec.rotateTimer);
    this.creds?.revoke(sessionId);
    this.emit('session.credential_revoked', 'warning', { sandboxId: rec.sandbox.sandboxId, reason, egressDropped: true }, sessionId);
    this.firewall.dropEgress(rec.sandbox.sandboxId).catch((e: unknown) => {
      this.log.error({ err: (e as Error).message }, 'revoke: dropping the egress rule failed');
    });
  }

  /** Kill-switch short of destroy: credential revoked, network path dropped, sandbox frozen. */
  async quarantine(sessionId: string, reason: string): Promise<void> {
    const rec = this.sessions.get(sessionId);
    if (!rec) throw perr('session_not_found', 'no such session', 'no such session');
    if (rec.info.state === 'quarantined') return;
    if (rec.info.state !== 'ready') throw perr('session_unavailable', `session is ${rec.info.state}`, 'session not available');
    rec.info.state = 'quarantined';
    if (rec.rotateTimer) clearTimeout(rec.rotateTimer);
    if (rec.idleTimer) clearTimeout(rec.idleTimer);
    this.creds?.revoke(sessionId);
    this.emit('session.credential_revoked', 'warning', { sandboxId: rec.sandbox.sandboxId, reason }, sessionId);
    let rules = 0;
    try {
      rules = await this.firewall.dropEgress(rec.sandbox.sandboxId);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'quarantine: dropping the egress rule failed');
    }
    let frozen = false;
    if (rec.sandbox.containerId) {
      try {
        await this.docker.getContainer(rec.sandbox.containerId).pause();
        frozen = true;
      } catch (e) {
        this.log.error({ err: (e as Error).message }, 'quarantine: pause failed');
      }
    }
    this.emit('sandbox.quarantined', 'critical', { sandboxId: rec.sandbox.sandboxId, reason, egressRulesDropped: rules, frozen }, sessionId);
  }

  /** Where a session's sandbox lives (operator view; no secret). */
  describe(sessionId: string): SandboxDescription | undefined {
    const sb = this.sessions.get(sessionId)?.sandbox;
    return sb ? this.describeSandbox(sb) : undefined;
  }

  private describeSandbox(sb: Sandbox): SandboxDescription | undefined {
    if (!sb.containerId || !sb.ip || !sb.network) return undefined;
    return {
      sandboxId: sb.sandboxId,
      containerId: sb.containerId,
      ip: sb.ip,
      gateway: sb.network.gateway,
      subnet: sb.network.subnet,
      bridge: sb.network.bridge,
      network: sb.network.name,
      runtime: sb.kind,
    };
  }

  readonly [SUPERVISOR_TEST_HOOKS] = {
    agentOf: (sandboxId: string): AgentClient | undefined => this.sandboxes.get(sandboxId)?.agent,
    pooled: (): SandboxDescription[] => this.pool.map((sb) => this.describeSandbox(sb)).filter((d): d is SandboxDescription => d !== undefined),
    /** failure injection: the host firewall the supervisor drives */
    firewall: (): Firewall => this.firewall,
  };

  // -------------------------------------------------------------------------------------------
  // credentials

  /**
   * Public keys verifying session credentials now, for the egress edge (Envoy's jwt_authn): retired
   * keys within their overlap, the signing key, and the staged next key (published before it signs).
   */
  jwks(): { keys: Record<string, unknown>[] } {
    if (!this.ring) throw perr('credential_unavailable', 'supervisor not started');
    return this.ring.jwks() as { keys: Record<string, unknown>[] };
  }

  /**
   * The JWKS changed (a rotation or a retired key dropped): the egress edge publishes it again.
   * Delegates to the signing key ring of this start(); returns the unsubscribe function.
   */
  onKeysChange(listener: () => void): () => void {
    if (!this.ring) throw perr('credential_unavailable', 'supervisor not started');
    return this.ring.onChange(listener);
  }

  /** Verifies a presented session credential (signature, expiry, revocation, binding). */
  verifyCredential(token: string | undefined | null, expect?: { sessionId?: string; containerId?: string }): Promise<SessionClaims> {
    if (!this.creds) throw perr('credential_unavailable', 'supervisor not started');
    return this.creds.verify(token, expect);
  }

  /** Metadata of a session's current credential (never the token). */
  credentialInfo(sessionId: string): { jti: string; kid: string; issuedAt: string; expiresAt: string; containerId: string } | undefined {
    const rec = this.sessions.get(sessionId);
    if (!rec?.credential || !rec.sandbox.containerId) return undefined;
    const c = rec.credential;
    return { jti: c.jti, kid: c.kid, issuedAt: new Date(c.issuedAt).toISOString(), expiresAt: new Date(c.expiresAt).toISOString(), containerId: rec.sandbox.containerId };
  }

  /** Re-issues a session's credential now (normally a timer does it before expiry). */
  async rotateCredential(sessionId: string): Promise<void> {
    const rec = this.requireReady(sessionId);
    await this.issueCredential(rec, 'rotated');
  }

  /** New signing key now; the previous one keeps verifying for the overlap window. */
  async rotateSigningKey(): Promise<string> {
    if (!this.ring) throw perr('credential_unavailable', 'supervisor not started');
    return this.ring.rotate('manual');
  }

  private async issueCredential(rec: SessionRecord, kind: 'issued' | 'rotated'): Promise<void> {
    const sb = rec.sandbox;
    if (rec.egressRevoked) throw perr('session_revoked', 'the session was revoked', 'session revoked');
    if (!this.creds || !sb.agent || !sb.network || !sb.containerId) throw perr('sandbox_failed', 'sandbox not ready for a credential');
    const cred = await this.creds.mint(rec.info.sessionId, sb.containerId);
    await sb.agent.configure(proxyEnv(sb.network.gateway, this.config.egress.port, cred.token));
    rec.credential = cred;
    this.emit(`session.credential_${kind}`, 'info', { sandboxId: sb.sandboxId, jti: cred.jti, kid: cred.kid, expiresAt: new Date(cred.expiresAt).toISOString() }, rec.info.sessionId);
    this.scheduleRotation(rec, rotationDelayMs(cred.issuedAt, cred.expiresAt, Date.now()));
  }

  private scheduleRotation(rec: SessionRecord, delay: number): void {
    if (rec.rotateTimer) clearTimeout(rec.rotateTimer);
    rec.rotateTimer = setTimeout(() => {
      if (rec.info.state !== 'ready') return;
      this.issueCredential(rec, 'rotated').catch((e: unknown) => {
        this.log.warn({ err: (e as Error).message }, 'session credential rotation failed; retrying');
        if (rec.info.state === 'ready' && rec.credential && Date.now() < rec.credential.expiresAt) this.scheduleRotation(rec, 5_000);
      });
    }, delay);
    rec.rotateTimer.unref();
  }

  // -------------------------------------------------------------------------------------------
  // exec

  async exec(sessionId: string, reqIn: ExecRequest): Promise<ExecResult> {
    const parsed = ExecRequestSchema.safeParse(reqIn);
    if (!parsed.success) throw perr('schema_invalid', `exec request invalid: ${parsed.error.message}`, 'exec request invalid');
    const req = parsed.data;
    const rec = this.requireReady(sessionId);
    const sb = rec.sandbox;
    const { env, stripped } = this.envPolicy.filter(req.env);
    if (stripped.length > 0) this.emit('sandbox.env_stripped', 'warning', { sandboxId: sb.sandboxId, names: stripped }, sessionId);
    const cwd = this.execCwd(req.cwd);
    const timeoutMs = req.timeoutMs ?? this.config.exec.defaultTimeoutMs;
    const maxOutputBytes = req.maxOutputBytes ?? this.config.exec.maxOutputBytes;
    const areq: AgentExecRequest = { argv: req.command, cwd, env, timeoutMs, ...(req.stdin !== undefined ? { stdin: Buffer.from(req.stdin, 'utf8') } : {}) };
    return this.activity(rec, async () => {
      const t0 = performance.now();
      let raw: AgentExecResult;
      if (this.config.exec.transport === 'docker-exec') {
        raw = await this.dockerExecRaw(rec, areq, maxOutputBytes);
      } else {
        raw = await this.agentExecRaw(rec, areq, maxOutputBytes);
      }
      const result: ExecResult = {
        outcome: raw.outcome,
        exitCode: raw.exitCode,
        stdout: raw.stdout.toString('utf8'),
        stderr: raw.stderr.toString('utf8'),
        stdoutTruncated: raw.stdoutDropped > 0 ? { droppedBytes: raw.stdoutDropped } : null,
        stderrTruncated: raw.stderrDropped > 0 ? { droppedBytes: raw.stderrDropped } : null,
        durationMs: Math.round((performance.now() - t0) * 1000) / 1000,
      };
      this.emit('sandbox.exec', raw.outcome === 'exited' ? 'info' : 'warning', {
        sandboxId: sb.sandboxId,
        commandSha256: createHash('sha256').update(JSON.stringify(req.command)).digest('hex'),
        outcome: raw.outcome,
        exitCode: raw.exitCode,
        durationMs: result.durationMs,
        stdoutBytes: raw.stdout.length,
        stderrBytes: raw.stderr.length,
        stdoutDroppedBytes: raw.stdoutDropped,
        stderrDroppedBytes: raw.stderrDropped,
      }, sessionId);
      if (raw.outcome === 'oom') this.emit('sandbox.oom', 'warning', { sandboxId: sb.sandboxId }, sessionId);
      return result;
    });
  }

  private execCwd(cwd: string | undefined): string {
    const n = this.pathRules.normalize(cwd ?? '/workspace');
    if (!n.ok) throw denied(cwd ?? '', n.reason);
    return n.path;
  }

  private async agentExecRaw(rec: SessionRecord, areq: AgentExecRequest, maxOutputBytes: number): Promise<AgentExecResult> {
    const sb = rec.sandbox;
    try {
      return await sb.agent!.exec(areq, { maxOutputBytes });
    } catch (e) {
      if (!(e instanceof AgentError) || e.kind === 'remote') throw e;
      // The channel broke: did the sandbox die (OOM-killed as a whole, crashed) or the agent stall?
      // Docker may take a moment to notice a dead sandbox.
      let state = await this.containerState(sb);
      for (let waited = 0; state.running && e.kind === 'closed' && waited < 5_000; waited += 100) {
        await sleep(100);
        state = await this.containerState(sb);
      }
      if (!state.running) {
        const outcome = state.oomKilled ? 'oom' : 'killed';
        this.emit('sandbox.exited', 'warning', { sandboxId: sb.sandboxId, oomKilled: state.oomKilled, exitCode: state.exitCode }, rec.info.sessionId);
        void this.destroySession(rec.info.sessionId, state.oomKilled ? 'sandbox_oom' : 'sandbox_exited').catch(() => undefined);
        return { outcome, exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), stdoutDropped: 0, stderrDropped: 0, durationMs: 0 };
      }
      if (e.kind === 'timeout') {
        return { outcome: 'timed_out', exitCode: null, signal: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), stdoutDropped: 0, stderrDropped: 0, durationMs: 0 };
      }
      throw new PortcullisError('session_unavailable', `exec channel failed: ${e.message}`, { cause: e, publicMessage: 'sandbox unavailable' });
    }
  }

  private async dockerExecRaw(rec: SessionRecord, areq: AgentExecRequest, maxOutputBytes: number): Promise<AgentExecResult> {
    const sb = rec.sandbox;
    const cred = rec.credential;
    const env = { ...(cred && sb.network ? proxyEnv(sb.network.gateway, this.config.egress.port, cred.token) : {}), ...areq.env };
    const r = await dockerExec(this.docker, sb.containerId!, { ...areq, env }, { maxOutputBytes });
    if (r.sandboxGone) void this.destroySession(rec.info.sessionId, r.outcome === 'oom' ? 'sandbox_oom' : 'sandbox_exited').catch(() => undefined);
    return r;
  }

  // -------------------------------------------------------------------------------------------
  // files

  async readFile(sessionId: string, p: string, opts: { maxBytes?: number } = {}): Promise<{ content: string; encoding: 'utf8' | 'base64'; size: number }> {
    const rec = this.requireReady(sessionId);
    const max = Math.min(opts.maxBytes ?? this.config.files.maxReadBytes, this.config.files.maxReadBytes);
    return this.activity(rec, async () => {
      const canonical = await this.canonical(rec, p, 'read');
      const data = await this.fileCall(() => rec.sandbox.agent!.read(canonical, max));
      return { ...encodeFileContent(data), size: data.length };
    });
  }

  async writeFile(sessionId: string, p: string, content: string, opts: { encoding?: 'utf8' | 'base64' } = {}): Promise<{ size: number }> {
    const rec = this.requireReady(sessionId);
    const data = decodeFileContent(content, opts.encoding ?? 'utf8');
    if (data.length > this.config.files.maxWriteBytes) throw perr('file_error', `content of ${data.length} bytes exceeds ${this.config.files.maxWriteBytes}`, 'content too large');
    return this.activity(rec, async () => {
      const canonical = await this.canonical(rec, p, 'write');
      const size = await this.fileCall(() => rec.sandbox.agent!.write(canonical, data, { mkdirs: true, maxBytes: this.config.files.maxWriteBytes }));
      return { size };
    });
  }

  async editFile(sessionId: string, p: string, oldString: string, newString: string, opts: { replaceAll?: boolean } = {}): Promise<{ replacements: number }> {
    const rec = this.requireReady(sessionId);
    return this.activity(rec, async () => {
      const canonical = await this.canonical(rec, p, 'write');
      const agent = rec.sandbox.agent!;
      const before = await this.fileCall(() => agent.read(canonical, this.config.files.maxReadBytes));
      const enc = encodeFileContent(before);
      if (enc.encoding !== 'utf8') throw perr('edit_failed', 'file is not UTF-8 text', 'file is not UTF-8 text');
      const edited = applyEdit(enc.content, oldString, newString, opts.replaceAll ?? false);
      const data = Buffer.from(edited.content, 'utf8');
      if (data.length > this.config.files.maxWriteBytes) throw perr('file_error', 'edited content too large', 'content too large');
      const ifSha256 = createHash('sha256').update(before).digest('hex');
      await this.fileCall(() => agent.write(canonical, data, { maxBytes: this.config.files.maxWriteBytes, ifSha256 }));
      return { replacements: edited.replacements };
    });
  }

  async listFiles(sessionId: string, p: string): Promise<FileEntry[]> {
    const rec = this.requireReady(sessionId);
    return this.activity(rec, async () => {
      const canonical = await this.canonical(rec, p, 'list');
      const r = await this.fileCall(() => rec.sandbox.agent!.list(canonical, this.config.files.maxListEntries));
      return r.entries.map((e) => ({
        name: String(e.name),
        type: (['file', 'dir', 'symlink', 'other'] as const).find((t) => t === e.type) ?? 'other',
        size: Number.isSafeInteger(e.size) && e.size >= 0 ? e.size : 0,
      }));
    });
  }

  /** Lexical check of the request, then the canonical path the sandbox resolves (symlinks followed). */
  private async canonical(rec: SessionRecord, p: string, op: 'read' | 'write' | 'list'): Promise<string> {
    const requested = this.pathRules.require(p, op);
    const r = await this.fileCall(() => rec.sandbox.agent!.resolve(requested));
    const verdict = this.pathRules.check(r.canonical, op);
    if (!verdict.ok) throw denied(p, `resolves to a refused location: ${verdict.reason}`);
    if (op !== 'write' && !r.exists) throw perr('file_error', 'no such file or directory', 'no such file or directory');
    return verdict.path;
  }

  private async fileCall<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof AgentError && e.kind === 'remote') {
        if (e.remoteCode === 'changed') throw denied('(path)', 'the path changed while it was being checked');
        const msg: Record<string, string> = {
          not_found: 'no such file or directory',
          is_dir: 'is a directory',
          not_dir: 'not a directory',
          not_file: 'not a regular file',
          too_large: 'file too large',
          conflict: 'the file changed concurrently',
        };
        throw perr('file_error', e.message, msg[e.remoteCode ?? ''] ?? 'file operation failed', { reason: e.remoteCode });
      }
      if (e instanceof AgentError) throw new PortcullisError('session_unavailable', e.message, { cause: e, publicMessage: 'sandbox unavailable' });
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------
  // pool

  /** Fills the warm pool to its configured size; resolves when done (or when filling fails). */
  fillPool(): Promise<void> {
    if (this.poolFill) return this.poolFill;
    if (!this.started || this.stopping || this.config.warmPool === 0) return Promise.resolve();
    if (this.pool.length >= this.config.warmPool) return Promise.resolve();
    const fill = (async () => {
      while (!this.stopping && this.pool.length < this.config.warmPool) {
        let kind: DockerRuntimeKind;
        try {
          kind = this.admit('pool', false);
        } catch {
          return;
        }
        let sb: Sandbox;
        try {
          sb = await this.createSandbox(kind, true);
        } catch (e) {
          this.log.warn({ err: (e as Error).message }, 'warm pool: sandbox creation failed');
          return;
        }
        if (this.stopping) {
          await this.teardown(sb, undefined, 'supervisor_stop');
          return;
        }
        this.pool.push(sb);
        this.emit('sandbox.pooled', 'info', { sandboxId: sb.sandboxId, runtime: kind, poolSize: this.pool.length });
      }
    })();
    this.poolFill = fill;
    void fill.finally(() => {
      if (this.poolFill === fill) this.poolFill = undefined;
    });
    return this.poolFill;
  }

  poolStatus(): { ready: number; target: number } {
    return { ready: this.pool.length, target: this.config.warmPool };
  }

  private async claimFromPool(kind: DockerRuntimeKind): Promise<Sandbox | undefined> {
    for (let sb = this.pool.shift(); sb !== undefined; sb = this.pool.shift()) {
      if (sb.ranSession || sb.kind !== kind || !sb.agent) {
        void this.teardown(sb, undefined, sb.ranSession ? 'pool_reuse_refused' : 'pool_policy_changed');
        continue;
      }
      const t0 = performance.now();
      try {
        // Re-identify (NFR-SEC-69): a fresh channel key; the placeholder key stops working now.
        await sb.agent.rekey(randomBytes(32));
        sb.pooled = false;
        this.emit('sandbox.claimed', 'info', { sandboxId: sb.sandboxId, ms: Math.round(performance.now() - t0) });
        return sb;
      } catch (e) {
        this.log.warn({ err: (e as Error).message, sandboxId: sb.sandboxId }, 'warm pool: claim failed; destroying the pooled sandbox');
        void this.teardown(sb, undefined, 'pool_claim_failed');
      }
    }
    return undefined;
  }

  // -------------------------------------------------------------------------------------------
  // sandbox creation

  private kindFor(runtime: Runtime): DockerRuntimeKind {
    return runtime === 'runc' ? 'runc' : 'runsc';
  }

  private dockerRuntimeName(kind: DockerRuntimeKind): string {
    return kind === 'runsc' ? this.config.dockerRuntimes.gvisor : this.config.dockerRuntimes.runc;
  }

  private admit(at: 'start' | 'session_create' | 'pool', emit = true): DockerRuntimeKind {
    try {
      return requireAdmission(this.policy.trustProfile, this.policy.runtime);
    } catch (e) {
      if (emit) this.emit('sandbox.admission_refused', 'error', { sandboxId: 'admission', at, trustProfile: this.policy.trustProfile, runtime: this.policy.runtime });
      throw e;
    }
  }

  private async createSandbox(kind: DockerRuntimeKind, pooled: boolean): Promise<Sandbox> {
    const c = this.config;
    const sandboxId = randomBytes(6).toString('hex');
    const sb: Sandbox = { sandboxId, kind, pooled, ranSession: false, createdAt: Date.now() };
    this.sandboxes.set(sandboxId, sb);
    const key = randomBytes(32);
    try {
      const labels = sandboxLabels(c.instanceId, sandboxId, pooled);
      sb.network = await createSessionNetwork(this.docker, { instanceId: c.instanceId, sandboxId, labels });
      const env = baseSandboxEnv({ hasDeploymentCa: this.caFiles !== undefined });
      const spec = buildContainerSpec({ cfg: c, kind, sandboxId, networkName: sb.network.name, env, pooled, ...(this.caFiles ? { caFiles: this.caFiles } : {}) });
      // both settle before going on: if one fails while the other is still in flight, the container
      // it made must be known to the teardown, or it would be left behind in "Created" state
      const [fw, made] = await Promise.allSettled([
        this.firewall.allowSandbox({ sandboxId, bridge: sb.network.bridge, gateway: sb.network.gateway }),
        this.docker.createContainer(spec),
      ]);
      if (made.status === 'fulfilled') sb.containerId = made.value.id;
      if (fw.status === 'rejected') throw fw.reason;
      if (made.status === 'rejected') throw made.reason;
      const container = made.value;
      this.emit('sandbox.created', 'info', { sandboxId, containerId: container.id, runtime: kind, pooled, subnet: sb.network.subnet });
      // The runtime the container really got (before anything runs in it).
      const expected = this.dockerRuntimeName(kind);
      const before = await container.inspect();
      if (before.HostConfig.Runtime !== expected) throw this.runtimeMismatch(sb, `Docker assigned runtime '${String(before.HostConfig.Runtime)}', expected '${expected}'`);
      const stdin = (await container.attach({ stream: true, stdin: true, stdout: false, stderr: false, hijack: true })) as NodeJS.WritableStream;
      await container.start();
      stdin.end(
        agentStdinPayload({
          key: key.toString('base64'),
          port: c.agentPort,
          hostAddr: sb.network.gateway,
          baseEnv: env,
          denyPatterns: EnvPolicy.denyPatterns(c.env.denyPatterns),
          reserved: [...RESERVED_ENV],
          memSoftLimit: c.limits.oomWatchdog ? memorySoftLimit(c.limits.memoryBytes) : 0,
        }),
      );
      const after = await container.inspect();
      const ip = after.NetworkSettings.Networks[sb.network.name]?.IPAddress;
      if (!ip) throw perr('sandbox_failed', 'sandbox has no address on its session network');
      sb.ip = ip;
      sb.agent = new AgentClient({ host: ip, port: c.agentPort }, key);
      const hello = await sb.agent.waitReady(20_000);
      // In-guest check: gVisor answers with its own kernel, runc with the host's.
      const hostRelease = os.release();
      const isGvisor = hello.release !== hostRelease;
      if ((kind === 'runsc') !== isGvisor) throw this.runtimeMismatch(sb, `the guest kernel is '${hello.release}' (host '${hostRelease}'), expected ${kind === 'runsc' ? 'gVisor' : 'the host kernel'}`);
      if (hello.uid !== SANDBOX_UID) throw perr('sandbox_failed', `the agent runs as uid ${hello.uid}, expected ${SANDBOX_UID}`);
      return sb;
    } catch (e) {
      await this.teardown(sb, undefined, 'create_failed');
      throw e;
    }
  }

  private runtimeMismatch(sb: Sandbox, why: string): PortcullisError {
    this.emit('sandbox.runtime_mismatch', 'critical', { sandboxId: sb.sandboxId, expected: sb.kind, why });
    return perr('runtime_mismatch', `runtime mismatch: ${why}`, 'sandbox runtime mismatch');
  }

  private async containerState(sb: Sandbox): Promise<{ running: boolean; oomKilled: boolean; exitCode: number | null }> {
    if (!sb.containerId) return { running: false, oomKilled: false, exitCode: null };
    try {
      const i = await this.docker.getContainer(sb.containerId).inspect();
      return { running: i.State.Running === true, oomKilled: i.State.OOMKilled === true, exitCode: i.State.Running ? null : i.State.ExitCode };
    } catch {
      return { running: false, oomKilled: false, exitCode: null };
    }
  }

  // -------------------------------------------------------------------------------------------
  // teardown (NFR-SEC-65): revoke → drop the network path → scrub → kill → remove; no step needs the guest

  private teardown(sb: Sandbox, rec: SessionRecord | undefined, reason: string): Promise<TeardownStep[]> {
    if (sb.teardown) return sb.teardown;
    const sessionId = rec?.info.sessionId;
    sb.teardown = (async () => {
      const steps: TeardownStep[] = [];
      const step = async (name: TeardownStep['step'], fn: () => Promise<Record<string, unknown> | void>): Promise<void> => {
        const t0 = performance.now();
        let s: TeardownStep;
        try {
          const detail = await fn();
          s = { step: name, ok: true, ms: Math.round(performance.now() - t0), ...(detail ? { detail } : {}) };
        } catch (e) {
          s = { step: name, ok: false, ms: Math.round(performance.now() - t0), error: (e as Error).message };
        }
        steps.push(s);
        this.emit('sandbox.teardown_step', s.ok ? 'info' : 'warning', { sandboxId: sb.sandboxId, reason, ...s }, sessionId);
      };
      await step('revoke_credential', async () => {
        if (!rec) return { revoked: false };
        if (rec.rotateTimer) clearTimeout(rec.rotateTimer);
        this.creds?.revoke(rec.info.sessionId);
        this.emit('session.credential_revoked', 'info', { sandboxId: sb.sandboxId, reason }, sessionId);
        return { revoked: true };
      });
      await step('drop_network', async () => ({ rulesRemoved: await this.firewall.dropEgress(sb.sandboxId) }));
      await step('scrub', async () => {
        if (!sb.agent) return { skipped: 'no agent' };
        const t = this.config.teardown.scrubTimeoutMs;
        return { ...(await withTimeout(sb.agent.scrub(SCRUB_PATHS, t), t, 'scrub')) };
      });
      await step('kill', async () => {
        if (!sb.containerId) return { skipped: 'no container' };
        const c = this.docker.getContainer(sb.containerId);
        // A frozen (paused) sandbox holds a SIGKILL until Docker gives up waiting (10 s); thaw it first.
        // Its network path is already gone and its credential revoked.
        let paused = false;
        try {
          paused = (await c.inspect()).State.Paused === true;
        } catch (e) {
          if (isNotFound(e)) return { gone: true };
        }
        if (paused) await c.unpause().catch(() => undefined);
        try {
          await c.kill({ signal: 'SIGKILL' });
        } catch (e) {
          if (isNotFound(e)) return { gone: true };
          const s = await this.containerState(sb);
          if (s.running) {
            // paused containers refuse some kill paths: thaw, then kill
            await c.unpause().catch(() => undefined);
            await c.kill({ signal: 'SIGKILL' }).catch(() => undefined);
          }
        }
        const deadline = Date.now() + this.config.teardown.killTimeoutMs;
        while (Date.now() < deadline) {
          const s = await this.containerState(sb);
          if (!s.running) return { stopped: true, thawed: paused };
          await sleep(50);
        }
        throw new Error('the container did not stop');
      });
      await step('remove', async () => {
        if (sb.containerId) await forceRemoveContainer(this.docker, sb.containerId);
        if (sb.network) await removeNetwork(this.docker, sb.network.id);
        const rules = await this.firewall.removeSandbox(sb.sandboxId);
        return { rulesRemoved: rules };
      });
      const ok = steps.every((s) => s.ok || s.step === 'scrub');
      this.emit('sandbox.destroyed', ok ? 'info' : 'error', { sandboxId: sb.sandboxId, reason, steps: steps.map((s) => ({ step: s.step, ok: s.ok })) }, sessionId);
      // Whatever failed to go is left to the reconcile loop's sweep (it only spares live sandboxes).
      this.sandboxes.delete(sb.sandboxId);
      return steps;
    })();
    return sb.teardown;
  }

  // -------------------------------------------------------------------------------------------
  // reconcile: lifetime/idle backstop, dead sandboxes, leaked resources

  async reconcile(): Promise<void> {
    if (this.reconciling || !this.started || this.stopping) return this.reconciling;
    this.reconciling = (async () => {
      const now = Date.now();
      for (const rec of this.sessions.values()) {
        if (rec.destroying) continue;
        if (now >= Date.parse(rec.info.expiresAt)) void this.destroySession(rec.info.sessionId, 'lifetime_expired').catch(() => undefined);
      }
      let found;
      try {
        found = await listInstanceResources(this.docker, this.config.instanceId);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'reconcile: Docker unavailable');
        return;
      }
      const byId = new Map(found.containers.map((c) => [c.sandboxId, c]));
      for (const rec of this.sessions.values()) {
        if (rec.destroying || rec.info.state !== 'ready') continue;
        const c = byId.get(rec.sandbox.sandboxId);
        if (!c || c.state !== 'running') {
          const s = await this.containerState(rec.sandbox);
          this.emit('sandbox.exited', 'warning', { sandboxId: rec.sandbox.sandboxId, oomKilled: s.oomKilled, exitCode: s.exitCode }, rec.info.sessionId);
          void this.destroySession(rec.info.sessionId, s.oomKilled ? 'sandbox_oom' : 'sandbox_exited').catch(() => undefined);
        }
      }
      for (const sb of [...this.pool]) {
        const c = byId.get(sb.sandboxId);
        if (!c || c.state !== 'running') {
          this.pool.splice(this.pool.indexOf(sb), 1);
          void this.teardown(sb, undefined, 'pool_sandbox_exited');
        }
      }
      const keep = new Set(this.sandboxes.keys());
      const report = await sweepOrphans(this.docker, this.firewall, this.config.instanceId, keep, this.log);
      if (report.containers.length || report.networks.length || report.rules) {
        this.emit('sandbox.orphans_cleaned', 'warning', { sandboxId: 'orphans', containers: report.containers, networks: report.networks, rules: report.rules });
      }
      void this.fillPool();
    })().finally(() => {
      this.reconciling = undefined;
    });
    return this.reconciling;
  }

  // -------------------------------------------------------------------------------------------
  // helpers

  private requireStarted(): void {
    if (!this.started || this.stopping) throw perr('sandbox_failed', 'supervisor not running', 'sandbox service unavailable');
  }

  private requireReady(sessionId: string): SessionRecord {
    const rec = this.sessions.get(sessionId);
    if (!rec) throw perr('session_not_found', 'no such session', 'no such session');
    if (rec.info.state !== 'ready') throw perr('session_unavailable', `session is ${rec.info.state}`, 'session not available');
    return rec;
  }

  private async activity<T>(rec: SessionRecord, fn: () => Promise<T>): Promise<T> {
    rec.inflight++;
    rec.info.lastActiveAt = new Date().toISOString();
    try {
      return await fn();
    } finally {
      rec.inflight--;
      rec.info.lastActiveAt = new Date().toISOString();
      if (rec.info.state === 'ready') this.armIdle(rec);
    }
  }

  private armIdle(rec: SessionRecord): void {
    if (rec.idleTimer) clearTimeout(rec.idleTimer);
    rec.idleTimer = setTimeout(() => {
      if (rec.info.state !== 'ready') return;
      if (rec.inflight > 0) {
        this.armIdle(rec);
        return;
      }
      void this.destroySession(rec.info.sessionId, 'idle_timeout').catch(() => undefined);
    }, this.policy.sessions.idleTimeoutSeconds * 1000);
    rec.idleTimer.unref();
  }

  private clearTimers(rec: SessionRecord): void {
    for (const t of [rec.rotateTimer, rec.idleTimer, rec.lifetimeTimer]) if (t) clearTimeout(t);
  }

  private remember(info: SessionInfo): void {
    setBounded(this.recent, info.sessionId, { ...info }, 1000);
  }

  private emit(type: string, severity: PortcullisEvent['severity'], data: Record<string, unknown>, sessionId?: string): void {
    try {
      this.events.emit({ type, severity, source: 'supervisor', ...(sessionId ? { sessionId } : {}), data });
    } catch (e) {
      this.log.error({ err: (e as Error).message, type }, 'event sink failed');
    }
  }

  /**
   * The sandbox trust store: the image's system bundle plus the deployment CA, composed on the host
   * and bind-mounted read-only over the bundle path (public certificates only, never a key).
   */
  private async prepareTrustStore(): Promise<{ bundle: string; deploymentCa: string } | undefined> {
    const c = this.config;
    if (!c.caCertPemPath) return undefined;
    const pem = fs.readFileSync(c.caCertPemPath, 'utf8');
    if (/PRIVATE KEY/.test(pem)) throw perr('sandbox_failed', `${c.caCertPemPath} contains a private key; the sandbox trust store takes certificates only`);
    if (!/-----BEGIN CERTIFICATE-----/.test(pem)) throw perr('sandbox_failed', `${c.caCertPemPath} holds no PEM certificate`);
    const system = await this.imageFile('/etc/ssl/certs/ca-certificates.crt');
    const dir = path.join(c.stateDir, c.instanceId);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    const bundle = path.join(dir, 'ca-bundle.pem');
    const deploymentCa = path.join(dir, 'deployment-ca.pem');
    const write = (f: string, s: string): void => {
      const tmp = `${f}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, s, { mode: 0o644 });
      fs.renameSync(tmp, f);
    };
    write(deploymentCa, pem.endsWith('\n') ? pem : `${pem}\n`);
    write(bundle, `${system.toString('utf8').replace(/\n*$/, '\n')}${pem.endsWith('\n') ? pem : `${pem}\n`}`);
    return { bundle, deploymentCa };
  }

  /** A regular file from the image, read from a created (never started) container. */
  private async imageFile(file: string): Promise<Buffer> {
    const id = randomBytes(6).toString('hex');
    const container = await this.docker.createContainer({
      Image: this.config.image,
      Cmd: ['true'],
      Labels: sandboxLabels(this.config.instanceId, id, false),
      HostConfig: { NetworkMode: 'none', Runtime: this.dockerRuntimeName(this.kindFor(this.policy.runtime)) },
    });
    try {
      const stream = await container.getArchive({ path: file });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > 16 * 1024 * 1024) throw new Error(`${file} in the image is larger than 16 MiB`);
        chunks.push(chunk);
      }
      return firstTarFile(Buffer.concat(chunks));
    } finally {
      await container.remove({ force: true }).catch(() => undefined);
    }
  }
}

/** The content of the first regular file in a tar archive. */
export function firstTarFile(tar: Buffer): Buffer {
  let off = 0;
  while (off + 512 <= tar.length) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const size = parseInt(header.subarray(124, 136).toString('ascii').replace(/\0.*$/, '').trim() || '0', 8);
    const type = String.fromCharCode(header[156] ?? 0);
    const start = off + 512;
    if (type === '0' || type === '\0') return Buffer.from(tar.subarray(start, start + size));
    off = start + Math.ceil(size / 512) * 512;
  }
  throw new Error('no regular file in the archive');
}
