import type { Ir, IrToolRule } from '../policy/ir.js';
import { explainTool } from '../policy/explain.js';
import { checkToolArgs, TOOL_NAMES, type ToolArgs, type ToolName } from './tools.js';
import { denial, type Denial } from './errors.js';

/**
 * The per-tool decision, shared by the ingress ext_authz service and the gateway so they cannot
 * disagree: closed-schema check first (`schema_invalid`), then `explainTool` over the IR on the
 * normalized arguments (deny wins, default deny).
 */

export type CallDecision =
  | { allow: true; tool: ToolName; args: ToolArgs[ToolName] }
  | { allow: false; denial: Denial; tool: string };

export function decideToolCall(ir: Ir, caller: string, tool: unknown, args: unknown): CallDecision {
  const t = typeof tool === 'string' ? tool : '';
  if (typeof tool !== 'string') return { allow: false, tool: t, denial: denial('schema_invalid', 'params.name must be a tool name.') };
  const checked = checkToolArgs(tool, args);
  if (!checked.ok) {
    // An unknown tool is not the caller's to use: same answer as a tool the policy does not grant.
    if (checked.message === 'unknown tool') return { allow: false, tool: t, denial: denial('tool_not_allowed') };
    return { allow: false, tool: t, denial: denial('schema_invalid', `(${checked.message})`) };
  }
  const ex = explainTool(ir, { caller, tool: checked.tool, arguments: checked.args as Record<string, unknown> });
  if (ex.decision === 'allow') return { allow: true, tool: checked.tool, args: checked.args };
  return { allow: false, tool: t, denial: denial(ex.reason ?? 'tool_not_allowed') };
}

function applies(r: IrToolRule, caller: string, tool: string): boolean {
  return (r.callers.includes('*') || r.callers.includes(caller)) && (r.tools.includes('*') || r.tools.includes(tool));
}

/**
 * Tools that appear in a caller's `tools/list`: some allow rule applies to the caller and the tool,
 * and no unconditional deny rule does. A tool allowed only under argument predicates is listed (some
 * calls to it are allowed); a call outside them is refused with `argument_denied`.
 */
export function toolsVisibleTo(ir: Ir, caller: string): ToolName[] {
  const rules = ir.mcp.tools.rules;
  return TOOL_NAMES.filter((tool) => {
    const relevant = rules.filter((r) => applies(r, caller, tool));
    if (relevant.some((r) => r.effect === 'deny' && r.arguments.length === 0)) return false;
    return relevant.some((r) => r.effect === 'allow');
  });
}

/** What the `egress_policy` tool tells the agent (no addresses, no credential names, no internals). */
export interface EgressView {
  default: 'deny';
  summary: string;
  how: string;
  destinations: Array<{ host: string; ports: number[]; mode: 'pass-through' | 'inspected' | 'denied'; credentialInjected: boolean }>;
  neverReachable: string;
  denialReasons: Record<string, string>;
}

export function egressView(ir: Ir): EgressView {
  const denyAll = ir.egress.defaultRung === 'deny-all';
  const destinations = denyAll
    ? []
    : ir.egress.destinations.map((d) => ({
        host: d.host,
        ports: [...d.ports],
        mode: d.rung === 'deny-all' ? ('denied' as const) : d.rung === 'transparent' ? ('pass-through' as const) : ('inspected' as const),
        credentialInjected: d.credential !== undefined && d.rung !== 'deny-all',
      }));
  return {
    default: 'deny',
    summary: denyAll
      ? 'No network destination is reachable from this sandbox.'
      : 'Only the destinations listed here are reachable, only on the listed ports; everything else is refused.',
    how:
      'Connect through the HTTP proxy configured in the sandbox (HTTPS_PROXY / HTTP_PROXY); direct connections are blocked. ' +
      '"*.example.com" matches any name below example.com. "pass-through": end-to-end TLS, the proxy only sees the name. ' +
      '"inspected": the proxy terminates TLS with the sandbox CA; when credentialInjected is true the proxy adds the credential, so do not send one yourself.',
    destinations,
    neverReachable: 'Loopback, private, link-local, cloud metadata and other sandboxes’ addresses, whatever a name resolves to.',
    denialReasons: {
      destination_not_allowed: 'the host is not listed',
      port_not_allowed: 'the host is listed, the port is not',
      resolved_ip_denied: 'the name resolves to an address that is never reachable',
      rung_deny_all: 'egress to this destination (or all egress) is denied',
    },
  };
}
