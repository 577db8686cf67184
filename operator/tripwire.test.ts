import { describe, expect, it, vi } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import type { NetworkEvent } from '../xds-server/als.js';
import { normalizeAuthority, Tripwire, type TripInfo, type TripwireConfig } from './tripwire.js';

function entry(p: Partial<NetworkEvent>): NetworkEvent {
  return {
    lane: 'egress',
    node: 'n',
    streamId: 's1',
    intermediate: false,
    method: 'CONNECT',
    authority: 'sink.test:443',
    status: 200,
    reason: null,
    session: 'sess-a',
    upstream: null,
    downstream: null,
    bytesOut: 0,
    bytesIn: 0,
    durationMs: null,
    ...p,
  };
}

function setup(cfg: Partial<TripwireConfig> = {}) {
  let t = 1_000_000;
  const bus = new EventBus();
  const metrics = new Metrics();
  const kills: TripInfo[] = [];
  const tw = new Tripwire({
    config: { bytesPerSession: 1000, distinctDestinations: 3, windowSeconds: 10, onTrip: 'alert', ...cfg },
    events: bus,
    metrics,
    logger: silentLogger(),
    now: () => t,
    onKill: async (i) => {
      kills.push(i);
    },
    staleStreamMs: 15_000,
  });
  tw.attach(bus, 0);
  const clock = { set: (v: number) => (t = v), advance: (ms: number) => (t += ms), get: () => t };
  const trips = () => bus.history('exfil.tripped');
  const send = (p: Partial<NetworkEvent>) => bus.emit({ type: 'network.egress', severity: 'info', source: 'envoy', data: { ...entry(p) } });
  return { tw, bus, metrics, kills, clock, trips, send };
}

describe('tripwire window math', () => {
  it('trips once the window holds more than the byte budget, not at the budget', () => {
    const { tw, trips, send, clock } = setup();
    send({ bytesOut: 600 });
    clock.advance(2000);
    send({ bytesOut: 300, bytesIn: 100 }); // exactly 1000: at the budget, not past it
    expect(trips()).toHaveLength(0);
    expect(tw.usage('sess-a')).toMatchObject({ bytes: 1000, tripped: false });
    clock.advance(1000);
    send({ bytesIn: 1 });
    expect(trips()).toHaveLength(1);
    expect(trips()[0]).toMatchObject({ sessionId: 'sess-a', severity: 'critical', data: { trigger: 'bytes', bytes: 1001, budgetBytes: 1000, reason: 'exfil_budget_exceeded' } });
  });

  it('forgets bytes once their whole bucket is older than the window', () => {
    const { tw, trips, send, clock } = setup();
    clock.set(1_000_000); // bucket [1_000_000, 1_001_000)
    send({ bytesOut: 900 });
    clock.set(1_010_999); // window (1_000_999, 1_010_999]: the bucket still overlaps it
    expect(tw.usage('sess-a').bytes).toBe(900);
    clock.set(1_011_000); // bucket end 1_001_000 <= horizon 1_001_000: gone
    expect(tw.usage('sess-a').bytes).toBe(0);
    send({ bytesOut: 900 });
    expect(trips()).toHaveLength(0);
    clock.advance(500);
    send({ bytesOut: 101 });
    expect(trips()).toHaveLength(1);
  });

  it('a slow drip that never holds more than the budget within one window never trips', () => {
    const { trips, send, clock } = setup();
    for (let i = 0; i < 100; i++) {
      send({ bytesOut: 90 }); // 90 B/s: at most 11 buckets (990 B) overlap a 10 s window
      clock.advance(1000);
    }
    expect(trips()).toHaveLength(0);
  });

  it('counts distinct destinations (normalized) and trips past the limit', () => {
    const { tw, trips, send, clock } = setup();
    send({ authority: 'A.test:443' });
    send({ authority: 'a.test.:443' });
    send({ authority: 'b.test:443' });
    send({ authority: 'c.test:8443' });
    expect(tw.usage('sess-a').destinations).toBe(3);
    expect(trips()).toHaveLength(0);
    clock.advance(100);
    send({ authority: 'd.test:443' });
    expect(trips()).toHaveLength(1);
    expect(trips()[0]!.data).toMatchObject({ trigger: 'destinations', destinations: 4 });
  });

  it('sessions are separate; bytes without a session are counted as unattributed, never tripped', () => {
    const { tw, trips, send, metrics } = setup();
    send({ session: 'a', bytesOut: 800 });
    send({ session: 'b', bytesOut: 800 });
    send({ session: null, bytesOut: 5000 });
    expect(trips()).toHaveLength(0);
    expect(tw.usage('a').bytes).toBe(800);
    expect(metrics.get('tripwire_unattributed_bytes_total')).toBe(5000);
  });

  it('counts only the tunnel leg: the inner requests of a bumped tunnel are not counted again', () => {
    const { tw, send } = setup();
    send({ lane: 'egress', bytesOut: 500 });
    send({ lane: 'egress_bump', bytesOut: 500, method: 'POST' });
    expect(tw.usage('sess-a').bytes).toBe(500);
  });

  it('refused requests move no payload and name no destination', () => {
    const { tw, send } = setup();
    send({ status: 403, reason: 'destination_not_allowed', authority: 'x.test:443', bytesOut: 50 });
    send({ status: 407, authority: 'y.test:443', bytesOut: 50 });
    expect(tw.usage('sess-a')).toMatchObject({ bytes: 0, destinations: 0 });
  });

  it('alert mode re-arms once usage is back under the budget; kill mode calls the kill switch once', () => {
    const alert = setup();
    alert.send({ bytesOut: 2000 });
    alert.send({ bytesOut: 10 });
    expect(alert.trips()).toHaveLength(1);
    alert.clock.advance(12_000);
    alert.tw.sweep();
    alert.send({ bytesOut: 2000 });
    expect(alert.trips()).toHaveLength(2);
    expect(alert.kills).toHaveLength(0);

    const kill = setup({ onTrip: 'kill' });
    kill.send({ bytesOut: 2000 });
    kill.send({ bytesOut: 2000 });
    expect(kill.trips()).toHaveLength(1);
    expect(kill.kills).toHaveLength(1);
    expect(kill.kills[0]).toMatchObject({ sessionId: 'sess-a', trigger: 'bytes', bytes: 2000 });
  });

  it('new budgets from a policy reload apply at the next entry', () => {
    const { tw, trips, send } = setup();
    send({ bytesOut: 800 });
    tw.setConfig({ ...tw.config, bytesPerSession: 500 });
    send({ bytesOut: 1 });
    expect(trips()).toHaveLength(1);
  });

  it('counts a long stream whose final entry never came, and mirrors Envoy\'s drop counter', () => {
    const { tw, send, clock, metrics } = setup();
    send({ streamId: 'long', intermediate: true, bytesOut: 10 });
    send({ streamId: 'done', intermediate: true, bytesOut: 10 });
    clock.advance(5000);
    send({ streamId: 'done', intermediate: false, bytesOut: 10 });
    clock.advance(9_999); // 'long' silent for 14.999 s
    tw.sweep();
    expect(metrics.get('tripwire_als_streams_lost_total')).toBe(0);
    clock.advance(1);
    tw.sweep();
    expect(metrics.get('tripwire_als_streams_lost_total')).toBe(1);
    tw.setEnvoyDropped(7);
    tw.setEnvoyDropped(7);
    tw.setEnvoyDropped(9);
    expect(metrics.get('tripwire_als_dropped_total')).toBe(9);
    expect(tw.status().lost).toEqual({ streams: 1, envoyDropped: 9, unattributedBytes: 0 });
  });

  it('a failing kill is counted, never thrown into the event bus', async () => {
    const bus = new EventBus();
    const metrics = new Metrics();
    const onKill = vi.fn(() => Promise.reject(new Error('audit down')));
    const tw = new Tripwire({ config: { bytesPerSession: 1, distinctDestinations: 9, windowSeconds: 10, onTrip: 'kill' }, events: bus, metrics, logger: silentLogger(), onKill });
    tw.observe(entry({ bytesOut: 5 }));
    await new Promise((r) => setImmediate(r));
    expect(onKill).toHaveBeenCalledOnce();
    expect(metrics.get('tripwire_kill_failed_total')).toBe(1);
  });
});

describe('normalizeAuthority', () => {
  it.each([
    ['API.Example.COM:443', 'api.example.com:443'],
    ['api.example.com.:443', 'api.example.com:443'],
    ['[2001:DB8::1]:8443', '[2001:db8::1]:8443'],
    ['plain.test', 'plain.test'],
    ['', ''],
  ])('%s → %s', (a, b) => expect(normalizeAuthority(a)).toBe(b));
});
