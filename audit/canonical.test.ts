import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonical } from './canonical.js';
import { merkleRoot, sha256hex } from './chain.js';

describe('canonical JSON', () => {
  it('sorts keys, drops whitespace, leaves out undefined properties', () => {
    expect(canonical({ b: 1, a: [true, null, 'x'], c: { z: 1, y: undefined, x: -0 } })).toBe('{"a":[true,null,"x"],"b":1,"c":{"x":0,"z":1}}');
    expect(canonical('é\u2028\ud800')).toBe(JSON.stringify('é\u2028\ud800'));
  });

  it('refuses what JSON cannot carry faithfully', () => {
    for (const bad of [Number.NaN, Infinity, 1n, () => 1, Symbol('s'), [undefined], new Date(0), new Map(), Buffer.from('x')]) {
      expect(() => canonical(bad), String(bad)).toThrow(TypeError);
    }
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => canonical(cyclic)).toThrow(/deeper/);
  });

  it('is stable through a parse round trip and independent of key order', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const c = canonical(v);
        expect(canonical(JSON.parse(c))).toBe(c);
        expect(c).toBe(canonical(JSON.parse(JSON.stringify(v, null, 2))));
        if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
          const reversed = Object.fromEntries(Object.entries(v).reverse());
          expect(canonical(reversed)).toBe(c);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('canonical JSON fast path', () => {
  const sortDeep = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sortDeep)
      : typeof v === 'object' && v !== null
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sortDeep((v as Record<string, unknown>)[k])]),
          )
        : v;

  it('gives the same text for a key-sorted tree (native stringify) as for any other order (own writer)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const sorted = sortDeep(v);
        expect(canonical(sorted)).toBe(canonical(v));
        expect(canonical(sorted)).toBe(canonical(JSON.parse(JSON.stringify(v))));
      }),
      { numRuns: 300 },
    );
    expect(canonical({ 10: 1, 9: 2, a: { y: 1, x: 2 } })).toBe('{"10":1,"9":2,"a":{"x":2,"y":1}}');
  });
});

describe('Merkle tree hash (RFC 9162)', () => {
  const leaf = (i: number) => Buffer.from(sha256hex(String(i)), 'hex');
  const h = (...parts: Buffer[]) => Buffer.from(sha256hex(Buffer.concat(parts)), 'hex');
  const L = (b: Buffer) => h(Buffer.from([0]), b);
  const N = (a: Buffer, b: Buffer) => h(Buffer.from([1]), a, b);

  it('matches the definition for small trees', () => {
    expect(merkleRoot([])).toBe(sha256hex(''));
    expect(merkleRoot([leaf(0)])).toBe(L(leaf(0)).toString('hex'));
    const [a, b, c] = [L(leaf(0)), L(leaf(1)), L(leaf(2))];
    expect(merkleRoot([leaf(0), leaf(1)])).toBe(N(a, b).toString('hex'));
    // n = 3: k = 2 → MTH(D[0:2]) and MTH(D[2:3])
    expect(merkleRoot([leaf(0), leaf(1), leaf(2)])).toBe(N(N(a, b), c).toString('hex'));
  });

  it('changes when any leaf changes or leaves are reordered', () => {
    const leaves = Array.from({ length: 13 }, (_, i) => leaf(i));
    const root = merkleRoot(leaves);
    for (let i = 0; i < leaves.length; i++) {
      const changed = leaves.slice();
      changed[i] = leaf(100 + i);
      expect(merkleRoot(changed)).not.toBe(root);
    }
    const swapped = leaves.slice();
    [swapped[3], swapped[4]] = [swapped[4]!, swapped[3]!];
    expect(merkleRoot(swapped)).not.toBe(root);
  });
});
