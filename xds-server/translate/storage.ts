import type { Ir } from '../../policy/ir.js';
import { forwardProxyLane, type EgressOptions } from './egress.js';

/**
 * The storage lane: a separate listener for the host-side storage client. CONNECT to the policy's
 * storage backends only; no TLS termination (the client sees the backend's own certificate), no
 * injection; the same resolved-IP deny-set; every connection access-logged. It is never bound on a
 * sandbox network.
 */
export const STORAGE = {
  listener: 'storage',
  routes: 'storage-routes',
  dfpCluster: 'storage_dfp',
  dnsCache: 'storage_dns',
} as const;

export function storageResources(ir: Ir, o: EgressOptions) {
  return forwardProxyLane(
    { listener: STORAGE.listener, routes: STORAGE.routes, cluster: STORAGE.dfpCluster, dnsCache: STORAGE.dnsCache, statPrefix: 'storage', connectOnly: true },
    ir,
    ir.storage.backends.map((b) => ({ host: b.host, kind: b.kind, ports: b.ports, rung: 'transparent' as const })),
    o,
  );
}
