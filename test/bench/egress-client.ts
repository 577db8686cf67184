/**
 * The measuring client of test/bench/egress.bench.ts, in its own process: `node --import tsx
 * test/bench/egress-client.ts PLAN.json` prints the raw samples (ms) as JSON on stdout. Per upstream
 * answer delay and per mode (direct, transparent, bump), interleaved: N keep-alive requests on one
 * connection (one tunnel) per mode, then N new connections (TCP + CONNECT + TLS + request); then, for
 * each name under the wildcard bump rule, the first handshake (its leaf minted on demand) and the
 * next one.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';

interface Plan {
  port: number;
  n: number;
  upIp: string;
  proxy: { proxy: string; port: number };
  token: string;
  caPem: { upstream: string; deployment: string };
  delays: number[];
  wild: string[];
  /** modes to measure (diagnostics); default all */
  modes?: string[];
  /** skip the new-connection samples (diagnostics) */
  keepAliveOnly?: boolean;
}

const plan = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as Plan;
const log = (s: string) => process.stderr.write(`${s}\n`);

/** Read one HTTP/1.1 response (Content-Length bodies) from a socket; resolves with the status. */
function readResponse(sock: net.Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (buf.length - end - 4 < len) return;
      sock.off('data', onData);
      sock.off('error', reject);
      resolve(Number(head.split(' ')[1]));
    };
    sock.on('data', onData);
    sock.once('error', reject);
  });
}

async function tlsTo(host: string, sni: string, ca: string, via?: { proxy: string; port: number; authority: string; token?: string }): Promise<tls.TLSSocket> {
  let raw: net.Socket;
  if (via) {
    raw = net.connect(via.port, via.proxy);
    await new Promise((r) => raw.once('connect', r));
    const auth = via.token ? `Proxy-Authorization: Basic ${Buffer.from(`session:${via.token}`).toString('base64')}\r\n` : '';
    raw.write(`CONNECT ${via.authority} HTTP/1.1\r\nHost: ${via.authority}\r\n${auth}\r\n`);
    const status = await readResponse(raw);
    if (status !== 200) throw new Error(`CONNECT ${status}`);
  } else {
    raw = net.connect(plan.port, host);
    await new Promise((r) => raw.once('connect', r));
  }
  const s = tls.connect({ socket: raw, servername: sni, ca });
  await new Promise((r, j) => s.once('secureConnect', r).once('error', j));
  return s;
}

async function get(s: tls.TLSSocket, host: string, delayMs = 0): Promise<number> {
  const p = readResponse(s);
  s.write(`GET /bench${delayMs ? `?delay=${delayMs}` : ''} HTTP/1.1\r\nHost: ${host}:${plan.port}\r\n\r\n`);
  return p;
}


const PORT = plan.port;
const modes = {
  direct: { host: 't.bench.test', ca: plan.caPem.upstream, via: undefined },
  transparent: { host: 't.bench.test', ca: plan.caPem.upstream, via: { ...plan.proxy, authority: `t.bench.test:${PORT}`, token: plan.token } },
  bump: { host: 'b.bench.test', ca: plan.caPem.deployment, via: { ...plan.proxy, authority: `b.bench.test:${PORT}`, token: plan.token } },
} as const;

/**
 * The modes are interleaved: sample i of every mode is taken back to back (the order rotating with
 * i), so a noisy moment on this shared 2-core machine lands on every mode alike, and the ratios
 * compare like with like.
 */
const active = Object.entries(modes).filter(([mode]) => !plan.modes || plan.modes.includes(mode));
const rotation = (i: number) => active.map((_, k) => active[(i + k) % active.length]!);
const byDelay: Record<string, Record<string, { keepAlive: number[]; newConnection: number[] }>> = {};
for (const delay of plan.delays) {
  const out: Record<string, { keepAlive: number[]; newConnection: number[] }> = Object.fromEntries(active.map(([mode]) => [mode, { keepAlive: [], newConnection: [] }]));
  byDelay[delay] = out;
  const conns = new Map<string, tls.TLSSocket>();
  for (const [mode, m] of active) {
    const s = await tlsTo(plan.upIp, m.host, m.ca, m.via);
    for (let i = 0; i < 50; i++) await get(s, m.host, delay); // warm-up
    conns.set(mode, s);
  }
  for (let i = 0; i < plan.n; i++) {
    for (const [mode, m] of rotation(i)) {
      const t0 = performance.now();
      if ((await get(conns.get(mode)!, m.host, delay)) !== 200) throw new Error(`${mode}: non-200`);
      out[mode]!.keepAlive.push(performance.now() - t0);
    }
  }
  for (const s of conns.values()) s.destroy();
  for (let i = 0; i < (plan.keepAliveOnly ? 0 : plan.n); i++) {
    for (const [mode, m] of rotation(i)) {
      const t0 = performance.now();
      const c = await tlsTo(plan.upIp, m.host, m.ca, m.via);
      if ((await get(c, m.host, delay)) !== 200) throw new Error(`${mode}: non-200`);
      out[mode]!.newConnection.push(performance.now() - t0);
      c.destroy();
    }
  }
  const p = (xs: number[], q: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!.toFixed(3) : '-');
  for (const [mode, { keepAlive, newConnection }] of Object.entries(out)) {
    log(`[delay ${delay} ms] ${mode}: keep-alive p50 ${p(keepAlive, 0.5)} p99 ${p(keepAlive, 0.99)} ms; new-connection p50 ${p(newConnection, 0.5)} p99 ${p(newConnection, 0.99)} ms`);
  }
}

const firstSni: number[] = [];
const cachedSni: number[] = [];
for (const host of plan.keepAliveOnly ? [] : plan.wild) {
  for (const bucket of [firstSni, cachedSni]) {
    const t0 = performance.now();
    const c = await tlsTo(plan.upIp, host, plan.caPem.deployment, { ...plan.proxy, authority: `${host}:${PORT}`, token: plan.token });
    bucket.push(performance.now() - t0);
    c.destroy();
  }
}
process.stdout.write(JSON.stringify({ byDelay, firstSni, cachedSni }));
