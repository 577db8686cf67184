import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { compileLoaded } from './compile.js';
import { formatIssue, PolicyError } from './errors.js';
import { loadPolicyFile, loadPolicyText } from './loader.js';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'testdata', 'malformed');
const expectations = YAML.parse(fs.readFileSync(path.join(dir, 'expect.yaml'), 'utf8')) as Record<string, { code: string; path: string; line: number }>;

function refusal(run: () => unknown): PolicyError {
  try {
    run();
  } catch (e) {
    if (e instanceof PolicyError) return e;
    throw new Error(`expected a PolicyError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
  }
  throw new Error('expected the policy to be refused');
}

describe('malformed corpus (testdata/malformed/*.yaml, expectations in expect.yaml)', () => {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'expect.yaml').sort();

  it('has at least 100 cases, each with an expectation', () => {
    expect(files.length).toBeGreaterThanOrEqual(100);
    expect(files.filter((f) => !expectations[f])).toEqual([]);
    expect(Object.keys(expectations).filter((f) => !files.includes(f))).toEqual([]);
  });

  for (const f of files) {
    it(f, () => {
      const want = expectations[f]!;
      const err = refusal(() => compileLoaded(loadPolicyText(fs.readFileSync(path.join(dir, f)), { file: f })));
      expect(err.code).toMatch(/^policy_/);
      const hit = err.issues.find((i) => i.code === want.code && i.path.includes(want.path) && i.line === want.line);
      expect(hit, `${f}: wanted ${JSON.stringify(want)}, got\n${err.issues.map((i) => `${formatIssue(i)} [${i.code}]`).join('\n')}`).toBeDefined();
      for (const i of err.issues) {
        expect(i.file).toBe(f);
        expect(i.line).toBeGreaterThanOrEqual(1);
        expect(i.col).toBeGreaterThanOrEqual(1);
        expect(i.message.length).toBeGreaterThan(0);
        expect(formatIssue(i)).not.toMatch(/\n\s+at |Error:|ZodError|undefined/);
      }
    });
  }

  it('a 10 MB file is refused before it is parsed', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-big-'));
    try {
      const file = path.join(tmp, 'huge.yaml');
      const line = '    - host: a.example.com\n';
      fs.writeFileSync(file, `apiVersion: portcullis/v1\nkind: Policy\negress:\n  allow:\n${line.repeat(Math.ceil((10 * 1024 * 1024) / line.length))}`);
      expect(fs.statSync(file).size).toBeGreaterThanOrEqual(10 * 1024 * 1024);
      const err = await loadPolicyFile(file, { displayName: 'huge.yaml' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PolicyError);
      expect((err as PolicyError).code).toBe('policy_too_large');
      expect(formatIssue((err as PolicyError).issues[0]!)).toMatch(/^huge\.yaml:1:1 file is \d+ bytes; the limit is 1048576 bytes/);
      // the in-memory path applies the same limit
      expect(refusal(() => loadPolicyText(fs.readFileSync(file), { file: 'huge.yaml' })).code).toBe('policy_too_large');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('exactly 1 MiB is accepted by size, one byte more is not', () => {
    const head = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
    const pad = (n: number) => head + '#'.repeat(n - head.length - 1) + '\n';
    expect(() => loadPolicyText(pad(1024 * 1024), { file: 'p' })).not.toThrow();
    expect(refusal(() => loadPolicyText(pad(1024 * 1024 + 1), { file: 'p' })).code).toBe('policy_too_large');
  });
});
