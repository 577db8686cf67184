import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { httpRequest, startMcpStack, type McpStack } from '../harness/mcp-stack.js';
import { silentLogger } from '../../common/logger.js';
import { MemorySandbox, policyIr } from '../../mcp/testkit.js';
import { startOperatorPlane, type OperatorPlane } from '../../operator/index.js';
import { OperatorClient } from '../../operator/client.js';
import { MemoryAudit } from '../../operator/testkit.js';

/**
 * The MCP path as deployed (real Envoy ingress → gateway → SandboxService) next to the operator
 * plane: the ingress has no route to the operator listener, and a killed session's MCP calls are
 * refused through Envoy.
 */
const gate = e2eGate(['envoy'], 'operator plane vs MCP ingress');

describe.skipIf(!gate.ok)('operator plane and the MCP ingress', () => {
  let stack: McpStack;
  let plane: OperatorPlane;
  let client: OperatorClient;
  const sandbox = new MemorySandbox();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-op-ingress-'));

  beforeAll(async () => {
    const ir = policyIr('      - { callers: ["*"], tools: [exec, read_file], effect: allow }\n');
    stack = await startMcpStack({ ir, sandbox });
    plane = await startOperatorPlane({
      dataDir: path.join(tmp, 'data'),
      logger: silentLogger(),
      events: stack.cp.events,
      metrics: stack.cp.metrics,
      audit: new MemoryAudit(),
      ir,
      controlPlane: stack.cp,
      supervisor: sandbox,
      // the gateway enforces the denylist on MCP sessions, and kill-all reaches its sessions
      revokers: [stack.gateway.revoker()],
      sessionSources: [() => stack.gateway.liveSessions()],
      tcp: { port: 0, token: 'o'.repeat(48) },
      tripwire: { sweepEveryMs: 0 },
    });
    client = new OperatorClient({ socketPath: plane.api.socketPath! });
  });

  afterAll(async () => {
    client?.close();
    await plane?.close();
    await stack?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const tcpRequests = () =>
    Object.entries(stack.cp.metrics.snapshot())
      .filter(([k]) => k.startsWith('operator_api_requests_total{') && k.includes('transport="tcp"'))
      .reduce((a, [, v]) => a + v, 0);

  it('nothing Envoy is configured with points at the operator listener', () => {
    const port = plane.api.tcpAddress!.port;
    const socket = plane.api.socketPath!;
    const resources = JSON.stringify([...stack.cp.snapshot!.resources.values()].flatMap((m) => [...m.values()].map((r) => r.body)));
    // positive control: the gateway Envoy routes to is in there
    expect(resources).toMatch(new RegExp(`"port_value":${stack.gateway.port}\\b`));
    expect(resources).not.toContain(socket);
    expect(resources).not.toContain(path.dirname(socket));
    expect(resources).not.toMatch(new RegExp(`"port_value":${port}\\b`));
  });

  it('operator paths sent to the MCP ingress never reach the operator API', async () => {
    const token = await stack.token('alice');
    const before = tcpRequests();
    for (const [method, p] of [
      ['GET', '/v1/sessions'],
      ['POST', '/v1/kill-all'],
      ['POST', '/v1/soar/admin'],
      ['GET', '/v1/soar/jwks.json'],
      ['GET', '/mcp/../v1/sessions'],
    ] as const) {
      const r = await httpRequest(`http://127.0.0.1:${stack.ingressPort}${p}`, { method, headers: { authorization: `Bearer ${token}`, host: `127.0.0.1:${plane.api.tcpAddress!.port}` }, rawPath: p });
      expect(r.status, `${method} ${p}`).not.toBe(200);
      expect(r.body).not.toMatch(/"sessions"|"keys"|"denylist"/);
    }
    expect(tcpRequests()).toBe(before);
  });

  it('a killed session\'s MCP calls are refused through Envoy with session_revoked, never reach the sandbox, and no new sandbox is made for it silently; the caller may open a new session', async () => {
    const c = await stack.client(await stack.token('bob'));
    try {
      const ok = await c.client.callTool({ name: 'exec', arguments: { command: ['echo', 'hi'] } });
      expect(ok.structuredContent).toMatchObject({ stdout: 'hi\n' });
      const sid = sandbox.listSessions().find((x) => x.owner === 'bob')!.sessionId;
      const r = await client.request('POST', `/v1/sessions/${sid}/kill`, {});
      expect(r.status).toBe(200);
      const calls = sandbox.calls.length;
      await expect(c.client.callTool({ name: 'exec', arguments: { command: ['echo', 'again'] } })).rejects.toThrow(/session_revoked/);
      // the raw answer through Envoy: 403, the stable reason in the header and in the JSON-RPC error
      const raw = await httpRequest(stack.url, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${await stack.token('bob')}`,
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          'mcp-session-id': c.transport.sessionId!,
          'mcp-protocol-version': '2025-06-18',
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'exec', arguments: { command: ['true'] } } }),
      });
      expect(raw.status).toBe(403);
      expect(raw.headers['x-deny-reason']).toBe('session_revoked');
      expect(JSON.parse(raw.body)).toMatchObject({ id: 3, error: { data: { reason: 'session_revoked' } } });
      expect(sandbox.calls.length).toBe(calls);
    } finally {
      await c.close();
    }
    // killing one session does not ban the caller
    const again = await stack.client(await stack.token('bob'));
    try {
      expect((await again.client.callTool({ name: 'exec', arguments: { command: ['echo', 'new'] } })).structuredContent).toMatchObject({ stdout: 'new\n' });
    } finally {
      await again.close();
    }
  });

  it('kill-all refuses every current MCP session, including one that has no sandbox yet', async () => {
    const a = await stack.client(await stack.token('carol'));
    const b = await stack.client(await stack.token('dave'));
    try {
      await a.client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      await b.client.listTools(); // no sandbox
      const r = await client.request<{ result: { sessions: { sessionId: string }[] } }>('POST', '/v1/kill-all', {});
      expect(r.status).toBe(200);
      expect(r.body.result.sessions.map((x) => x.sessionId)).toEqual(expect.arrayContaining([expect.stringMatching(/^mcp:/)]));
      const creates = sandbox.calls.filter((x) => x.op === 'createSession').length;
      for (const c of [a, b]) await expect(c.client.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toThrow(/session_revoked/);
      expect(sandbox.calls.filter((x) => x.op === 'createSession').length).toBe(creates);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
