import type { Ir } from '../../policy/ir.js';
import { XDS } from '../../envoy/api/type-urls.js';
import type { SnapshotInput } from '../snapshot.js';
import { egressResources, type EgressOptions } from './egress.js';
import { storageResources } from './storage.js';

/**
 * IR → Envoy resources. Pure: the same IR and options always give the same resources, sorted by
 * name. Every piece of enforcement lives here, so `render` shows exactly what Envoy enforces.
 */

export interface TranslateOptions {
  egress: EgressOptions;
  /** the storage lane (host-side storage client); omitted = no storage listener */
  storage?: EgressOptions;
}

export interface Translation {
  input: SnapshotInput;
  /** clusters the resources reference that live in Envoy's bootstrap */
  staticClusters: string[];
}

export function translate(ir: Ir, o: TranslateOptions): Translation {
  const egress = egressResources(ir, o.egress);
  const storage = o.storage ? storageResources(ir, o.storage) : { listeners: [], routes: [], clusters: [] };
  const staticClusters = [o.egress.accessLogCluster, o.storage?.accessLogCluster].filter((c): c is string => !!c);
  const byName = <T extends { name: string }>(xs: T[]) => xs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return {
    input: {
      [XDS.listener]: byName([...egress.listeners, ...storage.listeners]),
      [XDS.route]: byName([...egress.routes, ...storage.routes]),
      [XDS.cluster]: byName([...egress.clusters, ...storage.clusters]),
      [XDS.endpoint]: [],
      [XDS.secret]: [],
    },
    staticClusters: [...new Set(staticClusters)],
  };
}
