import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, lstat, readFile, rename, rm, stat } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { ERROR_CODES, PortcullisError, type ErrorCode } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { AuditWriteError } from './errors.js';
import { exists, writeFileAtomic } from './fsutil.js';
import { validateOcsfEvent, type OcsfEvent } from './ocsf.js';
import type { AppendResult } from './writer.js';

/**
 * Local submission channel for processes other than the control plane. A unix socket (mode 0600,
 * in the 0700 data dir) speaking newline-delimited JSON:
 *
 *   request   {"id":7,"token":"<hex>","event":{…OCSF…}}
 *   response  {"id":7,"ok":true,"seq":1234,"hash":"…"}
 *             {"id":7,"ok":false,"code":"unauthorized"|"audit_event_invalid"|"audit_write_failed"|"usage","message":"…"}
 *
 * Authentication is a shared secret: 32 random bytes (hex) in `audit-submit.token` (0600, created
 * on first start), carried in every request and compared in constant time. A request with a
 * missing or wrong token is refused and the connection closed. A positive response is sent only
 * after the writer's `append` resolved, i.e. after the record's group commit was fdatasync'ed.
 * Responses may come back out of order (they carry the request id).
 */

export const AUDIT_SOCKET_FILE = 'audit.sock';
export const AUDIT_TOKEN_FILE = 'audit-submit.token';
export const MAX_LINE_BYTES = 512 * 1024;

export interface AuditServerOptions {
  writer: { append(event: OcsfEvent): Promise<AppendResult> };
  dataDir: string;
  logger: Logger;
  socketPath?: string;
  tokenPath?: string;
  /** requests of one connection awaiting the writer before it stops reading (default 1024) */
  maxInFlightPerConnection?: number;
}

export interface AuditServerStats {
  connections: number;
  accepted: number;
  refusedAuth: number;
  invalid: number;
  failed: number;
}

/** Read the submission token, creating it (0600, atomically) if absent. */
export async function loadOrCreateToken(path: string): Promise<string> {
  if (await exists(path)) {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) throw new AuditWriteError(`audit token ${path} has mode 0${(st.mode & 0o777).toString(8)}; it must be 0600`);
    const t = (await readFile(path, 'utf8')).trim();
    if (!/^[0-9a-f]{64}$/.test(t)) throw new AuditWriteError(`audit token ${path} is malformed`);
    return t;
  }
  const t = randomBytes(32).toString('hex');
  await writeFileAtomic(path, `${t}\n`, 0o600);
  return t;
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

export class AuditServer {
  readonly socketPath: string;
  readonly tokenPath: string;
  private readonly sockets = new Set<Socket>();
  private readonly stat: AuditServerStats = { connections: 0, accepted: 0, refusedAuth: 0, invalid: 0, failed: 0 };
  private inFlight = 0;
  private closing = false;

  private constructor(
    private readonly server: Server,
    private readonly tokenDigest: Buffer,
    private readonly opts: AuditServerOptions,
    private readonly log: Logger,
    paths: { socketPath: string; tokenPath: string },
  ) {
    this.socketPath = paths.socketPath;
    this.tokenPath = paths.tokenPath;
  }

  static async start(opts: AuditServerOptions): Promise<AuditServer> {
    const log = opts.logger.child({ component: 'audit-server' });
    const socketPath = opts.socketPath ?? join(opts.dataDir, AUDIT_SOCKET_FILE);
    const tokenPath = opts.tokenPath ?? join(opts.dataDir, AUDIT_TOKEN_FILE);
    const token = await loadOrCreateToken(tokenPath);
    // Listen on a private temporary name, set 0600, then rename into place: the socket is never
    // reachable under its public name with wider permissions.
    const tmp = `${socketPath}.${randomBytes(6).toString('hex')}.tmp`;
    const server = createServer({ allowHalfOpen: false });
    const self = new AuditServer(server, digest(token), opts, log, { socketPath, tokenPath });
    server.on('connection', (s) => self.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(tmp, () => {
        server.off('error', reject);
        resolve();
      });
    });
    try {
      await chmod(tmp, 0o600);
      const cur = await lstat(socketPath).catch(() => null);
      if (cur !== null && !cur.isSocket()) throw new AuditWriteError(`${socketPath} exists and is not a socket`);
      await rename(tmp, socketPath);
    } catch (e) {
      server.close();
      await rm(tmp, { force: true });
      throw e;
    }
    server.on('error', (e) => log.error({ err: e.message }, 'audit socket error'));
    log.info({ socketPath }, 'audit submission socket listening');
    return self;
  }

  get stats(): AuditServerStats {
    return { ...this.stat };
  }

  /** Stop accepting, let in-flight submissions finish (up to `graceMs`), close connections. */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const deadline = Date.now() + graceMs;
    while (this.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const s of this.sockets) s.destroy();
    await closed;
    await rm(this.socketPath, { force: true });
  }

  private onConnection(sock: Socket): void {
    this.stat.connections++;
    this.sockets.add(sock);
    const max = this.opts.maxInFlightPerConnection ?? 1024;
    let buf = '';
    let pending = 0;
    let dead = false;
    sock.setEncoding('utf8');
    const reply = (o: Record<string, unknown>): void => {
      if (!dead && !sock.destroyed) sock.write(`${JSON.stringify(o)}\n`);
    };
    const refuse = (id: unknown, code: ErrorCode, message: string): void => {
      reply({ id: id ?? null, ok: false, code, message });
      dead = true;
      sock.end();
    };
    sock.on('data', (chunk: string) => {
      if (dead) return;
      buf += chunk;
      let nl: number;
      while (!dead && (nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim() === '') continue;
        this.handleLine(line, reply, refuse, () => {
          pending++;
          this.inFlight++;
          if (pending >= max) sock.pause();
        }, () => {
          pending--;
          this.inFlight--;
          if (pending < max && sock.isPaused()) sock.resume();
        });
      }
      if (Buffer.byteLength(buf) > MAX_LINE_BYTES) refuse(null, 'usage', `request line longer than ${MAX_LINE_BYTES} bytes`);
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      dead = true;
      this.sockets.delete(sock);
    });
  }

  private handleLine(
    line: string,
    reply: (o: Record<string, unknown>) => void,
    refuse: (id: unknown, code: ErrorCode, message: string) => void,
    begin: () => void,
    end: () => void,
  ): void {
    let req: { id?: unknown; token?: unknown; event?: unknown };
    try {
      req = JSON.parse(line) as typeof req;
      if (typeof req !== 'object' || req === null || Array.isArray(req)) throw new Error('not an object');
    } catch {
      this.stat.invalid++;
      refuse(null, 'usage', 'request is not a JSON object');
      return;
    }
    const id = typeof req.id === 'string' || typeof req.id === 'number' ? req.id : null;
    if (typeof req.token !== 'string' || !timingSafeEqual(digest(req.token), this.tokenDigest)) {
      this.stat.refusedAuth++;
      this.log.warn('audit submission refused: missing or wrong token');
      refuse(id, 'unauthorized', 'missing or wrong token');
      return;
    }
    let event: OcsfEvent;
    try {
      event = validateOcsfEvent(req.event);
    } catch (e) {
      this.stat.invalid++;
      reply({ id, ok: false, code: 'audit_event_invalid', message: (e as Error).message });
      return;
    }
    if (this.closing) {
      reply({ id, ok: false, code: 'audit_write_failed', message: 'audit server is closing' });
      return;
    }
    begin();
    this.opts.writer.append(event).then(
      (r) => {
        this.stat.accepted++;
        reply({ id, ok: true, seq: r.seq, hash: r.hash });
        end();
      },
      (e: unknown) => {
        this.stat.failed++;
        const code = e instanceof PortcullisError ? e.code : 'audit_write_failed';
        reply({ id, ok: false, code, message: e instanceof PortcullisError ? e.publicMessage : 'audit write failed' });
        end();
      },
    );
  }
}

export interface AuditClientOptions {
  socketPath: string;
  /** the token itself, or … */
  token?: string;
  /** … the file to read it from */
  tokenPath?: string;
}

/** Submits events to an AuditServer; `submit` resolves once the record is durably written. */
export class AuditClient {
  private nextId = 1;
  private buf = '';
  private readonly waiting = new Map<number, { resolve: (r: AppendResult) => void; reject: (e: Error) => void }>();
  private closedErr: Error | null = null;

  private constructor(
    private readonly sock: Socket,
    private readonly token: string,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (e) => this.fail(new AuditWriteError(`audit socket error: ${e.message}`, { cause: e })));
    sock.on('close', () => this.fail(new AuditWriteError('audit socket closed before acknowledgement')));
  }

  static async connect(opts: AuditClientOptions): Promise<AuditClient> {
    const token = opts.token ?? (opts.tokenPath !== undefined ? (await readFile(opts.tokenPath, 'utf8')).trim() : undefined);
    if (token === undefined) throw new AuditWriteError('AuditClient needs a token or tokenPath');
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(opts.socketPath);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', (e) => reject(new AuditWriteError(`cannot connect to audit socket ${opts.socketPath}: ${e.message}`, { cause: e })));
    });
    return new AuditClient(sock, token);
  }

  submit(event: OcsfEvent): Promise<AppendResult> {
    if (this.closedErr !== null) return Promise.reject(this.closedErr);
    const id = this.nextId++;
    return new Promise<AppendResult>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.sock.write(`${JSON.stringify({ id, token: this.token, event })}\n`);
    });
  }

  async close(): Promise<void> {
    if (this.sock.destroyed) return;
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let res: { id?: unknown; ok?: unknown; seq?: unknown; hash?: unknown; code?: unknown; message?: unknown };
      try {
        res = JSON.parse(line) as typeof res;
      } catch {
        continue;
      }
      const w = typeof res.id === 'number' ? this.waiting.get(res.id) : undefined;
      if (w === undefined) {
        // a refusal without a usable id (e.g. malformed request): fail everything outstanding
        if (res.ok === false) this.fail(toError(res.code, res.message));
        continue;
      }
      this.waiting.delete(res.id as number);
      if (res.ok === true && typeof res.seq === 'number' && typeof res.hash === 'string') w.resolve({ seq: res.seq, hash: res.hash });
      else w.reject(toError(res.code, res.message));
    }
  }

  private fail(e: Error): void {
    this.closedErr ??= e;
    for (const w of this.waiting.values()) w.reject(e);
    this.waiting.clear();
  }
}

function toError(code: unknown, message: unknown): PortcullisError {
  const c = typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code) ? (code as ErrorCode) : 'audit_write_failed';
  return new PortcullisError(c, `audit server refused the submission: ${typeof message === 'string' ? message : c}`);
}
