import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import type { JWK } from 'jose';
import { createTestNet, type TestNet } from './netns.js';
import { startUpstream, PROJECT_ROOT, type Upstream } from './upstream.js';
import { startDnsServerIn, type DnsServerProcess } from './dns-server.js';
import { createTestCa } from './test-ca.js';
import { freePort } from './ports.js';
import { silentLogger } from '../../common/logger.js';
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { JwtSessions } from '../../xds-server/sessions.js';
import { Minter } from '../../sds-minter/index.js';
import { EnvoyProcess, stopAllEnvoys, uniqueNodeId } from '../../envoy/process.js';
import { XDS_CLUSTER_NAME } from '../../envoy/bootstrap.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { AuditWriter } from '../../audit/writer.js';
import { MemorySandbox } from '../../mcp/testkit.js';
import { CALLER_HEADER, McpGateway, type GatewaySandbox } from '../../mcp/gateway.js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { connectMcpClient } from './mcp-stack.js';
import { testSessionKey } from './session-keys.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { EventBus } from '../../common/events.js';
import { Supervisor } from '../../sandbox/supervisor.js';
import type { OperatorSandbox } from '../../operator/kill.js';
import { startOperatorPlane, type OperatorPlane } from '../../operator/index.js';
import { OperatorClient } from '../../operator/client.js';
import { startReceiver, type TestReceiver } from '../../operator/testkit.js';

/**
 * The operator plane wired as `portcullis up` will wire it, around a real Envoy: control plane with
 * sessions required at every rung (on transparent tunnels too), deployment CA (minter),
 * a real audit log, the in-memory SandboxService standing in for the supervisor (or, with
 * `realSupervisor`, the real one: Docker + gVisor, its session keys verifying the egress tokens),
 * the MCP gateway (on loopback; it trusts the caller header, as behind Envoy's ingress) registered
 * as a denylist enforcer and a kill-all session source, a SOAR receiver on loopback. Guests are
 * curl / python clients in a test network namespace (or, with the real supervisor, gVisor
 * sandboxes reaching the egress listener at their network's gateway); upstreams are TLS servers on
 * 198.51.100.0/24 (`sink.test` transparent, `api.bump.test` bump with an injected credential).
 */

export const PORT = 8443;

export interface OperatorStackOptions {
  tripwire: { bytesPerSession: string; distinctDestinations: number; window: string; onTrip: 'alert' | 'kill' };
  maxTunnelSeconds: number;
  operatorTcp?: boolean;
  /**
   * The real supervisor (Docker + runsc) instead of the in-memory one. The egress listener then
   * binds 0.0.0.0 (sandboxes reach it at their network's gateway address). Use an instanceId of
   * your own: its containers carry it as a label.
   */
  realSupervisor?: { instanceId: string; image?: string };
}

export type StackSandbox = GatewaySandbox & OperatorSandbox & Pick<MemorySandbox, 'listSessions' | 'getSession' | 'createSession'>;

export interface McpTestClient {
  client: Client;
  transport: StreamableHTTPClientTransport;
  close(): Promise<void>;
}

export interface CurlResult {
  code: number;
  stdout: string;
  stderr: string;
  statuses: number[];
  reasons: string[];
}

export interface Tunnel {
  /** the proxy's answer to CONNECT (status line) */
  connect: string;
  /** one request through the tunnel; resolves with the parsed answer, or {error} once the tunnel is cut */
  get(path: string, authorization?: string): Promise<{ status?: number; reason?: string | null; body?: string; error?: string }>;
  close(): void;
}

export interface OperatorStack {
  tn: TestNet;
  up: Upstream;
  cp: ControlPlane;
  envoy: EnvoyProcess;
  plane: OperatorPlane;
  /** the in-memory supervisor, or the real one (`realSupervisor`) */
  sandbox: StackSandbox;
  /** the real supervisor when `realSupervisor` was asked for */
  supervisor?: Supervisor;
  /** supervisor events (sandbox.* and session.*) */
  sandboxEvents: EventBus;
  /** the MCP gateway, revoked through the denylist like the egress edge */
  gateway: McpGateway;
  /** an MCP client of the gateway as `caller` */
  mcp(caller: string): Promise<McpTestClient>;
  sessions: JwtSessions;
  receiver: TestReceiver;
  audit: AuditWriter;
  client: OperatorClient;
  ir: Ir;
  tmp: string;
  dataDir: string;
  egressPort: number;
  upstreamCaFile: string;
  deploymentCaFile: string;
  token(sid: string, expSec?: number): Promise<string>;
  /** a sandbox session (in-memory supervisor) and its egress token */
  newSession(owner?: string): Promise<{ id: string; token: string }>;
  curl(url: string, opts?: { token?: string; cacert?: string; args?: string[]; timeoutMs?: number }): Promise<CurlResult>;
  spawnCurl(url: string, opts: { token: string; cacert?: string; args?: string[] }): ChildProcess;
  tunnel(token: string, host?: string): Promise<Tunnel>;
  close(): Promise<void>;
}

export async function startOperatorStack(o: OperatorStackOptions): Promise<OperatorStack> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-operator-'));
  const cleanups: (() => Promise<unknown> | unknown)[] = [() => fs.rmSync(tmp, { recursive: true, force: true })];
  const close = async () => {
    for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => undefined);
  };
  try {
    const tn = await createTestNet({ hosts: ['up', 'dns', 'cli'] });
    cleanups.push(() => tn.destroy());
    const ca = createTestCa();
    const upstreamCaFile = path.join(tmp, 'upstream-ca.pem');
    fs.writeFileSync(upstreamCaFile, ca.certPem);
    const cert = ca.issueServerCert({ dnsNames: ['sink.test', 'api.bump.test'] });
    const up = await startUpstream({ netns: tn.host('up').netns, port: PORT, tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    cleanups.push(() => up.stop());
    const dns: DnsServerProcess = await startDnsServerIn({
      netns: tn.host('dns').netns,
      zone: { 'sink.test': { A: [tn.host('up').ip] }, 'api.bump.test': { A: [tn.host('up').ip] } },
    });
    cleanups.push(() => dns.stop());
    const receiver = await startReceiver();
    cleanups.push(() => receiver.stop());

    const keyFile = path.join(tmp, 'upstream.key');
    fs.writeFileSync(keyFile, 's3cret-v1\n', { mode: 0o600 });
    const tw = o.tripwire;
    const ir = compileText(
      [
        'apiVersion: portcullis/v1',
        'kind: Policy',
        'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
        'egress:',
        '  rung: transparent',
        `  upstreamTrust: { caFile: ${upstreamCaFile} }`,
        `  tripwire: { bytesPerSession: ${tw.bytesPerSession}, distinctDestinations: ${tw.distinctDestinations}, window: ${tw.window}, onTrip: ${tw.onTrip} }`,
        '  allow:',
        `    - { host: sink.test, ports: [${PORT}] }`,
        `    - { host: api.bump.test, ports: [${PORT}], rung: bump, credential: upstream-key }`,
        '  credentials:',
        `    - { name: upstream-key, header: authorization, format: "Bearer {secret}", source: { file: ${keyFile} } }`,
        'mcp:',
        '  tools:',
        '    rules:',
        '      - { callers: ["*"], tools: [exec, read_file, write_file, list_files, egress_policy], effect: allow }',
        'soar:',
        '  webhooks:',
        `    - { url: "${receiver.url}", signingKey: { file: ${path.join(tmp, 'keys', 'soar-signing.jwk')} } }`,
        `audit: { file: ${path.join(tmp, 'data', 'audit.jsonl')} }`,
        '',
      ].join('\n'),
      { file: 'operator-e2e.yaml', baseDir: tmp },
    );

    const egressPort = await freePort();
    const sandboxEvents = new EventBus();
    let supervisor: Supervisor | undefined;
    if (o.realSupervisor) {
      const sup = new Supervisor({
        config: {
          instanceId: o.realSupervisor.instanceId,
          trustProfile: 'trusted_operator',
          runtime: 'gvisor',
          image: o.realSupervisor.image ?? process.env.PORTCULLIS_SANDBOX_IMAGE ?? 'portcullis-sandbox:0.1.0',
          sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 900, absoluteLifetimeSeconds: 3600 },
          egress: { port: egressPort },
          stateDir: path.join(tmp, 'supervisor'),
        },
        logger: silentLogger(),
        events: sandboxEvents,
      });
      await sup.start();
      supervisor = sup;
      cleanups.push(() => sup.stop());
    }
    const { jwk, token } = await testSessionKey();
    // test tokens (k1) and, with the real supervisor, the supervisor's session keys
    const sessions = new JwtSessions({ jwks: () => ({ keys: [jwk, ...((supervisor?.jwks().keys ?? []) as JWK[])] }) });

    const dataDir = path.join(tmp, 'data');
    const minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'operator-e2e', policy: [], logger: silentLogger() });
    const deploymentCaFile = path.join(tmp, 'deployment-ca.pem');
    fs.writeFileSync(deploymentCaFile, minter.bundlePem());
    const audit = await AuditWriter.open({ dataDir, logger: silentLogger() });
    cleanups.push(() => audit.close());

    const nodeId = uniqueNodeId('operator');
    const cp = new ControlPlane({
      logger: silentLogger(),
      nodeKey: nodeId,
      translate: {
        egress: {
          listen: { address: supervisor ? '0.0.0.0' : tn.rootIp, port: egressPort },
          dnsResolvers: [`${tn.host('dns').ip}:53`],
          accessLogCluster: XDS_CLUSTER_NAME,
          bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
          sessionsRequired: true,
          maxTunnelSeconds: o.maxTunnelSeconds,
        },
      },
      bump: { sessions, minter },
    });
    cleanups.push(() => cp.close());
    audit.attach(cp.events);
    await cp.listen();
    const snap = cp.apply(ir, { immediate: true });

    const sandbox: StackSandbox = supervisor ?? new MemorySandbox();
    // the MCP gateway: a denylist enforcer and a kill-all session source, as `portcullis up` wires it
    const gateway = await McpGateway.start({ sandbox, policy: () => ir, logger: silentLogger(), events: sandboxEvents });
    cleanups.push(() => gateway.close());
    const envoyHolder: { envoy?: EnvoyProcess } = {};
    const plane = await startOperatorPlane({
      dataDir,
      logger: silentLogger(),
      events: cp.events,
      metrics: cp.metrics,
      audit,
      ir,
      controlPlane: cp,
      revokers: [cp.edgeRevoker(), gateway.revoker()],
      sessionSources: [() => gateway.liveSessions()],
      supervisor: sandbox,
      minter,
      ...(o.operatorTcp ? { tcp: { port: 0, token: 't'.repeat(48) } } : {}),
      envoyStats: () => (envoyHolder.envoy ? envoyHolder.envoy.admin.stats('grpc_access_log') : Promise.resolve({})),
      envoyStatsEveryMs: 2000,
    });
    cleanups.push(() => plane.close());
    const client = new OperatorClient({ socketPath: plane.api.socketPath! });
    cleanups.push(() => client.close());

    const envoy = await EnvoyProcess.start({ bootstrap: { nodeId, xds: { port: cp.server.port } }, logger: silentLogger() });
    envoyHolder.envoy = envoy;
    cleanups.push(() => stopAllEnvoys());
    await envoy.waitConnected();
    await envoy.waitForVersion(XDS.listener, snap.version, 20_000);

    const proxyUrl = (tok?: string) => (tok ? `http://session:${tok}@${tn.rootIp}:${egressPort}` : `http://${tn.rootIp}:${egressPort}`);
    const curlArgs = (url: string, opts: { token?: string; cacert?: string; args?: string[]; maxTime?: number }) => [
      '-sS',
      '-v',
      '--max-time',
      String(opts.maxTime ?? 10),
      '--proxy',
      proxyUrl(opts.token),
      '--cacert',
      opts.cacert ?? upstreamCaFile,
      ...(opts.args ?? []),
      url,
    ];

    const stack: OperatorStack = {
      tn,
      up,
      cp,
      envoy,
      plane,
      sandbox,
      ...(supervisor ? { supervisor } : {}),
      sandboxEvents,
      gateway,
      mcp: (caller) => connectMcpClient(`http://${gateway.address}/mcp`, { [CALLER_HEADER]: caller }, 'operator-e2e'),
      sessions,
      receiver,
      audit,
      client,
      ir,
      tmp,
      dataDir,
      egressPort,
      upstreamCaFile,
      deploymentCaFile,
      token,
      async newSession(owner = 'agent') {
        const info = await sandbox.createSession(owner);
        return { id: info.sessionId, token: await token(info.sessionId) };
      },
      async curl(url, opts = {}) {
        const r = await tn.runIn('cli', 'curl', curlArgs(url, { ...opts, maxTime: Math.ceil((opts.timeoutMs ?? 10_000) / 1000) }), { check: false, timeoutMs: (opts.timeoutMs ?? 10_000) + 10_000 });
        const statuses = [...r.stderr.matchAll(/< HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
        const reasons = [...r.stderr.matchAll(/< x-deny-reason: (\S+)/gi)].map((m) => m[1]!);
        return { ...r, statuses, reasons };
      },
      spawnCurl(url, opts) {
        return tn.spawnIn('cli', 'curl', curlArgs(url, { ...opts, maxTime: 120 }), { stdio: ['ignore', 'pipe', 'pipe'] });
      },
      async tunnel(tok, host = 'api.bump.test') {
        const child = tn.spawnIn(
          'cli',
          'python3',
          [path.join(PROJECT_ROOT, 'test/harness/scripts/tunnel-client.py'), tn.rootIp, String(egressPort), `${host}:${PORT}`, tok, deploymentCaFile, host],
          { stdio: ['pipe', 'pipe', 'ignore'] },
        );
        const lines = readline.createInterface({ input: child.stdout! });
        const queue: string[] = [];
        const waiters: ((l: string | null) => void)[] = [];
        lines.on('line', (l) => {
          const w = waiters.shift();
          if (w) w(l);
          else queue.push(l);
        });
        child.once('exit', () => {
          for (const w of waiters.splice(0)) w(null);
        });
        const next = () => new Promise<string | null>((resolve) => (queue.length ? resolve(queue.shift()!) : waiters.push(resolve)));
        const first = await next();
        const connect = first ? String((JSON.parse(first) as { connect?: string }).connect ?? '') : '';
        return {
          connect,
          async get(p, authorization) {
            if (child.exitCode !== null || child.stdin!.destroyed) return { error: 'client gone' };
            child.stdin!.write(`GET ${host}:${PORT} ${p}${authorization ? ` ${authorization}` : ''}\n`);
            const l = await next();
            return l === null ? { error: 'client gone' } : (JSON.parse(l) as { status?: number; reason?: string | null; body?: string; error?: string });
          },
          close() {
            child.kill();
          },
        };
      },
      close,
    };
    return stack;
  } catch (e) {
    await close();
    throw e;
  }
}

/** A child process flooding a target; `stop()` returns how many operations it completed. */
export interface Flood {
  stop(): Promise<number>;
}

const FLOOD_SCRIPT = `
const net = require('net'); const http = require('http');
const [mode, a, b, c, d] = process.argv.slice(1);
let done = 0, stop = false;
process.on('SIGTERM', () => { stop = true; process.stdout.write(String(done) + '\\n'); process.exit(0); });
function connectOnce() {
  return new Promise((resolve) => {
    const s = net.connect(Number(b), a);
    s.setTimeout(10000, () => s.destroy());
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    s.on('connect', () => s.write('CONNECT ' + d + ' HTTP/1.1\\r\\nHost: ' + d + '\\r\\nProxy-Authorization: Basic ' + c + '\\r\\n\\r\\n'));
    let head = '';
    s.on('data', (x) => { head += x; if (head.includes('\\r\\n\\r\\n')) { done++; s.destroy(); } });
  });
}
function operatorOnce() {
  return new Promise((resolve) => {
    const r = http.get({ socketPath: a, path: '/v1/sessions', agent: false }, (res) => { res.resume(); res.on('end', () => { done++; resolve(); }); });
    r.on('error', () => resolve());
  });
}
async function worker() { while (!stop) await (mode === 'connect' ? connectOnce() : operatorOnce()); }
for (let i = 0; i < Number(mode === 'connect' ? process.env.FLOOD_CONCURRENCY || 16 : process.env.FLOOD_CONCURRENCY || 8); i++) worker();
`;

/** Flood the egress listener with authorized CONNECTs (agent path), from the root namespace. */
export function floodConnect(host: string, port: number, token: string, authority: string, concurrency = 16): Flood {
  const auth = Buffer.from(`session:${token}`).toString('base64');
  return startFlood(['connect', host, String(port), auth, authority], concurrency);
}

/** Flood the operator API socket with reads. */
export function floodOperator(socketPath: string, concurrency = 8): Flood {
  return startFlood(['operator', socketPath], concurrency);
}

function startFlood(args: string[], concurrency: number): Flood {
  const child = spawn(process.execPath, ['-e', FLOOD_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, FLOOD_CONCURRENCY: String(concurrency) } });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  return {
    stop: () =>
      new Promise<number>((resolve) => {
        if (child.exitCode !== null) return resolve(Number(out.trim()) || 0);
        child.once('exit', () => resolve(Number(out.trim()) || 0));
        child.kill('SIGTERM');
      }),
  };
}
