import { describe, expect, it } from 'vitest';
import { setBounded } from './bounded.js';

describe('setBounded', () => {
  it('keeps at most max entries, dropping the oldest; an existing key keeps its place', () => {
    const m = new Map<string, number>();
    for (const [i, k] of ['a', 'b', 'c'].entries()) setBounded(m, k, i, 2);
    expect([...m.keys()]).toEqual(['b', 'c']);
    setBounded(m, 'b', 9, 2);
    expect([...m.entries()]).toEqual([['b', 9], ['c', 2]]);
    setBounded(m, 'd', 3, 2);
    expect([...m.keys()]).toEqual(['c', 'd']);
  });
});
