import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { PortcullisError } from '../../common/errors.js';
import {
  agentMac,
  CappedBuffer,
  encodeFrame,
  encodeJson,
  FrameDecoder,
  FrameType,
  hostMac,
  macEqual,
  MAX_FRAME,
  PROTOCOL_VERSION,
  type Frame,
} from './protocol.js';

/**
 * Host side of the agent channel. The host dials the agent on the sandbox's session-network address
 * (the guest only listens), authenticates with the sandbox's channel key, sends one request per
 * connection. Nothing the agent sends can make the host buffer more than the caller's caps: output
 * beyond the per-stream cap is counted and dropped, frames are bounded, file reads stop at maxBytes.
 */

export interface AgentEndpoint {
  host: string;
  port: number;
}

export interface AgentHello {
  version: number;
  pid: number;
  uid: number;
  release: string;
  sysname: string;
}

export interface AgentExecRequest {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  timeoutMs: number;
  stdin?: Buffer;
}

export type ExecOutcome = 'exited' | 'timed_out' | 'killed' | 'oom';

export interface AgentExecResult {
  outcome: ExecOutcome;
  exitCode: number | null;
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
  /** bytes produced beyond the cap (agent's count of what it produced minus what the host kept, and anything the host dropped) */
  stdoutDropped: number;
  stderrDropped: number;
  durationMs: number;
}

export class AgentError extends PortcullisError {
  constructor(
    readonly kind: 'connect' | 'auth' | 'protocol' | 'timeout' | 'closed' | 'remote',
    message: string,
    readonly remoteCode?: string,
  ) {
    super(kind === 'remote' ? 'file_error' : 'agent_protocol', message, {
      publicMessage: kind === 'remote' ? message : 'sandbox agent unavailable',
      details: { kind, ...(remoteCode ? { remoteCode } : {}) },
    });
  }
}

type FrameHandler = (f: Frame) => void;

/** One authenticated connection. */
class Channel {
  private readonly decoder = new FrameDecoder(MAX_FRAME);
  private readonly queue: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void; timer: NodeJS.Timeout | undefined } | undefined;
  private failure: Error | undefined;
  private handler: FrameHandler | undefined;
  private closeListeners: ((e: Error) => void)[] = [];

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (e) {
        this.fail(new AgentError('protocol', (e as Error).message));
        socket.destroy();
        return;
      }
      for (const f of frames) this.deliver(f);
    });
    socket.on('error', (e) => this.fail(new AgentError('closed', `agent connection: ${e.message}`)));
    socket.on('close', () => this.fail(new AgentError('closed', 'agent closed the connection')));
  }

  static connect(ep: AgentEndpoint, timeoutMs: number): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: ep.host, port: ep.port, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AgentError('connect', `connect to the agent timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Channel(socket));
      });
      socket.once('error', (e) => {
        clearTimeout(timer);
        reject(new AgentError('connect', `connect to the agent: ${e.message}`));
      });
    });
  }

  private deliver(f: Frame): void {
    if (this.handler) {
      this.handler(f);
      return;
    }
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      if (w.timer) clearTimeout(w.timer);
      w.resolve(f);
      return;
    }
    if (this.queue.length > 64) {
      this.fail(new AgentError('protocol', 'agent sent frames nobody asked for'));
      this.socket.destroy();
      return;
    }
    this.queue.push(f);
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      if (w.timer) clearTimeout(w.timer);
      w.reject(e);
    }
    for (const l of this.closeListeners) l(e);
  }

  onClose(l: (e: Error) => void): void {
    if (this.failure) l(this.failure);
    else this.closeListeners.push(l);
  }

  next(timeoutMs: number): Promise<Frame> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.waiter = undefined;
              reject(new AgentError('timeout', `agent did not answer within ${timeoutMs} ms`));
            }, timeoutMs)
          : undefined;
      this.waiter = { resolve, reject, timer };
    });
  }

  async nextJson(timeoutMs: number): Promise<Record<string, unknown>> {
    const f = await this.next(timeoutMs);
    if (f.type !== FrameType.json) throw new AgentError('protocol', `expected a JSON frame, got type ${f.type}`);
    try {
      const v: unknown = JSON.parse(f.payload.toString('utf8'));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
      return v as Record<string, unknown>;
    } catch (e) {
      throw new AgentError('protocol', `bad JSON frame: ${(e as Error).message}`);
    }
  }

  /** Switches to streaming: every further frame goes to `h` (queued ones first). */
  stream(h: FrameHandler): void {
    this.handler = h;
    for (const f of this.queue.splice(0)) h(f);
  }

  write(buf: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.socket.write(buf)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (e?: Error): void => {
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        if (e) reject(e);
        else resolve();
      };
      const onDrain = (): void => done();
      const onClose = (): void => done(this.failure ?? new AgentError('closed', 'agent closed the connection'));
      this.socket.on('drain', onDrain);
      this.socket.on('close', onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

function remoteError(msg: Record<string, unknown>): AgentError {
  const code = typeof msg.code === 'string' ? msg.code : 'error';
  const text = typeof msg.message === 'string' ? msg.message.slice(0, 300) : code;
  return new AgentError('remote', text, code);
}

export interface AgentClientOptions {
  connectTimeoutMs?: number;
  /** handshake and simple requests */
  requestTimeoutMs?: number;
}

export class AgentClient {
  private key: Buffer;
  private readonly connectTimeoutMs: number;
  private readonly requestTimeoutMs: number;

  constructor(
    readonly endpoint: AgentEndpoint,
    key: Buffer,
    opts: AgentClientOptions = {},
  ) {
    this.key = Buffer.from(key);
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 3_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
  }

  /** Another client with the same endpoint and the current key. */
  clone(): AgentClient {
    return new AgentClient(this.endpoint, this.key, { connectTimeoutMs: this.connectTimeoutMs, requestTimeoutMs: this.requestTimeoutMs });
  }

  private async open(request: Record<string, unknown>, timeoutMs = this.requestTimeoutMs): Promise<Channel> {
    const ch = await Channel.connect(this.endpoint, Math.min(this.connectTimeoutMs, timeoutMs));
    try {
      const hello = await ch.nextJson(timeoutMs);
      if (hello.t !== 'hello' || hello.v !== PROTOCOL_VERSION || typeof hello.nonce !== 'string') throw new AgentError('protocol', 'bad hello');
      const agentNonce = Buffer.from(hello.nonce, 'base64');
      if (agentNonce.length !== 32) throw new AgentError('protocol', 'bad agent nonce');
      const hostNonce = randomBytes(32);
      await ch.write(encodeJson({ t: 'auth', nonce: hostNonce.toString('base64'), mac: hostMac(this.key, agentNonce, hostNonce) }));
      let ok: Record<string, unknown>;
      try {
        ok = await ch.nextJson(timeoutMs);
      } catch (e) {
        if (e instanceof AgentError && e.kind === 'closed') throw new AgentError('auth', 'agent refused the channel key');
        throw e;
      }
      if (ok.t !== 'ok' || typeof ok.mac !== 'string' || !macEqual(ok.mac, agentMac(this.key, hostNonce, agentNonce))) {
        throw new AgentError('auth', 'agent failed to prove the channel key');
      }
      await ch.write(encodeJson(request));
      return ch;
    } catch (e) {
      ch.close();
      throw e;
    }
  }

  private async simple(request: Record<string, unknown>, timeoutMs = this.requestTimeoutMs): Promise<Record<string, unknown>> {
    const ch = await this.open(request, timeoutMs);
    try {
      const r = await ch.nextJson(timeoutMs);
      if (r.t === 'error') throw remoteError(r);
      if (r.t !== 'result') throw new AgentError('protocol', `unexpected '${String(r.t)}'`);
      return r;
    } finally {
      ch.close();
    }
  }

  async ping(timeoutMs?: number): Promise<AgentHello> {
    const r = await this.simple({ op: 'ping' }, timeoutMs);
    return { version: Number(r.version), pid: Number(r.pid), uid: Number(r.uid), release: String(r.release), sysname: String(r.sysname) };
  }

  /** Polls until the agent answers (it starts with the sandbox). */
  async waitReady(deadlineMs: number): Promise<AgentHello> {
    const end = Date.now() + deadlineMs;
    let last: unknown;
    for (;;) {
      try {
        return await this.ping(Math.max(200, Math.min(2_000, end - Date.now())));
      } catch (e) {
        last = e;
        if (e instanceof AgentError && e.kind === 'auth') throw e;
      }
      if (Date.now() >= end) throw new AgentError('timeout', `agent not ready after ${deadlineMs} ms: ${(last as Error)?.message ?? ''}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async configure(sessionEnv: Record<string, string>): Promise<void> {
    await this.simple({ op: 'configure', sessionEnv });
  }

  /** Replaces the channel key in the agent, then here. The old key stops working at once. */
  async rekey(newKey: Buffer): Promise<void> {
    await this.simple({ op: 'rekey', key: newKey.toString('base64') });
    this.key = Buffer.from(newKey);
  }

  async resolve(path: string): Promise<{ canonical: string; exists: boolean; type: string | null; size: number }> {
    const r = await this.simple({ op: 'resolve', path });
    return { canonical: String(r.canonical), exists: r.exists === true, type: typeof r.type === 'string' ? r.type : null, size: Number(r.size) || 0 };
  }

  async read(path: string, maxBytes: number): Promise<Buffer> {
    const ch = await this.open({ op: 'read', path, maxBytes });
    try {
      const head = await ch.nextJson(this.requestTimeoutMs);
      if (head.t === 'error') throw remoteError(head);
      if (head.t !== 'file') throw new AgentError('protocol', 'expected a file header');
      const parts: Buffer[] = [];
      let size = 0;
      for (;;) {
        const f = await ch.next(this.requestTimeoutMs);
        if (f.type === FrameType.data) {
          size += f.payload.length;
          if (size > maxBytes) throw new AgentError('remote', 'file larger than the limit', 'too_large');
          parts.push(f.payload);
        } else if (f.type === FrameType.dataEnd) {
          break;
        } else if (f.type === FrameType.json) {
          const m = JSON.parse(f.payload.toString('utf8')) as Record<string, unknown>;
          if (m.t === 'error') throw remoteError(m);
          throw new AgentError('protocol', 'unexpected JSON during file data');
        } else {
          throw new AgentError('protocol', `unexpected frame ${f.type} during file data`);
        }
      }
      const done = await ch.nextJson(this.requestTimeoutMs);
      if (done.t === 'error') throw remoteError(done);
      return Buffer.concat(parts, size);
    } finally {
      ch.close();
    }
  }

  async write(path: string, data: Buffer, opts: { mkdirs?: boolean; ifSha256?: string; maxBytes: number }): Promise<number> {
    const ch = await this.open({ op: 'write', path, mkdirs: opts.mkdirs ?? false, maxBytes: opts.maxBytes, ...(opts.ifSha256 ? { ifSha256: opts.ifSha256 } : {}) });
    try {
      const answer = ch.nextJson(this.requestTimeoutMs + Math.ceil(data.length / 1_000_000) * 1_000);
      answer.catch(() => undefined);
      try {
        for (let off = 0; off < data.length; off += 256 * 1024) await ch.write(encodeFrame(FrameType.data, data.subarray(off, off + 256 * 1024)));
        await ch.write(encodeFrame(FrameType.dataEnd));
      } catch {
        // the agent may have refused early and closed; its answer says why
      }
      const r = await answer;
      if (r.t === 'error') throw remoteError(r);
      return Number(r.size);
    } finally {
      ch.close();
    }
  }

  async list(path: string, max: number): Promise<{ entries: { name: string; type: string; size: number }[]; truncated: boolean }> {
    const r = await this.simple({ op: 'list', path, max });
    const entries = Array.isArray(r.entries) ? (r.entries as { name: string; type: string; size: number }[]).slice(0, max) : [];
    return { entries, truncated: r.truncated === true };
  }

  async scrub(paths: string[], timeoutMs: number): Promise<{ stopped: number; files: number; bytes: number }> {
    const r = await this.simple({ op: 'scrub', paths }, timeoutMs);
    return { stopped: Number(r.stopped) || 0, files: Number(r.files) || 0, bytes: Number(r.bytes) || 0 };
  }

  /**
   * Runs a command. Output beyond `maxOutputBytes` per stream is dropped here whatever the agent
   * sends. If no exit arrives within timeoutMs + graceMs the connection is closed (the agent then kills
   * the command) and an AgentError('timeout') is thrown.
   */
  async exec(req: AgentExecRequest, opts: { maxOutputBytes: number; graceMs?: number; signal?: AbortSignal }): Promise<AgentExecResult> {
    const ch = await this.open({
      op: 'exec',
      argv: req.argv,
      cwd: req.cwd,
      env: req.env,
      timeoutMs: req.timeoutMs,
      maxOutputBytes: opts.maxOutputBytes,
      stdin: req.stdin !== undefined,
    });
    const out = new CappedBuffer(opts.maxOutputBytes);
    const err = new CappedBuffer(opts.maxOutputBytes);
    try {
      const exit = await new Promise<Record<string, unknown>>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new AgentError('timeout', `no exit from the agent within ${req.timeoutMs + (opts.graceMs ?? 5_000)} ms`)),
          req.timeoutMs + (opts.graceMs ?? 5_000),
        );
        const finish = (fn: () => void): void => {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          fn();
        };
        const onAbort = (): void => {
          void ch.write(encodeJson({ t: 'cancel' })).catch(() => undefined);
        };
        opts.signal?.addEventListener('abort', onAbort);
        ch.onClose((e) => finish(() => reject(e)));
        ch.stream((f) => {
          if (f.type === FrameType.stdout) out.push(f.payload);
          else if (f.type === FrameType.stderr) err.push(f.payload);
          else if (f.type === FrameType.json) {
            let m: Record<string, unknown>;
            try {
              m = JSON.parse(f.payload.toString('utf8')) as Record<string, unknown>;
            } catch {
              finish(() => reject(new AgentError('protocol', 'bad JSON frame')));
              return;
            }
            if (m.t === 'exit') finish(() => resolve(m));
            else if (m.t === 'error') finish(() => reject(remoteError(m)));
          } else {
            finish(() => reject(new AgentError('protocol', `unexpected frame ${f.type}`)));
          }
        });
        if (req.stdin !== undefined) {
          const stdin = req.stdin;
          void (async () => {
            for (let off = 0; off < stdin.length; off += 64 * 1024) await ch.write(encodeFrame(FrameType.stdin, stdin.subarray(off, off + 64 * 1024)));
            await ch.write(encodeFrame(FrameType.stdinEof));
          })().catch(() => undefined);
        }
      });
      const outcome = (['exited', 'timed_out', 'killed', 'oom'] as const).find((o) => o === exit.outcome);
      if (!outcome) throw new AgentError('protocol', 'exit without a known outcome');
      const produced = (v: unknown): number => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : 0);
      const exitCode = typeof exit.exitCode === 'number' && Number.isInteger(exit.exitCode) ? exit.exitCode : null;
      return {
        outcome,
        exitCode: outcome === 'exited' ? exitCode : null,
        signal: typeof exit.signal === 'number' ? exit.signal : null,
        stdout: out.toBuffer(),
        stderr: err.toBuffer(),
        stdoutDropped: Math.max(out.dropped, produced(exit.stdoutBytes) - out.size),
        stderrDropped: Math.max(err.dropped, produced(exit.stderrBytes) - err.size),
        durationMs: produced(exit.durationMs),
      };
    } finally {
      ch.close();
    }
  }
}
