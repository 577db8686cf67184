/**
 * MCP ingress benchmarks (run: `npx tsx test/bench/mcp.bench.ts`; results in test/bench/results/mcp.json).
 *
 * 1. Tool-call latency for `exec true`, p50/p99, on three paths:
 *      bare     SandboxService.exec directly (the sandbox's own cost)
 *      gateway  MCP SDK client → gateway → sandbox (no Envoy)
 *      ingress  MCP SDK client → Envoy (jwt_authn, rate limit, buffer, ext_authz) → gateway → sandbox
 *    and the overhead ingress + gateway add beyond the bare exec (goal ≤ 15 ms p99).
 * 2. NFR-SEC-46: a well-behaved caller's p99 alone, then while another caller (another process)
 *    bursts 10k calls at concurrency 32, under the default per-caller limit (600/min).
 *
 * The sandbox is the real Docker + gVisor supervisor with PORTCULLIS_BENCH_SANDBOX=supervisor, else the
 * in-memory SandboxService (bare exec ≈ 0, so the numbers are the MCP path's own cost). Results go to
 * test/bench/results/mcp.json (in-memory) or mcp-supervisor.json.
 */
import { spawn } from 'node:child_process';
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
import { mcpPost, startMcpStack } from '../harness/mcp-stack.js';
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

async function main() {
  const sb = await sandboxUnderTest();
  log(`sandbox: ${sb.kind}; N=${N}`);

  // 1a. bare exec
  const owner = await sb.sandbox.createSession('bench');
  const bare: number[] = [];
  for (let i = 0; i < WARM + N; i++) {
    const t0 = performance.now();
    await sb.sandbox.exec(owner.sessionId, { command: ['true'] });
    if (i >= WARM) bare.push(performance.now() - t0);
  }
  await sb.sandbox.destroySession(owner.sessionId, 'bench');

  log(`bare exec done`);
  // 1b. gateway only
  const gw = await McpGateway.start({ sandbox: sb.sandbox, policy: () => ir, logger: silentLogger() });
  const gc = new Client({ name: 'bench', version: '1' });
  const gt = new StreamableHTTPClientTransport(new URL(`http://${gw.address}/mcp`), { requestInit: { headers: { [CALLER_HEADER]: 'bench' } } });
  await gc.connect(gt);
  const viaGateway = await timeCalls(gc, N);
  await gt.terminateSession();
  await gc.close();
  await gw.close();

  log(`gateway path done`);
  // 1c. through Envoy
  const stack = await startMcpStack({ ir, sandbox: sb.sandbox });
  let result: Record<string, unknown>;
  try {
    const c = await stack.client(await stack.token('bench'));
    const viaIngress = await timeCalls(c.client, N);
    await c.close();

    log(`ingress path done`);
    // 2. NFR-SEC-46: bob alone, then bob while alice bursts 10k calls
    await stack.setPolicy(policy(ISOLATION_RPM));
    const bobAlone = await stack.client(await stack.token('bob-baseline'));
    // bob is a well-behaved caller: ~9 calls/s, inside the per-caller limit (10/s, burst 100)
    const baseline = await timeCalls(bobAlone.client, 200, PACE_MS, 10);
    await bobAlone.close();
    log(`baseline done`);
    const bob = await stack.client(await stack.token('bob-under-burst'));
    const aliceToken = await stack.token('alice');
    const init = await mcpPost(stack.url, aliceToken, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'burst', version: '1' } } });
    const h = { 'mcp-session-id': String(init.headers['mcp-session-id']), 'mcp-protocol-version': '2025-06-18' };
    // alice's burst comes from another process, so it competes with bob for the system under test
    // (Envoy, control plane, gateway), not for the measuring client's event loop
    let burstDone = false;
    const burstStart = performance.now();
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      env: { ...process.env, PC_MCP_BURST: JSON.stringify({ url: stack.url, token: aliceToken, headers: h, calls: 10_000, concurrency: 32 }) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let childOut = '';
    child.stdout.on('data', (d) => (childOut += d));
    const burst = new Promise<Record<string, number>>((resolve, reject) =>
      child.on('exit', (code) => {
        burstDone = true;
        if (code === 0) resolve(JSON.parse(childOut) as Record<string, number>);
        else reject(new Error(`burst process exited ${code}`));
      }),
    );
    const during: number[] = [];
    while (!burstDone && during.length < 2000) {
      await new Promise((r) => setTimeout(r, PACE_MS));
      const t0 = performance.now();
      const r = await bob.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      if (!burstDone) during.push(performance.now() - t0);
      if (r.isError) throw new Error('bob failed during the burst');
    }
    const statuses = await burst;
    const burstMs = performance.now() - burstStart;
    await bob.close();

    const s = { bare: summarize(bare), gateway: summarize(viaGateway), ingress: summarize(viaIngress) };
    const b = summarize(baseline);
    const d = summarize(during);
    result = {
      sandbox: sb.kind,
      samples: N,
      execTrueMs: s,
      addedByGatewayMs: { p50: round(s.gateway.p50 - s.bare.p50), p99: round(s.gateway.p99 - s.bare.p99) },
      addedByIngressAndGatewayMs: { p50: round(s.ingress.p50 - s.bare.p50), p99: round(s.ingress.p99 - s.bare.p99) },
      goalP99AddedMs: 15,
      isolation: {
        baselineMs: b,
        duringBurstMs: d,
        p99Ratio: round(d.p99 / b.p99),
        goalP99Ratio: 1.1,
        requestsPerMinute: ISOLATION_RPM,
        callerPaceMs: PACE_MS,
        burst: { calls: 10_000, concurrency: 32, durationMs: round(burstMs), statuses },
      },
      gatewaySaw: stack.gateway.counters(),
    };
  } finally {
    await stack.close();
    await stopAllEnvoys();
    await sb.close();
  }
  const file = writeResult(process.env.PORTCULLIS_BENCH_SANDBOX === 'supervisor' ? 'mcp-supervisor' : 'mcp', result);
  log(JSON.stringify(result, null, 2));
  log(`wrote ${file}`);
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Child process: POST `calls` tools/call exec true with keep-alive, `concurrency` at a time; print status counts. */
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
  process.stdout.write(JSON.stringify(statuses));
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
