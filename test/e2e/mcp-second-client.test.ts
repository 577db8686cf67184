import { createMCPClient, type MCPClient } from '@ai-sdk/mcp';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';
import { startMcpStack, type McpStack } from '../harness/mcp-stack.js';
import { MemorySandbox } from '../../mcp/testkit.js';
import { compileText } from '../../policy/compile.js';

/*
 * A second MCP client implementation through the real Envoy ingress: the AI SDK's MCP client
 * (`@ai-sdk/mcp`), whose JSON-RPC framing, Streamable HTTP transport (fetch + its own SSE parsing),
 * session handling and result schemas are its own code, not @modelcontextprotocol/sdk's Client.
 * The in-memory SandboxService stands behind the gateway (ingress properties only, as in
 * mcp-ingress.test.ts).
 */

const gate = e2eGate(['envoy'], 'MCP ingress with a second client (@ai-sdk/mcp, real Envoy)');

const POLICY = `apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
mcp:
  limits: { connectionsPerCaller: 8, requestsPerMinute: 100000, maxBodyBytes: 64Ki }
  tools:
    rules:
      - { callers: ["*"], tools: [exec, read_file, write_file, list_files], effect: allow }
      - { callers: [bob], tools: [exec], effect: deny }
`;

/** what the AI SDK client's errors carry for an HTTP failure (its MCPClientError) */
interface HttpFailure {
  statusCode?: number;
  responseBody?: string;
}

const toolCall = { toolCallId: 'call-1', messages: [] };

describe.skipIf(!gate.ok)('a second MCP client (@ai-sdk/mcp) through the real Envoy ingress', () => {
  const sandbox = new MemorySandbox();
  let stack: McpStack;
  const open: MCPClient[] = [];

  async function connect(token: string | undefined, clientName = 'ai-sdk-e2e'): Promise<MCPClient> {
    const c = await createMCPClient({
      clientName,
      transport: { type: 'http', url: stack.url, redirect: 'error', ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}) },
      // errors outside a request (its optional GET stream, opened before the session exists) land here
      onUncaughtError: () => undefined,
    });
    open.push(c);
    return c;
  }

  beforeAll(async () => {
    stack = await startMcpStack({ ir: compileText(POLICY, { file: 'p.yaml', baseDir: '/etc/portcullis' }), sandbox });
  });
  afterAll(async () => {
    for (const c of open) await c.close().catch(() => undefined);
    await stack?.close();
  });

  it('connects with a token, lists the tools the caller may use, and runs exec with a structured result', async () => {
    const c = await connect(await stack.token('alice'));
    expect(c.serverInfo.name).toBeTruthy();
    const names = (await c.listTools()).tools.map((t) => t.name).sort();
    expect(names).toEqual(['exec', 'list_files', 'read_file', 'write_file']);

    // the client's own tool wrapper; with an output schema it validates structuredContent itself
    const tools = await c.tools({
      schemas: {
        exec: {
          inputSchema: z.object({ command: z.array(z.string()) }),
          outputSchema: z.object({ exitCode: z.number(), stdout: z.string(), stderr: z.string() }).loose(),
        },
      },
    });
    const before = stack.gateway.counters().calls.exec?.ok ?? 0;
    const out = await tools.exec.execute!({ command: ['echo', 'through', 'envoy'] }, toolCall);
    expect(out).toMatchObject({ exitCode: 0, stdout: 'through envoy\n', stderr: '' });
    expect(stack.gateway.counters().calls.exec?.ok).toBe(before + 1);

    // and the raw CallToolResult (automatic schemas): structuredContent as the gateway sent it
    const raw = (await (await c.tools()).write_file!.execute!({ path: '/work/a.txt', content: 'second client' }, toolCall)) as { isError?: boolean; structuredContent?: unknown };
    expect(raw.isError ?? false).toBe(false);
    const read = (await (await c.tools()).read_file!.execute!({ path: '/work/a.txt' }, toolCall)) as { structuredContent?: unknown };
    expect(read.structuredContent).toMatchObject({ content: 'second client' });
  });

  it('closing the client ends its MCP session at the gateway (DELETE through Envoy)', async () => {
    const c = await connect(await stack.token('carol'));
    await c.listTools();
    const openBefore = stack.gateway.counters().sessionsOpen;
    const deletes = stack.gateway.counters().requests.DELETE ?? 0;
    await c.close();
    await eventually(() => (stack.gateway.counters().requests.DELETE ?? 0) === deletes + 1, 5000, 'the DELETE at the gateway');
    expect(stack.gateway.counters().sessionsOpen).toBe(openBefore - 1);
  });

  it('without a token (or with a bad one) the client is refused 401 at Envoy; the gateway sees nothing', async () => {
    const seen = { ...stack.gateway.counters().requests };
    for (const token of [undefined, 'not.a.jwt', `${await stack.token('alice')}x`]) {
      const err = await connect(token).then(
        () => undefined,
        (e: unknown) => e as HttpFailure,
      );
      expect(err, String(token)).toBeDefined();
      expect(err?.statusCode).toBe(401);
      expect(err?.responseBody).toContain('"reason":"unauthorized"');
    }
    expect(stack.gateway.counters().requests).toEqual(seen);
  });

  it('a caller denied a tool does not see it listed, and calling it anyway is refused 403 tool_not_allowed at Envoy', async () => {
    const c = await connect(await stack.token('bob'));
    const names = (await c.listTools()).tools.map((t) => t.name);
    expect(names).not.toContain('exec');
    expect(names).toContain('read_file');
    // build the tool from alice's listing (bob's hides exec) and call it as bob
    const alice = await connect(await stack.token('alice'));
    const asBob = c.toolsFromDefinitions(await alice.listTools());
    const calls = stack.gateway.callsSeen();
    const err = await Promise.resolve(asBob.exec!.execute!({ command: ['id'] }, toolCall)).then(
      () => undefined,
      (e: unknown) => e as HttpFailure,
    );
    expect(err?.statusCode).toBe(403);
    expect(JSON.parse(err?.responseBody ?? '{}')).toMatchObject({ jsonrpc: '2.0', error: { code: -32003, data: { reason: 'tool_not_allowed' } } });
    expect(stack.gateway.callsSeen()).toBe(calls);
    // the session is still usable for what bob may do
    const ok = (await asBob.list_files!.execute!({ path: '/' }, toolCall)) as { isError?: boolean };
    expect(ok.isError ?? false).toBe(false);
  });
});
