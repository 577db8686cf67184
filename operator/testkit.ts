import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditWriteError } from '../audit/errors.js';
import type { OcsfEvent } from '../audit/ocsf.js';
import type { AuditAppender } from '../audit/require-audit.js';
import type { SessionInfo } from '../sandbox/api.js';
import type { OperatorSandbox } from './kill.js';

/** Helpers for the operator tests (not part of the module's API). */

export function tempDir(prefix = 'operator-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** An audit log in memory that can be told to fail. */
export class MemoryAudit implements AuditAppender {
  events: OcsfEvent[] = [];
  fail = false;
  /** called at every append, in order with everything else the test records */
  onAppend?: (e: OcsfEvent) => void;
  async append(e: OcsfEvent) {
    if (this.fail) throw new AuditWriteError('disk full');
    this.onAppend?.(e);
    this.events.push(e);
    return { seq: this.events.length, hash: String(this.events.length).padStart(64, '0') };
  }
  operations(): string[] {
    return this.events.map((e) => `${(e.api as { operation?: string } | undefined)?.operation ?? e.type_name}:${e.status}`);
  }
}

/** A supervisor stand-in that records the order of calls. */
export class FakeSupervisor implements OperatorSandbox {
  readonly sessions = new Map<string, SessionInfo>();
  readonly log: string[];
  failDestroy = false;
  withQuarantine = true;
  constructor(log: string[] = []) {
    this.log = log;
  }
  add(id: string, state: SessionInfo['state'] = 'ready'): void {
    const now = new Date(1_700_000_000_000).toISOString();
    this.sessions.set(id, { sessionId: id, owner: 'alice', state, createdAt: now, lastActiveAt: now, expiresAt: now, runtime: 'runsc' });
  }
  listSessions(): SessionInfo[] {
    return [...this.sessions.values()];
  }
  getSession(id: string): SessionInfo | undefined {
    return this.sessions.get(id);
  }
  async destroySession(id: string, reason: string): Promise<void> {
    this.log.push(`destroy ${id} ${reason}`);
    if (this.failDestroy) throw new Error('docker: boom');
    const s = this.sessions.get(id);
    if (s) s.state = 'destroyed';
  }
  get quarantine(): ((id: string, reason: string) => Promise<void>) | undefined {
    if (!this.withQuarantine) return undefined;
    return async (id: string) => {
      this.log.push(`quarantine ${id}`);
      const s = this.sessions.get(id);
      if (s) s.state = 'quarantined';
    };
  }
}

/** A revoker that records into a shared log. */
export function recordingRevoker(log: string[]) {
  const revoked = new Map<string, string>();
  return {
    revoked,
    revoke(id: string, reason = 'session_revoked') {
      log.push(`revoke ${id} ${reason}`);
      if (!revoked.has(id)) revoked.set(id, reason);
    },
  };
}

export interface TestReceiver {
  url: string;
  port: number;
  /** bodies (compact JWS) in arrival order */
  received: { body: string; eventId: string }[];
  /** answer this status instead of 204 */
  status: number;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** An HTTP receiver on loopback that can be stopped and started again on the same port. */
export async function startReceiver(): Promise<TestReceiver> {
  let server: http.Server | null = null;
  const r: TestReceiver = {
    url: '',
    port: 0,
    received: [],
    status: 204,
    async start() {
      server = http.createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          r.received.push({ body: Buffer.concat(chunks).toString('utf8'), eventId: String(req.headers['x-portcullis-event-id'] ?? '') });
          res.writeHead(r.status).end();
        });
      });
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(r.port, '127.0.0.1', () => resolve());
      });
      r.port = (server.address() as AddressInfo).port;
      r.url = `http://127.0.0.1:${r.port}/hook`;
    },
    async stop() {
      const s = server;
      server = null;
      if (!s) return;
      await new Promise<void>((resolve) => {
        s.close(() => resolve());
        s.closeAllConnections();
      });
    },
  };
  await r.start();
  return r;
}

/** Poll until `fn` holds (no timing is asserted; the test's own timeout bounds it). */
export async function until(fn: () => boolean, stepMs = 5): Promise<void> {
  while (!fn()) await new Promise((r) => setTimeout(r, stepMs));
}
