/**
 * The measuring client of test/bench/egress.bench.ts, in its own process: `node --import tsx
 * test/bench/egress-client.ts PLAN.json` prints the raw samples (ms) as JSON on stdout. Per emulated
 * upstream RTT (each its own upstream, on its own port: `plan.rtts`), per upstream answer delay and per
 * mode (direct, transparent, bump), interleaved: N keep-alive requests on one connection (one tunnel)
 * per mode, then N new connections (TCP + CONNECT + TLS + request); then, for each name under the
 * wildcard bump rule (against the first RTT's upstream), the first handshake (its leaf minted on
 * demand) and the next one.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';

interface Plan {
  /** one upstream per emulated round-trip time to it (0: none), each on its own port */
  rtts: Array<{ rttMs: number; port: number }>;
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
      sock.off('close', onClose);
      resolve(Number(head.split(' ')[1]));
    };
    const onClose = () => reject(new Error(`connection closed before a full response (${buf.length} bytes: ${JSON.stringify(buf.subarray(0, 200).toString('latin1'))})`));
    sock.on('data', onData);
    sock.once('error', reject);
    sock.once('close', onClose);
  });
}

async function tlsTo(host: string, port: number, sni: string, ca: string, via?: { proxy: string; port: number; authority: string; token?: string }): Promise<tls.TLSSocket> {
  let raw: net.Socket;
  if (via) {
    raw = net.connect(via.port, via.proxy);
    await new Promise((r) => raw.once('connect', r));
    const auth = via.token ? `Proxy-Authorization: Basic ${Buffer.from(`session:${via.token}`).toString('base64')}\r\n` : '';
    raw.write(`CONNECT ${via.authority} HTTP/1.1\r\nHost: ${via.authority}\r\n${auth}\r\n`);
    const status = await readResponse(raw);
    if (status !== 200) throw new Error(`CONNECT ${status}`);
  } else {
    raw = net.connect(port, host);
    await new Promise((r) => raw.once('connect', r));
  }
  const s = tls.connect({ socket: raw, servername: sni, ca });
  await new Promise((r, j) => s.once('secureConnect', r).once('error', j));
  return s;
}

/**
 * One request. `close`: the upstream answers `Connection: close` and closes its connection, so even
 * bump (whose upstream connections Envoy pools) opens a new one to the upstream for the next tunnel.
 */
async function get(s: tls.TLSSocket, host: string, port: number, delayMs = 0, close = false): Promise<number> {
  const p = readResponse(s);
  const q = [delayMs ? `delay=${delayMs}` : '', close ? 'close=1' : ''].filter(Boolean).join('&');
  s.write(`GET /bench${q ? `?${q}` : ''} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
  return p;
}

/** the modes against the upstream on `port` */
const modesAt = (port: number) => ({
  direct: { host: 't.bench.test', ca: plan.caPem.upstream, via: undefined },
  transparent: { host: 't.bench.test', ca: plan.caPem.upstream, via: { ...plan.proxy, authority: `t.bench.test:${port}`, token: plan.token } },
  bump: { host: 'b.bench.test', ca: plan.caPem.deployment, via: { ...plan.proxy, authority: `b.bench.test:${port}`, token: plan.token } },
});

/**
 * The modes are interleaved: sample i of every mode is taken back to back (the order rotating with
 * i), so a noisy moment on this shared 2-core machine lands on every mode alike, and the ratios
 * compare like with like.
 */
type ByDelay = Record<string, Record<string, { keepAlive: number[]; newConnection: number[] }>>;
/** samples by emulated RTT (ms), then by upstream answer delay (ms), then by mode */
const byRtt: Record<string, ByDelay> = {};
for (const { rttMs, port } of plan.rtts) {
  const active = Object.entries(modesAt(port)).filter(([mode]) => !plan.modes || plan.modes.includes(mode));
  const rotation = (i: number) => active.map((_, k) => active[(i + k) % active.length]!);
  const byDelay: ByDelay = (byRtt[rttMs] = {});
  for (const delay of plan.delays) {
    const out: Record<string, { keepAlive: number[]; newConnection: number[] }> = Object.fromEntries(active.map(([mode]) => [mode, { keepAlive: [], newConnection: [] }]));
    byDelay[delay] = out;
    const conns = new Map<string, tls.TLSSocket>();
    for (const [mode, m] of active) {
      const s = await tlsTo(plan.upIp, port, m.host, m.ca, m.via);
      for (let i = 0; i < 50; i++) await get(s, m.host, port, delay); // warm-up
      conns.set(mode, s);
    }
    for (let i = 0; i < plan.n; i++) {
      for (const [mode, m] of rotation(i)) {
        const t0 = performance.now();
        if ((await get(conns.get(mode)!, m.host, port, delay)) !== 200) throw new Error(`${mode}: non-200`);
        out[mode]!.keepAlive.push(performance.now() - t0);
      }
    }
    for (const s of conns.values()) s.destroy();
    for (let i = 0; i < (plan.keepAliveOnly ? 0 : plan.n); i++) {
      for (const [mode, m] of rotation(i)) {
        const t0 = performance.now();
        const c = await tlsTo(plan.upIp, port, m.host, m.ca, m.via);
        // every mode's upstream connection is new: bump's too (the upstream closes the one Envoy pooled)
        if ((await get(c, m.host, port, delay, true)) !== 200) throw new Error(`${mode}: non-200`);
        out[mode]!.newConnection.push(performance.now() - t0);
        c.destroy();
      }
    }
    const p = (xs: number[], q: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!.toFixed(3) : '-');
    for (const [mode, { keepAlive, newConnection }] of Object.entries(out)) {
      log(`[rtt ${rttMs} ms, delay ${delay} ms] ${mode}: keep-alive p50 ${p(keepAlive, 0.5)} p99 ${p(keepAlive, 0.99)} ms; new-connection p50 ${p(newConnection, 0.5)} p99 ${p(newConnection, 0.99)} ms`);
    }
  }
}

// the never-seen SNIs: against the first RTT's upstream
const sni = plan.rtts[0]!;
const firstSni: number[] = [];
const cachedSni: number[] = [];
for (const host of plan.keepAliveOnly ? [] : plan.wild) {
  for (const bucket of [firstSni, cachedSni]) {
    const t0 = performance.now();
    const c = await tlsTo(plan.upIp, sni.port, host, plan.caPem.deployment, { ...plan.proxy, authority: `${host}:${sni.port}`, token: plan.token });
    bucket.push(performance.now() - t0);
    c.destroy();
  }
}
process.stdout.write(JSON.stringify({ byRtt, sniRttMs: sni.rttMs, firstSni, cachedSni }));
