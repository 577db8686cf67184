import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { EventBus } from '../common/events.js';
import { createLogger } from '../common/logger.js';
import { PortcullisError } from '../common/errors.js';
import { DEFAULT_POLICY } from '../common/paths.js';
import { PolicyWatcher } from '../policy/watch.js';
import { formatIssue } from '../policy/errors.js';
import { ControlPlane } from '../xds-server/control-plane.js';
import { EnvoyProcess } from '../envoy/process.js';
import { findEnvoy, INSTALL_HINT } from '../envoy/binary.js';
import { rejectedUpdates } from '../envoy/admin.js';
import { XDS_TYPE_URLS } from '../envoy/api/type-urls.js';
import { EGRESS } from '../xds-server/translate/egress.js';
import { XDS_CLUSTER_NAME } from '../envoy/bootstrap.js';
import { AuditWriter } from '../audit/writer.js';
import { Minter } from '../sds-minter/index.js';
import { JwtSessions } from '../xds-server/sessions.js';
import { startOperatorPlane, type OperatorPlane } from '../operator/index.js';
import { BUNDLE_FILE } from '../sds-minter/ca.js';
import { Supervisor } from '../sandbox/supervisor.js';
import { SESSION_TOKEN_ISSUER } from '../sandbox/credentials.js';
import { McpGateway } from '../mcp/gateway.js';
import { issueToken, loadOrCreateTokenKey, localJwks, MAX_TOKEN_TTL_SECONDS } from '../mcp/token.js';
import { IngressAuthz } from '../xds-server/authz.js';
import { grpcStaticCluster, publicUrlOf } from '../xds-server/translate/ingress.js';
import { MCP_PATH } from '../mcp/headers.js';
import { defaultDataDir } from './token.js';
import { EXIT, Progress, type CliIo } from './io.js';
import { portFree, PREREQS, SANDBOX_IMAGE_HINT } from './doctor.js';

export const UP_USAGE = `Usage: portcullis up [--policy FILE] [--data-dir DIR] [--mcp HOST:PORT] [--egress HOST:PORT]
                     [--dns IP:PORT]... [--sub NAME] [--node-id ID] [--ads sotw|delta] [--json]

Starts the whole solo shelf with the policy (default: the solo default policy): the control plane
(xDS, SDS, ext_authz, access logs), the certificate minter, the gVisor sandbox supervisor with its MCP
gateway, the operator API, and Envoy (MCP ingress + sandbox egress). Waits until Envoy runs the
policy, prints the MCP endpoint, a fresh local token and client configuration, then runs until Ctrl-C
or SIGTERM, when it stops everything in order (no container, network, firewall rule or process left).

  --policy FILE     the policy (default: the bundled solo default, whose audit log goes in the data dir)
  --data-dir DIR    keys, CA, audit, sockets (default: $PORTCULLIS_DATA_DIR, else ./data)
  --mcp HOST:PORT   the MCP ingress listener (default: the policy's mcp.listen)
  --egress HOST:PORT the sandbox egress listener (default 0.0.0.0:15001, served to the sandbox pool only)
  --dns IP:PORT     resolver(s) Envoy's forward proxy uses (default: $PORTCULLIS_DNS_RESOLVERS, else the system's)
  --sub NAME        caller name in the printed token (default: your user name)
  --node-id ID      this Envoy's node id (default portcullis-envoy-0)
  --ads sotw|delta  the ADS flavour Envoy speaks (default sotw)`;

export interface UpReady {
  ready: true;
  endpoints: Record<string, string>;
  token?: { sub: string; token: string; expiresAt: string };
  clients?: Record<string, unknown>;
}

/** The sandbox address pools Docker hands networks out of (/etc/docker/daemon.json), else Portcullis' default. */
export function sandboxPools(daemonJson = '/etc/docker/daemon.json'): string[] {
  try {
    const cfg = JSON.parse(fs.readFileSync(daemonJson, 'utf8')) as { 'default-address-pools'?: Array<{ base?: unknown }> };
    const bases = (cfg['default-address-pools'] ?? []).map((p) => p.base).filter((b): b is string => typeof b === 'string' && /^[0-9.]+\/\d+$/.test(b));
    if (bases.length) return bases;
  } catch {
    /* no daemon.json: the default below is what scripts/prereqs.sh configures */
  }
  return ['198.18.0.0/15'];
}

/** `portcullis up`. Resolves with the exit code once stopped (or on a start failure). */
export async function runUp(argv: string[], io: CliIo, opts: { signal?: AbortSignal; env?: NodeJS.ProcessEnv } = {}): Promise<number> {
  const env = opts.env ?? process.env;
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        policy: { type: 'string' },
        'data-dir': { type: 'string' },
        xds: { type: 'string', default: '127.0.0.1:0' },
        egress: { type: 'string', default: '0.0.0.0:15001' },
        mcp: { type: 'string' },
        dns: { type: 'string', multiple: true },
        sub: { type: 'string' },
        ads: { type: 'string', default: 'sotw' },
        'node-id': { type: 'string', default: 'portcullis-envoy-0' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }).values;
  } catch (e) {
    io.stderr.write(`${(e as Error).message}\n\n${UP_USAGE}\n`);
    return EXIT.usage;
  }
  if (args.help) {
    io.stdout.write(`${UP_USAGE}\n`);
    return EXIT.ok;
  }
  if (args.ads !== 'sotw' && args.ads !== 'delta') {
    io.stderr.write(`--ads must be sotw or delta\n`);
    return EXIT.usage;
  }
  const egress = splitHostPort(args.egress!);
  if (!egress) {
    io.stderr.write(`--egress must be HOST:PORT\n`);
    return EXIT.usage;
  }
  const mcpListen = args.mcp === undefined ? undefined : splitHostPort(args.mcp);
  if (args.mcp !== undefined && !mcpListen) {
    io.stderr.write(`--mcp must be HOST:PORT\n`);
    return EXIT.usage;
  }
  const dns = args.dns?.length ? args.dns : (env.PORTCULLIS_DNS_RESOLVERS ?? '').split(/[\s,]+/).filter(Boolean);
  if (dns.some((d) => !splitHostPort(d))) {
    io.stderr.write(`--dns / PORTCULLIS_DNS_RESOLVERS must be IP:PORT\n`);
    return EXIT.usage;
  }
  const sub = args.sub ?? safeUserName();
  const progress = new Progress(io);
  const logger = createLogger({ level: env.PORTCULLIS_LOG_LEVEL ?? 'warn' });
  const bundled = args.policy === undefined;
  const policyFile = path.resolve(args.policy ?? DEFAULT_POLICY());
  const dataDir = path.resolve(args['data-dir'] ?? defaultDataDir(env));
  let cp: ControlPlane | undefined;
  let envoy: EnvoyProcess | undefined;
  let watcher: PolicyWatcher | undefined;
  let audit: AuditWriter | undefined;
  let minter: Minter | undefined;
  let operator: OperatorPlane | undefined;
  let supervisor: Supervisor | undefined;
  let gateway: McpGateway | undefined;
  const stopAll = async () => {
    // agent traffic first (Envoy), then the gateway, then every sandbox through its ordered teardown
    // (credential revoked, network dropped, scrubbed, killed, removed), then the planes; the audit
    // log last so it records all of it
    watcher?.stop();
    await envoy?.stop().catch(() => undefined);
    await gateway?.close().catch(() => undefined);
    await supervisor?.stop('portcullis_down').catch((e: unknown) => io.stderr.write(`  sandbox teardown: ${(e as Error).message}\n`));
    await supervisor?.releaseHostFirewall().catch(() => false);
    minter?.stop();
    await operator?.close().catch(() => undefined);
    await cp?.close().catch(() => undefined);
    await audit?.close().catch(() => undefined);
  };
  try {
    progress.step(`loading policy ${policyFile}`);
    // the bundled default policy's relative paths (its audit file) resolve in the data dir
    watcher = new PolicyWatcher({ file: policyFile, logger, ...(bundled ? { baseDir: dataDir } : {}) });
    const ir = await watcher.start();
    let current = ir;
    progress.done();

    progress.step(`opening the audit log ${ir.audit.file}`);
    audit = await AuditWriter.open({ dataDir: path.dirname(ir.audit.file), fileName: path.basename(ir.audit.file), logger });
    progress.done(audit.recovery ? `recovered (${JSON.stringify(audit.recovery)})` : 'ok');
    // one event bus: sandbox lifecycle, egress/ingress access logs, tool calls, config events → audit
    const events = new EventBus();
    audit.attach(events);

    progress.step('checking the listener ports are free');
    const mcpAt = mcpListen ?? { address: ir.mcp.listen.host, port: ir.mcp.listen.port };
    for (const [what, at] of [['MCP ingress', mcpAt], ['sandbox egress', egress]] as const) {
      if (!(await portFree(at.port, at.address))) throw new PortcullisError('port_in_use', `${what} port ${at.address}:${at.port} is in use`);
    }
    progress.done();

    progress.step('finding Envoy');
    const bin = await findEnvoy();
    progress.done(`${bin.version} at ${bin.path}`);

    progress.step(`opening the deployment CA and token key in ${dataDir}`);
    minter = await Minter.open({ dataDir, deploymentId: 'portcullis', policy: [], logger, events: undefined });
    const tokenKey = ir.mcp.auth.mode === 'local' ? (await loadOrCreateTokenKey(dataDir)).key : undefined;
    progress.done();

    const image = env.PORTCULLIS_SANDBOX_IMAGE ?? DEFAULT_SANDBOX_IMAGE;
    progress.step(`starting the sandbox supervisor (Docker + ${ir.deployment.runtime === 'gvisor' ? 'gVisor runsc' : ir.deployment.runtime}, image ${image})`);
    const pools = sandboxPools();
    supervisor = new Supervisor({
      config: {
        instanceId: 'up',
        trustProfile: ir.deployment.workloadTrustProfile,
        runtime: ir.deployment.runtime,
        image,
        sessions: { ...ir.sessions },
        egress: { port: egress.port },
        caCertPemPath: path.join(dataDir, 'ca', BUNDLE_FILE),
        stateDir: path.join(dataDir, 'sandbox'),
      },
      logger,
      events,
    });
    const sweep = await supervisor.start();
    const swept = sweep.orphans.containers.length + sweep.orphans.networks.length;
    progress.done(swept ? `ok (cleaned ${swept} leftovers of an earlier run)` : 'ok');

    progress.step('starting the control plane (xDS, SDS, ext_authz for MCP, access logs) and the MCP gateway');
    const sup = supervisor;
    // session credentials are the supervisor's: Envoy refuses a tunnel without a valid, unrevoked one,
    // with the supervisor's public keys (published again whenever they change)
    const sessions = new JwtSessions({ jwks: () => sup.jwks(), onKeysChange: (l) => sup.onKeysChange(l), issuer: SESSION_TOKEN_ISSUER });
    const originSecret = randomBytes(32).toString('base64url');
    cp = new ControlPlane({
      logger,
      events,
      nodeKey: args['node-id']!,
      translate: {
        egress: {
          listen: egress,
          sourcePrefixRanges: egress.address === '0.0.0.0' || egress.address === '::' ? pools : [],
          accessLogCluster: XDS_CLUSTER_NAME,
          bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
          sessionsRequired: true,
          maxTunnelSeconds: 3600,
          ...(dns.length ? { dnsResolvers: dns } : {}),
        },
        ingress: {
          gateway: { socketPath: path.join(dataDir, GATEWAY_SOCKET) },
          authzCluster: AUTHZ_CLUSTER,
          gatewayOriginSecret: originSecret,
          ...(tokenKey ? { localJwks: localJwks(tokenKey) } : {}),
          ...(mcpListen ? { listen: mcpListen } : {}),
        },
      },
      bump: { sessions, minter },
    });
    gateway = await McpGateway.start({
      sandbox: supervisor,
      policy: () => current,
      logger,
      events: cp.events,
      metrics: cp.metrics,
      originSecret,
      listen: { socketPath: path.join(dataDir, GATEWAY_SOCKET) },
      sessionIdleMs: ir.sessions.idleTimeoutSeconds * 1000,
    });
    const gw = gateway;
    const authz = new IngressAuthz({ policy: () => current, logger, events: cp.events, metrics: cp.metrics });
    authz.attach(cp.authz);
    authz.followAccessLogs(cp.events);
    const republish = (why: string) => {
      try {
        const s = cp!.apply(current);
        io.stderr.write(`• ${why}: publishing ${s.version}\n`);
      } catch (e) {
        io.stderr.write(`• ${why}: refused (the last good configuration stays live): ${(e as Error).message}\n`);
      }
    };
    watcher.on('credentials', () => republish('credential file changed'));
    minter.on('changed', () => republish('certificates re-minted'));
    minter.start();
    // The operator plane: its own 0600 unix socket in the data dir, never on an agent path.
    operator = await startOperatorPlane({
      dataDir,
      logger,
      events: cp.events,
      metrics: cp.metrics,
      audit,
      ir,
      controlPlane: cp,
      minter,
      supervisor,
      // a killed or revoked session is refused at the egress edge and at the MCP gateway, and its
      // sandbox loses its egress path at once (open tunnels included)
      revokers: [cp.edgeRevoker(), gateway.revoker(), supervisor],
      // kill-all also reaches MCP sessions that have no sandbox yet
      sessionSources: [() => gw.liveSessions()],
      envoyStats: () => (envoy ? envoy.admin.stats('grpc_access_log') : Promise.resolve({})),
    });
    watcher.on('update', (next) => {
      // the operator plane reads the SOAR admin key files: a bad one refuses the whole change
      void (async () => {
        try {
          await operator!.updatePolicy(next);
          supervisor?.setPolicy({ trustProfile: next.deployment.workloadTrustProfile, runtime: next.deployment.runtime, sessions: { ...next.sessions } });
        } catch (e) {
          io.stderr.write(`• policy change refused (the last good configuration stays live): ${(e as Error).message}\n`);
          for (const i of ((e as { issues?: Parameters<typeof formatIssue>[0][] }).issues ?? []).slice(0, 20)) io.stderr.write(`  ${formatIssue(i)}\n`);
          return;
        }
        current = next;
        republish('policy changed');
      })();
    });
    watcher.on('refused', (r) => {
      io.stderr.write(`• policy change refused (the last good configuration stays live):\n`);
      for (const i of r.issues.slice(0, 20)) io.stderr.write(`  ${formatIssue(i)}\n`);
    });
    const xdsAddress = await cp.listen(args.xds);
    const snap = cp.apply(ir, { immediate: true });
    progress.done(xdsAddress);

    progress.step(`starting Envoy (${args.ads === 'delta' ? 'Delta' : 'SotW'} ADS)`);
    envoy = await EnvoyProcess.start({
      binary: bin,
      bootstrap: {
        nodeId: args['node-id']!,
        xds: { port: cp.server.port },
        ads: args.ads as 'sotw' | 'delta',
        extraClusters: [grpcStaticCluster(AUTHZ_CLUSTER, { host: '127.0.0.1', port: cp.server.port })],
      },
      logger,
    });
    progress.done(`pid ${envoy.pid}, admin ${envoy.adminUrl}`);

    progress.step(`waiting for Envoy to apply ${snap.version}`);
    await envoy.waitConnected(15_000);
    for (const t of XDS_TYPE_URLS) {
      if ((snap.resources.get(t)?.size ?? 0) > 0 && (t.endsWith('Listener') || t.endsWith('Cluster') || t.endsWith('RouteConfiguration'))) {
        await envoy.waitForVersion(t, snap.version, 20_000);
      }
    }
    const rejected = rejectedUpdates(await envoy.admin.stats());
    if (Object.keys(rejected).length) throw new PortcullisError('envoy_nack', `Envoy rejected the configuration: ${JSON.stringify(rejected)}`);
    const mcpUrl = publicUrlOf(ir, { gateway: { socketPath: '' }, authzCluster: AUTHZ_CLUSTER, ...(mcpListen ? { listen: mcpListen } : {}) });
    await waitHttp(`${mcpUrl}/.well-known/oauth-protected-resource`, 15_000);
    progress.done();

    // as long as the policy lets a local token live (Envoy refuses longer ones: jwt_authn max_lifetime)
    const issued = tokenKey ? await issueToken(tokenKey, { sub, ttlSeconds: Math.min(current.sessions.tokenTtlSeconds, MAX_TOKEN_TTL_SECONDS) }) : undefined;
    const endpoint = `${mcpUrl}${MCP_PATH}`;
    const endpoints = {
      mcp: endpoint,
      egressProxy: `http://${args.egress}`,
      xds: xdsAddress,
      envoyAdmin: envoy.adminUrl,
      policy: policyFile,
      configVersion: snap.version,
      dataDir,
      auditLog: audit.path,
      operatorSocket: operator?.api.socketPath ?? '',
    };
    const clients = issued ? clientConfigs(endpoint, issued.token) : undefined;
    if (args.json) {
      const ready: UpReady = {
        ready: true,
        endpoints,
        ...(issued ? { token: { sub, token: issued.token, expiresAt: new Date(issued.claims.exp * 1000).toISOString() } } : {}),
        ...(clients ? { clients } : {}),
      };
      io.stdout.write(`${JSON.stringify(ready)}\n`);
    } else {
      io.stdout.write(readyText(endpoints, issued ? { sub, token: issued.token, exp: issued.claims.exp, dataDir } : undefined, clients, args.egress!, ir.mcp.auth.mode));
    }

    const stopped = await waitForStop(opts.signal, envoy);
    progress.step(stopped === 'envoy-exited' ? 'Envoy exited; stopping everything' : 'stopping Envoy, the gateway, every sandbox, the control plane');
    await stopAll();
    progress.done();
    return stopped === 'envoy-exited' ? EXIT.failure : EXIT.ok;
  } catch (e) {
    const { reason, fix } = explainFailure(e);
    progress.fail(reason, fix);
    await stopAll();
    return EXIT.failure;
  }
}

const AUTHZ_CLUSTER = 'portcullis_authz';
const GATEWAY_SOCKET = 'mcp-gateway.sock';
export const DEFAULT_SANDBOX_IMAGE = 'portcullis-sandbox:0.1.0';

function safeUserName(): string {
  try {
    const n = os.userInfo().username;
    if (/^[A-Za-z0-9._-]{1,64}$/.test(n)) return n;
  } catch {
    /* no passwd entry */
  }
  return 'local-user';
}

async function waitHttp(url: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (r.status === 200) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > until) throw new PortcullisError('envoy_timeout', `the MCP ingress did not answer at ${url}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Ready-to-paste configuration for common MCP clients (Streamable HTTP with a bearer token). */
export function clientConfigs(url: string, token: string): Record<string, unknown> {
  const auth = `Bearer ${token}`;
  return {
    // Claude Code, and any CLI agent that takes the same flags
    cli: `claude mcp add --transport http portcullis ${url} --header "Authorization: ${auth}"`,
    // VS Code (.vscode/mcp.json)
    vscode: { servers: { portcullis: { type: 'http', url, headers: { Authorization: auth } } } },
    // Cursor (~/.cursor/mcp.json) and other desktop clients that speak Streamable HTTP
    desktop: { mcpServers: { portcullis: { url, headers: { Authorization: auth } } } },
    // desktop clients that only launch stdio servers: the mcp-remote bridge
    stdioBridge: { mcpServers: { portcullis: { command: 'npx', args: ['-y', 'mcp-remote', url, '--header', `Authorization:${auth}`] } } },
  };
}

function readyText(
  e: Record<string, string>,
  tok: { sub: string; token: string; exp: number; dataDir: string } | undefined,
  clients: Record<string, unknown> | undefined,
  egress: string,
  authMode: string,
): string {
  const lines = [
    '',
    'Portcullis is up.',
    '',
    `  MCP endpoint:         ${e.mcp}`,
  ];
  if (tok) {
    const mins = Math.round((tok.exp * 1000 - Date.now()) / 60_000);
    lines.push(
      `  token (${tok.sub}, ${mins} min): ${tok.token}`,
      `                        another one: portcullis token issue --sub ${tok.sub} --ttl ${Math.max(1, mins)}m --data-dir ${tok.dataDir}`,
    );
  } else {
    lines.push(`  tokens:               from your IdP (mcp.auth.mode: ${authMode})`);
  }
  lines.push(
    `  sandbox egress:       ${egress} (listener ${EGRESS.listener}; sandboxes only, with their session credential)`,
    `  policy:               ${e.policy} (${e.configVersion}; edits apply live)`,
    `  audit log:            ${e.auditLog}  (portcullis audit verify ${e.auditLog})`,
    `  operator API:         ${e.operatorSocket}  (portcullis sessions list --socket ${e.operatorSocket})`,
    `  Envoy admin:          ${e.envoyAdmin}  (127.0.0.1 only)`,
    `  xDS (control plane):  ${e.xds}`,
  );
  if (clients) {
    lines.push(
      '',
      'Connect an MCP client (Streamable HTTP, the token as a bearer header):',
      `  CLI agent (Claude Code):      ${String(clients.cli)}`,
      `  VS Code (.vscode/mcp.json):   ${JSON.stringify(clients.vscode)}`,
      `  Cursor / desktop (mcp.json):  ${JSON.stringify(clients.desktop)}`,
      `  stdio-only desktop clients:   ${JSON.stringify(clients.stdioBridge)}`,
    );
  }
  lines.push('', 'Press Ctrl-C to stop (every sandbox, network and firewall rule is removed).', '');
  return lines.join('\n');
}


function waitForStop(signal: AbortSignal | undefined, envoy: EnvoyProcess): Promise<'signal' | 'envoy-exited'> {
  return new Promise((resolve) => {
    const onSig = () => resolve('signal');
    process.once('SIGINT', onSig);
    process.once('SIGTERM', onSig);
    signal?.addEventListener('abort', onSig, { once: true });
    void envoy.exited.then(() => resolve('envoy-exited'));
  });
}

function explainFailure(e: unknown): { reason: string; fix?: string } {
  if (e instanceof PortcullisError) {
    switch (e.code) {
      case 'envoy_not_found':
      case 'envoy_wrong_version':
        return { reason: e.message, fix: INSTALL_HINT };
      case 'policy_invalid':
      case 'policy_too_large':
      case 'policy_unreadable':
        return { reason: e.message, fix: 'portcullis policy validate FILE shows every error with its line' };
      case 'runtime_mismatch':
        return { reason: e.message, fix: `${PREREQS}   (registers runsc with Docker), then portcullis doctor` };
      case 'sandbox_failed':
        if (/image .* not found/.test(e.message)) return { reason: e.message, fix: SANDBOX_IMAGE_HINT };
        if (/not reachable/.test(e.message)) return { reason: e.message, fix: `${PREREQS}   (installs docker.io and starts dockerd)` };
        return { reason: e.message, fix: 'portcullis doctor' };
      case 'port_in_use':
        return { reason: e.message, fix: 'stop what listens there, or pass another --mcp / --egress port' };
      default:
        return { reason: `${e.code}: ${e.message}` };
    }
  }
  return { reason: (e as Error)?.message ?? String(e) };
}

function splitHostPort(s: string): { address: string; port: number } | undefined {
  const i = s.lastIndexOf(':');
  if (i <= 0) return undefined;
  const port = Number(s.slice(i + 1));
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { address: s.slice(0, i).replace(/^\[|\]$/g, ''), port };
}
