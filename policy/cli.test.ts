import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { policyJsonSchema, registerPolicySubcommand, runPolicyCli } from './cli.js';

const examples = path.join(path.dirname(fileURLToPath(import.meta.url)), 'examples');
let tmp: string;

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await runPolicyCli(argv, { stdout, stderr });
  return { code, out, err };
}

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-cli-'));
  fs.writeFileSync(path.join(tmp, 'bad.yaml'), `${HEAD}egress:\n  allow:\n    - host: "*.com"\n    - host: api.example.com\n      ports: [0]\n`);
  fs.writeFileSync(path.join(tmp, 'cases-pass.yaml'), '- { dest: api.example.com, expect: allow, rung: bump, credential: example-api }\n- { dest: evil.example.net, expect: deny, reason: destination_not_allowed }\n');
  fs.writeFileSync(path.join(tmp, 'cases-fail.yaml'), '- { dest: api.example.com, expect: deny }\n- { dest: pypi.org, expect: allow }\n- { tool: delete_all, caller: alice, expect: deny }\n- { dest: x.example.net, expect: allow }\n');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const ex = (f: string) => path.join(examples, f);

describe('portcullis policy validate', () => {
  it('accepts the examples', async () => {
    const r = await run('validate', ex('solo-default.yaml'), ex('deny-all.yaml'));
    expect(r.code).toBe(0);
    expect(r.out).toContain(`ok  ${ex('solo-default.yaml')} (6 egress rules, 1 tool rules)`);
    expect(r.err).toBe('');
  });

  it('reports every error with file:line:col and exits 1', async () => {
    const bad = path.join(tmp, 'bad.yaml');
    const r = await run('validate', bad);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`${bad}:6:13 egress.allow[0].host: wildcard '*.com' covers a public suffix`);
    expect(r.err).toContain(`${bad}:8:15 egress.allow[1].ports[0]: port must be between 1 and 65535`);
    expect(r.err).toContain(`${bad}: 2 errors`);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('--json lists files and issues', async () => {
    const bad = path.join(tmp, 'bad.yaml');
    const r = await run('validate', '--json', ex('deny-all.yaml'), bad);
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out) as { ok: boolean; files: { file: string; ok: boolean; issues: { line: number; code: string }[] }[] };
    expect(j.ok).toBe(false);
    expect(j.files[0]).toMatchObject({ ok: true, issues: [] });
    expect(j.files[1]!.issues.map((i) => [i.line, i.code])).toEqual([
      [6, 'wildcard_public_suffix'],
      [8, 'out_of_range'],
    ]);
  });

  it('reports a missing file as a policy error', async () => {
    const r = await run('validate', path.join(tmp, 'nope.yaml'));
    expect(r.code).toBe(1);
    expect(r.err).toContain('nope.yaml no such file');
  });
});

describe('portcullis policy explain', () => {
  it('prints the decision, rung, rule and credential name', async () => {
    const r = await run('explain', ex('bump-credential.yaml'), 'https://api.example.com/v1/models');
    expect(r.code).toBe(0);
    expect(r.out).toContain('allow  api.example.com:443');
    expect(r.out).toContain('rung        bump');
    expect(r.out).toContain(`rule        ${ex('bump-credential.yaml')}:12`);
    expect(r.out).toContain('credential  example-api');
  });

  it('--json has the documented shape', async () => {
    const r = await run('explain', '--json', ex('bump-credential.yaml'), 'evil.example.net:443');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ decision: 'deny', rung: null, reason: 'destination_not_allowed', rule: null, credential: null, dest: { host: 'evil.example.net', port: 443 } });
    const allow = JSON.parse((await run('explain', ex('bump-credential.yaml'), 'api.example.com', '--json')).out) as Record<string, unknown>;
    expect(allow).toEqual({ decision: 'allow', rung: 'bump', reason: null, rule: { file: ex('bump-credential.yaml'), line: 12 }, credential: 'example-api', dest: { host: 'api.example.com', port: 443 } });
  });

  it('a bad destination is a usage error', async () => {
    const r = await run('explain', ex('bump-credential.yaml'), 'ftp://x.example.com');
    expect(r.code).toBe(2);
    expect(r.err).toContain("unsupported URL scheme 'ftp'");
  });

  it('an invalid policy is a policy error, with --json on stdout', async () => {
    const r = await run('explain', '--json', path.join(tmp, 'bad.yaml'), 'a.example.com');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out)).toMatchObject({ ok: false, error: 'policy_invalid' });
  });
});

describe('portcullis policy diff', () => {
  it('prints the change in effective permissions', async () => {
    const r = await run('diff', ex('solo-default.yaml'), ex('bump-credential.yaml'));
    expect(r.code).toBe(0);
    expect(r.out).toContain('+ api.example.com:443  bump, credential example-api');
    expect(r.out).toContain('- registry.npmjs.org:443  (was transparent)');
  });
  it('--json', async () => {
    const r = await run('diff', '--json', ex('deny-all.yaml'), ex('deny-all.yaml'));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ changed: false });
  });
});

describe('portcullis policy test', () => {
  it('passes', async () => {
    const r = await run('test', ex('bump-credential.yaml'), path.join(tmp, 'cases-pass.yaml'));
    expect(r.code).toBe(0);
    expect(r.out).toBe('2 cases: 2 passed, 0 failed\n');
  });
  it('fails with the first mismatches', async () => {
    const cases = path.join(tmp, 'cases-fail.yaml');
    const r = await run('test', ex('bump-credential.yaml'), cases, '--max-failures', '1');
    expect(r.code).toBe(1);
    expect(r.out).toBe(`FAIL ${cases}:1 api.example.com: expected deny, got allow\n… and 1 more failures\n4 cases: 2 passed, 2 failed\n`);
    const j = JSON.parse((await run('test', '--json', ex('bump-credential.yaml'), cases)).out) as { failed: number; failures: { line: number }[] };
    expect(j.failed).toBe(2);
    expect(j.failures.map((f) => f.line)).toEqual([1, 4]);
  });
  it('refuses a bad --max-failures', async () => {
    expect((await run('test', ex('bump-credential.yaml'), path.join(tmp, 'cases-pass.yaml'), '--max-failures', 'x')).code).toBe(2);
  });
});

describe('portcullis policy schema', () => {
  it('prints a JSON Schema with descriptions and closed objects', async () => {
    const r = await run('schema');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.out) as { $schema: string; additionalProperties: boolean; properties: Record<string, { description?: string; properties?: Record<string, { description?: string }> }> };
    expect(s.$schema).toContain('2020-12');
    expect(s.additionalProperties).toBe(false);
    expect(s.properties.deployment?.properties?.workloadTrustProfile?.description).toContain('NFR-SEC-38');
    expect(s.properties.sessions?.properties?.tokenTtl?.description).toContain('60m');
    expect(JSON.stringify(policyJsonSchema())).toBe(JSON.stringify(s));
  });
});

describe('dispatcher', () => {
  it('usage errors exit 2', async () => {
    expect((await run()).code).toBe(2);
    expect((await run('frobnicate')).code).toBe(2);
    expect((await run('validate')).code).toBe(2);
    expect((await run('validate', '--nope', 'x')).code).toBe(2);
    expect((await run('explain', 'only-one-arg')).code).toBe(2);
  });
  it('help exits 0 and lists the commands', async () => {
    const r = await run('--help');
    expect(r.code).toBe(0);
    for (const c of ['validate', 'explain', 'diff', 'test', 'schema']) expect(r.out).toContain(c);
    expect((await run('explain', '--help')).out).toContain('portcullis policy explain FILE DEST');
  });
  it('accepts registered subcommands (render is wired by xds-server)', async () => {
    registerPolicySubcommand('render', async (args, ctx) => {
      const ir = await ctx.compileFile(args[0]!);
      ctx.io.stdout.write(`rendered ${ir.egress.destinations.length}\n`);
      return 0;
    }, 'portcullis policy render FILE');
    const r = await run('render', ex('solo-default.yaml'));
    expect(r).toMatchObject({ code: 0, out: 'rendered 6\n' });
    expect((await run('--help')).out).toContain('render FILE');
  });
  it('accepts per-call handlers and never prints a stack trace', async () => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let err = '';
    stderr.on('data', (c: Buffer) => (err += c.toString()));
    const code = await runPolicyCli(['boom'], { stdout, stderr }, { subcommands: { boom: async () => { throw new Error('kaput\n    at secret (/x.js:1:1)'); } } });
    expect(code).toBe(1);
    expect(err).toBe('portcullis policy boom: internal error: kaput\n');
  });
});
