import path from 'node:path';
import { parseArgs } from 'node:util';
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
import { EXIT, Progress, type CliIo } from './io.js';

export const UP_USAGE = `Usage: portcullis up [--policy FILE] [--xds HOST:PORT] [--egress HOST:PORT] [--ads sotw|delta] [--json]

Starts the control plane and Envoy with the policy (default: the solo default policy), waits until
Envoy has applied it, prints the endpoints, and runs until Ctrl-C or SIGTERM, then stops everything.`;

export interface UpHandle {
  endpoints: Record<string, string>;
  stop(): Promise<void>;
}

/** `portcullis up`. Resolves with the exit code once stopped (or on a start failure). */
export async function runUp(argv: string[], io: CliIo, opts: { signal?: AbortSignal } = {}): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        policy: { type: 'string' },
        xds: { type: 'string', default: '127.0.0.1:0' },
        egress: { type: 'string', default: '127.0.0.1:15001' },
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
  const progress = new Progress(io);
  const logger = createLogger({ level: process.env.PORTCULLIS_LOG_LEVEL ?? 'warn' });
  const policyFile = path.resolve(args.policy ?? DEFAULT_POLICY());
  let cp: ControlPlane | undefined;
  let envoy: EnvoyProcess | undefined;
  let watcher: PolicyWatcher | undefined;
  let audit: AuditWriter | undefined;
  let minter: Minter | undefined;
  let operator: OperatorPlane | undefined;
  const stopAll = async () => {
    watcher?.stop();
    minter?.stop();
    await operator?.close().catch(() => undefined);
    await envoy?.stop().catch(() => undefined);
    await cp?.close().catch(() => undefined);
    await audit?.close().catch(() => undefined);
  };
  try {
    progress.step(`loading policy ${policyFile}`);
    watcher = new PolicyWatcher({ file: policyFile, logger });
    const ir = await watcher.start();
    progress.done();

    progress.step(`opening the audit log ${ir.audit.file}`);
    audit = await AuditWriter.open({ dataDir: path.dirname(ir.audit.file), fileName: path.basename(ir.audit.file), logger });
    progress.done(audit.recovery ? `recovered (${JSON.stringify(audit.recovery)})` : 'ok');

    progress.step('finding Envoy');
    const bin = await findEnvoy();
    progress.done(`${bin.version} at ${bin.path}`);

    progress.step('starting the control plane (xDS)');
    const dataDir = path.dirname(ir.audit.file);
    minter = await Minter.open({ dataDir, deploymentId: 'portcullis', policy: [], logger, events: undefined });
    // Session keys come from the sandbox supervisor; until one runs, no tunnel has a session.
    const sessions = new JwtSessions({ jwks: () => ({ keys: [] }) });
    cp = new ControlPlane({
      logger,
      nodeKey: args['node-id']!,
      translate: { egress: { listen: egress, accessLogCluster: XDS_CLUSTER_NAME, bump: { controlPlaneCluster: XDS_CLUSTER_NAME } } },
      bump: { sessions, minter },
    });
    audit.attach(cp.events);
    const republish = (why: string) => {
      const current = watcher!.current();
      if (!current) return;
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
      revokers: [sessions],
      envoyStats: () => (envoy ? envoy.admin.stats('grpc_access_log') : Promise.resolve({})),
    });
    watcher.on('update', (next) => operator?.updatePolicy(next));
    watcher.on('update', (next) => {
      try {
        const s = cp!.apply(next);
        io.stderr.write(`• policy changed: publishing ${s.version}\n`);
      } catch (e) {
        io.stderr.write(`• policy change refused (the last good configuration stays live): ${(e as Error).message}\n`);
      }
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
      bootstrap: { nodeId: args['node-id']!, xds: { port: cp.server.port }, ads: args.ads as 'sotw' | 'delta' },
      logger,
    });
    progress.done(`pid ${envoy.pid}, admin ${envoy.adminUrl}`);

    progress.step(`waiting for Envoy to apply ${snap.version}`);
    await envoy.waitConnected(15_000);
    for (const t of XDS_TYPE_URLS) {
      if ((snap.resources.get(t)?.size ?? 0) > 0 && (t.endsWith('Listener') || t.endsWith('Cluster'))) {
        await envoy.waitForVersion(t, snap.version, 20_000);
      }
    }
    const rejected = rejectedUpdates(await envoy.admin.stats());
    if (Object.keys(rejected).length) throw new PortcullisError('envoy_nack', `Envoy rejected the configuration: ${JSON.stringify(rejected)}`);
    progress.done();

    const endpoints = {
      xds: xdsAddress,
      envoyAdmin: envoy.adminUrl,
      egressProxy: `http://${args.egress}`,
      policy: policyFile,
      configVersion: snap.version,
      auditLog: audit.path,
      operatorSocket: operator?.api.socketPath ?? '',
    };
    if (args.json) io.stdout.write(`${JSON.stringify({ ready: true, endpoints })}\n`);
    else {
      io.stdout.write(`\nPortcullis is up.\n`);
      io.stdout.write(`  egress proxy (listener ${EGRESS.listener}): ${endpoints.egressProxy}\n`);
      io.stdout.write(`  xDS (control plane):  ${endpoints.xds}\n`);
      io.stdout.write(`  Envoy admin:          ${endpoints.envoyAdmin}  (127.0.0.1 only)\n`);
      io.stdout.write(`  policy:               ${endpoints.policy} (${endpoints.configVersion})\n`);
      io.stdout.write(`  audit log:            ${endpoints.auditLog}  (portcullis audit verify ${endpoints.auditLog})\n`);
      io.stdout.write(`  operator API:         ${endpoints.operatorSocket}  (portcullis sessions list --socket ${endpoints.operatorSocket})\n`);
      io.stdout.write(`\nPress Ctrl-C to stop.\n`);
    }

    const stopped = await waitForStop(opts.signal, envoy);
    progress.step(stopped === 'envoy-exited' ? 'Envoy exited; stopping' : 'stopping');
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
