import { randomUUID, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { Logger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { EventBus, type EventSink } from '../common/events.js';
import type { Ir } from '../policy/ir.js';
import type { SandboxService } from '../sandbox/api.js';
import type { RevocationReason } from '../xds-server/sessions.js';
import { decideToolCall, egressView, toolsVisibleTo } from './access.js';
import { PublicDenial, denial, deniedToolResult, httpStatusFor, jsonRpcCodeFor, jsonRpcErrorBody, toDenial, type Denial, type JsonRpcId } from './errors.js';
import { argumentDigest, checkEnvelopeValue } from './jsonrpc.js';
import { toolDescriptors, type ToolArgs, type ToolName } from './tools.js';
import { CALLER_HEADER, MCP_PATH, ORIGIN_HEADER } from './headers.js';
import { setBounded } from '../common/bounded.js';

/**
 * The MCP gateway: Streamable HTTP (MCP SDK) on loopback or a unix socket, reached only through the
 * Envoy ingress listener, which has already authenticated the caller, bounded it and authorized the
 * call. The gateway trusts exactly one thing from Envoy: the caller header, set from the verified
 * token (Envoy strips any copy the client sent).
 *
 * - One MCP session ↔ one sandbox session, created on the first tool that needs it, destroyed when
 *   the MCP session ends (DELETE), idles out, or the gateway closes. A session belongs to the caller
 *   that opened it: a request for it from any other caller is answered as an unknown session.
 * - Every call is checked again here (closed envelope, closed argument schema, the policy decision)
 *   before anything runs: Envoy is the enforcement point, this is the second line.
 * - `tools/list` shows only the tools the policy lets the caller use.
 * - Every tool call is counted and emitted as an `mcp.tool_call` event (caller, tool, argument
 *   digest, outcome, duration); arguments, output and file contents never leave as such.
 * - The gateway depends on the sandbox API only (no operator API, no lifecycle mutation beyond its
 *   own sessions) and holds no upstream credential.
 * - It is a session enforcer for the operator plane (`SessionRevoker`, registered with the
 *   denylist): `revoke(id)` with a sandbox session id (what `sessions kill|quarantine|revoke`, SOAR
 *   and the tripwire name) or with an MCP session's handle (`mcp:<uuid>`, what `liveSessions()`
 *   reports for sessions that have no sandbox yet, so kill-all reaches them) refuses every later
 *   request on that MCP session with the revocation's reason (`session_revoked`, or
 *   `exfil_budget_exceeded`): HTTP 403, `x-deny-reason`, a JSON-RPC error carrying the reason. A
 *   call already past that check is refused before it reaches the supervisor. The revoked MCP
 *   session is closed once its in-flight requests end, WITHOUT destroying its sandbox: what happens
 *   to the sandbox is the operator's decision (kill destroys it, quarantine keeps it for forensics).
 * - Revocation is per session, not per caller: the caller may open a new MCP session (which gets a
 *   new sandbox). Kill-all revokes every current session; it is not a ban either. Banning a caller
 *   is the token issuer's (or the IdP's) business.
 */

/** The part of the supervisor's API the gateway may use (no listing of others' sessions, no quarantine). */
export type GatewaySandbox = Pick<SandboxService, 'createSession' | 'getSession' | 'exec' | 'readFile' | 'writeFile' | 'editFile' | 'listFiles' | 'destroySession'>;

export { CALLER_HEADER, MCP_PATH, ORIGIN_HEADER };

export interface GatewayOptions {
  sandbox: GatewaySandbox;
  /** the live policy (the gateway re-reads it on every call) */
  policy: () => Ir;
  logger: Logger;
  events?: EventSink;
  metrics?: Metrics;
  /** TCP on loopback (default 127.0.0.1, port 0 = ephemeral) or a unix socket (created 0600) */
  listen?: { host?: string; port?: number } | { socketPath: string };
  /**
   * A secret Envoy adds to every request it forwards (`x-portcullis-origin`); when set, a request
   * without it is refused, so a local process cannot bypass Envoy by dialing the gateway directly.
   */
  originSecret?: string;
  /** idle MCP sessions (no request) are closed after this long; default 15 min */
  sessionIdleMs?: number;
  /** default 8 */
  maxSessionsPerCaller?: number;
  /** default 256 */
  maxSessions?: number;
  /** largest POST body the gateway reads; default 8 MiB + 64 KiB (Envoy bounds the real limit) */
  maxBodyBytes?: number;
  /** per-stream cap on exec output returned to the caller; default 1 MiB */
  execMaxOutputBytes?: number;
  serverInfo?: { name: string; version: string };
}

export type ToolOutcome = 'ok' | 'error' | 'denied' | 'invalid';

export interface GatewayCounters {
  /** HTTP requests that reached the gateway, by method */
  requests: Record<string, number>;
  /** tools/call seen, by tool then outcome */
  calls: Record<string, Partial<Record<ToolOutcome, number>>>;
  /** tools/list answered */
  lists: number;
  sessionsOpen: number;
}

interface SessionRec {
  id: string;
  /** what the operator plane names this session by until it has a sandbox (`mcp:<uuid>`) */
  handle: string;
  caller: string;
  transport: StreamableHTTPServerTransport;
  server: McpServer;
  sandboxId?: string;
  sandboxPending?: Promise<string>;
  lastActive: number;
  inflight: number;
  closed: boolean;
  /** set once the operator plane revoked the session */
  revoked?: RevocationReason;
}

/** How a revoked MCP session is answered after it was closed (until it would have idled out). */
interface Tombstone {
  caller: string;
  reason: RevocationReason;
  until: number;
}

/** Handle prefix of MCP sessions in the operator plane. */
export const MCP_SESSION_HANDLE_PREFIX = 'mcp:';
/** revoked sandbox ids remembered (the denylist re-applies older ones on start) */
const MAX_REVOKED_REMEMBERED = 65_536;

class RpcDenial extends Error {
  readonly code: number;
  readonly data: { reason: string };
  constructor(d: Denial) {
    super(d.message);
    this.code = jsonRpcCodeFor(d.reason);
    this.data = { reason: d.reason };
  }
}

const CALLER_RE = /^\S{1,256}$/;

export class McpGateway {
  readonly metrics: Metrics;
  readonly events: EventSink;
  private readonly log: Logger;
  private readonly sessions = new Map<string, SessionRec>();
  /** revoked MCP sessions already closed, by MCP session id */
  private readonly tombstones = new Map<string, Tombstone>();
  /** every session id the operator plane revoked (sandbox ids and MCP handles) → reason */
  private readonly revokedIds = new Map<string, RevocationReason>();
  /** sessions being initialized, per caller (counted against the per-caller cap) */
  private readonly pending = new Map<string, number>();
  private readonly server: http.Server;
  private sweepTimer?: NodeJS.Timeout;
  private listenAddress = '';
  private closing = false;
  private readonly idleMs: number;
  private readonly maxPerCaller: number;
  private readonly maxSessions: number;
  private readonly maxBody: number;
  private readonly origin?: Buffer;

  private constructor(private readonly o: GatewayOptions) {
    this.metrics = o.metrics ?? new Metrics();
    this.events = o.events ?? new EventBus();
    this.log = o.logger.child({ component: 'mcp-gateway' });
    this.idleMs = o.sessionIdleMs ?? 15 * 60_000;
    this.maxPerCaller = o.maxSessionsPerCaller ?? 8;
    this.maxSessions = o.maxSessions ?? 256;
    this.maxBody = o.maxBodyBytes ?? 8 * 1024 * 1024 + 64 * 1024;
    if (o.originSecret !== undefined) this.origin = Buffer.from(o.originSecret);
    this.server = http.createServer({ requestTimeout: 0, headersTimeout: 15_000, keepAliveTimeout: 65_000 }, (req, res) => {
      this.handle(req, res).catch((e: unknown) => {
        this.log.error({ err: (e as Error)?.message }, 'request failed');
        if (!res.headersSent) this.reply(res, denial('internal'));
        else res.destroy();
      });
    });
  }

  static async start(o: GatewayOptions): Promise<McpGateway> {
    const g = new McpGateway(o);
    await g.listen();
    return g;
  }

  private async listen(): Promise<void> {
    const l = this.o.listen ?? {};
    if ('socketPath' in l) {
      if (fs.existsSync(l.socketPath)) fs.rmSync(l.socketPath);
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(l.socketPath, () => resolve());
      });
      fs.chmodSync(l.socketPath, 0o600);
      this.listenAddress = `unix:${l.socketPath}`;
    } else {
      const host = l.host ?? '127.0.0.1';
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(l.port ?? 0, host, () => resolve());
      });
      const a = this.server.address() as AddressInfo;
      this.listenAddress = `${host.includes(':') ? `[${host}]` : host}:${a.port}`;
    }
    const every = Math.max(250, Math.min(30_000, Math.floor(this.idleMs / 4)));
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
    this.log.info({ address: this.listenAddress }, 'MCP gateway listening');
  }

  /** `127.0.0.1:PORT` or `unix:/path` */
  get address(): string {
    return this.listenAddress;
  }

  get port(): number {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  counters(): GatewayCounters {
    const requests: Record<string, number> = {};
    const calls: GatewayCounters['calls'] = {};
    for (const [k, v] of Object.entries(this.metrics.snapshot())) {
      const m = /^mcp_gateway_(\w+)\{(.*)\}$/.exec(k);
      if (!m) continue;
      const labels = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
      if (m[1] === 'http_requests_total') requests[labels.method!] = v;
      if (m[1] === 'tool_calls_total') (calls[labels.tool!] ??= {})[labels.outcome as ToolOutcome] = v;
    }
    return { requests, calls, lists: this.metrics.get('mcp_gateway_tools_list_total'), sessionsOpen: this.sessions.size };
  }

  /** Sum of tool calls seen (any outcome), optionally for one tool. */
  callsSeen(tool?: string): number {
    const c = this.counters().calls;
    let n = 0;
    for (const [t, by] of Object.entries(c)) if (!tool || t === tool) for (const v of Object.values(by)) n += v ?? 0;
    return n;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * `SessionRevoker` (operator/denylist.ts): refuse the MCP session bound to this sandbox session id
   * (or MCP handle) from now on. Synchronous; idempotent; unknown ids are remembered, so a sandbox
   * that attaches later is refused as well.
   */
  revoke(sessionId: string, reason: RevocationReason = 'session_revoked'): void {
    if (!this.revokedIds.has(sessionId)) {
      setBounded(this.revokedIds, sessionId, reason, MAX_REVOKED_REMEMBERED);
    }
    for (const rec of this.sessions.values()) {
      if (rec.sandboxId === sessionId || rec.handle === sessionId) this.revokeRec(rec, this.revokedIds.get(sessionId)!);
    }
  }

  /** This gateway as a `SessionRevoker`, for `startOperatorPlane({ revokers: [...] })`. */
  revoker(): { revoke(sessionId: string, reason?: RevocationReason): void } {
    return { revoke: (id, reason) => this.revoke(id, reason) };
  }

  /**
   * The live, unrevoked MCP sessions as the operator plane names them: the sandbox session id once
   * there is one, the MCP handle before. A kill-all session source.
   */
  liveSessions(): string[] {
    const out: string[] = [];
    for (const r of this.sessions.values()) if (!r.closed && !r.revoked) out.push(r.sandboxId ?? r.handle);
    return out;
  }

  /** Whether the MCP session bound to this sandbox session id (or handle) is revoked. */
  isRevoked(sessionId: string): boolean {
    return this.revokedIds.has(sessionId);
  }

  private revokeRec(rec: SessionRec, reason: RevocationReason): void {
    if (rec.revoked || rec.closed) return;
    rec.revoked = reason;
    this.tombstones.set(rec.id, { caller: rec.caller, reason, until: Date.now() + this.idleMs });
    this.metrics.inc('mcp_gateway_sessions_revoked_total', { reason });
    this.events.emit({
      type: 'mcp.session_revoked',
      severity: 'warning',
      source: 'mcp-gateway',
      ...(rec.sandboxId ? { sessionId: rec.sandboxId } : {}),
      data: { caller: rec.caller, reason, handle: rec.handle },
    });
    if (rec.inflight === 0) void this.closeSession(rec, 'revoked');
  }

  private tombstone(sid: string, caller: string): Tombstone | undefined {
    const t = this.tombstones.get(sid);
    if (!t) return undefined;
    if (t.until < Date.now()) {
      this.tombstones.delete(sid);
      return undefined;
    }
    // another caller learns nothing about this session
    return t.caller === caller ? t : undefined;
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await Promise.allSettled([...this.sessions.values()].map((s) => this.closeSession(s, 'gateway_stopped')));
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private reply(res: http.ServerResponse, d: Denial, id: JsonRpcId = null): void {
    const body = jsonRpcErrorBody(id, d);
    res.writeHead(httpStatusFor(d.reason), {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-deny-reason': d.reason,
      'cache-control': 'no-store',
    });
    res.end(body);
  }

  private originOk(req: http.IncomingMessage): boolean {
    if (!this.origin) return true;
    const v = req.headers[ORIGIN_HEADER];
    if (typeof v !== 'string') return false;
    const b = Buffer.from(v);
    return b.length === this.origin.length && timingSafeEqual(b, this.origin);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'UNKNOWN';
    this.metrics.inc('mcp_gateway_http_requests_total', { method: /^[A-Z]{1,10}$/.test(method) ? method : 'OTHER' });
    if (this.closing) return this.reply(res, denial('unavailable'));
    if (!this.originOk(req)) return this.reply(res, denial('unauthorized'));
    const url = req.url ?? '/';
    const pathOnly = url.split('?', 1)[0];
    if (pathOnly !== MCP_PATH) return this.reply(res, denial('not_found'));
    const callerRaw = req.headers[CALLER_HEADER];
    const caller = typeof callerRaw === 'string' && CALLER_RE.test(callerRaw) ? callerRaw : undefined;
    if (!caller) return this.reply(res, denial('unauthorized'));
    const sidRaw = req.headers['mcp-session-id'];
    const sid = typeof sidRaw === 'string' ? sidRaw : undefined;

    if (method === 'POST') {
      const body = await readBody(req, this.maxBody);
      if (body === 'too_large') return this.reply(res, denial('body_too_large'));
      let parsed: unknown;
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        return this.reply(res, denial('schema_invalid', '(the body is not valid JSON)'));
      }
      const env = checkEnvelopeValue(parsed);
      if (!env.ok) return this.reply(res, env.denial, env.id);
      const isInit = env.message.kind === 'request' && env.message.method === 'initialize';
      if (!sid) {
        if (!isInit) return this.reply(res, denial('session_not_found'), env.message.kind === 'response' ? null : 'id' in env.message ? env.message.id : null);
        return this.initialize(req, res, caller, parsed);
      }
      const msgId = 'id' in env.message ? env.message.id : null;
      const revoked = this.revokedReason(sid, caller);
      if (revoked) return this.refuseRevoked(res, revoked, msgId);
      const rec = this.lookup(sid, caller);
      if (!rec) return this.reply(res, denial('session_not_found'), msgId);
      rec.lastActive = Date.now();
      rec.inflight++;
      try {
        await rec.transport.handleRequest(req, res, parsed);
      } finally {
        rec.inflight--;
        rec.lastActive = Date.now();
        if (rec.revoked && rec.inflight === 0) void this.closeSession(rec, 'revoked');
      }
      return;
    }
    if (method === 'GET' || method === 'DELETE') {
      const revoked = sid ? this.revokedReason(sid, caller) : undefined;
      if (revoked) return this.refuseRevoked(res, revoked);
      const rec = sid ? this.lookup(sid, caller) : undefined;
      if (!rec) return this.reply(res, denial('session_not_found'));
      rec.lastActive = Date.now();
      await rec.transport.handleRequest(req, res);
      return;
    }
    res.setHeader('allow', 'GET, POST, DELETE');
    return this.reply(res, denial('method_not_allowed'));
  }

  /** The revocation reason of a revoked MCP session (open or already closed) of this caller. */
  private revokedReason(sid: string, caller: string): RevocationReason | undefined {
    const rec = this.sessions.get(sid);
    if (rec && rec.caller === caller && rec.revoked) return rec.revoked;
    return this.tombstone(sid, caller)?.reason;
  }

  private refuseRevoked(res: http.ServerResponse, reason: RevocationReason, id: JsonRpcId = null): void {
    this.metrics.inc('mcp_gateway_revoked_requests_total', { reason });
    this.reply(res, denial(reason), id);
  }

  private lookup(sid: string, caller: string): SessionRec | undefined {
    const rec = this.sessions.get(sid);
    // Another caller's session is indistinguishable from a session that does not exist.
    return rec && !rec.closed && rec.caller === caller ? rec : undefined;
  }

  private openCount(caller: string): number {
    let n = this.pending.get(caller) ?? 0;
    // a revoked session still finishing its in-flight requests does not hold the caller's slot
    for (const s of this.sessions.values()) if (s.caller === caller && !s.revoked) n++;
    return n;
  }

  private async initialize(req: http.IncomingMessage, res: http.ServerResponse, caller: string, body: unknown): Promise<void> {
    const pendingTotal = [...this.pending.values()].reduce((a, b) => a + b, 0);
    if (this.openCount(caller) >= this.maxPerCaller || this.sessions.size + pendingTotal >= this.maxSessions) {
      this.metrics.inc('mcp_gateway_sessions_refused_total');
      return this.reply(res, denial('connection_limit', 'Close an MCP session first.'), (body as { id?: JsonRpcId }).id ?? null);
    }
    this.pending.set(caller, (this.pending.get(caller) ?? 0) + 1);
    let rec: SessionRec | undefined;
    const server = this.buildServer(() => rec);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        rec = { id, handle: `${MCP_SESSION_HANDLE_PREFIX}${randomUUID()}`, caller, transport, server, lastActive: Date.now(), inflight: 0, closed: false };
        this.sessions.set(id, rec);
        this.metrics.inc('mcp_gateway_sessions_opened_total');
        this.events.emit({ type: 'mcp.session_opened', severity: 'info', source: 'mcp-gateway', data: { caller } });
      },
      onsessionclosed: (id) => {
        const r = this.sessions.get(id);
        if (r) void this.closeSession(r, 'mcp_session_deleted');
      },
    });
    transport.onclose = () => {
      if (rec && !rec.closed) void this.closeSession(rec, 'transport_closed');
    };
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res, body);
    } finally {
      const n = (this.pending.get(caller) ?? 1) - 1;
      if (n <= 0) this.pending.delete(caller);
      else this.pending.set(caller, n);
    }
    if (!rec) await server.close().catch(() => undefined);
  }

  private buildServer(session: () => SessionRec | undefined): McpServer {
    const mcp = new McpServer(this.o.serverInfo ?? { name: 'portcullis-mcp-gateway', version: '0.1.0' }, {
      instructions:
        'Tools run in an isolated sandbox that belongs to this MCP session. Network access is limited by policy: call egress_policy to see what is reachable.',
    });
    mcp.server.registerCapabilities({ tools: { listChanged: false } });
    mcp.server.setRequestHandler(ListToolsRequestSchema, () => {
      const rec = session();
      if (!rec) throw new RpcDenial(denial('session_not_found'));
      this.metrics.inc('mcp_gateway_tools_list_total');
      const visible = new Set(toolsVisibleTo(this.o.policy(), rec.caller));
      return { tools: toolDescriptors().filter((t) => visible.has(t.name)).map((t) => ({ ...t, inputSchema: { ...t.inputSchema } })) };
    });
    mcp.server.setRequestHandler(CallToolRequestSchema, async (request) => {
      const rec = session();
      if (!rec) throw new RpcDenial(denial('session_not_found'));
      return this.callTool(rec, request.params.name, request.params.arguments);
    });
    return mcp;
  }

  // -------------------------------------------------------------------------------------------
  // Tools

  private record(rec: SessionRec, tool: string, args: unknown, outcome: ToolOutcome, t0: number, reason?: string): void {
    const durationMs = Math.round((performance.now() - t0) * 1000) / 1000;
    const toolLabel = /^[a-z_]{1,32}$/.test(tool) ? tool : 'unknown';
    this.metrics.inc('mcp_gateway_tool_calls_total', { tool: toolLabel, outcome });
    this.events.emit({
      type: 'mcp.tool_call',
      severity: outcome === 'ok' ? 'info' : 'warning',
      source: 'mcp-gateway',
      ...(rec.sandboxId ? { sessionId: rec.sandboxId } : {}),
      data: { caller: rec.caller, tool: toolLabel, argumentsSha256: argumentDigest(args), outcome, ...(reason ? { reason } : {}), durationMs },
    });
  }

  private async callTool(rec: SessionRec, name: string, rawArgs: unknown): Promise<CallToolResult> {
    const t0 = performance.now();
    rec.lastActive = Date.now();
    if (rec.revoked) {
      // revoked while this request was on its way in: refused before the policy and the supervisor
      this.record(rec, name, rawArgs, 'denied', t0, rec.revoked);
      throw new RpcDenial(denial(rec.revoked));
    }
    const d = decideToolCall(this.o.policy(), rec.caller, name, rawArgs);
    if (!d.allow) {
      this.record(rec, name, rawArgs, d.denial.reason === 'schema_invalid' ? 'invalid' : 'denied', t0, d.denial.reason);
      throw new RpcDenial(d.denial);
    }
    try {
      const result = await this.run(rec, d.tool, d.args);
      this.record(rec, d.tool, rawArgs, 'ok', t0);
      return result;
    } catch (e) {
      if (e instanceof RpcDenial) {
        this.record(rec, d.tool, rawArgs, 'denied', t0, e.data.reason);
        throw e;
      }
      const den = toDenial(e);
      if (den.reason === 'tool_failed') this.log.warn({ tool: d.tool, err: (e as Error)?.message }, 'tool failed');
      this.record(rec, d.tool, rawArgs, den.reason === 'tool_failed' ? 'error' : 'denied', t0, den.reason);
      return deniedToolResult(den);
    }
  }

  /** The session's sandbox, checked against revocation right before the supervisor is called. */
  private async sandboxFor(rec: SessionRec): Promise<string> {
    const id = await this.attachSandbox(rec);
    if (rec.revoked) throw new RpcDenial(denial(rec.revoked));
    return id;
  }

  private async attachSandbox(rec: SessionRec): Promise<string> {
    if (rec.sandboxId) {
      const info = this.o.sandbox.getSession(rec.sandboxId);
      if (!info || info.state === 'destroyed' || info.state === 'destroying') throw publicError('session_expired');
      if (info.state === 'quarantined') throw publicError('session_revoked');
      return rec.sandboxId;
    }
    rec.sandboxPending ??= this.o.sandbox.createSession(rec.caller).then(
      (info) => {
        if (rec.revoked) {
          // revoked (kill-all by handle) while its sandbox was being made: the operator plane never
          // saw this sandbox, so it is not left behind
          if (!this.revokedIds.has(info.sessionId)) void this.o.sandbox.destroySession(info.sessionId, 'mcp_session_revoked').catch(() => undefined);
          throw new RpcDenial(denial(rec.revoked));
        }
        if (rec.closed) {
          void this.o.sandbox.destroySession(info.sessionId, 'mcp_session_closed').catch(() => undefined);
          throw publicError('session_expired');
        }
        rec.sandboxId = info.sessionId;
        const pre = this.revokedIds.get(info.sessionId);
        if (pre) {
          this.revokeRec(rec, pre);
          throw new RpcDenial(denial(pre));
        }
        this.events.emit({ type: 'mcp.sandbox_attached', severity: 'info', source: 'mcp-gateway', sessionId: info.sessionId, data: { caller: rec.caller } });
        return info.sessionId;
      },
      (e: unknown) => {
        rec.sandboxPending = undefined;
        this.log.error({ err: (e as Error)?.message }, 'sandbox session creation failed');
        throw publicError('sandbox_unavailable');
      },
    );
    return rec.sandboxPending;
  }

  private async run(rec: SessionRec, tool: ToolName, args: ToolArgs[ToolName]): Promise<CallToolResult> {
    if (tool === 'egress_policy') return structured({ ...egressView(this.o.policy()) });
    const sb = this.o.sandbox;
    const id = await this.sandboxFor(rec);
    switch (tool) {
      case 'exec': {
        const a = args as ToolArgs['exec'];
        const r = await sb.exec(id, {
          command: a.command,
          ...(a.stdin !== undefined ? { stdin: a.stdin } : {}),
          ...(a.timeoutMs !== undefined ? { timeoutMs: a.timeoutMs } : {}),
          ...(a.cwd !== undefined ? { cwd: a.cwd } : {}),
          maxOutputBytes: this.o.execMaxOutputBytes ?? 1024 * 1024,
        });
        return structured({
          outcome: r.outcome,
          exitCode: r.exitCode,
          stdout: r.stdout,
          stderr: r.stderr,
          ...(r.stdoutTruncated ? { stdoutTruncatedBytes: r.stdoutTruncated.droppedBytes } : {}),
          ...(r.stderrTruncated ? { stderrTruncatedBytes: r.stderrTruncated.droppedBytes } : {}),
          durationMs: r.durationMs,
        });
      }
      case 'read_file': {
        const a = args as ToolArgs['read_file'];
        const r = await sb.readFile(id, a.path, a.maxBytes !== undefined ? { maxBytes: a.maxBytes } : undefined);
        return structured({ path: a.path, content: r.content, encoding: r.encoding, size: r.size });
      }
      case 'write_file': {
        const a = args as ToolArgs['write_file'];
        const r = await sb.writeFile(id, a.path, a.content, a.encoding ? { encoding: a.encoding } : undefined);
        return structured({ path: a.path, size: r.size });
      }
      case 'edit_file': {
        const a = args as ToolArgs['edit_file'];
        const r = await sb.editFile(id, a.path, a.oldString, a.newString, a.replaceAll !== undefined ? { replaceAll: a.replaceAll } : undefined);
        return structured({ path: a.path, replacements: r.replacements });
      }
      case 'list_files': {
        const a = args as ToolArgs['list_files'];
        const entries = await sb.listFiles(id, a.path);
        return structured({ path: a.path, entries });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Session lifecycle

  private sweep(): void {
    const now = Date.now();
    for (const [id, t] of this.tombstones) if (t.until < now) this.tombstones.delete(id);
    for (const s of this.sessions.values()) {
      if (!s.closed && s.inflight === 0 && now - s.lastActive > this.idleMs) void this.closeSession(s, 'mcp_session_idle');
    }
  }

  private async closeSession(rec: SessionRec, reason: string): Promise<void> {
    if (rec.closed) return;
    rec.closed = true;
    this.sessions.delete(rec.id);
    this.metrics.inc('mcp_gateway_sessions_closed_total', { reason });
    this.events.emit({
      type: 'mcp.session_closed',
      severity: 'info',
      source: 'mcp-gateway',
      ...(rec.sandboxId ? { sessionId: rec.sandboxId } : {}),
      data: { caller: rec.caller, reason },
    });
    await rec.transport.close().catch(() => undefined);
    await rec.server.close().catch(() => undefined);
    // a revoked session's sandbox is the operator plane's (kill destroys it, quarantine keeps it)
    if (rec.revoked) return;
    const id = rec.sandboxId ?? (rec.sandboxPending ? await rec.sandboxPending.catch(() => undefined) : undefined);
    if (id) {
      try {
        await this.o.sandbox.destroySession(id, reason);
      } catch (e) {
        this.log.warn({ err: (e as Error)?.message, reason }, 'sandbox session destroy failed');
      }
    }
  }
}

function structured(data: Record<string, unknown>): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(data) }], structuredContent: data };
}

function publicError(reason: 'session_expired' | 'session_revoked' | 'sandbox_unavailable'): Error {
  return new PublicDenial(denial(reason));
}

async function readBody(req: http.IncomingMessage, max: number): Promise<Buffer | 'too_large'> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    req.resume();
    return 'too_large';
  }
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    const b = c as Buffer;
    n += b.length;
    if (n > max) {
      req.resume();
      return 'too_large';
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}
