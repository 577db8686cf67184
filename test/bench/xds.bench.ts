/**
 * xDS benchmarks (run: `npx tsx test/bench/xds.bench.ts`; results in test/bench/results/xds.json).
 *
 * 1. translate + validate + encode time and memory for egress snapshots of ~1k, ~10k, ~50k routes;
 * 2. convergence (snapshot published → Envoy's ACK), p50/p99 over ≥ 100 updates at 1k routes, SotW vs Delta;
 * 3. bytes on the wire for a one-resource change in a 10k-resource snapshot, SotW vs Delta.
 */
import { performance } from 'node:perf_hooks';
import { compileText } from '../../policy/compile.js';
import { translate } from '../../xds-server/translate/index.js';
import { buildSnapshot, snapshotSize, type Snapshot } from '../../xds-server/snapshot.js';
import { XdsServer } from '../../xds-server/server.js';
import { EnvoyProcess, stopAllEnvoys } from '../../envoy/process.js';
import { XDS, type XdsTypeUrl } from '../../envoy/api/type-urls.js';
import { silentLogger } from '../../common/logger.js';
import { summarize, writeResult } from './machine.js';
import { bigRouteConfig, httpListener } from '../harness/sample-resources.js';

const log = (s: string) => process.stderr.write(`${s}\n`);

function policyWith(n: number): string {
  const lines = [
    'apiVersion: portcullis/v1',
    'kind: Policy',
    'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
    'egress:',
    '  rung: transparent',
    '  allow:',
  ];
  for (let i = 0; i < n; i++) lines.push(`    - { host: h${i}.bench.example.com, ports: [443, 8443] }`);
  lines.push(
    'mcp:',
    '  listen: 127.0.0.1:8080',
    '  auth: { mode: local }',
    '  limits: { connectionsPerCaller: 16, requestsPerMinute: 600, maxBodyBytes: 4Mi }',
    '  tools: { default: deny, rules: [] }',
    'sessions: { tokenTtl: 15m, idleTimeout: 15m, absoluteLifetime: 12h }',
    'audit: { file: /tmp/pc-bench-audit.jsonl }',
  );
  return lines.join('\n');
}

function countRoutes(s: Snapshot): number {
  let n = 0;
  for (const r of s.resources.get(XDS.route)!.values()) {
    for (const vh of (r.body as { virtual_hosts: Array<{ routes: unknown[] }> }).virtual_hosts) n += vh.routes.length;
  }
  return n;
}

async function translateBench() {
  const out: Record<string, unknown>[] = [];
  // Each destination gives a virtual host with 2 routes plus 2 port_not_allowed routes: 4 routes each.
  // One warm-up pass first, so the numbers measure steady state, not JIT and validator-plan compilation.
  {
    const warm = compileText(policyWith(250), { file: 'bench.yaml', baseDir: '/tmp' });
    for (let i = 0; i < 3; i++) buildSnapshot(translate(warm, { egress: { listen: { address: '127.0.0.1', port: 15001 } } }).input);
  }
  for (const target of [1_000, 10_000, 50_000]) {
    const ir = compileText(policyWith(target / 4), { file: 'bench.yaml', baseDir: '/tmp' });
    const runs = target >= 50_000 ? 3 : target >= 10_000 ? 5 : 20;
    const times: number[] = [];
    let heapDelta = 0;
    let routes = 0;
    let bytes = 0;
    for (let i = 0; i < runs; i++) {
      global.gc?.();
      const h0 = process.memoryUsage().heapUsed;
      const t0 = performance.now();
      const t = translate(ir, { egress: { listen: { address: '127.0.0.1', port: 15001 } } });
      const snap = buildSnapshot(t.input);
      times.push(performance.now() - t0);
      heapDelta = Math.max(heapDelta, process.memoryUsage().heapUsed - h0);
      routes = countRoutes(snap);
      bytes = [...snap.resources.values()].flatMap((m) => [...m.values()]).reduce((a, r) => a + r.encoded.length, 0);
    }
    const row = { targetRoutes: target, routes, encodedBytes: bytes, runs, ms: summarize(times), peakHeapDeltaMB: Math.round(heapDelta / 1e5) / 10 };
    log(`translate+validate+encode ${routes} routes: p50 ${row.ms.p50} ms, p99 ${row.ms.p99} ms, heap +${row.peakHeapDeltaMB} MB`);
    out.push(row);
  }
  return out;
}

async function convergenceBench(ads: 'sotw' | 'delta', updates: number) {
  const server = new XdsServer({ logger: silentLogger() });
  await server.listen('127.0.0.1:0');
  const nodeId = `bench-${ads}`;
  const mk = (i: number) =>
    buildSnapshot({
      [XDS.listener]: [httpListener('http', 18080 + (ads === 'sotw' ? 0 : 1), 'main')],
      [XDS.route]: [{ ...bigRouteConfig('main', 1000, 'upstream'), request_headers_to_add: [{ header: { key: 'x-gen', value: String(i) } }] }],
      [XDS.cluster]: [{ name: 'upstream', type: 'STATIC', connect_timeout: '1s', load_assignment: { cluster_name: 'upstream', endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 9 } } } }] }] } }],
    });
  server.cache.setNow(nodeId, mk(0));
  const acked = new Map<string, number>();
  server.cache.onAck((a) => {
    if (a.typeUrl === XDS.route) acked.set(a.version, performance.now());
  });
  const envoy = await EnvoyProcess.start({ bootstrap: { nodeId, xds: { port: server.port }, ads }, logger: silentLogger() });
  await envoy.waitConnected();
  const waitAck = (v: string) =>
    new Promise<number>((resolve, reject) => {
      const end = performance.now() + 10_000;
      const tick = () => {
        const t = acked.get(v);
        if (t !== undefined) resolve(t);
        else if (performance.now() > end) reject(new Error(`no ACK for ${v}`));
        else setImmediate(tick);
      };
      tick();
    });
  await waitAck(server.cache.get(nodeId)!.version);
  const samples: number[] = [];
  const snaps = Array.from({ length: updates }, (_, i) => mk(i + 1));
  for (const s of snaps) {
    const t0 = performance.now();
    server.cache.setNow(nodeId, s);
    const t1 = await waitAck(s.version);
    samples.push(t1 - t0);
  }
  await envoy.stop();
  await server.close(200);
  const r = summarize(samples);
  log(`convergence ${ads} (1k routes): p50 ${r.p50} ms, p99 ${r.p99} ms over ${r.n} updates`);
  return r;
}

async function wireBytesBench(ads: 'sotw' | 'delta') {
  const server = new XdsServer({ logger: silentLogger() });
  await server.listen('127.0.0.1:0');
  const nodeId = `bytes-${ads}`;
  const clusters = (changed: number) =>
    Array.from({ length: 10_000 }, (_, i) => ({
      name: `c${i}`,
      type: 'STATIC',
      connect_timeout: i === changed ? '2s' : '1s',
      load_assignment: { cluster_name: `c${i}`, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 10000 + (i % 50000) } } } }] }] },
    }));
  const s0 = buildSnapshot({ [XDS.cluster]: clusters(-1) });
  const s1 = buildSnapshot({ [XDS.cluster]: clusters(4242) });
  server.cache.setNow(nodeId, s0);
  const acked = new Set<string>();
  server.cache.onAck((a) => a.typeUrl === XDS.cluster && acked.add(a.version));
  const envoy = await EnvoyProcess.start({ bootstrap: { nodeId, xds: { port: server.port }, ads }, logger: silentLogger(), startTimeoutMs: 120_000 });
  await envoy.waitConnected(60_000);
  const until = async (v: string) => {
    const end = Date.now() + 120_000;
    while (!acked.has(v)) {
      if (Date.now() > end) throw new Error(`no ACK for ${v}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await until(s0.version);
  const key = { type: 'CDS', flavor: ads };
  const before = server.metrics.get('xds_response_bytes_total', key);
  server.cache.setNow(nodeId, s1);
  await until(s1.version);
  const bytes = server.metrics.get('xds_response_bytes_total', key) - before;
  await envoy.stop();
  await server.close(200);
  log(`one-cluster change in ${snapshotSize(s1)} clusters, ${ads}: ${bytes} bytes`);
  return { resources: snapshotSize(s1), bytes };
}

const translateRows = await translateBench();
const convergence = { sotw: await convergenceBench('sotw', 120), delta: await convergenceBench('delta', 120) };
const wire = { sotw: await wireBytesBench('sotw'), delta: await wireBytesBench('delta') };
await stopAllEnvoys();
const file = writeResult('xds', {
  translate: translateRows,
  convergence1kRoutesMs: convergence,
  oneResourceChangeIn10k: { ...wire, deltaOverSotwPercent: Math.round((wire.delta.bytes / wire.sotw.bytes) * 10000) / 100 },
  goals: { convergenceP99Ms: 200, deltaBytesPercentOfSotw: 1 },
});
log(`wrote ${file}`);
