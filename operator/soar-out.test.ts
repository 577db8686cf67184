import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { loadOrCreateWebhookKey, publishJwks, SOAR_JWKS_FILE, type WebhookSigningKey } from './soar-keys.js';
import { backoffDelay, OUTBOX_FILE, SoarOutbox, WEBHOOK_JWT_TYP, type OutboxEvent } from './soar-out.js';
import { startReceiver, tempDir, until, type TestReceiver } from './testkit.js';

/**
 * The receiver outage of the issue ("down for a minute, then back") is shortened to
 * OPERATOR_TEST_DOWNTIME_MS (default 1500 ms) with backoff base 20 ms / cap 200 ms, so the outbox
 * retries through the outage many times.
 */
const DOWNTIME_MS = Number(process.env.OPERATOR_TEST_DOWNTIME_MS ?? 1500);
const FAST = { baseMs: 20, maxMs: 200 };

async function verifyAll(r: TestReceiver, jwksFile: string): Promise<OutboxEvent[]> {
  const jwks = JSON.parse(await readFile(jwksFile, 'utf8')) as JSONWebKeySet;
  const keyset = createLocalJWKSet(jwks);
  const out: OutboxEvent[] = [];
  for (const m of r.received) {
    expect(decodeProtectedHeader(m.body)).toMatchObject({ alg: 'EdDSA', typ: WEBHOOK_JWT_TYP });
    const { payload } = await jwtVerify(m.body, keyset, { audience: r.url, issuer: 'portcullis', algorithms: ['EdDSA'], requiredClaims: ['jti', 'iat', 'exp'] });
    const ev = payload.event as OutboxEvent;
    expect(payload.jti).toBe(ev.id);
    expect(m.eventId).toBe(ev.id);
    if (ev.sessionId) expect(payload.sub).toBe(ev.sessionId);
    out.push(ev);
  }
  return out;
}

describe('SOAR webhooks out', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function env() {
    const t = tempDir();
    const receiver = await startReceiver();
    const key = await loadOrCreateWebhookKey(join(t.dir, 'keys', 'soar-signing.jwk'));
    const { path: jwksFile } = await publishJwks(t.dir, [key]);
    cleanups.push(t.cleanup, () => receiver.stop());
    const open = async (extra: Partial<Parameters<typeof SoarOutbox.open>[0]> = {}) => {
      const box = await SoarOutbox.open({ dataDir: t.dir, logger: silentLogger(), metrics: new Metrics(), targets: [{ url: receiver.url, key }], backoff: FAST, ...extra });
      cleanups.push(() => box.close());
      return box;
    };
    return { dir: t.dir, receiver, key, jwksFile, open };
  }

  it('every webhook verifies with the published JWKS (kid, iat, exp, jti = event id, aud = the webhook)', async () => {
    const { receiver, jwksFile, open, key } = await env();
    const box = await open();
    const a = box.enqueue({ type: 'exfil.tripped', severity: 'critical', source: 'tripwire', sessionId: 's1', data: { bytes: 5, token: 'must-not-leak' } });
    box.enqueue({ type: 'config.nack', severity: 'error', source: 'xds-server', data: { typeUrl: 'x' } });
    await a.durable;
    await box.idle();
    const evs = await verifyAll(receiver, jwksFile);
    // order is guaranteed per session; these two belong to different queues
    expect(evs.map((e) => e.type).sort()).toEqual(['config.nack', 'exfil.tripped']);
    const tripped = evs.findIndex((e) => e.type === 'exfil.tripped');
    expect(evs[tripped]).toMatchObject({ id: a.id, sessionId: 's1', data: { bytes: 5, token: '[redacted]' } });
    expect(decodeProtectedHeader(receiver.received[tripped]!.body).kid).toBe(key.kid);
    // a tampered body does not verify
    const [h, p, s] = receiver.received[tripped]!.body.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), sub: 'other' })).toString('base64url')}.${s}`;
    const jwks = JSON.parse(await readFile(jwksFile, 'utf8')) as JSONWebKeySet;
    await expect(jwtVerify(forged, createLocalJWKSet(jwks))).rejects.toThrow();
    expect(box.deliveries().targets[0]).toMatchObject({ url: receiver.url, delivered: 2, pending: 0, dead: 0 });
  });

  it('a restart loses nothing: queued events are delivered by the next process, acknowledged ones never again', async () => {
    const { receiver, jwksFile, open, dir } = await env();
    await receiver.stop();
    const box1 = await open();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = box1.enqueue({ type: 'policy.violation', severity: 'warning', source: 'test', sessionId: `s${i % 2}`, data: { i } });
      ids.push(r.id);
      await r.durable;
    }
    expect(box1.deliveries().targets[0]!.pending).toBe(5);
    await box1.close();

    await receiver.start();
    const box2 = await open();
    await box2.idle();
    const evs = await verifyAll(receiver, jwksFile);
    expect(evs.map((e) => e.id).sort()).toEqual([...ids].sort());
    expect(receiver.received).toHaveLength(5);
    await box2.close();

    const box3 = await open();
    expect(box3.deliveries().targets[0]!.pending).toBe(0);
    await box3.idle();
    expect(receiver.received).toHaveLength(5);
    // the journal was compacted down to nothing pending
    const lines = (await readFile(join(dir, OUTBOX_FILE), 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { t: string });
    expect(lines.filter((l) => l.t === 'e')).toEqual([]);
  });

  it(`receiver down for ${DOWNTIME_MS} ms then back: every event delivered, once, in order per session`, async () => {
    const { receiver, jwksFile, open } = await env();
    const metrics = new Metrics();
    const box = await open({ metrics, concurrency: 3 });
    const bus = new EventBus();
    box.attach(bus);
    bus.emit({ type: 'exfil.tripped', severity: 'critical', source: 't', sessionId: 's0', data: { n: -1 } });
    await box.idle();
    await receiver.stop();
    const down = Date.now();
    let n = 0;
    while (Date.now() - down < DOWNTIME_MS) {
      bus.emit({ type: n % 3 === 0 ? 'session.flagged' : 'policy.violation', severity: 'warning', source: 't', sessionId: `s${n % 3}`, data: { n } });
      bus.emit({ type: 'network.egress', severity: 'info', source: 'envoy', data: {} }); // not a SOAR event
      n++;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(metrics.get('soar_delivery_failures_total')).toBeGreaterThan(1);
    await receiver.start();
    await box.idle();
    const evs = await verifyAll(receiver, jwksFile);
    expect(evs).toHaveLength(n + 1);
    expect(new Set(evs.map((e) => e.id)).size).toBe(evs.length);
    for (const s of ['s0', 's1', 's2']) {
      const mine = evs.filter((e) => e.sessionId === s).map((e) => e.seq);
      expect(mine).toEqual([...mine].sort((a, b) => a - b));
    }
    expect(evs.some((e) => e.type === 'network.egress')).toBe(false);
  });

  it('a permanent refusal (4xx) settles the event as dead and the next one goes on; 503 is retried', async () => {
    const { receiver, open } = await env();
    const box = await open();
    receiver.status = 400;
    box.enqueue({ type: 'auth.anomaly', severity: 'warning', source: 't', data: {} });
    await box.idle();
    receiver.status = 503;
    box.enqueue({ type: 'auth.anomaly', severity: 'warning', source: 't', data: { second: true } });
    await until(() => receiver.received.length >= 3);
    receiver.status = 204;
    await box.idle();
    const d = box.deliveries();
    expect(d.targets[0]).toMatchObject({ delivered: 1, dead: 1, pending: 0 });
    expect(d.items.map((i) => [i.state, i.lastStatus])).toEqual([
      ['dead', 400],
      ['delivered', 204],
    ]);
    expect(d.items[1]!.attempts).toBeGreaterThanOrEqual(2);
  });

  it('backoff grows exponentially with jitter between half and all of the ceiling, capped', () => {
    expect([1, 2, 3, 4].map((n) => backoffDelay(n, 100, 10_000, () => 0))).toEqual([50, 100, 200, 400]);
    expect([1, 2, 3, 4].map((n) => backoffDelay(n, 100, 10_000, () => 1))).toEqual([100, 200, 400, 800]);
    expect(backoffDelay(50, 100, 10_000, () => 0.5)).toBe(7500);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(3, 100, 10_000);
      expect(d).toBeGreaterThanOrEqual(200);
      expect(d).toBeLessThanOrEqual(400);
    }
  });

  it('the signing key is created 0600 and reloaded with the same kid; the JWKS keeps earlier keys', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const file = join(t.dir, 'k', 'hook.jwk');
    const k1 = await loadOrCreateWebhookKey(file);
    const { statSync } = await import('node:fs');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const again = await loadOrCreateWebhookKey(file);
    expect(again.kid).toBe(k1.kid);
    const k2: WebhookSigningKey = await loadOrCreateWebhookKey(join(t.dir, 'k', 'other.jwk'));
    await publishJwks(t.dir, [k1]);
    const { jwks } = await publishJwks(t.dir, [k2]);
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual([k1.kid, k2.kid].sort());
    expect(JSON.stringify(jwks)).not.toContain('"d"');
    expect(JSON.parse(await readFile(join(t.dir, SOAR_JWKS_FILE), 'utf8'))).toEqual(jwks);
    const { chmodSync } = await import('node:fs');
    chmodSync(file, 0o644);
    await expect(loadOrCreateWebhookKey(file)).rejects.toMatchObject({ code: 'credential_unavailable' });
  });
});
