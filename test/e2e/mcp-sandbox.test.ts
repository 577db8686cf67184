import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn, type DnsServerProcess } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { eventually, freePort } from '../harness/ports.js';
import { mcpPost, startMcpStack, type McpStack } from '../harness/mcp-stack.js';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { compileText } from '../../policy/compile.js';
import { Supervisor } from '../../sandbox/supervisor.js';

/*
 * The whole MCP path with the real sandbox: SDK client → Envoy ingress (jwt_authn, limits,
 * ext_authz) → MCP gateway → supervisor → gVisor sandbox → Envoy egress → an upstream in a test
 * network namespace.
 */

const gate = e2eGate(['envoy', 'docker', 'runsc', 'root', 'netns'], 'MCP through Envoy into a gVisor sandbox');
const IMAGE = process.env.PORTCULLIS_SANDBOX_IMAGE ?? 'portcullis-sandbox:0.1.0';
const PORT = 8443;

describe.skipIf(!gate.ok)('MCP through a real Envoy into a real gVisor sandbox', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-mcp-sbx-'));
  const events = new EventBus();
  let tn: TestNet;
  let up: Upstream;
  let dns: DnsServerProcess;
  let supervisor: Supervisor;
  let stack: McpStack;
  let caPem: string;
  let alice: string;

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up', 'dns'] });
    const ca = createTestCa();
    caPem = ca.certPem;
    const cert = ca.issueServerCert({ dnsNames: ['api.allowed.test'], ips: [tn.host('up').ip] });
    up = await startUpstream({ netns: tn.host('up').netns, port: PORT, tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    dns = await startDnsServerIn({ netns: tn.host('dns').netns, zone: { 'api.allowed.test': { A: [tn.host('up').ip] }, 'other.test': { A: [tn.host('up').ip] } } });
    const egressPort = await freePort();
    supervisor = new Supervisor({
      config: {
        instanceId: 'mcp-e2e',
        trustProfile: 'trusted_operator',
        runtime: 'gvisor',
        image: IMAGE,
        sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 900, absoluteLifetimeSeconds: 3600 },
        egress: { port: egressPort },
        stateDir: tmp,
      },
      logger: silentLogger(),
      events,
    });
    await supervisor.start();
    const ir = compileText(
      `apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress:
  rung: transparent
  allow:
    - { host: api.allowed.test, ports: [${PORT}] }
mcp:
  tools:
    rules:
      - { callers: ["*"], tools: [exec, read_file, write_file, edit_file, list_files, egress_policy], effect: allow }
      - { callers: ["*"], tools: [exec], effect: deny, arguments: [{ name: cwd, pathPrefix: /etc }] }
`,
      { file: 'mcp-sandbox.yaml', baseDir: tmp },
    );
    // the sandboxes reach the egress listener at their session network's gateway address
    stack = await startMcpStack({
      ir,
      sandbox: supervisor,
      egress: { listen: { address: '0.0.0.0', port: egressPort }, dnsResolvers: [`${tn.host('dns').ip}:53`], dnsRefreshSeconds: 1 },
    });
    alice = await stack.token('alice');
  });

  afterAll(async () => {
    await stack?.close();
    await supervisor?.stop().catch(() => undefined);
    await up?.stop();
    await dns?.stop();
    await tn?.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const exec = async (client: Awaited<ReturnType<McpStack['client']>>['client'], command: string[]) =>
    (await client.callTool({ name: 'exec', arguments: { command, timeoutMs: 30_000 } })).structuredContent as { exitCode: number; stdout: string; stderr: string; outcome: string };

  it('initialize, tools/list, exec echo, write then read a file — in a gVisor sandbox owned by the caller', async () => {
    const c = await stack.client(alice);
    try {
      expect((await c.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['edit_file', 'egress_policy', 'exec', 'list_files', 'read_file', 'write_file']);
      expect(await exec(c.client, ['echo', 'hello from gvisor'])).toMatchObject({ exitCode: 0, stdout: 'hello from gvisor\n' });
      await c.client.callTool({ name: 'write_file', arguments: { path: '/workspace/notes.txt', content: 'written through envoy' } });
      const read = await c.client.callTool({ name: 'read_file', arguments: { path: '/workspace/notes.txt' } });
      expect(read.structuredContent).toMatchObject({ content: 'written through envoy' });
      expect((await exec(c.client, ['cat', '/workspace/notes.txt'])).stdout).toBe('written through envoy');
      const sessions = supervisor.listSessions().filter((s) => s.owner === 'alice');
      expect(sessions).toHaveLength(1);
      expect(sessions[0]!.runtime).toBe('runsc');
      // the kernel the tool ran on is gVisor's
      expect((await exec(c.client, ['dmesg'])).stdout + (await exec(c.client, ['uname', '-a'])).stdout).toMatch(/gVisor|4\.4\.0/);
    } finally {
      await c.close();
    }
    // DELETE ended the MCP session and its sandbox
    await eventually(() => supervisor.listSessions().every((s) => s.owner !== 'alice'), 30_000, 'the sandbox session destroyed');
  });

  it('curl from inside the sandbox reaches an allowed upstream through the egress listener, and nothing else', async () => {
    const c = await stack.client(alice);
    try {
      const policy = (await c.client.callTool({ name: 'egress_policy', arguments: {} })).structuredContent as { destinations: Array<{ host: string; ports: number[] }> };
      expect(policy.destinations).toEqual([expect.objectContaining({ host: 'api.allowed.test', ports: [PORT] })]);
      await c.client.callTool({ name: 'write_file', arguments: { path: '/workspace/ca.pem', content: caPem } });
      const before = up.requests().length;
      const ok = await exec(c.client, ['curl', '-sS', '--max-time', '20', '--cacert', '/workspace/ca.pem', `https://api.allowed.test:${PORT}/from-sandbox`]);
      expect(ok.exitCode, ok.stderr).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({ url: '/from-sandbox', sni: 'api.allowed.test' });
      expect(up.requests().length).toBe(before + 1);
      const denied = await exec(c.client, ['curl', '-sS', '-o', '/dev/null', '-w', '%{http_connect}', '--max-time', '20', '--cacert', '/workspace/ca.pem', `https://other.test:${PORT}/`]);
      expect(denied.exitCode).not.toBe(0);
      expect(denied.stdout).toBe('403');
      expect(up.requests().length).toBe(before + 1);
    } finally {
      await c.close();
    }
  });

  it('nothing on the host side is reachable from the sandbox: control plane, Envoy admin, gateway, ingress, an operator listener on every address', async () => {
    const c = await stack.client(alice);
    try {
      const proxy = (await exec(c.client, ['sh', '-c', 'printf %s "$HTTPS_PROXY"'])).stdout;
      const gw = new URL(proxy).hostname;
      // a stand-in for an operator listener bound as badly as possible: every host address
      const hits: string[] = [];
      const operator = net.createServer((sock) => {
        hits.push(String(sock.remoteAddress));
        sock.destroy();
      });
      await new Promise<void>((r) => operator.listen(0, '0.0.0.0', r));
      const operatorPort = (operator.address() as net.AddressInfo).port;
      const targets = [stack.cp.server.port, stack.envoy.adminPort, stack.gateway.port, stack.ingressPort, operatorPort].flatMap((p) => [`${gw}:${p}`, `127.0.0.1:${p}`, `172.17.0.1:${p}`]);
      for (const t of targets) {
        const r = await exec(c.client, ['curl', '-sS', '--noproxy', '*', '--max-time', '2', '-o', '/dev/null', `http://${t}/`]);
        expect.soft(r.exitCode, t).not.toBe(0);
      }
      // the egress listener itself is reachable (the one path out), and it refuses to proxy to these
      for (const p of [stack.cp.server.port, operatorPort]) {
        const viaProxy = await exec(c.client, ['curl', '-sS', '-x', proxy, '--noproxy', '', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', `http://127.0.0.1:${p}/`]);
        expect(viaProxy.stdout).toBe('403');
      }
      operator.close();
      expect(hits).toEqual([]);
    } finally {
      await c.close();
    }
  });

  it('a call refused at Envoy never reaches the gateway or the sandbox', async () => {
    const init = await mcpPost(stack.url, alice, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } });
    const h = { 'mcp-session-id': String(init.headers['mcp-session-id']), 'mcp-protocol-version': '2025-06-18' };
    await mcpPost(stack.url, alice, { jsonrpc: '2.0', method: 'notifications/initialized' }, h);
    const execsBefore = events.history('sandbox.exec').length;
    const callsBefore = stack.gateway.callsSeen();
    const r = await mcpPost(stack.url, alice, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'exec', arguments: { command: ['id'], cwd: '/etc' } } }, h);
    expect(r.status).toBe(403);
    expect(r.headers['x-deny-reason']).toBe('argument_denied');
    expect(stack.gateway.callsSeen()).toBe(callsBefore);
    expect(events.history('sandbox.exec').length).toBe(execsBefore);
  });
});
