/**
 * MCP ingress benchmarks (run: `npx tsx test/bench/mcp.bench.ts`; results in test/bench/results/mcp.json).
 *
 * 1. Tool-call latency for `exec true`, p50/p99, on three paths:
 *      bare     SandboxService.exec directly (the sandbox's own cost)
 *      gateway  MCP SDK client → gateway → sandbox (no Envoy)
 *      ingress  MCP SDK client → Envoy (jwt_authn, rate limit, buffer, ext_authz) → gateway → sandbox
 *    and the overhead ingress + gateway add beyond the bare exec (goal ≤ 15 ms p99).
 * 2. NFR-SEC-46: a well-behaved caller's p99 alone, then while another caller (another process)
 *    bursts 10k calls at concurrency 32, under the default per-caller limit (600/min). Goal: p99
 *    during the burst within 1.1× the baseline. Two placements of the burst's load generator:
 *      shared  it runs wherever the scheduler puts it (it competes with Envoy and the control plane
 *              for the same cores, as before);
 *      pinned  it runs on its own core (taskset), Envoy and the Node process (control plane, gateway
 *              and the measuring client) on the other, in the baseline and during the burst alike:
 *              what remains is the interference the system under test lets one caller cause.
 *
 * Rounds (PORTCULLIS_BENCH_ROUNDS, default 5) repeat everything on one stack, so percentiles are
 * reported per round, pooled over all rounds, and as the spread of per-round p99s; an isolation
 * ratio always compares a baseline and a burst measured back to back in the same round (and the
 * pooled baseline with the pooled burst). The machine is shared: the load average is recorded per round.
 *
 * The sandbox is the real Docker + gVisor supervisor with PORTCULLIS_BENCH_SANDBOX=supervisor, else the
 * in-memory SandboxService (bare exec ≈ 0, so the numbers are the MCP path's own cost). Results go to
 * test/bench/results/mcp.json (in-memory) or mcp-supervisor.json (PORTCULLIS_BENCH_NAME overrides).
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { McpGateway, CALLER_HEADER, type GatewaySandbox } from '../../mcp/gateway.js';
import { MemorySandbox } from '../../mcp/testkit.js';
import { compileText } from '../../policy/compile.js';
import { stopAllEnvoys } from '../../envoy/process.js';
import { mcpPost, startMcpStack, type McpStack } from '../harness/mcp-stack.js';
import { summarize, writeResult } from './machine.js';

const log = (s: string) => process.stderr.write(`${s}\n`);
const N = Number(process.env.PORTCULLIS_BENCH_N ?? 1000);
const WARM = 100;
const PACE_MS = 110;

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const policy = (RPM: number) => compileText(
  `${HEAD}mcp:\n  limits: { connectionsPerCaller: 64, requestsPerMinute: ${RPM}, maxBodyBytes: 4Mi }\n  tools:\n    rules:\n      - { callers: ["*"], tools: [exec, read_file, write_file, edit_file, list_files, egress_policy], effect: allow }\n`,
  { file: 'bench.yaml', baseDir: '/tmp' },
);
/** latency runs: a limit that never bites */
const ir = policy(1_000_000);
/** isolation run: the default policy's per-caller limit (600/min: 10/s sustained, burst 100) */
const ISOLATION_RPM = 600;

async function sandboxUnderTest(): Promise<{ sandbox: GatewaySandbox; kind: string; close(): Promise<void> }> {
  if (process.env.PORTCULLIS_BENCH_SANDBOX === 'supervisor') {
    const { Supervisor } = await import('../../sandbox/supervisor.js');
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-mcp-bench-'));
    const s = new Supervisor({
      config: {
        instanceId: 'mcp-bench',
        trustProfile: 'trusted_operator',
        runtime: 'gvisor',
        image: process.env.PORTCULLIS_SANDBOX_IMAGE ?? 'portcullis-sandbox:0.1.0',
        sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 900, absoluteLifetimeSeconds: 3600 },
        egress: { port: 15999 },
        stateDir,
      },
      logger: silentLogger(),
      events: busForSupervisor(),
    });
    await s.start();
    return {
      sandbox: s,
      kind: 'supervisor (docker + runsc)',
      close: async () => {
        await s.stop();
        fs.rmSync(stateDir, { recursive: true, force: true });
      },
    };
  }
  return { sandbox: new MemorySandbox(), kind: 'in-memory SandboxService', close: async () => undefined };
}

function busForSupervisor(): EventBus {
  const bus = new EventBus();
  if (process.env.PC_DEBUG) bus.on((e) => e.type !== 'sandbox.exec' && log(`${new Date().toISOString()} ${e.type} ${JSON.stringify(e.data).slice(0, 200)}`));
  return bus;
}

/** `n` timed calls after a warm-up; `paceMs` spaces call starts (a caller within its rate limit). */
async function timeCalls(client: Client, n: number, paceMs = 0, warm = WARM): Promise<number[]> {
  for (let i = 0; i < warm; i++) await client.callTool({ name: 'exec', arguments: { command: ['true'] } });
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    if (paceMs) await new Promise((r) => setTimeout(r, paceMs));
    const t0 = performance.now();
    const r = await client.callTool({ name: 'exec', arguments: { command: ['true'] } });
    out.push(performance.now() - t0);
    if (r.isError) throw new Error(`exec true failed: ${JSON.stringify(r)}`);
  }
  return out;
}

type Summary = ReturnType<typeof summarize>;
const ROUNDS = Number(process.env.PORTCULLIS_BENCH_ROUNDS ?? 5);
const BASELINE_CALLS = 200;
const cores = os.cpus().length;
const canPin = cores >= 2 && (() => {
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const MODES: Array<'shared' | 'pinned'> = process.env.PORTCULLIS_BENCH_PIN === '0' || !canPin ? ['shared'] : process.env.PORTCULLIS_BENCH_PIN === 'only' ? ['pinned'] : ['shared', 'pinned'];

/** CPU time (user + system) of a process so far, in ms. */
function cpuMs(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
  } catch {
    return NaN;
  }
}

/** Our Envoy child (the harness keeps the ChildProcess private): the `envoy` whose parent is us. */
function envoyPid(): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === 'envoy' && ppid === process.pid) return Number(d);
    } catch {
      // gone
    }
  }
  return undefined;
}

/** Put every thread of `pid` on `cpus` ("0", "1", "0-1"). */
function pin(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

interface IsolationRound {
  mode: 'shared' | 'pinned';
  baselineMs: Summary;
  duringBurstMs: Summary;
  p99Ratio: number;
  p50Ratio: number;
  burst: { calls: number; concurrency: number; durationMs: number; statuses: Record<string, number> };
  /** CPU time spent during the burst, ms */
  cpuMs: { envoy: number; nodeUnderTest: number; burstClient: number };
}

async function main() {
  const sb = await sandboxUnderTest();
  log(`sandbox: ${sb.kind}; N=${N} per path per round; ${ROUNDS} rounds; isolation modes: ${MODES.join(', ')}`);
  const owner = await sb.sandbox.createSession('bench');
  const gw = await McpGateway.start({ sandbox: sb.sandbox, policy: () => ir, logger: silentLogger() });
  const gc = new Client({ name: 'bench', version: '1' });
  const gt = new StreamableHTTPClientTransport(new URL(`http://${gw.address}/mcp`), { requestInit: { headers: { [CALLER_HEADER]: 'bench' } } });
  await gc.connect(gt);
  const stack = await startMcpStack({ ir, sandbox: sb.sandbox });
  const envoy = envoyPid();
  if (MODES.includes('pinned') && !envoy) throw new Error('cannot find our Envoy process to pin it');
  const allCpus = `0-${cores - 1}`;
  let result: Record<string, unknown>;
  try {
    const c = await stack.client(await stack.token('bench'));
    await timeCalls(gc, 0);
    await timeCalls(c.client, 0);
    const pooled = { bare: [] as number[], gateway: [] as number[], ingress: [] as number[] };
    const rounds: Array<Record<string, unknown>> = [];
    const isolation: IsolationRound[] = [];
    const pooledIso = new Map<string, { baseline: number[]; during: number[] }>(MODES.map((m) => [m, { baseline: [], during: [] }]));
    for (let round = 0; round < ROUNDS; round++) {
      const load = os.loadavg();
      // 1. latency (the rate limit must not bite: ~1M/min)
      await stack.setPolicy(ir);
      const bare: number[] = [];
      for (let i = 0; i < WARM + N; i++) {
        const t0 = performance.now();
        await sb.sandbox.exec(owner.sessionId, { command: ['true'] });
        if (i >= WARM) bare.push(performance.now() - t0);
      }
      // alternate which path goes first, so neither always runs right after the other
      const paths: Array<['gateway' | 'ingress', Client]> = round % 2 === 0 ? [['gateway', gc], ['ingress', c.client]] : [['ingress', c.client], ['gateway', gc]];
      const lat: Record<string, number[]> = { bare };
      for (const [name, client] of paths) lat[name] = await timeCalls(client, N, 0, 20);
      pooled.bare.push(...bare);
      pooled.gateway.push(...lat.gateway!);
      pooled.ingress.push(...lat.ingress!);
      const s = { bare: summarize(bare), gateway: summarize(lat.gateway!), ingress: summarize(lat.ingress!) };
      log(`round ${round + 1}: p50/p99 ms bare ${s.bare.p50}/${s.bare.p99} gateway ${s.gateway.p50}/${s.gateway.p99} ingress ${s.ingress.p50}/${s.ingress.p99} (load ${load.map((x) => x.toFixed(1)).join(' ')})`);
      rounds.push({ round: round + 1, loadavg: load, execTrueMs: s, addedByIngressAndGatewayMs: { p50: round3(s.ingress.p50 - s.bare.p50), p99: round3(s.ingress.p99 - s.bare.p99) } });

      // 2. isolation, under the default per-caller limit
      await stack.setPolicy(policy(ISOLATION_RPM));
      for (const mode of MODES) {
        if (mode === 'pinned') {
          pin(process.pid, '0');
          pin(envoy!, '0');
        }
        try {
          const r = await isolationRound(stack, mode, `${round}`);
          isolation.push(r.summary);
          pooledIso.get(mode)!.baseline.push(...r.baseline);
          pooledIso.get(mode)!.during.push(...r.during);
          log(`round ${round + 1} isolation (${mode}): p99 ${r.summary.baselineMs.p99} → ${r.summary.duringBurstMs.p99} ms (×${r.summary.p99Ratio}), p50 ×${r.summary.p50Ratio}; burst ${r.summary.burst.durationMs} ms ${JSON.stringify(r.summary.burst.statuses)}; cpu ms ${JSON.stringify(r.summary.cpuMs)}`);
        } finally {
          if (mode === 'pinned') {
            pin(process.pid, allCpus);
            pin(envoy!, allCpus);
          }
        }
      }
    }
    await c.close();

    const s = { bare: summarize(pooled.bare), gateway: summarize(pooled.gateway), ingress: summarize(pooled.ingress) };
    const perRoundP99 = (k: 'bare' | 'gateway' | 'ingress') => spread(rounds.map((r) => (r.execTrueMs as Record<string, Summary>)[k]!.p99));
    const addedP99 = spread(rounds.map((r) => (r.addedByIngressAndGatewayMs as { p99: number }).p99));
    result = {
      sandbox: sb.kind,
      samplesPerPathPerRound: N,
      rounds: ROUNDS,
      execTrueMs: s,
      addedByGatewayMs: { p50: round3(s.gateway.p50 - s.bare.p50), p99: round3(s.gateway.p99 - s.bare.p99) },
      addedByIngressAndGatewayMs: { p50: round3(s.ingress.p50 - s.bare.p50), p99: round3(s.ingress.p99 - s.bare.p99) },
      perRoundP99Ms: { bare: perRoundP99('bare'), gateway: perRoundP99('gateway'), ingress: perRoundP99('ingress'), addedByIngressAndGateway: addedP99 },
      goalP99AddedMs: 15,
      isolation: {
        goalP99Ratio: 1.1,
        requestsPerMinute: ISOLATION_RPM,
        callerPaceMs: PACE_MS,
        baselineCallsPerRound: BASELINE_CALLS,
        byMode: Object.fromEntries(
          MODES.map((m) => {
            const rs = isolation.filter((r) => r.mode === m);
            const p = pooledIso.get(m)!;
            const b = summarize(p.baseline);
            const d = summarize(p.during);
            return [m, { pooled: { baselineMs: b, duringBurstMs: d, p99Ratio: round3(d.p99 / b.p99), p50Ratio: round3(d.p50 / b.p50) }, perRoundP99Ratio: spread(rs.map((r) => r.p99Ratio)), perRoundP50Ratio: spread(rs.map((r) => r.p50Ratio)) }];
          }),
        ),
        rounds: isolation,
      },
      roundsDetail: rounds,
      gatewaySaw: stack.gateway.counters(),
    };
  } finally {
    await gt.terminateSession().catch(() => undefined);
    await gc.close().catch(() => undefined);
    await gw.close();
    await sb.sandbox.destroySession(owner.sessionId, 'bench').catch(() => undefined);
    await stack.close();
    await stopAllEnvoys();
    await sb.close();
  }
  const name = process.env.PORTCULLIS_BENCH_NAME ?? (process.env.PORTCULLIS_BENCH_SANDBOX === 'supervisor' ? 'mcp-supervisor' : 'mcp');
  const file = writeResult(name, result);
  log(JSON.stringify(result, null, 2));
  log(`wrote ${file}`);
}

/** One caller alone (paced, within its limit), then the same while another caller bursts from another process. */
async function isolationRound(stack: McpStack, mode: 'shared' | 'pinned', tag: string): Promise<{ summary: IsolationRound; baseline: number[]; during: number[] }> {
  const bobAlone = await stack.client(await stack.token(`bob-baseline-${mode}-${tag}`));
  // bob is a well-behaved caller: ~9 calls/s, inside the per-caller limit (10/s, burst 100)
  const baseline = await timeCalls(bobAlone.client, BASELINE_CALLS, PACE_MS, 10);
  await bobAlone.close();
  const bob = await stack.client(await stack.token(`bob-under-burst-${mode}-${tag}`));
  await timeCalls(bob.client, 0, PACE_MS, 5);
  const aliceToken = await stack.token(`alice-${mode}-${tag}`);
  const init = await mcpPost(stack.url, aliceToken, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'burst', version: '1' } } });
  const h = { 'mcp-session-id': String(init.headers['mcp-session-id']), 'mcp-protocol-version': '2025-06-18' };
  // alice's burst comes from another process, so it competes with bob for the system under test
  // (Envoy, control plane, gateway), not for the measuring client's event loop
  const calls = 10_000;
  const concurrency = 32;
  const argv = ['--import', 'tsx', fileURLToPath(import.meta.url)];
  const [cmd, args] = mode === 'pinned' ? ['taskset', ['-c', String(cores - 1), process.execPath, ...argv]] : [process.execPath, argv];
  const child = spawn(cmd, args, {
    env: { ...process.env, PC_MCP_BURST: JSON.stringify({ url: stack.url, token: aliceToken, headers: h, calls, concurrency }) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let childOut = '';
  child.stdout!.on('data', (d) => (childOut += d));
  let burstDone = false;
  const burst = new Promise<{ statuses: Record<string, number>; cpuMs: number }>((resolve, reject) =>
    child.on('exit', (code) => {
      burstDone = true;
      if (code === 0) resolve(JSON.parse(childOut) as { statuses: Record<string, number>; cpuMs: number });
      else reject(new Error(`burst process exited ${code}`));
    }),
  );
  const envoy = envoyPid();
  const cpu0 = { envoy: envoy ? cpuMs(envoy) : NaN, self: cpuMs(process.pid) };
  const t0 = performance.now();
  const during: number[] = [];
  while (!burstDone && during.length < 2000) {
    await new Promise((r) => setTimeout(r, PACE_MS));
    const s = performance.now();
    const r = await bob.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
    if (!burstDone) during.push(performance.now() - s);
    if (r.isError) throw new Error('bob failed during the burst');
  }
  const out = await burst;
  const durationMs = round3(performance.now() - t0);
  const cpu = { envoy: round3((envoy ? cpuMs(envoy) : NaN) - cpu0.envoy), nodeUnderTest: round3(cpuMs(process.pid) - cpu0.self), burstClient: round3(out.cpuMs) };
  await bob.close();
  const b = summarize(baseline);
  const d = summarize(during);
  return {
    summary: { mode, baselineMs: b, duringBurstMs: d, p99Ratio: round3(d.p99 / b.p99), p50Ratio: round3(d.p50 / b.p50), burst: { calls, concurrency, durationMs, statuses: out.statuses }, cpuMs: cpu },
    baseline,
    during,
  };
}

/** min / median / max of per-round values */
function spread(xs: number[]): { min: number; median: number; max: number; values: number[] } {
  const s = [...xs].sort((a, b) => a - b);
  return { min: round3(s[0] ?? NaN), median: round3(s.length ? (s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2) : NaN), max: round3(s.at(-1) ?? NaN), values: xs.map(round3) };
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Child process: POST `calls` tools/call exec true with keep-alive, `concurrency` at a time; print status counts and its CPU time. */
async function burstChild(cfg: { url: string; token: string; headers: Record<string, string>; calls: number; concurrency: number }): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.concurrency });
  const u = new URL(cfg.url);
  const statuses: Record<string, number> = {};
  let next = 0;
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      const body = JSON.stringify({ jsonrpc: '2.0', id: i, method: 'tools/call', params: { name: 'exec', arguments: { command: ['true'] } } });
      const req = http.request(
        { host: u.hostname, port: u.port, path: u.pathname, method: 'POST', agent, headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${cfg.token}`, ...cfg.headers } },
        (res) => {
          res.resume();
          res.on('end', () => {
            statuses[res.statusCode ?? 0] = (statuses[res.statusCode ?? 0] ?? 0) + 1;
            resolve();
          });
        },
      );
      req.on('error', () => {
        statuses.error = (statuses.error ?? 0) + 1;
        resolve();
      });
      req.end(body);
    });
  await Promise.all(
    Array.from({ length: cfg.concurrency }, async () => {
      while (next < cfg.calls) await one(next++);
    }),
  );
  agent.destroy();
  const u2 = process.cpuUsage();
  process.stdout.write(JSON.stringify({ statuses, cpuMs: (u2.user + u2.system) / 1000 }));
}

if (process.env.PC_MCP_BURST) {
  burstChild(JSON.parse(process.env.PC_MCP_BURST)).then(
    () => process.exit(0),
    () => process.exit(1),
  );
} else main().then(
  () => process.exit(0),
  (e) => {
    log(String((e as Error)?.stack ?? e));
    process.exit(1);
  },
);
