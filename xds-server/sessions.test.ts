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
    // the revocation itself is remembered (its tokens have expired by then: the signer gives them ≤ 60 min)
    expect(s.isRevoked('a')).toBe(true);
    s.close();
  });

  it('the timer tells the listener when a revocation leaves the list, and only then', async () => {
    vi.useFakeTimers({ now: 1_700_000_000_000 });
    const s = new JwtSessions({ jwks: () => ({ keys: [] }), retainMs: 10_000 });
    const seen: string[][] = [];
    s.onChange(() => seen.push(s.denials().map((d) => d.sessionId)));
    s.revoke('a');
    await vi.advanceTimersByTimeAsync(5_000);
    s.revoke('b');
    expect(seen).toEqual([['a'], ['a', 'b']]);
    await vi.advanceTimersByTimeAsync(5_001);
    expect(seen.at(-1)).toEqual(['b']);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(seen.at(-1)).toEqual([]);
    expect(seen).toHaveLength(4);
    s.close();
  });
});

describe('JwtSessions: what Envoy verifies tokens with', () => {
  it('the signer\'s keys as they are now, the audience and the issuer', async () => {
    const key = await testSessionKey();
    let keys = [key.jwk];
    const s = new JwtSessions({ jwks: () => ({ keys }), issuer: 'portcullis-supervisor' });
    expect(s.verifier()).toEqual({ jwks: { keys: [key.jwk] }, audience: 'portcullis-egress', issuer: 'portcullis-supervisor' });
    keys = [];
    expect(s.verifier().jwks).toEqual({ keys: [] });
    expect(new JwtSessions({ jwks: () => ({ keys: [] }), audience: 'other' }).verifier()).toEqual({ jwks: { keys: [] }, audience: 'other' });
  });

  it('a change of the signer\'s keys tells the listeners (the keys are published again); the watch ends with the last listener', () => {
    const watchers = new Set<() => void>();
    const s = new JwtSessions({
      jwks: () => ({ keys: [] }),
      onKeysChange: (l) => {
        watchers.add(l);
        return () => watchers.delete(l);
      },
    });
    expect(watchers.size).toBe(0);
    let changes = 0;
    const off = s.onChange(() => changes++);
    s.onChange(() => changes++)(); // a second listener, gone at once: the watch stays
    expect(watchers.size).toBe(1);
    for (const w of watchers) w();
    expect(changes).toBe(1);
    off();
    expect(watchers.size).toBe(0);
  });
});
