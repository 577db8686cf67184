import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBus, type PortcullisEvent } from '../../common/events.js';
import { PortcullisError } from '../../common/errors.js';
import { silentLogger } from '../../common/logger.js';
import { RUNTIMES, TRUST_PROFILES } from '../../policy/schema.js';
import { AgentError, type AgentClient } from '../../sandbox/agent/client.js';
import { SUPERVISOR_TEST_HOOKS, Supervisor, TEARDOWN_ORDER } from '../../sandbox/supervisor.js';
import { imageAvailable, inventory, sandboxImage, sweepInstance, testConfig } from '../../sandbox/testkit.js';
import { e2eGate, REQUIRE_E2E } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';
import { PROJECT_ROOT } from '../harness/upstream.js';

/**
 * Issue 5, lifecycle: create / get / list / destroy; the ordered teardown, also with a frozen guest;
 * quarantine; the warm pool (placeholder identity, re-identified at claim, never reused); credential
 * and signing-key rotation; idle timeout and absolute lifetime; kill -9 of the supervisor then restart
 * → zero orphans; the 9 cells of the admission matrix; a runtime mismatch.
 */

const gate = e2eGate(['docker', 'runsc', 'root'], 'sandbox-lifecycle');
const image = gate.ok && imageAvailable();
if (gate.ok && !image) {
  const line = `[portcullis] sandbox-lifecycle: SKIPPING — image ${sandboxImage()} missing (bash sandbox/image/build.sh)`;
  if (REQUIRE_E2E) throw new Error(line);
  process.stderr.write(`\n${line}\n`);
}

const INSTANCE = 'e2e-life';
const docker = new Docker();

async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return e instanceof PortcullisError ? e.code : `other: ${(e as Error).message}`;
  }
}

function eventsFor(bus: EventBus, sandboxId: string): PortcullisEvent[] {
  return bus.history().filter((e) => e.data.sandboxId === sandboxId);
}

async function tokenIn(sup: Supervisor, sessionId: string): Promise<string> {
  const r = await sup.exec(sessionId, { command: ['printenv', 'HTTPS_PROXY'] });
  const m = /^http:\/\/session:([^@]+)@/.exec(r.stdout.trim());
  if (!m) throw new Error(`no credential in HTTPS_PROXY: ${r.stdout}`);
  return decodeURIComponent(m[1]!);
}

describe.skipIf(!gate.ok || !image)('sandbox lifecycle (real Docker + runsc)', () => {
  let sup: Supervisor;
  const bus = new EventBus(5000);

  beforeAll(async () => {
    await sweepInstance(INSTANCE);
    sup = new Supervisor({ config: testConfig(INSTANCE, { warmPool: 1 }), logger: process.env.SANDBOX_TEST_LOG ? (await import('../../common/logger.js')).createLogger({ level: 'debug' }) : silentLogger(), events: bus });
    if (process.env.SANDBOX_TEST_LOG) bus.on((e) => process.stderr.write(`EV ${e.type} ${JSON.stringify(e.data)}\n`));
    await sup.start();
    await sup.fillPool();
  });

  afterAll(async () => {
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INSTANCE).catch(() => undefined);
  });

  it('create, get, list, destroy; every transition is an event; a destroyed session is gone', async () => {
    const s = await sup.createSession('alice');
    expect(s).toMatchObject({ owner: 'alice', state: 'ready', runtime: 'runsc' });
    expect(s.sessionId).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(sup.getSession(s.sessionId)).toEqual(s);
    expect(sup.listSessions().map((x) => x.sessionId)).toContain(s.sessionId);
    const { sandboxId, containerId } = sup.describe(s.sessionId)!;
    expect(Date.parse(s.expiresAt) - Date.parse(s.createdAt)).toBe(3600 * 1000);

    await sup.destroySession(s.sessionId, 'test_done');
    expect(sup.getSession(s.sessionId)?.state).toBe('destroyed');
    expect(sup.listSessions().map((x) => x.sessionId)).not.toContain(s.sessionId);
    expect(await errorCode(sup.exec(s.sessionId, { command: ['true'] }))).toBe('session_not_found');
    await sup.destroySession(s.sessionId, 'again');
    expect(await errorCode(sup.destroySession('nope', 'x'))).toBe('session_not_found');
    expect(await errorCode(docker.getContainer(containerId).inspect())).not.toBe('ok');

    const types = eventsFor(bus, sandboxId).map((e) => (e.type === 'sandbox.teardown_step' ? `step:${String(e.data.step)}` : e.type));
    expect(types).toEqual([
      'sandbox.created',
      'sandbox.pooled',
      'sandbox.claimed',
      'session.credential_issued',
      'sandbox.ready',
      'session.credential_revoked',
      'step:revoke_credential',
      'step:drop_network',
      'step:scrub',
      'step:kill',
      'step:remove',
      'sandbox.destroyed',
    ]);
    // the order of the teardown, and every step succeeded
    const steps = eventsFor(bus, sandboxId).filter((e) => e.type === 'sandbox.teardown_step');
    expect(steps.map((e) => e.data.step)).toEqual(TEARDOWN_ORDER);
    expect(steps.every((e) => e.data.ok === true)).toBe(true);
    expect(eventsFor(bus, sandboxId).every((e) => e.source === 'supervisor')).toBe(true);
  });

  it('teardown revokes and drops the network path before the scrub, and scrubs before the kill', async () => {
    const s = await sup.createSession('bob');
    const { sandboxId } = sup.describe(s.sessionId)!;
    const token = await tokenIn(sup, s.sessionId);
    await sup.writeFile(s.sessionId, 'work/a.txt', 'a'.repeat(1000));
    await sup.exec(s.sessionId, { command: ['sh', '-c', 'echo tmp > /tmp/t; sleep 300 >/dev/null 2>&1 &'] });
    await sup.destroySession(s.sessionId, 'test_done');
    const evs = eventsFor(bus, sandboxId);
    const idx = (pred: (e: PortcullisEvent) => boolean) => evs.findIndex(pred);
    const step = (n: string) => evs.find((e) => e.type === 'sandbox.teardown_step' && e.data.step === n)!;
    expect(idx((e) => e.type === 'session.credential_revoked')).toBeLessThan(idx((e) => e.data.step === 'scrub'));
    expect(step('drop_network').data.detail).toEqual({ rulesRemoved: 1 });
    expect(step('scrub').data.ok).toBe(true);
    expect(step('scrub').data.detail).toMatchObject({ files: 2, bytes: 1004 });
    expect((step('scrub').data.detail as { stopped: number }).stopped).toBeGreaterThanOrEqual(1);
    expect(idx((e) => e.data.step === 'scrub')).toBeLessThan(idx((e) => e.data.step === 'kill'));
    expect(await errorCode(sup.verifyCredential(token))).toBe('session_revoked');
    const inv = await inventory(INSTANCE);
    expect(inv.rules.some((r) => r.includes(sandboxId))).toBe(false);
    expect(inv.networks.some((n) => n.includes(sandboxId))).toBe(false);
  });

  it('teardown completes with an unresponsive (frozen) guest; the network path is dropped host-side', async () => {
    const s = await sup.createSession('carol');
    const { sandboxId, containerId } = sup.describe(s.sessionId)!;
    await docker.getContainer(containerId).pause();
    await sup.destroySession(s.sessionId, 'test_frozen');
    const steps = eventsFor(bus, sandboxId).filter((e) => e.type === 'sandbox.teardown_step');
    expect(steps.map((e) => e.data.step)).toEqual(TEARDOWN_ORDER);
    const ok = Object.fromEntries(steps.map((e) => [e.data.step, e.data.ok]));
    expect(ok).toEqual({ revoke_credential: true, drop_network: true, scrub: false, kill: true, remove: true });
    expect(steps.find((e) => e.data.step === 'drop_network')!.data.detail).toEqual({ rulesRemoved: 1 });
    expect(await errorCode(docker.getContainer(containerId).inspect())).not.toBe('ok');
    const inv = await inventory(INSTANCE);
    expect(inv.rules.some((r) => r.includes(sandboxId))).toBe(false);
    expect(inv.networks.some((n) => n.includes(sandboxId))).toBe(false);
  });

  it('quarantine: credential revoked, egress dropped, sandbox frozen, operations refused; destroy still works', async () => {
    const s = await sup.createSession('dave');
    const { sandboxId, containerId } = sup.describe(s.sessionId)!;
    const token = await tokenIn(sup, s.sessionId);
    await sup.quarantine(s.sessionId, 'soar_alert');
    expect(sup.getSession(s.sessionId)?.state).toBe('quarantined');
    expect(await errorCode(sup.verifyCredential(token))).toBe('session_revoked');
    expect(await errorCode(sup.exec(s.sessionId, { command: ['true'] }))).toBe('session_unavailable');
    expect(await errorCode(sup.readFile(s.sessionId, 'x'))).toBe('session_unavailable');
    expect((await docker.getContainer(containerId).inspect()).State.Paused).toBe(true);
    const rules = (await inventory(INSTANCE)).rules.filter((r) => r.includes(sandboxId));
    expect(rules.some((r) => r.includes(':egress'))).toBe(false);
    expect(bus.history('sandbox.quarantined').at(-1)?.data).toMatchObject({ sandboxId, reason: 'soar_alert', egressRulesDropped: 1, frozen: true });
    await sup.destroySession(s.sessionId, 'after_quarantine');
    expect(await errorCode(docker.getContainer(containerId).inspect())).not.toBe('ok');
  });

  it('warm pool: a never-used sandbox under a placeholder identity, re-identified at claim, never reused', async () => {
    await sup.fillPool();
    const [pooled] = sup[SUPERVISOR_TEST_HOOKS].pooled();
    expect(pooled).toBeDefined();
    // before the claim: nothing tenant-bound in it (NFR-SEC-70)
    const info = await docker.getContainer(pooled!.containerId).inspect();
    expect(info.Config.Env?.some((e) => /PROXY=/.test(e))).toBe(false);
    const placeholder = (sup[SUPERVISOR_TEST_HOOKS].agentOf(pooled!.sandboxId) as AgentClient).clone();
    await placeholder.ping();
    const preclaim = await placeholder.exec({ argv: ['printenv', 'HTTPS_PROXY'], cwd: '/workspace', env: {}, timeoutMs: 5000 }, { maxOutputBytes: 4096 });
    expect(preclaim.exitCode).toBe(1);

    const s = await sup.createSession('erin');
    expect(sup.describe(s.sessionId)!.sandboxId).toBe(pooled!.sandboxId);
    expect(bus.history('sandbox.ready').at(-1)?.data).toMatchObject({ sandboxId: pooled!.sandboxId, fromPool: true });
    // the placeholder key is dead (NFR-SEC-69); the session works with the fresh one
    const err = await placeholder.ping().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).kind).toBe('auth');
    expect((await sup.exec(s.sessionId, { command: ['printenv', 'HTTPS_PROXY'] })).stdout).toMatch(/^http:\/\/session:/);

    await sup.destroySession(s.sessionId, 'test_done');
    await sup.fillPool();
    const now = sup[SUPERVISOR_TEST_HOOKS].pooled();
    expect(now.map((p) => p.sandboxId)).not.toContain(pooled!.sandboxId);
    expect(await errorCode(docker.getContainer(pooled!.containerId).inspect())).not.toBe('ok');
    const ids = bus.history('sandbox.ready').map((e) => e.data.sandboxId);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('session credential rotates without restarting the sandbox; signing keys rotate with overlap', async () => {
    const s = await sup.createSession('frank');
    const { containerId } = sup.describe(s.sessionId)!;
    const started = (await docker.getContainer(containerId).inspect()).State.StartedAt;
    const first = sup.credentialInfo(s.sessionId)!;
    const t1 = await tokenIn(sup, s.sessionId);
    await sup.rotateCredential(s.sessionId);
    const second = sup.credentialInfo(s.sessionId)!;
    const t2 = await tokenIn(sup, s.sessionId);
    expect(second.jti).not.toBe(first.jti);
    expect(t2).not.toBe(t1);
    for (const t of [t1, t2]) expect((await sup.verifyCredential(t, { sessionId: s.sessionId, containerId })).cid).toBe(containerId);
    expect((await docker.getContainer(containerId).inspect()).State.StartedAt).toBe(started);
    expect(bus.history('session.credential_rotated').at(-1)?.sessionId).toBe(s.sessionId);

    const oldKid = second.kid;
    const newKid = await sup.rotateSigningKey();
    expect(newKid).not.toBe(oldKid);
    await sup.rotateCredential(s.sessionId);
    expect(sup.credentialInfo(s.sessionId)!.kid).toBe(newKid);
    expect(await errorCode(sup.verifyCredential(t2))).toBe('ok');
    // the retired key (in its overlap), the signing key, and the next one, published ahead of use
    const kids = sup.jwks().keys.map((k) => k.kid);
    expect(kids.slice(0, 2)).toEqual([oldKid, newKid]);
    expect(kids).toHaveLength(3);
    expect(kids[2]).not.toBe(newKid);
    await sup.destroySession(s.sessionId, 'test_done');
  });

  it('lifecycle transitions all reach the event interface with the sandbox id (NFR-SEC-72)', () => {
    const types = new Set(bus.history().map((e) => e.type));
    for (const t of [
      'sandbox.created',
      'sandbox.pooled',
      'sandbox.claimed',
      'sandbox.ready',
      'session.credential_issued',
      'session.credential_rotated',
      'session.credential_revoked',
      'session.signing_key_rotated',
      'sandbox.quarantined',
      'sandbox.teardown_step',
      'sandbox.destroyed',
      'sandbox.exec',
    ]) {
      expect(types.has(t), t).toBe(true);
    }
    for (const e of bus.history()) if (e.type.startsWith('sandbox.')) expect(typeof e.data.sandboxId, e.type).toBe('string');
  });
});

describe.skipIf(!gate.ok || !image)('session bounds from policy (real Docker + runsc)', () => {
  const INST = 'e2e-life-short';
  let sup: Supervisor;
  const bus = new EventBus(5000);
  beforeAll(async () => {
    await sweepInstance(INST);
    sup = new Supervisor({
      config: testConfig(INST, { sessions: { tokenTtlSeconds: 6, idleTimeoutSeconds: 3, absoluteLifetimeSeconds: 12 } }),
      logger: silentLogger(),
      events: bus,
    });
    await sup.start();
  });
  afterAll(async () => {
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INST).catch(() => undefined);
  });

  it('idle sessions end at the idle timeout; busy ones rotate credentials and end at the absolute lifetime', async () => {
    const [busy, idle] = await Promise.all([sup.createSession('busy'), sup.createSession('idle')]);
    const running = sup.exec(busy.sessionId, { command: ['sleep', '30'], timeoutMs: 60_000 }).then(
      (r) => r.outcome,
      (e: unknown) => (e instanceof PortcullisError ? e.code : 'error'),
    );
    const destroyed = (id: string) => bus.history('sandbox.destroyed').find((e) => e.sessionId === id);
    await eventually(() => destroyed(idle.sessionId), 20_000, 'idle session destroyed');
    expect(destroyed(idle.sessionId)!.data.reason).toBe('idle_timeout');
    expect(destroyed(busy.sessionId)).toBeUndefined();
    await eventually(() => destroyed(busy.sessionId), 30_000, 'busy session destroyed at its lifetime');
    expect(destroyed(busy.sessionId)!.data.reason).toBe('lifetime_expired');
    const rotations = bus.history('session.credential_rotated').filter((e) => e.sessionId === busy.sessionId);
    expect(rotations.length).toBeGreaterThanOrEqual(1);
    expect(['killed', 'session_unavailable']).toContain(await running);
    expect(sup.listSessions()).toEqual([]);
  });
});

describe.skipIf(!gate.ok || !image)('crash and restart (real Docker + runsc)', () => {
  const INST = 'e2e-crash';
  afterAll(async () => {
    await sweepInstance(INST).catch(() => undefined);
  });

  it('kill -9 of the supervisor, then a restart: zero orphans', async () => {
    await sweepInstance(INST);
    const cfg = testConfig(INST, { warmPool: 1 });
    const mod = (p: string) => JSON.stringify(pathToFileURL(path.join(PROJECT_ROOT, p)).href);
    const script = `
      const { Supervisor } = await import(${mod('sandbox/supervisor.ts')});
      const { EventBus } = await import(${mod('common/events.ts')});
      const { silentLogger } = await import(${mod('common/logger.ts')});
      const sup = new Supervisor({ config: ${JSON.stringify(cfg)}, logger: silentLogger(), events: new EventBus() });
      await sup.start();
      await sup.fillPool();
      await sup.createSession('x');
      await sup.createSession('y');
      await sup.fillPool();
      process.stdout.write('READY\\n');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    try {
      await eventually(() => out.includes('READY') || child.exitCode !== null, 60_000, 'the child supervisor');
      expect(out, err).toContain('READY');
      const before = await inventory(INST);
      expect(before.containers).toHaveLength(3);
      expect(before.networks).toHaveLength(3);
      expect(before.rules).toHaveLength(6);
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((r) => child.once('exit', r));
    expect((await inventory(INST)).containers).toHaveLength(3);

    const bus = new EventBus();
    const sup = new Supervisor({ config: cfg, logger: silentLogger(), events: bus });
    try {
      const { orphans } = await sup.start();
      expect(orphans.containers).toHaveLength(3);
      expect(orphans.networks).toHaveLength(3);
      expect(orphans.rules).toBe(6);
      expect(orphans.errors).toEqual([]);
      expect(bus.history('sandbox.orphans_cleaned')).toHaveLength(1);
      const after = await inventory(INST);
      // the restarted supervisor fills its own pool; nothing of the crashed run remains
      const mine = new Set(sup[SUPERVISOR_TEST_HOOKS].pooled().map((p) => p.containerId));
      expect(after.containers.filter((c) => !mine.has(c))).toEqual([]);
    } finally {
      await sup.stop();
    }
    expect(await inventory(INST)).toEqual({ containers: [], networks: [], rules: [] });
  });
});

describe.skipIf(!gate.ok || !image)('admission matrix, all 9 cells (NFR-SEC-38, real Docker)', () => {
  const admitted: Record<string, 'runsc' | 'runc'> = {
    'trusted_operator×runc': 'runc',
    'trusted_operator×gvisor': 'runsc',
    'internal_workforce×gvisor': 'runsc',
  };
  const instances: string[] = [];
  afterAll(async () => {
    for (const i of instances) await sweepInstance(i).catch(() => undefined);
  });

  let n = 0;
  for (const profile of TRUST_PROFILES) {
    for (const runtime of RUNTIMES) {
      const want = admitted[`${profile}×${runtime}`];
      const inst = `e2e-adm-${n++}`;
      it(`${profile} × ${runtime}: ${want ? `admitted on ${want}` : 'refused'}`, async () => {
        instances.push(inst);
        const bus = new EventBus();
        const sup = new Supervisor({ config: testConfig(inst, { trustProfile: profile, runtime }), logger: silentLogger(), events: bus });
        if (!want) {
          expect(await errorCode(sup.start())).toBe('admission_refused');
          expect(bus.history('sandbox.admission_refused')).toHaveLength(1);
          expect(await errorCode(sup.createSession('x'))).toBe('sandbox_failed');
          return;
        }
        await sup.start();
        try {
          const s = await sup.createSession('x');
          expect(s.runtime).toBe(want);
          const d = sup.describe(s.sessionId)!;
          expect((await docker.getContainer(d.containerId).inspect()).HostConfig.Runtime).toBe(want);
          const u = await sup.exec(s.sessionId, { command: ['uname', '-r'] });
          if (want === 'runsc') expect(u.stdout.trim()).not.toBe(os.release());
          else expect(u.stdout.trim()).toBe(os.release());
        } finally {
          await sup.stop();
        }
      });
    }
  }

  it('a policy change is checked again at session create', async () => {
    const inst = 'e2e-adm-reload';
    instances.push(inst);
    const sup = new Supervisor({ config: testConfig(inst), logger: silentLogger(), events: new EventBus() });
    await sup.start();
    try {
      expect(() => sup.setPolicy({ trustProfile: 'untrusted', runtime: 'gvisor', sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 600, absoluteLifetimeSeconds: 3600 } })).toThrow(PortcullisError);
      (sup as unknown as { policy: { trustProfile: string } }).policy.trustProfile = 'untrusted';
      expect(await errorCode(sup.createSession('x'))).toBe('admission_refused');
    } finally {
      await sup.stop();
    }
  });

  it('runtime mismatch: the container is destroyed and the session refused', async () => {
    const inst = 'e2e-adm-mismatch';
    instances.push(inst);
    const bus = new EventBus();
    // a deployment whose "gvisor" runtime name points at runc: Docker obeys, the in-guest check does not
    const sup = new Supervisor({ config: testConfig(inst, { dockerRuntimes: { gvisor: 'runc', runc: 'runc' } }), logger: silentLogger(), events: bus });
    await sup.start();
    try {
      expect(await errorCode(sup.createSession('x'))).toBe('runtime_mismatch');
      expect(bus.history('sandbox.runtime_mismatch')).toHaveLength(1);
      const sandboxId = bus.history('sandbox.runtime_mismatch')[0]!.data.sandboxId;
      expect(bus.history('sandbox.destroyed').map((e) => e.data.sandboxId)).toContain(sandboxId);
      expect(sup.listSessions()).toEqual([]);
      expect(await inventory(inst)).toEqual({ containers: [], networks: [], rules: [] });
    } finally {
      await sup.stop();
    }
  });

  it('a create that fails while the container is still being made leaves no container behind', async () => {
    const inst = 'e2e-create-race';
    instances.push(inst);
    const sup = new Supervisor({ config: testConfig(inst), logger: silentLogger(), events: new EventBus() });
    await sup.start();
    try {
      // the firewall step fails first, while Docker is still creating the container
      const fw = sup[SUPERVISOR_TEST_HOOKS].firewall();
      const real = fw.allowSandbox.bind(fw);
      fw.allowSandbox = () => Promise.reject(new Error('injected: iptables-restore failed'));
      try {
        await expect(sup.createSession('x')).rejects.toThrow(/injected/);
      } finally {
        fw.allowSandbox = real;
      }
      // the teardown knew about the container and removed it (it would otherwise stay "Created")
      await eventually(async () => (await inventory(inst)).containers.length === 0, 10_000, 'no container left');
      expect(await inventory(inst)).toEqual({ containers: [], networks: [], rules: [] });
      // and the supervisor still works
      const ok = await sup.createSession('y');
      await sup.destroySession(ok.sessionId, 'test');
    } finally {
      await sup.stop();
    }
  });
});
