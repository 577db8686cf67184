/**
 * Egress latency (run as root: `npx tsx test/bench/egress.bench.ts`; results in
 * test/bench/results/egress.json): added latency through Envoy vs a direct connection to the same
 * upstream, p50/p99 over ≥ 1000 requests, keep-alive and new-connection, for the transparent and bump
 * rungs; and the first handshake to a bump host vs later ones.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { createTestNet } from '../harness/netns.js';
import { startUpstream } from '../harness/upstream.js';
import { startDnsServerIn } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { freePort } from '../harness/ports.js';
import { compileText } from '../../policy/compile.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { JwtSessions, SESSION_AUDIENCE } from '../../xds-server/sessions.js';
import { Minter } from '../../sds-minter/index.js';
import { EnvoyProcess, stopAllEnvoys } from '../../envoy/process.js';
import { XDS_CLUSTER_NAME } from '../../envoy/bootstrap.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { silentLogger } from '../../common/logger.js';
import { summarize, writeResult } from './machine.js';

const N = Number(process.env.BENCH_N ?? 1000);
const PORT = 8443;
const log = (s: string) => process.stderr.write(`${s}\n`);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-bench-egress-'));

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
    raw = net.connect(PORT, host);
    await new Promise((r) => raw.once('connect', r));
  }
  const s = tls.connect({ socket: raw, servername: sni, ca });
  await new Promise((r, j) => s.once('secureConnect', r).once('error', j));
  return s;
}

async function get(s: tls.TLSSocket, host: string): Promise<number> {
  const p = readResponse(s);
  s.write(`GET /bench HTTP/1.1\r\nHost: ${host}:${PORT}\r\n\r\n`);
  return p;
}

const tn = await createTestNet({ hosts: ['up', 'dns'] });
try {
  const ca = createTestCa();
  const upCa = path.join(tmp, 'up-ca.pem');
  fs.writeFileSync(upCa, ca.certPem);
  const cert = ca.issueServerCert({ dnsNames: ['t.bench.test', 'b.bench.test', 'b2.bench.test'], ips: [tn.host('up').ip] });
  const up = await startUpstream({ netns: tn.host('up').netns, port: PORT, tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
  const upIp = tn.host('up').ip;
  const dns = await startDnsServerIn({ netns: tn.host('dns').netns, zone: { 't.bench.test': { A: [upIp] }, 'b.bench.test': { A: [upIp] }, 'b2.bench.test': { A: [upIp] } } });
  const kp = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
  const jwk = { ...(await exportJWK(kp.publicKey)), kid: 'k', alg: 'EdDSA' };
  const token = await new SignJWT({ sid: 'bench' }).setProtectedHeader({ alg: 'EdDSA', kid: 'k' }).setAudience(SESSION_AUDIENCE).setExpirationTime('1h').sign(kp.privateKey);
  const minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'bench', policy: [], logger: silentLogger() });
  const depCa = minter.bundlePem();
  const ir = compileText(
    [
      'apiVersion: portcullis/v1', 'kind: Policy', 'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }', 'egress:', '  rung: transparent',
      `  upstreamTrust: { caFile: ${upCa} }`, '  allow:', `    - { host: t.bench.test, ports: [${PORT}] }`,
      `    - { host: b.bench.test, ports: [${PORT}], rung: bump }`, `    - { host: b2.bench.test, ports: [${PORT}], rung: bump }`, '',
    ].join('\n'),
    { file: 'bench.yaml', baseDir: tmp },
  );
  const egressPort = await freePort();
  const cp = new ControlPlane({
    logger: silentLogger(),
    nodeKey: 'bench',
    translate: { egress: { listen: { address: tn.rootIp, port: egressPort }, dnsResolvers: [`${tn.host('dns').ip}:53`], bump: { controlPlaneCluster: XDS_CLUSTER_NAME } } },
    bump: { sessions: new JwtSessions({ jwks: () => ({ keys: [jwk] }) }), minter },
  });
  await cp.listen();
  const snap = cp.apply(ir, { immediate: true });
  const envoy = await EnvoyProcess.start({ bootstrap: { nodeId: 'bench', xds: { port: cp.server.port } }, logger: silentLogger() });
  await envoy.waitForVersion(XDS.listener, snap.version, 20_000);

  const proxy = { proxy: tn.rootIp, port: egressPort };
  const modes = {
    direct: { host: 't.bench.test', ca: ca.certPem, via: undefined },
    transparent: { host: 't.bench.test', ca: ca.certPem, via: { ...proxy, authority: `t.bench.test:${PORT}` } },
    bump: { host: 'b.bench.test', ca: depCa, via: { ...proxy, authority: `b.bench.test:${PORT}`, token } },
  } as const;

  // first handshake to a bump host never used before vs the next ones (leaves are minted ahead of time)
  const firstSni: number[] = [];
  {
    const t0 = performance.now();
    const s = await tlsTo(upIp, 'b2.bench.test', depCa, { ...proxy, authority: `b2.bench.test:${PORT}`, token });
    firstSni.push(performance.now() - t0);
    s.destroy();
  }

  const results: Record<string, unknown> = {};
  for (const [mode, m] of Object.entries(modes)) {
    // keep-alive: one connection (one tunnel), N requests
    const s = await tlsTo(upIp, m.host, m.ca, m.via);
    for (let i = 0; i < 50; i++) await get(s, m.host); // warm-up
    const ka: number[] = [];
    for (let i = 0; i < N; i++) {
      const t0 = performance.now();
      if ((await get(s, m.host)) !== 200) throw new Error(`${mode}: non-200`);
      ka.push(performance.now() - t0);
    }
    s.destroy();
    // new connection per request (TCP + CONNECT + TLS + request)
    const nc: number[] = [];
    for (let i = 0; i < Math.min(N, 1000); i++) {
      const t0 = performance.now();
      const c = await tlsTo(upIp, m.host, m.ca, m.via);
      if ((await get(c, m.host)) !== 200) throw new Error(`${mode}: non-200`);
      nc.push(performance.now() - t0);
      c.destroy();
    }
    results[mode] = { keepAliveMs: summarize(ka), newConnectionMs: summarize(nc) };
    log(`${mode}: keep-alive p50 ${summarize(ka).p50} p99 ${summarize(ka).p99} ms; new-connection p50 ${summarize(nc).p50} p99 ${summarize(nc).p99} ms`);
  }
  const again: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    const s = await tlsTo(upIp, 'b2.bench.test', depCa, { ...proxy, authority: `b2.bench.test:${PORT}`, token });
    again.push(performance.now() - t0);
    s.destroy();
  }
  const r = (k: string, which: 'keepAliveMs' | 'newConnectionMs', p: 'p50' | 'p99') =>
    Math.round(((results[k] as Record<string, Record<string, number>>)[which]![p]! / (results.direct as Record<string, Record<string, number>>)[which]![p]!) * 100) / 100;
  const ratios = {
    transparentOverDirect: { keepAliveP50: r('transparent', 'keepAliveMs', 'p50'), keepAliveP99: r('transparent', 'keepAliveMs', 'p99'), newConnectionP99: r('transparent', 'newConnectionMs', 'p99') },
    bumpOverDirect: { keepAliveP50: r('bump', 'keepAliveMs', 'p50'), keepAliveP99: r('bump', 'keepAliveMs', 'p99'), newConnectionP99: r('bump', 'newConnectionMs', 'p99') },
  };
  const file = writeResult('egress', {
    n: N,
    results,
    ratios,
    firstHandshakeNewBumpHostMs: firstSni[0],
    laterHandshakesSameHostMs: summarize(again),
    goals: { transparentP99OverDirect: 1.05, bumpP99OverDirectCachedLeaf: 1.1, firstHandshakeNewSniAboveCachedMs: 50 },
    notes: 'client and Envoy share the 2 cores; the upstream runs in a network namespace on the same machine',
  });
  log(`ratios ${JSON.stringify(ratios)}; wrote ${file}`);
  await envoy.stop();
  await cp.close();
  await up.stop();
  await dns.stop();
} finally {
  await stopAllEnvoys();
  await tn.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
}
