import { describe, expect, it } from 'vitest';
import { LeafCache } from './cache.js';
import { Leaf } from './leaf.js';
import { FakeClock } from './testutil.js';

const H = 3600_000;

function fakeLeaf(name: string, issuedAt: number, lifetimeMs: number): Leaf {
  return new Leaf(
    name,
    'dns',
    '01',
    new Date(issuedAt - 5 * 60_000),
    new Date(issuedAt + lifetimeMs),
    new Date(issuedAt),
    1,
    'AA',
    'CERT',
    'CERT CA',
    'KEY',
  );
}

describe('LeafCache', () => {
  it('reports leaves as due once less than a third of their lifetime is left', () => {
    const clock = new FakeClock();
    const cache = new LeafCache({ clock: clock.fn });
    const t0 = clock.now;
    cache.set(fakeLeaf('a.example.com', t0, 12 * H));
    cache.set(fakeLeaf('b.example.com', t0 + H, 12 * H));
    expect(cache.refreshDue(t0 + 8 * H - 1)).toEqual([]);
    expect(cache.refreshDue(t0 + 8 * H)).toEqual(['a.example.com']);
    expect(cache.refreshDue(t0 + 9 * H)).toEqual(['a.example.com', 'b.example.com']);
    expect(cache.nextRefreshAt()).toBe(t0 + 8 * H);
    clock.now = t0 + 8 * H + 1;
    expect(cache.refreshDue()).toEqual(['a.example.com']);
    expect(cache.isRefreshDue(cache.get('a.example.com')!)).toBe(true);
    expect(cache.isRefreshDue(cache.get('b.example.com')!)).toBe(false);
  });

  it('honours a configured refresh fraction and rejects nonsense', () => {
    const cache = new LeafCache({ refreshFraction: 0.5 });
    const leaf = fakeLeaf('a.example.com', 0, 10 * H);
    cache.set(leaf);
    expect(cache.refreshAt(leaf)).toBe(5 * H);
    expect(() => new LeafCache({ refreshFraction: 1 })).toThrow(RangeError);
    expect(() => new LeafCache({ refreshFraction: 0 })).toThrow(RangeError);
  });

  it('never serves an expired leaf', () => {
    const clock = new FakeClock();
    const cache = new LeafCache({ clock: clock.fn });
    const leaf = fakeLeaf('a.example.com', clock.now, 12 * H);
    cache.set(leaf);
    const changed: string[][] = [];
    cache.on('changed', (n) => changed.push(n));
    clock.now = leaf.notAfter.getTime() - 1;
    expect(cache.get('a.example.com')).toBe(leaf);
    clock.now = leaf.notAfter.getTime();
    expect(cache.get('a.example.com')).toBeUndefined();
    expect(cache.has('a.example.com')).toBe(false);
    expect(changed).toEqual([['a.example.com']]);
    expect(cache.get('a.example.com', leaf.notAfter.getTime() - 1)).toBeUndefined();
  });

  it('notifies listeners of the names that changed', () => {
    const cache = new LeafCache();
    const changed: string[][] = [];
    cache.on('changed', (n) => changed.push(n));
    cache.set(fakeLeaf('a.example.com', 0, H));
    cache.setMany([fakeLeaf('b.example.com', 0, H), fakeLeaf('c.example.com', 0, H)]);
    cache.setMany([]);
    cache.delete(['b.example.com', 'nope.example.com']);
    cache.delete(['nope.example.com']);
    expect(changed).toEqual([['a.example.com'], ['b.example.com', 'c.example.com'], ['b.example.com']]);
    expect(cache.names().sort()).toEqual(['a.example.com', 'c.example.com']);
  });

  it('does not print leaf keys', () => {
    const cache = new LeafCache();
    cache.set(fakeLeaf('a.example.com', 0, H));
    expect(JSON.stringify(cache)).not.toContain('KEY');
  });
});
