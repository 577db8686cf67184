/**
 * Launchers for the test servers that run as their own processes, inside a test network namespace
 * or in this one: the echo upstream (./upstream-server.ts) and, through `startJsonLinesProcess`, the
 * DNS server (./dns-server.ts). Each prints one JSON object per line on stdout; the handle keeps them
 * as `events` and lets a test wait for one.
 *
 *   const net = await createTestNet({ hosts: ['up1'] });
 *   const ca = createTestCa();
 *   const up = await startUpstream({ netns: net.host('up1').netns, port: 443,
 *     tls: ca.issueServerCert({ dnsNames: ['api.example.test'] }) });
 *   // … drive traffic to 198.51.100.10:443 …
 *   const req = await up.waitFor((e) => e.event === 'request');
 *   await up.stop();
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HARNESS_DIR = path.dirname(fileURLToPath(import.meta.url));
export const PROJECT_ROOT = path.resolve(HARNESS_DIR, '..', '..');

export interface JsonLineEvent {
  event: string;
  ts?: number;
  [k: string]: unknown;
}

export interface JsonLinesProcess {
  readonly child: ChildProcess;
  /** Every JSON line printed so far, in order. */
  readonly events: readonly JsonLineEvent[];
  /** stderr so far (also: non-JSON stdout lines). */
  stderr(): string;
  /** Resolves with the first event (already seen or future) matching `pred`. */
  waitFor(pred: (e: JsonLineEvent) => boolean, timeoutMs?: number): Promise<JsonLineEvent>;
  /** Writes one JSON line to the process's stdin. */
  send(obj: unknown): void;
  /** SIGTERM, then SIGKILL after 3 s; resolves when the process is gone. Idempotent. */
  stop(): Promise<void>;
}

export interface JsonLinesProcessOptions {
  /** Network namespace to run in (`ip netns exec`); omitted: this process's namespace. */
  netns?: string;
  /** TypeScript entry point, relative to the project root or absolute. */
  script: string;
  args: readonly string[];
  /** Resolve once this event is printed (default 'listening'). */
  readyEvent?: string;
  startTimeoutMs?: number;
  label?: string;
}

/** Starts `node --import tsx <script> <args>` (in `netns` when given) and waits for its ready event. */
export async function startJsonLinesProcess(opts: JsonLinesProcessOptions): Promise<JsonLinesProcess> {
  const script = path.resolve(PROJECT_ROOT, opts.script);
  const nodeArgs = ['--import', 'tsx', script, ...opts.args];
  const child = opts.netns
    ? spawn('ip', ['netns', 'exec', opts.netns, process.execPath, ...nodeArgs], { cwd: PROJECT_ROOT, stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, nodeArgs, { cwd: PROJECT_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  const label = opts.label ?? path.basename(script);
  const events: JsonLineEvent[] = [];
  const waiters = new Set<{ pred: (e: JsonLineEvent) => boolean; resolve: (e: JsonLineEvent) => void }>();
  let stderr = '';
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitWaiters: Array<() => void> = [];

  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line === '') continue;
      let ev: JsonLineEvent;
      try {
        ev = JSON.parse(line) as JsonLineEvent;
      } catch {
        stderr += `[stdout] ${line}\n`;
        continue;
      }
      events.push(ev);
      for (const w of [...waiters]) {
        if (w.pred(ev)) {
          waiters.delete(w);
          w.resolve(ev);
        }
      }
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.on('exit', (code, signal) => {
    exited = { code, signal };
    for (const f of exitWaiters.splice(0)) f();
  });
  child.stdin?.on('error', () => {
    /* the process may exit before reading */
  });

  const waitFor = (pred: (e: JsonLineEvent) => boolean, timeoutMs = 10_000): Promise<JsonLineEvent> => {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (e: JsonLineEvent) => {
          clearTimeout(timer);
          const i = exitWaiters.indexOf(onExit);
          if (i >= 0) exitWaiters.splice(i, 1);
          resolve(e);
        },
      };
      const onExit = (): void => {
        waiters.delete(w);
        clearTimeout(timer);
        reject(new Error(`${label} exited (${exited?.code ?? exited?.signal}) before the awaited event\n${stderr}`));
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`${label}: no matching event within ${timeoutMs} ms\n${stderr}`));
      }, timeoutMs);
      if (exited) return onExit();
      exitWaiters.push(onExit);
      waiters.add(w);
    });
  };

  const stop = async (): Promise<void> => {
    if (exited) return;
    const gone = new Promise<void>((r) => exitWaiters.push(r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(t);
  };

  const handle: JsonLinesProcess = {
    child,
    events,
    stderr: () => stderr,
    waitFor,
    send: (obj) => child.stdin?.write(JSON.stringify(obj) + '\n'),
    stop,
  };
  try {
    await waitFor((e) => e.event === (opts.readyEvent ?? 'listening'), opts.startTimeoutMs ?? 20_000);
  } catch (e) {
    await stop();
    throw e;
  }
  return handle;
}

export interface UpstreamTls {
  certPem: string;
  keyPem: string;
  /** Request and verify client certificates against this CA. */
  clientCaPem?: string;
}

export interface UpstreamOptions {
  netns?: string;
  /** 0 = any free port (see `port` on the handle). */
  port: number;
  /** Listen address (default 0.0.0.0; '::' for IPv4 and IPv6). */
  host?: string;
  /** HTTPS with this certificate; omitted: plain HTTP. */
  tls?: UpstreamTls;
  /** Offer h2 and http/1.1 by ALPN (plain: h2c prior knowledge is not accepted, HTTP/1.1 only). */
  h2?: boolean;
  name?: string;
  /**
   * Emulated network distance: every byte in and out of an accepted connection is delayed by this
   * many ms (per direction, in order; RTT = 2 × this), see `--one-way-delay-ms` in ./upstream-server.ts.
   * The TCP handshake is not delayed. Default 0: no delay line.
   */
  oneWayDelayMs?: number;
  startTimeoutMs?: number;
}

export interface UpstreamRequest extends JsonLineEvent {
  event: 'request';
  method: string;
  url: string;
  headers: Record<string, string | string[]>;
  sni: string | null;
  tlsVersion: string | null;
  alpn: string | null;
  body: string;
  bodyBytes: number;
}

export interface Upstream extends JsonLinesProcess {
  readonly port: number;
  requests(): UpstreamRequest[];
  /** The `connection` events (one per accepted TCP connection). */
  connections(): JsonLineEvent[];
}

export async function startUpstream(opts: UpstreamOptions): Promise<Upstream> {
  const args = ['--port', String(opts.port), '--host', opts.host ?? '0.0.0.0', '--name', opts.name ?? 'upstream'];
  let dir: string | undefined;
  if (opts.tls) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-upstream-'));
    const w = (f: string, s: string): string => {
      const p = path.join(dir as string, f);
      fs.writeFileSync(p, s, { mode: 0o600 });
      return p;
    };
    args.push('--cert', w('cert.pem', opts.tls.certPem), '--key', w('key.pem', opts.tls.keyPem));
    if (opts.tls.clientCaPem) args.push('--client-ca', w('client-ca.pem', opts.tls.clientCaPem));
  }
  if (opts.h2) args.push('--h2');
  if (opts.oneWayDelayMs) args.push('--one-way-delay-ms', String(opts.oneWayDelayMs));
  const cleanupDir = (): void => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  };
  let p: JsonLinesProcess;
  try {
    p = await startJsonLinesProcess({
      ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
      script: 'test/harness/upstream-server.ts',
      args,
      label: `upstream ${opts.name ?? ''}`.trim(),
      ...(opts.startTimeoutMs !== undefined ? { startTimeoutMs: opts.startTimeoutMs } : {}),
    });
  } catch (e) {
    cleanupDir();
    throw e;
  }
  const listening = p.events.find((e) => e.event === 'listening');
  return {
    ...p,
    port: Number(listening?.port),
    requests: () => p.events.filter((e): e is UpstreamRequest => e.event === 'request'),
    connections: () => p.events.filter((e) => e.event === 'connection'),
    stop: async () => {
      await p.stop();
      cleanupDir();
    },
  };
}
