import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EnvoyHarnessError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { describeVersions, EnvoyAdmin, isVersionApplied, versionsOf, type TypeVersions, type VersionMatch } from './admin.js';
import { XDS } from './api/type-urls.js';
import { findEnvoy, type EnvoyBinary } from './binary.js';
import { buildBootstrap, type BootstrapOptions, type EnvoyBootstrap } from './bootstrap.js';

/*
 * Envoy's start, as measured with 1.40.0 and this bootstrap:
 * - the admin answers ~0.1 s after spawn (start() resolves then);
 * - `/ready` answers 503 with the server state as body: PRE_INITIALIZING until CDS's first response
 *   (or its initial_fetch_timeout, 15 s by default), INITIALIZING until LDS's first response (or its
 *   timeout), then 200 LIVE. With no control plane, LIVE comes after both timeouts (~30 s by default);
 *   `connected_state` stays 0 throughout;
 * - listeners, static ones included, accept connections only once LIVE (workers start after init);
 * - the `server.state` stat is refreshed at stats flush (every 5 s) and reads 0 (= LIVE) before the
 *   first flush: use `/ready` or `/server_info`, not that stat.
 */

export const ENVOY_LOG_LEVELS = ['trace', 'debug', 'info', 'warning', 'warn', 'error', 'critical', 'off'] as const;
export type EnvoyLogLevel = (typeof ENVOY_LOG_LEVELS)[number];

export interface EnvoyStartOptions {
  /** BootstrapOptions for buildBootstrap, or a complete bootstrap (e.g. one buildBootstrap returned, then edited). */
  bootstrap: BootstrapOptions | EnvoyBootstrap;
  /** The binary to run. Default: findEnvoy() (memoized per ENVOY_BIN/PATH/cwd). */
  binary?: string | EnvoyBinary;
  /** Default: PORTCULLIS_ENVOY_LOG_LEVEL, else `warn`. */
  logLevel?: EnvoyLogLevel;
  /** `--component-log-level`, e.g. `config:debug,upstream:info`. */
  componentLogLevel?: string;
  /** `--concurrency` (worker threads). Default: Envoy's (one per hardware thread). */
  concurrency?: number;
  /** Spawn → admin answering, default 30 s. */
  startTimeoutMs?: number;
  /** SIGTERM → SIGKILL in stop(), default 5 s. */
  stopGraceMs?: number;
  /** Keep the working directory (bootstrap, log) after stop(). Default: PORTCULLIS_KEEP_ENVOY_DIR=1. */
  keepDir?: boolean;
  /** Parent of the working directory, default os.tmpdir(). */
  tmpRoot?: string;
  /** Appended to the command line. */
  extraArgs?: readonly string[];
  logger?: Logger;
}

export interface EnvoyExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const DEFAULT_POLL_MS = 100;

/** Processes started and not yet stopped; stopAllEnvoys() and the exit hook use this. */
const live = new Set<EnvoyProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test run ends without stopping its Envoys: leave no process and no directory.
  process.once('exit', () => {
    for (const e of live) e.killSync();
  });
}

/** Stops every Envoy this process started and has not stopped yet. For `afterAll`/`afterEach`. */
export async function stopAllEnvoys(): Promise<void> {
  await Promise.allSettled([...live].map((e) => e.stop()));
}

/** Envoys started and not yet stopped. */
export function runningEnvoys(): readonly EnvoyProcess[] {
  return [...live];
}

/** A node id unique to this process and call: `<prefix>-<pid>-<random>`. */
export function uniqueNodeId(prefix = 'envoy'): string {
  return `${prefix}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
}

let binaryMemo: { key: string; promise: Promise<EnvoyBinary> } | undefined;

function defaultBinary(logger: Logger | undefined): Promise<EnvoyBinary> {
  const key = `${process.env.ENVOY_BIN ?? ''}\0${process.env.PATH ?? ''}\0${process.cwd()}`;
  if (binaryMemo?.key !== key) {
    const promise = findEnvoy({ logger });
    binaryMemo = { key, promise };
    promise.catch(() => {
      if (binaryMemo?.promise === promise) binaryMemo = undefined;
    });
  }
  return binaryMemo.promise;
}

/** The command line Envoy is started with. */
export function envoyArgs(o: {
  configPath: string;
  adminAddressPath: string;
  logLevel: EnvoyLogLevel;
  componentLogLevel?: string;
  concurrency?: number;
  extraArgs?: readonly string[];
}): string[] {
  const args = [
    '--config-path', o.configPath,
    '--admin-address-path', o.adminAddressPath,
    '--log-level', o.logLevel,
    // No hot restart: no shared memory in /dev/shm and no abstract domain sockets, so any number of
    // Envoys run side by side and a SIGKILLed one leaves nothing behind. --base-id is then unused.
    '--disable-hot-restart',
    '--drain-time-s', '1',
    '--parent-shutdown-time-s', '2',
  ];
  if (o.componentLogLevel) args.push('--component-log-level', o.componentLogLevel);
  if (o.concurrency !== undefined) args.push('--concurrency', String(o.concurrency));
  args.push(...(o.extraArgs ?? []));
  return args;
}

export function resolveLogLevel(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): EnvoyLogLevel {
  const level = explicit ?? env.PORTCULLIS_ENVOY_LOG_LEVEL ?? 'warn';
  if (!(ENVOY_LOG_LEVELS as readonly string[]).includes(level)) {
    throw new EnvoyHarnessError('usage', `Envoy log level must be one of ${ENVOY_LOG_LEVELS.join(', ')}; got "${level}"`);
  }
  return level as EnvoyLogLevel;
}

/** The last `n` lines of a file (reads at most the last 256 KiB). */
export function tailFile(file: string, n: number): string {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return '';
  }
  try {
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, 256 * 1024);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n');
    if (lines.at(-1) === '') lines.pop();
    if (len < size) lines.shift(); // probably a partial line
    return lines.slice(-n).join('\n');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A real Envoy, started from a bootstrap written to its own temp directory, admin on an ephemeral
 * 127.0.0.1 port. `start()` resolves once the admin answers (not once Envoy is LIVE: without a
 * control plane Envoy stays PRE_INITIALIZING until CDS's initial fetch times out; see waitReady()).
 */
export class EnvoyProcess {
  readonly dir: string;
  readonly configPath: string;
  readonly logPath: string;
  readonly nodeId: string;
  readonly binary: string;
  readonly args: readonly string[];
  readonly bootstrap: EnvoyBootstrap;
  /** Resolves once the process has exited (never rejects). */
  readonly exited: Promise<EnvoyExit>;
  /** Spawn → admin answering, in ms. */
  startupMs = 0;

  private adminClient: EnvoyAdmin | undefined;
  private exitInfo: EnvoyExit | undefined;
  private stopping: Promise<EnvoyExit> | undefined;
  private readonly child: ChildProcess;
  private readonly keepDir: boolean;
  private readonly stopGraceMs: number;
  private readonly logger: Logger | undefined;

  private constructor(init: {
    dir: string;
    configPath: string;
    logPath: string;
    bootstrap: EnvoyBootstrap;
    binary: string;
    args: string[];
    child: ChildProcess;
    keepDir: boolean;
    stopGraceMs: number;
    logger: Logger | undefined;
  }) {
    this.dir = init.dir;
    this.configPath = init.configPath;
    this.logPath = init.logPath;
    this.bootstrap = init.bootstrap;
    this.nodeId = init.bootstrap.node.id;
    this.binary = init.binary;
    this.args = init.args;
    this.child = init.child;
    this.keepDir = init.keepDir;
    this.stopGraceMs = init.stopGraceMs;
    this.logger = init.logger;
    this.exited = new Promise<EnvoyExit>((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void => {
        if (this.exitInfo) return;
        this.exitInfo = { code, signal };
        live.delete(this);
        this.logger?.debug({ pid: this.child.pid, code, signal }, 'envoy exited');
        resolve(this.exitInfo);
      };
      init.child.once('exit', done);
      // A spawn failure (ENOENT, EACCES) emits 'error' and no 'exit'.
      init.child.once('error', () => {
        if (init.child.pid === undefined) done(null, null);
      });
    });
  }

  static async start(opts: EnvoyStartOptions): Promise<EnvoyProcess> {
    const logger = opts.logger?.child({ component: 'envoy' });
    const bootstrap = isBootstrap(opts.bootstrap) ? opts.bootstrap : buildBootstrap(opts.bootstrap);
    const logLevel = resolveLogLevel(opts.logLevel);
    const binary =
      typeof opts.binary === 'string' ? opts.binary : (opts.binary ?? (await defaultBinary(logger))).path;
    const startTimeoutMs = opts.startTimeoutMs ?? 30_000;

    const dir = fs.mkdtempSync(path.join(opts.tmpRoot ?? os.tmpdir(), 'portcullis-envoy-'));
    const configPath = path.join(dir, 'bootstrap.json');
    const logPath = path.join(dir, 'envoy.log');
    const adminAddressPath = path.join(dir, 'admin-address');
    fs.writeFileSync(configPath, `${JSON.stringify(bootstrap, null, 2)}\n`);
    const args = envoyArgs({
      configPath,
      adminAddressPath,
      logLevel,
      componentLogLevel: opts.componentLogLevel,
      concurrency: opts.concurrency,
      extraArgs: opts.extraArgs,
    });

    const logFd = fs.openSync(logPath, 'a');
    const t0 = performance.now();
    let child: ChildProcess;
    try {
      child = spawn(binary, args, { cwd: dir, stdio: ['ignore', logFd, logFd], env: process.env });
    } catch (e) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new EnvoyHarnessError('envoy_start_failed', `could not spawn Envoy (${binary}): ${(e as Error).message}`, { cause: e });
    } finally {
      fs.closeSync(logFd);
    }
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));

    const envoy = new EnvoyProcess({
      dir,
      configPath,
      logPath,
      bootstrap,
      binary,
      args,
      child,
      keepDir: opts.keepDir ?? process.env.PORTCULLIS_KEEP_ENVOY_DIR === '1',
      stopGraceMs: opts.stopGraceMs ?? 5_000,
      logger,
    });
    live.add(envoy);
    installExitHook();
    logger?.debug({ pid: child.pid, binary, args, nodeId: envoy.nodeId }, 'envoy spawned');

    try {
      const failed = Promise.race([
        spawnError.then((e) => `could not be spawned: ${e.message}`),
        envoy.exited.then((x) => `exited (${formatExit(x)}) before its admin endpoint answered`),
      ]);
      const addr = await envoy.untilOr(failed, startTimeoutMs, 'its admin endpoint to answer', async () => {
        const a = readAdminAddress(adminAddressPath);
        if (a === undefined) return undefined;
        const admin = new EnvoyAdmin(`http://${a}/`);
        try {
          await admin.request('GET', '/ready');
        } catch {
          return undefined;
        }
        return a;
      }, 20);
      envoy.adminClient = new EnvoyAdmin(`http://${addr}/`);
      envoy.startupMs = Math.round(performance.now() - t0);
      logger?.info({ pid: child.pid, admin: envoy.adminUrl, nodeId: envoy.nodeId, startupMs: envoy.startupMs }, 'envoy started');
      return envoy;
    } catch (e) {
      await envoy.stop().catch(() => undefined);
      if (e instanceof EnvoyHarnessError) {
        throw new EnvoyHarnessError(e.code === 'envoy_timeout' ? 'envoy_timeout' : 'envoy_start_failed', e.message, {
          details: { ...e.details, binary, args },
        });
      }
      throw e;
    }
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** `http://127.0.0.1:<port>` */
  get adminUrl(): string {
    return this.admin.baseUrl;
  }

  get adminPort(): number {
    return Number(new URL(this.admin.baseUrl).port);
  }

  get admin(): EnvoyAdmin {
    if (!this.adminClient) throw new EnvoyHarnessError('internal', 'Envoy admin address not known yet');
    return this.adminClient;
  }

  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  logTail(n = 40): string {
    return tailFile(this.logPath, n);
  }

  /**
   * Until `/ready` answers 200 (server state LIVE). Without a control plane that takes two initial
   * fetch timeouts (CDS, then LDS; 15 s each by default, see BootstrapOptions.initialFetchTimeoutMs).
   */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    let last = '';
    await this.until(timeoutMs, () => `/ready to answer 200 (last: ${last || 'no answer'})`, async () => {
      const r = await this.admin.ready().catch(() => undefined);
      if (r) last = r.state;
      return r?.ready ? true : undefined;
    });
  }

  /** Until `control_plane.connected_state` is 1 (the ADS stream to our control plane is up). */
  async waitConnected(timeoutMs = 15_000): Promise<void> {
    await this.until(timeoutMs, 'control_plane.connected_state to be 1', async () =>
      (await this.admin.stat('control_plane.connected_state').catch(() => undefined)) === 1 ? true : undefined,
    );
  }

  /** Until `control_plane.connected_state` is 0 (e.g. after the control plane went away). */
  async waitDisconnected(timeoutMs = 15_000): Promise<void> {
    await this.until(timeoutMs, 'control_plane.connected_state to be 0', async () =>
      (await this.admin.stat('control_plane.connected_state').catch(() => undefined)) === 0 ? true : undefined,
    );
  }

  /** The versions Envoy currently reports for one xDS type (config dump, plus EDS text readouts). */
  async versions(typeUrl: string): Promise<TypeVersions> {
    const eds = typeUrl === XDS.endpoint;
    const dump = await this.admin.configDump(undefined, { includeEds: eds });
    const readouts = eds ? await this.admin.textReadouts('\\.version_text$') : {};
    return versionsOf(typeUrl, dump, readouts);
  }

  /**
   * Until Envoy reports `version` applied for `typeUrl` (an XDS.* type URL); see isVersionApplied.
   * The timeout error names the versions Envoy does report and any per-resource error.
   */
  async waitForVersion(typeUrl: string, version: string, timeoutMs = 15_000, match: VersionMatch = {}): Promise<TypeVersions> {
    versionsOf(typeUrl, { configs: [] }); // reject an unknown type URL at once
    let last: TypeVersions | undefined;
    return this.until(
      timeoutMs,
      () => `${typeUrl} version "${version}"${match.names ? ` on ${match.names.join(', ')}` : ''} (Envoy reports: ${last ? describeVersions(last) : 'nothing yet'})`,
      async () => {
        const tv = await this.versions(typeUrl).catch(() => undefined);
        if (tv) last = tv;
        return tv && isVersionApplied(tv, version, match) ? tv : undefined;
      },
    );
  }

  /**
   * SIGTERM, then SIGKILL after the grace period; waits for the exit, then removes the working
   * directory (unless keepDir). Idempotent; safe after kill() or a crash.
   */
  stop(): Promise<EnvoyExit> {
    this.stopping ??= (async () => {
      if (!this.exitInfo) {
        this.signal('SIGTERM');
        const timer = setTimeout(() => this.signal('SIGKILL'), this.stopGraceMs);
        try {
          await this.exited;
        } finally {
          clearTimeout(timer);
        }
      }
      const exit = await this.exited;
      if (!this.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
      this.logger?.debug({ pid: this.pid, ...exit, keptDir: this.keepDir ? this.dir : undefined }, 'envoy stopped');
      return exit;
    })();
    return this.stopping;
  }

  /** SIGKILL and wait for the exit (crash tests). Keeps the directory until stop(). */
  async kill(): Promise<EnvoyExit> {
    this.signal('SIGKILL');
    return this.exited;
  }

  /** Synchronous SIGKILL and directory removal (unless keepDir), for the process exit hook. */
  killSync(): void {
    this.signal('SIGKILL');
    if (!this.keepDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private signal(sig: NodeJS.Signals): void {
    if (this.exitInfo || this.child.pid === undefined) return;
    try {
      this.child.kill(sig);
    } catch {
      // already gone
    }
  }

  private async until<T>(timeoutMs: number, what: string | (() => string), probe: () => Promise<T | undefined>): Promise<T> {
    const died = this.exited.then((x) => `exited (${formatExit(x)})`);
    return this.untilOr(died, timeoutMs, what, probe);
  }

  /** Polls `probe` until it returns a value; fails on `failed`, or after `timeoutMs` with the log tail. */
  private async untilOr<T>(
    failed: Promise<string>,
    timeoutMs: number,
    what: string | (() => string),
    probe: () => Promise<T | undefined>,
    intervalMs = DEFAULT_POLL_MS,
  ): Promise<T> {
    let failure: string | undefined;
    void failed.then((f) => {
      failure = f;
    });
    const describe = (): string => (typeof what === 'string' ? what : what());
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (failure === undefined) {
        const v = await probe();
        if (v !== undefined) return v;
      }
      // Let a pending exit/error event land before deciding.
      await new Promise<void>((r) => setImmediate(r));
      if (failure !== undefined) {
        throw new EnvoyHarnessError(
          'envoy_start_failed',
          `Envoy (pid ${this.pid}) ${failure} while waiting for ${describe()}.${this.tailForError()}`,
          { details: { logPath: this.logPath, nodeId: this.nodeId } },
        );
      }
      if (performance.now() >= deadline) {
        throw new EnvoyHarnessError(
          'envoy_timeout',
          `Envoy (pid ${this.pid}) timed out after ${timeoutMs} ms waiting for ${describe()}.${this.tailForError()}`,
          { details: { logPath: this.logPath, nodeId: this.nodeId } },
        );
      }
      await Promise.race([sleep(intervalMs), failed]);
    }
  }

  private tailForError(): string {
    const tail = this.logTail(30);
    return tail ? `\n--- Envoy log (last lines of ${this.logPath}) ---\n${tail}\n---` : ` (Envoy wrote no log to ${this.logPath})`;
  }
}

function isBootstrap(b: BootstrapOptions | EnvoyBootstrap): b is EnvoyBootstrap {
  return typeof (b as EnvoyBootstrap).node === 'object' && (b as EnvoyBootstrap).node !== null;
}

function readAdminAddress(file: string): string | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
  const m = /^(127\.0\.0\.1):(\d{1,5})$/.exec(text);
  if (m) return `${m[1]}:${m[2]}`;
  if (text !== '' && /:\d+$/.test(text)) {
    throw new EnvoyHarnessError('envoy_start_failed', `Envoy's admin is bound to ${text}, not 127.0.0.1`);
  }
  return undefined;
}

function formatExit(x: EnvoyExit): string {
  return x.signal ? `signal ${x.signal}` : `exit code ${x.code}`;
}
