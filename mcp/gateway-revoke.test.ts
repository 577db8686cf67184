import http from 'node:http';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { startOperatorPlane } from '../operator/index.js';
import { MemoryAudit, tempDir } from '../operator/testkit.js';
import type { SessionInfo } from '../sandbox/api.js';
import { CALLER_HEADER, McpGateway } from './gateway.js';
import { MemorySandbox, policyIr } from './testkit.js';

/**
 * The gateway as an operator-plane enforcer (SessionRevoker): a revoked session's MCP calls are
 * refused with a stable reason and never reach the supervisor; kill-all reaches sessions that have
 * no sandbox yet; the caller is not banned (a new MCP session works).
 */

const RULES = '      - { callers: ["*"], tools: [exec, read_file, write_file, egress_policy], effect: allow }\n';

async function connect(url: string, caller: string) {
  const client = new Client({ name: 'test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { [CALLER_HEADER]: caller } } });
  await client.connect(transport);
  return { client, transport };
}

function post(port: number, caller: string, sid: string, body: unknown): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/mcp',
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', [CALLER_HEADER]: caller, 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' },
        agent: false,
      },
      (res) => {
        let b = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (b += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b }));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** A sandbox whose createSession waits until released (to revoke while it is being made). */
class SlowSandbox extends MemorySandbox {
  gate: Promise<void> | undefined;
  onCreated?: (info: SessionInfo) => void;
  override async createSession(owner: string): Promise<SessionInfo> {
    if (this.gate) await this.gate;
    const info = await super.createSession(owner);
    this.onCreated?.(info);
    return info;
  }
}

describe('MCP gateway as a session enforcer', () => {
  const sandbox = new SlowSandbox();
  const events = new EventBus();
  const ir = policyIr(RULES);
  let gw: McpGateway;
  let url: string;
  const open: Array<{ client: Client; transport: StreamableHTTPClientTransport }> = [];

  beforeAll(async () => {
    gw = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger(), events, sessionIdleMs: 60_000, maxSessionsPerCaller: 2 });
    url = `http://${gw.address}/mcp`;
  });
  afterEach(async () => {
    sandbox.gate = undefined;
    delete sandbox.onCreated;
    await Promise.allSettled(
      open.splice(0).map(async (c) => {
        await c.transport.terminateSession().catch(() => undefined);
        await c.client.close();
      }),
    );
  });
  afterAll(async () => {
    await gw.close();
  });

  async function client(caller: string) {
    const c = await connect(url, caller);
    open.push(c);
    return c;
  }
  const sandboxOf = (owner: string) => sandbox.listSessions().filter((s) => s.owner === owner && s.state === 'ready');
  const supervisorCalls = (id: string) => sandbox.calls.filter((c) => c.sessionId === id).length;

  it('revoking the sandbox session refuses every later call on that MCP session (403, x-deny-reason, JSON-RPC reason); the supervisor is not called; other sessions and a new session of the caller work', async () => {
    const a = await client('carol');
    const other = await client('dave');
    expect((await a.client.callTool({ name: 'exec', arguments: { command: ['echo', 'hi'] } })).structuredContent).toMatchObject({ stdout: 'hi\n' });
    await other.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
    const [sbx] = sandboxOf('carol');
    const calls = supervisorCalls(sbx!.sessionId);
    expect(gw.liveSessions()).toEqual(expect.arrayContaining([sbx!.sessionId]));

    gw.revoke(sbx!.sessionId, 'session_revoked');
    expect(gw.liveSessions()).not.toContain(sbx!.sessionId);

    // through the SDK: the call is rejected with the reason in the error
    await expect(a.client.callTool({ name: 'exec', arguments: { command: ['echo', 'again'] } })).rejects.toThrow(/session_revoked/);
    // raw: status, header, JSON-RPC error with the stable reason
    const raw = await post(gw.port, 'carol', a.transport.sessionId!, { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'exec', arguments: { command: ['true'] } } });
    expect(raw.status).toBe(403);
    expect(raw.headers['x-deny-reason']).toBe('session_revoked');
    expect(JSON.parse(raw.body)).toEqual({ jsonrpc: '2.0', id: 7, error: { code: -32002, message: expect.stringMatching(/revoked/), data: { reason: 'session_revoked' } } });
    // tools/list too; and another caller presenting the session id learns nothing
    expect((await post(gw.port, 'carol', a.transport.sessionId!, { jsonrpc: '2.0', id: 8, method: 'tools/list' })).headers['x-deny-reason']).toBe('session_revoked');
    expect((await post(gw.port, 'mallory', a.transport.sessionId!, { jsonrpc: '2.0', id: 9, method: 'tools/list' })).status).toBe(404);
    // never reached the supervisor; the gateway did not destroy the sandbox (the operator plane decides)
    expect(supervisorCalls(sbx!.sessionId)).toBe(calls);
    expect(sandbox.getSession(sbx!.sessionId)!.state).toBe('ready');
    expect(events.history('mcp.session_revoked').at(-1)).toMatchObject({ sessionId: sbx!.sessionId, data: { caller: 'carol', reason: 'session_revoked' } });

    // another caller's session is untouched
    expect((await other.client.callTool({ name: 'exec', arguments: { command: ['echo', 'ok'] } })).structuredContent).toMatchObject({ stdout: 'ok\n' });
    // not a ban: carol opens a new MCP session (the revoked one does not hold her slot) and gets a new sandbox
    const b = await client('carol');
    const c = await client('carol');
    expect((await b.client.callTool({ name: 'exec', arguments: { command: ['echo', 'fresh'] } })).structuredContent).toMatchObject({ stdout: 'fresh\n' });
    await c.client.callTool({ name: 'egress_policy', arguments: {} });
    expect(sandboxOf('carol').map((s) => s.sessionId)).not.toEqual([sbx!.sessionId]);
  });

  it('the exfil reason is kept', async () => {
    const a = await client('erin');
    await a.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
    gw.revoke(sandboxOf('erin')[0]!.sessionId, 'exfil_budget_exceeded');
    const raw = await post(gw.port, 'erin', a.transport.sessionId!, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'exec', arguments: { command: ['true'] } } });
    expect(raw.headers['x-deny-reason']).toBe('exfil_budget_exceeded');
    expect(JSON.parse(raw.body).error).toMatchObject({ code: -32002, data: { reason: 'exfil_budget_exceeded' } });
  });

  it('a session with no sandbox yet is named by its handle (kill-all source); revoking it means no sandbox is ever made for it', async () => {
    const a = await client('frank');
    await a.client.callTool({ name: 'egress_policy', arguments: {} });
    const handles = gw.liveSessions().filter((h) => h.startsWith('mcp:'));
    expect(handles).toHaveLength(1);
    const creates = sandbox.calls.filter((c) => c.op === 'createSession').length;
    gw.revoke(handles[0]!);
    await expect(a.client.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toThrow(/session_revoked/);
    expect(sandbox.calls.filter((c) => c.op === 'createSession').length).toBe(creates);
  });

  it('revoked while its sandbox is being made: the call is refused and the orphan sandbox destroyed; a sandbox revoked before it attached is refused and left to the operator', async () => {
    const a = await client('gina');
    let release!: () => void;
    sandbox.gate = new Promise<void>((r) => (release = r));
    const call = a.client.callTool({ name: 'exec', arguments: { command: ['echo', 'x'] } });
    await new Promise((r) => setTimeout(r, 50));
    const handle = gw.liveSessions().find((h) => h.startsWith('mcp:'))!;
    gw.revoke(handle);
    release();
    // the call was past the HTTP check: refused as a JSON-RPC error carrying the reason
    await expect(call).rejects.toMatchObject({ code: -32002, data: { reason: 'session_revoked' } });
    const made = sandbox.listSessions().filter((s) => s.owner === 'gina');
    expect(made).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 20));
    expect(sandbox.getSession(made[0]!.sessionId)!.state).toBe('destroyed');
    expect(sandbox.calls.filter((c) => c.sessionId === made[0]!.sessionId).map((c) => c.op)).toEqual(['createSession', 'destroySession']);

    // the operator plane revoked the sandbox id before the gateway attached it
    const b = await client('hank');
    sandbox.onCreated = (info) => gw.revoke(info.sessionId);
    await expect(b.client.callTool({ name: 'exec', arguments: { command: ['echo', 'x'] } })).rejects.toMatchObject({ code: -32002, data: { reason: 'session_revoked' } });
    const hs = sandbox.listSessions().find((s) => s.owner === 'hank')!;
    expect(sandbox.calls.filter((c) => c.sessionId === hs.sessionId).map((c) => c.op)).toEqual(['createSession']);
  });
});

describe('MCP gateway wired into the operator plane (denylist enforcer + kill-all source)', () => {
  it('kill one refuses that session; kill-all refuses every current session, with or without a sandbox; the denylist re-applies on restart', async () => {
    const t = tempDir();
    const sandbox = new MemorySandbox();
    const ir = policyIr(RULES);
    const gw = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger() });
    const url = `http://${gw.address}/mcp`;
    /** The operator plane on one data dir, with `g` as its MCP revoker and session source. */
    const start = (g: McpGateway) =>
      startOperatorPlane({
        dataDir: path.join(t.dir, 'data'),
        logger: silentLogger(),
        events: new EventBus(),
        metrics: new Metrics(),
        audit: new MemoryAudit(),
        ir,
        supervisor: sandbox,
        revokers: [g.revoker()],
        sessionSources: [() => g.liveSessions()],
        tripwire: { sweepEveryMs: 0 },
      });
    let plane = await start(gw);
    const clients = await Promise.all(['u1', 'u2', 'u3'].map((c) => connect(url, c)));
    try {
      const [one, two, three] = clients;
      await one!.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      await two!.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      await three!.client.callTool({ name: 'egress_policy', arguments: {} }); // no sandbox
      const sid1 = sandbox.listSessions().find((s) => s.owner === 'u1')!.sessionId;
      const r = await plane.kill.kill(sid1, { actor: { id: 'operator:test', type: 'admin' } });
      expect(r.sandbox).toBe('destroyed');
      await expect(one!.client.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toThrow(/session_revoked/);
      expect((await two!.client.callTool({ name: 'exec', arguments: { command: ['echo', 'still'] } })).structuredContent).toMatchObject({ stdout: 'still\n' });

      const all = await plane.kill.killAll({ actor: { id: 'operator:test', type: 'admin' } });
      expect(all.sessions.map((s) => s.sessionId)).toEqual(expect.arrayContaining([expect.stringMatching(/^mcp:/)]));
      for (const c of [two!, three!]) await expect(c.client.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toThrow(/session_revoked/);
      expect(sandbox.listSessions().filter((s) => s.state === 'ready')).toEqual([]);
      expect(gw.liveSessions()).toEqual([]);

      // a restarted operator plane re-applies its denylist to the gateway
      await plane.close();
      const gw2 = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger() });
      plane = await start(gw2);
      expect(gw2.isRevoked(sid1)).toBe(true);
      await gw2.close();
    } finally {
      await Promise.allSettled(clients.map((c) => c.client.close()));
      await plane.close();
      await gw.close();
      t.cleanup();
    }
  });
});
