/**
 * Parsing and printing of the proto3 JSON forms that are not plain JSON: Duration and Timestamp
 * strings, 32/64-bit integers given as numbers or decimal strings, floating point specials, base64
 * bytes. Pure functions; the resource validator and codec build on them.
 */

export const NANOS_PER_SECOND = 1_000_000_000n;
/** proto3 JSON / google.protobuf.Duration limit: ±10,000 years. */
const MAX_DURATION_SECONDS = 315_576_000_000n;
/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in seconds since the epoch. */
const MIN_TIMESTAMP_SECONDS = -62_135_596_800n;
const MAX_TIMESTAMP_SECONDS = 253_402_300_799n;

export type ScalarName =
  | 'double'
  | 'float'
  | 'int32'
  | 'uint32'
  | 'sint32'
  | 'fixed32'
  | 'sfixed32'
  | 'int64'
  | 'uint64'
  | 'sint64'
  | 'fixed64'
  | 'sfixed64'
  | 'bool'
  | 'string'
  | 'bytes';

export const SCALARS: ReadonlySet<string> = new Set<ScalarName>([
  'double', 'float', 'int32', 'uint32', 'sint32', 'fixed32', 'sfixed32',
  'int64', 'uint64', 'sint64', 'fixed64', 'sfixed64', 'bool', 'string', 'bytes',
]);

export function isScalarName(s: string): s is ScalarName {
  return SCALARS.has(s);
}

/** Integer kinds that travel as 64-bit values (bigint after parsing). */
export function is64Bit(t: ScalarName): boolean {
  return t === 'int64' || t === 'uint64' || t === 'sint64' || t === 'fixed64' || t === 'sfixed64';
}

export function isIntegerKind(t: ScalarName): boolean {
  return t !== 'double' && t !== 'float' && t !== 'bool' && t !== 'string' && t !== 'bytes';
}

const INT_RANGES: Record<string, readonly [bigint, bigint]> = {
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  sint32: [-(2n ** 31n), 2n ** 31n - 1n],
  sfixed32: [-(2n ** 31n), 2n ** 31n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  fixed32: [0n, 2n ** 32n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  sint64: [-(2n ** 63n), 2n ** 63n - 1n],
  sfixed64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
  fixed64: [0n, 2n ** 64n - 1n],
};

export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

const INT_STRING = /^-?(0|[1-9]\d*)$/;

/**
 * An integer field value: a JS number that is an integer, or a decimal string (proto3 JSON allows
 * both for every integer kind). 32-bit kinds come back as number, 64-bit kinds as bigint.
 */
export function parseInteger(t: ScalarName, v: unknown): ParseResult<number | bigint> {
  let b: bigint;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return { ok: false, error: `expected an integer (${t}), got ${v}` };
    if (!Number.isSafeInteger(v)) {
      return { ok: false, error: `${v} is beyond 2^53 and loses precision as a JSON number; write it as a decimal string` };
    }
    b = BigInt(v);
  } else if (typeof v === 'bigint') {
    b = v;
  } else if (typeof v === 'string') {
    if (!INT_STRING.test(v)) return { ok: false, error: `expected an integer (${t}), got the string ${JSON.stringify(v)}` };
    b = BigInt(v);
  } else {
    return { ok: false, error: `expected an integer (${t}), got ${describeJsonType(v)}` };
  }
  const range = INT_RANGES[t];
  if (range && (b < range[0] || b > range[1])) {
    return { ok: false, error: `${b} is out of range for ${t} (${range[0]}..${range[1]})` };
  }
  return { ok: true, value: is64Bit(t) ? b : Number(b) };
}

const FLOAT32_MAX = 3.4028234663852886e38;

/** double/float: a number, a numeric string, or one of "NaN", "Infinity", "-Infinity". */
export function parseFloating(t: 'double' | 'float', v: unknown): ParseResult<number> {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string') {
    if (v === 'NaN') n = NaN;
    else if (v === 'Infinity') n = Infinity;
    else if (v === '-Infinity') n = -Infinity;
    else if (/^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v)) n = Number(v);
    else return { ok: false, error: `expected a number (${t}), got the string ${JSON.stringify(v)}` };
  } else return { ok: false, error: `expected a number (${t}), got ${describeJsonType(v)}` };
  if (t === 'float' && Number.isFinite(n) && Math.abs(n) > FLOAT32_MAX) {
    return { ok: false, error: `${n} is out of range for float` };
  }
  return { ok: true, value: n };
}

const DURATION_RE = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/;

/** A proto3 JSON Duration ("5s", "0.25s", "-1.5s") as total nanoseconds. */
export function parseDuration(v: unknown): ParseResult<bigint> {
  if (typeof v !== 'string') {
    return { ok: false, error: `expected a duration string such as "5s" or "0.25s", got ${describeJsonType(v)}` };
  }
  const m = DURATION_RE.exec(v);
  if (!m) return { ok: false, error: `${JSON.stringify(v)} is not a duration: write seconds with an "s" suffix, e.g. "5s" or "0.25s"` };
  const secs = BigInt(m[2]!);
  if (secs > MAX_DURATION_SECONDS) return { ok: false, error: `${JSON.stringify(v)} exceeds the maximum duration of ${MAX_DURATION_SECONDS}s` };
  const nanos = m[3] ? BigInt(m[3].padEnd(9, '0')) : 0n;
  const total = secs * NANOS_PER_SECOND + nanos;
  return { ok: true, value: m[1] ? -total : total };
}

/** Seconds and nanos with the same sign, as google.protobuf.Duration requires. */
export function splitNanos(total: bigint): { seconds: bigint; nanos: number } {
  const seconds = total / NANOS_PER_SECOND; // truncates toward zero
  const nanos = Number(total - seconds * NANOS_PER_SECOND);
  return { seconds, nanos };
}

export function joinNanos(seconds: bigint, nanos: number): bigint {
  return seconds * NANOS_PER_SECOND + BigInt(nanos);
}

function fraction(nanos: bigint): string {
  if (nanos === 0n) return '';
  return '.' + nanos.toString().padStart(9, '0').replace(/0+$/, '');
}

/** Shortest proto3 JSON form of a duration: "5s", "0.25s", "-1.5s". */
export function formatDuration(total: bigint): string {
  const neg = total < 0n;
  const abs = neg ? -total : total;
  return `${neg ? '-' : ''}${abs / NANOS_PER_SECOND}${fraction(abs % NANOS_PER_SECOND)}s`;
}

const TIMESTAMP_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 timestamp ("2024-01-02T03:04:05.5Z") as nanoseconds since the epoch. */
export function parseTimestamp(v: unknown): ParseResult<bigint> {
  if (typeof v !== 'string') return { ok: false, error: `expected an RFC 3339 timestamp string, got ${describeJsonType(v)}` };
  const m = TIMESTAMP_RE.exec(v);
  if (!m) return { ok: false, error: `${JSON.stringify(v)} is not an RFC 3339 timestamp such as "2024-01-02T03:04:05Z"` };
  const [y, mo, d, h, mi, s] = [m[1], m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number, number];
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59) {
    return { ok: false, error: `${JSON.stringify(v)} has a field out of range` };
  }
  const date = new Date(0);
  date.setUTCFullYear(y, mo - 1, d);
  date.setUTCHours(h, mi, s, 0);
  if (date.getUTCDate() !== d) return { ok: false, error: `${JSON.stringify(v)} is not a calendar date` };
  let secs = BigInt(date.getTime() / 1000);
  const zone = m[8]!;
  if (zone !== 'Z') {
    const sign = zone[0] === '-' ? -1n : 1n;
    const zh = BigInt(zone.slice(1, 3));
    const zm = BigInt(zone.slice(4, 6));
    if (zh > 23n || zm > 59n) return { ok: false, error: `${JSON.stringify(v)} has an invalid UTC offset` };
    secs -= sign * (zh * 3600n + zm * 60n);
  }
  if (secs < MIN_TIMESTAMP_SECONDS || secs > MAX_TIMESTAMP_SECONDS) {
    return { ok: false, error: `${JSON.stringify(v)} is outside 0001-01-01 .. 9999-12-31` };
  }
  const nanos = m[7] ? BigInt(m[7].padEnd(9, '0')) : 0n;
  return { ok: true, value: secs * NANOS_PER_SECOND + nanos };
}

/** RFC 3339 in UTC with the shortest fraction. */
export function formatTimestamp(total: bigint): string {
  let secs = total / NANOS_PER_SECOND;
  let nanos = total % NANOS_PER_SECOND;
  if (nanos < 0n) {
    secs -= 1n;
    nanos += NANOS_PER_SECOND;
  }
  const date = new Date(Number(secs) * 1000);
  const y = date.getUTCFullYear().toString().padStart(4, '0');
  const p2 = (n: number): string => n.toString().padStart(2, '0');
  return `${y}-${p2(date.getUTCMonth() + 1)}-${p2(date.getUTCDate())}T${p2(date.getUTCHours())}:${p2(date.getUTCMinutes())}:${p2(date.getUTCSeconds())}${fraction(nanos)}Z`;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$/;
const BASE64URL_RE = /^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}(?:==)?|[A-Za-z0-9_-]{3}=?)?$/;

/** bytes: standard or URL-safe base64 (padding optional), or a Uint8Array given directly. */
export function parseBytes(v: unknown): ParseResult<Uint8Array> {
  if (v instanceof Uint8Array) return { ok: true, value: v };
  if (typeof v !== 'string') return { ok: false, error: `expected base64-encoded bytes, got ${describeJsonType(v)}` };
  if (BASE64_RE.test(v)) return { ok: true, value: Buffer.from(v, 'base64') };
  if (BASE64URL_RE.test(v)) return { ok: true, value: Buffer.from(v, 'base64url') };
  return { ok: false, error: 'is not valid base64' };
}

/** The shortest decimal that reads back as the same float32. */
export function formatFloat32(n: number): number {
  if (!Number.isFinite(n) || n === 0) return n;
  for (let p = 1; p <= 9; p++) {
    const c = Number(n.toPrecision(p));
    if (Math.fround(c) === n) return c;
  }
  return n;
}

/** proto3 JSON form of a floating point value: numbers, or the strings NaN/Infinity/-Infinity. */
export function floatingToJson(n: number): number | string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return 'Infinity';
  if (n === -Infinity) return '-Infinity';
  return n;
}

/** A string is valid UTF-8 once encoded only if it has no unpaired surrogate. */
export function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++;
        continue;
      }
      return true;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

export function describeJsonType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'a byte array';
  switch (typeof v) {
    case 'string':
      return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
    case 'number':
      return `the number ${v}`;
    case 'boolean':
      return `the boolean ${v}`;
    case 'object':
      return isPlainObject(v) ? 'an object' : `a ${(v as object).constructor?.name ?? 'non-plain'} object`;
    default:
      return `a ${typeof v}`;
  }
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** lowerCamelCase → snake_case (for suggestions and FieldMask paths). */
export function camelToSnake(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function snakeToCamel(s: string): string {
  return s.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}
