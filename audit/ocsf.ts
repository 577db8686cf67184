import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { z } from 'zod';
import type { PortcullisEvent } from '../common/events.js';
import { AuditEventInvalidError } from './errors.js';

/**
 * OCSF v1.x events for the audit log, built from typed inputs (zod, `.strict()`).
 *
 * Every event carries the fields NFR-MAINT-AUDIT-SCHEMA makes mandatory:
 *   - trace_id:   `unmapped.trace_id` (always present, null when unknown); also
 *                 `metadata.correlation_uid` when known
 *   - session_id: `unmapped.session_id` (always present, null when unknown); also
 *                 `actor.session.uid` when known
 *   - actor_id:   `actor.user.uid` (operators, SOAR, components, sandboxes alike; `actor.user.type`
 *                 says which)
 *   - resource:   the class's own object: `resources[]` (API Activity), `dst_endpoint` (Network
 *                 Activity), `file` (File System Activity), `service` + `user` (Authentication),
 *                 `unmapped.resource` (Base Event)
 *   - action:     `activity_id`/`activity_name`, plus `api.operation` for API Activity
 *   - outcome:    `status_id`/`status` (1 Success, 2 Failure, 0 Unknown, 99 "Attempt" for the
 *                 pre-action record of `requireAudit`)
 * and `time` (ms epoch), `severity_id`, `metadata.product.name = "Portcullis"`,
 * `metadata.version` = the OCSF schema version below.
 *
 * Config events use API Activity (6003) with `api.operation` = `config.<what>` and activity
 * Create/Update/Delete. The OCSF classes named after configuration — Device Config State (5002)
 * and Device Config State Change (5019) — belong to the Discovery category: they report the
 * posture of an inventoried device (CIS benchmark results, security-level changes) and require a
 * `device`. A Portcullis config change is an action by an actor (operator, policy watcher, xDS
 * server) on a resource (policy file, xDS resource, CA) with an outcome, which is exactly the
 * shape of API Activity; using it keeps every control-plane action in one class that SIEM rules
 * can filter on `api.operation`.
 */

export const OCSF_SCHEMA_VERSION = '1.3.0';
export const PRODUCT_NAME = 'Portcullis';
export const LOG_NAME = 'portcullis-audit';

// ---------------------------------------------------------------------------------------------
// Output

const Json = z.json();

/** The envelope every audit event must have (class-specific attributes pass through). */
export const OcsfEventSchema = z
  .looseObject({
    class_uid: z.number().int().nonnegative(),
    class_name: z.string().min(1),
    category_uid: z.number().int().nonnegative(),
    category_name: z.string().min(1),
    activity_id: z.number().int().nonnegative(),
    activity_name: z.string().min(1),
    type_uid: z.number().int().nonnegative(),
    type_name: z.string().min(1),
    time: z.number().int().nonnegative(),
    severity_id: z.number().int().nonnegative(),
    severity: z.string(),
    status_id: z.number().int().nonnegative(),
    status: z.string(),
    metadata: z.looseObject({
      version: z.string().regex(/^1\.\d+\.\d+$/),
      product: z.looseObject({ name: z.literal(PRODUCT_NAME), vendor_name: z.string() }),
    }),
    unmapped: z.looseObject({ trace_id: z.string().nullable(), session_id: z.string().nullable() }),
  })
  .refine((e) => e.type_uid === e.class_uid * 100 + e.activity_id, { message: 'type_uid must be class_uid * 100 + activity_id', path: ['type_uid'] });

export type OcsfEvent = z.infer<typeof OcsfEventSchema>;

const isUint = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
const isStr = (v: unknown, min = 0): boolean => typeof v === 'string' && v.length >= min;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The same envelope rules as `OcsfEventSchema`, hand-written for the writer's hot path (about
 * twenty times cheaper than the zod parse). Returns null when fine, else what is wrong.
 */
export function checkEnvelope(e: unknown): string | null {
  if (!isObj(e)) return 'event is not an object';
  for (const k of ['class_uid', 'category_uid', 'activity_id', 'type_uid', 'time', 'severity_id', 'status_id'] as const) {
    if (!isUint(e[k])) return `${k} must be a non-negative integer`;
  }
  for (const k of ['class_name', 'category_name', 'activity_name', 'type_name'] as const) if (!isStr(e[k], 1)) return `${k} must be a non-empty string`;
  for (const k of ['severity', 'status'] as const) if (!isStr(e[k])) return `${k} must be a string`;
  const m = e.metadata;
  if (!isObj(m) || !isStr(m.version) || !/^1\.\d+\.\d+$/.test(m.version as string)) return 'metadata.version must be an OCSF 1.x version';
  if (!isObj(m.product) || m.product.name !== PRODUCT_NAME || !isStr(m.product.vendor_name)) return `metadata.product.name must be ${PRODUCT_NAME}`;
  const u = e.unmapped;
  if (!isObj(u)) return 'unmapped must be an object';
  if (!(u.trace_id === null || isStr(u.trace_id)) || !(u.session_id === null || isStr(u.session_id))) return 'unmapped.trace_id and unmapped.session_id must be strings or null';
  if (e.type_uid !== (e.class_uid as number) * 100 + (e.activity_id as number)) return 'type_uid must be class_uid * 100 + activity_id';
  return null;
}

// ---------------------------------------------------------------------------------------------
// Inputs

const Id = z.string().min(1).max(1024);

export const ActorInputSchema = z
  .object({
    /** operator subject, SOAR client id, component name, sandbox id, SPIFFE id … */
    id: Id,
    type: z.enum(['user', 'admin', 'system', 'service', 'sandbox', 'soar']),
    name: z.string().max(1024).optional(),
  })
  .strict();
export type ActorInput = z.infer<typeof ActorInputSchema>;

export const ResourceInputSchema = z
  .object({
    type: z.string().min(1).max(256),
    id: Id,
    name: z.string().max(1024).optional(),
  })
  .strict();
export type ResourceInput = z.infer<typeof ResourceInputSchema>;

export const EndpointInputSchema = z
  .object({
    ip: z.union([z.ipv4(), z.ipv6()]).optional(),
    port: z.number().int().min(0).max(65535).optional(),
    hostname: z.string().max(1024).optional(),
    domain: z.string().max(1024).optional(),
    name: z.string().max(1024).optional(),
    uid: z.string().max(1024).optional(),
    svc_name: z.string().max(1024).optional(),
  })
  .strict();
export type EndpointInput = z.infer<typeof EndpointInputSchema>;

export const OUTCOMES = ['success', 'failure', 'attempt', 'unknown'] as const;
export type Outcome = (typeof OUTCOMES)[number];
export const SEVERITIES = ['unknown', 'informational', 'low', 'medium', 'high', 'critical', 'fatal'] as const;
export type Severity = (typeof SEVERITIES)[number];

const common = {
  /** ms since the epoch; defaults to now */
  time: z.number().int().nonnegative().optional(),
  traceId: z.string().min(1).max(256).optional(),
  sessionId: z.string().min(1).max(256).optional(),
  actor: ActorInputSchema,
  outcome: z.enum(OUTCOMES),
  /** defaults to medium for failures, informational otherwise */
  severity: z.enum(SEVERITIES).optional(),
  message: z.string().max(4096).optional(),
  statusCode: z.string().max(256).optional(),
  statusDetail: z.string().max(4096).optional(),
  /** the source's own event name (goes to metadata.event_code) */
  eventCode: z.string().max(256).optional(),
  /** extra attributes with no OCSF home (never secrets, bodies, file contents or env values) */
  unmapped: z.record(z.string(), Json).optional(),
};

const API_ACTIVITIES = { create: 1, read: 2, update: 3, delete: 4, other: 99 } as const;
const NETWORK_ACTIVITIES = { open: 1, close: 2, reset: 3, fail: 4, refuse: 5, traffic: 6, listen: 7, other: 99 } as const;
const FILE_ACTIVITIES = {
  create: 1,
  read: 2,
  update: 3,
  delete: 4,
  rename: 5,
  set_attributes: 6,
  set_security: 7,
  get_attributes: 8,
  get_security: 9,
  encrypt: 10,
  decrypt: 11,
  mount: 12,
  unmount: 13,
  open: 14,
  other: 99,
} as const;
const AUTH_ACTIVITIES = {
  logon: 1,
  logoff: 2,
  authentication_ticket: 3,
  service_ticket_request: 4,
  service_ticket_renew: 5,
  preauth: 6,
  other: 99,
} as const;

function keysOf<T extends Record<string, number>>(o: T): [keyof T & string, ...(keyof T & string)[]] {
  return Object.keys(o) as [keyof T & string, ...(keyof T & string)[]];
}

export const ApiActivityInputSchema = z
  .object({
    ...common,
    activity: z.enum(keysOf(API_ACTIVITIES)),
    /** what was done, dotted: `tool.call`, `sandbox.kill`, `denylist.edit`, `soar.quarantine` … */
    operation: z.string().min(1).max(256),
    resource: ResourceInputSchema,
    /** the API/service that handled it (`api.service.name`) */
    service: z.string().max(256).optional(),
    requestId: z.string().max(256).optional(),
    /** where the call came from; defaults to this host */
    src: EndpointInputSchema.optional(),
    dst: EndpointInputSchema.optional(),
  })
  .strict();
export type ApiActivityInput = z.input<typeof ApiActivityInputSchema>;

export const ConfigChangeInputSchema = z
  .object({
    ...common,
    activity: z.enum(['create', 'update', 'delete', 'other']).optional(),
    /** must start with `config.`: `config.policy_reloaded`, `config.nack`, `config.ca_rotated` … */
    operation: z.string().regex(/^config\.[a-z0-9_.]+$/),
    resource: ResourceInputSchema,
    service: z.string().max(256).optional(),
    src: EndpointInputSchema.optional(),
  })
  .strict();
export type ConfigChangeInput = z.input<typeof ConfigChangeInputSchema>;

export const NetworkActivityInputSchema = z
  .object({
    ...common,
    activity: z.enum(keysOf(NETWORK_ACTIVITIES)),
    /** ingress = inbound, egress = outbound */
    direction: z.enum(['inbound', 'outbound', 'lateral', 'unknown']),
    src: EndpointInputSchema,
    dst: EndpointInputSchema,
    protocol: z.enum(['tcp', 'udp', 'other']).optional(),
    /** TLS SNI the client asked for */
    sni: z.string().max(1024).optional(),
    bytesIn: z.number().int().nonnegative().optional(),
    bytesOut: z.number().int().nonnegative().optional(),
    durationMs: z.number().int().nonnegative().optional(),
    /** enforcement decision (security_control profile `action_id`) */
    decision: z.enum(['allowed', 'denied']).optional(),
  })
  .strict();
export type NetworkActivityInput = z.input<typeof NetworkActivityInputSchema>;

export const FileActivityInputSchema = z
  .object({
    ...common,
    activity: z.enum(keysOf(FILE_ACTIVITIES)),
    file: z
      .object({
        path: z.string().min(1).max(4096),
        type: z.enum(['file', 'folder', 'symlink', 'other', 'unknown']).optional(),
        size: z.number().int().nonnegative().optional(),
        /** content digest if the tool computed one (never the content) */
        sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
      })
      .strict(),
    /** the new path of a rename */
    newPath: z.string().min(1).max(4096).optional(),
    /** the file tool that did it (`fs.write`, `fs.read` …) */
    tool: z.string().max(256).optional(),
    /** the sandbox (device) the file lives in */
    device: z.object({ id: Id, name: z.string().max(1024).optional() }).strict().optional(),
  })
  .strict();
export type FileActivityInput = z.input<typeof FileActivityInputSchema>;

export const AuthenticationInputSchema = z
  .object({
    ...common,
    activity: z.enum(keysOf(AUTH_ACTIVITIES)),
    /** whom the credential is for */
    user: z.object({ id: Id, name: z.string().max(1024).optional() }).strict(),
    /** the service the credential is for / issued by */
    service: z.string().min(1).max(256),
    protocol: z.enum(['oauth2', 'openid', 'saml', 'basic', 'mtls', 'other', 'unknown']).optional(),
    /** token metadata — never the token itself */
    token: z
      .object({
        id: z.string().max(256).optional(),
        kind: z.string().max(64).optional(),
        expiresAt: z.number().int().nonnegative().optional(),
      })
      .strict()
      .optional(),
    dst: EndpointInputSchema.optional(),
  })
  .strict();
export type AuthenticationInput = z.input<typeof AuthenticationInputSchema>;

export const GenericEventInputSchema = z
  .object({
    ...common,
    /** the raw event type (`foo.bar`) */
    type: z.string().min(1).max(256),
    resource: ResourceInputSchema.optional(),
    data: z.record(z.string(), Json).optional(),
  })
  .strict();
export type GenericEventInput = z.input<typeof GenericEventInputSchema>;

// ---------------------------------------------------------------------------------------------
// Builders

function parse<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new AuditEventInvalidError(`invalid ${what} input: ${issues.slice(0, 5).join('; ')}`, { details: { issues } });
  }
  return r.data;
}

const STATUS: Record<Outcome, [number, string]> = {
  success: [1, 'Success'],
  failure: [2, 'Failure'],
  unknown: [0, 'Unknown'],
  attempt: [99, 'Attempt'],
};
export const SEVERITY_IDS: Record<Severity, [number, string]> = {
  unknown: [0, 'Unknown'],
  informational: [1, 'Informational'],
  low: [2, 'Low'],
  medium: [3, 'Medium'],
  high: [4, 'High'],
  critical: [5, 'Critical'],
  fatal: [6, 'Fatal'],
};
const USER_TYPES: Record<ActorInput['type'], [number, string]> = {
  user: [1, 'User'],
  admin: [2, 'Admin'],
  system: [3, 'System'],
  service: [99, 'Service'],
  sandbox: [99, 'Sandbox'],
  soar: [99, 'SOAR'],
};

interface ClassInfo {
  class_uid: number;
  class_name: string;
  category_uid: number;
  category_name: string;
}
const API: ClassInfo = { class_uid: 6003, class_name: 'API Activity', category_uid: 6, category_name: 'Application Activity' };
const NET: ClassInfo = { class_uid: 4001, class_name: 'Network Activity', category_uid: 4, category_name: 'Network Activity' };
const FILE: ClassInfo = { class_uid: 1001, class_name: 'File System Activity', category_uid: 1, category_name: 'System Activity' };
const AUTH: ClassInfo = { class_uid: 3002, class_name: 'Authentication', category_uid: 3, category_name: 'Identity & Access Management' };
const BASE: ClassInfo = { class_uid: 0, class_name: 'Base Event', category_uid: 0, category_name: 'Uncategorized' };

type CommonParsed = {
  time?: number | undefined;
  traceId?: string | undefined;
  sessionId?: string | undefined;
  actor: ActorInput;
  outcome: Outcome;
  severity?: Severity | undefined;
  message?: string | undefined;
  statusCode?: string | undefined;
  statusDetail?: string | undefined;
  eventCode?: string | undefined;
  unmapped?: Record<string, unknown> | undefined;
};

function activityName(key: string): string {
  return key
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join(' ');
}

function actorOf(c: CommonParsed): Record<string, unknown> {
  const [type_id, type] = USER_TYPES[c.actor.type];
  return prune({
    user: { uid: c.actor.id, name: c.actor.name, type_id, type },
    session: c.sessionId === undefined ? undefined : { uid: c.sessionId },
  });
}

function envelope(cls: ClassInfo, activity: string, activityId: number, c: CommonParsed, specific: Record<string, unknown>, profiles?: string[]): OcsfEvent {
  const [status_id, status] = STATUS[c.outcome];
  const [severity_id, severity] = SEVERITY_IDS[c.severity ?? (c.outcome === 'failure' ? 'medium' : 'informational')];
  const activity_name = activityName(activity);
  const ev = {
    ...cls,
    activity_id: activityId,
    activity_name,
    type_uid: cls.class_uid * 100 + activityId,
    type_name: `${cls.class_name}: ${activity_name}`,
    time: c.time ?? Date.now(),
    severity_id,
    severity,
    status_id,
    status,
    status_code: c.statusCode,
    status_detail: c.statusDetail,
    message: c.message,
    metadata: {
      version: OCSF_SCHEMA_VERSION,
      product: { name: PRODUCT_NAME, vendor_name: PRODUCT_NAME },
      uid: randomUUID(),
      correlation_uid: c.traceId,
      event_code: c.eventCode,
      log_name: LOG_NAME,
      profiles,
    },
    actor: actorOf(c),
    ...specific,
    unmapped: { ...(c.unmapped ?? {}), trace_id: c.traceId ?? null, session_id: c.sessionId ?? null },
  };
  return sortedClean(ev) as OcsfEvent;
}

/**
 * Deep copy with object keys in sorted order and `undefined` properties dropped: the event then
 * serializes canonically with the native JSON.stringify (the writer's fast path).
 */
function sortedClean(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortedClean);
  if (typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      const item = (v as Record<string, unknown>)[k];
      if (item !== undefined) out[k] = sortedClean(item);
    }
    return out;
  }
  return v;
}

/** Drop `undefined` properties (recursively through plain objects). */
function prune<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) {
    const v = o[k];
    if (v === undefined) delete o[k];
    else if (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype) prune(v as Record<string, unknown>);
  }
  return o;
}

let localHost: string | undefined;
function thisHost(): { hostname: string } {
  localHost ??= hostname();
  return { hostname: localHost };
}

/** API Activity (6003): tool calls, operator and SOAR actions. */
export function apiActivity(input: ApiActivityInput): OcsfEvent {
  const i = parse(ApiActivityInputSchema, input, 'API activity');
  return envelope(API, i.activity, API_ACTIVITIES[i.activity], i, {
    api: prune({
      operation: i.operation,
      service: i.service === undefined ? undefined : { name: i.service },
      request: i.requestId === undefined ? undefined : { uid: i.requestId },
    }),
    resources: [prune({ uid: i.resource.id, type: i.resource.type, name: i.resource.name })],
    src_endpoint: i.src ?? thisHost(),
    dst_endpoint: i.dst,
  });
}

/** A configuration change (API Activity 6003 with a `config.*` operation; see the module comment). */
export function configChange(input: ConfigChangeInput): OcsfEvent {
  const i = parse(ConfigChangeInputSchema, input, 'config change');
  const activity = i.activity ?? 'update';
  return envelope(API, activity, API_ACTIVITIES[activity], i, {
    api: prune({ operation: i.operation, service: i.service === undefined ? undefined : { name: i.service } }),
    resources: [prune({ uid: i.resource.id, type: i.resource.type, name: i.resource.name })],
    src_endpoint: i.src ?? thisHost(),
  });
}

const DIRECTIONS = { unknown: [0, 'Unknown'], inbound: [1, 'Inbound'], outbound: [2, 'Outbound'], lateral: [3, 'Lateral'] } as const;
const PROTOCOLS = { tcp: 6, udp: 17, other: undefined } as const;

/** Network Activity (4001): ingress and egress connections/requests seen by Envoy. */
export function networkActivity(input: NetworkActivityInput): OcsfEvent {
  const i = parse(NetworkActivityInputSchema, input, 'network activity');
  const [direction_id, direction] = DIRECTIONS[i.direction];
  const decision = i.decision === undefined ? undefined : i.decision === 'allowed' ? { action_id: 1, action: 'Allowed' } : { action_id: 2, action: 'Denied' };
  return envelope(
    NET,
    i.activity,
    NETWORK_ACTIVITIES[i.activity],
    i,
    {
      src_endpoint: i.src,
      dst_endpoint: i.dst,
      connection_info: prune({
        direction_id,
        direction,
        protocol_name: i.protocol,
        protocol_num: i.protocol === undefined ? undefined : PROTOCOLS[i.protocol],
      }),
      tls: i.sni === undefined ? undefined : { sni: i.sni },
      traffic: i.bytesIn === undefined && i.bytesOut === undefined ? undefined : prune({ bytes_in: i.bytesIn, bytes_out: i.bytesOut }),
      duration: i.durationMs,
      ...(decision ?? {}),
    },
    decision === undefined ? undefined : ['security_control'],
  );
}

const FILE_TYPES = { unknown: [0, 'Unknown'], file: [1, 'Regular File'], folder: [2, 'Folder'], symlink: [7, 'Symbolic Link'], other: [99, 'Other'] } as const;

/** File System Activity (1001): the file tools. Never carries file contents. */
export function fileActivity(input: FileActivityInput): OcsfEvent {
  const i = parse(FileActivityInputSchema, input, 'file activity');
  const fileObj = (path: string) => {
    const [type_id, type] = FILE_TYPES[i.file.type ?? 'file'];
    const name = path.split('/').filter(Boolean).pop() ?? path;
    return { name, path, type_id, type };
  };
  return envelope(FILE, i.activity, FILE_ACTIVITIES[i.activity], i, {
    file: prune({
      ...fileObj(i.file.path),
      size: i.file.size,
      hashes: i.file.sha256 === undefined ? undefined : [{ algorithm_id: 3, algorithm: 'SHA-256', value: i.file.sha256 }],
    }),
    file_result: i.newPath === undefined ? undefined : fileObj(i.newPath),
    device: i.device === undefined ? { ...thisHost(), type_id: 1, type: 'Server' } : prune({ uid: i.device.id, name: i.device.name, type_id: 6, type: 'Virtual' }),
    ...(i.tool === undefined ? {} : { api: { operation: i.tool } }),
  });
}

const AUTH_PROTOCOLS = { unknown: [0, 'Unknown'], openid: [4, 'OpenID'], saml: [5, 'SAML'], oauth2: [6, 'OAUTH 2.0'], basic: [11, 'Basic Authentication'], mtls: [99, 'mTLS'], other: [99, 'Other'] } as const;

/** Authentication (3002): tokens and credentials minted, presented, refused. */
export function authentication(input: AuthenticationInput): OcsfEvent {
  const i = parse(AuthenticationInputSchema, input, 'authentication');
  const proto = i.protocol === undefined ? undefined : AUTH_PROTOCOLS[i.protocol];
  const unmapped = i.token === undefined ? i.unmapped : { ...(i.unmapped ?? {}), token: prune({ id: i.token.id, kind: i.token.kind, expires_at: i.token.expiresAt }) };
  return envelope(AUTH, i.activity, AUTH_ACTIVITIES[i.activity], { ...i, unmapped }, {
    user: prune({ uid: i.user.id, name: i.user.name }),
    service: { name: i.service },
    auth_protocol_id: proto?.[0],
    auth_protocol: proto?.[1],
    dst_endpoint: i.dst,
  });
}

/** Base Event (class 0) for event types with no better class; the raw type is kept. */
export function genericEvent(input: GenericEventInput): OcsfEvent {
  const i = parse(GenericEventInputSchema, input, 'generic event');
  return envelope(BASE, 'other', 99, { ...i, eventCode: i.eventCode ?? i.type, unmapped: { ...(i.unmapped ?? {}), portcullis_type: i.type, resource: i.resource, data: i.data } }, {});
}

/** Validate an already-built event (e.g. one received over the audit socket). */
export function validateOcsfEvent(e: unknown): OcsfEvent {
  return parse(OcsfEventSchema, e, 'OCSF event');
}

// ---------------------------------------------------------------------------------------------
// EventBus events → OCSF

const BUS_SEVERITY: Record<PortcullisEvent['severity'], Severity> = {
  info: 'informational',
  warning: 'medium',
  error: 'high',
  critical: 'critical',
};

const SECRET_KEYS = new Set(['secret', 'token', 'password', 'privatekey', 'private_key', 'authorization', 'credential', 'key_pem', 'keypem']);

/** JSON-clean copy of event data with secret-looking keys redacted (defence in depth). */
function sanitizeData(data: unknown, depth = 0): unknown {
  if (depth > 16) return '[too deep]';
  if (data === null || typeof data === 'string' || typeof data === 'boolean') return data;
  if (typeof data === 'number') return Number.isFinite(data) ? data : String(data);
  if (typeof data === 'bigint') return data.toString();
  if (data instanceof Date) return Number.isNaN(data.getTime()) ? null : data.toISOString();
  if (Array.isArray(data)) return data.map((x) => (x === undefined ? null : sanitizeData(x, depth + 1)));
  if (typeof data === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(data as Record<string, unknown>)) {
      if (v === undefined || typeof v === 'function' || typeof v === 'symbol') continue;
      // `__proto__` as an own key would replace the copy's prototype: keep it, under a harmless name
      const key = k === '__proto__' ? '[__proto__]' : k;
      out[key] = SECRET_KEYS.has(k.toLowerCase()) ? '[redacted]' : sanitizeData(v, depth + 1);
    }
    return out;
  }
  return null;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 ? v : typeof v === 'number' && Number.isFinite(v) ? String(v) : undefined;
}

function outcomeOf(e: PortcullisEvent): Outcome {
  const o = e.data.outcome;
  if (o === 'success' || o === 'failure') return o;
  if (/(^|[._])(refused|failed|nack|denied|error)$/.test(e.type)) return 'failure';
  return e.severity === 'error' || e.severity === 'critical' ? 'failure' : 'success';
}

/**
 * Convert an EventBus event (common/events.ts) to OCSF. Known types get their class; anything
 * else becomes a Base Event with the raw type in `metadata.event_code` and `unmapped.portcullis_type`.
 * Never throws for a well-formed PortcullisEvent.
 */
export function fromPortcullisEvent(e: PortcullisEvent): OcsfEvent {
  const parsedTime = Date.parse(e.time);
  const data = sanitizeData(e.data ?? {}) as Record<string, z.core.util.JSONType>;
  const traceId = str(e.data?.traceId) ?? str(e.data?.trace_id);
  const base = {
    time: Number.isFinite(parsedTime) && parsedTime >= 0 ? parsedTime : Date.now(),
    severity: BUS_SEVERITY[e.severity] ?? 'unknown',
    ...(e.sessionId ? { sessionId: e.sessionId.slice(0, 256) } : {}),
    ...(traceId ? { traceId: traceId.slice(0, 256) } : {}),
    actor: { id: e.source || 'unknown', type: 'system' as const },
    outcome: outcomeOf(e),
    eventCode: e.type.slice(0, 256),
    unmapped: { portcullis_type: e.type, source: e.source, data },
  };
  try {
    return convertKnown(e, base, data) ?? genericEvent({ ...base, type: e.type.slice(0, 256) || 'unknown', unmapped: { source: e.source }, data });
  } catch {
    // a known type whose data did not fit its class: keep it, generically
    return genericEvent({ ...base, type: e.type.slice(0, 256) || 'unknown', unmapped: { source: e.source }, data });
  }
}

type BusBase = Omit<ApiActivityInput, 'activity' | 'operation' | 'resource'>;

function convertKnown(e: PortcullisEvent, base: BusBase, data: Record<string, unknown>): OcsfEvent | null {
  const t = e.type;
  const detail = str(data.errorDetail) ?? str(data.reason) ?? str(data.code);
  const withDetail = detail === undefined ? base : { ...base, statusDetail: detail.slice(0, 4096) };
  switch (t) {
    case 'config.nack':
      return configChange({
        ...withDetail,
        operation: 'config.nack',
        activity: 'update',
        service: 'xds',
        resource: { type: 'envoy.xds', id: str(data.typeUrl) ?? 'unknown', ...(str(data.node) ? { name: str(data.node)! } : {}) },
      });
    case 'config.reload_refused':
    case 'config.policy_reloaded':
      return configChange({ ...withDetail, operation: t, activity: 'update', resource: { type: 'policy', id: str(data.file) ?? 'unknown' }, ...(str(data.code) ? { statusCode: str(data.code)! } : {}) });
    case 'config.credentials_changed':
      return configChange({ ...base, operation: t, activity: 'update', resource: { type: 'credentials', id: 'credentials' } });
    case 'ca.created':
    case 'ca.rotated':
    case 'ca.retired': {
      const gen = str(data.generation) ?? str(data.to) ?? 'unknown';
      const activity = t === 'ca.created' ? 'create' : t === 'ca.retired' ? 'delete' : 'update';
      return configChange({ ...base, operation: `config.${t.replace('.', '_')}`, activity, service: e.source, resource: { type: 'ca', id: gen } });
    }
    case 'leaf.minted':
    case 'mint.refused': {
      const name = str(data.name) ?? 'unknown';
      const expires = typeof data.notAfter === 'string' ? Date.parse(data.notAfter) : NaN;
      return authentication({
        ...withDetail,
        activity: 'authentication_ticket',
        user: { id: name },
        service: e.source || 'sds-minter',
        protocol: 'mtls',
        ...(t === 'leaf.minted'
          ? { token: { kind: 'x509-leaf', ...(str(data.serialNumber) ? { id: str(data.serialNumber)! } : {}), ...(Number.isFinite(expires) && expires >= 0 ? { expiresAt: expires } : {}) } }
          : {}),
      });
    }
    default:
      break;
  }
  if (t.startsWith('config.') && /^config\.[a-z0-9_.]+$/.test(t)) {
    return configChange({ ...withDetail, operation: t, activity: 'update', resource: { type: 'config', id: str(data.file) ?? str(data.name) ?? 'unknown' } });
  }
  if (t.startsWith('sandbox.')) {
    const verb = t.slice('sandbox.'.length);
    const activity = verb === 'created' ? 'create' : /^(destroyed|deleted|removed|killed|terminated|stopped)$/.test(verb) ? 'delete' : 'other';
    const id = str(data.sandboxId) ?? str(data.id) ?? str(data.name) ?? e.sessionId ?? 'unknown';
    return apiActivity({ ...withDetail, activity, operation: t, service: e.source, resource: { type: 'sandbox', id } });
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Envoy access logs → Network Activity

/**
 * The JSON access-log format this converter reads. Configure Envoy's file/stdout access logger
 * with `json_format: ENVOY_ACCESS_LOG_JSON_FORMAT` (and `direction` set to the literal "ingress"
 * or "egress" per listener).
 */
export const ENVOY_ACCESS_LOG_JSON_FORMAT = {
  start_time_ms: '%START_TIME(%s%3f)%',
  direction: 'egress',
  downstream_remote_address: '%DOWNSTREAM_REMOTE_ADDRESS%',
  downstream_local_address: '%DOWNSTREAM_LOCAL_ADDRESS%',
  upstream_host: '%UPSTREAM_HOST%',
  requested_server_name: '%REQUESTED_SERVER_NAME%',
  bytes_received: '%BYTES_RECEIVED%',
  bytes_sent: '%BYTES_SENT%',
  duration_ms: '%DURATION%',
  response_flags: '%RESPONSE_FLAGS%',
  response_code: '%RESPONSE_CODE%',
  upstream_cluster: '%UPSTREAM_CLUSTER%',
  request_id: '%REQ(X-REQUEST-ID)%',
  session_id: '%DYNAMIC_METADATA(portcullis:session_id)%',
  deny_reason: '%DYNAMIC_METADATA(portcullis:deny_reason)%',
} as const;

const Field = z.union([z.string().max(4096), z.number(), z.null()]).optional();
export const EnvoyAccessLogEntrySchema = z
  .object({
    start_time_ms: z.union([z.string().regex(/^\d+$/), z.number().int().nonnegative()]),
    direction: z.enum(['ingress', 'egress']),
    downstream_remote_address: Field,
    downstream_local_address: Field,
    upstream_host: Field,
    requested_server_name: Field,
    bytes_received: Field,
    bytes_sent: Field,
    duration_ms: Field,
    response_flags: Field,
    response_code: Field,
    upstream_cluster: Field,
    request_id: Field,
    session_id: Field,
    deny_reason: Field,
  })
  .strict();
export type EnvoyAccessLogEntry = z.input<typeof EnvoyAccessLogEntrySchema>;

function present(v: string | number | null | undefined): string | undefined {
  if (v === null || v === undefined) return undefined;
  const s = String(v);
  return s === '' || s === '-' ? undefined : s;
}

function num(v: string | number | null | undefined): number | undefined {
  const s = present(v);
  if (s === undefined) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** `1.2.3.4:443`, `[::1]:443`, `host:443` → endpoint */
export function parseAddress(v: string | number | null | undefined): EndpointInput {
  const s = present(v);
  if (s === undefined) return {};
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  const host = m ? m[1]! : s;
  const port = m ? Number(m[2]) : undefined;
  const isIp = z.union([z.ipv4(), z.ipv6()]).safeParse(host).success;
  return { ...(isIp ? { ip: host } : { hostname: host }), ...(port !== undefined && port <= 65535 ? { port } : {}) };
}

const DENY_FLAGS = new Set(['UAEX', 'RLSE', 'RL', 'NR', 'NFCF', 'UPE', 'DPE', 'IH', 'OM']);
const FAIL_FLAGS = new Set(['UF', 'UH', 'UO', 'UT', 'URX', 'NC', 'UC', 'UMSDR', 'LH', 'LR', 'UR', 'DT', 'SI']);

/** One Envoy access-log entry (see ENVOY_ACCESS_LOG_JSON_FORMAT) → Network Activity (4001). */
export function fromEnvoyAccessLog(entry: EnvoyAccessLogEntry, actor: ActorInput = { id: 'envoy', type: 'service' }): OcsfEvent {
  const a = parse(EnvoyAccessLogEntrySchema, entry, 'Envoy access log');
  const flags = (present(a.response_flags) ?? '').split(',').filter(Boolean);
  const denyReason = present(a.deny_reason);
  const denied = denyReason !== undefined || flags.some((f) => DENY_FLAGS.has(f));
  const failed = !denied && flags.some((f) => FAIL_FLAGS.has(f));
  const upstream = parseAddress(a.upstream_host);
  const sni = present(a.requested_server_name);
  const dst: EndpointInput = { ...(a.direction === 'egress' ? upstream : parseAddress(a.downstream_local_address)), ...(sni !== undefined && !upstream.hostname ? { hostname: sni.slice(0, 1024) } : {}) };
  const unmapped: Record<string, z.core.util.JSONType> = {};
  for (const k of ['response_flags', 'response_code', 'upstream_cluster', 'deny_reason'] as const) {
    const v = present(a[k]);
    if (v !== undefined) unmapped[k] = v;
  }
  const sessionId = present(a.session_id);
  const traceId = present(a.request_id);
  return networkActivity({
    time: Number(a.start_time_ms),
    actor,
    outcome: denied || failed ? 'failure' : 'success',
    activity: denied ? 'refuse' : failed ? 'fail' : 'traffic',
    direction: a.direction === 'egress' ? 'outbound' : 'inbound',
    src: parseAddress(a.downstream_remote_address),
    dst,
    protocol: 'tcp',
    decision: denied ? 'denied' : 'allowed',
    ...(sni !== undefined ? { sni: sni.slice(0, 1024) } : {}),
    ...(num(a.bytes_received) !== undefined ? { bytesIn: num(a.bytes_received)! } : {}),
    ...(num(a.bytes_sent) !== undefined ? { bytesOut: num(a.bytes_sent)! } : {}),
    ...(num(a.duration_ms) !== undefined ? { durationMs: num(a.duration_ms)! } : {}),
    ...(denyReason !== undefined ? { statusDetail: denyReason.slice(0, 4096) } : {}),
    ...(sessionId !== undefined ? { sessionId: sessionId.slice(0, 256) } : {}),
    ...(traceId !== undefined ? { traceId: traceId.slice(0, 256) } : {}),
    unmapped,
  });
}
