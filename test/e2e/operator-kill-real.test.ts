import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';
import { floodConnect, PORT, startOperatorStack, type Flood, type McpTestClient, type OperatorStack } from '../harness/operator-stack.js';
import { summarize } from '../bench/machine.js';
import { LABEL_INSTANCE, LABEL_SANDBOX_ID } from '../../sandbox/container.js';
import type { KillResult } from '../../operator/kill.js';

/**
 * The kill switch against the REAL supervisor: gVisor sandboxes made through the MCP path (gateway →
 * supervisor → Docker + runsc), their egress through a real Envoy with sessions required at every
 * rung, the gateway registered with the denylist. Kill one, then all, while the agent path is under
 * a modest load (an MCP session running tools, and authorized CONNECTs with its egress token). The
 * kill latency distribution goes to the test output. Afterwards, for every killed session:
 *  - its sandbox container is gone (docker ps -a by the supervisor's labels);
 *  - a CONNECT tunnel already open with its credential (the token its sandbox was given) refuses
 *    the next request inside the bumped tunnel (403 session_revoked, nothing reaches the upstream,
 *    so no credential is injected), and an open transparent tunnel is cut within maxTunnelSeconds;
 *  - a new tunnel with its credential is refused;
 *  - its MCP session refuses tool calls with session_revoked, without reaching the supervisor.
 */
const gate = e2eGate(['envoy', 'docker', 'runsc', 'root', 'netns'], 'operator kill switch with the real supervisor');
// fixed, so a run that died leaves nothing the next run's supervisor does not sweep (orphans by label)
const INSTANCE = 'operator-kill-real-e2e';
const TUNNEL_BOUND_S = 8;
const KILLS = Number(process.env.OPERATOR_KILL_REAL_KILLS ?? 4);

/** A sandbox's egress token, from the proxy URL its supervisor configured. */
function tokenFromProxy(url: string): string {
  const u = new URL(url.trim());
  expect(u.username).toBe('session');
  return decodeURIComponent(u.password);
}

/** Containers (any state) of our supervisor instance; of one sandbox when given its sandbox id. */
function containersOf(sandboxId?: string): string[] {
  const filters = ['--filter', `label=${LABEL_INSTANCE}=${INSTANCE}`, ...(sandboxId ? ['--filter', `label=${LABEL_SANDBOX_ID}=${sandboxId}`] : [])];
  return execFileSync('docker', ['ps', '-a', '-q', ...filters], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

describe.skipIf(!gate.ok)('kill switch with the real supervisor (gVisor), through the MCP path', () => {
  let s: OperatorStack;
  /** supervisor execs per session (counted from its events; the bus keeps only the recent ones) */
  const execCount = new Map<string, number>();
  const samples = { killCall: [] as number[], refusedInTunnel: [] as number[], revoke: [] as number[], killAll: [] as number[] };

  beforeAll(async () => {
    s = await startOperatorStack({
      tripwire: { bytesPerSession: '256Mi', distinctDestinations: 64, window: '10m', onTrip: 'alert' },
      maxTunnelSeconds: TUNNEL_BOUND_S,
      realSupervisor: { instanceId: INSTANCE },
    });
    fs.chmodSync(s.tmp, 0o755);
    s.sandboxEvents.on((e) => {
      if (e.type === 'sandbox.exec' && e.sessionId) execCount.set(e.sessionId, (execCount.get(e.sessionId) ?? 0) + 1);
    });
  }, 180_000);

  afterAll(async () => {
    const line = (k: string, v: number[]) => (v.length ? `${k} ${JSON.stringify(summarize(v))}` : `${k} (none)`);
    process.stderr.write(
      `[operator kill real] latency ms (gVisor sandboxes, real teardown, under load):\n  ${line('kill call (API → sandbox destroyed)', samples.killCall)}\n  ${line('kill → next request in the open tunnel refused', samples.refusedInTunnel)}\n  ${line('revocation inside the kill', samples.revoke)}\n  ${line('kill-all', samples.killAll)}\n`,
    );
    await s?.close();
    // nothing of ours is left behind
    if (gate.ok) expect(containersOf()).toEqual([]);
  }, 180_000);

  /** An MCP session with a gVisor sandbox: its sandbox id and the egress token the sandbox holds. */
  async function victim(caller: string): Promise<{ mcp: McpTestClient; id: string; sandboxId: string; token: string }> {
    const mcp = await s.mcp(caller);
    const r = (await mcp.client.callTool({ name: 'exec', arguments: { command: ['sh', '-c', 'printf %s "$HTTPS_PROXY"'], timeoutMs: 60_000 } })).structuredContent as { exitCode: number; stdout: string };
    expect(r.exitCode, JSON.stringify(r)).toBe(0);
    const mine = s.sandbox.listSessions().filter((x) => x.owner === caller && x.state === 'ready');
    expect(mine).toHaveLength(1);
    expect(mine[0]!.runtime).toBe('runsc');
    const d = s.supervisor!.describe(mine[0]!.sessionId);
    expect(d?.containerId).toBeTruthy();
    return { mcp, id: mine[0]!.sessionId, sandboxId: d!.sandboxId, token: tokenFromProxy(r.stdout) };
  }

  /** The agent path under a modest load: one MCP session running tools, 4 CONNECT workers with its token. */
  async function load(caller: string): Promise<{ stop(): Promise<{ tools: number; connects: number }>; session: { id: string; mcp: McpTestClient } }> {
    const v = await victim(caller);
    let stop = false;
    let tools = 0;
    const loop = (async () => {
      while (!stop) {
        try {
          await v.mcp.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
          tools++;
        } catch {
          // refused once the load session itself is killed (kill-all)
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    })();
    const flood: Flood = floodConnect(s.tn.rootIp, s.egressPort, v.token, `sink.test:${PORT}`, 4);
    return {
      session: { id: v.id, mcp: v.mcp },
      async stop() {
        stop = true;
        await loop;
        const connects = await flood.stop();
        await v.mcp.close();
        return { tools, connects };
      },
    };
  }

  /** A transparent tunnel carrying a slow upload; resolves when the tunnel ends. */
  function slowUpload(token: string): { child: ChildProcess; ended: Promise<{ code: number | null; at: number }>; startedAt: number } {
    const file = path.join(s.tmp, 'upload.bin');
    if (!fs.existsSync(file)) {
      fs.writeFileSync(file, Buffer.alloc(4 * 1024 * 1024, 0x62));
      fs.chmodSync(file, 0o644);
    }
    const startedAt = Date.now();
    // 64 KiB/s for 4 MiB: about a minute, far longer than the tunnel bound
    const child = s.spawnCurl(`https://sink.test:${PORT}/upload`, { token, args: ['-X', 'POST', '--data-binary', `@${file}`, '--limit-rate', '64K'] });
    const ended = new Promise<{ code: number | null; at: number }>((r) => child.once('exit', (code) => r({ code, at: Date.now() })));
    return { child, ended, startedAt };
  }

  async function assertKilled(v: { mcp: McpTestClient; id: string; sandboxId: string; token: string }) {
    // the container is gone
    expect(containersOf(v.sandboxId), 'containers of the killed sandbox').toEqual([]);
    expect(s.sandbox.getSession(v.id)?.state ?? 'destroyed').toBe('destroyed');
    // its MCP session is refused, without reaching the supervisor
    const execsOf = () => execCount.get(v.id) ?? 0;
    const execs = execsOf();
    expect(execs).toBeGreaterThan(0); // positive control: its earlier calls are there
    await expect(v.mcp.client.callTool({ name: 'exec', arguments: { command: ['echo', 'again'] } })).rejects.toThrow(/session_revoked/);
    expect(execsOf()).toBe(execs);
    // a new tunnel with its credential is refused
    const fresh = await s.curl(`https://api.bump.test:${PORT}/fresh`, { token: v.token, cacert: s.deploymentCaFile });
    expect(fresh.statuses[0]).toBe(403);
    expect(fresh.reasons[0]).toBe('session_revoked');
    expect(s.up.requests().filter((q) => q.url === '/fresh')).toEqual([]);
  }

  it('kill one session at a time under load: container gone, open tunnels refused / cut within the bound, nothing injected, MCP refused', async () => {
    const l = await load('load-1');
    try {
      for (let i = 0; i < KILLS; i++) {
        const v = await victim(`victim-${i}`);
        expect(containersOf(v.sandboxId)).toHaveLength(1);
        // the session's credential opens a bump tunnel (credential injected) and a transparent one
        const tunnel = await s.tunnel(v.token);
        const upload = i === 0 ? slowUpload(v.token) : undefined;
        try {
          expect(tunnel.connect).toMatch(/ 200 /);
          const ok = await tunnel.get(`/real-before-${i}`, 'Bearer guest');
          expect(ok.status).toBe(200);
          // (the upstream reports on its stdout, which can arrive after the response under load)
          await s.up.waitFor((e) => e.event === 'request' && e.url === `/real-before-${i}`, 5_000);
          expect(s.up.requests().filter((r) => r.url === `/real-before-${i}`).map((r) => r.headers.authorization)).toEqual(['Bearer s3cret-v1']);

          const t0 = performance.now();
          const r = await s.client.request<{ result: KillResult }>('POST', `/v1/sessions/${v.id}/kill`, { note: `real e2e ${i}` });
          samples.killCall.push(performance.now() - t0);
          const refused = await tunnel.get(`/real-after-${i}`, 'Bearer guest');
          samples.refusedInTunnel.push(performance.now() - t0);
          expect(r.status).toBe(200);
          expect(r.body.result).toMatchObject({ sessionId: v.id, sandbox: 'destroyed', newlyDenied: true });
          samples.revoke.push(r.body.result.revokeMs);
          expect(refused).toMatchObject({ status: 403, reason: 'session_revoked' });
          // nothing of the killed session reached the upstream: no credential injected for it
          expect(s.up.requests().filter((q) => q.url === `/real-after-${i}`)).toEqual([]);
          await assertKilled(v);
          if (upload) {
            // the transparent tunnel (opaque to Envoy after CONNECT) ends within its bound
            const end = await upload.ended;
            expect(end.code).not.toBe(0);
            expect(end.at - upload.startedAt).toBeLessThan((TUNNEL_BOUND_S + 5) * 1000);
          }
        } finally {
          tunnel.close();
          upload?.child.kill();
          await v.mcp.close();
        }
      }
    } finally {
      const done = await l.stop();
      process.stderr.write(`[operator kill real] load during the kills: ${done.tools} MCP tool calls, ${done.connects} CONNECTs\n`);
      expect(done.tools).toBeGreaterThan(0);
      expect(done.connects).toBeGreaterThan(0);
    }
    // the load session was not killed by the single kills
    expect(s.gateway.isRevoked(l.session.id)).toBe(false);
    expect(summarize(samples.killCall).max).toBeLessThan(30_000);
  }, 600_000);

  it('kill-all under load: every sandbox of the supervisor gone, every MCP session refused (with or without a sandbox), tunnels refused; the callers may start over', async () => {
    const l = await load('load-2');
    const victims = [];
    for (let i = 0; i < 3; i++) victims.push(await victim(`all-${i}`));
    // an MCP session that never made a sandbox is a current session too
    const bare = await s.mcp('bare');
    await bare.client.callTool({ name: 'egress_policy', arguments: {} });
    const tunnels = await Promise.all(victims.map((v) => s.tunnel(v.token)));
    try {
      for (const [i, t] of tunnels.entries()) expect((await t.get(`/real-all-before-${i}`)).status).toBe(200);
      expect(containersOf().length).toBeGreaterThanOrEqual(4);
      const t0 = performance.now();
      const r = await s.client.request<{ result: { sessions: KillResult[]; revokeAllMs: number } }>('POST', '/v1/kill-all', {});
      samples.killAll.push(performance.now() - t0);
      expect(r.status).toBe(200);
      const killed = r.body.result.sessions.map((x) => x.sessionId);
      expect(killed).toEqual(expect.arrayContaining([...victims.map((v) => v.id), l.session.id]));
      expect(killed.some((id) => id.startsWith('mcp:'))).toBe(true);
      process.stderr.write(`[operator kill real] kill-all of ${killed.length} sessions: ${Math.round(samples.killAll[0]!)} ms, all revoked after ${r.body.result.revokeAllMs.toFixed(2)} ms\n`);
      for (const [i, t] of tunnels.entries()) expect(await t.get(`/real-all-after-${i}`)).toMatchObject({ status: 403, reason: 'session_revoked' });
      expect(s.up.requests().filter((q) => q.url.startsWith('/real-all-after'))).toEqual([]);
      for (const v of victims) await assertKilled(v);
      await expect(bare.client.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toThrow(/session_revoked/);
      await eventually(() => containersOf().length === 0, 30_000, 'every container of the supervisor removed');
      expect(s.sandbox.listSessions().filter((x) => x.state === 'ready' || x.state === 'creating')).toEqual([]);
    } finally {
      for (const t of tunnels) t.close();
      await l.stop();
      await bare.close();
      for (const v of victims) await v.mcp.close();
    }
    // kill-all is not a ban: a caller opens a new MCP session and gets a new sandbox
    const again = await victim('all-0');
    try {
      expect(victims.map((v) => v.id)).not.toContain(again.id);
      const ok = await s.curl(`https://api.bump.test:${PORT}/after-kill-all`, { token: again.token, cacert: s.deploymentCaFile });
      expect(ok.statuses.at(-1)).toBe(200);
    } finally {
      await again.mcp.close();
    }
  }, 600_000);
});
