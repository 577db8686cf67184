import { describe, expect, it } from 'vitest';
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
    expect(h.kid).toBe(ring.kids()[0]);
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
    const oldKid = ring.kids()[0];
    const newKid = await ring.rotate('test');
    expect(newKid).not.toBe(oldKid);
    expect(events.history('session.signing_key_rotated').at(-1)?.data).toMatchObject({ kid: newKid, previousKid: oldKid });
    const after = await creds.mint('s', 'c');
    expect(decodeProtectedHeader(after.token).kid).toBe(newKid);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([oldKid, newKid]);
    clock.advance(30 * 60_000);
    expect(await code(creds.verify(before.token))).toBe('ok');
    clock.advance(24 * HOUR);
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([newKid]);
    expect(await code(creds.verify(before.token))).toBe('session_credential_missing');
  });

  it('refuses a rotation period above 90 days', async () => {
    await expect(SigningKeyRing.create({ rotateEveryMs: 91 * 24 * HOUR, overlapMs: HOUR })).rejects.toThrow(/90 days/);
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
