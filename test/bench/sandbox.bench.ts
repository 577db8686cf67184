import Docker from 'dockerode';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { SUPERVISOR_TEST_HOOKS, Supervisor } from '../../sandbox/supervisor.js';
import { imageAvailable, sandboxImage, sweepInstance, testConfig } from '../../sandbox/testkit.js';
import { summarize, writeResult } from './machine.js';

/**
 * Supervisor latencies on real Docker + runsc. Run directly (root, dockerd with runsc, the image built):
 *   npx tsx test/bench/sandbox.bench.ts [createRuns=20] [execRuns=200]
 * writes test/bench/results/sandbox.json.
 *
 * - createCold: `createSession` with no warm pool: network + firewall rules + container (runsc) +
 *   agent start + runtime checks + credential. Each session is destroyed (not timed) before the next.
 * - claimWarm: `createSession` with a pooled sandbox ready: re-key the agent, mint and install the
 *   credential. The pool refills between runs (not timed).
 * - execAgent: `exec(['true'])` end to end through the supervisor over the agent channel (validation,
 *   env filter, connect + mutual auth, spawn in gVisor, exit, result).
 * - agentPing: the agent channel alone (connect + auth + one request), no process spawned.
 * - execDockerFallback: `exec(['true'])` through the supervisor with the docker-exec transport.
 * - dockerExecRaw: a bare dockerode exec of `true` (no wrapper), for reference.
 */

const MiB = 1 << 20;
const createRuns = Number(process.argv[2] ?? 20);
const execRuns = Number(process.argv[3] ?? 200);
const log = (s: string): void => void process.stderr.write(`[sandbox-bench] ${s}\n`);

if (!imageAvailable()) throw new Error(`image ${sandboxImage()} missing (bash sandbox/image/build.sh)`);
if (createRuns < 20 || execRuns < 100) throw new RangeError('use at least 20 create runs and 100 exec runs');

const limits = { memoryBytes: 512 * MiB, workspaceBytes: 64 * MiB, tmpBytes: 32 * MiB, pids: 128, hostThreads: 2048 };

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const v = await fn();
  return [performance.now() - t0, v];
}

async function coldCreate(): Promise<number[]> {
  const inst = 'bench-cold';
  await sweepInstance(inst);
  const sup = new Supervisor({ config: testConfig(inst, { limits }), logger: silentLogger(), events: new EventBus() });
  await sup.start();
  const samples: number[] = [];
  try {
    // one warm-up (image and runtime caches)
    await sup.destroySession((await sup.createSession('warmup')).sessionId, 'bench');
    for (let i = 0; i < createRuns; i++) {
      const [ms, s] = await time(() => sup.createSession('bench'));
      samples.push(ms);
      await sup.destroySession(s.sessionId, 'bench');
    }
  } finally {
    await sup.stop();
  }
  return samples;
}

async function warmClaim(): Promise<number[]> {
  const inst = 'bench-warm';
  await sweepInstance(inst);
  const sup = new Supervisor({ config: testConfig(inst, { limits, warmPool: 1 }), logger: silentLogger(), events: new EventBus() });
  await sup.start();
  const samples: number[] = [];
  try {
    for (let i = 0; i < createRuns; i++) {
      await sup.fillPool();
      if (sup[SUPERVISOR_TEST_HOOKS].pooled().length !== 1) throw new Error('pool did not fill');
      const [ms, s] = await time(() => sup.createSession('bench'));
      samples.push(ms);
      await sup.destroySession(s.sessionId, 'bench');
    }
  } finally {
    await sup.stop();
  }
  return samples;
}

async function execBench(): Promise<Record<string, number[]>> {
  const inst = 'bench-exec';
  await sweepInstance(inst);
  const sup = new Supervisor({ config: testConfig(inst, { limits }), logger: silentLogger(), events: new EventBus() });
  await sup.start();
  const out: Record<string, number[]> = { execAgent: [], agentPing: [] };
  try {
    const { sessionId } = await sup.createSession('bench');
    const agent = sup[SUPERVISOR_TEST_HOOKS].agentOf(sup.describe(sessionId)!.sandboxId)!;
    for (let i = 0; i < 10; i++) await sup.exec(sessionId, { command: ['true'] });
    for (let i = 0; i < execRuns; i++) {
      const [ms, r] = await time(() => sup.exec(sessionId, { command: ['true'] }));
      if (r.outcome !== 'exited' || r.exitCode !== 0) throw new Error(`exec true: ${JSON.stringify(r)}`);
      out.execAgent!.push(ms);
    }
    for (let i = 0; i < execRuns; i++) out.agentPing!.push((await time(() => agent.ping()))[0]);
  } finally {
    await sup.stop();
  }
  return out;
}

async function dockerExecBench(): Promise<Record<string, number[]>> {
  const inst = 'bench-dexec';
  await sweepInstance(inst);
  const sup = new Supervisor({ config: testConfig(inst, { limits, exec: { transport: 'docker-exec' } }), logger: silentLogger(), events: new EventBus() });
  await sup.start();
  const out: Record<string, number[]> = { execDockerFallback: [], dockerExecRaw: [] };
  const docker = new Docker();
  try {
    const { sessionId } = await sup.createSession('bench');
    const container = docker.getContainer(sup.describe(sessionId)!.containerId);
    for (let i = 0; i < 5; i++) await sup.exec(sessionId, { command: ['true'] });
    for (let i = 0; i < execRuns; i++) {
      const [ms, r] = await time(() => sup.exec(sessionId, { command: ['true'] }));
      if (r.outcome !== 'exited' || r.exitCode !== 0) throw new Error(`docker exec true: ${JSON.stringify(r)}`);
      out.execDockerFallback!.push(ms);
    }
    for (let i = 0; i < execRuns; i++) {
      const [ms] = await time(async () => {
        const ex = await container.exec({ Cmd: ['true'], AttachStdout: true, AttachStderr: true, User: '10001:10001' });
        const stream = await ex.start({ hijack: true, stdin: false });
        await new Promise<void>((resolve) => {
          stream.on('end', resolve);
          stream.on('close', resolve);
          stream.resume();
        });
        const info = await ex.inspect();
        if (info.ExitCode !== 0) throw new Error(`exit ${info.ExitCode}`);
      });
      out.dockerExecRaw!.push(ms);
    }
  } finally {
    await sup.stop();
  }
  return out;
}

const load0 = (await import('node:os')).loadavg();
log(`cold create × ${createRuns}`);
const cold = summarize(await coldCreate());
log(`cold: ${JSON.stringify(cold)}`);
log(`warm claim × ${createRuns}`);
const warm = summarize(await warmClaim());
log(`warm: ${JSON.stringify(warm)}`);
log(`exec true × ${execRuns} (agent)`);
const ex = await execBench();
log(`exec true × ${execRuns} (docker exec)`);
const dx = await dockerExecBench();
const result = {
  image: sandboxImage(),
  runtime: 'runsc (Debian 0.0~20221219, --network=host)',
  loadAverageAtStart: load0,
  createColdMs: cold,
  claimWarmMs: warm,
  execTrueAgentMs: summarize(ex.execAgent!),
  agentChannelPingMs: summarize(ex.agentPing!),
  execTrueDockerFallbackMs: summarize(dx.execDockerFallback!),
  dockerExecRawMs: summarize(dx.dockerExecRaw!),
  goals: { createColdP99Ms: 1500, claimWarmP99Ms: 100, execOverheadP99Ms: 50, nfr: { 'NFR-PERF-03': 2000, 'NFR-PERF-02': 500, 'NFR-PERF-04': 50 } },
};
const file = writeResult('sandbox', result);
log(JSON.stringify(result, null, 2));
log(`wrote ${file}`);
