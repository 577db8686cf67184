/**
 * A tiny HTTP / HTTPS echo upstream for e2e tests, run as its own process (usually inside a test
 * network namespace; start it with `startUpstream` from ./upstream.ts):
 *
 *   ip netns exec <ns> node --import tsx test/harness/upstream-server.ts --port 443 --cert c.pem --key k.pem
 *
 * Options: --port N (0 = any; the chosen port is printed)  --host ADDR (default 0.0.0.0)
 *          --cert FILE --key FILE (HTTPS; without them plain HTTP)  --client-ca FILE (request client
 *          certificates, verified against FILE)  --h2 (offer h2 and http/1.1 by ALPN)  --name LABEL
 *          --one-way-delay-ms D (default 0: off; see below)
 *
 * `--one-way-delay-ms D` emulates network distance between this upstream and everything else (the
 * kernel here has no netem): every chunk of bytes received on an accepted TCP connection reaches the
 * TLS/HTTP stack D ms after it arrived, and every chunk the stack writes goes on the wire D ms after it
 * was written — a delay line per direction, in order, FIN (and a reset) after the data, no bandwidth
 * limit, no reordering, like netem's `delay D` on the upstream's link. A TLS 1.3 handshake then costs one
 * more round trip (2·D), and so does each request/response. The TCP handshake itself is NOT delayed (the
 * kernel completes it before the process sees the connection), so a new connection is one RTT cheaper
 * than over a real network: that under-counts the direct path's cost, i.e. it is conservative for a
 * proxy compared against it (a proxy's fixed cost shows as a larger share than a real network's would
 * make it). The delayed connection's TLS/HTTP stack runs over a JS stream (Node's JSStreamSocket), not
 * the socket directly; measured on 127.0.0.1, each crossing costs ~1 ms more than D (timer slack ~0.4 ms,
 * the rest the JS stream), on every client's path alike. The `listening` event reports `oneWayDelayMs`.
 *
 * Every request is answered with JSON `{ name, method, url, httpVersion, headers, sni, tlsVersion, alpn,
 * clientCert, remoteAddress, bodyBytes, body }`. Paths: `/bytes/N` answers N bytes instead;
 * `?status=NNN` sets the status code; `?delay=MS` answers after MS milliseconds (≤ 10 s: an endpoint that
 * takes time to answer, for latency benchmarks); `?close=1` answers with `Connection: close` and closes
 * the connection (HTTP/1.1), so a proxy cannot keep it for the next request.
 *
 * stdout: one JSON line per event — `listening`, `connection`, `tls` (handshake done), `tlsError`,
 * `request`, `close`. The process exits on SIGTERM/SIGINT and when its stdin closes (its parent died).
 */
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { Duplex } from 'node:stream';
import type tls from 'node:tls';

interface Args {
  port: number;
  host: string;
  cert?: string;
  key?: string;
  clientCa?: string;
  h2: boolean;
  name: string;
  oneWayDelayMs: number;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { port: -1, host: '0.0.0.0', h2: false, name: 'upstream', oneWayDelayMs: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    switch (k) {
      case '--port': a.port = Number(v()); break;
      case '--host': a.host = v(); break;
      case '--cert': a.cert = v(); break;
      case '--key': a.key = v(); break;
      case '--client-ca': a.clientCa = v(); break;
      case '--h2': a.h2 = true; break;
      case '--name': a.name = v(); break;
      case '--one-way-delay-ms': a.oneWayDelayMs = Number(v()); break;
      default: throw new Error(`unknown argument ${k}`);
    }
  }
  if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) throw new Error('--port N is required (0..65535)');
  if ((a.cert === undefined) !== (a.key === undefined)) throw new Error('--cert and --key go together');
  if (!Number.isFinite(a.oneWayDelayMs) || a.oneWayDelayMs < 0 || a.oneWayDelayMs > 10_000) throw new Error('--one-way-delay-ms D: 0..10000');
  return a;
}

const MAX_ECHO_BODY = 64 * 1024;
const MAX_BYTES = 256 * 1024 * 1024;

function emit(obj: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ ts: Date.now(), ...obj }) + '\n');
}

/**
 * Runs actions in order, each `delayMs` after it was queued: one queue per direction, with at most one
 * pending timer (not one per chunk), so under load the delay stays close to `delayMs` (a timer that
 * fires late runs everything due by then; one that fires early is re-armed for the rest).
 */
class DelayQueue {
  private readonly q: Array<{ at: number; run: () => void }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly delayMs: number) {}

  push(run: () => void): void {
    this.q.push({ at: performance.now() + this.delayMs, run });
    if (!this.timer) this.arm();
  }

  private arm(): void {
    const next = this.q[0];
    if (next) this.timer = setTimeout(this.fire, Math.max(1, next.at - performance.now()));
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    const now = performance.now();
    let due = 0;
    while (due < this.q.length && this.q[due]!.at <= now) due++;
    // (actions queued by these actions land after them, in order)
    for (const { run } of this.q.splice(0, due)) run();
    if (!this.timer) this.arm();
  };
}

/** Bytes the stack may have written but not yet on the wire before its writes wait (a generous window). */
const DELAY_WINDOW_BYTES = 8 * 1024 * 1024;

/**
 * A delay line per direction between an accepted TCP connection (`raw`) and the server's TLS/HTTP
 * stack, which is handed this Duplex instead of the socket (see `--one-way-delay-ms`). Inbound: each
 * chunk, then the peer's FIN, reset or close, `delayMs` after it arrived. Outbound: each written chunk,
 * then our FIN / close, `delayMs` after the stack wrote it.
 */
class DelayLine extends Duplex {
  private readonly inbound: DelayQueue;
  private readonly outbound: DelayQueue;
  private inboundEnded = false;
  /** written by the stack, not yet handed to the socket */
  private inFlight = 0;
  private blockedWrite: (() => void) | undefined;

  constructor(
    readonly raw: net.Socket,
    delayMs: number,
  ) {
    // like an accepted socket (allowHalfOpen false): the readable side's end ends the writable side
    super({ allowHalfOpen: false });
    this.inbound = new DelayQueue(delayMs);
    this.outbound = new DelayQueue(delayMs);
    raw.on('data', (c: Buffer) =>
      this.inbound.push(() => {
        if (!this.destroyed && !this.inboundEnded && !this.push(c)) raw.pause();
      }),
    );
    raw.on('end', () =>
      this.inbound.push(() => {
        if (this.destroyed || this.inboundEnded) return;
        this.inboundEnded = true;
        this.push(null);
      }),
    );
    raw.on('error', (e) => this.inbound.push(() => this.destroy(e)));
    raw.on('close', () => {
      this.releaseWriter(true);
      // closed without a FIN (reset, or destroyed here): the stack learns it after the delay
      this.inbound.push(() => {
        if (!this.inboundEnded) this.destroy();
      });
    });
    raw.on('drain', () => this.releaseWriter());
    raw.on('timeout', () => this.emit('timeout'));
  }

  override _read(): void {
    this.raw.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.inFlight += chunk.length;
    this.outbound.push(() => {
      this.inFlight -= chunk.length;
      if (this.raw.writable) this.raw.write(chunk);
      this.releaseWriter();
    });
    if (this.inFlight + this.raw.writableLength < DELAY_WINDOW_BYTES) cb();
    else this.blockedWrite = () => cb();
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.outbound.push(() => {
      if (this.raw.writable) this.raw.end();
    });
    cb();
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    // whatever is still on its way goes out first, then the FIN, then the socket is closed
    this.outbound.push(() => {
      const raw = this.raw;
      if (raw.destroyed) return;
      if (raw.writable) raw.end();
      if (raw.writableFinished) raw.destroy();
      else raw.once('finish', () => raw.destroy());
    });
    cb(err);
  }

  private releaseWriter(force = false): void {
    const w = this.blockedWrite;
    if (w && (force || this.inFlight + this.raw.writableLength < DELAY_WINDOW_BYTES)) {
      this.blockedWrite = undefined;
      w();
    }
  }

  // what the HTTP server calls on its connection (plain HTTP: this Duplex is the request's socket)
  setNoDelay(noDelay?: boolean): this {
    this.raw.setNoDelay(noDelay);
    return this;
  }

  setKeepAlive(enable?: boolean, initialDelay?: number): this {
    this.raw.setKeepAlive(enable, initialDelay);
    return this;
  }

  setTimeout(ms: number, cb?: () => void): this {
    this.raw.setTimeout(ms);
    if (cb) this.once('timeout', cb);
    return this;
  }

  get remoteAddress(): string | undefined {
    return this.raw.remoteAddress;
  }

  get remotePort(): number | undefined {
    return this.raw.remotePort;
  }
}

/**
 * The accepted TCP socket behind a delayed connection's socket as the stack sees it: the DelayLine
 * itself (plain HTTP), or a TLS / HTTP/2 socket over it, reached through Node's JSStreamSocket wrapper
 * (`.stream`; for TLS via the TLS handle's `_parentWrap` — Node internals, used only with the delay).
 */
function tcpOf(s: unknown): net.Socket | undefined {
  let x = s as { stream?: unknown; _handle?: { _parentWrap?: unknown } | null } | null | undefined;
  for (let i = 0; i < 4 && x; i++) {
    if (x instanceof DelayLine) return x.raw;
    x = (x.stream ?? x._handle?._parentWrap) as typeof x;
  }
  return undefined;
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const tlsOn = args.cert !== undefined;
  let nextId = 1;
  // Connection ids by "address:port" of the peer: the raw socket of `connection` and the TLS socket of
  // `secureConnection` / the request's socket are different objects.
  const ids = new Map<string, number>();
  const delayed = args.oneWayDelayMs > 0;
  /** the TCP connection's socket (with the delay line, the stack's sockets are not it) */
  const tcp = (s: net.Socket): net.Socket => (delayed ? tcpOf(s) ?? s : s);
  const peerKey = (s: net.Socket): string => {
    const t = tcp(s);
    return `${t.remoteAddress}:${t.remotePort}`;
  };

  const onRequest = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse): void => {
    const chunks: Buffer[] = [];
    let bodyBytes = 0;
    req.on('data', (c: Buffer) => {
      if (bodyBytes < MAX_ECHO_BODY) chunks.push(c);
      bodyBytes += c.length;
    });
    req.on('end', () => {
      const sock = req.socket as tls.TLSSocket;
      const peer = peerKey(sock);
      const cert = tlsOn && typeof sock.getPeerCertificate === 'function' ? sock.getPeerCertificate() : undefined;
      const seen = {
        name: args.name,
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        sni: tlsOn ? sock.servername || null : null,
        tlsVersion: tlsOn ? sock.getProtocol?.() ?? null : null,
        alpn: tlsOn ? sock.alpnProtocol || null : null,
        clientCert: cert && Object.keys(cert).length > 0 ? { subject: cert.subject, serialNumber: cert.serialNumber } : null,
        remoteAddress: tcp(sock).remoteAddress ?? null,
        bodyBytes,
        body: Buffer.concat(chunks).subarray(0, MAX_ECHO_BODY).toString('utf8'),
      };
      emit({ event: 'request', conn: ids.get(peer) ?? null, ...seen });
      const u = new URL(req.url ?? '/', 'http://x');
      const status = Number(u.searchParams.get('status') ?? 200);
      const m = /^\/bytes\/(\d+)$/.exec(u.pathname);
      if (m) {
        const n = Math.min(Number(m[1]), MAX_BYTES);
        res.writeHead(status, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
        const block = Buffer.alloc(64 * 1024, 0x78);
        let left = n;
        const pump = (): void => {
          while (left > 0) {
            const part = block.subarray(0, Math.min(left, block.length));
            left -= part.length;
            if (!(res as http.ServerResponse).write(part)) {
              (res as http.ServerResponse).once('drain', pump);
              return;
            }
          }
          res.end();
        };
        pump();
        return;
      }
      const body = JSON.stringify(seen);
      const close = u.searchParams.get('close') === '1' && req.httpVersionMajor === 1;
      const answer = (): void => {
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...(close ? { connection: 'close' } : {}) });
        res.end(body);
      };
      const delay = Math.min(Math.max(Number(u.searchParams.get('delay') ?? 0) || 0, 0), 10_000);
      if (delay > 0) setTimeout(answer, delay);
      else answer();
    });
  };

  let server: net.Server;
  if (tlsOn) {
    const tlsOpts: tls.TlsOptions = {
      cert: fs.readFileSync(args.cert as string),
      key: fs.readFileSync(args.key as string),
      ...(args.clientCa ? { ca: fs.readFileSync(args.clientCa), requestCert: true, rejectUnauthorized: true } : {}),
    };
    server = args.h2
      ? http2.createSecureServer({ ...tlsOpts, allowHTTP1: true }, onRequest)
      : https.createServer({ ...tlsOpts, ALPNProtocols: ['http/1.1'] }, onRequest);
    server.on('secureConnection', (s: tls.TLSSocket) => {
      emit({
        event: 'tls',
        conn: ids.get(peerKey(s)) ?? null,
        sni: s.servername || null,
        tlsVersion: s.getProtocol(),
        alpn: s.alpnProtocol || null,
        cipher: s.getCipher()?.name ?? null,
      });
    });
    server.on('tlsClientError', (err: Error, s: tls.TLSSocket) => {
      emit({ event: 'tlsError', conn: ids.get(peerKey(s)) ?? null, message: err.message, code: (err as NodeJS.ErrnoException).code ?? null });
    });
  } else {
    server = args.h2 ? http2.createServer(onRequest) : http.createServer(onRequest);
  }
  server.on('connection', (c: net.Socket | DelayLine) => {
    const id = nextId++;
    const s = c instanceof DelayLine ? c.raw : c;
    const key = peerKey(s);
    ids.set(key, id);
    emit({ event: 'connection', conn: id, remoteAddress: s.remoteAddress, remotePort: s.remotePort, localAddress: s.localAddress, localPort: s.localPort });
    s.on('close', () => {
      emit({ event: 'close', conn: id, bytesRead: s.bytesRead, bytesWritten: s.bytesWritten });
      ids.delete(key);
    });
  });
  // With the delay line the server does not listen itself: a plain TCP listener hands it each accepted
  // connection wrapped in a DelayLine (allowHalfOpen: our FIN goes out only through the delay line).
  const listener: net.Server = delayed
    ? net.createServer({ allowHalfOpen: true, noDelay: true }, (raw) => {
        server.emit('connection', new DelayLine(raw, args.oneWayDelayMs));
      })
    : server;
  listener.on('error', (e) => {
    emit({ event: 'error', message: e.message });
    process.exit(1);
  });
  listener.listen(args.port, args.host, () => {
    const addr = listener.address() as net.AddressInfo;
    emit({ event: 'listening', name: args.name, host: addr.address, port: addr.port, tls: tlsOn, h2: args.h2, oneWayDelayMs: args.oneWayDelayMs });
  });

  const stop = (): void => {
    listener.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (!process.stdin.isTTY) {
    process.stdin.on('end', stop);
    process.stdin.resume();
  }
}

try {
  main();
} catch (e) {
  process.stderr.write(`upstream-server: ${(e as Error).message}\n`);
  process.exit(2);
}
