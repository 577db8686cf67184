import { createHash } from 'node:crypto';
import { PortcullisError, ResourceInvalidError, type ResourceIssue } from '../common/errors.js';
import { encodeResource, resourceName } from '../envoy/api/resource.js';
import { SHORT_NAME, XDS, XDS_TYPE_URLS, type XdsTypeUrl } from '../envoy/api/type-urls.js';

/**
 * A versioned, self-consistent set of Envoy resources for one node (or node group).
 *
 * Building a snapshot is where pre-push validation happens: every resource is encoded with the real
 * protos and checked against their `(validate.rules)`; every reference between resources is checked
 * (a listener's RDS name, a route's cluster, an EDS cluster's assignment, an SDS secret name). A
 * snapshot that fails is never built, so it can never be published.
 */

export interface Resource {
  typeUrl: XdsTypeUrl;
  name: string;
  /** proto3-JSON form (what the translator produced; used by render and the tests) */
  body: unknown;
  /** wire encoding */
  encoded: Buffer;
  /** content hash (hex, 16 chars): the per-resource version in Delta xDS */
  hash: string;
}

export interface Snapshot {
  version: string;
  resources: ReadonlyMap<XdsTypeUrl, ReadonlyMap<string, Resource>>;
}

export type SnapshotInput = Partial<Record<XdsTypeUrl, readonly unknown[]>>;

export class SnapshotInconsistentError extends PortcullisError {
  constructor(readonly problems: readonly ResourceIssue[]) {
    super(
      'snapshot_inconsistent',
      problems
        .slice(0, 5)
        .map((p) => `${SHORT_NAME[p.typeUrl as XdsTypeUrl] ?? p.typeUrl} "${p.resource}" at ${p.path}: ${p.message}`)
        .join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : ''),
      { details: { problems } },
    );
  }
}

export interface BuildOptions {
  /** Explicit version; defaults to a content hash, so identical content always has the same version. */
  version?: string;
  /** Clusters that exist outside the snapshot (bootstrap static clusters such as `portcullis_xds`). */
  staticClusters?: readonly string[];
  /** Secret names served by another SDS source (not over ADS), e.g. a customer SDS server. */
  externalSecrets?: readonly string[];
}

export function emptySnapshot(version = 'empty'): Snapshot {
  return { version, resources: new Map(XDS_TYPE_URLS.map((t) => [t, new Map()])) };
}

/** Validate, encode and cross-check resources into a snapshot. Throws; never returns a partial one. */
export function buildSnapshot(input: SnapshotInput, opts: BuildOptions = {}): Snapshot {
  const issues: ResourceIssue[] = [];
  const resources = new Map<XdsTypeUrl, Map<string, Resource>>();
  const all = createHash('sha256');
  for (const typeUrl of XDS_TYPE_URLS) {
    const byName = new Map<string, Resource>();
    resources.set(typeUrl, byName);
    const list = input[typeUrl] ?? [];
    for (let i = 0; i < list.length; i++) {
      const body = list[i];
      const name = resourceName(typeUrl, body);
      if (!name) {
        issues.push({ typeUrl, resource: `#${i}`, path: 'name', rule: 'string.min_len = 1', message: 'resource has no name' });
        continue;
      }
      if (byName.has(name)) {
        issues.push({ typeUrl, resource: name, path: 'name', rule: 'unique', message: `duplicate ${SHORT_NAME[typeUrl]} resource name` });
        continue;
      }
      let encoded: Buffer;
      try {
        encoded = encodeResource(typeUrl, name, body);
      } catch (e) {
        if (e instanceof ResourceInvalidError) {
          issues.push(...e.issues);
          continue;
        }
        throw e;
      }
      const hash = createHash('sha256').update(encoded).digest('hex').slice(0, 16);
      byName.set(name, { typeUrl, name, body, encoded, hash });
    }
    // Sorted by name so the content hash (and every response) is deterministic.
    const sorted = new Map([...byName.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    resources.set(typeUrl, sorted);
    for (const r of sorted.values()) all.update(typeUrl).update('\0').update(r.name).update('\0').update(r.hash);
  }
  if (issues.length) throw new ResourceInvalidError(issues);
  const snapshot: Snapshot = { version: opts.version ?? `v-${all.digest('hex').slice(0, 12)}`, resources };
  const problems = checkReferences(snapshot, opts);
  if (problems.length) throw new SnapshotInconsistentError(problems);
  return snapshot;
}

/** Every reference a resource makes must resolve inside the snapshot (or to a declared static one). */
export function checkReferences(snapshot: Snapshot, opts: BuildOptions = {}): ResourceIssue[] {
  const problems: ResourceIssue[] = [];
  const names = (t: XdsTypeUrl) => snapshot.resources.get(t) ?? new Map<string, Resource>();
  const clusters = new Set([...names(XDS.cluster).keys(), ...(opts.staticClusters ?? [])]);
  const routes = names(XDS.route);
  const endpoints = names(XDS.endpoint);
  const secrets = new Set([...names(XDS.secret).keys(), ...(opts.externalSecrets ?? [])]);
  const extensions = names(XDS.extensionConfig);

  for (const typeUrl of XDS_TYPE_URLS) {
    for (const r of names(typeUrl).values()) {
      for (const ref of collectReferences(r.body)) {
        const missing =
          (ref.kind === 'route' && !routes.has(ref.name)) ||
          (ref.kind === 'cluster' && !clusters.has(ref.name)) ||
          (ref.kind === 'secret' && !secrets.has(ref.name)) ||
          (ref.kind === 'endpoint' && !endpoints.has(ref.name)) ||
          (ref.kind === 'extension' && !extensions.has(ref.name));
        if (missing) {
          problems.push({
            typeUrl,
            resource: r.name,
            path: ref.path,
            rule: `reference.${ref.kind}`,
            message: `references ${ref.kind} "${ref.name}", which is not in the snapshot`,
          });
        }
      }
    }
  }
  return problems;
}

export interface Reference {
  kind: 'route' | 'cluster' | 'secret' | 'endpoint' | 'extension';
  name: string;
  path: string;
}

/**
 * Walk a resource body and collect the names it refers to. The walk knows the handful of places
 * Envoy resolves names across resources:
 *  - HCM `rds: { route_config_name }` (RDS over ADS)
 *  - route `cluster` / `weighted_clusters.clusters[].name`, tcp_proxy `cluster`, gRPC `envoy_grpc.cluster_name`
 *  - any `{ name, sds_config: { ads: {} } }` pair (TLS certificates, validation contexts, injected credentials)
 *  - a Cluster of `type: EDS` needs the ClusterLoadAssignment named by `eds_cluster_config.service_name` or its own name
 *  - an HTTP filter `{ name, config_discovery: { config_source: { ads: {} } } }` needs the ECDS resource of that name
 */
export function collectReferences(body: unknown): Reference[] {
  const out: Reference[] = [];
  const walk = (v: unknown, path: string, parentKey: string): void => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${path}[${i}]`, parentKey));
      return;
    }
    if (!v || typeof v !== 'object') return;
    const o = v as Record<string, unknown>;
    const at = (k: string) => (path ? `${path}.${k}` : k);
    if (parentKey === 'rds' && typeof o.route_config_name === 'string' && isAds(o.config_source)) {
      out.push({ kind: 'route', name: o.route_config_name, path: at('route_config_name') });
    }
    if ((parentKey === 'route' || parentKey === 'typed_config') && typeof o.cluster === 'string') {
      out.push({ kind: 'cluster', name: o.cluster, path: at('cluster') });
    }
    if (parentKey === 'envoy_grpc' && typeof o.cluster_name === 'string') {
      out.push({ kind: 'cluster', name: o.cluster_name, path: at('cluster_name') });
    }
    if (parentKey === 'weighted_clusters' && Array.isArray(o.clusters)) {
      o.clusters.forEach((c, i) => {
        const n = (c as Record<string, unknown>)?.name;
        if (typeof n === 'string') out.push({ kind: 'cluster', name: n, path: at(`clusters[${i}].name`) });
      });
    }
    if (typeof o.name === 'string' && o.config_discovery && typeof o.config_discovery === 'object' && isAds((o.config_discovery as Record<string, unknown>).config_source)) {
      out.push({ kind: 'extension', name: o.name, path: at('name') });
    }
    if (typeof o.name === 'string' && isAds(o.sds_config)) {
      out.push({ kind: 'secret', name: o.name, path: at('name') });
    }
    if (path === '' && o.type === 'EDS' && typeof o.name === 'string') {
      const eds = o.eds_cluster_config as Record<string, unknown> | undefined;
      const service = typeof eds?.service_name === 'string' && eds.service_name ? eds.service_name : o.name;
      if (isAds(eds?.eds_config)) out.push({ kind: 'endpoint', name: service, path: 'eds_cluster_config' });
    }
    for (const [k, child] of Object.entries(o)) walk(child, at(k), k);
  };
  walk(body, '', '');
  return out;
}

/** True when a ConfigSource points at the ADS stream (the only source this snapshot serves). */
function isAds(cs: unknown): boolean {
  return !!cs && typeof cs === 'object' && 'ads' in (cs as object);
}

/** Resources of one type, restricted to `names` (all when `names` is undefined). */
export function pick(snapshot: Snapshot, typeUrl: XdsTypeUrl, names?: ReadonlySet<string>): Resource[] {
  const byName = snapshot.resources.get(typeUrl);
  if (!byName) return [];
  if (!names) return [...byName.values()];
  const out: Resource[] = [];
  for (const n of names) {
    const r = byName.get(n);
    if (r) out.push(r);
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Total count of resources in a snapshot. */
export function snapshotSize(s: Snapshot): number {
  let n = 0;
  for (const m of s.resources.values()) n += m.size;
  return n;
}
