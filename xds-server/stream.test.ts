import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { status } from '@grpc/grpc-js';
import { SnapshotCache } from './cache.js';
import { DeltaStream, SotwStream, type StreamFailure } from './stream.js';
import { fakeContent, fakeSnapshot } from './testkit.js';
import { XDS, type XdsTypeUrl } from '../envoy/api/type-urls.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { EventBus } from '../common/events.js';
import type { DiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryResponse.js';
import type { DeltaDiscoveryResponse } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryResponse.js';
import type { DiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DiscoveryRequest.js';
import type { DeltaDiscoveryRequest__Output } from '../envoy/generated/envoy/service/discovery/v3/DeltaDiscoveryRequest.js';

/** The bytes of an Any in a response (the streams always send the encoded form). */
function anyValue(a: unknown): Buffer {
  return (a as { value: Buffer }).value;
}

const NODE = { id: 'envoy-1', cluster: 'portcullis' } as DiscoveryRequest__Output['node'];

function sotwReq(p: Partial<DiscoveryRequest__Output>): DiscoveryRequest__Output {
  return { version_info: '', node: null, resource_names: [], type_url: '', response_nonce: '', error_detail: null, resource_locators: [], ...p };
}
function deltaReq(p: Partial<DeltaDiscoveryRequest__Output>): DeltaDiscoveryRequest__Output {
  return {
    node: null, type_url: '', resource_names_subscribe: [], resource_names_unsubscribe: [], initial_resource_versions: {},
    response_nonce: '', error_detail: null, resource_locators_subscribe: [], resource_locators_unsubscribe: [], ...p,
  } as DeltaDiscoveryRequest__Output;
}

function setup() {
  const cache = new SnapshotCache({ holdOffMs: 0 });
  const events = new EventBus();
  const metrics = new Metrics();
  const sent: DiscoveryResponse[] = [];
  const deltas: DeltaDiscoveryResponse[] = [];
  const failures: StreamFailure[] = [];
  const deps = { cache, logger: silentLogger(), metrics, events };
  const sotw = () => new SotwStream(deps, { send: (r) => sent.push(r), fail: (f) => failures.push(f) });
  const delta = () => new DeltaStream(deps, { send: (r) => deltas.push(r), fail: (f) => failures.push(f) });
  return { cache, events, metrics, sent, deltas, failures, sotw, delta };
}

const names = (r: DiscoveryResponse) => (r.resources ?? []).map((a) => fakeContent(anyValue(a)).name);

describe('SotW stream', () => {
  it('answers a first wildcard request with the complete set and waits for the ACK', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1', b: '1' } }));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.listener }));
    expect(t.sent).toHaveLength(1);
    expect(t.sent[0]!.version_info).toBe('v1');
    expect(names(t.sent[0]!)).toEqual(['a', 'b']);
    s.onRequest(sotwReq({ type_url: XDS.listener, version_info: 'v1', response_nonce: t.sent[0]!.nonce! }));
    expect(t.sent).toHaveLength(1);
    expect(t.metrics.get('xds_ack_total', { type: 'LDS' })).toBe(1);
  });

  it('pushes in order CDS → EDS → SDS → LDS → RDS and removes stale listeners only after the ACKs', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { old: '1' }, [XDS.cluster]: { c1: '1' }, [XDS.route]: { r: '1' } }));
    const s = t.sotw();
    for (const type of [XDS.listener, XDS.cluster]) s.onRequest(sotwReq({ node: NODE, type_url: type }));
    s.onRequest(sotwReq({ type_url: XDS.route, resource_names: ['r'] }));
    for (const r of [...t.sent]) s.onRequest(sotwReq({ type_url: r.type_url!, version_info: r.version_info!, response_nonce: r.nonce!, resource_names: r.type_url === XDS.route ? ['r'] : [] }));
    t.sent.length = 0;
    t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.listener]: { new: '1' }, [XDS.cluster]: { c2: '1' }, [XDS.route]: { r: '2' } }));
    expect(t.sent.map((r) => r.type_url)).toEqual([XDS.cluster, XDS.listener, XDS.route]);
    // make before break: the new cluster and listener arrive alongside the old ones
    expect(names(t.sent[0]!)).toEqual(['c1', 'c2']);
    expect(names(t.sent[1]!)).toEqual(['new', 'old']);
    expect(t.sent[0]!.version_info).toBe('v2.keep');
    const first = [...t.sent];
    t.sent.length = 0;
    for (const r of first) s.onRequest(sotwReq({ type_url: r.type_url!, version_info: r.version_info!, response_nonce: r.nonce!, resource_names: r.type_url === XDS.route ? ['r'] : [] }));
    // then the removals, listeners before clusters
    expect(t.sent.map((r) => r.type_url)).toEqual([XDS.listener, XDS.cluster]);
    expect(names(t.sent[0]!)).toEqual(['new']);
    expect(names(t.sent[1]!)).toEqual(['c2']);
    expect(t.sent.every((r) => r.version_info === 'v2')).toBe(true);
  });

  it('records a NACK, emits config.nack, and never resends the NACKed version', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1' } }));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.listener }));
    s.onRequest(sotwReq({ type_url: XDS.listener, version_info: 'v1', response_nonce: t.sent[0]!.nonce! }));
    t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.listener]: { a: 'bad' } }));
    const bad = t.sent[1]!;
    expect(bad.version_info).toBe('v2');
    s.onRequest(sotwReq({ type_url: XDS.listener, version_info: 'v1', response_nonce: bad.nonce!, error_detail: { code: 3, message: 'duplicate domain', details: [] } }));
    expect(t.cache.isNacked('envoy-1', XDS.listener, 'v2')).toBe(true);
    expect(t.metrics.get('xds_nack_total', { type: 'LDS' })).toBe(1);
    expect(t.events.history('config.nack')[0]?.data).toMatchObject({ version: 'v2', errorDetail: 'duplicate domain' });
    // a new stream (Envoy reconnects) must not be given v2 again
    const s2 = t.sotw();
    s2.onRequest(sotwReq({ node: NODE, type_url: XDS.listener, version_info: 'v1' }));
    expect(t.sent).toHaveLength(2);
    // the next good version goes out
    t.cache.setNow('envoy-1', fakeSnapshot('v3', { [XDS.listener]: { a: 'good' } }));
    expect(t.sent.slice(2).map((r) => r.version_info)).toEqual(['v3', 'v3']);
    s.close();
    s2.close();
  });

  it('answers newly requested names at once and resends every requested secret', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.secret]: { s1: 'x', s2: 'y' } }));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.secret, resource_names: ['s1'] }));
    expect(names(t.sent[0]!)).toEqual(['s1']);
    s.onRequest(sotwReq({ type_url: XDS.secret, resource_names: ['s1', 's2'], version_info: 'v1', response_nonce: t.sent[0]!.nonce! }));
    expect(names(t.sent[1]!)).toEqual(['s1', 's2']);
    s.onRequest(sotwReq({ type_url: XDS.secret, resource_names: ['s1', 's2'], version_info: 'v1', response_nonce: t.sent[1]!.nonce! }));
    // s1 changes: the response still carries s2
    t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.secret]: { s1: 'x2', s2: 'y' } }));
    expect(names(t.sent[2]!)).toEqual(['s1', 's2']);
  });

  it('re-sends a resource after unsubscribe then subscribe', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.route]: { r1: 'x', r2: 'y' } }));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.route, resource_names: ['r1', 'r2'] }));
    s.onRequest(sotwReq({ type_url: XDS.route, resource_names: ['r1'], version_info: 'v1', response_nonce: t.sent[0]!.nonce! }));
    expect(t.sent).toHaveLength(1);
    s.onRequest(sotwReq({ type_url: XDS.route, resource_names: ['r1', 'r2'], version_info: 'v1', response_nonce: t.sent[0]!.nonce! }));
    expect(t.sent).toHaveLength(2);
    expect(names(t.sent[1]!)).toEqual(['r1', 'r2']);
  });

  it('refuses malformed requests with a clear status and leaves other streams alone', () => {
    const cases: Array<[Partial<DiscoveryRequest__Output>, status, RegExp]> = [
      [{ type_url: XDS.listener }, status.INVALID_ARGUMENT, /node\.id/],
      [{ node: { ...NODE!, id: 'who' }, type_url: XDS.listener }, status.NOT_FOUND, /no configuration for node/],
      [{ node: NODE, type_url: 'type.googleapis.com/foo.Bar' }, status.INVALID_ARGUMENT, /unsupported type_url/],
      [{ node: NODE, type_url: '' }, status.INVALID_ARGUMENT, /type_url is required/],
      [{ node: NODE, type_url: XDS.route, resource_names: Array.from({ length: 100_000 }, (_, i) => `r${i}`) }, status.RESOURCE_EXHAUSTED, /limit/],
      [{ node: NODE, type_url: XDS.listener, response_nonce: 'garbage' }, status.INVALID_ARGUMENT, /never issued/],
      [{ node: NODE, type_url: XDS.route, resource_names: ['x'.repeat(5000)] }, status.INVALID_ARGUMENT, /longer than/],
    ];
    for (const [req, code, msg] of cases) {
      const t = setup();
      t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1' } }));
      const good = t.sotw();
      good.onRequest(sotwReq({ node: NODE, type_url: XDS.listener }));
      const bad = t.sotw();
      bad.onRequest(sotwReq(req));
      expect(t.failures).toHaveLength(1);
      expect(t.failures[0]!.code).toBe(code);
      expect(t.failures[0]!.message).toMatch(msg);
      expect(bad.isClosed).toBe(true);
      // the good stream still receives updates
      t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.listener]: { a: '2' } }));
      expect(good.isClosed).toBe(false);
      expect(t.sent.at(-1)?.version_info).toBe('v2');
    }
  });

  it('ignores a stale nonce (superseded response) instead of treating it as an ACK', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1' } }));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.listener }));
    t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.listener]: { a: '2' } }));
    // NACK carrying the superseded nonce: must not be recorded against v2
    s.onRequest(sotwReq({ type_url: XDS.listener, response_nonce: t.sent[0]!.nonce!, error_detail: { code: 3, message: 'x', details: [] } }));
    expect(t.cache.isNacked('envoy-1', XDS.listener, 'v2')).toBe(false);
    expect(t.cache.isNacked('envoy-1', XDS.listener, 'v1')).toBe(false);
    expect(t.metrics.get('xds_stale_nonce_total', { type: 'LDS' })).toBe(1);
  });

  it('does not resend a wildcard type to a reconnecting client that already holds the version', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1' } }));
    t.sotw().onRequest(sotwReq({ node: NODE, type_url: XDS.listener, version_info: 'v1' }));
    expect(t.sent).toHaveLength(0);
    t.sotw().onRequest(sotwReq({ node: NODE, type_url: XDS.listener, version_info: 'v0' }));
    expect(t.sent).toHaveLength(1);
  });
});

describe('Delta stream', () => {
  it('sends only changed resources, and removals after the updates are acknowledged', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.listener]: { a: '1', b: '1', c: '1' }, [XDS.cluster]: { k: '1' } }));
    const s = t.delta();
    s.onRequest(deltaReq({ node: NODE, type_url: XDS.cluster }));
    s.onRequest(deltaReq({ type_url: XDS.listener }));
    expect(t.deltas.map((d) => d.resources!.length)).toEqual([1, 3]);
    for (const d of [...t.deltas]) s.onRequest(deltaReq({ type_url: d.type_url!, response_nonce: d.nonce! }));
    t.deltas.length = 0;
    t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.listener]: { a: '2', b: '1' }, [XDS.cluster]: { k: '1' } }));
    expect(t.deltas).toHaveLength(1);
    expect(t.deltas[0]!.resources!.map((r) => r.name)).toEqual(['a']);
    expect(t.deltas[0]!.removed_resources).toEqual([]);
    s.onRequest(deltaReq({ type_url: XDS.listener, response_nonce: t.deltas[0]!.nonce! }));
    expect(t.deltas).toHaveLength(2);
    expect(t.deltas[1]!.resources).toEqual([]);
    expect(t.deltas[1]!.removed_resources).toEqual(['c']);
  });

  it('honours initial_resource_versions on reconnect and reports missing named resources as removed', () => {
    const t = setup();
    const snap = fakeSnapshot('v1', { [XDS.listener]: { a: '1', b: '1' }, [XDS.secret]: { s: 'x' } });
    t.cache.setNow('envoy-1', snap);
    const s = t.delta();
    const a = snap.resources.get(XDS.listener)!.get('a')!;
    s.onRequest(deltaReq({ node: NODE, type_url: XDS.listener, initial_resource_versions: { a: a.hash, gone: 'zzz' } }));
    expect(t.deltas[0]!.resources!.map((r) => r.name)).toEqual(['b']);
    s.onRequest(deltaReq({ type_url: XDS.listener, response_nonce: t.deltas[0]!.nonce! }));
    expect(t.deltas[1]!.removed_resources).toEqual(['gone']);
    s.onRequest(deltaReq({ type_url: XDS.listener, response_nonce: t.deltas[1]!.nonce! }));
    s.onRequest(deltaReq({ type_url: XDS.secret, resource_names_subscribe: ['s', 'nope'] }));
    expect(t.deltas[2]!.resources!.map((r) => r.name)).toEqual(['s']);
    s.onRequest(deltaReq({ type_url: XDS.secret, response_nonce: t.deltas[2]!.nonce! }));
    expect(t.deltas[3]!.removed_resources).toEqual(['nope']);
  });
});

// ─── Property: random updates, subscriptions, ACKs and NACKs ───

type Op =
  | { kind: 'publish'; listeners: Record<string, string>; routes: Record<string, string>; bad: boolean }
  | { kind: 'deliver'; count: number }
  | { kind: 'subscribe'; routes: string[] }
  | { kind: 'stale' };

const nameArb = fc.constantFrom('a', 'b', 'c', 'd');
const contentArb = fc.constantFrom('1', '2', '3');
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('publish' as const), listeners: fc.dictionary(nameArb, contentArb), routes: fc.dictionary(nameArb, contentArb), bad: fc.boolean() }),
  fc.record({ kind: fc.constant('deliver' as const), count: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('subscribe' as const), routes: fc.uniqueArray(nameArb, { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('stale' as const) }),
);

interface Client {
  held: Map<XdsTypeUrl, Map<string, string>>;
  version: Map<XdsTypeUrl, string>;
  routeNames: string[];
}

function runModel(flavor: 'sotw' | 'delta', ops: Op[]) {
  const t = setup();
  const published = new Map<string, ReturnType<typeof fakeSnapshot>>();
  const badVersions = new Set<string>();
  let seq = 0;
  const publish = (listeners: Record<string, string>, routes: Record<string, string>, bad: boolean) => {
    const v = `v${++seq}`;
    const snap = fakeSnapshot(v, { [XDS.listener]: listeners, [XDS.route]: routes });
    published.set(v, snap);
    if (bad) badVersions.add(v);
    t.cache.setNow('envoy-1', snap);
  };
  publish({ a: '1' }, { a: '1' }, false);
  const client: Client = { held: new Map([[XDS.listener, new Map()], [XDS.route, new Map()]]), version: new Map(), routeNames: ['a'] };
  const queue: Array<DiscoveryResponse | DeltaDiscoveryResponse> = [];
  const seen: Array<DiscoveryResponse | DeltaDiscoveryResponse> = [];
  const sotw = flavor === 'sotw' ? t.sotw() : undefined;
  const delta = flavor === 'delta' ? t.delta() : undefined;
  const origPushS = t.sent.push.bind(t.sent);
  t.sent.push = (...r: DiscoveryResponse[]) => { queue.push(...r); seen.push(...r); return origPushS(...r); };
  const origPushD = t.deltas.push.bind(t.deltas);
  t.deltas.push = (...r: DeltaDiscoveryResponse[]) => { queue.push(...r); seen.push(...r); return origPushD(...r); };
  let lastNonce: Record<string, string> = {};

  if (sotw) {
    sotw.onRequest(sotwReq({ node: NODE, type_url: XDS.listener }));
    sotw.onRequest(sotwReq({ type_url: XDS.route, resource_names: client.routeNames }));
  } else {
    delta!.onRequest(deltaReq({ node: NODE, type_url: XDS.listener }));
    delta!.onRequest(deltaReq({ type_url: XDS.route, resource_names_subscribe: client.routeNames }));
  }

  const deliverOne = () => {
    const r = queue.shift();
    if (!r) return;
    const type = r.type_url as XdsTypeUrl;
    const version = 'version_info' in r ? (r as DiscoveryResponse).version_info! : (r as DeltaDiscoveryResponse).system_version_info!;
    const base = version.replace(/\.keep$/, '');
    const isBad = badVersions.has(base) && type === XDS.listener;
    lastNonce[type] = r.nonce!;
    if (isBad) {
      if (sotw) sotw.onRequest(sotwReq({ type_url: type, version_info: client.version.get(type) ?? '', response_nonce: r.nonce!, error_detail: { code: 3, message: 'bad', details: [] }, resource_names: [] }));
      else delta!.onRequest(deltaReq({ type_url: type, response_nonce: r.nonce!, error_detail: { code: 3, message: 'bad', details: [] } }));
      return;
    }
    const held = client.held.get(type)!;
    if (sotw) {
      const resp = r as DiscoveryResponse;
      if (type === XDS.listener) held.clear();
      for (const a of resp.resources ?? []) {
        const { name, content } = fakeContent(anyValue(a));
        if (type === XDS.route && !client.routeNames.includes(name)) continue; // not subscribed (any more)
        held.set(name, content);
      }
      client.version.set(type, version);
      sotw.onRequest(sotwReq({ type_url: type, version_info: version, response_nonce: r.nonce!, resource_names: type === XDS.route ? client.routeNames : [] }));
    } else {
      const resp = r as DeltaDiscoveryResponse;
      for (const res of resp.resources ?? []) {
        if (type === XDS.route && !client.routeNames.includes(res.name!)) continue; // not subscribed (any more)
        held.set(res.name!, fakeContent(anyValue(res.resource!)).content);
      }
      for (const n of resp.removed_resources ?? []) held.delete(n);
      delta!.onRequest(deltaReq({ type_url: type, response_nonce: r.nonce! }));
    }
  };

  for (const op of ops) {
    if (op.kind === 'publish') publish(op.listeners, op.routes, op.bad);
    else if (op.kind === 'deliver') for (let i = 0; i < op.count; i++) deliverOne();
    else if (op.kind === 'subscribe') {
      const prev = client.routeNames;
      client.routeNames = op.routes;
      if (sotw) sotw.onRequest(sotwReq({ type_url: XDS.route, resource_names: op.routes, version_info: client.version.get(XDS.route) ?? '', response_nonce: lastNonce[XDS.route] ?? '' }));
      else {
        delta!.onRequest(deltaReq({ type_url: XDS.route, resource_names_subscribe: op.routes.filter((n) => !prev.includes(n)), resource_names_unsubscribe: prev.filter((n) => !op.routes.includes(n)), response_nonce: '' }));
        for (const n of prev) if (!op.routes.includes(n)) client.held.get(XDS.route)!.delete(n);
      }
      if (sotw) for (const n of [...client.held.get(XDS.route)!.keys()]) if (!op.routes.includes(n)) client.held.get(XDS.route)!.delete(n);
    } else if (op.kind === 'stale') {
      // replay an old nonce: must be ignored, never crash
      const nonce = seen[0]?.nonce;
      if (nonce && sotw) sotw.onRequest(sotwReq({ type_url: seen[0]!.type_url!, response_nonce: nonce, resource_names: seen[0]!.type_url === XDS.route ? client.routeNames : [] }));
      if (nonce && delta) delta.onRequest(deltaReq({ type_url: seen[0]!.type_url!, response_nonce: nonce }));
    }
  }
  // Finally a good snapshot; deliver until quiet.
  publish({ a: 'final', b: 'final' }, { a: 'final', b: 'final', c: 'final', d: 'final' }, false);
  for (let i = 0; i < 1000 && queue.length; i++) deliverOne();
  return { t, client, seen, published, badVersions, final: `v${seq}` };
}

describe.each(['sotw', 'delta'] as const)('%s stream property', (flavor) => {
  it('never sends a NACKed version or an inconsistent resource, and converges on the latest good snapshot', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const { t, client, seen, published, final } = runModel(flavor, ops);
        expect(t.failures).toEqual([]);
        // 1. every resource in every response belongs to a published snapshot (the one named, or an
        //    earlier one for make-before-break responses)
        for (const r of seen) {
          const type = r.type_url as XdsTypeUrl;
          const version = ('version_info' in r ? r.version_info : (r as DeltaDiscoveryResponse).system_version_info)!.replace(/\.keep$/, '');
          const snap = published.get(version);
          expect(snap, `unknown version ${version}`).toBeDefined();
          const items = 'version_info' in r ? (r as DiscoveryResponse).resources!.map((a) => fakeContent(anyValue(a))) : (r as DeltaDiscoveryResponse).resources!.map((x) => fakeContent(anyValue(x.resource!)));
          for (const it of items) {
            const matches = [...published.values()].some((s) => s.resources.get(type)!.get(it.name) && fakeContent(s.resources.get(type)!.get(it.name)!.encoded).content === it.content);
            expect(matches).toBe(true);
          }
        }
        // 2. no response after a NACK carries the NACKed version for that type
        const nacked = t.cache.nackHistory();
        for (const n of nacked) {
          const idx = seen.findIndex((r) => r.nonce && n.version && r.type_url === n.typeUrl && ('version_info' in r ? r.version_info : (r as DeltaDiscoveryResponse).system_version_info)?.replace(/\.keep$/, '') === n.version);
          const count = seen.filter((r) => r.type_url === n.typeUrl && ('version_info' in r ? r.version_info : (r as DeltaDiscoveryResponse).system_version_info)?.replace(/\.keep$/, '') === n.version).length;
          expect(idx).toBeGreaterThanOrEqual(0);
          expect(count).toBe(1);
        }
        // 3. converged: the client holds exactly the final snapshot (listeners; routes it asked for)
        const snap = published.get(final)!;
        const want = (type: XdsTypeUrl, filter?: string[]) =>
          Object.fromEntries([...snap.resources.get(type)!.values()].filter((r) => !filter || filter.includes(r.name)).map((r) => [r.name, fakeContent(r.encoded).content]));
        expect(Object.fromEntries(client.held.get(XDS.listener)!)).toEqual(want(XDS.listener));
        expect(Object.fromEntries(client.held.get(XDS.route)!)).toEqual(want(XDS.route, client.routeNames));
      }),
      { numRuns: 1500 },
    );
  });
});

describe('secrets made on demand (the cache resolver)', () => {
  it('SotW and Delta: a requested secret the snapshot lacks is resolved before the answer, in the same response', () => {
    for (const flavor of ['sotw', 'delta'] as const) {
      const t = setup();
      t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.secret]: { 'leaf:api.example.com': '1' } }));
      const asked: string[][] = [];
      t.cache.onMissing((key, typeUrl, missing) => {
        asked.push([...missing]);
        if (key !== 'envoy-1' || typeUrl !== XDS.secret) return;
        // the resolver publishes at once, only names it allows
        const allowed = missing.filter((n) => n.endsWith('.wild.example.com'));
        if (allowed.length) t.cache.setNow('envoy-1', fakeSnapshot('v2', { [XDS.secret]: { 'leaf:api.example.com': '1', ...Object.fromEntries(allowed.map((n) => [n, '1'])) } }));
      });
      const want = ['a.wild.example.com', 'leaf:api.example.com', 'evil.example.org'];
      if (flavor === 'sotw') {
        t.sotw().onRequest(sotwReq({ node: NODE, type_url: XDS.secret, resource_names: want }));
        const last = t.sent.at(-1)!;
        expect(names(last).sort()).toEqual(['a.wild.example.com', 'leaf:api.example.com']);
      } else {
        t.delta().onRequest(deltaReq({ node: NODE, type_url: XDS.secret, resource_names_subscribe: want }));
        const got = t.deltas.flatMap((r) => (r.resources ?? []).map((x) => x.name));
        expect(got.sort()).toEqual(['a.wild.example.com', 'leaf:api.example.com']);
      }
      // only the missing names were asked for, once
      expect(asked).toEqual([['a.wild.example.com', 'evil.example.org']]);
    }
  });

  it('is never asked for other types, and a throwing resolver leaves the names missing', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.cluster]: { c: '1' }, [XDS.secret]: {} }));
    let calls = 0;
    t.cache.onMissing(() => {
      calls++;
      throw new Error('boom');
    });
    t.sotw().onRequest(sotwReq({ node: NODE, type_url: XDS.cluster, resource_names: ['nope'] }));
    expect(calls).toBe(0);
    const d = t.delta();
    d.onRequest(deltaReq({ node: NODE, type_url: XDS.secret, resource_names_subscribe: ['x.example.com'] }));
    expect(calls).toBe(1);
    expect(t.failures).toEqual([]);
    expect(t.deltas.flatMap((r) => (r.resources ?? []).map((x) => x.name))).toEqual([]);
  });
});

describe('secrets made on demand: asked once per name', () => {
  it('an ACK repeating the subscribed names does not ask the resolver again', () => {
    const t = setup();
    t.cache.setNow('envoy-1', fakeSnapshot('v1', { [XDS.secret]: { 'leaf:a': '1' } }));
    const asked: string[][] = [];
    t.cache.onMissing((_k, _t, missing) => asked.push([...missing]));
    const s = t.sotw();
    s.onRequest(sotwReq({ node: NODE, type_url: XDS.secret, resource_names: ['leaf:a', 'refused.example.org'] }));
    const r = t.sent.at(-1)!;
    s.onRequest(sotwReq({ type_url: XDS.secret, resource_names: ['leaf:a', 'refused.example.org'], version_info: r.version_info!, response_nonce: r.nonce! }));
    s.onRequest(sotwReq({ type_url: XDS.secret, resource_names: ['leaf:a', 'refused.example.org', 'new.example.org'], version_info: r.version_info!, response_nonce: r.nonce! }));
    expect(asked).toEqual([['refused.example.org'], ['new.example.org']]);
  });
});
