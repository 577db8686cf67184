import { afterEach, describe, expect, it, vi } from 'vitest';
import { decodeJwt, decodeProtectedHeader, importJWK, jwtVerify } from 'jose';
import { EventBus } from '../common/events.js';
import { PortcullisError } from '../common/errors.js';
import { rotationDelayMs, SessionCredentials, SigningKeyRing, SESSION_TOKEN_AUDIENCE, SESSION_TOKEN_ISSUER } from './credentials.js';

const HOUR = 3_600_000;

async function setup(ttlSeconds = 900) {
  let now = Date.UTC(2026, 0, 1);
  const clock = { now: () => now, advance: (ms: number) => (now += ms) };
  const events = new EventBus();
  const ring = await SigningKeyRing.create({ rotateEveryMs: 30 * 24 * HOUR, overlapMs: 24 * HOUR, now: clock.now, events });
  const creds = new SessionCredentials(ring, { ttlSeconds, now: clock.now });
  return { clock, ring, creds, events };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return e instanceof PortcullisError ? e.code : `other: ${(e as Error).message}`;
  }
}

describe('session credential', () => {
  it('is an EdDSA JWT with a kid, bound to session and container, exp = iat + TTL', async () => {
    const { creds, ring } = await setup(900);
    const c = await creds.mint('sess-1', 'cont-1');
    const h = decodeProtectedHeader(c.token);
    expect(h.alg).toBe('EdDSA');
    expect(h.kid).toBe(ring.current().kid);
    expect(h.kid).toBe(ring.kids()[0]);
    expect(h.kid).not.toBe(ring.nextKid());
    const p = decodeJwt(c.token);
    expect(p).toMatchObject({ sid: 'sess-1', cid: 'cont-1', sub: 'sess-1', iss: SESSION_TOKEN_ISSUER, aud: SESSION_TOKEN_AUDIENCE });
    expect(p.exp! - p.iat!).toBe(900);
    const claims = await creds.verify(c.token, { sessionId: 'sess-1', containerId: 'cont-1' });
    expect(claims.jti).toBe(c.jti);
  });

  it('verifies with the published JWKS alone (what the egress edge does)', async () => {
    const { creds, ring } = await setup();
    const c = await creds.mint('s', 'c');
    const jwk = ring.jwks().keys.find((k) => k.kid === decodeProtectedHeader(c.token).kid)!;
    expect(jwk.d).toBeUndefined();
    const key = await importJWK(jwk, 'EdDSA');
    const { payload } = await jwtVerify(c.token, key, { issuer: SESSION_TOKEN_ISSUER, audience: SESSION_TOKEN_AUDIENCE, currentDate: new Date(Date.UTC(2026, 0, 1)) });
    expect(payload.sid).toBe('s');
  });

  it('refuses a TTL above 60 minutes', async () => {
    const { ring } = await setup();
    expect(() => new SessionCredentials(ring, { ttlSeconds: 3601 })).toThrow(/3600/);
  });

  it('expires, with the stable reason', async () => {
    const { creds, clock } = await setup(60);
    const c = await creds.mint('s', 'c');
    clock.advance(61_000);
    expect(await code(creds.verify(c.token))).toBe('session_expired');
  });

  it('is refused when bound to another session or container, or missing, or tampered with', async () => {
    const { creds } = await setup();
    const c = await creds.mint('s1', 'c1');
    expect(await code(creds.verify(c.token, { sessionId: 's2' }))).toBe('session_credential_missing');
    expect(await code(creds.verify(c.token, { containerId: 'c2' }))).toBe('session_credential_missing');
    expect(await code(creds.verify(undefined))).toBe('session_credential_missing');
    expect(await code(creds.verify('garbage'))).toBe('session_credential_missing');
    const [h, p, s] = c.token.split('.');
    const forged = Buffer.from(JSON.stringify({ ...decodeJwt(c.token), sid: 's2', sub: 's2' })).toString('base64url');
    expect(await code(creds.verify(`${h}.${forged}.${s}`))).toBe('session_credential_missing');
    expect(await code(creds.verify(`${h}.${p}.${s}`))).toBe('ok');
  });

  it('revocation is immediate and blocks new tokens', async () => {
    const { creds } = await setup();
    const c = await creds.mint('s', 'c');
    creds.revoke('s');
    expect(await code(creds.verify(c.token))).toBe('session_revoked');
    expect(await code(creds.mint('s', 'c'))).toBe('session_revoked');
    expect(await code(creds.mint('other', 'c'))).toBe('ok');
  });

  it('a token from another key ring (e.g. before a supervisor restart) does not verify', async () => {
    const a = await setup();
    const b = await setup();
    const c = await a.creds.mint('s', 'c');
    expect(await code(b.creds.verify(c.token))).toBe('session_credential_missing');
  });
});

describe('signing-key rotation (NFR-SEC-11)', () => {
  it('old tokens keep verifying during the overlap, not after', async () => {
    const { creds, ring, clock, events } = await setup(3600);
    const before = await creds.mint('s', 'c');
    const oldKid = ring.current().kid;
    const newKid = await ring.rotate('test');
    const stagedKid = ring.nextKid();
    expect(newKid).not.toBe(oldKid);
    expect(events.history('session.signing_key_rotated').at(-1)?.data).toMatchObject({ kid: newKid, previousKid: oldKid, nextKid: stagedKid });
    const after = await creds.mint('s', 'c');
    expect(decodeProtectedHeader(after.token).kid).toBe(newKid);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([oldKid, newKid, stagedKid]);
    clock.advance(30 * 60_000);
    expect(await code(creds.verify(before.token))).toBe('ok');
    clock.advance(24 * HOUR);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([newKid, stagedKid]);
    expect(await code(creds.verify(before.token))).toBe('session_credential_missing');
  });

  it('publishes the next key before it signs: in jwks() ahead of the rotation that makes it current', async () => {
    const { creds, ring, events } = await setup();
    const cur = ring.current().kid;
    const staged = ring.nextKid();
    expect(staged).not.toBe(cur);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([cur, staged]);
    expect(ring.kids()).toEqual([cur, staged]);
    expect(ring.verificationKey(staged)).toBeDefined();
    expect(events.history('session.signing_key_rotated').at(-1)?.data).toMatchObject({ kid: cur, previousKid: null, nextKid: staged, reason: 'initial' });
    // never signs while staged
    expect(decodeProtectedHeader((await creds.mint('s', 'c')).token).kid).toBe(cur);

    expect(await ring.rotate('test')).toBe(staged);
    expect(ring.current().kid).toBe(staged);
    expect(decodeProtectedHeader((await creds.mint('s', 'c')).token).kid).toBe(staged);
    const staged2 = ring.nextKid();
    expect([cur, staged]).not.toContain(staged2);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([cur, staged, staged2]);
  });

  it('a retired key leaves jwks() (and stops verifying) once the overlap has passed, not before', async () => {
    const { ring, clock } = await setup();
    const old = ring.current().kid;
    await ring.rotate('test');
    clock.advance(24 * HOUR);
    expect(ring.kids()).toContain(old);
    expect(ring.verificationKey(old)).toBeDefined();
    clock.advance(1);
    expect(ring.jwks().keys.map((k) => k.kid)).not.toContain(old);
    expect(ring.verificationKey(old)).toBeUndefined();
    expect(ring.kids()).toEqual([ring.current().kid, ring.nextKid()]);
  });

  it('onChange fires at each rotation and stops after unsubscribing', async () => {
    const { ring } = await setup();
    let calls = 0;
    const off = ring.onChange(() => calls++);
    await ring.rotate('test');
    expect(calls).toBe(1);
    ring.jwks();
    expect(calls).toBe(1);
    off();
    await ring.rotate('test');
    expect(calls).toBe(1);
  });

  it('a listener that throws does not break the rotation nor the other listeners', async () => {
    const { ring, creds, events } = await setup();
    const staged = ring.nextKid();
    let calls = 0;
    ring.onChange(() => {
      throw new Error('listener failure');
    });
    ring.onChange(() => calls++);
    await expect(ring.rotate('test')).resolves.toBe(staged);
    expect(calls).toBe(1);
    expect(ring.current().kid).toBe(staged);
    expect(events.history('session.signing_key_rotated').at(-1)?.data).toMatchObject({ kid: staged });
    expect(decodeProtectedHeader((await creds.mint('s', 'c')).token).kid).toBe(staged);
  });

  it('refuses a rotation period above 90 days', async () => {
    await expect(SigningKeyRing.create({ rotateEveryMs: 91 * 24 * HOUR, overlapMs: HOUR })).rejects.toThrow(/90 days/);
  });
});

describe('signing-key auto-rotation timer', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('notices a retired key past its overlap by itself: onChange fires without anyone calling jwks()', async () => {
    vi.useFakeTimers({ now: Date.UTC(2026, 0, 1) });
    const ring = await SigningKeyRing.create({ rotateEveryMs: 30 * 24 * HOUR, overlapMs: 24 * HOUR });
    ring.startAutoRotation();
    const old = ring.current().kid;
    await ring.rotate('manual');
    let calls = 0;
    ring.onChange(() => calls++);
    await vi.advanceTimersByTimeAsync(24 * HOUR);
    expect(calls).toBe(0);
    // the timer wakes right when the overlap ends, not up to an hour later
    await vi.advanceTimersByTimeAsync(1_001);
    expect(calls).toBe(1);
    expect(ring.kids()).not.toContain(old);
    expect(calls).toBe(1);
    ring.stop();
  });

  it('rotates on schedule, promoting the published next key', async () => {
    vi.useFakeTimers({ now: Date.UTC(2026, 0, 1) });
    const ring = await SigningKeyRing.create({ rotateEveryMs: 2 * HOUR, overlapMs: HOUR });
    ring.startAutoRotation();
    const first = ring.current().kid;
    const staged = ring.nextKid();
    let calls = 0;
    ring.onChange(() => calls++);
    await vi.advanceTimersByTimeAsync(2 * HOUR - 1);
    expect(ring.current().kid).toBe(first);
    expect(calls).toBe(0);
    await vi.advanceTimersByTimeAsync(1_000);
    // the timer started the rotation; key generation completes off the fake clock
    await vi.waitFor(() => expect(ring.current().kid).toBe(staged));
    expect(calls).toBe(1);
    // the retired key goes one overlap later, noticed by the timer
    await vi.advanceTimersByTimeAsync(HOUR + 1_000);
    expect(calls).toBe(2);
    expect(ring.kids()).toEqual([staged, ring.nextKid()]);
    ring.stop();
    await vi.advanceTimersByTimeAsync(10 * HOUR);
    expect(ring.current().kid).toBe(staged);
  });
});

describe('rotationDelayMs', () => {
  it('re-issues at 75 % of the lifetime, at least 10 s before expiry, not before half of it', () => {
    expect(rotationDelayMs(0, 900_000, 0)).toBe(675_000);
    expect(rotationDelayMs(0, 30_000, 0)).toBe(20_000);
    expect(rotationDelayMs(0, 6_000, 0)).toBe(3_000);
    expect(rotationDelayMs(0, 900_000, 800_000)).toBe(0);
  });
});
