import http from 'node:http';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { eventually, freePorts } from '../harness/ports.js';
import { routeConfig, sampleSnapshotInput, selfSignedCert, httpListener } from '../harness/sample-resources.js';
import { XdsServer } from '../../xds-server/server.js';
import { buildSnapshot, type Snapshot, type SnapshotInput } from '../../xds-server/snapshot.js';
import { EnvoyProcess, stopAllEnvoys, uniqueNodeId } from '../../envoy/process.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { WILDCARD_TYPES, XDS, XDS_TYPE_URLS, type XdsTypeUrl } from '../../envoy/api/type-urls.js';
import { ResourceInvalidError } from '../../common/errors.js';
import { EventBus, type PortcullisEvent } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';

const gate = e2eGate(['envoy'], 'ADS against a real Envoy');

function get(port: number, host: string, opts: { tls?: boolean; ca?: string } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const mod = opts.tls ? https : http;
    const req = mod.request(
      { host: '127.0.0.1', port, path: '/', headers: { host }, servername: opts.tls ? 'localhost' : undefined, ca: opts.ca, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}

describe.skipIf(!gate.ok).each(['sotw', 'delta'] as const)('ADS (%s) driving a real Envoy 1.40', (ads) => {
  const logger = silentLogger();
  const events = new EventBus();
  const nodeId = uniqueNodeId(`ads-${ads}`);
  const cert = selfSignedCert('localhost');
  let server: XdsServer;
  let envoy: EnvoyProcess;
  let upstream: http.Server;
  let ports: { http: number; tls: number; upstream: number; xds: number };
  let current: Snapshot;
  const input = (greeting: string): SnapshotInput =>
    sampleSnapshotInput({ httpPort: ports.http, tlsPort: ports.tls, upstreamPort: ports.upstream, cert, greeting });

  async function startServer(): Promise<XdsServer> {
    const s = new XdsServer({ logger, events, cache: undefined });
    await s.listen(`127.0.0.1:${ports.xds}`);
    return s;
  }
  function publish(snap: Snapshot): void {
    current = snap;
    server.cache.setNow(nodeId, snap);
  }
  /**
   * What Envoy's admin reports as applied: SotW carries the snapshot version on every type; Delta
   * carries it on LDS/CDS and a per-resource version (the resource's content hash) on the others.
   */
  async function applied(e: EnvoyProcess, snap: Snapshot, t: XdsTypeUrl): Promise<void> {
    if (ads === 'sotw' || t === XDS.listener || t === XDS.cluster) {
      await e.waitForVersion(t, snap.version, 20_000);
      return;
    }
    if (t === XDS.endpoint) {
      // Envoy's EDS dump keeps the system version of the response that last changed an assignment,
      // so for Delta the check is that every assignment is there (traffic checks its content).
      const want = [...snap.resources.get(t)!.keys()];
      await eventually(async () => {
        const have = (await e.versions(t)).resources.map((r) => r.name);
        return want.every((n) => have.includes(n));
      }, 20_000, 'endpoints');
      return;
    }
    for (const r of snap.resources.get(t)!.values()) await e.waitForVersion(t, r.hash, 20_000, { names: [r.name] });
  }
  async function allApplied(e: EnvoyProcess, snap: Snapshot): Promise<void> {
    // (a type the snapshot has nothing of, and Envoy does not ask for by wildcard, has no version to see)
    for (const t of XDS_TYPE_URLS) if (snap.resources.get(t)!.size || WILDCARD_TYPES.has(t)) await applied(e, snap, t);
  }
  const routeVersion = (snap: Snapshot) => (ads === 'sotw' ? snap.version : snap.resources.get(XDS.route)!.get('main')!.hash);

  beforeAll(async () => {
    const [a, b, c, d] = await freePorts(4);
    ports = { http: a!, tls: b!, upstream: c!, xds: d! };
    upstream = http.createServer((_req, res) => res.end('upstream ok'));
    await new Promise<void>((r) => upstream.listen(ports.upstream, '127.0.0.1', r));
    server = await startServer();
    publish(buildSnapshot(input('hello v1')));
    envoy = await EnvoyProcess.start({ bootstrap: { nodeId, xds: { port: ports.xds }, ads, initialFetchTimeoutMs: 0 }, logger });
    await envoy.waitConnected();
  });

  afterAll(async () => {
    await stopAllEnvoys();
    await server?.close();
    await new Promise((r) => upstream?.close(r));
  });

  it('ACKs a snapshot with listeners, clusters, routes, endpoints and secrets, and traffic flows', async () => {
    await allApplied(envoy, current);
    const stats = await envoy.admin.stats();
    expect(rejectedUpdates(stats)).toEqual({});
    expect(stats['control_plane.connected_state']).toBe(1);
    expect(stats['listener_manager.total_listeners_warming']).toBe(0);
    expect(stats['listener_manager.total_listeners_active']).toBeGreaterThanOrEqual(2);
    // RDS: direct response; EDS: the upstream; SDS: the TLS listener's certificate.
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'hello v1' });
    expect(await get(ports.http, 'anything.test')).toEqual({ status: 200, body: 'upstream ok' });
    expect(await get(ports.tls, 'hello.test', { tls: true, ca: cert.cert })).toEqual({ status: 200, body: 'hello v1' });
    const certs = JSON.stringify(await envoy.admin.certs());
    expect(certs).toContain('localhost');
    expect(server.metrics.total('xds_nack_total')).toBe(0);
    for (const t of ['CDS', 'EDS', 'LDS', 'RDS', 'SDS']) expect(server.metrics.get('xds_ack_total', { type: t })).toBeGreaterThanOrEqual(1);
  });

  it('a resource our validator rejects is never sent', async () => {
    const before = server.metrics.total('xds_responses_total');
    const bad = input('hello bad');
    (bad[XDS.listener]![0] as { filter_chains: Array<{ filters: Array<{ typed_config: { stat_prefix: string } }> }> })
      .filter_chains[0]!.filters[0]!.typed_config.stat_prefix = '';
    let err: unknown;
    try {
      buildSnapshot(bad);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ResourceInvalidError);
    const issue = (err as ResourceInvalidError).issues[0]!;
    expect(issue).toMatchObject({ typeUrl: XDS.listener, resource: 'http', rule: 'string.min_len = 1' });
    expect(issue.path).toContain('stat_prefix');
    await new Promise((r) => setTimeout(r, 300));
    expect(server.metrics.total('xds_responses_total')).toBe(before);
  });

  it('a resource Envoy rejects is NACKed with its error_detail, never resent, and the next good version is ACKed', async () => {
    const good = current;
    const nacks: PortcullisEvent[] = [];
    const off = events.on((e) => e.type === 'config.nack' && nacks.push(e));
    // Passes our validator (each field is fine) but Envoy refuses duplicate domains across virtual hosts.
    const dup = input('hello dup');
    dup[XDS.route] = [
      routeConfig('main', [
        { name: 'one', domains: ['dup.test'], direct: { status: 200, body: 'one' } },
        { name: 'two', domains: ['dup.test'], direct: { status: 200, body: 'two' } },
      ]),
    ];
    const bad = buildSnapshot(dup);
    publish(bad);
    await eventually(() => nacks.length > 0, 15_000, 'the NACK');
    expect(nacks[0]!.data).toMatchObject({ typeUrl: XDS.route, version: bad.version });
    expect(String(nacks[0]!.data.errorDetail)).toMatch(/domain/i);
    expect(server.cache.isNacked(nodeId, XDS.route, bad.version)).toBe(true);
    const rdsSends = server.metrics.get('xds_responses_total', { type: 'RDS', flavor: ads });
    await new Promise((r) => setTimeout(r, 1500));
    expect(server.metrics.get('xds_responses_total', { type: 'RDS', flavor: ads })).toBe(rdsSends);
    // Envoy keeps the last good routes
    expect((await envoy.versions(XDS.route)).resources.find((r) => r.name === 'main')?.version).toBe(routeVersion(good));
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'hello v1' });
    // next good version
    publish(buildSnapshot(input('hello v3')));
    await applied(envoy, current, XDS.route);
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'hello v3' });
    off();
    expect(nacks).toHaveLength(1);
  });

  it('coalesces a burst of changes into one push', async () => {
    const before = server.metrics.get('xds_responses_total', { type: 'RDS', flavor: ads });
    const snaps = Array.from({ length: 10 }, (_, i) => buildSnapshot(input(`burst ${i}`)));
    for (const s of snaps) server.cache.set(nodeId, s);
    current = snaps.at(-1)!;
    await applied(envoy, current, XDS.route);
    await new Promise((r) => setTimeout(r, server.cache.holdOffMs + 300));
    expect(server.metrics.get('xds_responses_total', { type: 'RDS', flavor: ads }) - before).toBe(1);
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'burst 9' });
  });

  it('Envoy killed and restarted resyncs to the latest version', async () => {
    await envoy.kill();
    envoy = await EnvoyProcess.start({ bootstrap: { nodeId, xds: { port: ports.xds }, ads, initialFetchTimeoutMs: 0 }, logger });
    await envoy.waitConnected();
    await allApplied(envoy, current);
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'burst 9' });
    expect(rejectedUpdates(await envoy.admin.stats())).toEqual({});
  });

  it('control plane restarted: Envoy reconnects by itself and resyncs to the latest version', async () => {
    await server.close(500);
    await envoy.waitDisconnected(15_000);
    server = await startServer();
    // A change made while the control plane was down reaches Envoy once it is back.
    publish(buildSnapshot({ ...input('after restart'), [XDS.listener]: [httpListener('http', ports.http, 'main')] }));
    await envoy.waitConnected(20_000);
    await envoy.waitForVersion(XDS.listener, current.version, 20_000);
    await applied(envoy, current, XDS.route);
    expect(await get(ports.http, 'hello.test')).toEqual({ status: 200, body: 'after restart' });
    // the TLS listener was removed with that snapshot
    const listeners = (await envoy.versions(XDS.listener)).resources.map((r) => r.name);
    expect(listeners).toEqual(['http']);
  });
});
