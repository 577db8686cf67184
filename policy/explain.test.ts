import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { compileText } from './compile.js';
import { isDenied } from './denyset.js';
import { explain, explainTool, matchingDestinations } from './explain.js';
import { matchHost, parseDestination, specificity } from './hosts.js';
import { validateIr, type Ir } from './ir.js';
import { PolicyError } from './errors.js';

const HEAD = 'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\n';
const here = path.dirname(fileURLToPath(import.meta.url));

function ir(body: string): Ir {
  return compileText(HEAD + body, { file: 'p.yaml', baseDir: '/etc/portcullis' });
}

const precedence = ir(`egress:
  rung: transparent
  allow:
    - host: "*.example.com"
    - host: "*.eu.example.com"
      rung: bump
    - host: evil.example.com
      rung: deny-all
    - host: api.example.com
      ports: [8443]
      rung: bump
      credential: api
    - host: 203.0.113.7
      ports: [80]
    - host: "[2001:db8::7]"
  credentials:
    - { name: api, header: authorization, format: "Bearer {secret}", source: { file: ./api.token } }
`);

describe('explain', () => {
  it.each([
    ['www.example.com', 'allow', 'transparent', null, 7, null],
    ['a.b.example.com:443', 'allow', 'transparent', null, 7, null],
    ['shop.eu.example.com', 'allow', 'bump', null, 8, null],
    ['evil.example.com', 'deny', 'deny-all', 'rung_deny_all', 10, null],
    ['sub.evil.example.com', 'allow', 'transparent', null, 7, null],
    ['api.example.com:8443', 'allow', 'bump', null, 12, 'api'],
    ['https://api.example.com:8443/v1/chat', 'allow', 'bump', null, 12, 'api'],
    ['api.example.com', 'allow', 'transparent', null, 7, null],
    ['api.example.com:9999', 'deny', null, 'port_not_allowed', 12, null],
    ['www.example.com:8080', 'deny', null, 'port_not_allowed', 7, null],
    ['example.com', 'deny', null, 'destination_not_allowed', null, null],
    ['badexample.com', 'deny', null, 'destination_not_allowed', null, null],
    ['203.0.113.7:80', 'allow', 'transparent', null, 16, null],
    ['203.0.113.7', 'deny', null, 'port_not_allowed', 16, null],
    ['[2001:db8::7]:443', 'allow', 'transparent', null, 18, null],
    ['169.254.169.254:80', 'deny', null, 'resolved_ip_denied', null, null],
    ['[::ffff:127.0.0.1]:443', 'deny', null, 'resolved_ip_denied', null, null],
    ['http://10.1.2.3/', 'deny', null, 'resolved_ip_denied', null, null],
  ])('%s → %s', (dest, decision, rung, reason, line, credential) => {
    const e = explain(precedence, dest);
    expect(e).toMatchObject({ decision, rung, reason, credential });
    expect(e.rule === null ? null : e.rule.line).toBe(line);
    if (line !== null) expect(e.rule?.file).toBe('p.yaml');
  });

  it('the deciding rule line is the rule in the file', () => {
    const text = fs.readFileSync(path.join(here, 'examples', 'bump-credential.yaml'), 'utf8');
    const e = explain(compileText(text, { file: 'bump.yaml' }), 'api.example.com');
    expect(text.split('\n')[e.rule!.line - 1]).toContain('host: api.example.com');
    expect(e).toMatchObject({ decision: 'allow', rung: 'bump', credential: 'example-api' });
  });

  it('with rung deny-all at the top every destination is denied, even if listed', () => {
    const x = ir('egress:\n  rung: deny-all\n  allow:\n    - host: api.example.com\n      rung: bump\n');
    expect(explain(x, 'api.example.com')).toMatchObject({ decision: 'deny', reason: 'rung_deny_all', rung: 'deny-all', rule: { line: 5 } });
    expect(explain(x, 'other.example.net')).toMatchObject({ decision: 'deny', reason: 'rung_deny_all' });
  });

  it('normalizes the destination like the policy', () => {
    expect(explain(precedence, 'WWW.Example.COM.').decision).toBe('allow');
    expect(explain(precedence, 'WWW.Example.COM.').dest).toEqual({ host: 'www.example.com', port: 443 });
  });

  it('throws a usage error for a bad destination', () => {
    expect(() => explain(precedence, 'ftp://x')).toThrow(/unsupported URL scheme/);
    expect(() => explain(precedence, '127.1')).toThrow(/numeric/);
  });

  it('lists every matching destination, most specific first', () => {
    expect(matchingDestinations(precedence, 'x.eu.example.com').map((d) => d.host)).toEqual(['*.eu.example.com', '*.example.com']);
  });
});

describe('explainTool', () => {
  const tools = ir(`mcp:
  tools:
    rules:
      - { callers: ["*"], tools: [read_file, list_files], effect: allow, arguments: [{ name: path, pathPrefix: /workspace }] }
      - { callers: [alice], tools: [exec], effect: allow }
      - { callers: ["*"], tools: [exec], effect: deny, arguments: [{ name: command, prefix: "rm " }] }
      - { callers: ["*"], tools: ["*"], effect: deny, arguments: [{ name: content, maxLength: 0 }] }
      - { callers: [bob], tools: [write_file], effect: deny }
      - { callers: ["*"], tools: [write_file], effect: allow, arguments: [{ name: mode, oneOf: [w, a] }] }
`);
  it.each([
    [{ caller: 'x', tool: 'read_file', arguments: { path: '/workspace/a.txt' } }, 'allow', null],
    [{ caller: 'x', tool: 'read_file', arguments: { path: '/workspace' } }, 'allow', null],
    [{ caller: 'x', tool: 'read_file', arguments: { path: '/workspace2/a' } }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'read_file', arguments: { path: '/workspace/../etc/passwd' } }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'read_file', arguments: { path: 'workspace/a' } }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'read_file', arguments: {} }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'exec', arguments: { command: 'ls' } }, 'deny', 'tool_not_allowed'],
    [{ caller: 'alice', tool: 'exec', arguments: { command: 'ls' } }, 'allow', null],
    [{ caller: 'alice', tool: 'exec', arguments: { command: 'rm -rf /' } }, 'deny', 'argument_denied'],
    [{ caller: 'alice', tool: 'exec', arguments: { command: 42 } }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'write_file', arguments: { mode: 'w' } }, 'allow', null],
    [{ caller: 'x', tool: 'write_file', arguments: { mode: 'x' } }, 'deny', 'argument_denied'],
    [{ caller: 'bob', tool: 'write_file', arguments: { mode: 'w' } }, 'deny', 'tool_not_allowed'],
    [{ caller: 'x', tool: 'write_file', arguments: { mode: 'w', content: '' } }, 'deny', 'argument_denied'],
    [{ caller: 'x', tool: 'delete_everything' }, 'deny', 'tool_not_allowed'],
  ])('%j → %s', (call, decision, reason) => {
    expect(explainTool(tools, call)).toMatchObject({ decision, reason });
  });

  it('denies everything without rules (default deny)', () => {
    expect(explainTool(ir(''), { caller: 'alice', tool: 'exec' })).toEqual({ decision: 'deny', reason: 'tool_not_allowed', rule: null });
  });
});

// ---------------------------------------------------------------------------------------------
// Random policies against a reference model written from the README's definition.

const LABELS = ['a', 'b', 'api', 'eu', 'example', 'corp', 'net', 'xn--bcher-kva'];
const hostArb = fc.array(fc.constantFrom(...LABELS), { minLength: 2, maxLength: 4 }).map((l) => l.join('.'));
const patternArb = fc.oneof(
  hostArb,
  hostArb.map((h) => `*.${h}`),
  fc.constantFrom('203.0.113.7', '198.51.100.1', '2001:db8::1'),
);
const PORTS = [80, 443, 8443];
const ruleArb = fc.record({
  host: patternArb,
  ports: fc.subarray(PORTS, { minLength: 1 }),
  rung: fc.option(fc.constantFrom('deny-all', 'transparent', 'bump'), { nil: undefined }),
});
const policyArb = fc.record({
  rung: fc.constantFrom('transparent', 'bump', 'deny-all'),
  allow: fc.array(ruleArb, { maxLength: 12 }),
});
const destArb = fc.tuple(fc.oneof(hostArb, fc.constantFrom('203.0.113.7', '10.0.0.1', '2001:db8::1', '::1')), fc.constantFrom(...PORTS));

function reference(x: Ir, host: string, port: number): { decision: string; reason: string | null; line: number | null } {
  if (x.egress.defaultRung === 'deny-all') return { decision: 'deny', reason: 'rung_deny_all', line: x.egress.defaultRungSource?.line ?? null };
  const d = parseDestination(host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
  if (!d.ok) throw new Error('bad dest');
  if (d.dest.kind === 'ip' && isDenied(d.dest.host)) return { decision: 'deny', reason: 'resolved_ip_denied', line: null };
  const matching = x.egress.destinations.filter((r) => matchHost(r.host.includes(':') ? `[${r.host}]` : r.host, d.dest.host));
  const withPort = matching.filter((r) => r.ports.includes(port)).sort((a, b) => specificity(b) - specificity(a));
  const best = withPort[0];
  if (best) {
    return best.rung === 'deny-all' ? { decision: 'deny', reason: 'rung_deny_all', line: best.source.line } : { decision: 'allow', reason: null, line: best.source.line };
  }
  if (matching.length > 0) return { decision: 'deny', reason: 'port_not_allowed', line: null };
  return { decision: 'deny', reason: 'destination_not_allowed', line: null };
}

describe('explain on random policies', () => {
  it('valid random policies compile to a valid IR, and explain agrees with the reference model', () => {
    let compiled = 0;
    fc.assert(
      fc.property(policyArb, fc.array(destArb, { minLength: 1, maxLength: 8 }), (p, dests) => {
        const text = HEAD + YAML.stringify({ egress: p });
        let x: Ir;
        try {
          x = compileText(text, { file: 'r.yaml', baseDir: '/etc/portcullis' });
        } catch (e) {
          // random rules may duplicate each other or wildcard a public suffix (`*.net.eu`): the only reasons to refuse
          expect(e).toBeInstanceOf(PolicyError);
          expect((e as PolicyError).issues.every((i) => i.code === 'duplicate_rule' || i.code === 'wildcard_public_suffix')).toBe(true);
          return;
        }
        compiled++;
        expect(validateIr(x)).toEqual([]);
        for (const [h, port] of dests) {
          const want = reference(x, h, port);
          const got = explain(x, h.includes(':') ? `[${h}]:${port}` : `${h}:${port}`);
          expect({ decision: got.decision, reason: got.reason }).toEqual({ decision: want.decision, reason: want.reason });
          if (want.line !== null) expect(got.rule?.line).toBe(want.line);
        }
      }),
      { numRuns: 300 },
    );
    expect(compiled).toBeGreaterThan(50);
  });
});
