import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { CALLER_HEADER, McpGateway, ORIGIN_HEADER } from './gateway.js';
import { argumentDigest } from './jsonrpc.js';
import { MemorySandbox, policyIr } from './testkit.js';


const RULES = `      - { callers: ["*"], tools: [exec, read_file, write_file, edit_file, list_files, egress_policy], effect: allow }
      - { callers: [bob], tools: [exec], effect: deny }
      - { callers: ["*"], tools: [write_file], effect: deny, arguments: [{ name: path, pathPrefix: /etc }] }
`;

async function connect(url: string, caller: string, extraHeaders: Record<string, string> = {}) {
  const client = new Client({ name: 'test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { [CALLER_HEADER]: caller, ...extraHeaders } } });
  await client.connect(transport);
  return { client, transport };
}

function raw(port: number, opts: { method?: string; path?: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: opts.method ?? 'POST', path: opts.path ?? '/mcp', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...opts.headers }, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

describe('MCP gateway (in-memory SandboxService)', () => {
  const sandbox = new MemorySandbox();
  const events = new EventBus();
  const ir = policyIr(RULES);
  let gw: McpGateway;
  let url: string;
  const open: Array<{ client: Client; transport: StreamableHTTPClientTransport }> = [];

  beforeAll(async () => {
    gw = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger(), events, sessionIdleMs: 60_000, maxSessionsPerCaller: 3 });
    url = `http://${gw.address}/mcp`;
  });
  const closeAll = () => Promise.allSettled(open.splice(0).map(async (c) => {
    await c.transport.terminateSession().catch(() => undefined);
    await c.client.close();
  }));
  afterEach(async () => {
    await closeAll();
  });
  afterAll(async () => {
    await gw.close();
  });

  async function client(caller: string) {
    const c = await connect(url, caller);
    open.push(c);
    return c;
  }

  it('initializes, lists the tools the caller may use, and runs them in one sandbox session', async () => {
    const { client: alice } = await client('alice');
    const names = (await alice.listTools()).tools.map((t) => t.name).sort();
    expect(names).toEqual(['edit_file', 'egress_policy', 'exec', 'list_files', 'read_file', 'write_file']);
    const exec = (await alice.listTools()).tools.find((t) => t.name === 'exec')!;
    expect(exec.inputSchema).toMatchObject({ type: 'object', additionalProperties: false, required: ['command'] });

    const r = await alice.callTool({ name: 'exec', arguments: { command: ['echo', 'hello'] } });
    expect(r.isError).toBeFalsy();
    expect(r.structuredContent).toMatchObject({ exitCode: 0, stdout: 'hello\n', outcome: 'exited' });

    await alice.callTool({ name: 'write_file', arguments: { path: '/work/a.txt', content: 'one two' } });
    const e = await alice.callTool({ name: 'edit_file', arguments: { path: '/work/a.txt', oldString: 'two', newString: 'three' } });
    expect(e.structuredContent).toMatchObject({ replacements: 1 });
    const read = await alice.callTool({ name: 'read_file', arguments: { path: '/work/../work/a.txt' } });
    expect(read.structuredContent).toMatchObject({ path: '/work/a.txt', content: 'one three', size: 9 });
    const ls = await alice.callTool({ name: 'list_files', arguments: { path: '/work' } });
    expect(ls.structuredContent).toMatchObject({ entries: [{ name: 'a.txt', type: 'file', size: 9 }] });
    const creates = sandbox.calls.filter((c) => c.op === 'createSession');
    const ops = sandbox.calls.filter((c) => c.op !== 'createSession' && c.op !== 'destroySession');
    expect(new Set(ops.map((c) => c.sessionId)).size).toBe(1);
    expect(creates.map((c) => c.sessionId)).toContain(ops[0]!.sessionId);
  });

  it('tools/list hides the tools the policy denies the caller', async () => {
    const { client: bob } = await client('bob');
    const names = (await bob.listTools()).tools.map((t) => t.name);
    expect(names).not.toContain('exec');
    expect(names).toContain('read_file');
  });

  it('refuses a denied tool and a denied argument as JSON-RPC errors with the reason, before any sandbox action', async () => {
    const { client: bob } = await client('bob');
    const before = sandbox.calls.length;
    await expect(bob.callTool({ name: 'exec', arguments: { command: ['true'] } })).rejects.toMatchObject({ code: -32003, data: { reason: 'tool_not_allowed' } });
    await expect(bob.callTool({ name: 'write_file', arguments: { path: '/etc/../etc/passwd', content: 'x' } })).rejects.toMatchObject({
      code: -32003,
      data: { reason: 'argument_denied' },
    });
    await expect(bob.callTool({ name: 'no_such_tool', arguments: {} })).rejects.toMatchObject({ data: { reason: 'tool_not_allowed' } });
    expect(sandbox.calls.length).toBe(before);
    expect(gw.counters().calls.exec?.denied).toBeGreaterThanOrEqual(1);
  });

  it('refuses unknown fields and out-of-bounds values (closed schema) before any action', async () => {
    const { client: alice } = await client('alice');
    const before = sandbox.calls.length;
    for (const args of [
      { command: ['true'], shell: true },
      { command: [] },
      { command: ['true'], timeoutMs: 10_000_000 },
      { command: 'true' },
      { command: ['true'], cwd: 'relative/dir' },
      { command: Array.from({ length: 300 }, () => 'x') },
    ]) {
      await expect(alice.callTool({ name: 'exec', arguments: args as Record<string, unknown> })).rejects.toMatchObject({ code: -32602, data: { reason: 'schema_invalid' } });
    }
    await expect(alice.callTool({ name: 'read_file', arguments: { path: '/a\u0000b' } })).rejects.toMatchObject({ data: { reason: 'schema_invalid' } });
    await expect(alice.callTool({ name: 'egress_policy', arguments: { x: 1 } })).rejects.toMatchObject({ data: { reason: 'schema_invalid' } });
    expect(sandbox.calls.length).toBe(before);
    expect(gw.counters().calls.exec?.invalid).toBeGreaterThanOrEqual(6);
  });

  it('egress_policy describes the reachable destinations without internals', async () => {
    const { client: alice } = await client('alice');
    const r = await alice.callTool({ name: 'egress_policy', arguments: {} });
    const data = r.structuredContent as { default: string; destinations: Array<{ host: string; ports: number[]; mode: string }> };
    expect(data.default).toBe('deny');
    expect(data.destinations).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ host: 'pypi.org', ports: [443], mode: 'pass-through' }),
        expect.objectContaining({ host: 'api.example.com', ports: [8443] }),
      ]),
    );
    expect(JSON.stringify(r)).not.toMatch(/\d+\.\d+\.\d+\.\d+|\/etc\/portcullis/);
  });

  it('carries runtime denials structurally in tool results, never internals', async () => {
    const { client: alice } = await client('alice');
    const denied = await alice.callTool({ name: 'read_file', arguments: { path: '/proc/self/environ' } });
    expect(denied.isError).toBe(true);
    expect(denied.structuredContent).toEqual({ error: { reason: 'path_denied', message: 'That path is not accessible.' } });
    const crash = await alice.callTool({ name: 'exec', arguments: { command: ['crash'] } });
    expect(crash.isError).toBe(true);
    expect(crash.structuredContent).toEqual({ error: { reason: 'tool_failed', message: 'The tool failed.' } });
    const text = JSON.stringify([denied, crash]);
    expect(text).not.toMatch(/portcullis-sbx|172\.17|sbx_|supervisor\.ts|\bat \w+/);
  });

  it('a quarantined sandbox session is reported as revoked and not silently replaced', async () => {
    const { client: alice } = await client('alice');
    await alice.callTool({ name: 'exec', arguments: { command: ['true'] } });
    const id = sandbox.calls.filter((c) => c.op === 'exec').at(-1)!.sessionId;
    await sandbox.quarantine(id, 'test');
    const r = await alice.callTool({ name: 'exec', arguments: { command: ['true'] } });
    expect(r.structuredContent).toMatchObject({ error: { reason: 'session_revoked' } });
    expect(sandbox.calls.filter((c) => c.op === 'exec').at(-1)!.sessionId).toBe(id);
  });

  it('a sandbox that cannot be created is reported without internals, and a later call retries', async () => {
    const { client: alice } = await client('alice');
    sandbox.failCreate = true;
    const r = await alice.callTool({ name: 'exec', arguments: { command: ['true'] } });
    expect(r.structuredContent).toMatchObject({ error: { reason: 'sandbox_unavailable' } });
    expect(JSON.stringify(r)).not.toMatch(/docker|10\.1\.2\.3|portcullis-sbx/);
    sandbox.failCreate = false;
    const ok = await alice.callTool({ name: 'exec', arguments: { command: ['echo', 'x'] } });
    expect(ok.structuredContent).toMatchObject({ stdout: 'x\n' });
  });

  it('records each call as an event with caller, tool, argument digest, outcome and duration — never contents', async () => {
    const { client: alice } = await client('alice');
    const seen: unknown[] = [];
    const off = events.on((e) => e.type === 'mcp.tool_call' && seen.push(e));
    const args = { path: '/work/secret.txt', content: 'TOP-SECRET-CONTENT' };
    await alice.callTool({ name: 'write_file', arguments: args });
    await alice.callTool({ name: 'exec', arguments: { command: ['cat', '/work/secret.txt'] } });
    off();
    expect(seen).toHaveLength(2);
    expect(seen[0]).toMatchObject({
      source: 'mcp-gateway',
      data: { caller: 'alice', tool: 'write_file', argumentsSha256: argumentDigest(args), outcome: 'ok' },
    });
    expect((seen[0] as { data: { durationMs: number } }).data.durationMs).toBeGreaterThanOrEqual(0);
    expect((seen[0] as { sessionId?: string }).sessionId).toMatch(/^sbx_/);
    expect(JSON.stringify(seen)).not.toContain('TOP-SECRET-CONTENT');
  });

  it('a session belongs to its caller: another caller presenting its id gets "session not found"', async () => {
    const { transport } = await client('alice');
    const sid = transport.sessionId!;
    const r = await raw(gw.port, {
      headers: { [CALLER_HEADER]: 'mallory', 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    expect(r.status).toBe(404);
    expect(JSON.parse(r.body)).toMatchObject({ error: { data: { reason: 'session_not_found' } } });
  });

  it('DELETE ends the MCP session and destroys its sandbox session', async () => {
    const { client: alice, transport } = await client('alice');
    await alice.callTool({ name: 'exec', arguments: { command: ['true'] } });
    const id = sandbox.calls.filter((c) => c.op === 'exec').at(-1)!.sessionId;
    const n = gw.sessionCount;
    await transport.terminateSession();
    await vi_eventually(() => sandbox.getSession(id)?.state === 'destroyed');
    expect(gw.sessionCount).toBe(n - 1);
  });

  it('bounds MCP sessions per caller', async () => {
    await closeAll();
    const clients = [await client('carol'), await client('carol'), await client('carol')];
    await expect(connect(url, 'carol')).rejects.toThrow(/429|connection_limit|Too many/i);
    expect(clients).toHaveLength(3);
    const other = await client('dave');
    expect((await other.client.listTools()).tools.length).toBeGreaterThan(0);
  });

  it('answers bad HTTP requests with a reason and nothing else', async () => {
    const bodies: Array<{ headers: Record<string, string>; body: string; status: number; reason: string; path?: string; method?: string }> = [
      { headers: {}, body: '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}', status: 401, reason: 'unauthorized' },
      { headers: { [CALLER_HEADER]: 'alice' }, body: '{not json', status: 400, reason: 'schema_invalid' },
      { headers: { [CALLER_HEADER]: 'alice' }, body: '[{"jsonrpc":"2.0","id":1,"method":"ping"}]', status: 400, reason: 'schema_invalid' },
      { headers: { [CALLER_HEADER]: 'alice' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}', status: 400, reason: 'schema_invalid' },
      { headers: { [CALLER_HEADER]: 'alice' }, body: '{"jsonrpc":"2.0","id":1,"method":"tools/list"}', status: 404, reason: 'session_not_found' },
      { headers: { [CALLER_HEADER]: 'alice', 'mcp-session-id': 'nope' }, body: '{"jsonrpc":"2.0","id":1,"method":"tools/list"}', status: 404, reason: 'session_not_found' },
      { headers: { [CALLER_HEADER]: 'alice' }, path: '/admin', body: '{}', status: 404, reason: 'not_found' },
      { headers: { [CALLER_HEADER]: 'alice' }, method: 'PUT', body: '{}', status: 405, reason: 'method_not_allowed' },
      { headers: { [CALLER_HEADER]: 'alice' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping', params: { x: 'y'.repeat(9 * 1024 * 1024) } }), status: 413, reason: 'body_too_large' },
    ];
    for (const b of bodies) {
      const r = await raw(gw.port, b);
      expect.soft(r.status, b.body.slice(0, 60)).toBe(b.status);
      expect.soft(r.headers['x-deny-reason']).toBe(b.reason);
      expect.soft(r.headers['mcp-session-id']).toBeUndefined();
      expect.soft(JSON.parse(r.body)).toMatchObject({ jsonrpc: '2.0', error: { data: { reason: b.reason } } });
    }
  });
});

describe('MCP gateway origin secret', () => {
  it('refuses requests without the secret Envoy adds', async () => {
    const gw = await McpGateway.start({ sandbox: new MemorySandbox(), policy: () => policyIr(RULES), logger: silentLogger(), originSecret: 's3cret-value' });
    try {
      await expect(connect(`http://${gw.address}/mcp`, 'alice')).rejects.toThrow();
      const { client } = await connect(`http://${gw.address}/mcp`, 'alice', { [ORIGIN_HEADER]: 's3cret-value' });
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
      await client.close();
    } finally {
      await gw.close();
    }
  });
});

describe('MCP gateway idle timeout', () => {
  it('closes an idle MCP session and destroys its sandbox session', async () => {
    const sandbox = new MemorySandbox();
    const gw = await McpGateway.start({ sandbox, policy: () => policyIr(RULES), logger: silentLogger(), sessionIdleMs: 300 });
    try {
      const { client } = await connect(`http://${gw.address}/mcp`, 'alice');
      await client.callTool({ name: 'exec', arguments: { command: ['true'] } });
      const id = sandbox.calls.find((c) => c.op === 'createSession')!.sessionId;
      await vi_eventually(() => sandbox.getSession(id)?.state === 'destroyed', 5000);
      expect(gw.sessionCount).toBe(0);
      await expect(client.listTools()).rejects.toThrow();
      await client.close().catch(() => undefined);
    } finally {
      await gw.close();
    }
  });
});

async function vi_eventually(fn: () => boolean, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
