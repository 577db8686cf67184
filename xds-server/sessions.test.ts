import { afterEach, describe, expect, it, vi } from 'vitest';
import { JwtSessions } from './sessions.js';
import { testSessionKey } from '../test/harness/session-keys.js';

describe('JwtSessions: what Envoy must refuse inside open tunnels (denials)', () => {
  afterEach(() => vi.useRealTimers());

  it('a revoked session is denied with its first reason, until no tunnel opened before can still be open', async () => {
    let now = 1_000_000;
    const key = await testSessionKey();
    const s = new JwtSessions({ jwks: () => ({ keys: [key.jwk] }), now: () => now, retainMs: 60_000 });
    const changes: number[] = [];
    s.onChange(() => changes.push(now));
    s.revoke('b', 'exfil_budget_exceeded');
    s.revoke('a');
    s.revoke('a', 'exfil_budget_exceeded'); // the first reason stays; no second change
    expect(changes).toHaveLength(2);
    expect(s.denials()).toEqual([
      { sessionId: 'a', reason: 'session_revoked' },
      { sessionId: 'b', reason: 'exfil_budget_exceeded' },
    ]);
    now += 60_001;
    expect(s.denials()).toEqual([]);
    // the revocation itself stays: its tokens never verify again
    expect(s.isRevoked('a')).toBe(true);
    s.close();
  });

  it('a session whose newest token expired is denied (session_expired); a later token lifts it; the timer tells the listener', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const key = await testSessionKey();
    const s = new JwtSessions({ jwks: () => ({ keys: [key.jwk] }), clockToleranceSec: 1, retainMs: 10_000 });
    let changes = 0;
    s.onChange(() => changes++);
    expect(await s.verifyToken(await key.token('e1', 2))).toMatchObject({ ok: true, sessionId: 'e1' });
    expect(s.denials()).toEqual([]);
    // 2 s of life + 1 s tolerance: the timer fires just after
    await vi.advanceTimersByTimeAsync(3_100);
    expect(changes).toBe(1);
    expect(s.denials()).toEqual([{ sessionId: 'e1', reason: 'session_expired' }]);
    // a fresh token for the same session: it lives on, and the listener hears it
    expect(await s.verifyToken(await key.token('e1', 60))).toMatchObject({ ok: true });
    expect(changes).toBe(2);
    expect(s.denials()).toEqual([]);
    s.close();
  });

  it('expired entries leave after the retention, and the timer says so', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const key = await testSessionKey();
    const s = new JwtSessions({ jwks: () => ({ keys: [key.jwk] }), clockToleranceSec: 0, retainMs: 5_000 });
    let changes = 0;
    s.onChange(() => changes++);
    await s.verifyToken(await key.token('x', 1));
    await vi.advanceTimersByTimeAsync(1_100);
    expect(s.denials().map((d) => d.sessionId)).toEqual(['x']);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(s.denials()).toEqual([]);
    expect(changes).toBe(2);
    s.close();
  });

  it('no listener, no timer; a revoked session never verifies again', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const key = await testSessionKey();
    const s = new JwtSessions({ jwks: () => ({ keys: [key.jwk] }) });
    await s.verifyToken(await key.token('q', 1));
    expect(vi.getTimerCount()).toBe(0);
    const off = s.onChange(() => undefined);
    expect(vi.getTimerCount()).toBe(1);
    off();
    expect(vi.getTimerCount()).toBe(0);
    s.revoke('q');
    expect(await s.verifyToken(await key.token('q', 60))).toEqual({ ok: false, reason: 'session_revoked' });
  });
});

describe('JwtSessions: a tunnel token is verified once, its session checked every time', () => {
  afterEach(() => vi.useRealTimers());

  it('a remembered token still answers revocation, expiry and a change of the signer keys', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const k1 = await testSessionKey('k1');
    const k2 = await testSessionKey('k2');
    let keys = [k1.jwk];
    const s = new JwtSessions({ jwks: () => ({ keys }), clockToleranceSec: 0 });
    const a = await k1.token('a', 60);
    const b = await k1.token('b', 2);
    expect(await s.verifyToken(a)).toEqual({ ok: true, sessionId: 'a' });
    expect(await s.verifyToken(b)).toEqual({ ok: true, sessionId: 'b' });
    // a token that fails verification is not remembered as good
    const forged = `${a.slice(0, -4)}AAAA`;
    expect(await s.verifyToken(forged)).toEqual({ ok: false, reason: 'session_credential_missing' });
    s.revoke('a', 'exfil_budget_exceeded');
    expect(await s.verifyToken(a)).toEqual({ ok: false, reason: 'exfil_budget_exceeded' });
    vi.advanceTimersByTime(2_500);
    expect(await s.verifyToken(b)).toEqual({ ok: false, reason: 'session_expired' });
    // rotated keys: what k1 signed no longer verifies, remembered or not
    const c = await k1.token('c', 60);
    expect(await s.verifyToken(c)).toEqual({ ok: true, sessionId: 'c' });
    keys = [k2.jwk];
    expect(await s.verifyToken(c)).toEqual({ ok: false, reason: 'session_credential_missing' });
    expect(await s.verifyToken(await k2.token('d', 60))).toEqual({ ok: true, sessionId: 'd' });
  });
});

describe('JwtSessions: the expiry timer against a wall clock that lags the timers', () => {
  afterEach(() => vi.useRealTimers());

  it('a timer that fires at the very instant of expiry (not yet expired) is armed again, not left for the retention', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const key = await testSessionKey();
    let wall = Date.now();
    const s = new JwtSessions({ jwks: () => ({ keys: [key.jwk] }), clockToleranceSec: 0, retainMs: 3_600_000, now: () => wall });
    const seen: string[][] = [];
    s.onChange(() => seen.push(s.denials().map((d) => d.sessionId)));
    await s.verifyToken(await key.token('z', 2));
    const expiresAt = wall + 2_000;
    // the timer fires (expiresAt + 1 by the timers' clock) while the wall clock still reads expiresAt
    wall = expiresAt;
    await vi.advanceTimersByTimeAsync(2_001);
    expect(seen).toEqual([[]]);
    wall = expiresAt + 5;
    await vi.advanceTimersByTimeAsync(5);
    expect(seen).toEqual([[], ['z']]);
    s.close();
  });
});
