import { createHash } from 'node:crypto';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { DENY_SET_CIDRS, isDenied } from './denyset.js';
import { parseHostPattern } from './hosts.js';
import { ADMISSION_MATRIX, RUNGS, RUNTIMES, SESSION_BOUNDS, TRUST_PROFILES } from './schema.js';

/**
 * The policy IR: what the Envoy translators (xds-server/) consume and what `explain` reasons over.
 *
 * Contract:
 * - Everything is normalized: hosts lowercase A-labels (or canonical IP text, IPv6 without brackets),
 *   sizes in bytes, durations in seconds, file paths absolute (resolved against the policy file's
 *   directory), header names lowercase.
 * - Everything is sorted (see each list), so the same policy always yields byte-identical IR.
 * - No secret ever appears: credentials are names, file paths and SDS references.
 * - `denySet` always holds every CIDR of the mandatory deny-set (policy/denyset.ts).
 * - Egress decision for a destination `(host, port)` (implemented by `explain`, to be mirrored by the
 *   translators): if `egress.defaultRung` is `deny-all`, deny (`rung_deny_all`); if the host is an IP
 *   literal inside `denySet`, deny (`resolved_ip_denied`); otherwise among the destinations whose host
 *   matches and whose `ports` contain the port, the most specific decides (ip/exact before wildcard,
 *   longer wildcard suffix first); its `rung` applies, `deny-all` meaning deny (`rung_deny_all`). If a
 *   host matches but no matching destination lists the port: `port_not_allowed`; if nothing matches:
 *   `destination_not_allowed`. For names, the deny-set still applies to the resolved address at
 *   connect time.
 */

export const IR_VERSION = 1 as const;

const Host = z.string().min(1);
const PortN = z.number().int().min(1).max(65535);
const SortedPorts = z.array(PortN).min(1);
const AbsPath = z.string().min(1).refine((p) => path.isAbsolute(p), { error: 'path must be absolute' });

export const IrSourceSchema = z.strictObject({
  /** the policy file as the user named it */
  file: z.string(),
  /** 1-based line of the rule in that file */
  line: z.number().int().min(1),
});

export const IrRungSchema = z.enum(RUNGS);

/** A SOAR admin key set: its name, its JWKS file (absolute), where the policy names it. */
export const IrSoarAdminKeySchema = z.strictObject({
  name: z.string().min(1),
  jwksFile: AbsPath,
  source: IrSourceSchema,
});

export const IrCredentialSourceSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('file'), path: AbsPath }),
  z.strictObject({ kind: z.literal('sds'), server: z.string().min(1), name: z.string().min(1) }),
]);

export const IrCredentialSchema = z.strictObject({
  name: z.string().min(1),
  /** lowercase header name, overwritten on the upstream request */
  header: z.string().min(1),
  /** value template containing `{secret}` exactly once */
  format: z.string().includes('{secret}'),
  source: IrCredentialSourceSchema,
});

export const IrDestinationSchema = z.strictObject({
  /** exact name, `*.suffix`, or IP literal */
  host: Host,
  kind: z.enum(['exact', 'wildcard', 'ip']),
  /** ascending, unique */
  ports: SortedPorts,
  /** the rule's own rung, or the egress default */
  rung: IrRungSchema,
  /** only at bump (file source) or external-sds (sds source) */
  credential: IrCredentialSchema.optional(),
  source: IrSourceSchema,
});

export const IrStorageBackendSchema = z.strictObject({
  host: Host,
  kind: z.enum(['exact', 'wildcard', 'ip']),
  ports: SortedPorts,
  source: IrSourceSchema,
});

export const IrSdsServerSchema = z.strictObject({
  name: z.string().min(1),
  host: Host,
  port: PortN,
  caFile: AbsPath.optional(),
  certFile: AbsPath.optional(),
  keyFile: AbsPath.optional(),
});

export const IrToolArgumentSchema = z.discriminatedUnion('op', [
  z.strictObject({ name: z.string().min(1), op: z.literal('equals'), value: z.union([z.string(), z.number(), z.boolean()]) }),
  z.strictObject({ name: z.string().min(1), op: z.literal('oneOf'), value: z.array(z.union([z.string(), z.number(), z.boolean()])).min(1) }),
  z.strictObject({ name: z.string().min(1), op: z.literal('prefix'), value: z.string().min(1) }),
  /** normalized absolute path without a trailing slash (except `/`) */
  z.strictObject({ name: z.string().min(1), op: z.literal('pathPrefix'), value: z.string().startsWith('/') }),
  z.strictObject({ name: z.string().min(1), op: z.literal('maxLength'), value: z.number().int().min(0) }),
]);

export const IrToolRuleSchema = z.strictObject({
  effect: z.enum(['allow', 'deny']),
  /** sorted, unique; `*` = any authenticated caller */
  callers: z.array(z.string().min(1)).min(1),
  /** sorted, unique; `*` = any tool */
  tools: z.array(z.string().min(1)).min(1),
  /** sorted by (name, op, value); all must hold */
  arguments: z.array(IrToolArgumentSchema),
  source: IrSourceSchema,
});

export const IrSchema = z.strictObject({
  irVersion: z.literal(IR_VERSION),
  /** the policy this IR was compiled from */
  policy: z.strictObject({ apiVersion: z.string(), file: z.string() }),
  deployment: z.strictObject({
    workloadTrustProfile: z.enum(TRUST_PROFILES),
    runtime: z.enum(RUNTIMES),
  }),
  /** mandatory resolved-IP deny-set, in DENY_SET order; applies to both egress and storage lanes */
  denySet: z.array(z.string()),
  egress: z.strictObject({
    defaultRung: IrRungSchema,
    /** where egress.rung is written, when it is */
    defaultRungSource: IrSourceSchema.optional(),
    /** sorted by (host, first port) */
    destinations: z.array(IrDestinationSchema),
    /** sorted by name */
    sdsServers: z.array(IrSdsServerSchema),
    upstreamTrust: z.discriminatedUnion('kind', [
      z.strictObject({ kind: z.literal('system') }),
      z.strictObject({ kind: z.literal('file'), path: AbsPath }),
    ]),
    tripwire: z.strictObject({
      bytesPerSession: z.number().int().min(1),
      distinctDestinations: z.number().int().min(1),
      windowSeconds: z.number().int().min(1),
      onTrip: z.enum(['alert', 'kill']),
    }),
  }),
  storage: z.strictObject({
    /** sorted by (host, first port) */
    backends: z.array(IrStorageBackendSchema),
  }),
  mcp: z.strictObject({
    listen: z.strictObject({ host: Host, port: PortN }),
    auth: z.discriminatedUnion('mode', [
      z.strictObject({ mode: z.literal('local') }),
      z.strictObject({
        mode: z.literal('oidc'),
        issuer: z.url(),
        /** sorted, unique */
        audiences: z.array(z.string().min(1)).min(1),
        jwksUri: z.url(),
        callerClaim: z.string().min(1),
      }),
    ]),
    limits: z.strictObject({
      connectionsPerCaller: z.number().int().min(1),
      requestsPerMinute: z.number().int().min(1),
      maxBodyBytes: z.number().int().min(1),
    }),
    tools: z.strictObject({
      default: z.literal('deny'),
      /** sorted by (effect, tools, callers, arguments); order carries no meaning: deny wins */
      rules: z.array(IrToolRuleSchema),
    }),
  }),
  sessions: z.strictObject({
    tokenTtlSeconds: z.number().int().min(1),
    idleTimeoutSeconds: z.number().int().min(1),
    absoluteLifetimeSeconds: z.number().int().min(1),
  }),
  soar: z.strictObject({
    /** the SOAR admin API's trust; absent: the admin API is off */
    admin: z
      .strictObject({
        audience: z.string().min(1),
        /** sorted by name, unique; the files are read at the edge (operator plane), not here */
        keys: z.array(IrSoarAdminKeySchema).min(1),
      })
      .optional(),
    /** sorted by url */
    webhooks: z.array(z.strictObject({ url: z.url(), signingKeyFile: AbsPath })),
  }),
  audit: z.strictObject({ file: AbsPath }),
});

export type Ir = z.infer<typeof IrSchema>;
export type IrDestination = z.infer<typeof IrDestinationSchema>;
export type IrCredential = z.infer<typeof IrCredentialSchema>;
export type IrStorageBackend = z.infer<typeof IrStorageBackendSchema>;
export type IrToolRule = z.infer<typeof IrToolRuleSchema>;
export type IrToolArgument = z.infer<typeof IrToolArgumentSchema>;
export type IrSource = z.infer<typeof IrSourceSchema>;
export type IrSoarAdminKey = z.infer<typeof IrSoarAdminKeySchema>;
export type IrRung = z.infer<typeof IrRungSchema>;

export const IR_ERROR_CODES = [
  'ir_schema',
  'ir_unsorted',
  'ir_duplicate_destination',
  'ir_host_invalid',
  'ir_destination_denied',
  'ir_credential_rung',
  'ir_credential_source',
  'ir_unknown_sds_server',
  'ir_denyset_incomplete',
  'ir_session_bounds',
  'ir_admission',
  'ir_ports',
] as const;
export type IrErrorCode = (typeof IR_ERROR_CODES)[number];

export interface IrError {
  code: IrErrorCode;
  /** dotted path into the IR, e.g. `egress.destinations[3].credential` */
  path: string;
  message: string;
}

function p(parts: (string | number)[]): string {
  let s = '';
  for (const seg of parts) s += typeof seg === 'number' ? `[${seg}]` : s ? `.${seg}` : seg;
  return s;
}

/** Compare strings by code unit (locale-independent, deterministic). */
export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function destinationOrder(a: { host: string; ports: number[] }, b: { host: string; ports: number[] }): number {
  return cmp(a.host, b.host) || (a.ports[0] ?? 0) - (b.ports[0] ?? 0);
}

export function toolRuleKey(r: Pick<IrToolRule, 'effect' | 'tools' | 'callers' | 'arguments'>): string {
  return JSON.stringify([r.effect, r.tools, r.callers, r.arguments]);
}

function sortedUnique<T>(xs: readonly T[], order: (a: T, b: T) => number): boolean {
  for (let i = 1; i < xs.length; i++) if (order(xs[i - 1]!, xs[i]!) >= 0) return false;
  return true;
}

/**
 * Every problem with an IR, each with a code. Empty means the IR can be translated. Checks the
 * schema, ordering, normalization, the deny-set, credential placement, session bounds and admission.
 */
export function validateIr(input: unknown): IrError[] {
  const r = IrSchema.safeParse(input);
  if (!r.success) {
    return r.error.issues.map((i) => ({ code: 'ir_schema' as const, path: p(i.path.map((s) => (typeof s === 'number' ? s : String(s)))), message: i.message }));
  }
  const ir = r.data;
  const errs: IrError[] = [];
  const add = (code: IrErrorCode, at: (string | number)[], message: string) => errs.push({ code, path: p(at), message });

  const v = ADMISSION_MATRIX[ir.deployment.workloadTrustProfile][ir.deployment.runtime];
  if (v !== 'admitted') add('ir_admission', ['deployment'], `${ir.deployment.workloadTrustProfile} × ${ir.deployment.runtime} is not admitted (${v})`);

  const have = new Set(ir.denySet);
  for (const c of DENY_SET_CIDRS) if (!have.has(c)) add('ir_denyset_incomplete', ['denySet'], `mandatory deny-set entry ${c} is missing`);

  const sds = new Set(ir.egress.sdsServers.map((s) => s.name));
  if (!sortedUnique(ir.egress.sdsServers.map((s) => s.name), cmp)) add('ir_unsorted', ['egress', 'sdsServers'], 'sdsServers must be sorted by name, unique');

  const checkHosts = (list: { host: string; kind: string; ports: number[] }[], at: string[]) => {
    list.forEach((d, i) => {
      const hp = parseHostPattern(d.host);
      if (!hp.ok || hp.pattern.kind !== d.kind || hp.pattern.host !== d.host) {
        add('ir_host_invalid', [...at, i, 'host'], `host '${d.host}' is not a normalized ${d.kind} pattern`);
      } else if (d.kind === 'ip' && isDenied(d.host)) {
        add('ir_destination_denied', [...at, i, 'host'], `${d.host} is inside the mandatory deny-set`);
      }
      if (!sortedUnique(d.ports, (a, b) => a - b)) add('ir_ports', [...at, i, 'ports'], 'ports must be ascending and unique');
      if (i > 0 && destinationOrder(list[i - 1]!, d) > 0) add('ir_unsorted', [...at, i], `not sorted: '${d.host}' after '${list[i - 1]!.host}'`);
    });
    const seen = new Map<string, number[][]>();
    list.forEach((d, i) => {
      const prev = seen.get(d.host) ?? [];
      for (const ports of prev) {
        if (ports.some((x) => d.ports.includes(x))) {
          add('ir_duplicate_destination', [...at, i], `'${d.host}' has overlapping ports with another entry`);
          break;
        }
      }
      prev.push(d.ports);
      seen.set(d.host, prev);
    });
  };
  checkHosts(ir.egress.destinations, ['egress', 'destinations']);
  checkHosts(ir.storage.backends, ['storage', 'backends']);

  ir.egress.destinations.forEach((d, i) => {
    if (!d.credential) return;
    const at = ['egress', 'destinations', i, 'credential'];
    if (d.rung !== 'bump' && d.rung !== 'external-sds') add('ir_credential_rung', at, `credential at rung ${d.rung}`);
    if (d.rung === 'bump' && d.credential.source.kind !== 'file') add('ir_credential_source', at, 'bump credentials come from files');
    if (d.rung === 'external-sds' && d.credential.source.kind !== 'sds') add('ir_credential_source', at, 'external-sds credentials come from an SDS server');
    if (d.credential.source.kind === 'sds' && !sds.has(d.credential.source.server)) {
      add('ir_unknown_sds_server', [...at, 'source', 'server'], `SDS server '${d.credential.source.server}' is not in egress.sdsServers`);
    }
    if (d.credential.header !== d.credential.header.toLowerCase()) add('ir_schema', [...at, 'header'], 'header must be lowercase');
  });

  const s = ir.sessions;
  if (s.tokenTtlSeconds > SESSION_BOUNDS.tokenTtlSeconds) add('ir_session_bounds', ['sessions', 'tokenTtlSeconds'], `exceeds ${SESSION_BOUNDS.tokenTtlSeconds}`);
  if (s.idleTimeoutSeconds > SESSION_BOUNDS.idleTimeoutSeconds) add('ir_session_bounds', ['sessions', 'idleTimeoutSeconds'], `exceeds ${SESSION_BOUNDS.idleTimeoutSeconds}`);
  if (s.absoluteLifetimeSeconds > SESSION_BOUNDS.absoluteLifetimeSeconds) add('ir_session_bounds', ['sessions', 'absoluteLifetimeSeconds'], `exceeds ${SESSION_BOUNDS.absoluteLifetimeSeconds}`);
  if (s.idleTimeoutSeconds > s.absoluteLifetimeSeconds) add('ir_session_bounds', ['sessions', 'idleTimeoutSeconds'], 'longer than absoluteLifetimeSeconds');

  ir.mcp.tools.rules.forEach((rule, i) => {
    const at = ['mcp', 'tools', 'rules', i];
    if (!sortedUnique(rule.callers, cmp)) add('ir_unsorted', [...at, 'callers'], 'callers must be sorted and unique');
    if (!sortedUnique(rule.tools, cmp)) add('ir_unsorted', [...at, 'tools'], 'tools must be sorted and unique');
    const argKeys = rule.arguments.map((a) => JSON.stringify([a.name, a.op, a.value]));
    if (!sortedUnique(argKeys, cmp)) add('ir_unsorted', [...at, 'arguments'], 'arguments must be sorted and unique');
    if (i > 0 && cmp(toolRuleKey(ir.mcp.tools.rules[i - 1]!), toolRuleKey(rule)) >= 0) add('ir_unsorted', at, 'tool rules must be sorted and unique');
  });
  if (ir.mcp.auth.mode === 'oidc' && !sortedUnique(ir.mcp.auth.audiences, cmp)) add('ir_unsorted', ['mcp', 'auth', 'audiences'], 'audiences must be sorted and unique');
  if (!sortedUnique(ir.soar.webhooks.map((w) => w.url), cmp)) add('ir_unsorted', ['soar', 'webhooks'], 'webhooks must be sorted by url, unique');
  if (ir.soar.admin && !sortedUnique(ir.soar.admin.keys.map((k) => k.name), cmp)) add('ir_unsorted', ['soar', 'admin', 'keys'], 'admin keys must be sorted by name, unique');
  return errs;
}

/** Recursively sort object keys (arrays keep their order). */
export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort(cmp)) {
      const x = (v as Record<string, unknown>)[k];
      if (x !== undefined) out[k] = sortKeys(x);
    }
    return out;
  }
  return v;
}

/** Canonical YAML text of an IR (sorted keys). */
export function irToYaml(ir: Ir): string {
  return YAML.stringify(sortKeys(ir), { lineWidth: 0, aliasDuplicateObjects: false });
}

/** Canonical JSON text of an IR (sorted keys, no whitespace). */
export function irToJson(ir: Ir): string {
  return JSON.stringify(sortKeys(ir));
}

/**
 * A content digest of the IR, for snapshot versions. Rule line numbers are excluded, so moving a rule
 * without changing what is enforced keeps the digest.
 */
export function irDigest(ir: Ir): string {
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (v && typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) {
        const isRuleSource = (k === 'source' || k === 'defaultRungSource') && x !== null && typeof x === 'object' && 'line' in x;
        if (!isRuleSource && k !== 'policy') out[k] = strip(x);
      }
      return out;
    }
    return v;
  };
  return createHash('sha256').update(JSON.stringify(sortKeys(strip(ir)))).digest('hex');
}

/** Every credential file the IR names (for watching), sorted and unique. */
export function credentialFiles(ir: Ir): string[] {
  const files = new Set<string>();
  for (const d of ir.egress.destinations) if (d.credential?.source.kind === 'file') files.add(d.credential.source.path);
  return [...files].sort(cmp);
}

