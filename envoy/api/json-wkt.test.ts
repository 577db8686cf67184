import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  formatDuration,
  formatFloat32,
  formatTimestamp,
  parseBytes,
  parseDuration,
  parseFloating,
  parseInteger,
  parseTimestamp,
} from './json-wkt.js';
import { re2ToJs } from './re2.js';

const ok = <T>(r: { ok: true; value: T } | { ok: false; error: string }): T => {
  if (!r.ok) throw new Error(r.error);
  return r.value;
};

describe('Duration', () => {
  it('parses the proto3 JSON form and rejects anything else', () => {
    expect(ok(parseDuration('5s'))).toBe(5_000_000_000n);
    expect(ok(parseDuration('0.25s'))).toBe(250_000_000n);
    expect(ok(parseDuration('-1.000000001s'))).toBe(-1_000_000_001n);
    for (const bad of ['5', '5ms', '1m', '.5s', '1.s', '1.0000000001s', ' 1s', 5, '315576000001s']) {
      expect(parseDuration(bad).ok).toBe(false);
    }
  });

  it('formats with the shortest fraction and round-trips', () => {
    expect(formatDuration(0n)).toBe('0s');
    expect(formatDuration(1_500_000_000n)).toBe('1.5s');
    expect(formatDuration(-250_000_000n)).toBe('-0.25s');
    fc.assert(
      fc.property(fc.bigInt({ min: -(315_576_000_000n * 10n ** 9n), max: 315_576_000_000n * 10n ** 9n }), (n) => {
        expect(ok(parseDuration(formatDuration(n)))).toBe(n);
      }),
    );
  });
});

describe('Timestamp', () => {
  it('parses RFC 3339 with offsets and rejects impossible dates', () => {
    expect(ok(parseTimestamp('1970-01-01T00:00:00Z'))).toBe(0n);
    expect(ok(parseTimestamp('1970-01-01T01:00:00.5+01:00'))).toBe(500_000_000n);
    expect(ok(parseTimestamp('0001-01-01T00:00:00Z'))).toBe(-62_135_596_800n * 10n ** 9n);
    for (const bad of ['2023-02-29T00:00:00Z', '2023-01-01 00:00:00Z', '2023-01-01T00:00:00', '2023-13-01T00:00:00Z', 0]) {
      expect(parseTimestamp(bad).ok).toBe(false);
    }
  });

  it('round-trips', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -62_135_596_800n * 10n ** 9n, max: 253_402_300_799n * 10n ** 9n }), (n) => {
        expect(ok(parseTimestamp(formatTimestamp(n)))).toBe(n);
      }),
    );
  });
});

describe('integers, floats, bytes', () => {
  it('accepts numbers and decimal strings within range', () => {
    expect(ok(parseInteger('uint32', '80'))).toBe(80);
    expect(ok(parseInteger('int64', '-9223372036854775808'))).toBe(-9223372036854775808n);
    expect(ok(parseInteger('uint64', 5))).toBe(5n);
    expect(parseInteger('uint32', -1).ok).toBe(false);
    expect(parseInteger('int32', 2 ** 31).ok).toBe(false);
    expect(parseInteger('uint64', '18446744073709551616').ok).toBe(false);
    expect(parseInteger('int64', 2 ** 60).ok).toBe(false);
    expect(parseInteger('int32', '1e3').ok).toBe(false);
    expect(parseInteger('int32', 1.5).ok).toBe(false);
  });

  it('floats: specials as strings, float32 range, shortest float32 print', () => {
    expect(ok(parseFloating('double', 'NaN'))).toBeNaN();
    expect(ok(parseFloating('double', '-Infinity'))).toBe(-Infinity);
    expect(ok(parseFloating('double', '1.5e3'))).toBe(1500);
    expect(parseFloating('float', 1e39).ok).toBe(false);
    expect(parseFloating('double', 'abc').ok).toBe(false);
    expect(formatFloat32(Math.fround(0.1))).toBe(0.1);
  });

  it('bytes: standard and URL-safe base64', () => {
    expect(Buffer.from(ok(parseBytes('aGk='))).toString()).toBe('hi');
    expect(Buffer.from(ok(parseBytes('aGk'))).toString()).toBe('hi');
    expect(Buffer.from(ok(parseBytes('-_8'))).toString('hex')).toBe('fbff');
    expect(parseBytes('a').ok).toBe(false);
    expect(parseBytes('a b=').ok).toBe(false);
  });
});

describe('RE2 → JS', () => {
  it('translates the patterns Envoy uses and RE2-only syntax with the same meaning', () => {
    const t = (p: string, s: string): boolean => {
      const re = re2ToJs(p);
      if (!re) throw new Error(`not translated: ${p}`);
      return re.test(s);
    };
    expect(t('^[^?#]+[^?#/]$', '/api')).toBe(true);
    expect(t('^[^?#]+[^?#/]$', '/api/')).toBe(false);
    expect(t('^$|^.*\\.mmdb$', 'geo.mmdb')).toBe(true);
    expect(t('^$|^.*\\.mmdb$', 'geo.txt')).toBe(false);
    expect(t('(?P<x>a+)b', 'aab')).toBe(true);
    expect(t('\\Aab\\z', 'ab')).toBe(true);
    expect(t('\\Aab\\z', 'ab\n')).toBe(false);
    expect(t('(?i)abc', 'ABC')).toBe(true);
    expect(t('^\\s$', '\v')).toBe(false);
    expect(t('^\\pL+$', 'héllo')).toBe(true);
    expect(t('^\\x{1F600}$', '😀')).toBe(true);
    expect(t('^a{2}$', 'aa')).toBe(true);
    expect(t('^[[:digit:]-]+$', '12-3')).toBe(true);
    expect(t('^\\.$', '.')).toBe(true);
    expect(t('^.$', '😀')).toBe(true);
  });

  it('refuses what it cannot translate faithfully', () => {
    for (const p of ['(?U)a+', 'a(?i)b', '\\C', '[[:^alpha:]]', '(?=a)', '\\1', '[a']) expect(re2ToJs(p)).toBeUndefined();
  });
});
