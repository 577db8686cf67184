/**
 * Canonical JSON for hashing: object keys sorted by UTF-16 code units, no whitespace, numbers and
 * strings in ECMAScript `JSON.stringify` form (this matches RFC 8785 for the values we accept).
 * `canonical(JSON.parse(canonical(x))) === canonical(x)` holds for every accepted value, which is
 * what lets the verifier recompute a record's hash from the parsed line.
 *
 * Accepted: null, booleans, finite numbers, strings, arrays, plain objects. Object properties whose
 * value is `undefined` are left out (as JSON.stringify does). Anything else throws a TypeError:
 * NaN/Infinity, bigint, functions, symbols, `undefined` inside an array, class instances (Date,
 * Map, Buffer, …), cycles, nesting deeper than `MAX_DEPTH`.
 */

export const MAX_DEPTH = 64;

export function canonical(value: unknown): string {
  // Fast path: a tree whose keys are already in order at every level serializes canonically with
  // the native JSON.stringify (the walk below checks that and rejects what JSON cannot carry).
  return isReady(value, 0) ? JSON.stringify(value) : write(value, 0);
}

/** true: plain JSON with sorted keys; false: needs the slow path (which also reports errors). */
function isReady(v: unknown, depth: number): boolean {
  if (depth > MAX_DEPTH) return false;
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(v);
    case 'object': {
      if (v === null) return true;
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) {
          const item: unknown = v[i];
          if (item === undefined || !isReady(item, depth + 1)) return false;
        }
        return true;
      }
      const proto: unknown = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) return false;
      let prev: string | null = null;
      for (const k in v) {
        if (prev !== null && prev >= k) return false;
        const item = (v as Record<string, unknown>)[k];
        if (item === undefined || !isReady(item, depth + 1)) return false;
        prev = k;
      }
      return true;
    }
    default:
      return false;
  }
}

function write(v: unknown, depth: number): string {
  if (depth > MAX_DEPTH) throw new TypeError(`canonical JSON: nesting deeper than ${MAX_DEPTH}`);
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`canonical JSON: non-finite number ${String(v)}`);
      return JSON.stringify(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object': {
      if (v === null) return 'null';
      if (Array.isArray(v)) {
        let s = '[';
        for (let i = 0; i < v.length; i++) {
          const item: unknown = v[i];
          if (item === undefined) throw new TypeError('canonical JSON: undefined array element');
          s += i === 0 ? write(item, depth + 1) : `,${write(item, depth + 1)}`;
        }
        return `${s}]`;
      }
      const proto: unknown = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError(`canonical JSON: not a plain object (${(v as object).constructor?.name ?? 'unknown'})`);
      }
      const rec = v as Record<string, unknown>;
      const keys = Object.keys(rec);
      if (!isSorted(keys)) keys.sort();
      let s = '{';
      let first = true;
      for (const k of keys) {
        const item = rec[k];
        if (item === undefined) continue;
        s += `${first ? '' : ','}${JSON.stringify(k)}:${write(item, depth + 1)}`;
        first = false;
      }
      return `${s}}`;
    }
    default:
      throw new TypeError(`canonical JSON: unsupported ${typeof v}`);
  }
}

function isSorted(keys: string[]): boolean {
  for (let i = 1; i < keys.length; i++) if (keys[i - 1]! > keys[i]!) return false;
  return true;
}
