import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient, AgentError } from './client.js';
import { agentMac, encodeFrame, encodeJson, FrameDecoder, FrameType, hostMac } from './protocol.js';

/**
 * A stand-in agent on loopback, for what the real one never does: a wrong key, floods, over-size
 * frames, silence. (The real agent is exercised by the e2e suites.)
 */
interface FakeOptions {
  key: Buffer;
  /** after authentication, given the request and the socket */
  onRequest: (req: Record<string, unknown>, sock: net.Socket) => void;
  /** answer with a MAC under this key instead */
  proveWith?: Buffer;
  /** frames after the request */
  onFrame?: (f: { type: number; payload: Buffer }, sock: net.Socket) => void;
}

const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function fakeAgent(o: FakeOptions): Promise<{ port: number; sockets: net.Socket[] }> {
  const sockets: net.Socket[] = [];
  const srv = net.createServer((sock) => {
    sockets.push(sock);
    sock.on('error', () => undefined);
    const nonce = randomBytes(32);
    const dec = new FrameDecoder();
    let stage = 0;
    sock.write(encodeJson({ t: 'hello', v: 1, nonce: nonce.toString('base64') }));
    sock.on('data', (chunk) => {
      for (const f of dec.push(chunk)) {
        if (stage === 2) {
          o.onFrame?.(f, sock);
          continue;
        }
        if (f.type !== FrameType.json) continue;
        const m = JSON.parse(f.payload.toString()) as Record<string, unknown>;
        if (stage === 0) {
          const hostNonce = Buffer.from(String(m.nonce), 'base64');
          if (m.mac !== hostMac(o.key, nonce, hostNonce)) {
            sock.destroy();
            return;
          }
          sock.write(encodeJson({ t: 'ok', mac: agentMac(o.proveWith ?? o.key, hostNonce, nonce) }));
          stage = 1;
        } else if (stage === 1) {
          stage = 2;
          o.onRequest(m, sock);
        }
      }
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { port: (srv.address() as net.AddressInfo).port, sockets };
}

const KEY = randomBytes(32);
const exitFrame = (extra: Record<string, unknown> = {}) => encodeJson({ t: 'exit', outcome: 'exited', exitCode: 0, signal: null, stdoutBytes: 0, stderrBytes: 0, durationMs: 1, ...extra });
const execReq = { argv: ['x'], cwd: '/workspace', env: {}, timeoutMs: 1_000 };

async function kindOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return e instanceof AgentError ? e.kind : `other: ${(e as Error).message}`;
  }
}

describe('AgentClient authentication', () => {
  it('works with the right key', async () => {
    const a = await fakeAgent({ key: KEY, onRequest: (_r, s) => s.end(encodeJson({ t: 'result', version: 1, pid: 1, uid: 10001, release: 'r', sysname: 'Linux' })) });
    const hello = await new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).ping();
    expect(hello.uid).toBe(10001);
  });

  it('fails when the agent does not know the key (the host never sends a request)', async () => {
    let requested = false;
    const a = await fakeAgent({ key: KEY, proveWith: randomBytes(32), onRequest: () => (requested = true) });
    expect(await kindOf(new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).ping())).toBe('auth');
    expect(requested).toBe(false);
  });

  it('fails when the host does not know the key', async () => {
    const a = await fakeAgent({ key: randomBytes(32), onRequest: () => undefined });
    expect(await kindOf(new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).ping())).toBe('auth');
  });

  it('rekey switches the key used for later connections', async () => {
    const next = randomBytes(32);
    let current = KEY;
    const srv = await fakeAgent({
      key: KEY,
      onRequest: (r, s) => {
        if (r.op === 'rekey') current = Buffer.from(String(r.key), 'base64');
        s.end(encodeJson({ t: 'result', ok: true }));
      },
    });
    const c = new AgentClient({ host: '127.0.0.1', port: srv.port }, KEY);
    await c.rekey(next);
    expect(current.equals(next)).toBe(true);
    // the stand-in still only knows KEY: the client now fails to authenticate to it
    expect(await kindOf(c.ping())).toBe('auth');
  });
});

describe('AgentClient exec bounds (NFR-SEC-74)', () => {
  it('keeps at most the cap whatever the agent sends, and counts the rest', async () => {
    // one frame object written over and over: the stand-in itself allocates nothing per MiB
    const frame = encodeFrame(FrameType.stdout, Buffer.alloc(1 << 20, 0x61));
    const floodMiB = 256;
    const a = await fakeAgent({
      key: KEY,
      onRequest: (_r, s) => {
        let i = 0;
        const pump = (): void => {
          while (i < floodMiB) {
            i++;
            if (!s.write(frame)) {
              s.once('drain', pump);
              return;
            }
          }
          s.end(exitFrame({ stdoutBytes: floodMiB << 20 }));
        };
        pump();
      },
    });
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 5);
    const r = await new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).exec(execReq, { maxOutputBytes: 1 << 20 });
    clearInterval(sampler);
    expect(r.stdout.length).toBe(1 << 20);
    expect(r.stdoutDropped).toBe((floodMiB - 1) << 20);
    // received chunks are garbage as soon as they are counted: far below the flood
    expect(peak - before).toBeLessThan(floodMiB * (1 << 20) / 2);
  });

  it('never reports a negative or absurd dropped count from a lying agent', async () => {
    const a = await fakeAgent({ key: KEY, onRequest: (_r, s) => s.end(Buffer.concat([encodeFrame(FrameType.stdout, Buffer.from('hi')), exitFrame({ stdoutBytes: -5, stderrBytes: 'x' })])) });
    const r = await new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).exec(execReq, { maxOutputBytes: 1024 });
    expect(r.stdout.toString()).toBe('hi');
    expect(r.stdoutDropped).toBe(0);
    expect(r.stderrDropped).toBe(0);
  });

  it('refuses an over-size frame announcement', async () => {
    const a = await fakeAgent({
      key: KEY,
      onRequest: (_r, s) => {
        const head = Buffer.alloc(5);
        head.writeUInt32BE(0x7fffffff, 0);
        head.writeUInt8(FrameType.stdout, 4);
        s.write(head);
      },
    });
    expect(await kindOf(new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).exec(execReq, { maxOutputBytes: 1024 }))).toBe('protocol');
  });

  it('gives up on a silent agent after timeout + grace and closes the channel', async () => {
    const a = await fakeAgent({ key: KEY, onRequest: () => undefined });
    const c = new AgentClient({ host: '127.0.0.1', port: a.port }, KEY);
    expect(await kindOf(c.exec({ ...execReq, timeoutMs: 50 }, { maxOutputBytes: 1024, graceMs: 50 }))).toBe('timeout');
    await new Promise((r) => setTimeout(r, 50));
    expect(a.sockets.every((s) => s.destroyed || s.readableEnded)).toBe(true);
  });

  it('sends stdin and EOF, passes cancel', async () => {
    let got = Buffer.alloc(0);
    const a = await fakeAgent({
      key: KEY,
      onRequest: (r) => expect(r.stdin).toBe(true),
      onFrame: (f, s) => {
        if (f.type === FrameType.stdin) got = Buffer.concat([got, f.payload]);
        if (f.type === FrameType.stdinEof) s.end(exitFrame({ stdoutBytes: 0 }));
      },
    });
    const big = randomBytes(300_000);
    const r = await new AgentClient({ host: '127.0.0.1', port: a.port }, KEY).exec({ ...execReq, stdin: big }, { maxOutputBytes: 1024 });
    expect(r.outcome).toBe('exited');
    expect(got.equals(big)).toBe(true);
  });
});
