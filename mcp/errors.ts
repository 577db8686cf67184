import { isPortcullisError, type DenyReason, type ErrorCode } from '../common/errors.js';

/**
 * Every error that leaves the MCP path is converted here, in one place: JSON-RPC errors, tool-result
 * denials, and HTTP denials (the gateway's own and the ones Envoy sends for ext_authz). What a
 * caller sees is a stable reason code and a one-line explanation written for it; never an
 * exception message, a session id, a container name, an address or a stack trace.
 */

export type McpReason =
  | DenyReason
  | 'unauthorized'
  | 'not_found'
  | 'method_not_allowed'
  | 'session_not_found'
  | 'tool_failed'
  | 'sandbox_unavailable'
  | 'path_denied'
  | 'file_error'
  | 'edit_failed'
  | 'internal'
  | 'unavailable';

/** One-line explanations, written for the caller (an agent or its user). */
export const EXPLANATIONS: Record<McpReason, string> = {
  destination_not_allowed: 'The policy does not allow this destination.',
  port_not_allowed: 'The policy allows this host, but not on this port.',
  resolved_ip_denied: 'The destination resolves to an address that is never reachable.',
  rung_deny_all: 'The policy denies all egress.',
  sni_mismatch: 'The TLS server name does not match the requested host.',
  session_credential_missing: 'A bearer token is required.',
  session_revoked: 'This session was revoked; start a new MCP session.',
  session_expired: 'This session has expired; start a new MCP session.',
  tool_not_allowed: 'The policy does not allow you to use this tool.',
  argument_denied: 'The policy does not allow this tool call with these arguments.',
  schema_invalid: 'The request does not match the accepted schema.',
  body_too_large: 'The request body is too large.',
  rate_limited: 'Too many requests; slow down and retry later.',
  connection_limit: 'Too many concurrent requests or sessions for this caller.',
  exfil_budget_exceeded: 'This session exceeded its egress budget.',
  unauthorized: 'The bearer token is missing, invalid or expired.',
  not_found: 'Not found.',
  method_not_allowed: 'Method not allowed.',
  session_not_found: 'Session not found; start a new MCP session.',
  tool_failed: 'The tool failed.',
  sandbox_unavailable: 'The sandbox is not available right now; retry later.',
  path_denied: 'That path is not accessible in the sandbox.',
  file_error: 'The file operation failed.',
  edit_failed: 'The edit could not be applied.',
  internal: 'Internal error.',
  unavailable: 'The service is unavailable; retry later.',
};

/** JSON-RPC error codes (server range -32000..-32099, plus the standard ones). */
export const JSONRPC = {
  parseError: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internal: -32603,
  sessionNotFound: -32001,
  unauthorized: -32002,
  forbidden: -32003,
  tooLarge: -32013,
  tooMany: -32029,
  unavailable: -32030,
} as const;

export function jsonRpcCodeFor(reason: McpReason): number {
  switch (reason) {
    case 'schema_invalid':
      return JSONRPC.invalidParams;
    case 'tool_not_allowed':
    case 'argument_denied':
    case 'rung_deny_all':
    case 'destination_not_allowed':
    case 'port_not_allowed':
    case 'resolved_ip_denied':
    case 'path_denied':
      return JSONRPC.forbidden;
    case 'session_credential_missing':
    case 'unauthorized':
    case 'session_revoked':
    case 'session_expired':
    case 'exfil_budget_exceeded':
      return JSONRPC.unauthorized;
    case 'body_too_large':
      return JSONRPC.tooLarge;
    case 'rate_limited':
    case 'connection_limit':
      return JSONRPC.tooMany;
    case 'session_not_found':
      return JSONRPC.sessionNotFound;
    case 'method_not_allowed':
    case 'not_found':
      return JSONRPC.methodNotFound;
    case 'sandbox_unavailable':
    case 'unavailable':
      return JSONRPC.unavailable;
    default:
      return JSONRPC.internal;
  }
}

export function httpStatusFor(reason: McpReason): number {
  switch (reason) {
    case 'schema_invalid':
      return 400;
    case 'session_credential_missing':
    case 'unauthorized':
      return 401;
    case 'not_found':
    case 'session_not_found':
      return 404;
    case 'method_not_allowed':
      return 405;
    case 'body_too_large':
      return 413;
    case 'rate_limited':
    case 'connection_limit':
      return 429;
    case 'internal':
    case 'tool_failed':
      return 500;
    case 'sandbox_unavailable':
    case 'unavailable':
      return 503;
    default:
      return 403;
  }
}

/** Keep an explanation to one short line. */
export function oneLine(s: string, max = 200): string {
  const line = s.split(/\r?\n/, 1)[0] ?? '';
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

export interface Denial {
  reason: McpReason;
  message: string;
}

export function denial(reason: McpReason, detail?: string): Denial {
  return { reason, message: detail ? oneLine(`${EXPLANATIONS[reason]} ${detail}`) : EXPLANATIONS[reason] };
}

export type JsonRpcId = string | number | null;

/** A JSON-RPC error response body carrying the reason and its explanation. */
export function jsonRpcError(id: JsonRpcId, d: Denial): { jsonrpc: '2.0'; id: JsonRpcId; error: { code: number; message: string; data: { reason: McpReason } } } {
  return { jsonrpc: '2.0', id, error: { code: jsonRpcCodeFor(d.reason), message: d.message, data: { reason: d.reason } } };
}

export function jsonRpcErrorBody(id: JsonRpcId, d: Denial): string {
  return JSON.stringify(jsonRpcError(id, d));
}

/** A tool result that carries a denial structurally. */
export function deniedToolResult(d: Denial): { isError: true; content: Array<{ type: 'text'; text: string }>; structuredContent: { error: Denial } } {
  return { isError: true, content: [{ type: 'text', text: `${d.reason}: ${d.message}` }], structuredContent: { error: d } };
}

/** An error raised by the MCP path itself whose denial is meant for the caller as is. */
export class PublicDenial extends Error {
  constructor(readonly denial: Denial) {
    super(denial.reason);
    this.name = 'PublicDenial';
  }
}

/** Error codes whose `publicMessage` may be shown to a tool caller, with the reason they map to. */
const PUBLIC_CODES: Partial<Record<ErrorCode | DenyReason, McpReason>> = {
  path_denied: 'path_denied',
  session_revoked: 'session_revoked',
  session_expired: 'session_expired',
  schema_invalid: 'schema_invalid',
  tool_not_allowed: 'tool_not_allowed',
  argument_denied: 'argument_denied',
  admission_refused: 'sandbox_unavailable',
  runtime_mismatch: 'sandbox_unavailable',
  capacity_exhausted: 'sandbox_unavailable',
  session_unavailable: 'sandbox_unavailable',
  session_not_found: 'session_expired',
  file_error: 'file_error',
  edit_failed: 'edit_failed',
  sandbox_failed: 'tool_failed',
  connection_limit: 'connection_limit',
  rate_limited: 'rate_limited',
  body_too_large: 'body_too_large',
};

/**
 * What a tool caller learns about an error thrown while serving its call. Only PortcullisErrors with
 * a known code pass their (one-line) public message; anything else is `tool_failed`.
 */
export function toDenial(e: unknown): Denial {
  if (e instanceof PublicDenial) return e.denial;
  if (isPortcullisError(e)) {
    const reason = PUBLIC_CODES[e.code];
    if (reason) {
      const pub = e.publicMessage && e.publicMessage !== e.code.replace(/_/g, ' ') ? scrub(oneLine(e.publicMessage)) : '';
      return { reason, message: pub || EXPLANATIONS[reason] };
    }
  }
  return denial('tool_failed');
}

/**
 * Last-line defence on public messages: anything looking like an address, a long hex id or a
 * file-system location inside the host is cut out.
 */
export function scrub(s: string): string {
  return s
    .replace(/\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b/g, '[address]')
    .replace(/\b[0-9a-f]{16,}\b/gi, '[id]')
    .replace(/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/gi, '[id]')
    .replace(/\bat [\w.<>]+ \(.*\)/g, '');
}
