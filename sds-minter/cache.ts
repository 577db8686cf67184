import { EventEmitter } from 'node:events';
import { inspect } from 'node:util';
import type { Clock } from './ca.js';
import type { Leaf } from './leaf.js';

/** Re-mint when less than this fraction of a leaf's lifetime is left. */
export const DEFAULT_REFRESH_FRACTION = 1 / 3;

export interface LeafCacheOptions {
  /** fraction of the lifetime left at which a leaf is due for re-minting (default 1/3) */
  refreshFraction?: number;
  clock?: Clock;
}

export interface LeafCacheEvents {
  /** leaf names (not secret names) whose cached leaf was replaced, added or dropped */
  changed: [names: string[]];
}

/**
 * Leaves by name. Never returns an expired leaf; knows which leaves are due for re-minting; tells
 * listeners which names changed so the SDS server can push them.
 */
export class LeafCache extends EventEmitter<LeafCacheEvents> {
  readonly #leaves = new Map<string, Leaf>();
  readonly refreshFraction: number;
  private readonly clock: Clock;

  constructor(opts: LeafCacheOptions = {}) {
    super();
    const f = opts.refreshFraction ?? DEFAULT_REFRESH_FRACTION;
    if (!(f > 0 && f < 1)) throw new RangeError('refreshFraction must be in (0, 1)');
    this.refreshFraction = f;
    this.clock = opts.clock ?? Date.now;
  }

  get size(): number {
    return this.#leaves.size;
  }

  /** The cached leaf for `name` if it is still valid at `now`; an expired one is dropped. */
  get(name: string, now = this.clock()): Leaf | undefined {
    const leaf = this.#leaves.get(name);
    if (leaf === undefined) return undefined;
    if (now >= leaf.notAfter.getTime()) {
      this.#leaves.delete(name);
      this.emit('changed', [name]);
      return undefined;
    }
    return leaf;
  }

  has(name: string): boolean {
    return this.#leaves.has(name);
  }

  set(leaf: Leaf): void {
    this.#leaves.set(leaf.name, leaf);
    this.emit('changed', [leaf.name]);
  }

  /** Store several leaves with one notification. */
  setMany(leaves: readonly Leaf[]): void {
    if (leaves.length === 0) return;
    for (const l of leaves) this.#leaves.set(l.name, l);
    this.emit('changed', leaves.map((l) => l.name));
  }

  delete(names: readonly string[]): void {
    const gone = names.filter((n) => this.#leaves.delete(n));
    if (gone.length > 0) this.emit('changed', gone);
  }

  /** When `leaf` becomes due for re-minting: `refreshFraction` of its lifetime before notAfter. */
  refreshAt(leaf: Leaf): number {
    return leaf.notAfter.getTime() - Math.floor(leaf.lifetimeMs * this.refreshFraction);
  }

  isRefreshDue(leaf: Leaf, now = this.clock()): boolean {
    return now >= this.refreshAt(leaf);
  }

  /** Names whose leaves are inside the refresh window (or expired) at `now`, soonest first. */
  refreshDue(now = this.clock()): string[] {
    return [...this.#leaves.values()]
      .filter((l) => now >= this.refreshAt(l))
      .sort((a, b) => this.refreshAt(a) - this.refreshAt(b))
      .map((l) => l.name);
  }

  /** Earliest refresh time over all cached leaves (for scheduling), or null when empty. */
  nextRefreshAt(): number | null {
    let min: number | null = null;
    for (const l of this.#leaves.values()) {
      const t = this.refreshAt(l);
      if (min === null || t < min) min = t;
    }
    return min;
  }

  names(): string[] {
    return [...this.#leaves.keys()];
  }

  leaves(): Leaf[] {
    return [...this.#leaves.values()];
  }

  toJSON(): unknown {
    return { size: this.#leaves.size, leaves: this.leaves().map((l) => l.info()) };
  }

  [inspect.custom](): string {
    return `LeafCache ${inspect(this.toJSON(), { depth: 3 })}`;
  }
}
