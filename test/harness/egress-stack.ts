import type { Ir } from '../../policy/ir.js';
import type { NetworkEvent } from '../../xds-server/als.js';
import { ControlPlane, type ControlPlaneOptions } from '../../xds-server/control-plane.js';
import type { Snapshot } from '../../xds-server/snapshot.js';
import { EnvoyProcess } from '../../envoy/process.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { silentLogger } from '../../common/logger.js';

/**
 * The egress path as the e2e tests drive it: a control plane (xDS, SDS and access logs on
 * one gRPC server) publishing `ir`, and a real Envoy that has applied it (listeners acknowledged).
 * Network events (Envoy's access logs) go to `onNetworkEvent` when given.
 */
export interface EgressStack {
  cp: ControlPlane;
  envoy: EnvoyProcess;
  snapshot: Snapshot;
}

export async function startEgressStack(o: {
  nodeKey: string;
  ir: Ir;
  translate: ControlPlaneOptions['translate'];
  bump?: ControlPlaneOptions['bump'];
  onNetworkEvent?: (e: NetworkEvent) => void;
}): Promise<EgressStack> {
  const logger = silentLogger();
  const cp = new ControlPlane({ logger, nodeKey: o.nodeKey, translate: o.translate, ...(o.bump ? { bump: o.bump } : {}) });
  if (o.onNetworkEvent) {
    const sink = o.onNetworkEvent;
    cp.events.on((e) => {
      if (e.type === 'network.egress' || e.type === 'network.denied') sink(e.data as unknown as NetworkEvent);
    });
  }
  await cp.listen();
  const snapshot = cp.apply(o.ir, { immediate: true });
  let envoy: EnvoyProcess;
  try {
    envoy = await EnvoyProcess.start({ bootstrap: { nodeId: o.nodeKey, xds: { port: cp.server.port } }, logger });
    await envoy.waitConnected();
    await envoy.waitForVersion(XDS.listener, snapshot.version, 20_000);
  } catch (e) {
    await cp.close();
    throw e;
  }
  return { cp, envoy, snapshot };
}
