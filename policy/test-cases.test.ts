import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { compileFile, compileText } from './compile.js';
import { PolicyError } from './errors.js';
import { loadCasesFile, loadCasesText, runCases } from './test-cases.js';

const POLICY = compileText(
  `apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress:
  allow:
    - host: api.example.com
      rung: bump
      credential: api
    - host: "*.pythonhosted.org"
  credentials:
    - { name: api, header: authorization, source: { file: ./k } }
mcp:
  tools:
    rules:
      - { callers: ["*"], tools: [read_file], effect: allow, arguments: [{ name: path, pathPrefix: /workspace }] }
`,
  { file: 'policy.yaml', baseDir: '/etc/portcullis' },
);

describe('test cases', () => {
  it('passes when every expectation holds', () => {
    const cases = loadCasesText(
      `- dest: api.example.com
  expect: allow
  rung: bump
  credential: api
- dest: https://files.pythonhosted.org/packages/x.whl
  expect: allow
  credential: null
- dest: evil.example.net
  expect: deny
  reason: destination_not_allowed
- dest: api.example.com:8443
  expect: deny
  reason: port_not_allowed
- tool: read_file
  caller: alice
  arguments: { path: /workspace/a }
  expect: allow
- tool: read_file
  caller: alice
  arguments: { path: /etc/passwd }
  expect: deny
  reason: argument_denied
- { name: exec is not granted, tool: exec, caller: alice, expect: deny, reason: tool_not_allowed }
`,
      { file: 'cases.yaml' },
    );
    expect(runCases(POLICY, cases)).toEqual({ total: 7, passed: 7, failures: [] });
  });

  it('reports each mismatch with its line', () => {
    const cases = loadCasesText(
      `- dest: api.example.com
  expect: deny
- dest: evil.example.net
  expect: deny
- dest: api.example.com
  expect: allow
  rung: transparent
  credential: other
- name: read outside workspace
  tool: read_file
  caller: alice
  arguments: { path: /etc/passwd }
  expect: deny
  reason: tool_not_allowed
`,
      { file: 'cases.yaml' },
    );
    const r = runCases(POLICY, cases);
    expect(r.passed).toBe(1);
    expect(r.failures).toEqual([
      { index: 0, file: 'cases.yaml', line: 1, name: 'api.example.com', message: 'expected deny, got allow' },
      { index: 2, file: 'cases.yaml', line: 5, name: 'api.example.com', message: 'expected rung transparent, got bump; expected credential other, got api' },
      { index: 3, file: 'cases.yaml', line: 9, name: 'read outside workspace', message: 'expected reason tool_not_allowed, got argument_denied' },
    ]);
  });

  it('refuses malformed case files with located errors', () => {
    const bad = (text: string) => {
      try {
        loadCasesText(text, { file: 'cases.yaml' });
      } catch (e) {
        expect(e).toBeInstanceOf(PolicyError);
        return (e as PolicyError).issues.map((i) => [i.line, i.code, i.path]);
      }
      throw new Error('expected a refusal');
    };
    expect(bad('- dest: a.example.com\n  expect: maybe\n')).toEqual([[2, 'invalid_value', '[0].expect']]);
    expect(bad('- dest: a.example.com\n  tool: exec\n  caller: a\n  expect: deny\n')).toEqual([[1, 'bad_case', '[0]']]);
    expect(bad('- tool: exec\n  expect: deny\n')).toEqual([[1, 'bad_case', '[0].caller']]);
    expect(bad('- dest: "*.example.com"\n  expect: deny\n')).toEqual([[1, 'host_invalid', '[0].dest']]);
    expect(bad('- dest: a.example.com\n  expect: allow\n  reason: destination_not_allowed\n')).toEqual([[3, 'bad_case', '[0].reason']]);
    expect(bad('- dest: a.example.com\n  expct: allow\n')).toEqual([
      [1, 'missing_key', '[0].expect'],
      [2, 'unknown_key', '[0].expct'],
    ]);
    expect(bad('')).toEqual([[1, 'empty', '']]);
    expect(bad('[]')).toEqual([[1, 'out_of_range', '']]);
  });
});

describe('shared explain table (testdata/explain)', () => {
  it('every case holds (the egress e2e replays the same table through Envoy)', async () => {
    const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'testdata', 'explain');
    const { ir } = await compileFile(path.join(dir, 'policy.yaml'));
    const report = runCases(ir, await loadCasesFile(path.join(dir, 'cases.yaml')));
    expect(report.failures).toEqual([]);
    expect(report.total).toBeGreaterThanOrEqual(15);
  });
});
