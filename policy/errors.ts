import { PortcullisError } from '../common/errors.js';

/** One located problem in a policy (or a test-case file). */
export interface PolicyIssue {
  /** file name as the user gave it */
  file: string;
  /** 1-based; 0 when the problem concerns the whole file before it could be read */
  line: number;
  /** 1-based */
  col: number;
  /** dotted path into the document, e.g. `egress.allow[2].host`; '' for the document itself */
  path: string;
  message: string;
  hint?: string;
  /** stable issue code, e.g. `unknown_key`, `wildcard_public_suffix`, `duplicate_key` */
  code: string;
}

export type PolicyErrorCode = 'policy_invalid' | 'policy_too_large' | 'policy_unreadable' | 'ir_invalid';

/** The most issues a PolicyError carries; the count of the rest is kept in `omitted`. */
export const MAX_ISSUES = 500;

export class PolicyError extends PortcullisError {
  readonly issues: readonly PolicyIssue[];
  /** issues beyond MAX_ISSUES that were dropped */
  readonly omitted: number;

  constructor(code: PolicyErrorCode, issues: readonly PolicyIssue[]) {
    const kept = issues.slice(0, MAX_ISSUES);
    const omitted = issues.length - kept.length;
    super(code, formatIssues(kept, { max: 5, omitted }), {
      publicMessage: code.replace(/_/g, ' '),
      details: { issues: kept, omitted },
    });
    this.issues = kept;
    this.omitted = omitted;
  }
}

export function isPolicyError(e: unknown): e is PolicyError {
  return e instanceof PolicyError;
}

/** `policy.yaml:12:7 egress.allow[2].host: message (hint: …)` */
export function formatIssue(i: PolicyIssue): string {
  const where = i.line > 0 ? `${i.file}:${i.line}:${i.col}` : i.file;
  const path = i.path ? ` ${i.path}:` : '';
  const hint = i.hint ? ` (hint: ${i.hint})` : '';
  return `${where}${path} ${i.message}${hint}`;
}

export function formatIssues(issues: readonly PolicyIssue[], opts: { max?: number; omitted?: number } = {}): string {
  const max = opts.max ?? issues.length;
  const lines = issues.slice(0, max).map(formatIssue);
  const more = issues.length - Math.min(max, issues.length) + (opts.omitted ?? 0);
  if (more > 0) lines.push(`… and ${more} more`);
  return lines.join('\n');
}

export function sortIssues(issues: PolicyIssue[]): PolicyIssue[] {
  return issues.sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line || a.col - b.col || a.path.localeCompare(b.path));
}
