/**
 * A tiny HTTP / HTTPS echo upstream for e2e tests, run as its own process (usually inside a test
 * network namespace; start it with `startUpstream` from ./upstream.ts):
 *
 *   ip netns exec <ns> node --import tsx test/harness/upstream-server.ts --port 443 --cert c.pem --key k.pem
 *
 * Options: --port N (0 = any; the chosen port is printed)  --host ADDR (default 0.0.0.0)
 *          --cert FILE --key FILE (HTTPS; without them plain HTTP)  --client-ca FILE (request client
 *          certificates, verified against FILE)  --h2 (offer h2 and http/1.1 by ALPN)  --name LABEL
 *
 * Every request is answered with JSON `{ name, method, url, httpVersion, headers, sni, tlsVersion, alpn,
 * clientCert, remoteAddress, bodyBytes, body }`. Paths: `/bytes/N` answers N bytes instead;
 * `?status=NNN` sets the status code; `?delay=MS` answers after MS milliseconds (≤ 10 s: an endpoint that
 * takes time to answer, for latency benchmarks).
 *
 * stdout: one JSON line per event — `listening`, `connection`, `tls` (handshake done), `tlsError`,
 * `request`, `close`. The process exits on SIGTERM/SIGINT and when its stdin closes (its parent died).
 */
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';

interface Args {
  port: number;
  host: string;
  cert?: string;
  key?: string;
  clientCa?: string;
  h2: boolean;
  name: string;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { port: -1, host: '0.0.0.0', h2: false, name: 'upstream' };
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
      default: throw new Error(`unknown argument ${k}`);
    }
  }
  if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) throw new Error('--port N is required (0..65535)');
  if ((a.cert === undefined) !== (a.key === undefined)) throw new Error('--cert and --key go together');
  return a;
}

const MAX_ECHO_BODY = 64 * 1024;
const MAX_BYTES = 256 * 1024 * 1024;

function emit(obj: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ ts: Date.now(), ...obj }) + '\n');
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const tlsOn = args.cert !== undefined;
  let nextId = 1;
  // Connection ids by "address:port" of the peer: the raw socket of `connection` and the TLS socket of
  // `secureConnection` / the request's socket are different objects.
  const ids = new Map<string, number>();
  const peerKey = (s: net.Socket): string => `${s.remoteAddress}:${s.remotePort}`;

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
        remoteAddress: sock.remoteAddress ?? null,
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
      const answer = (): void => {
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
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
  server.on('connection', (s: net.Socket) => {
    const id = nextId++;
    const key = peerKey(s);
    ids.set(key, id);
    emit({ event: 'connection', conn: id, remoteAddress: s.remoteAddress, remotePort: s.remotePort, localAddress: s.localAddress, localPort: s.localPort });
    s.on('close', () => {
      emit({ event: 'close', conn: id, bytesRead: s.bytesRead, bytesWritten: s.bytesWritten });
      ids.delete(key);
    });
  });
  server.on('error', (e) => {
    emit({ event: 'error', message: e.message });
    process.exit(1);
  });
  server.listen(args.port, args.host, () => {
    const addr = server.address() as net.AddressInfo;
    emit({ event: 'listening', name: args.name, host: addr.address, port: addr.port, tls: tlsOn, h2: args.h2 });
  });

  const stop = (): void => {
    server.close();
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
