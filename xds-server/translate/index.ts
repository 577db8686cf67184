import type { Ir } from '../../policy/ir.js';
import { XDS } from '../../envoy/api/type-urls.js';
import type { SnapshotInput } from '../snapshot.js';
import { egressResources, type EgressOptions } from './egress.js';
import { ingressResources, type IngressOptions } from './ingress.js';
import { storageResources } from './storage.js';
import { bumpResources } from './bump.js';
import type { SessionDenialEntry } from '../sessions.js';
import type { SessionVerifier } from './session-check.js';

/**
 * IR → Envoy resources. Pure: the same IR and options always give the same resources, sorted by
 * name. Every piece of enforcement lives here, so `render` shows exactly what Envoy enforces.
 */

export interface TranslateOptions {
  egress: EgressOptions;
  /** the storage lane (host-side storage client); omitted = no storage listener */
  storage?: EgressOptions;
  /** the MCP ingress listener; omitted = no ingress listener */
  ingress?: IngressOptions;
  /**
   * Secret resources the snapshot carries (proto3 JSON): leaves for bump hosts (`leaf:<host>`) and
   * file-sourced credentials (`cred:<name>`), made at the edge by the control plane; secrets are
   * never produced by the translator itself.
   */
  secrets?: readonly Record<string, unknown>[];
  /**
   * Revoked sessions: refused at their next tunnel (RBAC policies of the egress route table) and at
   * their next request inside a bumped tunnel already open (deny routes on the bump listener).
   * Runtime state supplied by the control plane, like `secrets`.
   */
  sessionDenials?: readonly SessionDenialEntry[];
  /** The session signer's keys, for Envoy's check of every tunnel's token (runtime state). */
  sessionVerifier?: SessionVerifier;
}

export interface Translation {
  input: SnapshotInput;
  /** clusters the resources reference that live in Envoy's bootstrap */
  staticClusters: string[];
}

export function translate(ir: Ir, o: TranslateOptions): Translation {
  const egress = egressResources(ir, o.egress, { verifier: o.sessionVerifier, denials: o.sessionDenials });
  const bump = o.egress.bump ? bumpResources(ir, o.egress, o.egress.bump, o.sessionDenials) : { listeners: [], routes: [], clusters: [] };
  const storage = o.storage ? storageResources(ir, o.storage) : { listeners: [], routes: [], clusters: [] };
  const ingress = o.ingress ? ingressResources(ir, o.ingress) : { listeners: [], routes: [], clusters: [], staticClusters: [] };
  const staticClusters = [o.egress.accessLogCluster, o.storage?.accessLogCluster, o.egress.bump?.controlPlaneCluster, ...ingress.staticClusters].filter(
    (c): c is string => !!c,
  );
  const byName = <T extends { name: string }>(xs: T[]) => xs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return {
    input: {
      [XDS.listener]: byName([...egress.listeners, ...bump.listeners, ...storage.listeners, ...ingress.listeners]),
      [XDS.route]: byName([...egress.routes, ...bump.routes, ...storage.routes, ...ingress.routes]),
      [XDS.cluster]: byName([...egress.clusters, ...bump.clusters, ...storage.clusters, ...ingress.clusters]),
      [XDS.endpoint]: [],
      [XDS.secret]: byName([...(o.secrets ?? [])].map((x) => ({ ...x }) as Record<string, unknown> & { name: string })),
      [XDS.extensionConfig]: byName([...egress.extensions]),
    },
    staticClusters: [...new Set(staticClusters)],
  };
}
