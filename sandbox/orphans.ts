import type Docker from 'dockerode';
import type { Logger } from '../common/logger.js';
import { LABEL_INSTANCE, LABEL_SANDBOX, LABEL_SANDBOX_ID } from './container.js';
import type { Firewall } from './network.js';

/**
 * Finds what a previous run of this supervisor instance left behind (a crash, a kill -9) and removes it:
 * containers and networks carrying the instance's labels, firewall rules carrying its tag (NFR-REL-09).
 * `keep` lists sandbox ids that are live in this process (the reconcile loop passes them; at start it
 * is empty).
 */

export interface SweepReport {
  containers: string[];
  networks: string[];
  rules: number;
  errors: string[];
}

export async function listInstanceResources(
  docker: Docker,
  instanceId: string,
): Promise<{ containers: { id: string; sandboxId: string; state: string }[]; networks: { id: string; name: string; sandboxId: string }[] }> {
  const filters = JSON.stringify({ label: [`${LABEL_SANDBOX}=1`, `${LABEL_INSTANCE}=${instanceId}`] });
  const [cs, ns] = await Promise.all([docker.listContainers({ all: true, filters }), docker.listNetworks({ filters })]);
  return {
    containers: cs.map((c) => ({ id: c.Id, sandboxId: c.Labels?.[LABEL_SANDBOX_ID] ?? '', state: c.State })),
    networks: ns.map((n) => ({ id: n.Id, name: n.Name, sandboxId: n.Labels?.[LABEL_SANDBOX_ID] ?? '' })),
  };
}

/** Kill (works on a paused or wedged container), then remove; tolerant of "already gone". */
export async function forceRemoveContainer(docker: Docker, id: string): Promise<void> {
  const c = docker.getContainer(id);
  try {
    await c.kill({ signal: 'SIGKILL' });
  } catch {
    // not running, paused-and-refused, or gone: remove decides
  }
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await c.remove({ force: true, v: true });
      return;
    } catch (e) {
      if (isNotFound(e)) return;
      last = e;
      try {
        await c.unpause();
      } catch {
        // not paused
      }
      try {
        await c.kill({ signal: 'SIGKILL' });
      } catch {
        // see above
      }
    }
  }
  throw last instanceof Error ? last : new Error(String(last));
}

export async function removeNetwork(docker: Docker, id: string): Promise<void> {
  try {
    await docker.getNetwork(id).remove();
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
}

export function isNotFound(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { statusCode?: number }).statusCode === 404;
}

export async function sweepOrphans(
  docker: Docker,
  firewall: Firewall,
  instanceId: string,
  keep: ReadonlySet<string>,
  logger: Logger,
): Promise<SweepReport> {
  const report: SweepReport = { containers: [], networks: [], rules: 0, errors: [] };
  const found = await listInstanceResources(docker, instanceId);
  await Promise.all(
    found.containers
      .filter((c) => !keep.has(c.sandboxId))
      .map(async (c) => {
        try {
          await forceRemoveContainer(docker, c.id);
          report.containers.push(c.sandboxId || c.id.slice(0, 12));
        } catch (e) {
          report.errors.push(`container ${c.id.slice(0, 12)}: ${(e as Error).message}`);
        }
      }),
  );
  for (const n of found.networks.filter((x) => !keep.has(x.sandboxId))) {
    try {
      await removeNetwork(docker, n.id);
      report.networks.push(n.sandboxId || n.name);
    } catch (e) {
      report.errors.push(`network ${n.name}: ${(e as Error).message}`);
    }
  }
  try {
    report.rules = await firewall.removeOrphans(keep);
  } catch (e) {
    report.errors.push(`firewall: ${(e as Error).message}`);
  }
  if (report.containers.length || report.networks.length || report.rules || report.errors.length) {
    logger.info({ containers: report.containers.length, networks: report.networks.length, rules: report.rules, errors: report.errors }, 'orphaned sandbox resources removed');
  }
  return report;
}
