import { discoverOAuthProtectedResourceMetadata, extractResourceMetadataUrl } from '@modelcontextprotocol/sdk/client/auth.js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';
import { httpGet, httpRequest, INGRESS, mcpPost, startMcpStack, type McpStack, type RawResponse } from '../harness/mcp-stack.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { generateTokenKey, issueToken } from '../../mcp/token.js';
import { MemorySandbox } from '../../mcp/testkit.js';
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';

/*
 * MCP ingress through a real Envoy 1.40 — INGRESS-ONLY properties (authentication, limits,
 * per-tool authorization, leaks) with the in-memory SandboxService (mcp/testkit.ts) behind the
 * gateway. The same path with the real Docker + gVisor supervisor is test/e2e/mcp-sandbox.test.ts.
 */

const gate = e2eGate(['envoy'], 'MCP ingress (real Envoy, in-memory sandbox)');

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
function policy(limits: string, rules: string): Ir {
  return compileText(`${HEAD}egress:\n  rung: transparent\n  allow:\n    - host: pypi.org\nmcp:\n  limits: ${limits}\n  tools:\n    rules:\n${rules}`, { file: 'p.yaml', baseDir: '/etc/portcullis' });
}
const RULES = `      - { callers: ["*"], tools: [exec, read_file, write_file, edit_file, list_files, egress_policy], effect: allow }
      - { callers: [bob], tools: [exec], effect: deny }
      - { callers: ["*"], tools: [write_file, read_file], effect: deny, arguments: [{ name: path, pathPrefix: /etc }] }
`;
const LIMITS = '{ connectionsPerCaller: 4, requestsPerMinute: 100000, maxBodyBytes: 64Ki }';

const sessionCall = (id: number, name: string, args: unknown) => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } });

describe.skipIf(!gate.ok)('MCP ingress through a real Envoy (in-memory SandboxService: ingress-only properties)', () => {
  const sandbox = new MemorySandbox();
  let stack: McpStack;
  let alice: string;
  let bob: string;

  /** an initialized MCP session over raw HTTP (to send exactly the bytes a test wants) */
  async function rawSession(token: string): Promise<Record<string, string>> {
    const r = await mcpPost(stack.url, token, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    expect(r.status).toBe(200);
    const sid = String(r.headers['mcp-session-id']);
    const h = { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' };
    expect((await mcpPost(stack.url, token, { jsonrpc: '2.0', method: 'notifications/initialized' }, h)).status).toBe(202);
    return h;
  }

  beforeAll(async () => {
    stack = await startMcpStack({ ir: policy(LIMITS, RULES), sandbox, maxStreamSeconds: 120 });
    alice = await stack.token('alice');
    bob = await stack.token('bob');
  });
  afterAll(async () => {
    await stack?.close();
  });

  it('Envoy accepted the ingress listener, and a valid token initializes, lists, runs exec, writes then reads a file', async () => {
    expect(rejectedUpdates(await stack.envoy.admin.stats())).toEqual({});
    const hits = (await stack.envoy.admin.stats())['http.mcp_ingress.jwt_authn.jwt_cache_hit'] ?? 0;
    const c = await stack.client(alice);
    try {
      const names = (await c.client.listTools()).tools.map((t) => t.name).sort();
      expect(names).toEqual(['edit_file', 'egress_policy', 'exec', 'list_files', 'read_file', 'write_file']);
      const r = await c.client.callTool({ name: 'exec', arguments: { command: ['echo', 'hello'] } });
      expect(r.structuredContent).toMatchObject({ exitCode: 0, stdout: 'hello\n' });
      await c.client.callTool({ name: 'write_file', arguments: { path: '/work/notes.txt', content: 'written through envoy' } });
      const read = await c.client.callTool({ name: 'read_file', arguments: { path: '/work/notes.txt' } });
      expect(read.structuredContent).toMatchObject({ content: 'written through envoy' });
      expect(stack.gateway.counters().calls.exec?.ok).toBeGreaterThanOrEqual(1);
      // the same token's later requests are served from jwt_authn's verified-token cache
      expect((await stack.envoy.admin.stats())['http.mcp_ingress.jwt_authn.jwt_cache_hit']).toBeGreaterThanOrEqual(hits + 3);
    } finally {
      await c.close();
    }
  });

  it.each([
    ['no token', async () => undefined],
    ['a wrong audience', async () => stack.token('alice', { audience: 'someone-else' })],
    ['an expired token', async () => stack.token('alice', { now: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 60 })],
    ['a wrong signature', async () => (await issueToken(await generateTokenKey(), { sub: 'alice' })).token],
    ['a token longer-lived than the policy allows', async () => (await issueToken(stack.key, { sub: 'alice', ttlSeconds: 3600 })).token],
    ['a malformed token', async () => 'not.a.jwt'],
  ])('%s → 401 with WWW-Authenticate pointing at the protected-resource metadata, and the gateway sees nothing', async (_what, tok) => {
    const token = await tok();
    const before = stack.gateway.counters().requests.POST ?? 0;
    const checks = stack.authz.metrics.total('mcp_authz_checks_total');
    const jwtDenied = (await stack.envoy.admin.stats())['http.mcp_ingress.jwt_authn.denied'] ?? 0;
    const r = await mcpPost(stack.url, token, { jsonrpc: '2.0', id: 1, method: 'initialize', params: {} });
    expect(r.status).toBe(401);
    expect(r.headers['x-deny-reason']).toBe('unauthorized');
    expect(JSON.parse(r.body)).toMatchObject({ error: { data: { reason: 'unauthorized' } } });
    const metadataUrl = extractResourceMetadataUrl(new Response(null, { headers: { 'www-authenticate': String(r.headers['www-authenticate']) } }));
    expect(metadataUrl?.toString()).toBe(`http://127.0.0.1:${stack.ingressPort}/.well-known/oauth-protected-resource`);
    expect(stack.gateway.counters().requests.POST ?? 0).toBe(before);
    // refused by jwt_authn itself, before ext_authz
    expect(stack.authz.metrics.total('mcp_authz_checks_total')).toBe(checks);
    expect((await stack.envoy.admin.stats())['http.mcp_ingress.jwt_authn.denied']).toBe(jwtDenied + 1);
  });

  it('a token in the query string is not accepted (header only)', async () => {
    const r = await httpRequest(`${stack.url}?access_token=${alice}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
    expect(r.status).toBe(401);
  });

  it('RFC 9728 metadata discovery works with the SDK’s own discovery, unauthenticated', async () => {
    const md = await discoverOAuthProtectedResourceMetadata(new URL(stack.url));
    expect(md.resource).toBe(stack.url);
    expect(md.bearer_methods_supported).toEqual(['header']);
    const plain = await httpGet(`http://127.0.0.1:${stack.ingressPort}/.well-known/oauth-protected-resource`);
    expect(plain.status).toBe(200);
    expect(plain.headers['content-type']).toBe('application/json');
  });

  it('a denied tool and a denied argument are refused at Envoy with the reason; the gateway never sees them', async () => {
    const hb = await rawSession(bob);
    const ha = await rawSession(alice);
    const seen = { ...stack.gateway.counters().requests };
    const calls = stack.gateway.callsSeen();
    const denied = await mcpPost(stack.url, bob, sessionCall(7, 'exec', { command: ['id'] }), hb);
    expect(denied.status).toBe(403);
    expect(denied.headers['x-deny-reason']).toBe('tool_not_allowed');
    expect(JSON.parse(denied.body)).toEqual({
      jsonrpc: '2.0',
      id: 7,
      error: { code: -32003, message: 'The policy does not allow you to use this tool.', data: { reason: 'tool_not_allowed' } },
    });
    const arg = await mcpPost(stack.url, alice, sessionCall(8, 'write_file', { path: '/etc/../etc/cron.d/x', content: 'x' }), ha);
    expect(arg.status).toBe(403);
    expect(arg.headers['x-deny-reason']).toBe('argument_denied');
    expect(JSON.parse(arg.body)).toMatchObject({ id: 8, error: { data: { reason: 'argument_denied' } } });
    const unknown = await mcpPost(stack.url, alice, sessionCall(9, 'shutdown_host', {}), ha);
    expect(unknown.headers['x-deny-reason']).toBe('tool_not_allowed');
    expect(stack.gateway.counters().requests).toEqual(seen);
    expect(stack.gateway.callsSeen()).toBe(calls);
    // the same refusal through the SDK client
    const c = await stack.client(bob);
    try {
      await expect(c.client.callTool({ name: 'exec', arguments: { command: ['id'] } })).rejects.toThrow(/tool_not_allowed/);
    } finally {
      await c.close();
    }
    expect(stack.gateway.counters().calls.exec?.denied ?? 0).toBe(0);
  });

  it('tools/list shows a caller only the tools it may use; a client-sent caller header is stripped', async () => {
    const hb = await rawSession(bob);
    // bob claims to be alice in the header the gateway trusts: Envoy replaces it with the token's subject
    const list = await mcpPost(stack.url, bob, { jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...hb, 'x-portcullis-caller': 'alice' });
    expect(list.status).toBe(200);
    const tools = (JSON.parse(sseData(list.body)) as { result: { tools: Array<{ name: string }> } }).result.tools.map((t) => t.name);
    expect(tools).not.toContain('exec');
    expect(tools).toContain('read_file');
    // ext_authz decides on the same header: bob claiming to be alice is still bob
    const spoofed = await mcpPost(stack.url, bob, sessionCall(3, 'exec', { command: ['id'] }), { ...hb, 'x-portcullis-caller': 'alice' });
    expect(spoofed.status).toBe(403);
    expect(spoofed.headers['x-deny-reason']).toBe('tool_not_allowed');
    // and the origin secret cannot be supplied by a client to reach the gateway another way
    const direct = await httpRequest(`http://${stack.gateway.address}/mcp`, { method: 'POST', headers: { 'x-portcullis-caller': 'alice', 'content-type': 'application/json' }, body: '{}' });
    expect(direct.status).toBe(401);
  });

  it('malformed JSON-RPC, unknown fields, batches and oversize bodies are refused at Envoy; the gateway sees none', async () => {
    const h = await rawSession(alice);
    const seen = { ...stack.gateway.counters().requests };
    const cases: Array<[string | object, number, string]> = [
      ['{"jsonrpc":"2.0","id":1,"method":', 400, 'schema_invalid'],
      [{ jsonrpc: '1.0', id: 1, method: 'ping' }, 400, 'schema_invalid'],
      [{ jsonrpc: '2.0', id: 1, method: 'ping', sneaky: true }, 400, 'schema_invalid'],
      [[{ jsonrpc: '2.0', id: 1, method: 'ping' }], 400, 'schema_invalid'],
      [sessionCall(3, 'exec', { command: ['true'], shell: '/bin/sh' }), 400, 'schema_invalid'],
      [sessionCall(3, 'exec', { command: ['true'], timeoutMs: 99_999_999 }), 400, 'schema_invalid'],
      [{ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'exec', arguments: { command: ['true'] }, extra: 1 } }, 400, 'schema_invalid'],
      [sessionCall(3, 'write_file', { path: '/work/big', content: 'x'.repeat(70 * 1024) }), 413, 'body_too_large'],
    ];
    for (const [body, status, reason] of cases) {
      const r = await mcpPost(stack.url, alice, body, h);
      expect.soft(r.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect.soft(r.headers['x-deny-reason']).toBe(reason);
      expect.soft(JSON.parse(r.body)).toMatchObject({ jsonrpc: '2.0', error: { data: { reason } } });
    }
    expect(stack.gateway.counters().requests).toEqual(seen);
  });

  it('the policy is live: a new rule denies at Envoy and hides the tool, without restarting anything', async () => {
    const c = await stack.client(alice);
    try {
      await stack.setPolicy(policy(LIMITS, `${RULES}      - { callers: [alice], tools: [list_files], effect: deny }\n`));
      expect((await c.client.listTools()).tools.map((t) => t.name)).not.toContain('list_files');
      await expect(c.client.callTool({ name: 'list_files', arguments: { path: '/' } })).rejects.toThrow(/tool_not_allowed/);
    } finally {
      await stack.setPolicy(policy(LIMITS, RULES));
      await c.close();
    }
  });

  it('a policy change (limits and rules) does not cut a tool call in flight: the listener is not rebuilt', async () => {
    const ha = await rawSession(alice);
    const listenerVersion = (await stack.envoy.versions(XDS.listener)).resources.find((r) => r.name === INGRESS.listener)?.version;
    const slow = mcpPost(stack.url, alice, sessionCall(300, 'exec', { command: ['sleep', '3'] }), ha);
    await eventually(() => stack.authz.inflight('alice') === 1, 5000, 'the call in flight');
    try {
      await stack.setPolicy(policy('{ connectionsPerCaller: 5, requestsPerMinute: 90000, maxBodyBytes: 60Ki }', `${RULES}      - { callers: [carol], tools: [exec], effect: deny }\n`));
      const r = await slow;
      expect(r.status).toBe(200);
      expect(sseData(r.body)).toContain('"exitCode":0');
      expect((await stack.envoy.versions(XDS.listener)).resources.find((x) => x.name === INGRESS.listener)?.version).toBe(listenerVersion);
    } finally {
      await stack.setPolicy(policy(LIMITS, RULES));
    }
  });

  it('per-caller concurrency ceiling: a caller holding its limit is refused 429 connection_limit, another caller is not', async () => {
    const ha = await rawSession(alice);
    const hb = await rawSession(bob);
    await eventually(() => stack.authz.inflight('alice') === 0, 5000, 'alice idle');
    // four slow calls hold alice's four leases
    const slow = Array.from({ length: 4 }, (_, i) => mcpPost(stack.url, alice, sessionCall(100 + i, 'exec', { command: ['sleep', '2'] }), ha));
    await eventually(() => stack.authz.inflight('alice') === 4, 5000, 'four requests in flight');
    const fifth = await mcpPost(stack.url, alice, { jsonrpc: '2.0', id: 200, method: 'tools/list' }, ha);
    expect(fifth.status).toBe(429);
    expect(fifth.headers['x-deny-reason']).toBe('connection_limit');
    const other = await mcpPost(stack.url, bob, { jsonrpc: '2.0', id: 201, method: 'tools/list' }, hb);
    expect(other.status).toBe(200);
    for (const r of await Promise.all(slow)) expect(r.status).toBe(200);
    // leases come back as the access logs arrive
    await eventually(() => stack.authz.inflight('alice') === 0, 5000, 'leases released');
    expect((await mcpPost(stack.url, alice, { jsonrpc: '2.0', id: 202, method: 'tools/list' }, ha)).status).toBe(200);
  });

  it('leak check: across fuzzed bad requests no response carries a session id, container name, internal address or stack trace', async () => {
    const h = await rawSession(alice);
    const gwPort = String(stack.gateway.port);
    const bad: RawResponse[] = [];
    const token = fc.constantFrom<string | undefined>(undefined, alice, 'garbage', `${alice}x`);
    const path = fc.constantFrom('/mcp', '/', '/admin', '/mcp/../stats', '/%2e%2e/config_dump', '//mcp', '/mcp?x=1', '/.well-known/oauth-protected-resource/../../mcp', '/clusters', '/operator/kill');
    const method = fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS');
    const body = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.json({ maxDepth: 3 }),
      fc.record({ jsonrpc: fc.constantFrom('2.0', '1'), id: fc.oneof(fc.integer(), fc.string({ maxLength: 8 })), method: fc.constantFrom('tools/call', 'tools/list', 'initialize', 'x/y'), params: fc.object({ maxDepth: 2 }) }).map((o) => JSON.stringify(o)),
      fc.record({ name: fc.constantFrom('exec', 'read_file', 'nope'), arguments: fc.object({ maxDepth: 2 }) }).map((p) => JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: p })),
    );
    const session = fc.constantFrom<Record<string, string>>({}, h, { 'mcp-session-id': 'sbx_00000000', 'mcp-protocol-version': '2025-06-18' });
    await fc.assert(
      fc.asyncProperty(token, path, method, body, session, async (tok, p, m, b, s) => {
        const r = await httpRequest(`http://127.0.0.1:${stack.ingressPort}/`, {
          rawPath: p,
          method: m,
          headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(tok ? { authorization: `Bearer ${tok}` } : {}), ...s },
          ...(m === 'GET' || m === 'DELETE' ? {} : { body: b }),
        });
        if (r.status >= 400) bad.push(r);
      }),
      { numRuns: 150, seed: 6 },
    );
    // plus a tool failure inside the gateway and a sandbox that cannot start (fresh sessions: the
    // fuzzing may have DELETEd the first one)
    const crash = await mcpPost(stack.url, alice, sessionCall(11, 'exec', { command: ['crash'] }), await rawSession(alice));
    sandbox.failCreate = true;
    const h2 = await rawSession(alice);
    const noSandbox = await mcpPost(stack.url, alice, sessionCall(12, 'exec', { command: ['true'] }), h2);
    sandbox.failCreate = false;
    expect(bad.length).toBeGreaterThan(100);
    for (const r of [...bad, crash, noSandbox]) {
      const text = `${JSON.stringify(r.headers)}\n${r.body}`;
      expect.soft(r.status >= 400 ? r.headers['mcp-session-id'] : undefined).toBeUndefined();
      expect.soft(text).not.toMatch(/sbx_[0-9a-f]{8}|portcullis-sbx|172\.17\.|10\.1\.2\.3/);
      expect.soft(text).not.toMatch(new RegExp(`:${gwPort}\\b|mcp_gateway|portcullis_authz|upstream connect|envoy|reset reason`, 'i'));
      expect.soft(text).not.toMatch(/\bat [\w.<>]+ \(|\.ts:\d+|\.js:\d+|Error:/);
    }
    expect(sseData(crash.body)).toContain('tool_failed');
    expect(sseData(noSandbox.body)).toContain('sandbox_unavailable');
  });

  it('the gateway has no route but /mcp: every other path through Envoy is answered there, not by the gateway', async () => {
    const before = { ...stack.gateway.counters().requests };
    for (const p of ['/admin', '/operator/kill', '/config_dump', '/v1/sessions', '/mcp/extra', '/.well-known/openid-configuration']) {
      const r = await httpRequest(`http://127.0.0.1:${stack.ingressPort}${p}`, { method: 'POST', headers: { authorization: `Bearer ${bob}`, 'content-type': 'application/json' }, body: '{}' });
      expect.soft(r.status, p).toBe(404);
    }
    expect(stack.gateway.counters().requests).toEqual(before);
  });

  it('per-caller rate: one caller bursting is refused 429 rate_limited while another caller keeps working', async () => {
    await stack.setPolicy(policy('{ connectionsPerCaller: 64, requestsPerMinute: 200, maxBodyBytes: 64Ki }', RULES));
    const ha = await rawSession(alice);
    const hb = await rawSession(bob);
    const gatewaySeenBefore = stack.gateway.counters().requests.POST ?? 0;
    let edge429 = 0;
    const off = stack.cp.events.on((e) => {
      if (e.data.lane === 'mcp_ingress_edge' && e.data.status === 429) edge429++;
    });
    const statuses = new Map<string, number>();
    let bobOk = 0;
    const burst = (async () => {
      const inflight = new Set<Promise<void>>();
      for (let i = 0; i < 2000; i++) {
        const p = mcpPost(stack.url, alice, { jsonrpc: '2.0', id: i, method: 'ping' }, ha).then((r) => {
          const k = `${r.status} ${r.headers['x-deny-reason'] ?? ''}`.trim();
          statuses.set(k, (statuses.get(k) ?? 0) + 1);
        });
        inflight.add(p);
        void p.finally(() => inflight.delete(p));
        if (inflight.size >= 32) await Promise.race(inflight);
      }
      await Promise.all(inflight);
    })();
    const steady = (async () => {
      for (let i = 0; i < 20; i++) {
        const r = await mcpPost(stack.url, bob, { jsonrpc: '2.0', id: i, method: 'ping' }, hb);
        if (r.status === 200) bobOk++;
      }
    })();
    await Promise.all([burst, steady]);
    expect(bobOk).toBe(20);
    expect(statuses.get('429 rate_limited')).toBeGreaterThan(1500);
    expect([...statuses.keys()].sort()).toEqual(['200', '429 rate_limited']);
    // alice's session got at most her bucket (plus the refill during the burst) through to the gateway
    const reached = (stack.gateway.counters().requests.POST ?? 0) - gatewaySeenBefore;
    expect(reached).toBeLessThan(200 + 20 + 60);
    await stack.setPolicy(policy(LIMITS, RULES));
    // the refusals are recorded (batched access log of what Envoy answered itself)
    await eventually(() => edge429 >= (statuses.get('429 rate_limited') ?? 0), 10_000, 'the refused requests in the edge access log');
    off();
  });

  it('a gateway that is down is reported as unavailable, with no upstream details', async () => {
    await stack.gateway.close();
    const r = await mcpPost(stack.url, await stack.token('dave'), { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } });
    expect(r.status).toBe(503);
    expect(r.headers['x-deny-reason']).toBe('unavailable');
    expect(r.body).not.toMatch(/upstream|reset|connect|127\.0\.0\.1/i);
  });
});

/** The JSON of the first SSE `data:` line (Streamable HTTP answers a POST as an SSE stream). */
function sseData(body: string): string {
  const line = body.split('\n').find((l) => l.startsWith('data: '));
  return line ? line.slice('data: '.length) : body;
}
