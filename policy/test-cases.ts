import { z } from 'zod';
import { DENY_REASONS } from '../common/errors.js';
import { explain, explainTool } from './explain.js';
import { parseDestination } from './hosts.js';
import type { Ir } from './ir.js';
import { parseYamlWith, readLimited, type ParsedYaml } from './loader.js';
import { RUNGS } from './schema.js';

/**
 * `portcullis policy test FILE CASES`: a YAML list of expectations checked against the compiled
 * policy, for security teams' CI (the `opa test` / `conftest` role).
 *
 * ```yaml
 * - dest: api.example.com            # host[:port] or URL
 *   expect: allow                    # allow | deny
 *   rung: bump                       # optional
 *   credential: example-api          # optional; null = no credential
 * - dest: evil.example.net
 *   expect: deny
 *   reason: destination_not_allowed  # optional
 * - tool: exec                       # a tool call
 *   caller: alice
 *   arguments: { command: ls }
 *   expect: deny
 *   reason: argument_denied
 * ```
 */

const Expect = z.enum(['allow', 'deny']).describe('Expected decision.');

export const TestCaseSchema = z
  .strictObject({
    name: z.string().optional().describe('Label shown in failures.'),
    dest: z
      .string({ error: 'expected a destination such as api.example.com:443' })
      .superRefine((v, ctx) => {
        const r = parseDestination(v);
        if (!r.ok) ctx.addIssue({ code: 'custom', message: r.message, params: { code: r.code, ...(r.hint ? { hint: r.hint } : {}) } });
      })
      .optional()
      .describe('Egress destination: host, host:port or URL (default port 443).'),
    tool: z.string().min(1).optional().describe('Tool name for a tool-call case.'),
    caller: z.string().min(1).optional().describe('Caller identity for a tool-call case.'),
    arguments: z
      .record(z.string().regex(/^(?!__proto__$|constructor$|prototype$)/, { error: 'reserved argument name' }), z.unknown())
      .optional()
      .describe('Tool-call arguments.'),
    expect: Expect,
    reason: z.enum(DENY_REASONS).optional().describe('Expected reason code (denials).'),
    rung: z.enum(RUNGS).optional().describe('Expected rung (egress cases).'),
    credential: z.string().min(1).nullable().optional().describe('Expected credential name; null for none (egress cases).'),
  })
  .superRefine((c, ctx) => {
    const hint = { code: 'bad_case', hint: 'a case has either `dest` (egress) or `tool` + `caller` (tool call)' };
    if ((c.dest === undefined) === (c.tool === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'a case needs exactly one of `dest` or `tool`', params: hint });
      return;
    }
    if (c.tool !== undefined && c.caller === undefined) ctx.addIssue({ code: 'custom', message: 'a tool case needs `caller`', params: hint, path: ['caller'] });
    if (c.dest !== undefined) {
      for (const k of ['caller', 'arguments'] as const) {
        if (c[k] !== undefined) ctx.addIssue({ code: 'custom', message: `\`${k}\` belongs to tool cases`, params: hint, path: [k] });
      }
    } else {
      for (const k of ['rung', 'credential'] as const) {
        if (c[k] !== undefined) ctx.addIssue({ code: 'custom', message: `\`${k}\` belongs to egress cases`, params: hint, path: [k] });
      }
    }
    if (c.expect === 'allow' && c.reason !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'reason codes describe denials; remove `reason` or expect deny', params: { code: 'bad_case' }, path: ['reason'] });
    }
  });

export const TestCasesSchema = z.array(TestCaseSchema, { error: 'expected a YAML list of cases' }).min(1, { error: 'the case file has no cases' });

export type TestCase = z.output<typeof TestCaseSchema>;

export interface CaseFailure {
  index: number;
  file: string;
  line: number;
  name: string;
  /** what was expected and what happened, e.g. `expected allow, got deny (destination_not_allowed)` */
  message: string;
}

export interface TestReport {
  total: number;
  passed: number;
  failures: CaseFailure[];
}

export function loadCasesText(input: string | Uint8Array, opts: { file: string }): ParsedYaml<TestCase[]> {
  return parseYamlWith(input, TestCasesSchema, { file: opts.file, emptyMessage: 'the case file is empty' });
}

export async function loadCasesFile(file: string): Promise<ParsedYaml<TestCase[]>> {
  return loadCasesText(await readLimited(file), { file });
}

function label(c: TestCase): string {
  if (c.name) return c.name;
  return c.dest !== undefined ? c.dest : `${c.caller ?? '?'} → ${c.tool ?? '?'}`;
}

/** Check every case; failures keep file order. */
export function runCases(ir: Ir, cases: ParsedYaml<TestCase[]>): TestReport {
  const failures: CaseFailure[] = [];
  cases.value.forEach((c, index) => {
    const problems: string[] = [];
    if (c.dest !== undefined) {
      const e = explain(ir, c.dest);
      if (e.decision !== c.expect) problems.push(`expected ${c.expect}, got ${e.decision}${e.reason ? ` (${e.reason})` : ''}`);
      if (c.reason !== undefined && e.reason !== c.reason) problems.push(`expected reason ${c.reason}, got ${e.reason ?? 'none'}`);
      if (c.rung !== undefined && e.rung !== c.rung) problems.push(`expected rung ${c.rung}, got ${e.rung ?? 'none'}`);
      if (c.credential !== undefined && e.credential !== c.credential) problems.push(`expected credential ${c.credential ?? 'none'}, got ${e.credential ?? 'none'}`);
    } else {
      const t = explainTool(ir, { caller: c.caller!, tool: c.tool!, arguments: c.arguments ?? {} });
      if (t.decision !== c.expect) problems.push(`expected ${c.expect}, got ${t.decision}${t.reason ? ` (${t.reason})` : ''}`);
      if (c.reason !== undefined && t.reason !== c.reason) problems.push(`expected reason ${c.reason}, got ${t.reason ?? 'none'}`);
    }
    if (problems.length > 0) {
      failures.push({ index, file: cases.file, line: cases.locate([index]).line, name: label(c), message: problems.join('; ') });
    }
  });
  return { total: cases.value.length, passed: cases.value.length - failures.length, failures };
}
