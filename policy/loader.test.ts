import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { PortcullisError } from '../common/errors.js';
import { formatIssue, formatIssues, PolicyError } from './errors.js';
import { knownKeysAt, loadPolicyFile, loadPolicyText, MAX_ALIASES, MAX_DEPTH, nestingProblem } from './loader.js';
import { PolicySchema } from './schema.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment:\n  workloadTrustProfile: trusted_operator\n  runtime: gvisor\n';

function refusal(text: string | Uint8Array, file = 'policy.yaml'): PolicyError {
  try {
    loadPolicyText(text, { file });
  } catch (e) {
    if (e instanceof PolicyError) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

describe('loader: located errors', () => {
  it('formats an issue as file:line:col path: message (hint: …)', () => {
    const err = refusal(`${HEAD}egress:\n  allow:\n    - host: a.example.com\n    - host: b.example.com\n    - host: "*.com"\n`);
    expect(err.issues.map(formatIssue)).toEqual([
      "policy.yaml:10:13 egress.allow[2].host: wildcard '*.com' covers a public suffix (hint: name the registered domain, e.g. '*.example.com')",
    ]);
    expect(err.code).toBe('policy_invalid');
    expect(err).toBeInstanceOf(PortcullisError);
    expect(err.publicMessage).toBe('policy invalid');
  });

  it('suggests the key the author meant', () => {
    const err = refusal('apiVersion: portcullis/v1\nkind: Policy\ndeployment:\n  workloadTrustPofile: trusted_operator\n  runtime: gvisor\n');
    const unknown = err.issues.find((i) => i.code === 'unknown_key')!;
    expect(unknown).toMatchObject({ line: 4, col: 3, path: 'deployment.workloadTrustPofile', hint: 'did you mean `workloadTrustProfile`?' });
    expect(err.issues.find((i) => i.code === 'missing_key')?.path).toBe('deployment.workloadTrustProfile');
  });

  it('lists the allowed keys when nothing is close', () => {
    const err = refusal(`${HEAD}audit:\n  zzz: 1\n`);
    expect(err.issues[0]!.hint).toBe('allowed keys: file');
  });

  it('suggests the enum value the author meant', () => {
    const err = refusal(`${HEAD}egress:\n  rung: trasparent\n`);
    expect(err.issues[0]).toMatchObject({ path: 'egress.rung', line: 7, hint: 'did you mean `transparent`?' });
  });

  it('reports every error at once, in file order, across sections', () => {
    const text = `${HEAD}egress:\n  rung: bumpp\n  allow:\n    - host: api.example.com\n      ports: [0]\n    - host: api.example.com\n      credential: nope\nsessions:\n  tokenTtl: 2h\n  idleTimeout: 20m\nmcp:\n  listne: 127.0.0.1:80\n`;
    const err = refusal(text);
    const got = err.issues.map((i) => [i.line, i.code, i.path]);
    expect(got).toEqual([
      [7, 'invalid_value', 'egress.rung'],
      [10, 'out_of_range', 'egress.allow[0].ports[0]'],
      [14, 'session_bound', 'sessions.tokenTtl'],
      [15, 'session_bound', 'sessions.idleTimeout'],
      [17, 'unknown_key', 'mcp.listne'],
    ]);
  });

  it('runs the cross-field checks on the parts that are valid when others are not', () => {
    const text = `${HEAD}egress:\n  allow:\n    - host: api.example.com\n      credential: example-api\n    - host: api.example.com\n    - host: 10.0.0.1\n  credentials:\n    - { name: example-api, header: authorization, source: { file: ./k } }\nsessions: { tokenTtl: 2h }\n`;
    const codes = refusal(text).issues.map((i) => i.code);
    expect(codes).toEqual(['credential_rung', 'duplicate_rule', 'denied_address', 'session_bound']);
  });

  it('reports duplicate keys together with schema errors', () => {
    const err = refusal(`${HEAD}egress:\n  rung: transparent\n  rung: bump\nsessions: { idleTimeout: 1h }\n`);
    expect(err.issues.map((i) => [i.line, i.code])).toEqual([
      [8, 'duplicate_key'],
      [9, 'session_bound'],
    ]);
  });

  it('locates a missing key at its parent mapping', () => {
    const err = refusal('apiVersion: portcullis/v1\nkind: Policy\ndeployment:\n  runtime: gvisor\n');
    expect(err.issues[0]).toMatchObject({ line: 4, col: 3, code: 'missing_key', path: 'deployment.workloadTrustProfile' });
  });

  it('locates an empty value at its key', () => {
    const err = refusal(`${HEAD}egress:\n  rung:\n`);
    expect(err.issues[0]).toMatchObject({ line: 7, col: 3, path: 'egress.rung' });
  });

  it('accepts anchors and aliases of whole values', () => {
    const p = loadPolicyText(`${HEAD}egress:\n  allow:\n    - { host: a.example.com, ports: &p [443, 8443] }\n    - { host: b.example.com, ports: *p }\n`, { file: 'p' });
    expect(p.policy.egress.allow[1]!.ports).toEqual([443, 8443]);
  });

  it(`refuses more than ${MAX_ALIASES} aliases`, () => {
    const many = `${HEAD}x: &a 1\ny: [${Array.from({ length: MAX_ALIASES + 1 }, () => '*a').join(', ')}]\n`;
    expect(refusal(many).issues[0]!.code).toBe('yaml_alias');
  });

  it('refuses an alias expansion bomb even with few aliases', () => {
    const levels = ['a: &a [x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 6; i++) levels.push(`l${i}: &l${i} [${Array.from({ length: 4 }, () => (i === 1 ? '*a' : `*l${i - 1}`)).join(', ')}]`);
    const err = refusal(`${HEAD}${levels.join('\n')}\n`);
    expect(err.issues[0]!.code).toBe('yaml_alias');
  });

  it('exposes exact lines through lineOf and nearest locations through locate', () => {
    const p = loadPolicyText(`${HEAD}egress:\n  allow:\n    - host: a.example.com\n\n    - host: b.example.com\n`, { file: 'p' });
    expect(p.lineOf(['egress', 'allow', 1])).toBe(10);
    expect(p.lineOf(['egress', 'rung'])).toBeUndefined();
    expect(p.locate(['egress', 'rung'])).toEqual({ line: 7, col: 3 });
  });

  it('knows the keys of nested objects and unions', () => {
    expect(knownKeysAt(PolicySchema, ['egress', 'allow', 0])).toEqual(['host', 'ports', 'rung', 'credential']);
    expect(knownKeysAt(PolicySchema, ['mcp', 'auth'])).toEqual(expect.arrayContaining(['mode', 'issuer', 'audience', 'jwksUri']));
  });

  it('limits the formatted message but keeps every issue', () => {
    const rules = Array.from({ length: 12 }, (_, i) => `    - host: "*.c${i}"\n`).join('');
    const err = refusal(`${HEAD}egress:\n  allow:\n${rules}`);
    expect(err.issues).toHaveLength(12);
    expect(err.message.split('\n')).toHaveLength(6);
    expect(formatIssues(err.issues, { max: 2 }).split('\n').at(-1)).toBe('… and 10 more');
  });
});

describe('loader: nesting limits (the composer recurses per level)', () => {
  const indent = (n: number) => Array.from({ length: n }, (_, i) => `${' '.repeat(i)}a:`).join('\n') + ' x\n';
  it.each([
    ['flow', '['.repeat(100_000)],
    ['flow maps', '{a: '.repeat(50_000)],
    ['compact sequences', `${'- '.repeat(20_000)}x`],
    ['explicit keys', `${'? '.repeat(5_000)}x`],
    ['indentation', indent(1_000)],
    ['mixed', `${'- '.repeat(40)}${'['.repeat(40)}`],
  ])('refuses deep %s before composing', (_name, text) => {
    expect(refusal(text).issues[0]!.code).toBe('yaml_depth');
  });

  it('lets the deepest allowed documents through, even from a deep caller stack', () => {
    const inputs = [
      indent(MAX_DEPTH),
      `${'- '.repeat(MAX_DEPTH)}x`,
      `${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`,
      `${'{a: '.repeat(MAX_DEPTH)}${'}'.repeat(MAX_DEPTH)}`,
      `${'- '.repeat(MAX_DEPTH / 2)}${'['.repeat(MAX_DEPTH / 2)}${']'.repeat(MAX_DEPTH / 2)}`,
    ];
    for (const t of inputs) expect(nestingProblem(t)).toBeUndefined();
    const deep = (n: number): void => {
      if (n > 0) return deep(n - 1);
      for (const t of inputs) expect(refusal(t).issues[0]!.code).not.toBe('yaml_depth');
    };
    deep(2_000);
  });

  it('refuses anchored compact sequences as syntax, without composing them deep', () => {
    expect(refusal(`${'- &a '.repeat(5_000)}x`).issues[0]!.code).toBe('yaml_syntax');
  });

  it('locates the first level too deep', () => {
    expect(refusal(`x: ${'['.repeat(100)}`).issues[0]).toMatchObject({ line: 1, col: 4 + MAX_DEPTH - 1, code: 'yaml_depth' });
    expect(refusal(`x:\n${'- '.repeat(100)}y`).issues[0]).toMatchObject({ line: 2, col: 2 * MAX_DEPTH - 1 });
  });

  it('does not count brackets inside quoted or block scalars, or comments', () => {
    expect(nestingProblem(`a: "${'['.repeat(500)}"\nb: '${'{'.repeat(500)}'\nc: |\n  ${'['.repeat(500)}\n# ${'['.repeat(500)}\n`)).toBeUndefined();
  });
});

describe('loader: files', () => {
  it('reports a missing file and a directory as unreadable, without a stack trace', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-load-'));
    try {
      for (const [target, why] of [
        [path.join(tmp, 'nope.yaml'), 'no such file'],
        [tmp, 'not a regular file'],
      ] as const) {
        const e = await loadPolicyFile(target, { displayName: 'x.yaml' }).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(PolicyError);
        expect((e as PolicyError).code).toBe('policy_unreadable');
        expect(formatIssue((e as PolicyError).issues[0]!)).toBe(`x.yaml ${why}`);
      }
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('resolves relative paths against the policy file directory', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-load-'));
    try {
      const file = path.join(tmp, 'p.yaml');
      fs.writeFileSync(file, HEAD);
      const p = await loadPolicyFile(file);
      expect(p.baseDir).toBe(path.resolve(tmp));
      expect(p.file).toBe(file);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('loader: fuzz (never crashes, always located)', () => {
  const check = (input: string | Uint8Array) => {
    try {
      loadPolicyText(input, { file: 'fuzz.yaml' });
    } catch (e) {
      expect(e).toBeInstanceOf(PolicyError);
      const err = e as PolicyError;
      expect(err.issues.length).toBeGreaterThan(0);
      for (const i of err.issues) {
        expect(i.line).toBeGreaterThanOrEqual(1);
        expect(i.col).toBeGreaterThanOrEqual(1);
        expect(typeof i.code).toBe('string');
        expect(formatIssue(i)).not.toMatch(/\n\s+at /);
      }
    }
  };

  it('random text', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300, unit: 'grapheme' }), check), { numRuns: 300 });
  });

  it('random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), check), { numRuns: 300 });
  });

  it('random YAML-ish text from YAML tokens', () => {
    const token = fc.constantFrom('apiVersion', 'kind', 'egress', 'allow', 'host', ':', ': ', '- ', '\n', '  ', '[', ']', '{', '}', ',', '&a ', '*a', '<<', '!!str ', '!x ', '"', "'", '#', '---', '? ', '|', '>', '*.com', '443', '~', 'null');
    fc.assert(fc.property(fc.array(token, { maxLength: 60 }).map((t) => t.join('')), check), { numRuns: 500 });
  });

  it('random documents', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (v) => {
        check(YAML.stringify(v));
      }),
      { numRuns: 300 },
    );
  });

  it('random values planted into a valid policy', () => {
    const base = YAML.parse(
      `${HEAD}egress:\n  allow:\n    - host: api.example.com\n      rung: bump\n      credential: c\n  credentials:\n    - { name: c, header: authorization, source: { file: ./c } }\nmcp:\n  tools:\n    rules:\n      - { callers: ["*"], tools: [exec], effect: allow }\nsessions: { tokenTtl: 15m }\n`,
    ) as Record<string, unknown>;
    const paths = [
      ['apiVersion'], ['deployment', 'runtime'], ['egress', 'rung'], ['egress', 'allow', 0, 'host'], ['egress', 'allow', 0, 'ports'],
      ['egress', 'allow', 0, 'credential'], ['egress', 'credentials', 0, 'source'], ['mcp', 'tools', 'rules', 0, 'callers'],
      ['sessions', 'tokenTtl'], ['mcp', 'limits'], ['storage'], ['egress', 'allow', 1],
    ] as const;
    fc.assert(
      fc.property(fc.constantFrom(...paths), fc.jsonValue({ maxDepth: 2 }), (p, value) => {
        const doc = structuredClone(base);
        let cur: Record<string | number, unknown> = doc;
        for (const seg of p.slice(0, -1)) cur = cur[seg] as Record<string | number, unknown>;
        cur[p[p.length - 1]!] = value;
        check(YAML.stringify(doc));
      }),
      { numRuns: 400 },
    );
  });
});
