import { describe, expect, it } from 'vitest';
import protobuf from 'protobufjs';
import { compileElement, compileFieldRules, rawRules, UNCHECKED_RULE_KINDS, type RuleTarget } from './pgv-rules.js';
import { parseDuration, parseTimestamp } from './json-wkt.js';

/**
 * Rule kinds that Envoy's loaded protos do not (yet) use, checked directly on compiled rules. The
 * rules a real resource hits are tested through validateResource in resource.test.ts.
 */

type Issue = [path: string, rule: string, message: string];

function run(raw: Record<string, unknown>, target: RuleTarget, value: unknown): Issue[] {
  const out: Issue[] = [];
  const r = compileElement(raw, target, '');
  r.check?.(value, 'f', (path, rule, message) => out.push([path, rule, message]));
  return out;
}

const str: RuleTarget = { kind: 'scalar', t: 'string' };
const ruleOf = (issues: Issue[]): string[] => issues.map((i) => i[1]);

describe('string rules', () => {
  it('lengths count characters (code points) and bytes separately', () => {
    expect(ruleOf(run({ string: { min_len: 2 } }, str, '😀'))).toEqual(['string.min_len = 2']);
    expect(ruleOf(run({ string: { min_len: 2 } }, str, '😀😀'))).toEqual([]);
    expect(ruleOf(run({ string: { max_len: 1 } }, str, '😀'))).toEqual([]);
    expect(ruleOf(run({ string: { max_bytes: 3 } }, str, '😀'))).toEqual(['string.max_bytes = 3']);
    expect(ruleOf(run({ string: { min_bytes: 5 } }, str, 'é'))).toEqual(['string.min_bytes = 5']);
    expect(ruleOf(run({ string: { len: 3 } }, str, 'abcd'))).toEqual(['string.len = 3']);
    expect(ruleOf(run({ string: { len_bytes: 2 } }, str, 'é'))).toEqual([]);
  });

  it('const, prefix, suffix, contains, not_contains, in, not_in', () => {
    expect(run({ string: { const: 'a' } }, str, 'b')).toEqual([['f', 'string.const = "a"', 'must equal "a"']]);
    expect(ruleOf(run({ string: { prefix: 'x-', suffix: '.com', contains: 'mid', not_contains: 'bad' } }, str, 'y-bad.org'))).toEqual([
      'string.prefix = "x-"',
      'string.suffix = ".com"',
      'string.contains = "mid"',
      'string.not_contains = "bad"',
    ]);
    expect(ruleOf(run({ string: { in: ['a', 'b'] } }, str, 'c'))).toEqual(['string.in = [a, b]']);
    expect(ruleOf(run({ string: { not_in: 'c' } }, str, 'c'))).toEqual(['string.not_in = [c]']);
  });

  it('ignore_empty skips every rule for ""', () => {
    expect(run({ string: { min_len: 3, ignore_empty: true } }, str, '')).toEqual([]);
    expect(ruleOf(run({ string: { min_len: 3, ignore_empty: true } }, str, 'ab'))).toEqual(['string.min_len = 3']);
  });

  it('well-known formats', () => {
    const bad = (k: string, v: string): string[] => ruleOf(run({ string: { [k]: true } }, str, v));
    expect(bad('hostname', 'api.example.com')).toEqual([]);
    expect(bad('hostname', '-bad.example.com')).toEqual(['string.hostname']);
    expect(bad('hostname', 'a..b')).toEqual(['string.hostname']);
    expect(bad('email', 'ops@example.com')).toEqual([]);
    expect(bad('email', 'ops@@example.com')).toEqual(['string.email']);
    expect(bad('ip', '::1')).toEqual([]);
    expect(bad('ipv4', '::1')).toEqual(['string.ipv4']);
    expect(bad('ipv6', '10.0.0.1')).toEqual(['string.ipv6']);
    expect(bad('address', '10.0.0.1')).toEqual([]);
    expect(bad('address', 'no spaces.com')).toEqual(['string.address']);
    expect(bad('uri', 'https://example.com/x')).toEqual([]);
    expect(bad('uri', '/relative')).toEqual(['string.uri']);
    expect(bad('uri_ref', '/relative?q=1')).toEqual([]);
    expect(bad('uri_ref', 'has space')).toEqual(['string.uri_ref']);
    expect(bad('uuid', '123e4567-e89b-12d3-a456-426614174000')).toEqual([]);
    expect(bad('uuid', '123e4567')).toEqual(['string.uuid']);
  });

  it('HTTP header regexes: strict (the PGV default) vs loose', () => {
    const name = (v: string, strict?: boolean): string[] =>
      ruleOf(run({ string: { well_known_regex: 'HTTP_HEADER_NAME', ...(strict === undefined ? {} : { strict }) } }, str, v));
    expect(name(':authority')).toEqual([]);
    expect(name('x-ok_1')).toEqual([]);
    expect(name('bad header')).toEqual(['string.well_known_regex = HTTP_HEADER_NAME']);
    expect(name('')).toEqual(['string.well_known_regex = HTTP_HEADER_NAME']);
    expect(name('bad header', false)).toEqual([]);
    expect(name('bad\nheader', false)).toEqual(['string.well_known_regex = HTTP_HEADER_NAME']);
    const value = (v: string, strict?: boolean): string[] =>
      ruleOf(run({ string: { well_known_regex: 'HTTP_HEADER_VALUE', ...(strict === undefined ? {} : { strict }) } }, str, v));
    expect(value('Bearer abc, q=1')).toEqual([]);
    expect(value('tab\tok')).toEqual([]);
    expect(value('bell\u0007')).toEqual(['string.well_known_regex = HTTP_HEADER_VALUE']);
    expect(value('bell\u0007', false)).toEqual([]);
    expect(value('cr\r', false)).toEqual(['string.well_known_regex = HTTP_HEADER_VALUE']);
  });

  it('pattern: RE2 translated, untranslatable patterns skipped and listed', () => {
    expect(ruleOf(run({ string: { pattern: '^[[:alpha:]]+$' } }, str, 'abc'))).toEqual([]);
    expect(ruleOf(run({ string: { pattern: '^[[:alpha:]]+$' } }, str, 'ab1'))).toEqual(['string.pattern = ^[[:alpha:]]+$']);
    expect(run({ string: { pattern: '(?U)a+' } }, str, 'zzz')).toEqual([]);
    expect([...UNCHECKED_RULE_KINDS.keys()]).toContain('string.pattern (untranslatable: (?U)a+)');
  });
});

describe('numeric rules', () => {
  const u32: RuleTarget = { kind: 'scalar', t: 'uint32' };
  const i64: RuleTarget = { kind: 'scalar', t: 'int64' };
  const dbl: RuleTarget = { kind: 'scalar', t: 'double' };

  it('const, in, not_in, bounds', () => {
    expect(ruleOf(run({ uint32: { const: 5 } }, u32, 4))).toEqual(['uint32.const = 5']);
    expect(ruleOf(run({ uint32: { in: [1, 2] } }, u32, 3))).toEqual(['uint32.in = [1, 2]']);
    expect(ruleOf(run({ uint32: { not_in: [3] } }, u32, 3))).toEqual(['uint32.not_in = [3]']);
    expect(run({ uint32: { gte: 1, lte: 10 } }, u32, 11)).toEqual([['f', 'uint32.lte = 10', 'must be at most 10, got 11']]);
    expect(run({ uint32: { gt: 1, lt: 10 } }, u32, 1)).toEqual([['f', 'uint32.gt = 1', 'must be greater than 1, got 1']]);
    expect(run({ double: { gt: 0 } }, dbl, 0)).toEqual([['f', 'double.gt = 0', 'must be greater than 0, got 0']]);
  });

  it('an upper bound below the lower bound means "outside the range"', () => {
    const rule = { uint32: { lt: 5, gt: 10 } };
    expect(run(rule, u32, 3)).toEqual([]);
    expect(run(rule, u32, 11)).toEqual([]);
    expect(ruleOf(run(rule, u32, 7))).toEqual(['uint32.gt = 10, uint32.lt = 5']);
  });

  it('64-bit values compare exactly as bigint', () => {
    expect(run({ int64: { lte: '9007199254740993' } }, i64, 9007199254740993n)).toEqual([]);
    expect(ruleOf(run({ int64: { lte: '9007199254740993' } }, i64, 9007199254740994n))).toEqual(['int64.lte = 9007199254740993']);
  });

  it('ignore_empty skips 0', () => {
    expect(run({ uint32: { gte: 10, ignore_empty: true } }, u32, 0)).toEqual([]);
  });
});

describe('enum, bool, bytes, duration, timestamp, any rules', () => {
  const e = new protobuf.Enum('Color', { RED: 0, GREEN: 1, BLUE: 2 });
  const en: RuleTarget = { kind: 'enum', e };

  it('enum const, in, not_in, defined_only', () => {
    expect(ruleOf(run({ enum: { const: 1 } }, en, 2))).toEqual(['enum.const = GREEN']);
    expect(ruleOf(run({ enum: { in: [0, 1] } }, en, 2))).toEqual(['enum.in = [RED, GREEN]']);
    expect(ruleOf(run({ enum: { not_in: 2 } }, en, 2))).toEqual(['enum.not_in = [BLUE]']);
    expect(ruleOf(run({ enum: { defined_only: true } }, en, 7))).toEqual(['enum.defined_only']);
    expect(run({ enum: { defined_only: true } }, en, 2)).toEqual([]);
  });

  it('bool const', () => {
    expect(ruleOf(run({ bool: { const: true } }, { kind: 'scalar', t: 'bool' }, false))).toEqual(['bool.const = true']);
  });

  it('bytes lengths, prefix, ip', () => {
    const b: RuleTarget = { kind: 'scalar', t: 'bytes' };
    expect(ruleOf(run({ bytes: { min_len: 2, max_len: 3 } }, b, Buffer.from('a')))).toEqual(['bytes.min_len = 2']);
    expect(ruleOf(run({ bytes: { len: 2 } }, b, Buffer.from('abc')))).toEqual(['bytes.len = 2']);
    expect(ruleOf(run({ bytes: { prefix: 'ab' } }, b, Buffer.from('xab')))).toEqual(['bytes.prefix']);
    expect(ruleOf(run({ bytes: { ipv4: true } }, b, Buffer.alloc(16)))).toEqual(['bytes.ipv4']);
  });

  it('duration const, in, lt, lte, gte, and required on absence', () => {
    const d: RuleTarget = { kind: 'duration' };
    const nanos = (s: string): bigint => {
      const r = parseDuration(s);
      if (!r.ok) throw new Error(r.error);
      return r.value;
    };
    expect(ruleOf(run({ duration: { lt: { seconds: 1 } } }, d, nanos('1s')))).toEqual(['duration.lt = 1s']);
    expect(ruleOf(run({ duration: { lte: { seconds: 1 } } }, d, nanos('1.000000001s')))).toEqual(['duration.lte = 1s']);
    expect(ruleOf(run({ duration: { gte: { nanos: 500000000 } } }, d, nanos('0.4s')))).toEqual(['duration.gte = 0.5s']);
    expect(ruleOf(run({ duration: { const: { seconds: 2 } } }, d, nanos('3s')))).toEqual(['duration.const = 2s']);
    expect(ruleOf(run({ duration: { in: [{ seconds: 1 }, { seconds: 2 }] } }, d, nanos('3s')))).toEqual(['duration.in = [1s, 2s]']);
    expect(compileElement({ duration: { required: true } }, d, '').required).toEqual({ rule: 'duration.required', message: 'is required' });
  });

  it('timestamp bounds and within', () => {
    const t: RuleTarget = { kind: 'timestamp' };
    const ts = (s: string): bigint => {
      const r = parseTimestamp(s);
      if (!r.ok) throw new Error(r.error);
      return r.value;
    };
    expect(ruleOf(run({ timestamp: { gt: { seconds: 0 } } }, t, ts('1969-12-31T23:59:59Z')))).toEqual(['timestamp.gt = 1970-01-01T00:00:00Z']);
    expect(ruleOf(run({ timestamp: { within: { seconds: 60 } } }, t, ts('2001-01-01T00:00:00Z')))).toEqual(['timestamp.within = 60s']);
    expect(ruleOf(run({ timestamp: { lt_now: true } }, t, ts('2001-01-01T00:00:00Z')))).toEqual([]);
  });

  it('any in / not_in on the type URL', () => {
    const a: RuleTarget = { kind: 'any' };
    expect(ruleOf(run({ any: { in: ['type.googleapis.com/a.B'] } }, a, 'type.googleapis.com/c.D'))).toEqual(['any.in = [type.googleapis.com/a.B]']);
    expect(ruleOf(run({ any: { not_in: 'type.googleapis.com/c.D' } }, a, 'type.googleapis.com/c.D'))).toEqual([
      'any.not_in = [type.googleapis.com/c.D]',
    ]);
  });
});

describe('repeated and map rules', () => {
  const str2: RuleTarget = { kind: 'scalar', t: 'string' };

  it('max_items, unique and item rules with the repeated.items prefix', () => {
    const r = compileFieldRules({ repeated: { max_items: 2, unique: true, items: { string: { min_len: 2 } } } }, { repeated: true, map: false, target: str2 });
    const out: Issue[] = [];
    const emit = (p: string, rule: string, m: string): void => {
      out.push([p, rule, m]);
    };
    r.repeated!.check!(['aa', 'bb', 'aa'], 3, 'l', emit);
    r.repeated!.items!.check!('a', 'l[3]', emit);
    expect(out.map((i) => [i[0], i[1]])).toEqual([
      ['l', 'repeated.max_items = 2'],
      ['l[2]', 'repeated.unique'],
      ['l[3]', 'repeated.items.string.min_len = 2'],
    ]);
  });

  it('map min/max pairs and values rules', () => {
    const r = compileFieldRules(
      { map: { max_pairs: 1, values: { uint32: { gt: 0 } } } },
      { repeated: false, map: true, target: { kind: 'scalar', t: 'uint32' }, keyTarget: str2 },
    );
    const out: string[] = [];
    r.map!.check!(2, 'm', (_p, rule) => out.push(rule));
    r.map!.values!.check!(0, 'm["k"]', (_p, rule) => out.push(rule));
    expect(out).toEqual(['map.max_pairs = 1', 'map.values.uint32.gt = 0']);
  });
});

describe('rule bookkeeping', () => {
  it('merges several (validate.rules) options of one field', () => {
    expect(rawRules([{ '(validate.rules)': { uint32: { gt: 0 } } }, { other: 1 }, { '(validate.rules)': { message: { required: true } } }])).toEqual({
      uint32: { gt: 0 },
      message: { required: true },
    });
  });

  it('collects unknown rule kinds instead of failing', () => {
    const r = compileElement({ string: { min_len: 1, future_rule: 3 }, quantum: { x: 1 } }, str, '');
    expect(ruleOf(run({ string: { min_len: 1, future_rule: 3 } }, str, ''))).toEqual(['string.min_len = 1']);
    expect(r.check).toBeDefined();
    expect([...UNCHECKED_RULE_KINDS.keys()]).toEqual(expect.arrayContaining(['string.future_rule', 'quantum']));
  });
});
