import { EnvoyHarnessError } from '../common/errors.js';
import { CONFIG_DUMP, XDS } from './api/type-urls.js';

/**
 * Client for Envoy's admin endpoint. The admin is bound to 127.0.0.1 (bootstrap.ts) and this client
 * refuses any other host.
 */

export interface ReadyState {
  /** `/ready` answered 200. */
  ready: boolean;
  /** The body of `/ready`: `LIVE`, `PRE_INITIALIZING`, `INITIALIZING` or `DRAINING`. */
  state: string;
}

export interface ServerInfo {
  version: string;
  state: string;
  uptime_current_epoch: string;
  hot_restart_version: string;
  command_line_options: Record<string, unknown>;
  node: { id: string; cluster: string; [k: string]: unknown };
  [k: string]: unknown;
}

export interface AdminResponse {
  status: number;
  body: string;
}

export interface ConfigDumpOptions {
  /** `include_eds`: add the EndpointsConfigDump. */
  includeEds?: boolean;
  /** `name_regex`, applied together with `resource`. */
  nameRegex?: string;
  /** `mask`: a field mask over each returned config. */
  mask?: string;
}

export interface ConfigDump {
  configs: Record<string, unknown>[];
}

export class EnvoyAdmin {
  readonly baseUrl: string;

  constructor(
    baseUrl: string,
    private readonly timeoutMs = 5_000,
  ) {
    const u = new URL(baseUrl);
    if (u.protocol !== 'http:' || u.hostname !== '127.0.0.1' || u.port === '' || u.pathname !== '/') {
      throw new EnvoyHarnessError('usage', `the Envoy admin client only talks to http://127.0.0.1:<port>/, got ${baseUrl}`);
    }
    this.baseUrl = `http://127.0.0.1:${u.port}`;
  }

  /** Raw request. `path` starts with `/`. Never throws on an HTTP status; throws on a transport error. */
  async request(method: 'GET' | 'POST', path: string): Promise<AdminResponse> {
    if (!path.startsWith('/')) throw new EnvoyHarnessError('usage', `admin path must start with "/": ${path}`);
    const res = await fetch(`${this.baseUrl}${path}`, { method, signal: AbortSignal.timeout(this.timeoutMs) });
    return { status: res.status, body: await res.text() };
  }

  async get(path: string): Promise<string> {
    const r = await this.request('GET', path);
    if (r.status !== 200) {
      throw new EnvoyHarnessError('internal', `Envoy admin GET ${path} answered ${r.status}: ${r.body.slice(0, 500)}`);
    }
    return r.body;
  }

  async post(path: string): Promise<string> {
    const r = await this.request('POST', path);
    if (r.status !== 200) {
      throw new EnvoyHarnessError('internal', `Envoy admin POST ${path} answered ${r.status}: ${r.body.slice(0, 500)}`);
    }
    return r.body;
  }

  async getJson<T = unknown>(path: string): Promise<T> {
    return JSON.parse(await this.get(path)) as T;
  }

  async ready(): Promise<ReadyState> {
    const r = await this.request('GET', '/ready');
    return { ready: r.status === 200, state: r.body.trim() };
  }

  serverInfo(): Promise<ServerInfo> {
    return this.getJson<ServerInfo>('/server_info');
  }

  /**
   * `/config_dump`, optionally narrowed to one `resource` (e.g. `dynamic_listeners`,
   * `dynamic_active_clusters`). Narrowed dumps list the entries alone, without the type-level
   * `version_info`.
   */
  configDump(resource?: string, opts: ConfigDumpOptions = {}): Promise<ConfigDump> {
    const q = new URLSearchParams();
    if (resource !== undefined) q.set('resource', resource);
    if (opts.nameRegex !== undefined) q.set('name_regex', opts.nameRegex);
    if (opts.mask !== undefined) q.set('mask', opts.mask);
    let qs = q.toString();
    if (opts.includeEds) qs = qs === '' ? 'include_eds' : `${qs}&include_eds`;
    return this.getJson<ConfigDump>(qs === '' ? '/config_dump' : `/config_dump?${qs}`);
  }

  /** Every counter and gauge, flattened name → value. Histograms and text readouts are left out. */
  async stats(filter?: string): Promise<Record<string, number>> {
    return flattenStats(await this.getJson(statsPath(filter)));
  }

  /** Text readouts (e.g. `listener_manager.lds.version_text`), name → value. */
  async textReadouts(filter?: string): Promise<Record<string, string>> {
    return flattenTextReadouts(await this.getJson(statsPath(filter)));
  }

  /** One counter or gauge by exact name; undefined when Envoy has no such stat (yet). */
  async stat(name: string): Promise<number | undefined> {
    return (await this.stats(`^${escapeRegex(name)}$`))[name];
  }

  certs(): Promise<{ certificates: Record<string, unknown>[] }> {
    return this.getJson('/certs');
  }

  clusters(): Promise<{ cluster_statuses?: Record<string, unknown>[] }> {
    return this.getJson('/clusters?format=json');
  }

  listeners(): Promise<{ listener_statuses?: ListenerStatus[] }> {
    return this.getJson('/listeners?format=json');
  }
}

export interface ListenerStatus {
  name: string;
  local_address?: { socket_address?: { address: string; port_value: number } };
  additional_local_addresses?: unknown[];
}

function statsPath(filter: string | undefined): string {
  return filter === undefined ? '/stats?format=json' : `/stats?format=json&filter=${encodeURIComponent(filter)}`;
}

/** RE2-safe escape of a literal. */
export function escapeRegex(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');
}

type StatsJson = { stats?: ({ name?: string; value?: unknown; histograms?: unknown } | undefined)[] };

export function flattenStats(json: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of (json as StatsJson).stats ?? []) {
    if (s && typeof s.name === 'string' && typeof s.value === 'number') out[s.name] = s.value;
  }
  return out;
}

export function flattenTextReadouts(json: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of (json as StatsJson).stats ?? []) {
    if (s && typeof s.name === 'string' && typeof s.value === 'string') out[s.name] = s.value;
  }
  return out;
}

/**
 * Every `*.update_rejected` stat above 0: `listener_manager.lds`, `cluster_manager.cds`,
 * `http.<prefix>.rds.<route>`, `sds.<secret>`, `cluster.<name>` (EDS), …. Every e2e test expects `{}`.
 */
export function rejectedUpdates(stats: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(stats)) if (k.endsWith('.update_rejected') && v > 0) out[k] = v;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Versions of xDS resources as Envoy reports them.

export interface ResourceVersion {
  name: string;
  version: string | undefined;
  /** `warming`: received and accepted, but waiting on its dependencies (EDS, RDS, SDS, …). */
  state: 'active' | 'warming';
}

export interface ResourceError {
  name: string;
  version: string | undefined;
  details: string;
}

export interface TypeVersions {
  typeUrl: string;
  /** The version of the last accepted update of the whole type (LDS and CDS only). */
  typeVersion: string | undefined;
  resources: ResourceVersion[];
  errors: ResourceError[];
}

/**
 * The versions one xDS type shows in a config dump. Endpoints: Envoy leaves
 * `dynamic_endpoint_configs[].version_info` empty (not implemented in 1.40), so their versions come
 * from the EDS text readouts `cluster.<cluster>.version_text` (pass `textReadouts`).
 */
export function versionsOf(typeUrl: string, dump: ConfigDump, textReadouts: Record<string, string> = {}): TypeVersions {
  const section = (t: string): Record<string, unknown> =>
    (dump.configs.find((c) => c['@type'] === t) as Record<string, unknown> | undefined) ?? {};
  const out: TypeVersions = { typeUrl, typeVersion: undefined, resources: [], errors: [] };
  const addError = (name: string, e: unknown): void => {
    if (!e || typeof e !== 'object') return;
    const err = e as { details?: string; version_info?: string };
    out.errors.push({ name, version: err.version_info, details: err.details ?? JSON.stringify(e) });
  };
  /** Dump entries that are always active: each carries its version, its error state and, under `key`, the resource. */
  const eachActive = (entries: unknown, key: string): void => {
    for (const x of arr(entries)) {
      const name = str(obj(x[key])?.name) ?? '';
      out.resources.push({ name, version: str(x.version_info), state: 'active' });
      addError(name, x.error_state);
    }
  };
  switch (typeUrl) {
    case XDS.listener: {
      const s = section(CONFIG_DUMP.listeners);
      out.typeVersion = str(s.version_info);
      for (const l of arr(s.dynamic_listeners)) {
        const name = str(l.name) ?? '';
        const active = obj(l.active_state);
        const warming = obj(l.warming_state);
        if (active) out.resources.push({ name, version: str(active.version_info), state: 'active' });
        if (warming) out.resources.push({ name, version: str(warming.version_info), state: 'warming' });
        addError(name, l.error_state);
      }
      break;
    }
    case XDS.cluster: {
      const s = section(CONFIG_DUMP.clusters);
      out.typeVersion = str(s.version_info);
      for (const [key, state] of [
        ['dynamic_active_clusters', 'active'],
        ['dynamic_warming_clusters', 'warming'],
      ] as const) {
        for (const c of arr(s[key])) {
          const name = str(obj(c.cluster)?.name) ?? '';
          out.resources.push({ name, version: str(c.version_info), state });
          addError(name, c.error_state);
        }
      }
      break;
    }
    case XDS.route:
      eachActive(section(CONFIG_DUMP.routes).dynamic_route_configs, 'route_config');
      break;
    case XDS.secret: {
      const s = section(CONFIG_DUMP.secrets);
      for (const [key, state] of [
        ['dynamic_active_secrets', 'active'],
        ['dynamic_warming_secrets', 'warming'],
      ] as const) {
        for (const x of arr(s[key])) {
          const name = str(x.name) ?? '';
          out.resources.push({ name, version: str(x.version_info), state });
          addError(name, x.error_state);
        }
      }
      break;
    }
    case XDS.endpoint: {
      for (const e of arr(section(CONFIG_DUMP.endpoints).dynamic_endpoint_configs)) {
        const name = str(obj(e.endpoint_config)?.cluster_name) ?? '';
        const version = str(e.version_info) ?? textReadouts[`cluster.${statName(name)}.version_text`];
        out.resources.push({ name, version, state: 'active' });
        addError(name, e.error_state);
      }
      break;
    }
    case XDS.extensionConfig:
      eachActive(section(CONFIG_DUMP.ecds).ecds_filters, 'ecds_filter');
      break;
    default:
      throw new EnvoyHarnessError('usage', `not an xDS resource type Portcullis serves: ${typeUrl}`);
  }
  return out;
}

export interface VersionMatch {
  /** Only these resources count; each must exist and (unless allowWarming) be active. */
  names?: readonly string[];
  /** Accept resources that are still warming. Default false: wait until nothing of the type warms. */
  allowWarming?: boolean;
}

/**
 * Whether Envoy has applied `version` of one type.
 *
 * LDS and CDS: the type-level `version_info` (the last accepted update) equals `version`. Their
 * per-resource versions are not used: a SotW update leaves unchanged resources at their older version,
 * and Envoy 1.40 keeps reporting a listener's first version after an in-place update of its filter
 * chains (a warming listener's entry carries a stale version too). RDS, EDS, SDS (no type-level
 * version): some resource of the type carries `version`; with `names`, each named resource does.
 *
 * Warming: unless `allowWarming`, nothing of the type may be warming, or with `names` none of the
 * named resources. With `names`, each named resource must exist.
 */
export function isVersionApplied(tv: TypeVersions, version: string, match: VersionMatch = {}): boolean {
  const warm = match.allowWarming === true;
  const typeLevel = tv.typeUrl === XDS.listener || tv.typeUrl === XDS.cluster;
  if (typeLevel && tv.typeVersion !== version) return false;
  if (match.names !== undefined) {
    return match.names.every((n) => {
      const entries = tv.resources.filter((r) => r.name === n);
      if (entries.length === 0) return false;
      if (!warm && entries.some((r) => r.state === 'warming')) return false;
      return typeLevel || entries.some((r) => r.version === version);
    });
  }
  if (!warm && tv.resources.some((r) => r.state === 'warming')) return false;
  return typeLevel || tv.resources.some((r) => r.version === version);
}

/** One line for error messages: `LDS version "v2"; l1@v2 (warming), l2@v1; errors: …`. */
export function describeVersions(tv: TypeVersions): string {
  const res = tv.resources.map((r) => `${r.name}@${r.version ?? '?'}${r.state === 'warming' ? ' (warming)' : ''}`);
  const parts = [
    tv.typeVersion !== undefined ? `type version "${tv.typeVersion}"` : undefined,
    res.length > 0 ? `resources: ${res.join(', ')}` : 'no dynamic resources',
    tv.errors.length > 0 ? `errors: ${tv.errors.map((e) => `${e.name}@${e.version ?? '?'}: ${e.details}`).join('; ')}` : undefined,
  ];
  return parts.filter(Boolean).join('; ');
}

/** Envoy stat names carry `_` where a resource name has `:`. */
export function statName(resourceName: string): string {
  return resourceName.replace(/:/g, '_');
}

function arr(v: unknown): Record<string, unknown>[] {
  return Array.isArray(v) ? (v.filter((x) => x && typeof x === 'object') as Record<string, unknown>[]) : [];
}
function obj(v: unknown): Record<string, unknown> | undefined {
  return v && typeof v === 'object' ? (v as Record<string, unknown>) : undefined;
}
function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}
