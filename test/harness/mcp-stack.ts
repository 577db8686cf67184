import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { Logger } from '../../common/logger.js';
import { silentLogger } from '../../common/logger.js';
import { Metrics } from '../../common/metrics.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { EnvoyProcess, uniqueNodeId } from '../../envoy/process.js';
import { McpGateway, type GatewayOptions, type GatewaySandbox } from '../../mcp/gateway.js';
import { generateTokenKey, issueToken, localJwks, type IssueOptions, type LocalTokenKey } from '../../mcp/token.js';
import type { Ir } from '../../policy/ir.js';
import { IngressAuthz } from '../../xds-server/authz.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { grpcStaticCluster, INGRESS } from '../../xds-server/translate/ingress.js';
import type { EgressOptions } from '../../xds-server/translate/egress.js';
import { eventually, freePorts } from './ports.js';

/**
 * The MCP path as deployed: control plane (xDS + ext_authz + ALS) → real Envoy (ingress listener)
 * → MCP gateway → a SandboxService (the real supervisor, or the in-memory one for ingress-only
 * tests). Local-mode tokens minted with a fresh key.
 */

export const AUTHZ_CLUSTER = 'portcullis_authz';

export interface McpStack {
  url: string;
  ingressPort: number;
  envoy: EnvoyProcess;
  cp: ControlPlane;
  gateway: McpGateway;
  authz: IngressAuthz;
  key: LocalTokenKey;
  token(sub: string, o?: Omit<IssueOptions, 'sub'>): Promise<string>;
  /** publish a new policy and wait until Envoy runs it */
  setPolicy(ir: Ir): Promise<void>;
  client(token: string | undefined, name?: string): Promise<{ client: Client; transport: StreamableHTTPClientTransport; close(): Promise<void> }>;
  close(): Promise<void>;
}

export interface McpStackOptions {
  ir: Ir;
  sandbox: GatewaySandbox;
  logger?: Logger;
  gateway?: Partial<Omit<GatewayOptions, 'sandbox' | 'policy' | 'logger'>>;
  concurrency?: number;
  maxStreamSeconds?: number;
  /** oidc mode: the CA the IdP's JWKS endpoint is verified with (default: the system bundle) */
  jwksCaFile?: string;
  /** the egress listener (default: 127.0.0.1, an ephemeral port, system resolver) */
  egress?: EgressOptions;
}

export async function startMcpStack(o: McpStackOptions): Promise<McpStack> {
  const logger = o.logger ?? silentLogger();
  let current = o.ir;
  const [ingressPort, egressPort] = await freePorts(2);
  const key = await generateTokenKey();
  const originSecret = `origin-${Math.random().toString(36).slice(2)}${Date.now()}`;
  const gateway = await McpGateway.start({ sandbox: o.sandbox, policy: () => current, logger, originSecret, metrics: new Metrics(), ...o.gateway });
  const nodeId = uniqueNodeId('mcp');
  const cp = new ControlPlane({
    logger,
    nodeKey: nodeId,
    translate: {
      egress: o.egress ?? { listen: { address: '127.0.0.1', port: egressPort! } },
      ingress: {
        gateway: { address: '127.0.0.1', port: gateway.port },
        authzCluster: AUTHZ_CLUSTER,
        localJwks: localJwks(key),
        gatewayOriginSecret: originSecret,
        listen: { address: '127.0.0.1', port: ingressPort! },
        ...(o.maxStreamSeconds ? { maxStreamSeconds: o.maxStreamSeconds } : {}),
        ...(o.jwksCaFile ? { jwksCaFile: o.jwksCaFile } : {}),
      },
    },
  });
  const authz = new IngressAuthz({ policy: () => current, logger, events: cp.events, ...(o.maxStreamSeconds ? { leaseTtlMs: (o.maxStreamSeconds + 60) * 1000 } : {}) });
  authz.attach(cp.authz);
  authz.followAccessLogs(cp.events);
  await cp.listen('127.0.0.1:0');
  const snap = cp.apply(current, { immediate: true });
  let envoy: EnvoyProcess;
  try {
    envoy = await EnvoyProcess.start({
      bootstrap: { nodeId, xds: { port: cp.server.port }, initialFetchTimeoutMs: 0, extraClusters: [grpcStaticCluster(AUTHZ_CLUSTER, { host: '127.0.0.1', port: cp.server.port })] },
      logger,
      ...(o.concurrency ? { concurrency: o.concurrency } : {}),
    });
    await envoy.waitConnected();
    await envoy.waitForVersion(XDS.listener, snap.version, 20_000);
    await envoy.waitForVersion(XDS.route, snap.version, 20_000);
  } catch (e) {
    await gateway.close();
    await cp.close();
    throw e;
  }
  const rejected = rejectedUpdates(await envoy.admin.stats());
  if (Object.keys(rejected).length) throw new Error(`Envoy rejected the ingress config: ${JSON.stringify(rejected)} ${JSON.stringify(cp.status().lastNack)}`);
  const url = `http://127.0.0.1:${ingressPort}/mcp`;
  await eventually(async () => (await httpGet(`http://127.0.0.1:${ingressPort}/.well-known/oauth-protected-resource`)).status === 200, 15_000, 'the ingress listener');

  const stack: McpStack = {
    url,
    ingressPort: ingressPort!,
    envoy,
    cp,
    gateway,
    authz,
    key,
    token: async (sub, opts = {}) => (await issueToken(key, { sub, ...opts })).token,
    async setPolicy(ir) {
      current = ir;
      const prev = cp.snapshot;
      const s = cp.apply(ir, { immediate: true });
      // the server pushes a type only when its content changed; tool rules live in ext_authz (no push)
      for (const t of [XDS.cluster, XDS.listener, XDS.route]) {
        const before = prev?.resources.get(t);
        const after = s.resources.get(t)!;
        const changed = !before || before.size !== after.size || [...after.values()].some((r) => before.get(r.name)?.hash !== r.hash);
        if (changed) await envoy.waitForVersion(t, s.version, 20_000);
      }
    },
    client: (token, name = 'portcullis-test') => connectMcpClient(url, token ? { authorization: `Bearer ${token}` } : {}, name),
    async close() {
      await envoy.stop().catch(() => undefined);
      await gateway.close().catch(() => undefined);
      await cp.close().catch(() => undefined);
    },
  };
  return stack;
}

/** The SDK client over Streamable HTTP with these headers; `close` ends the MCP session (DELETE) too. */
export async function connectMcpClient(
  url: string,
  headers: Record<string, string>,
  name = 'portcullis-test',
): Promise<{ client: Client; transport: StreamableHTTPClientTransport; close(): Promise<void> }> {
  const client = new Client({ name, version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), Object.keys(headers).length ? { requestInit: { headers } } : {});
  await client.connect(transport);
  return {
    client,
    transport,
    close: async () => {
      await transport.terminateSession().catch(() => undefined);
      await client.close().catch(() => undefined);
    },
  };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP request without a client library (no keep-alive). */
export function httpRequest(url: string, o: { method?: string; headers?: Record<string, string>; body?: string | Buffer; rawPath?: string } = {}): Promise<RawResponse> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, method: o.method ?? 'GET', path: o.rawPath ?? `${u.pathname}${u.search}`, headers: o.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('timeout')));
    req.end(o.body);
  });
}

export function httpGet(url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return httpRequest(url, { headers });
}

/** MCP JSON-RPC POST with the headers a Streamable HTTP client sends. */
export function mcpPost(url: string, token: string | undefined, body: unknown, extra: Record<string, string> = {}): Promise<RawResponse> {
  return httpRequest(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...extra,
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

export { INGRESS };
