import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PortcullisEvent, EventSink } from '../common/events.js';

/** Helpers for the sds-minter tests (not part of the package API). */

export function tempDir(prefix = 'sds-minter-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export class FakeClock {
  constructor(public now: number = Date.UTC(2026, 0, 15, 12, 0, 0)) {}
  readonly fn = (): number => this.now;
  advance(ms: number): void {
    this.now += ms;
  }
}

export class RecordingSink implements EventSink {
  readonly events: PortcullisEvent[] = [];
  emit(e: Omit<PortcullisEvent, 'time'> & { time?: string }): void {
    this.events.push({ ...e, time: e.time ?? new Date().toISOString() });
  }
  ofType(type: string): PortcullisEvent[] {
    return this.events.filter((e) => e.type === type);
  }
}

export interface OpensslResult {
  ok: boolean;
  out: string;
}

/** Run openssl; never throws on a non-zero exit (the result says so). */
export function openssl(args: string[]): OpensslResult {
  try {
    const out = execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { ok: true, out };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return { ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

/**
 * `openssl verify` of `certPem` against `caPem` (the only trust anchors: no system store),
 * at `atMs` (the fake clock's time) when given.
 */
export function verifyWithOpenssl(
  dir: string,
  certPem: string,
  caPem: string,
  atMs?: number,
  purpose: string | null = 'sslserver',
): OpensslResult {
  const caFile = join(dir, `ca-${Math.random().toString(36).slice(2)}.pem`);
  const certFile = join(dir, `cert-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(caFile, caPem);
  writeFileSync(certFile, certPem);
  const args = ['verify', '-no-CApath', '-no-CAstore', '-CAfile', caFile];
  if (purpose !== null) args.push('-purpose', purpose);
  if (atMs !== undefined) args.push('-attime', String(Math.floor(atMs / 1000)));
  args.push(certFile);
  return openssl(args);
}

export function x509Text(dir: string, certPem: string): string {
  const f = join(dir, `text-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(f, certPem);
  const r = openssl(['x509', '-in', f, '-noout', '-text']);
  if (!r.ok) throw new Error(`openssl x509 failed: ${r.out}`);
  return r.out;
}
