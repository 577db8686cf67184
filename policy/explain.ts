import path from 'node:path';
import type { DenyReason } from '../common/errors.js';
import { PortcullisError } from '../common/errors.js';
import { deniedBy } from './denyset.js';
import { parseDestination, specificity, type ParsedDestination } from './hosts.js';
import type { Ir, IrDestination, IrRung, IrSource, IrToolArgument, IrToolRule } from './ir.js';

/**
 * Decisions over the IR only — never over the policy YAML — so `explain`, `test` and the Envoy
 * translation share one input. The order of checks is documented on `explain` and in the README.
 */

export interface Explanation {
  decision: 'allow' | 'deny';
  /** the rung that handles the destination; null when no rule applies */
  rung: IrRung | null;
  /** stable reason code for a denial; null for an allow */
  reason: DenyReason | null;
  /** the deciding rule; null when no rule decided (no match, deny-set, or the default rung) */
  rule: IrSource | null;
  /** name of the credential that would be injected (for a request with a valid session); never a value */
  credential: string | null;
  /** the destination as normalized */
  dest: { host: string; port: number };
}

interface Index {
  exact: Map<string, IrDestination[]>;
  wildcard: Map<string, IrDestination[]>;
  ip: Map<string, IrDestination[]>;
}

const indexes = new WeakMap<Ir, Index>();

function indexOf(ir: Ir): Index {
  let idx = indexes.get(ir);
  if (idx) return idx;
  idx = { exact: new Map(), wildcard: new Map(), ip: new Map() };
  for (const d of ir.egress.destinations) {
    const map = d.kind === 'exact' ? idx.exact : d.kind === 'ip' ? idx.ip : idx.wildcard;
    const key = d.kind === 'wildcard' ? d.host.slice(2) : d.host;
    const list = map.get(key);
    if (list) list.push(d);
    else map.set(key, [d]);
  }
  indexes.set(ir, idx);
  return idx;
}

/** Destinations matching the host, most specific first (one group per pattern). */
function candidates(ir: Ir, dest: ParsedDestination): IrDestination[][] {
  const idx = indexOf(ir);
  const groups: IrDestination[][] = [];
  if (dest.kind === 'ip') {
    const g = idx.ip.get(dest.host);
    if (g) groups.push(g);
    return groups;
  }
  const g = idx.exact.get(dest.host);
  if (g) groups.push(g);
  // longest suffix first: "a.b.example.com" tries "b.example.com", then "example.com", then "com"
  let dot = dest.host.indexOf('.');
  while (dot >= 0) {
    const w = idx.wildcard.get(dest.host.slice(dot + 1));
    if (w) groups.push(w);
    dot = dest.host.indexOf('.', dot + 1);
  }
  return groups;
}

/** Parse `host[:port]` or a URL; throws PortcullisError('usage') with the reason. */
export function parseDest(dest: string): ParsedDestination {
  const r = parseDestination(dest);
  if (!r.ok) throw new PortcullisError('usage', `invalid destination '${dest}': ${r.message}${r.hint ? ` (hint: ${r.hint})` : ''}`);
  return r.dest;
}

/**
 * The egress decision for a destination, in this order:
 * 1. `egress.defaultRung` is deny-all → deny, `rung_deny_all` (rule: where the rung is written).
 * 2. An IP-literal destination inside the deny-set → deny, `resolved_ip_denied`.
 * 3. Among destinations matching the host whose ports include the port, the most specific decides
 *    (IP / exact before wildcards, longer wildcard suffix first). Its rung applies; `deny-all` → deny,
 *    `rung_deny_all`; otherwise allow, with its credential if any.
 * 4. Some destination matches the host but none lists the port → deny, `port_not_allowed` (rule: the
 *    most specific match).
 * 5. Nothing matches → deny, `destination_not_allowed`.
 */
export function explain(ir: Ir, destination: string | ParsedDestination): Explanation {
  const dest = typeof destination === 'string' ? parseDest(destination) : destination;
  const out = (e: Omit<Explanation, 'dest'>): Explanation => ({ ...e, dest: { host: dest.host, port: dest.port } });
  if (ir.egress.defaultRung === 'deny-all') {
    return out({ decision: 'deny', rung: 'deny-all', reason: 'rung_deny_all', rule: ir.egress.defaultRungSource ?? null, credential: null });
  }
  if (dest.kind === 'ip' && deniedBy(dest.host)) {
    return out({ decision: 'deny', rung: null, reason: 'resolved_ip_denied', rule: null, credential: null });
  }
  const groups = candidates(ir, dest);
  for (const g of groups) {
    const d = g.find((x) => x.ports.includes(dest.port));
    if (!d) continue;
    if (d.rung === 'deny-all') return out({ decision: 'deny', rung: 'deny-all', reason: 'rung_deny_all', rule: d.source, credential: null });
    return out({ decision: 'allow', rung: d.rung, reason: null, rule: d.source, credential: d.credential?.name ?? null });
  }
  if (groups.length > 0) {
    return out({ decision: 'deny', rung: null, reason: 'port_not_allowed', rule: groups[0]![0]!.source, credential: null });
  }
  return out({ decision: 'deny', rung: null, reason: 'destination_not_allowed', rule: null, credential: null });
}

/** Every destination whose host pattern matches, most specific first (for `explain --all`-style output). */
export function matchingDestinations(ir: Ir, destination: string | ParsedDestination): IrDestination[] {
  const dest = typeof destination === 'string' ? parseDest(destination) : destination;
  return candidates(ir, dest)
    .flat()
    .sort((a, b) => specificity(b) - specificity(a));
}

// ---------------------------------------------------------------------------------------------
// Tool calls

export interface ToolCall {
  caller: string;
  tool: string;
  arguments?: Record<string, unknown>;
}

export interface ToolExplanation {
  decision: 'allow' | 'deny';
  reason: 'tool_not_allowed' | 'argument_denied' | null;
  rule: IrSource | null;
}

/** true / false, or undefined when the argument is present but cannot be evaluated (wrong type, relative path). */
function evaluate(a: IrToolArgument, args: Record<string, unknown>): boolean | undefined {
  if (!Object.hasOwn(args, a.name)) return false;
  const v = args[a.name];
  switch (a.op) {
    case 'equals':
      return v === a.value;
    case 'oneOf':
      return a.value.some((x) => x === v);
    case 'prefix':
      return typeof v === 'string' ? v.startsWith(a.value) : undefined;
    case 'pathPrefix': {
      if (typeof v !== 'string' || v.includes('\0') || !v.startsWith('/')) return undefined;
      const n = path.posix.normalize(v);
      return a.value === '/' || n === a.value || n.startsWith(`${a.value}/`);
    }
    case 'maxLength':
      return typeof v === 'string' || Array.isArray(v) ? v.length <= a.value : undefined;
  }
}

/**
 * Fail closed: a predicate that cannot be evaluated counts as holding for a deny rule and as failing
 * for an allow rule. A missing argument never satisfies a predicate.
 */
function holds(r: IrToolRule, args: Record<string, unknown>): boolean {
  return r.arguments.every((a) => {
    const v = evaluate(a, args);
    return v === undefined ? r.effect === 'deny' : v;
  });
}

function applies(r: IrToolRule, call: ToolCall): boolean {
  return (r.callers.includes('*') || r.callers.includes(call.caller)) && (r.tools.includes('*') || r.tools.includes(call.tool));
}

/**
 * Tool-call decision (deny by default; order of rules carries no meaning):
 * 1. A deny rule for the caller and tool whose predicates all hold → deny (`argument_denied` if the
 *    rule has predicates, else `tool_not_allowed`). A predicate on an argument that is present but
 *    cannot be evaluated (a relative path for `pathPrefix`, a number for `prefix`) holds here.
 * 2. An allow rule for the caller and tool whose predicates all hold → allow (a predicate that
 *    cannot be evaluated fails here).
 * 3. An allow rule for the caller and tool exists but its predicates fail → deny, `argument_denied`.
 * 4. Otherwise → deny, `tool_not_allowed`.
 */
export function explainTool(ir: Ir, call: ToolCall): ToolExplanation {
  const args = call.arguments ?? {};
  const rules = ir.mcp.tools.rules.filter((r) => applies(r, call));
  const deny = rules.find((r) => r.effect === 'deny' && holds(r, args));
  if (deny) return { decision: 'deny', reason: deny.arguments.length > 0 ? 'argument_denied' : 'tool_not_allowed', rule: deny.source };
  const allows = rules.filter((r) => r.effect === 'allow');
  const allow = allows.find((r) => holds(r, args));
  if (allow) return { decision: 'allow', reason: null, rule: allow.source };
  if (allows.length > 0) return { decision: 'deny', reason: 'argument_denied', rule: allows[0]!.source };
  return { decision: 'deny', reason: 'tool_not_allowed', rule: null };
}
