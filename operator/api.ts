import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname } from 'node:path';
import type { JSONWebKeySet } from 'jose';
import { PortcullisError, isPortcullisError } from '../common/errors.js';
import type { EventBus, PortcullisEvent } from '../common/events.js';
import type { Logger } from '../common/logger.js';
import type { Metrics } from '../common/metrics.js';
import { configChange } from '../audit/ocsf.js';
import { requireAudit, type AuditAppender } from '../audit/require-audit.js';
import { ensureDir } from '../audit/fsutil.js';
import type { SessionInfo } from '../sandbox/api.js';
import type { Denylist, DenyEntry } from './denylist.js';
import type { ActionActor, ActionOptions, KillSwitch } from './kill.js';
import type { SoarAdmin } from './soar-in.js';
import type { SoarOutbox } from './soar-out.js';
import type { SessionUsage, Tripwire } from './tripwire.js';

/**
 * The operator API: HTTP/JSON on its own listener, never on the agent path.
 *
 *  - a unix socket (default; created 0600 inside a 0700 directory): whoever can open it is an
 *    operator (file permissions are the credential);
 *  - optionally TCP, bound to loopback only, every request with `Authorization: Bearer <token>`
 *    (compared in constant time). Exceptions: GET /v1/soar/jwks.json (public keys) and
 *    POST /v1/soar/admin (authenticated by its own signature, soar-in.ts).
 *
 * Routes (all JSON):
 *   GET  /v1/health                        GET  /v1/metrics (text)
 *   GET  /v1/sessions                      GET  /v1/sessions/:id
 *   POST /v1/sessions/:id/kill             POST /v1/sessions/:id/quarantine
 *   POST /v1/kill-all                      GET|POST /v1/denylist   {sessionId, note?}
 *   GET  /v1/policy/status                 GET  /v1/tripwire
 *   GET  /v1/soar/deliveries               GET  /v1/soar/jwks.json
 *   POST /v1/soar/admin  (body: the signed request)
 *   POST /v1/ca/rotate   (when a minter is configured)
 * Every privileged action runs through `requireAudit` (kill switch, CA rotation): when the audit
 * log cannot record the attempt, the action does not happen and the answer is 503
 * audit_write_failed.
 */

export interface PolicyStatusSource {
  status(): { liveVersion: string | null; lastNack: unknown; lastRefused: unknown; xdsAddress?: string | null };
}

export interface CaRotator {
  rotate(reason?: string): Promise<unknown>;
  status?(): unknown;
}

export interface OperatorApiOptions {
  kill: KillSwitch;
  denylist: Denylist;
  audit: AuditAppender;
  logger: Logger;
  metrics: Metrics;
  policy?: PolicyStatusSource;
  /** the bus: the last refused reload (from the policy watcher or the control plane) is tracked */
  events?: Pick<EventBus, 'on'>;
  outbox?: SoarOutbox;
  /** public keys of the webhook signers */
  webhookJwks?: () => JSONWebKeySet;
  soarAdmin?: SoarAdmin;
  tripwire?: Tripwire;
  minter?: CaRotator;
  /** unix socket path (default: none) */
  socketPath?: string;
  /** optional TCP listener: loopback only, bearer token required */
  tcp?: { host?: string; port: number; token: string };
  clock?: () => number;
}

const MAX_BODY = 64 * 1024;
const SESSION_ID = /^[A-Za-z0-9._:@-]{1,256}$/;

interface Ctx {
  transport: 'unix' | 'tcp';
  actor: ActionActor;
  requestId: string;
  remote: string | undefined;
}

interface Reply {
  status: number;
  body: unknown;
  type?: string;
}

export class OperatorApi {
  private readonly servers: http.Server[] = [];
  private readonly log: Logger;
  private lastReloadRefused: { at: string; source: string; data: Record<string, unknown> } | null = null;
  private offBus: (() => void) | null = null;
  socketPath: string | null = null;
  tcpAddress: { host: string; port: number } | null = null;
  private readonly tokenDigest: Buffer | null;

  private constructor(private readonly o: OperatorApiOptions) {
    this.log = o.logger.child({ component: 'operator-api' });
    this.tokenDigest = o.tcp ? sha256(o.tcp.token) : null;
    if (o.events) {
      this.offBus = o.events.on((e: PortcullisEvent) => {
        if (e.type === 'config.reload_refused') this.lastReloadRefused = { at: e.time, source: e.source, data: e.data };
      });
    }
  }

  static async start(o: OperatorApiOptions): Promise<OperatorApi> {
    if (!o.socketPath && !o.tcp) throw new PortcullisError('usage', 'the operator API needs a unix socket path or a TCP listener');
    if (o.tcp) {
      const host = o.tcp.host ?? '127.0.0.1';
      if (!isLoopback(host)) throw new PortcullisError('usage', `the operator API's TCP listener must be on loopback (got ${host})`);
      if (o.tcp.token.length < 32) throw new PortcullisError('usage', 'the operator credential must be at least 32 characters');
    }
    const api = new OperatorApi(o);
    try {
      if (o.socketPath) await api.listenUnix(o.socketPath);
      if (o.tcp) await api.listenTcp(o.tcp.host ?? '127.0.0.1', o.tcp.port);
    } catch (e) {
      await api.close();
      throw e;
    }
    return api;
  }

  async close(): Promise<void> {
    this.offBus?.();
    await Promise.all(
      this.servers.map(
        (s) =>
          new Promise<void>((r) => {
            s.close(() => r());
            s.closeAllConnections();
          }),
      ),
    );
    if (this.socketPath) fs.rmSync(this.socketPath, { force: true });
  }

  // -------------------------------------------------------------------------------------------

  private async listenUnix(path: string): Promise<void> {
    await ensureDir(dirname(path));
    const dirMode = fs.statSync(dirname(path)).mode & 0o777;
    if (dirMode & 0o022) this.log.warn({ dir: dirname(path), mode: dirMode.toString(8) }, 'the operator socket directory is writable by others');
    if (fs.existsSync(path)) {
      if (!fs.lstatSync(path).isSocket()) throw new PortcullisError('usage', `${path} exists and is not a socket`);
      if (await socketAlive(path)) throw new PortcullisError('usage', `another operator API is listening on ${path}`);
      fs.rmSync(path, { force: true });
    }
    const server = this.server('unix');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(path, 0o600);
    this.socketPath = path;
  }

  private async listenTcp(host: string, port: number): Promise<void> {
    const server = this.server('tcp');
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.tcpAddress = { host, port: (server.address() as net.AddressInfo).port };
  }

  private server(transport: 'unix' | 'tcp'): http.Server {
    const s = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000, maxHeaderSize: 16 * 1024 }, (req, res) => {
      void this.serve(transport, req, res);
    });
    s.maxConnections = 1024;
    this.servers.push(s);
    return s;
  }

  private async serve(transport: 'unix' | 'tcp', req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let reply: Reply;
    try {
      const url = new URL(req.url ?? '/', 'http://operator');
      const path = url.pathname;
      const method = req.method ?? 'GET';
      const open = method === 'GET' && path === '/v1/soar/jwks.json';
      const selfAuth = method === 'POST' && path === '/v1/soar/admin';
      if (transport === 'tcp' && !open && !selfAuth && !this.bearerOk(req.headers.authorization)) {
        this.o.metrics.inc('operator_api_unauthorized_total');
        reply = err(401, 'unauthorized', 'operator credential required');
      } else {
        const body = method === 'POST' ? await readBody(req) : '';
        const name = headerValue(req.headers['x-portcullis-operator']);
        const ctx: Ctx = {
          transport,
          actor: {
            id: transport === 'unix' ? 'operator:local' : 'operator:tcp',
            type: 'admin',
            ...(name && /^[\w.@-]{1,128}$/.test(name) ? { name } : {}),
          },
          requestId: randomUUID(),
          remote: req.socket.remoteAddress,
        };
        reply = await this.route(method, path, body, url.searchParams, ctx);
      }
    } catch (e) {
      reply = errorReply(e);
      if (reply.status >= 500) this.log.error({ err: (e as Error).message }, 'operator API request failed');
    }
    this.o.metrics.inc('operator_api_requests_total', { status: String(reply.status), transport });
    const text = reply.type?.startsWith('text/') ? String(reply.body) : `${JSON.stringify(reply.body)}\n`;
    res.writeHead(reply.status, { 'content-type': reply.type ?? 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private bearerOk(h: string | undefined): boolean {
    if (!this.tokenDigest || !h) return false;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (!m) return false;
    return timingSafeEqual(sha256(m[1]!), this.tokenDigest);
  }

  private async route(method: string, path: string, body: string, q: URLSearchParams, ctx: Ctx): Promise<Reply> {
    const parts = path.split('/').filter(Boolean);
    if (parts[0] !== 'v1') return err(404, 'not_found', 'no such route');
    const p = parts.slice(1);
    const opts = (note?: unknown): ActionOptions => ({
      actor: ctx.actor,
      requestId: ctx.requestId,
      ...(typeof note === 'string' && note ? { note: note.slice(0, 512) } : {}),
      ...(ctx.transport === 'tcp' && ctx.remote ? { src: { ip: ctx.remote.replace(/^::ffff:/, '') } } : {}),
    });
    const is = (m: string, ...segs: (string | null)[]) => method === m && p.length === segs.length && segs.every((s, i) => s === null || s === p[i]);

    if (is('GET', 'health')) return ok({ ok: true });
    if (is('GET', 'metrics')) return { status: 200, body: this.o.metrics.render(), type: 'text/plain; version=0.0.4' };
    if (is('GET', 'sessions')) return ok({ sessions: this.sessions() });
    if (is('GET', 'sessions', null)) {
      const id = sessionParam(p[1]!);
      const s = this.sessions(id).find((x) => x.sessionId === id);
      return s ? ok({ session: s }) : err(404, 'session_not_found', 'no such session');
    }
    if (is('POST', 'sessions', null, 'kill')) {
      const id = sessionParam(p[1]!);
      const b = parseJson(body);
      return ok({ result: await this.o.kill.kill(id, opts(b.note)) });
    }
    if (is('POST', 'sessions', null, 'quarantine')) {
      const id = sessionParam(p[1]!);
      const b = parseJson(body);
      return ok({ result: await this.o.kill.quarantine(id, opts(b.note)) });
    }
    if (is('POST', 'kill-all')) {
      const b = parseJson(body);
      return ok({ result: await this.o.kill.killAll(opts(b.note)) });
    }
    if (is('GET', 'denylist')) return ok({ denylist: this.o.denylist.list() });
    if (is('POST', 'denylist')) {
      const b = parseJson(body);
      if (typeof b.sessionId !== 'string') throw new PortcullisError('usage', 'sessionId is required');
      const id = sessionParam(b.sessionId);
      return ok({ result: await this.o.kill.revoke(id, opts(b.note)) });
    }
    if (is('GET', 'policy', 'status')) {
      const st = this.o.policy?.status() ?? { liveVersion: null, lastNack: null, lastRefused: null };
      return ok({ ...st, lastReloadRefused: this.lastReloadRefused });
    }
    if (is('GET', 'tripwire')) {
      if (!this.o.tripwire) return err(404, 'not_found', 'the tripwire is not running');
      return ok(this.o.tripwire.status());
    }
    if (is('GET', 'soar', 'deliveries')) {
      if (!this.o.outbox) return ok({ targets: [], items: [] });
      const d = this.o.outbox.deliveries();
      const limit = Math.max(1, Math.min(10_000, Number(q.get('limit') ?? 200) || 200));
      return ok({ targets: d.targets, items: d.items.slice(-limit) });
    }
    if (is('GET', 'soar', 'jwks.json')) return ok(this.o.webhookJwks?.() ?? { keys: [] });
    if (is('POST', 'soar', 'admin')) {
      if (!this.o.soarAdmin?.enabled) return err(404, 'not_found', 'the SOAR admin API is not configured');
      const jws = extractJws(body);
      const r = await this.o.soarAdmin.handle(jws, { requestId: ctx.requestId, ...(ctx.remote && net.isIP(ctx.remote.replace(/^::ffff:/, '')) ? { src: { ip: ctx.remote.replace(/^::ffff:/, '') } } : {}) });
      return { status: r.status, body: r.body };
    }
    if (is('POST', 'ca', 'rotate')) {
      const minter = this.o.minter;
      if (!minter) return err(404, 'not_found', 'no CA is managed by this process');
      const event = configChange({
        time: (this.o.clock ?? Date.now)(),
        actor: { id: ctx.actor.id, type: 'admin', ...(ctx.actor.name ? { name: ctx.actor.name } : {}) },
        outcome: 'attempt',
        severity: 'high',
        activity: 'update',
        operation: 'config.ca_rotate',
        service: 'operator',
        resource: { type: 'ca', id: 'deployment-ca' },
      });
      const info = await requireAudit(this.o.audit, event, () => minter.rotate('operator'), { clock: this.o.clock ?? Date.now });
      return ok({ result: info });
    }
    return err(p.length && ['sessions', 'kill-all', 'denylist', 'policy', 'soar', 'ca', 'tripwire', 'health', 'metrics'].includes(p[0]!) ? 405 : 404, 'not_found', 'no such route');
  }

  private sessions(only?: string): SessionView[] {
    const sb = this.o.kill.sandbox;
    const ids = new Set<string>();
    if (only) ids.add(only);
    else {
      for (const s of sb?.listSessions() ?? []) ids.add(s.sessionId);
      for (const d of this.o.denylist.list()) ids.add(d.sessionId);
      for (const s of this.o.tripwire?.activeSessions() ?? []) ids.add(s);
    }
    const out: SessionView[] = [];
    for (const id of ids) {
      const info = sb?.getSession(id);
      const denied = this.o.denylist.get(id) ?? null;
      const usage = this.o.tripwire?.usage(id);
      const egress = usage && (usage.bytes > 0 || usage.destinations > 0 || usage.tripped) ? usage : null;
      if (!info && !denied && !egress) continue;
      out.push({ sessionId: id, sandbox: info ?? null, state: info?.state ?? (denied ? 'denied' : 'unknown'), denied, egress });
    }
    return out.sort((a, b) => (a.sandbox?.createdAt ?? '').localeCompare(b.sandbox?.createdAt ?? '') || a.sessionId.localeCompare(b.sessionId));
  }
}

export interface SessionView {
  sessionId: string;
  state: SessionInfo['state'] | 'denied' | 'unknown';
  sandbox: SessionInfo | null;
  denied: DenyEntry | null;
  egress: SessionUsage | null;
}

// ---------------------------------------------------------------------------------------------

function ok(body: unknown): Reply {
  return { status: 200, body };
}

function err(status: number, code: string, message: string): Reply {
  return { status, body: { ok: false, error: { code, message } } };
}

function errorReply(e: unknown): Reply {
  if (isPortcullisError(e)) {
    const status =
      e.code === 'usage'
        ? 400
        : e.code === 'unauthorized'
          ? 401
          : e.code === 'session_not_found'
            ? 404
            : e.code === 'audit_write_failed'
              ? 503
              : e.code === 'sandbox_failed'
                ? 502
                : 500;
    const details = e.code === 'sandbox_failed' || e.code === 'audit_write_failed' ? pickDetails(e.details) : undefined;
    return { status, body: { ok: false, error: { code: e.code, message: e.code === 'usage' ? e.message : e.publicMessage, ...(details ? { details } : {}) } } };
  }
  return err(500, 'internal', 'internal error');
}

function pickDetails(d: Record<string, unknown>): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const k of ['revoked', 'actionCompleted', 'failed']) if (d[k] !== undefined) out[k] = d[k];
  return Object.keys(out).length ? out : undefined;
}

function sessionParam(raw: string): string {
  let id: string;
  try {
    id = decodeURIComponent(raw);
  } catch {
    throw new PortcullisError('usage', 'bad session id');
  }
  if (!SESSION_ID.test(id)) throw new PortcullisError('usage', 'bad session id');
  return id;
}

function parseJson(body: string): Record<string, unknown> {
  if (!body.trim()) return {};
  try {
    const v = JSON.parse(body) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new PortcullisError('usage', 'the body must be a JSON object');
  }
}

/** The admin request: the raw compact JWS, or `{"jws": "…"}`. */
function extractJws(body: string): string {
  const t = body.trim();
  if (t.startsWith('{')) {
    const b = parseJson(t);
    return typeof b.jws === 'string' ? b.jws : '';
  }
  return t;
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new PortcullisError('usage', `request body larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  return net.isIPv4(h) && h.startsWith('127.');
}

function socketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
