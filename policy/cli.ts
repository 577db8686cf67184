import type { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { isPortcullisError } from '../common/errors.js';
import { compileFile } from './compile.js';
import { diffIr, formatDiff, isEmptyDiff } from './diff.js';
import { formatIssue, isPolicyError, type PolicyIssue } from './errors.js';
import { explain, parseDest } from './explain.js';
import { formatHostPort } from './hosts.js';
import type { Ir } from './ir.js';
import { API_VERSION, PolicySchema } from './schema.js';
import { loadCasesFile, runCases } from './test-cases.js';

/**
 * `portcullis policy …`. Human output by default, `--json` on request. Exit codes: 0 ok, 1 policy
 * error (invalid policy, failing test case), 2 usage. No stack trace is ever printed.
 */

export const EXIT_OK = 0;
export const EXIT_POLICY = 1;
export const EXIT_USAGE = 2;

export interface PolicyCliIo {
  stdout: Writable;
  stderr: Writable;
}

export interface PolicyCliContext {
  io: PolicyCliIo;
  /** read, validate and compile a policy file (throws PolicyError) */
  compileFile(file: string): Promise<Ir>;
}

/** A subcommand receives the arguments after its name and returns the exit code. */
export type PolicySubcommand = (args: string[], ctx: PolicyCliContext) => Promise<number>;

interface Entry {
  handler: PolicySubcommand;
  usage: string;
}

/** Thrown by handlers for bad arguments: printed with the usage, exit 2. */
export class UsageError extends Error {}

const registry = new Map<string, Entry>();

/** Register (or replace) a subcommand, e.g. `render` from xds-server. */
export function registerPolicySubcommand(name: string, handler: PolicySubcommand, usage = `portcullis policy ${name} …`): void {
  registry.set(name, { handler, usage });
}

function write(s: Writable, text: string): void {
  s.write(text.endsWith('\n') ? text : `${text}\n`);
}

function parse(args: string[], options: Record<string, { type: 'boolean' | 'string'; short?: string }>) {
  try {
    return parseArgs({ args, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, ...options }, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message.split('\n')[0]);
  }
}

function issuesJson(issues: readonly PolicyIssue[]): PolicyIssue[] {
  return issues.map((i) => ({ ...i }));
}

async function cmdValidate(args: string[], ctx: PolicyCliContext): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (values.help) return help(ctx, 'validate');
  if (positionals.length === 0) throw new UsageError('validate needs at least one FILE');
  const results: { file: string; ok: boolean; destinations?: number; toolRules?: number; issues: PolicyIssue[]; omitted?: number }[] = [];
  for (const file of positionals) {
    try {
      const ir = await ctx.compileFile(file);
      results.push({ file, ok: true, destinations: ir.egress.destinations.length, toolRules: ir.mcp.tools.rules.length, issues: [] });
    } catch (e) {
      if (!isPolicyError(e)) throw e;
      results.push({ file, ok: false, issues: issuesJson(e.issues), ...(e.omitted ? { omitted: e.omitted } : {}) });
    }
  }
  const ok = results.every((r) => r.ok);
  if (values.json) {
    write(ctx.io.stdout, JSON.stringify({ ok, files: results }, null, 2));
  } else {
    for (const r of results) {
      if (r.ok) {
        write(ctx.io.stdout, `ok  ${r.file} (${r.destinations} egress rules, ${r.toolRules} tool rules)`);
      } else {
        for (const i of r.issues) write(ctx.io.stderr, formatIssue(i));
        if (r.omitted) write(ctx.io.stderr, `… and ${r.omitted} more`);
        write(ctx.io.stderr, `${r.file}: ${r.issues.length + (r.omitted ?? 0)} error${r.issues.length + (r.omitted ?? 0) === 1 ? '' : 's'}`);
      }
    }
  }
  return ok ? EXIT_OK : EXIT_POLICY;
}

async function cmdExplain(args: string[], ctx: PolicyCliContext): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (values.help) return help(ctx, 'explain');
  if (positionals.length !== 2) throw new UsageError('explain needs FILE and DEST');
  const [file, destText] = positionals as [string, string];
  let dest;
  try {
    dest = parseDest(destText);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const ir = await ctx.compileFile(file);
  const e = explain(ir, dest);
  if (values.json) {
    write(ctx.io.stdout, JSON.stringify({ decision: e.decision, rung: e.rung, reason: e.reason, rule: e.rule, credential: e.credential, dest: e.dest }));
    return EXIT_OK;
  }
  const rule = e.rule ? `${e.rule.file}:${e.rule.line}` : e.reason === 'resolved_ip_denied' ? '(mandatory deny-set; no rule can open it)' : '(no rule matches)';
  const lines = [
    `${e.decision}  ${formatHostPort(e.dest.host, e.dest.port)}`,
    `  rung        ${e.rung ?? '-'}`,
    `  reason      ${e.reason ?? '-'}`,
    `  rule        ${rule}`,
    `  credential  ${e.credential ? `${e.credential} (injected only for a request with a valid session; value never shown)` : 'none'}`,
  ];
  if (e.decision === 'allow' && dest.kind === 'name') lines.push('  note        the deny-set still applies to the address the name resolves to');
  write(ctx.io.stdout, lines.join('\n'));
  return EXIT_OK;
}

async function cmdDiff(args: string[], ctx: PolicyCliContext): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (values.help) return help(ctx, 'diff');
  if (positionals.length !== 2) throw new UsageError('diff needs OLD and NEW');
  const [oldFile, newFile] = positionals as [string, string];
  const oldIr = await ctx.compileFile(oldFile);
  const newIr = await ctx.compileFile(newFile);
  const d = diffIr(oldIr, newIr);
  if (values.json) write(ctx.io.stdout, JSON.stringify({ changed: !isEmptyDiff(d), ...d }, null, 2));
  else ctx.io.stdout.write(formatDiff(d));
  return EXIT_OK;
}

async function cmdTest(args: string[], ctx: PolicyCliContext): Promise<number> {
  const { values, positionals } = parse(args, { 'max-failures': { type: 'string' } });
  if (values.help) return help(ctx, 'test');
  if (positionals.length !== 2) throw new UsageError('test needs FILE and CASES');
  const maxText = (values as Record<string, unknown>)['max-failures'] as string | undefined;
  const max = maxText === undefined ? 20 : Number(maxText);
  if (typeof maxText === 'string' && (!/^[0-9]+$/.test(maxText) || max < 1)) throw new UsageError('--max-failures needs a positive whole number');
  const [file, casesFile] = positionals as [string, string];
  const ir = await ctx.compileFile(file);
  const cases = await loadCasesFile(casesFile);
  const report = runCases(ir, cases);
  if (values.json) {
    write(ctx.io.stdout, JSON.stringify({ ok: report.failures.length === 0, total: report.total, passed: report.passed, failed: report.failures.length, failures: report.failures.slice(0, max) }, null, 2));
  } else {
    for (const f of report.failures.slice(0, max)) write(ctx.io.stdout, `FAIL ${f.file}:${f.line} ${f.name}: ${f.message}`);
    if (report.failures.length > max) write(ctx.io.stdout, `… and ${report.failures.length - max} more failures`);
    write(ctx.io.stdout, `${report.total} case${report.total === 1 ? '' : 's'}: ${report.passed} passed, ${report.failures.length} failed`);
  }
  return report.failures.length === 0 ? EXIT_OK : EXIT_POLICY;
}

/** JSON Schema (draft 2020-12) of the policy input, with descriptions, for editor completion. */
export function policyJsonSchema(): Record<string, unknown> {
  const s = z.toJSONSchema(PolicySchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return { ...s, $id: `https://portcullis.dev/schema/${API_VERSION.replace('/', '-')}.json`, title: `Portcullis policy (${API_VERSION})` };
}

async function cmdSchema(args: string[], ctx: PolicyCliContext): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (values.help) return help(ctx, 'schema');
  if (positionals.length !== 0) throw new UsageError('schema takes no arguments');
  write(ctx.io.stdout, JSON.stringify(policyJsonSchema(), null, 2));
  return EXIT_OK;
}

const BUILTIN: Record<string, Entry> = {
  validate: { handler: cmdValidate, usage: 'portcullis policy validate FILE… [--json]\n  Validate and compile each policy; report every error as file:line:col.' },
  explain: {
    handler: cmdExplain,
    usage: 'portcullis policy explain FILE DEST [--json]\n  DEST is host[:port] (default port 443) or a URL. Prints decision, rung, reason, deciding rule and credential name.',
  },
  diff: { handler: cmdDiff, usage: 'portcullis policy diff OLD NEW [--json]\n  The change in effective permissions between two policies.' },
  test: {
    handler: cmdTest,
    usage: 'portcullis policy test FILE CASES [--json] [--max-failures N]\n  Check a YAML list of {dest, expect} and {tool, caller, expect} cases against the policy.',
  },
  schema: { handler: cmdSchema, usage: 'portcullis policy schema\n  Print the policy JSON Schema (with descriptions) for editor completion.' },
};

function entries(extra: Record<string, PolicySubcommand> | undefined): Map<string, Entry> {
  const m = new Map<string, Entry>(Object.entries(BUILTIN));
  for (const [k, v] of registry) m.set(k, v);
  for (const [k, v] of Object.entries(extra ?? {})) m.set(k, { handler: v, usage: `portcullis policy ${k} …` });
  return m;
}

let currentEntries = entries(undefined);

function help(ctx: PolicyCliContext, name?: string): number {
  const e = name ? currentEntries.get(name) : undefined;
  if (e) write(ctx.io.stdout, `usage: ${e.usage}`);
  else write(ctx.io.stdout, usageText());
  return EXIT_OK;
}

function usageText(): string {
  const lines = ['usage: portcullis policy <command> [options]', '', 'commands:'];
  for (const [, e] of [...currentEntries].sort((a, b) => a[0].localeCompare(b[0]))) {
    lines.push(`  ${e.usage.split('\n')[0]!.replace(/^portcullis policy /, '')}`);
  }
  lines.push('', 'exit codes: 0 ok, 1 policy error or failing case, 2 usage');
  return lines.join('\n');
}

/**
 * Run `portcullis policy <argv…>`. Never throws; returns the exit code. `opts.subcommands` adds or
 * replaces handlers for this call (e.g. `render`), as does `registerPolicySubcommand` globally.
 */
export async function runPolicyCli(
  argv: string[],
  io: PolicyCliIo,
  opts: { subcommands?: Record<string, PolicySubcommand> } = {},
): Promise<number> {
  currentEntries = entries(opts.subcommands);
  const ctx: PolicyCliContext = {
    io,
    compileFile: async (file) => (await compileFile(file)).ir,
  };
  const [name, ...rest] = argv;
  const wantsJson = rest.includes('--json');
  try {
    if (name === undefined) {
      write(io.stderr, usageText());
      return EXIT_USAGE;
    }
    if (name === '--help' || name === '-h' || name === 'help') return help(ctx, rest[0]);
    const entry = currentEntries.get(name);
    if (!entry) {
      write(io.stderr, `portcullis policy: unknown command '${name}'\n${usageText()}`);
      return EXIT_USAGE;
    }
    return await entry.handler(rest, ctx);
  } catch (e) {
    if (e instanceof UsageError) {
      write(io.stderr, `portcullis policy ${name}: ${e.message}`);
      const u = name ? currentEntries.get(name)?.usage : undefined;
      if (u) write(io.stderr, `usage: ${u}`);
      return EXIT_USAGE;
    }
    if (isPolicyError(e)) {
      if (wantsJson) write(io.stdout, JSON.stringify({ ok: false, error: e.code, issues: issuesJson(e.issues), ...(e.omitted ? { omitted: e.omitted } : {}) }, null, 2));
      for (const i of e.issues) write(io.stderr, formatIssue(i));
      if (e.omitted) write(io.stderr, `… and ${e.omitted} more`);
      return EXIT_POLICY;
    }
    if (isPortcullisError(e) && e.code === 'usage') {
      write(io.stderr, `portcullis policy ${name}: ${e.message}`);
      return EXIT_USAGE;
    }
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    write(io.stderr, `portcullis policy ${name}: internal error: ${msg}`);
    return EXIT_POLICY;
  }
}
