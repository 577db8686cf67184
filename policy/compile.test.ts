import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { assertNoSecrets, expectGolden, goldenCases, staleGoldens, UPDATE_GOLDEN } from '../test/harness/golden.js';
import { compileText } from './compile.js';
import { DENY_SET_CIDRS } from './denyset.js';
import { PolicyError } from './errors.js';
import { irDigest, irToJson, irToYaml, validateIr, type Ir } from './ir.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const compileDir = path.join(here, 'testdata', 'compile');
const examplesDir = path.join(here, 'examples');
const examplesOut = path.join(here, 'testdata', 'examples');
const BASE = '/etc/portcullis';

function compileCase(dir: string, file: string, display: string): Ir {
  return compileText(fs.readFileSync(path.join(dir, file)), { file: display, baseDir: BASE });
}

describe('compile goldens (testdata/compile/*.in.yaml → *.out.yaml)', () => {
  const cases = goldenCases(compileDir);
  it('has cases and no stale outputs', () => {
    expect(cases.length).toBeGreaterThanOrEqual(5);
    expect(staleGoldens(compileDir)).toEqual([]);
  });
  for (const name of cases) {
    it(name, () => {
      const ir = compileCase(compileDir, `${name}.in.yaml`, `${name}.in.yaml`);
      expect(validateIr(ir)).toEqual([]);
      expectGolden(compileDir, name, ir);
    });
  }
});

describe('examples (policy/examples/*.yaml) validate and compile to their goldens', () => {
  const examples = fs.readdirSync(examplesDir).filter((f) => f.endsWith('.yaml')).sort();
  it('has the four required examples', () => {
    expect(examples).toEqual(expect.arrayContaining(['bump-credential.yaml', 'deny-all.yaml', 'enterprise-oidc-sds.yaml', 'solo-default.yaml']));
  });
  it('has no stale example outputs', () => {
    fs.mkdirSync(examplesOut, { recursive: true });
    const names = new Set(examples.map((f) => f.replace(/\.yaml$/, '')));
    const stale = fs.readdirSync(examplesOut).filter((f) => f.endsWith('.out.yaml') && !names.has(f.replace(/\.out\.yaml$/, '')));
    if (UPDATE_GOLDEN) for (const f of stale) fs.rmSync(path.join(examplesOut, f));
    else expect(stale).toEqual([]);
  });
  for (const f of examples) {
    it(f, () => {
      const ir = compileCase(examplesDir, f, `policy/examples/${f}`);
      expect(validateIr(ir)).toEqual([]);
      expectGolden(examplesOut, f.replace(/\.yaml$/, ''), ir);
    });
  }
  it('the solo default needs no IdP and no external service (invariant 9)', () => {
    const ir = compileCase(examplesDir, 'solo-default.yaml', 'solo-default.yaml');
    expect(ir.mcp.auth.mode).toBe('local');
    expect(ir.egress.sdsServers).toEqual([]);
    expect(ir.soar.webhooks).toEqual([]);
    expect(ir.egress.destinations.every((d) => d.credential === undefined)).toBe(true);
  });
});

describe('compile', () => {
  const src = fs.readFileSync(path.join(examplesDir, 'enterprise-oidc-sds.yaml'), 'utf8');

  it('is deterministic: same input, byte-identical IR', () => {
    const a = irToYaml(compileText(src, { file: 'p.yaml', baseDir: BASE }));
    const b = irToYaml(compileText(src, { file: 'p.yaml', baseDir: BASE }));
    expect(a).toBe(b);
  });

  it('does not depend on rule order (apart from source lines)', () => {
    const a = compileText('apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\negress:\n  allow:\n    - host: b.example.com\n    - host: a.example.com\n', { file: 'p', baseDir: BASE });
    const b = compileText('apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\negress:\n  allow:\n    - host: a.example.com\n    - host: b.example.com\n', { file: 'p', baseDir: BASE });
    expect(a.egress.destinations.map((d) => d.host)).toEqual(['a.example.com', 'b.example.com']);
    expect(irDigest(a)).toBe(irDigest(b));
  });

  it('always carries the full deny-set', () => {
    const ir = compileText(src, { file: 'p.yaml', baseDir: BASE });
    expect(ir.denySet).toEqual([...DENY_SET_CIDRS]);
  });

  it('records the line of each rule', () => {
    const ir = compileText(src, { file: 'p.yaml', baseDir: BASE });
    const lines = src.split('\n');
    for (const d of ir.egress.destinations) {
      const line = lines[d.source.line - 1]!;
      expect(line.toLowerCase()).toContain(d.host.startsWith('*') ? 'host: "*.' : `host: ${d.host}`);
    }
  });

  it('never puts a secret value in the IR, only names and paths', () => {
    const dir = fs.mkdtempSync(path.join(fs.realpathSync(process.env.TMPDIR ?? '/tmp'), 'pc-secret-'));
    try {
      const secret = 'sk-live-5b0d8e1c2a7f4e9d';
      fs.mkdirSync(path.join(dir, 'secrets'));
      fs.writeFileSync(path.join(dir, 'secrets', 'example-api.token'), secret);
      const ir = compileText(fs.readFileSync(path.join(examplesDir, 'bump-credential.yaml')), { file: 'p.yaml', baseDir: dir });
      assertNoSecrets(irToJson(ir), [secret]);
      expect(ir.egress.destinations.find((d) => d.credential)?.credential?.source).toEqual({ kind: 'file', path: path.join(dir, 'secrets', 'example-api.token') });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('soar.admin: key files resolve against the policy directory, keys sort by name, the audience defaults; absent → no admin in the IR', () => {
    const head = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
    const ir = compileText(`${head}soar:\n  admin:\n    keys:\n      - { name: zeta, jwksFile: keys/z.json }\n      - { name: alpha, jwksFile: /abs/a.json }\n`, { file: 'p.yaml', baseDir: '/srv/pc' });
    expect(ir.soar.admin).toEqual({
      audience: 'portcullis-admin',
      keys: [
        { name: 'alpha', jwksFile: '/abs/a.json', source: { file: 'p.yaml', line: 8 } },
        { name: 'zeta', jwksFile: '/srv/pc/keys/z.json', source: { file: 'p.yaml', line: 7 } },
      ],
    });
    expect(compileText(head, { file: 'p.yaml' }).soar).toEqual({ webhooks: [] });
  });
  it('soar.admin errors carry stable codes and lines', () => {
    const head = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
    const issues = (text: string) => {
      try {
        compileText(head + text, { file: 'p.yaml' });
      } catch (e) {
        return (e as PolicyError).issues.map((i) => [i.code, i.path, i.line]);
      }
      return [];
    };
    expect(issues('soar:\n  admin: { keys: [] }\n')).toEqual([['out_of_range', 'soar.admin.keys', 5]]);
    expect(issues('soar:\n  admin: { keys: [{ name: a, jwksFile: "" }] }\n')).toEqual([['out_of_range', 'soar.admin.keys[0].jwksFile', 5]]);
    expect(issues('soar:\n  admin: { audience: "", keys: [{ name: a, jwksFile: x }] }\n')).toEqual([['out_of_range', 'soar.admin.audience', 5]]);
    expect(issues('soar:\n  admin:\n    keys:\n      - { name: a, jwksFile: x }\n      - { name: a, jwksFile: y }\n')[0]).toEqual(['duplicate_soar_admin_key', 'soar.admin.keys[1].name', 8]);
    expect(issues('soar:\n  admin: { keys: [{ name: a, jwksFile: x, kid: k }] }\n')[0]?.[0]).toBe('unknown_key');
  });
  it('throws PolicyError for an invalid policy', () => {
    expect(() => compileText('apiVersion: portcullis/v1\nkind: Policy\n', { file: 'p.yaml' })).toThrow(PolicyError);
  });
});

describe('validateIr', () => {
  const good = (): Ir =>
    compileText(fs.readFileSync(path.join(examplesDir, 'enterprise-oidc-sds.yaml')), { file: 'p.yaml', baseDir: BASE });
  const codes = (ir: unknown) => validateIr(ir).map((e) => e.code);

  it('accepts compiled IR', () => {
    expect(validateIr(good())).toEqual([]);
  });
  it('refuses structural damage with ir_schema and a path', () => {
    const ir = good() as unknown as Record<string, unknown>;
    delete ir.sessions;
    const errs = validateIr(ir);
    expect(errs.length).toBeGreaterThan(0);
    expect(errs.every((e) => e.code === 'ir_schema')).toBe(true);
    expect(errs[0]!.path).toBe('sessions');
  });
  it('refuses a narrowed deny-set', () => {
    const ir = good();
    ir.denySet = ir.denySet.filter((c) => c !== '169.254.0.0/16');
    expect(codes(ir)).toEqual(['ir_denyset_incomplete']);
  });
  it('refuses unsorted destinations', () => {
    const ir = good();
    ir.egress.destinations.reverse();
    expect(codes(ir)).toContain('ir_unsorted');
  });
  it('refuses overlapping duplicates', () => {
    const ir = good();
    ir.egress.destinations.splice(1, 0, { ...ir.egress.destinations[0]!, credential: undefined });
    delete ir.egress.destinations[1]!.credential;
    expect(codes(ir)).toContain('ir_duplicate_destination');
  });
  it('refuses a credential at the transparent rung', () => {
    const ir = good();
    const d = ir.egress.destinations.find((x) => x.credential)!;
    d.rung = 'transparent';
    expect(codes(ir)).toContain('ir_credential_rung');
  });
  it('refuses a file credential at external-sds and an unknown SDS server', () => {
    const ir = good();
    const d = ir.egress.destinations.find((x) => x.credential?.source.kind === 'sds')!;
    d.credential!.source = { kind: 'sds', server: 'nope', name: 'x' };
    expect(codes(ir)).toContain('ir_unknown_sds_server');
    d.credential!.source = { kind: 'file', path: '/x' };
    expect(codes(ir)).toContain('ir_credential_source');
  });
  it('refuses a denied IP destination and an unnormalized host', () => {
    const ir = good();
    ir.egress.destinations[0] = { ...ir.egress.destinations[0]!, host: '10.0.0.1', kind: 'ip' };
    delete ir.egress.destinations[0].credential;
    ir.egress.destinations[1] = { ...ir.egress.destinations[1]!, host: 'API.example.com' };
    const c = codes(ir);
    expect(c).toContain('ir_destination_denied');
    expect(c).toContain('ir_host_invalid');
  });
  it('refuses session bounds over the NFR limits', () => {
    const ir = good();
    ir.sessions.tokenTtlSeconds = 3601;
    ir.sessions.idleTimeoutSeconds = 901;
    ir.sessions.absoluteLifetimeSeconds = 43201;
    expect(codes(ir).filter((x) => x === 'ir_session_bounds')).toHaveLength(3);
  });
  it('refuses a non-admitted deployment', () => {
    const ir = good();
    ir.deployment = { workloadTrustProfile: 'untrusted', runtime: 'runc' };
    expect(codes(ir)).toEqual(['ir_admission']);
  });
  it('refuses relative paths', () => {
    const ir = good();
    ir.audit.file = 'audit.jsonl';
    expect(codes(ir)).toEqual(['ir_schema']);
  });
  it('refuses unsorted SOAR admin keys and a relative admin JWKS path', () => {
    const ir = good();
    const k = ir.soar.admin!.keys[0]!;
    ir.soar.admin!.keys = [{ ...k, name: 'zz' }, { ...k, name: 'aa' }];
    expect(codes(ir)).toEqual(['ir_unsorted']);
    ir.soar.admin!.keys = [{ ...k, jwksFile: 'rel.json' }];
    expect(codes(ir)).toEqual(['ir_schema']);
  });
});
