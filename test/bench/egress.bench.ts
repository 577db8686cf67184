/**
 * Egress latency (run as root: `npx tsx test/bench/egress.bench.ts`; results in
 * test/bench/results/egress.json): added latency through Envoy vs a direct connection to the same
 * upstream, p50/p99 over ≥ 1000 requests, keep-alive and new-connection, for the transparent and bump
 * rungs, with the egress listener configured as `portcullis up` runs it (session required on every
 * tunnel, access logs on); twice: against an upstream that answers at once (the absolute cost of the
 * hop) and against one that takes 20 ms to answer (the NFR-COST-02 ratio, "over a direct call to an
 * allow-listed endpoint"); and the first handshake to a never-seen SNI under a wildcard bump rule (its
 * leaf minted on demand during the handshake) vs the next handshake to the same SNI.
 *
 * This kernel has no netem, so the rig itself has no network round-trip time at all; the 20 ms is the
 * upstream's answer time (`?delay=20`). A real upstream is tens of ms away, so `BENCH_RTT_MS=0,20,50`
 * (comma list, default `0`) repeats every measurement against an upstream with that emulated round-trip
 * time to everything else (client and Envoy alike): for each RTT > 0 its own upstream process (same
 * namespace, certificate and names; port 8443 + the RTT's index in the list) whose every byte in and out
 * is delayed RTT/2 ms per direction in user space (`--one-way-delay-ms`, test/harness/upstream-server.ts:
 * a delay line per direction, in order, like netem `delay`, no bandwidth limit). The TCP handshake is
 * NOT delayed (the kernel completes it before the upstream process sees the connection), so the direct
 * path's new connection is one RTT cheaper than over a real network: conservative for Envoy (its fixed
 * cost is compared against a smaller total than reality's). Every row of `results`, `ratios`,
 * `perRound` and `acrossRounds` carries `rttMs` and `upstreamDelayMs`; RTT 0 keeps today's keys
 * (`upstreamImmediate`, `upstream20ms`), RTT R > 0 appends `RttRms` (`upstream20msRtt20ms`).
 *
 * The modes are interleaved sample by sample (egress-client.ts). `BENCH_ROUNDS=K` runs the client K
 * times against the same Envoy: the results pool every sample, `perRound`/`acrossRounds` give each
 * round's ratios (this 2-core machine is noisy: one p99 of 1000 samples rests on its 10 worst).
 * `BENCH_N` samples per mode; diagnostics: `BENCH_DELAYS=20`, `BENCH_MODES=bump`, `BENCH_KEEPALIVE_ONLY=1`.
 * The first handshakes to never-seen SNIs are measured against the first RTT of `BENCH_RTT_MS`.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { freePort } from '../harness/ports.js';
import { compileText } from '../../policy/compile.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { JwtSessions } from '../../xds-server/sessions.js';
import { testSessionKey } from '../harness/session-keys.js';
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

/**
 * Emulated round-trip times between the upstream and everything else (`BENCH_RTT_MS`, default 0 = the
 * bare rig): one upstream per RTT, on port PORT + its index, delaying each direction by RTT/2 ms.
 */
const RTTS = (process.env.BENCH_RTT_MS ?? '0').split(',').map((x) => Number(x.trim()));
if (!RTTS.length || RTTS.some((r) => !Number.isFinite(r) || r < 0 || r > 2000) || new Set(RTTS).size !== RTTS.length) {
  throw new Error(`BENCH_RTT_MS: distinct round-trip times in ms, 0..2000 (got ${process.env.BENCH_RTT_MS})`);
}
const UPSTREAMS = RTTS.map((rttMs, i) => ({ rttMs, port: PORT + i }));
const PORTS = UPSTREAMS.map((u) => u.port).join(', ');

/** Independent runs of the client (`BENCH_ROUNDS`, default 1): each round's ratios, and all rounds pooled. */
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 1));
/** never-seen names under the wildcard bump rule, 30 per round */
const WILD_BY_ROUND = Array.from({ length: ROUNDS }, (_, r) => Array.from({ length: 30 }, (_, i) => `n${r}-${i}.wild.bench.test`));
const WILD = WILD_BY_ROUND.flat();

async function envoyTimings(envoy: EnvoyProcess): Promise<Record<string, unknown>> {
  const re = /^(http\.egress_bump\.downstream_rq_time|cluster\.bump[:_]b\.bench\.test\.(upstream_rq_time|upstream_cx_connect_ms)|cluster\.egress_bump_tunnel\.upstream_rq_time|http\.egress\.downstream_rq_time|cluster\.portcullis_xds\.upstream_rq_time)$/;
  const j = (await envoy.admin.getJson('/stats?format=json&usedonly')) as {
    stats: Array<{ name?: string; value?: number; histograms?: { supported_quantiles: number[]; computed_quantiles: Array<{ name: string; values: Array<{ cumulative: number | null }> }> } }>;
  };
  const out: Record<string, unknown> = {};
  for (const e of j.stats) {
    if (e.name && /^cluster\.bump[:_]b\.bench\.test\.upstream_(cx|rq)_total$/.test(e.name)) out[e.name] = e.value;
    if (!e.histograms) continue;
    const q = e.histograms.supported_quantiles;
    for (const h of e.histograms.computed_quantiles) {
      if (!re.test(h.name)) continue;
      out[h.name] = Object.fromEntries(q.map((qq, i) => [`p${qq}`, h.values[i]?.cumulative ?? null]).filter(([k]) => ['p50', 'p90', 'p99', 'p100'].includes(String(k))));
    }
  }
  return out;
}

const tn = await createTestNet({ hosts: ['up', 'dns'] });
try {
  const ca = createTestCa();
  const upCa = path.join(tmp, 'up-ca.pem');
  fs.writeFileSync(upCa, ca.certPem);
  const cert = ca.issueServerCert({ dnsNames: ['t.bench.test', 'b.bench.test', 'b2.bench.test', '*.wild.bench.test'], ips: [tn.host('up').ip] });
  const ups: Upstream[] = [];
  for (const { rttMs, port } of UPSTREAMS) {
    ups.push(
      await startUpstream({
        netns: tn.host('up').netns,
        port,
        tls: { certPem: cert.certPem, keyPem: cert.keyPem },
        ...(rttMs > 0 ? { name: `upstream-rtt${rttMs}ms`, oneWayDelayMs: rttMs / 2 } : {}),
      }),
    );
  }
  const upIp = tn.host('up').ip;
  const dns = await startDnsServerIn({
    netns: tn.host('dns').netns,
    zone: { 't.bench.test': { A: [upIp] }, 'b.bench.test': { A: [upIp] }, 'b2.bench.test': { A: [upIp] }, ...Object.fromEntries(WILD.map((h) => [h, { A: [upIp] }])) },
  });
  const { jwk, token: sign } = await testSessionKey();
  const token = await sign('bench', 3600);
  const minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'bench', policy: [], logger: silentLogger() });
  const depCa = minter.bundlePem();
  const ir = compileText(
    [
      'apiVersion: portcullis/v1', 'kind: Policy', 'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }', 'egress:', '  rung: transparent',
      `  upstreamTrust: { caFile: ${upCa} }`, '  allow:', `    - { host: t.bench.test, ports: [${PORTS}] }`,
      `    - { host: b.bench.test, ports: [${PORTS}], rung: bump }`, `    - { host: b2.bench.test, ports: [${PORTS}], rung: bump }`,
      `    - { host: "*.wild.bench.test", ports: [${PORTS}], rung: bump }`, '',
    ].join('\n'),
    { file: 'bench.yaml', baseDir: tmp },
  );
  const egressPort = await freePort();
  const cp = new ControlPlane({
    logger: silentLogger(),
    nodeKey: 'bench',
    // as `portcullis up` configures it: a session on every tunnel, access logs to the control plane
    translate: {
      egress: {
        listen: { address: tn.rootIp, port: egressPort },
        dnsResolvers: [`${tn.host('dns').ip}:53`],
        bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
        accessLogCluster: XDS_CLUSTER_NAME,
        sessionsRequired: true,
      },
    },
    bump: { sessions: new JwtSessions({ jwks: () => ({ keys: [jwk] }) }), minter },
  });
  await cp.listen();
  const snap = cp.apply(ir, { immediate: true });
  const envoy = await EnvoyProcess.start({
    bootstrap: { nodeId: 'bench', xds: { port: cp.server.port } },
    logger: silentLogger(),
    ...(process.env.PORTCULLIS_BENCH_ENVOY_CONCURRENCY ? { concurrency: Number(process.env.PORTCULLIS_BENCH_ENVOY_CONCURRENCY) } : {}),
  });
  await envoy.waitForVersion(XDS.listener, snap.version, 20_000);

  // The measuring client runs in its own process (test/bench/egress-client.ts), so its CPU does not
  // share an event loop with the control plane answering access logs.
  const plan = {
    rtts: UPSTREAMS,
    n: N,
    upIp,
    proxy: { proxy: tn.rootIp, port: egressPort },
    token,
    caPem: { upstream: ca.certPem, deployment: depCa },
    delays: process.env.BENCH_DELAYS ? process.env.BENCH_DELAYS.split(',').map(Number) : [0, 20],
    wild: WILD,
    // diagnostics: BENCH_MODES=direct,bump  BENCH_KEEPALIVE_ONLY=1
    ...(process.env.BENCH_MODES ? { modes: ['direct', ...process.env.BENCH_MODES.split(',').filter((m) => m !== 'direct')] } : {}),
    ...(process.env.BENCH_KEEPALIVE_ONLY ? { keepAliveOnly: true } : {}),
  };
  type ByDelay = Record<string, Record<string, { keepAlive: number[]; newConnection: number[] }>>;
  type Raw = {
    /** by emulated RTT (ms), then upstream answer delay (ms), then mode */
    byRtt: Record<string, ByDelay>;
    sniRttMs: number;
    firstSni: number[];
    cachedSni: number[];
  };
  const runClient = async (round: number): Promise<Raw> => {
    const planFile = path.join(tmp, `plan-${round}.json`);
    fs.writeFileSync(planFile, JSON.stringify({ ...plan, wild: WILD_BY_ROUND[round] }), { mode: 0o600 });
    // (spawned asynchronously: this process must keep answering access logs meanwhile)
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(path.dirname(fileURLToPath(import.meta.url)), 'egress-client.ts'), planFile], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    if (code !== 0) throw new Error(`egress client exited ${code}`);
    return JSON.parse(out) as Raw;
  };
  const raws: Raw[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    log(`round ${round + 1}/${ROUNDS}`);
    raws.push(await runClient(round));
  }
  // Envoy's own view of the bump path (cumulative over the run): where the time goes inside Envoy,
  // and whether the upstream connection is reused (upstream_cx_total vs upstream_rq_total)
  const envoyView = await envoyTimings(envoy);
  log(`envoy: ${JSON.stringify(envoyView)}`);

  type Summary = ReturnType<typeof summarize>;
  type Tags = { rttMs: number; upstreamDelayMs: number };
  const ratiosOf = (byRtt: Raw['byRtt']) => {
    const results: Record<string, Tags & Record<string, unknown>> = {};
    const ratios: Record<string, Tags & { transparentOverDirect: Record<string, number | null>; bumpOverDirect: Record<string, number | null>; addedMs: Record<string, Record<string, number | null>> }> = {};
    for (const [rtt, byDelay] of Object.entries(byRtt)) for (const [delay, modes] of Object.entries(byDelay)) {
      const res: Record<string, { keepAliveMs: Summary; newConnectionMs: Summary }> = {};
      for (const [mode, m] of Object.entries(modes)) res[mode] = { keepAliveMs: summarize(m.keepAlive), newConnectionMs: summarize(m.newConnection) };
      const r = (k: string, which: 'keepAliveMs' | 'newConnectionMs', p: 'p50' | 'p99') =>
        res[k] && res[k][which].n ? Math.round((res[k][which][p] / res.direct![which][p]) * 1000) / 1000 : null;
      const added = (k: string, which: 'keepAliveMs' | 'newConnectionMs', p: 'p50' | 'p99') =>
        res[k] && res[k][which].n ? Math.round((res[k][which][p] - res.direct![which][p]) * 1000) / 1000 : null;
      const both = (k: string, f: typeof r) => ({ keepAliveP50: f(k, 'keepAliveMs', 'p50'), keepAliveP99: f(k, 'keepAliveMs', 'p99'), newConnectionP50: f(k, 'newConnectionMs', 'p50'), newConnectionP99: f(k, 'newConnectionMs', 'p99') });
      // RTT 0 keeps the keys of the bare rig; an emulated RTT is appended to them
      const key = (Number(delay) ? `upstream${delay}ms` : 'upstreamImmediate') + (Number(rtt) ? `Rtt${rtt}ms` : '');
      const tags: Tags = { rttMs: Number(rtt), upstreamDelayMs: Number(delay) };
      results[key] = { ...tags, ...res };
      ratios[key] = { ...tags, transparentOverDirect: both('transparent', r), bumpOverDirect: both('bump', r), addedMs: { transparent: both('transparent', added), bump: both('bump', added) } };
    }
    return { results, ratios };
  };
  // every round on its own, then all samples pooled
  const perRound = raws.map((x) => ratiosOf(x.byRtt).ratios);
  const pooled: Raw['byRtt'] = {};
  for (const x of raws) {
    for (const [rtt, byDelay] of Object.entries(x.byRtt)) {
      for (const [delay, modes] of Object.entries(byDelay)) {
        for (const [mode, m] of Object.entries(modes)) {
          const into = (((pooled[rtt] ??= {})[delay] ??= {})[mode] ??= { keepAlive: [], newConnection: [] });
          into.keepAlive.push(...m.keepAlive);
          into.newConnection.push(...m.newConnection);
        }
      }
    }
  }
  const { results, ratios } = ratiosOf(pooled);
  for (const [key, v] of Object.entries(ratios)) log(`[${key}, ${raws.length} round(s) pooled] ${JSON.stringify(v)}`);
  // the spread of each round's ratio (p99 over direct), per rung, RTT and delay
  const acrossRounds: Record<string, Record<string, unknown>> = {};
  for (const [key, { rttMs, upstreamDelayMs }] of Object.entries(ratios)) {
    for (const rung of ['transparentOverDirect', 'bumpOverDirect'] as const) {
      for (const m of ['keepAliveP99', 'newConnectionP99'] as const) {
        const xs = perRound.map((r) => r[key]?.[rung][m]).filter((v): v is number => typeof v === 'number');
        if (xs.length) (acrossRounds[key] ??= { rttMs, upstreamDelayMs })[`${rung}.${m}`] = { rounds: xs, ...summarize(xs) };
      }
    }
  }
  if (raws.length > 1) log(`across rounds: ${JSON.stringify(acrossRounds)}`);
  const firstSni = raws.flatMap((x) => x.firstSni);
  const cachedSni = raws.flatMap((x) => x.cachedSni);
  const diffs = firstSni.map((v, i) => v - cachedSni[i]!).sort((a, b) => a - b);
  const sniRttMs = raws[0]!.sniRttMs;
  log(`first handshake to a new SNI (rtt ${sniRttMs} ms): p50 ${summarize(firstSni).p50} ms, same SNI again p50 ${summarize(cachedSni).p50} ms`);
  const file = writeResult(process.env.PORTCULLIS_BENCH_NAME ?? 'egress', {
    n: N,
    rounds: raws.length,
    sampling: 'the modes are interleaved sample by sample (order rotating), so machine noise falls on every mode alike; results and ratios pool every round, perRound and acrossRounds give each round on its own',
    config: 'egress listener as `portcullis up` runs it: session credential on every tunnel (checked by Envoy: jwt_authn + revocation RBAC), gRPC access logs, resolved-IP deny-set; rows by emulated upstream RTT (rttMs, BENCH_RTT_MS) and upstream answer delay (upstreamDelayMs, BENCH_DELAYS)',
    rttsMs: RTTS,
    rttEmulation:
      'rttMs > 0: the upstream process delays every byte it receives and every byte it sends by rttMs/2 (a user-space delay line per direction, in order, FIN after the data, no bandwidth limit), so the upstream is rttMs away from the client and from Envoy alike (client to Envoy: no delay); a TLS 1.3 handshake costs one RTT more, each request one more. The TCP handshake is not delayed (the kernel completes it): a direct new connection is one RTT cheaper than over a real network, which is conservative for Envoy (ratios worse for it than a real network would give). The delay line adds ~1 ms per crossing beyond rttMs/2 (timer slack, JS stream), on the direct and proxied paths alike. rttMs 0: no delay line (the bare rig)',
    results,
    ratios,
    perRound,
    acrossRounds,
    newSniUnderWildcard: {
      rttMs: sniRttMs,
      firstHandshakeMs: summarize(firstSni),
      sameSniAgainMs: summarize(cachedSni),
      firstMinusAgainMs: summarize(diffs),
    },
    envoyView,
    goals: { transparentP99OverDirect: 1.05, bumpP99OverDirectCachedLeaf: 1.1, firstHandshakeNewSniAboveCachedMs: 50 },
    notes: 'client (its own process), Envoy, the control plane and the upstream(s) share the 2 cores; the upstream runs in a network namespace on the same machine (no netem on this kernel: the 20 ms is the upstream answer time; network distance is emulated only for rttMs > 0, in the upstream process, see rttEmulation); envoyView is cumulative over every RTT and delay; new-connection samples ask the upstream to close its connection after the answer (?close=1), so every mode, bump included (Envoy pools its upstream connections), pays a new upstream TCP + TLS connection each time',
  });
  log(`ratios ${JSON.stringify(ratios)}; wrote ${file}`);
  await envoy.stop();
  await cp.close();
  for (const up of ups) await up.stop();
  await dns.stop();
} finally {
  await stopAllEnvoys();
  await tn.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
}
