/**
 * Errors carry a stable, machine-readable code. Codes are part of the public contract: extend the
 * list, never rename an entry. Wire conversion (gRPC status, HTTP denial, MCP error) happens in
 * one place per protocol (see `toGrpcStatus` in xds-server, the HTTP/MCP converters in their
 * modules) and only ever exposes `code` and `publicMessage`, never internals.
 */

/** Reason codes for denials, as listed in the architecture brief. Extend, never rename. */
export const DENY_REASONS = [
  'destination_not_allowed',
  'port_not_allowed',
  'resolved_ip_denied',
  'rung_deny_all',
  'sni_mismatch',
  'session_credential_missing',
  'session_revoked',
  'session_expired',
  'tool_not_allowed',
  'argument_denied',
  'schema_invalid',
  'body_too_large',
  'rate_limited',
  'connection_limit',
  'exfil_budget_exceeded',
] as const;
export type DenyReason = (typeof DENY_REASONS)[number];

/** Error codes for everything that is not a traffic denial. */
export const ERROR_CODES = [
  // policy
  'policy_invalid',
  'policy_too_large',
  'policy_unreadable',
  'ir_invalid',
  // xDS / Envoy API
  'resource_invalid',
  'snapshot_inconsistent',
  'xds_bad_request',
  'xds_unknown_type',
  'xds_too_many_resources',
  'xds_unknown_node',
  'envoy_nack',
  // Envoy harness
  'envoy_not_found',
  'envoy_wrong_version',
  'envoy_start_failed',
  'envoy_timeout',
  // `portcullis up`
  'port_in_use',
  // minter / credentials
  'ca_unavailable',
  'mint_refused',
  'credential_unavailable',
  // sandbox
  'runtime_mismatch',
  'admission_refused',
  'sandbox_failed',
  'path_denied',
  'session_not_found',
  'session_unavailable',
  'capacity_exhausted',
  'file_error',
  'edit_failed',
  'agent_protocol',
  // operator / audit
  'audit_write_failed',
  'audit_event_invalid',
  'audit_log_corrupt',
  'unauthorized',
  'usage',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorDetails {
  [key: string]: unknown;
}

export class PortcullisError extends Error {
  readonly code: ErrorCode | DenyReason;
  /** Safe to show to a remote caller. Never contains ids, paths, addresses or stack traces. */
  readonly publicMessage: string;
  readonly details: ErrorDetails;

  constructor(
    code: ErrorCode | DenyReason,
    message: string,
    opts: { publicMessage?: string; details?: ErrorDetails; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.publicMessage = opts.publicMessage ?? defaultPublicMessage(code);
    this.details = opts.details ?? {};
  }
}

function defaultPublicMessage(code: string): string {
  return code.replace(/_/g, ' ');
}

/** A resource that fails pre-push validation against Envoy's protos or their validate rules. */
export class ResourceInvalidError extends PortcullisError {
  constructor(
    readonly issues: readonly ResourceIssue[],
  ) {
    super('resource_invalid', formatIssues(issues), { details: { issues } });
  }
}

export interface ResourceIssue {
  /** e.g. `type.googleapis.com/envoy.config.listener.v3.Listener` */
  typeUrl: string;
  /** resource name */
  resource: string;
  /** field path inside the resource, e.g. `filter_chains[0].filters[0].typed_config.stat_prefix` */
  path: string;
  /** the violated rule, e.g. `string.min_len = 1` or `unknown field` */
  rule: string;
  message: string;
}

function formatIssues(issues: readonly ResourceIssue[]): string {
  const head = issues
    .slice(0, 5)
    .map((i) => `${shortType(i.typeUrl)} "${i.resource}" at ${i.path || '(root)'}: ${i.message} [${i.rule}]`)
    .join('; ');
  return issues.length > 5 ? `${head}; and ${issues.length - 5} more` : head;
}

function shortType(typeUrl: string): string {
  return typeUrl.slice(typeUrl.lastIndexOf('.') + 1);
}

export class EnvoyHarnessError extends PortcullisError {}
export class XdsRequestError extends PortcullisError {}

export function isPortcullisError(e: unknown): e is PortcullisError {
  return e instanceof PortcullisError;
}
