import { z } from 'zod';
import { deniedBy } from './denyset.js';
import { parseHostPattern } from './hosts.js';
import { parseIp } from './ip.js';
import { formatDuration, formatSize, parseDuration, parseSize } from './units.js';

/**
 * The policy YAML schema security teams edit. Every object is `.strict()` (unknown keys are errors),
 * every field carries a description (emitted by `portcullis policy schema` for editor completion).
 *
 * Field-level rules live in the schema; rules that relate fields to each other (a rule's credential
 * must exist, duplicate rules, …) are in `policyIssues`, run by the loader once the structure is valid.
 */

export const API_VERSION = 'portcullis/v1';
export const KIND = 'Policy';

/** Bounds from the NFRs. Larger values are refused, not clamped. */
export const SESSION_BOUNDS = {
  /** NFR-SEC-10: session token `exp` ≤ 60 min */
  tokenTtlSeconds: 60 * 60,
  /** NFR-SEC-40: idle timeout ≤ 15 min */
  idleTimeoutSeconds: 15 * 60,
  /** NFR-SEC-41: absolute lifetime ≤ 12 h */
  absoluteLifetimeSeconds: 12 * 60 * 60,
} as const;

export const RUNGS = ['deny-all', 'transparent', 'bump', 'external-sds'] as const;
export type Rung = (typeof RUNGS)[number];

export const TRUST_PROFILES = ['trusted_operator', 'internal_workforce', 'untrusted'] as const;
export type TrustProfile = (typeof TRUST_PROFILES)[number];
export const RUNTIMES = ['runc', 'gvisor', 'microvm'] as const;
export type Runtime = (typeof RUNTIMES)[number];

export type AdmissionVerdict = 'admitted' | 'pairing_rejected' | 'tier_unavailable';

/**
 * NFR-SEC-38's 9-cell matrix. Pairing rules: trusted_operator → runc / gvisor / microvm;
 * internal_workforce → gvisor / microvm; untrusted → microvm only. The microVM tier has not shipped,
 * so its three cells are refused as `tier_unavailable`: 3 admitted, 6 refused.
 */
export const ADMISSION_MATRIX: Readonly<Record<TrustProfile, Readonly<Record<Runtime, AdmissionVerdict>>>> = {
  trusted_operator: { runc: 'admitted', gvisor: 'admitted', microvm: 'tier_unavailable' },
  internal_workforce: { runc: 'pairing_rejected', gvisor: 'admitted', microvm: 'tier_unavailable' },
  untrusted: { runc: 'pairing_rejected', gvisor: 'pairing_rejected', microvm: 'tier_unavailable' },
};

export function admission(profile: TrustProfile, runtime: Runtime): AdmissionVerdict {
  return ADMISSION_MATRIX[profile][runtime];
}

/** Extra data on custom issues: a stable issue code and an optional hint. */
export interface IssueParams {
  code: string;
  hint?: string;
}

type Ctx = z.RefinementCtx;

function fail(ctx: Ctx, message: string, code: string, hint?: string, path?: PropertyKey[]): void {
  const params: IssueParams = hint === undefined ? { code } : { code, hint };
  ctx.addIssue({ code: 'custom', message, params, ...(path ? { path } : {}) });
}

// ---------------------------------------------------------------------------------------------
// Scalars

const HostPattern = z
  .string({ error: 'expected a host name such as api.example.com' })
  .superRefine((v, ctx) => {
    const r = parseHostPattern(v);
    if (!r.ok) return fail(ctx, r.message, r.code, r.hint);
    if (r.pattern.kind === 'ip') {
      const d = deniedBy(r.pattern.host);
      if (d) {
        fail(
          ctx,
          `address ${r.pattern.host} is inside the mandatory deny-set (${d.cidr}, ${d.reason})`,
          'denied_address',
          'the deny-set is enforced on every resolved address and no policy can open it',
        );
      }
    }
  })
  .describe(
    'Destination host: an exact DNS name (case-insensitive, IDN allowed), "*.example.com" (one or more labels below example.com, not example.com itself), or an IP literal. "*", partial wildcards and public-suffix wildcards are refused.',
  );

const Port = z
  .number({ error: 'expected a port number (1-65535)' })
  .int({ error: 'expected a whole port number' })
  .min(1, { error: 'port must be between 1 and 65535' })
  .max(65535, { error: 'port must be between 1 and 65535' });

const Ports = z
  .array(Port, { error: 'expected a list of ports, e.g. [443]' })
  .min(1, { error: 'ports must not be empty (omit it for the default [443])' })
  .superRefine((v, ctx) => {
    const seen = new Set<number>();
    v.forEach((p, i) => {
      if (seen.has(p)) fail(ctx, `port ${p} is listed twice`, 'duplicate_port', undefined, [i]);
      seen.add(p);
    });
  });

const Rung = z
  .enum(RUNGS)
  .describe(
    'Egress posture: deny-all (nothing passes), transparent (SNI allow-list, no TLS termination), bump (TLS terminated with a per-SNI leaf, credential injection, strict upstream validation), external-sds (as bump, credentials from a customer SDS server).',
  );

const NAME_RE = /^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$/;
const Name = z
  .string({ error: 'expected a name' })
  .regex(NAME_RE, { error: 'names are 1-63 lowercase letters, digits, ".", "_" or "-", starting and ending with a letter or digit' });

const FilePath = z
  .string({ error: 'expected a file path' })
  .min(1, { error: 'file path is empty' })
  .max(4096, { error: 'file path is longer than 4096 characters' })
  .refine((v) => !/[\0\r\n]/.test(v), { error: 'file path contains a control character' })
  .describe('File path; relative paths are resolved against the directory of the policy file.');

function durationField(opts: { max: number; min?: number; nfr?: string; what: string }) {
  return z
    .string({ error: 'expected a duration such as 15m, 1h or 90s' })
    .superRefine((v, ctx) => {
      const s = parseDuration(v);
      if (s === undefined) {
        return fail(ctx, `'${v}' is not a duration`, 'bad_duration', 'write a number with a unit: 90s, 15m, 1h30m, 12h');
      }
      const min = opts.min ?? 1;
      if (s < min) return fail(ctx, `${opts.what} must be at least ${formatDuration(min)}`, 'out_of_range');
      if (s > opts.max) {
        const nfr = opts.nfr ? ` (${opts.nfr})` : '';
        fail(ctx, `${opts.what} ${v} exceeds the maximum ${formatDuration(opts.max)}${nfr}`, opts.nfr ? 'session_bound' : 'out_of_range', `use ${formatDuration(opts.max)} or less`);
      }
    });
}

function sizeField(opts: { min: number; max: number; what: string }) {
  return z
    .union([z.number(), z.string()], { error: 'expected a size such as 4Mi, 256Mi, 1Gi or a byte count' })
    .superRefine((v, ctx) => {
      const n = parseSize(v);
      if (n === undefined) {
        return fail(ctx, `'${v}' is not a size`, 'bad_size', 'write a byte count or a number with a unit: 64Ki, 4Mi, 1Gi (binary) or 4M (decimal)');
      }
      if (n < opts.min || n > opts.max) fail(ctx, `${opts.what} must be between ${formatSize(opts.min)} and ${formatSize(opts.max)}`, 'out_of_range');
    });
}

function isLoopbackHost(hostname: string): boolean {
  const h = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  if (h === 'localhost') return true;
  const ip = parseIp(h);
  if (!ip) return false;
  return ip.family === 4 ? ip.value >> 24n === 127n : ip.value === 1n;
}

/** https URL (http only to a loopback host), no user information, no fragment. */
function urlField(what: string) {
  return z.string({ error: `expected ${what} URL` }).superRefine((v, ctx) => {
    let u: URL;
    try {
      u = new URL(v);
    } catch {
      return fail(ctx, `'${v}' is not a valid URL`, 'bad_url');
    }
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
      return fail(ctx, `${what} URL must use https`, 'bad_url', 'plain http is accepted only for a loopback host');
    }
    if (u.username || u.password) return fail(ctx, 'URLs must not carry user information', 'bad_url');
    if (u.hash) fail(ctx, 'URLs must not carry a fragment', 'bad_url');
  });
}

/** `host:port` where host is an IPv4 literal or a bracketed IPv6 literal. */
export function parseListen(v: string): { host: string; port: number } | undefined {
  const m = /^(\[[^\]]+\]|[^:[\]]+):([0-9]{1,5})$/.exec(v);
  if (!m) return undefined;
  const ip = parseIp(m[1]!);
  const port = Number(m[2]);
  if (!ip || port < 1 || port > 65535) return undefined;
  return { host: m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!, port };
}

/** `host:port` where host is a DNS name or an IP literal (IPv6 in brackets). */
export function parseHostPort(v: string): { host: string; port: number } | undefined {
  const m = /^(\[[^\]]+\]|[^:[\]]+):([0-9]{1,5})$/.exec(v);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  const raw = m[1]!;
  const p = parseHostPattern(raw);
  if (!p.ok || p.pattern.kind === 'wildcard') return undefined;
  if (raw.startsWith('[') !== (p.pattern.kind === 'ip' && p.pattern.host.includes(':'))) return undefined;
  return { host: p.pattern.host, port };
}

const FORBIDDEN_HEADERS = new Set([
  'host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive',
  'proxy-connection', 'expect', 'x-forwarded-for', 'x-forwarded-proto', 'x-request-id',
]);
const HEADER_TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

const HeaderName = z
  .string({ error: 'expected an HTTP header name' })
  .superRefine((v, ctx) => {
    if (!HEADER_TOKEN.test(v) || v.length > 128) return fail(ctx, `'${v}' is not a valid HTTP header name`, 'bad_header');
    const l = v.toLowerCase();
    if (FORBIDDEN_HEADERS.has(l) || l.startsWith('x-envoy-') || l.startsWith('x-portcullis-')) {
      fail(ctx, `header '${v}' is reserved and cannot carry a credential`, 'bad_header', 'use authorization, x-api-key or the header your upstream documents');
    }
  })
  .describe('Header the credential is injected into, overwriting whatever the guest sent. Compared case-insensitively.');

const CredentialFormat = z
  .string({ error: 'expected a format string containing {secret}' })
  .superRefine((v, ctx) => {
    const n = v.split('{secret}').length - 1;
    if (n !== 1) return fail(ctx, `format must contain {secret} exactly once (found ${n})`, 'bad_format', 'e.g. "Bearer {secret}"');
    if (!/^[\x20-\x7e]*$/.test(v) || v.length > 256) fail(ctx, 'format must be printable ASCII, at most 256 characters', 'bad_format');
  })
  .describe('Header value template; {secret} is replaced by the secret. The secret itself never appears in the policy.');

// ---------------------------------------------------------------------------------------------
// Sections

export const DeploymentSchema = z
  .strictObject({
    workloadTrustProfile: z
      .enum(TRUST_PROFILES)
      .describe('Who runs code in the sandboxes (NFR-SEC-38): trusted_operator | internal_workforce | untrusted.'),
    runtime: z.enum(RUNTIMES).describe('Sandbox runtime tier: runc | gvisor | microvm. Admission checks the pairing with the profile.'),
  })
  .superRefine((d, ctx) => {
    const verdict = admission(d.workloadTrustProfile, d.runtime);
    if (verdict === 'pairing_rejected') {
      const allowed = (Object.keys(ADMISSION_MATRIX[d.workloadTrustProfile]) as Runtime[]).filter(
        (r) => ADMISSION_MATRIX[d.workloadTrustProfile][r] !== 'pairing_rejected',
      );
      fail(
        ctx,
        `workloadTrustProfile '${d.workloadTrustProfile}' may not run on runtime '${d.runtime}' (NFR-SEC-38 admission matrix)`,
        'admission_mismatch',
        `'${d.workloadTrustProfile}' pairs with: ${allowed.join(', ')}${d.workloadTrustProfile === 'untrusted' ? ' (not available yet: untrusted workloads are refused until the microVM tier ships)' : ''}`,
        ['runtime'],
      );
    } else if (verdict === 'tier_unavailable') {
      fail(
        ctx,
        `runtime 'microvm' is not available: the microVM tier has not shipped`,
        'tier_unavailable',
        d.workloadTrustProfile === 'untrusted'
          ? 'untrusted workloads are refused until the microVM tier ships'
          : 'use runtime: gvisor',
        ['runtime'],
      );
    }
  })
  .describe('Deployment admission: the workload trust profile and the runtime tier (NFR-SEC-38).');

export const AllowRuleSchema = z
  .strictObject({
    host: HostPattern,
    ports: Ports.default([443]).describe('Destination ports; default [443].'),
    rung: Rung.optional().describe('Rung for this destination; defaults to egress.rung. deny-all here is an explicit deny.'),
    credential: Name.optional().describe('Name of an egress.credentials entry to inject. Only at bump or external-sds.'),
  })
  .describe('One allowed destination.');

export const CredentialSourceSchema = z
  .strictObject({
    file: FilePath.optional().describe('File holding the secret (solo). Watched; changes are re-served without a policy reload.'),
    sds: z
      .strictObject({
        server: Name.describe('Name of an egress.sdsServers entry.'),
        name: z
          .string({ error: 'expected the secret name on the SDS server' })
          .min(1, { error: 'SDS secret name is empty' })
          .max(256)
          .regex(/^[\x21-\x7e]+$/, { error: 'SDS secret name must be printable ASCII without spaces' })
          .describe('Secret name as the SDS server knows it.'),
      })
      .optional()
      .describe('Customer SDS server (external-sds rung).'),
  })
  .superRefine((s, ctx) => {
    const n = (s.file !== undefined ? 1 : 0) + (s.sds !== undefined ? 1 : 0);
    if (n !== 1) fail(ctx, 'a credential source needs exactly one of `file` or `sds`', 'bad_source', 'e.g. { file: ./secrets/api.token } or { sds: { server: customer, name: api-key } }');
  })
  .describe('Where the secret comes from: a file, or a customer SDS server. Never the secret itself.');

export const CredentialSchema = z
  .strictObject({
    name: Name.describe('Credential name, referenced by allow rules.'),
    header: HeaderName,
    format: CredentialFormat.default('{secret}'),
    source: CredentialSourceSchema,
  })
  .describe('An upstream credential injected at the bump / external-sds rungs.');

export const SdsServerSchema = z
  .strictObject({
    name: Name.describe('Name referenced by credential sources.'),
    address: z
      .string({ error: 'expected host:port' })
      .refine((v) => parseHostPort(v) !== undefined, { error: 'expected host:port (IPv6 in brackets)' })
      .describe('SDS server address, host:port.'),
    caFile: FilePath.optional().describe('CA bundle to verify the SDS server; default: the system bundle.'),
    certFile: FilePath.optional().describe('Client certificate for mutual TLS to the SDS server.'),
    keyFile: FilePath.optional().describe('Client private key for mutual TLS (a path; the key is never read into the IR).'),
  })
  .superRefine((s, ctx) => {
    if ((s.certFile === undefined) !== (s.keyFile === undefined)) {
      const [has, lacks] = s.certFile === undefined ? ['keyFile', 'certFile'] : ['certFile', 'keyFile'];
      fail(ctx, `${has} needs ${lacks}: mutual TLS takes both`, 'bad_tls', `add ${lacks}, or remove ${has}`, [has]);
    }
  })
  .describe('A customer SDS server that provides credentials at the external-sds rung.');

export const UpstreamTrustSchema = z
  .union([z.literal('system'), z.strictObject({ caFile: FilePath.describe('PEM CA bundle for internal upstreams.') })], {
    error: 'expected `system` or `{ caFile: path }`',
  })
  .describe('How upstream TLS is verified at the bump rungs: the system bundle, or a CA bundle file.');

export const TripwireSchema = z
  .strictObject({
    bytesPerSession: sizeField({ min: 1, max: 2 ** 50, what: 'bytesPerSession' })
      .default('256Mi')
      .describe('Egress byte budget per session within the window (e.g. 256Mi).'),
    distinctDestinations: z
      .number({ error: 'expected a whole number' })
      .int({ error: 'expected a whole number' })
      .min(1)
      .max(100000)
      .default(64)
      .describe('Distinct destinations per session within the window.'),
    window: durationField({ max: 24 * 3600, what: 'window' }).default('10m').describe('Tripwire window (e.g. 10m).'),
    onTrip: z.enum(['alert', 'kill']).default('alert').describe('alert: audit + SOAR event; kill: also arm the kill switch.'),
  })
  .describe('Payload-independent exfiltration tripwire (NFR-SEC-57), active at every rung.');

export const EgressSchema = z
  .strictObject({
    rung: Rung.default('transparent').describe('Default rung for allow rules without their own. deny-all denies every destination, listed or not.'),
    allow: z.array(AllowRuleSchema).default([]).describe('Allowed destinations. Everything else is denied.'),
    credentials: z.array(CredentialSchema).default([]).describe('Credentials that allow rules may inject.'),
    sdsServers: z.array(SdsServerSchema).default([]).describe('Customer SDS servers for the external-sds rung.'),
    upstreamTrust: UpstreamTrustSchema.default('system'),
    tripwire: TripwireSchema.prefault({}),
  })
  .describe('Guest egress: allow-list, rungs, credentials, upstream trust and tripwire.');

export const StorageBackendSchema = z
  .strictObject({
    host: HostPattern,
    ports: Ports.default([443]).describe('Backend ports; default [443].'),
  })
  .describe('A storage backend the storage lane may reach (allow-list only, no TLS termination).');

export const StorageSchema = z
  .strictObject({
    backends: z.array(StorageBackendSchema).default([]).describe('Storage backends reachable through the storage lane.'),
  })
  .describe('Storage lane.');

export const McpAuthSchema = z
  .discriminatedUnion('mode', [
    z.strictObject({ mode: z.literal('local').describe('Pre-issued local tokens; no IdP.') }),
    z.strictObject({
      mode: z.literal('oidc').describe('JWTs from an OIDC provider, audience-validated.'),
      issuer: urlField('an issuer').describe('OIDC issuer URL (https).'),
      audience: z
        .union([z.string().min(1), z.array(z.string().min(1)).min(1)], { error: 'expected an audience string or a list of them' })
        .describe('Accepted audience(s).'),
      jwksUri: urlField('a JWKS').describe('JWKS URL (https).'),
      callerClaim: z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/, { error: 'expected a claim name' })
        .default('sub')
        .describe('Claim that names the caller for tool rules; default sub.'),
    }),
  ])
  .describe('How MCP clients authenticate at the ingress listener.');

export const McpLimitsSchema = z
  .strictObject({
    connectionsPerCaller: z.number().int().min(1).max(10000).default(16).describe('Concurrent connections per caller.'),
    requestsPerMinute: z.number().int().min(1).max(1_000_000).default(600).describe('Requests per minute per caller.'),
    maxBodyBytes: sizeField({ min: 1024, max: 64 * 1024 * 1024, what: 'maxBodyBytes' }).default('4Mi').describe('Largest request body (e.g. 4Mi).'),
  })
  .describe('Ingress limits.');

const SCALAR = z.union([z.string(), z.number(), z.boolean()], { error: 'expected a string, number or boolean' });
const OPERATORS = ['equals', 'oneOf', 'prefix', 'pathPrefix', 'maxLength'] as const;

export const ArgumentPredicateSchema = z
  .strictObject({
    name: z
      .string({ error: 'expected an argument name' })
      .regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/, { error: 'argument names are letters, digits, "_", "." or "-"' })
      .describe('Tool argument name.'),
    equals: SCALAR.optional().describe('The argument equals this value.'),
    oneOf: z.array(SCALAR).min(1).optional().describe('The argument equals one of these values.'),
    prefix: z.string().min(1).optional().describe('The (string) argument starts with this text.'),
    pathPrefix: z
      .string()
      .regex(/^\/[^\0]*$/, { error: 'pathPrefix must be an absolute POSIX path' })
      .optional()
      .describe('The argument, as a normalized absolute path (".." resolved), is this directory or below it.'),
    maxLength: z.number().int().min(0).optional().describe('The string (or list) argument has at most this many characters (items).'),
  })
  .superRefine((p, ctx) => {
    const ops = OPERATORS.filter((o) => p[o] !== undefined);
    if (ops.length !== 1) {
      fail(ctx, `an argument predicate needs exactly one operator (found ${ops.length ? ops.join(', ') : 'none'})`, 'bad_predicate', `one of: ${OPERATORS.join(', ')}`);
    }
  })
  .describe('A condition on one tool-call argument. A missing argument never satisfies a predicate.');

const Caller = z
  .string({ error: 'expected a caller identity' })
  .regex(/^\S{1,256}$/, { error: 'caller identities are 1-256 characters without spaces' });
const ToolName = z
  .string({ error: 'expected a tool name' })
  .regex(/^(\*|[A-Za-z0-9_.-]{1,128})$/, { error: 'tool names are 1-128 letters, digits, "_", "." or "-" (or "*")' });

export const ToolRuleSchema = z
  .strictObject({
    callers: z.array(Caller).min(1).describe('Caller identities (OIDC claim or local token name); "*" is any authenticated caller.'),
    tools: z.array(ToolName).min(1).describe('Tool names; "*" is any tool.'),
    effect: z.enum(['allow', 'deny']).describe('allow grants the call when every argument predicate holds; deny refuses it, and wins over allow.'),
    arguments: z.array(ArgumentPredicateSchema).default([]).describe('Every predicate must hold for the rule to apply.'),
  })
  .describe('A tool-call rule: callers × tools × argument predicates.');

export const McpSchema = z
  .strictObject({
    listen: z
      .string({ error: 'expected ip:port' })
      .refine((v) => parseListen(v) !== undefined, { error: 'expected ip:port with an IP literal (IPv6 in brackets), e.g. 127.0.0.1:8080' })
      .default('127.0.0.1:8080')
      .describe('MCP ingress listener address.'),
    auth: McpAuthSchema.default({ mode: 'local' }),
    limits: McpLimitsSchema.prefault({}),
    tools: z
      .strictObject({
        default: z.literal('deny', { error: 'tool calls are denied by default; the only accepted value is `deny`' }).default('deny').describe('Always deny: calls no rule allows are refused.'),
        rules: z.array(ToolRuleSchema).default([]).describe('Tool rules; order does not matter (deny wins).'),
      })
      .prefault({})
      .describe('Tool authorization, deny by default.'),
  })
  .describe('MCP ingress.');

export const SessionsSchema = z
  .strictObject({
    tokenTtl: durationField({ max: SESSION_BOUNDS.tokenTtlSeconds, nfr: 'NFR-SEC-10', what: 'tokenTtl' })
      .default('15m')
      .describe('Session token lifetime, ≤ 60m (NFR-SEC-10). Tokens rotate before expiry.'),
    idleTimeout: durationField({ max: SESSION_BOUNDS.idleTimeoutSeconds, nfr: 'NFR-SEC-40', what: 'idleTimeout' })
      .default('15m')
      .describe('Idle timeout, ≤ 15m (NFR-SEC-40).'),
    absoluteLifetime: durationField({ max: SESSION_BOUNDS.absoluteLifetimeSeconds, nfr: 'NFR-SEC-41', what: 'absoluteLifetime' })
      .default('12h')
      .describe('Absolute session lifetime, ≤ 12h (NFR-SEC-41).'),
  })
  .describe('Session bounds. Larger values are refused.');

/** The audience a SOAR admin request must be addressed to unless the policy names another. */
export const SOAR_ADMIN_DEFAULT_AUDIENCE = 'portcullis-admin';

export const SoarAdminKeySchema = z
  .strictObject({
    name: Name.describe('Name of this SOAR key (recorded with every request it signs).'),
    jwksFile: FilePath.describe(
      'JWKS file with the SOAR platform\'s PUBLIC keys (Ed25519 or P-256, each with a kid). Re-read when the policy is applied and every few seconds; an unreadable or invalid file is a policy error.',
    ),
  })
  .describe('One trusted SOAR key set.');

export const SoarAdminSchema = z
  .strictObject({
    audience: z
      .string({ error: 'expected the admin audience' })
      .min(1, { error: 'audience is empty' })
      .max(256, { error: 'audience is longer than 256 characters' })
      .default(SOAR_ADMIN_DEFAULT_AUDIENCE)
      .describe(`The aud every admin request must carry; default ${SOAR_ADMIN_DEFAULT_AUDIENCE}.`),
    keys: z
      .array(SoarAdminKeySchema)
      .min(1, { error: 'soar.admin needs at least one key; remove soar.admin to turn the admin API off' })
      .describe('Public keys whose signatures the admin API accepts.'),
  })
  .superRefine((a, ctx) => {
    const seen = new Map<string, number>();
    a.keys.forEach((k, i) => {
      const first = seen.get(k.name);
      if (first !== undefined) fail(ctx, `duplicate SOAR admin key name '${k.name}' (also keys[${first}])`, 'duplicate_soar_admin_key', 'give every key a distinct name', ['keys', i, 'name']);
      else seen.set(k.name, i);
    });
  })
  .describe('The SOAR admin API (inbound quarantine / kill / revoke, each request a signed JWT). Absent: the admin API is off.');

export const SoarSchema = z
  .strictObject({
    admin: SoarAdminSchema.optional(),
    webhooks: z
      .array(
        z.strictObject({
          url: urlField('a webhook').describe('Webhook URL (https).'),
          signingKey: z.strictObject({ file: FilePath }).describe('Key that signs webhook bodies (a file path).'),
        }),
      )
      .default([])
      .describe('Signed webhooks that receive security events.'),
  })
  .describe('SOAR integration.');

export const AuditSchema = z
  .strictObject({
    file: FilePath.default('./data/audit.jsonl').describe('Append-only, hash-chained audit log file.'),
  })
  .describe('Audit log.');

export const PolicySchema = z
  .strictObject({
    apiVersion: z.literal(API_VERSION, { error: `unsupported apiVersion; this version of Portcullis reads ${API_VERSION}` }).describe('Schema version: portcullis/v1.'),
    kind: z.literal(KIND, { error: 'kind must be Policy' }).describe('Always Policy.'),
    deployment: DeploymentSchema,
    egress: EgressSchema.prefault({}),
    storage: StorageSchema.prefault({}),
    mcp: McpSchema.prefault({}),
    sessions: SessionsSchema.prefault({}),
    soar: SoarSchema.prefault({}),
    audit: AuditSchema.prefault({}),
  })
  .describe('Portcullis policy: what Envoy enforces for MCP ingress, guest egress and the storage lane.');

export type Policy = z.output<typeof PolicySchema>;
export type PolicyInput = z.input<typeof PolicySchema>;
export type AllowRule = z.output<typeof AllowRuleSchema>;
export type Credential = z.output<typeof CredentialSchema>;
export type ToolRule = z.output<typeof ToolRuleSchema>;
export type ArgumentPredicate = z.output<typeof ArgumentPredicateSchema>;
export type SoarAdmin = z.output<typeof SoarAdminSchema>;

// ---------------------------------------------------------------------------------------------
// Cross-field rules

export interface SchemaIssue {
  path: (string | number)[];
  message: string;
  code: string;
  hint?: string;
}

/** Closest candidate by edit distance, when close enough to be a plausible typo. */
export function didYouMean(input: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  const a = input.toLowerCase();
  for (const c of candidates) {
    const d = editDistance(a, c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  if (best === undefined) return undefined;
  const limit = Math.max(1, Math.floor(Math.max(input.length, best.length) / 3));
  return bestD <= limit ? best : undefined;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 8) return Math.abs(a.length - b.length);
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

function overlap(a: readonly number[], b: readonly number[]): number[] {
  const sb = new Set(b);
  return a.filter((p) => sb.has(p));
}

type Add = (path: (string | number)[], message: string, code: string, hint?: string) => void;

function collector(): { out: SchemaIssue[]; add: Add } {
  const out: SchemaIssue[] = [];
  const add: Add = (path, message, code, hint) => out.push(hint === undefined ? { path, message, code } : { path, message, code, hint });
  return { out, add };
}

type Egress = z.output<typeof EgressSchema>;
type Storage = z.output<typeof StorageSchema>;
type Mcp = z.output<typeof McpSchema>;
type Sessions = z.output<typeof SessionsSchema>;

type EgressView = Pick<Egress, 'rung' | 'credentials' | 'sdsServers'> & { allow: [number, AllowRule][] };

function egressIssues(egress: EgressView, add: Add): void {
  // sdsServers and credentials: unique names, resolvable references
  const sdsNames = new Map<string, number>();
  egress.sdsServers.forEach((s, i) => {
    const first = sdsNames.get(s.name);
    if (first !== undefined) add(['egress', 'sdsServers', i, 'name'], `SDS server '${s.name}' is already defined at egress.sdsServers[${first}]`, 'duplicate_name');
    else sdsNames.set(s.name, i);
  });
  const creds = new Map<string, number>();
  egress.credentials.forEach((c, i) => {
    const first = creds.get(c.name);
    if (first !== undefined) add(['egress', 'credentials', i, 'name'], `credential '${c.name}' is already defined at egress.credentials[${first}]`, 'duplicate_name');
    else creds.set(c.name, i);
    if (c.source.sds && !sdsNames.has(c.source.sds.server)) {
      const dym = didYouMean(c.source.sds.server, [...sdsNames.keys()]);
      add(
        ['egress', 'credentials', i, 'source', 'sds', 'server'],
        `SDS server '${c.source.sds.server}' is not defined in egress.sdsServers`,
        'unknown_sds_server',
        dym ? `did you mean \`${dym}\`?` : 'declare it under egress.sdsServers',
      );
    }
  });

  // allow rules: credentials at the right rung, no duplicates
  const byHost = new Map<string, { index: number; ports: number[] }[]>();
  for (const [i, r] of egress.allow) {
    const rung = r.rung ?? egress.rung;
    if (r.credential !== undefined) {
      const ci = creds.get(r.credential);
      if (ci === undefined) {
        const dym = didYouMean(r.credential, [...creds.keys()]);
        add(['egress', 'allow', i, 'credential'], `credential '${r.credential}' is not defined in egress.credentials`, 'unknown_credential', dym ? `did you mean \`${dym}\`?` : undefined);
      } else if (rung !== 'bump' && rung !== 'external-sds') {
        add(
          ['egress', 'allow', i, 'credential'],
          `a credential can only be injected at the bump or external-sds rung, not at '${rung}'${r.rung === undefined ? ' (the egress default)' : ''}`,
          'credential_rung',
          'set `rung: bump` on this rule (file credentials) or `rung: external-sds` (SDS credentials)',
        );
      } else {
        const c = egress.credentials[ci]!;
        if (rung === 'bump' && c.source.sds) {
          add(['egress', 'allow', i, 'credential'], `credential '${c.name}' comes from an SDS server, which needs rung external-sds`, 'credential_source_rung', 'set `rung: external-sds` on this rule');
        } else if (rung === 'external-sds' && c.source.file !== undefined) {
          add(['egress', 'allow', i, 'credential'], `credential '${c.name}' comes from a file, which needs rung bump`, 'credential_source_rung', 'set `rung: bump` on this rule');
        }
      }
    }
    const hp = parseHostPattern(r.host);
    if (!hp.ok) continue;
    const key = `${hp.pattern.kind}:${hp.pattern.host}`;
    const seen = byHost.get(key) ?? [];
    for (const prev of seen) {
      const common = overlap(prev.ports, r.ports);
      if (common.length > 0) {
        add(
          ['egress', 'allow', i, 'host'],
          `duplicate rule: '${hp.pattern.host}' port ${common.join(', ')} is already covered by egress.allow[${prev.index}]`,
          'duplicate_rule',
          'merge the two rules, or give them disjoint ports',
        );
        break;
      }
    }
    seen.push({ index: i, ports: r.ports });
    byHost.set(key, seen);
  }
}

function storageIssues(storage: Storage, add: Add): void {
  const backends = new Map<string, { index: number; ports: number[] }[]>();
  storage.backends.forEach((b, i) => {
    const hp = parseHostPattern(b.host);
    if (!hp.ok) return;
    const seen = backends.get(hp.pattern.host) ?? [];
    for (const prev of seen) {
      const common = overlap(prev.ports, b.ports);
      if (common.length > 0) {
        add(['storage', 'backends', i, 'host'], `duplicate backend: '${hp.pattern.host}' port ${common.join(', ')} is already listed at storage.backends[${prev.index}]`, 'duplicate_rule');
        break;
      }
    }
    seen.push({ index: i, ports: b.ports });
    backends.set(hp.pattern.host, seen);
  });
}

function mcpIssues(mcp: Mcp, add: Add): void {
  const toolKeys = new Map<string, number>();
  mcp.tools.rules.forEach((r, i) => {
    const key = JSON.stringify([
      r.effect,
      [...new Set(r.callers)].sort(),
      [...new Set(r.tools)].sort(),
      r.arguments.map((a) => JSON.stringify(a)).sort(),
    ]);
    const first = toolKeys.get(key);
    if (first !== undefined) add(['mcp', 'tools', 'rules', i], `duplicate rule: identical to mcp.tools.rules[${first}]`, 'duplicate_rule');
    else toolKeys.set(key, i);
  });
}

function sessionIssues(sessions: Sessions, add: Add): void {
  const idle = parseDuration(sessions.idleTimeout);
  const abs = parseDuration(sessions.absoluteLifetime);
  if (idle !== undefined && abs !== undefined && idle > abs) {
    add(['sessions', 'idleTimeout'], `idleTimeout ${sessions.idleTimeout} is longer than absoluteLifetime ${sessions.absoluteLifetime}`, 'session_bound');
  }
}

/** Rules that relate fields to each other. Run on a structurally valid policy. */
export function policyIssues(p: Policy): SchemaIssue[] {
  const { out, add } = collector();
  egressIssues({ ...p.egress, allow: p.egress.allow.map((r, i) => [i, r] as [number, AllowRule]) }, add);
  storageIssues(p.storage, add);
  mcpIssues(p.mcp, add);
  sessionIssues(p.sessions, add);
  return out;
}

/**
 * The same rules on a policy that failed validation elsewhere: each section that is valid on its
 * own is checked, so one run reports structural and cross-field problems together.
 */
export function partialPolicyIssues(raw: unknown): SchemaIssue[] {
  const { out, add } = collector();
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return out;
  const get = (k: string): unknown => (Object.hasOwn(raw, k) ? (raw as Record<string, unknown>)[k] : undefined);
  const egressRaw = get('egress') ?? {};
  const e = EgressSchema.safeParse(egressRaw);
  if (e.success) {
    egressIssues({ ...e.data, allow: e.data.allow.map((r, i) => [i, r] as [number, AllowRule]) }, add);
  } else if (typeof egressRaw === 'object' && egressRaw !== null && !Array.isArray(egressRaw)) {
    // Check the rules that are valid on their own against the parts of egress that are valid.
    const er = egressRaw as Record<string, unknown>;
    const field = <T>(k: string, schema: z.ZodType<T>): T | undefined => {
      const r = schema.safeParse(Object.hasOwn(er, k) ? er[k] : undefined);
      return r.success ? r.data : undefined;
    };
    const rung = field('rung', EgressSchema.shape.rung);
    const credentials = field('credentials', EgressSchema.shape.credentials);
    const sdsServers = field('sdsServers', EgressSchema.shape.sdsServers);
    const allowRaw = Object.hasOwn(er, 'allow') ? er.allow : undefined;
    if (rung !== undefined && credentials !== undefined && sdsServers !== undefined && Array.isArray(allowRaw)) {
      const allow: [number, AllowRule][] = [];
      allowRaw.forEach((a, i) => {
        const r = AllowRuleSchema.safeParse(a);
        if (r.success) allow.push([i, r.data]);
      });
      egressIssues({ rung, credentials, sdsServers, allow }, add);
    }
  }
  const s = StorageSchema.safeParse(get('storage') ?? {});
  if (s.success) storageIssues(s.data, add);
  const m = McpSchema.safeParse(get('mcp') ?? {});
  if (m.success) mcpIssues(m.data, add);
  const se = SessionsSchema.safeParse(get('sessions') ?? {});
  if (se.success) sessionIssues(se.data, add);
  return out;
}
