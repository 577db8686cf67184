import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import type { JSONWebKeySet } from 'jose';
import { nodeAuditIo, type AppendFile, type AuditIo } from './io.js';
import { apiActivity, type OcsfEvent } from './ocsf.js';

/** Helpers for the audit tests (not part of the module's API). */

export function tempDir(prefix = 'audit-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function sampleEvent(n = 0, extra: Record<string, unknown> = {}): OcsfEvent {
  return apiActivity({
    time: 1_700_000_000_000 + n,
    actor: { id: 'operator:alice', type: 'admin' },
    outcome: 'success',
    activity: 'delete',
    operation: 'sandbox.kill',
    resource: { type: 'sandbox', id: `sb-${n}` },
    traceId: `trace-${n}`,
    sessionId: `sess-${n % 7}`,
    unmapped: extra as Record<string, never>,
  });
}

export async function readJsonl(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8');
  return text.split('\n').slice(0, -1);
}

export async function jwksOf(dir: string): Promise<JSONWebKeySet> {
  return JSON.parse(await readFile(join(dir, 'audit-jwks.json'), 'utf8')) as JSONWebKeySet;
}

/** An AuditIo whose appends can be made to fail or to hold their fdatasync. */
export class FaultyIo implements AuditIo {
  failWrite: NodeJS.ErrnoException | null = null;
  failSync: NodeJS.ErrnoException | null = null;
  /** when set, every datasync waits for `release()` */
  holdSync = false;
  syncs = 0;
  writes = 0;
  private held: (() => void)[] = [];

  async openAppend(path: string): Promise<AppendFile> {
    const real = await nodeAuditIo.openAppend(path);
    return {
      write: async (data) => {
        this.writes++;
        if (this.failWrite) throw this.failWrite;
        await real.write(data);
      },
      datasync: async () => {
        if (this.holdSync) await new Promise<void>((r) => this.held.push(r));
        if (this.failSync) throw this.failSync;
        this.syncs++;
        await real.datasync();
      },
      truncate: (len) => real.truncate(len),
      close: () => real.close(),
    };
  }

  writeSidecar(path: string, data: string): Promise<void> {
    return nodeAuditIo.writeSidecar(path, data);
  }

  get heldCount(): number {
    return this.held.length;
  }

  release(): void {
    const h = this.held;
    this.held = [];
    for (const r of h) r();
  }
}

export function errno(code: string, message = code): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}
