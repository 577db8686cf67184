import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn, type DnsServerProcess } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { eventually, pidAlive } from '../harness/ports.js';
import { portFree } from '../../cli/doctor.js';
import { projectRoot } from '../../common/paths.js';
import { LABEL_INSTANCE } from '../../sandbox/container.js';
import { CHAIN_FWD, CHAIN_IN } from '../../sandbox/network.js';

/*
 * The README's first command, exactly (`npm run up`), in a fresh copy of the project in a temporary
 * directory: prerequisites (already present: a no-op), build, the sandbox image (cached), then
 * `portcullis up` with the bundled default policy. A real MCP client connects with the endpoint and
 * token it prints, runs a command in a gVisor sandbox, reaches an allowed registry (a TLS upstream in a
 * test namespace: the test's DNS answers for it) through Envoy, is refused a destination the policy
 * does not list with the reason in what the agent sees; then Ctrl-C, and nothing is left behind.
 *
 * The only thing the test adds is PORTCULLIS_DNS_RESOLVERS (its own DNS server), so no name is
 * resolved or reached outside this machine.
 */

const gate = e2eGate(['envoy', 'docker', 'runsc', 'root', 'netns'], 'the README first command (npm run up)');
const ALLOWED = 'registry.npmjs.org';

function copyProject(dest: string): void {
  const root = projectRoot();
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' })
    .split('\0')
    .filter(Boolean);
  for (const f of files) {
    const from = path.join(root, f);
    if (!fs.existsSync(from) || !fs.statSync(from).isFile()) continue; // deleted in the working tree
    fs.mkdirSync(path.dirname(path.join(dest, f)), { recursive: true });
    fs.copyFileSync(from, path.join(dest, f));
    fs.chmodSync(path.join(dest, f), fs.statSync(from).mode & 0o777);
  }
  // installed packages are shared (prerequisites check they match package-lock.json)
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dest, 'node_modules'));
}

function listenerClosesWithoutAnswer(host: string, port: number, from: TestNet, hostName: string): Promise<string> {
  // a CONNECT from a test-network host (not the sandbox pool): Envoy has no filter chain for it
  const script = `s=require("net").connect(${port},"${host}",()=>s.write("CONNECT ${ALLOWED}:443 HTTP/1.1\\r\\nHost: ${ALLOWED}:443\\r\\n\\r\\n"));let b="";s.on("data",d=>b+=d);s.on("close",()=>{console.log(JSON.stringify(b));});s.on("error",e=>{console.log(JSON.stringify("error:"+e.code));});setTimeout(()=>{console.log(JSON.stringify("timeout:"+b));process.exit(0)},5000)`;
  return from.runIn(hostName, process.execPath, ['-e', script], { timeoutMs: 15_000 }).then((r) => JSON.parse(r.stdout.trim().split('\n')[0]!) as string);
}



describe.skipIf(!gate.ok)('the first ten minutes: `npm run up` in a fresh directory, an MCP client connected', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-first-'));
  let tn: TestNet;
  let upstream: Upstream;
  let dns: DnsServerProcess;
  let caPem: string;
  let child: ChildProcess;
  let exited: Promise<number | null>;
  let out = '';
  let err = '';
  let endpoint: string;
  let token: string;

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['reg', 'dns', 'lan'] });
    const ca = createTestCa();
    caPem = ca.certPem;
    const cert = ca.issueServerCert({ dnsNames: [ALLOWED] });
    upstream = await startUpstream({ netns: tn.host('reg').netns, port: 443, tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    dns = await startDnsServerIn({ netns: tn.host('dns').netns, zone: { [ALLOWED]: { A: [tn.host('reg').ip] } } });
    copyProject(dir);
    const t0 = Date.now();
    child = spawn('npm', ['run', 'up'], {
      cwd: dir,
      detached: true, // its own process group, as a terminal gives it: Ctrl-C goes to all of it
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PORTCULLIS_DNS_RESOLVERS: `${tn.host('dns').ip}:53` },
    });
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    exited = new Promise((r) => child.on('exit', (code) => r(code)));
    await Promise.race([
      eventually(() => /Portcullis is up\./.test(out) && /Press Ctrl-C/.test(out), 170_000, '`npm run up` to print that it is ready'),
      exited.then((code) => {
        throw new Error(`npm run up exited ${code}\n${err}\n${out}`);
      }),
    ]);
    process.stdout.write(`[first-ten-minutes] npm run up: ready after ${Date.now() - t0} ms (prerequisites, build, image check, up)\n`);
    endpoint = /MCP endpoint:\s+(\S+)/.exec(out)![1]!;
    token = /token \([^)]*\): (\S+)/.exec(out)![1]!;
  }, 180_000);

  afterAll(async () => {
    if (child?.exitCode === null && child.pid) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await upstream?.stop();
    await dns?.stop();
    await tn?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('prints the endpoint, a token, client configuration, the audit log and how to stop; progress step by step', () => {
    expect(endpoint).toBe('http://127.0.0.1:8080/mcp');
    expect(token.split('.')).toHaveLength(3);
    expect(out).toMatch(/claude mcp add --transport http portcullis http:\/\/127\.0\.0\.1:8080\/mcp --header "Authorization: Bearer /);
    expect(out).toMatch(/"mcpServers":\{"portcullis":\{"url":"http:\/\/127\.0\.0\.1:8080\/mcp"/);
    expect(out).toContain(`audit log:            ${path.join(dir, 'data', 'audit.jsonl')}`);
    for (const step of ['loading policy', 'starting the sandbox supervisor', 'starting the control plane', 'starting Envoy', 'waiting for Envoy to apply']) {
      expect(err).toMatch(new RegExp(`• ${step}[^\\n]* ok|• ${step}[^\\n]*\\(\\d+ ms\\)`));
    }
  });

  it('an MCP client runs a command in a gVisor sandbox, reaches an allowed registry through Envoy, and sees why another host is refused', async () => {
    const client = new Client({ name: 'first-ten-minutes', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(endpoint), { requestInit: { headers: { authorization: `Bearer ${token}` } } });
    await client.connect(transport);
    const exec = async (command: string[]) =>
      (await client.callTool({ name: 'exec', arguments: { command, timeoutMs: 60_000 } })).structuredContent as { exitCode: number; stdout: string; stderr: string };
    try {
      const tools = (await client.listTools()).tools.map((t) => t.name).sort();
      expect(tools).toEqual(['edit_file', 'egress_policy', 'exec', 'list_files', 'read_file', 'write_file']);
      const uname = await exec(['sh', '-c', 'echo hello; dmesg | head -1']);
      expect(uname.exitCode).toBe(0);
      expect(uname.stdout).toMatch(/^hello\n[\s\S]*gVisor/);

      await client.callTool({ name: 'write_file', arguments: { path: '/workspace/test-ca.pem', content: caPem } });
      const before = upstream.requests().length;
      const ok = await exec(['curl', '-sS', '--max-time', '30', '--cacert', '/workspace/test-ca.pem', `https://${ALLOWED}/some-package`]);
      expect(ok.exitCode, ok.stderr).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({ url: '/some-package', sni: ALLOWED });
      expect(upstream.requests().length).toBe(before + 1);

      const denied = await exec(['curl', '-sS', '-v', '--max-time', '30', 'https://example.org/']);
      expect(denied.exitCode).not.toBe(0);
      expect(denied.stderr).toMatch(/< HTTP\/1\.1 403/);
      expect(denied.stderr.toLowerCase()).toContain('x-deny-reason: destination_not_allowed');
      expect(upstream.requests().length).toBe(before + 1);

      const policy = (await client.callTool({ name: 'egress_policy', arguments: {} })).structuredContent as { destinations: Array<{ host: string }> };
      expect(policy.destinations.map((d) => d.host)).toContain(ALLOWED);
    } finally {
      await transport.terminateSession().catch(() => undefined);
      await client.close().catch(() => undefined);
    }
  });

  it('a wrong token is refused at Envoy with a pointer to the metadata', async () => {
    const r = await fetch(endpoint, { method: 'POST', headers: { authorization: 'Bearer not-a-token', 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{}' });
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toContain('/.well-known/oauth-protected-resource');
  });

  it('the egress listener on 0.0.0.0 serves the sandbox pool only: a host on another network gets no answer', async () => {
    const got = await listenerClosesWithoutAnswer(tn.rootIp, 15001, tn, 'lan');
    expect(got).not.toMatch(/HTTP\/1\.1/);
    expect(got === '' || got.startsWith('error:')).toBe(true);
  });

  it('Ctrl-C stops everything in order and leaves no container, network, firewall rule, socket or process behind', async () => {
    // a sandbox of a session still open when Ctrl-C comes must go too
    const client = new Client({ name: 'left-open', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(endpoint), { requestInit: { headers: { authorization: `Bearer ${token}` } } }));
    await client.callTool({ name: 'exec', arguments: { command: ['true'] } });
    expect(execFileSync('docker', ['ps', '-q', '--filter', `label=${LABEL_INSTANCE}=up`], { encoding: 'utf8' }).trim()).not.toBe('');
    const envoyPid = Number(/starting Envoy[^\n]*pid (\d+)/.exec(err)![1]);
    const group = () => spawnSync('pgrep', ['-g', String(child.pid)], { encoding: 'utf8' }).stdout.trim();
    expect(group()).not.toBe('');
    process.kill(-child.pid!, 'SIGINT'); // Ctrl-C in a terminal: the whole foreground process group
    // npm and its shell die of the SIGINT (exit 130 / signal), as in a terminal; `up` itself stops in order
    const code = await exited;
    expect([0, 130, null]).toContain(code);
    await eventually(() => group() === '', 60_000, 'every process of `npm run up` to exit');
    expect(err).toMatch(/stopping Envoy, the gateway, every sandbox, the control plane … ok/);
    expect(pidAlive(envoyPid)).toBe(false);
    expect(execFileSync('docker', ['ps', '-a', '-q', '--filter', `label=${LABEL_INSTANCE}=up`], { encoding: 'utf8' }).trim()).toBe('');
    expect(execFileSync('docker', ['network', 'ls', '-q', '--filter', `label=${LABEL_INSTANCE}=up`], { encoding: 'utf8' }).trim()).toBe('');
    const rules = execFileSync('iptables', ['-w', '5', '-S'], { encoding: 'utf8' });
    // no rule of this deployment; the shared base chains go too unless another test's sandbox still uses them
    expect(rules).not.toMatch(/portcullis:up:/);
    const others = execFileSync('docker', ['ps', '-q', '--filter', `label=${LABEL_INSTANCE}`], { encoding: 'utf8' }).trim();
    if (!others) {
      expect(rules).not.toContain(CHAIN_IN);
      expect(rules).not.toContain(CHAIN_FWD);
    }
    expect(await portFree(8080, '0.0.0.0')).toBe(true);
    expect(await portFree(15001, '0.0.0.0')).toBe(true);
    expect(fs.existsSync(path.join(dir, 'data', 'operator.sock'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'data', 'mcp-gateway.sock'))).toBe(false);
    // the audit log of the whole run verifies, and holds the tool calls, the egress decisions and the lifecycle
    const auditFile = path.join(dir, 'data', 'audit.jsonl');
    const verify = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'audit', 'verify', auditFile], { cwd: projectRoot(), encoding: 'utf8' });
    expect(verify.status, verify.stdout + verify.stderr).toBe(0);
    const audit = fs.readFileSync(auditFile, 'utf8');
    expect(audit).toContain('destination_not_allowed');
    expect(audit).toContain(ALLOWED);
  });
});
