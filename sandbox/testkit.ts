import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Docker from 'dockerode';
import { silentLogger } from '../common/logger.js';
import type { SupervisorConfigInput } from './config.js';
import { Firewall } from './network.js';
import { listInstanceResources, sweepOrphans } from './orphans.js';

/**
 * Helpers for the supervisor's e2e suites and benchmark (real Docker, real runsc): the image to use,
 * a small per-suite configuration, and an inventory/sweep of everything an instance owns.
 */

const MiB = 1 << 20;

export function sandboxImage(): string {
  if (process.env.PORTCULLIS_SANDBOX_IMAGE) return process.env.PORTCULLIS_SANDBOX_IMAGE;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const candidates = [path.join(root, 'package.json'), path.join(root, '..', 'package.json')];
  for (const c of candidates) {
    if (fs.existsSync(c)) {
      const v = (JSON.parse(fs.readFileSync(c, 'utf8')) as { version?: string }).version;
      if (v) return `portcullis-sandbox:${v}`;
    }
  }
  return 'portcullis-sandbox:latest';
}

export function imageAvailable(image = sandboxImage()): boolean {
  try {
    execFileSync('docker', ['image', 'inspect', image], { stdio: 'ignore', timeout: 15_000 });
    return true;
  } catch {
    return false;
  }
}

/** A configuration sized for tests: 512 MiB, 64 MiB workspace, 32 MiB /tmp, 128 processes. */
export function testConfig(instanceId: string, over: Partial<SupervisorConfigInput> = {}): SupervisorConfigInput {
  return {
    instanceId,
    trustProfile: 'trusted_operator',
    runtime: 'gvisor',
    image: sandboxImage(),
    sessions: { tokenTtlSeconds: 900, idleTimeoutSeconds: 600, absoluteLifetimeSeconds: 3600 },
    egress: { port: 15001 },
    stateDir: '/run/portcullis-test/sandbox',
    limits: { memoryBytes: 512 * MiB, workspaceBytes: 64 * MiB, tmpBytes: 32 * MiB, pids: 128, hostThreads: 2048, cpus: 1 },
    reconcileIntervalMs: 600_000,
    ...over,
  };
}

export interface InstanceInventory {
  containers: string[];
  networks: string[];
  rules: string[];
}

/** Containers, networks and firewall rules carrying this instance's labels/tags. */
export async function inventory(instanceId: string, docker = new Docker()): Promise<InstanceInventory> {
  const r = await listInstanceResources(docker, instanceId);
  const fw = new Firewall({ instanceId, egressPort: 1, agentPort: 1, logger: silentLogger() });
  const rules = (await fw.listTagged()).filter((x) => x.instanceId === instanceId).map((x) => x.spec);
  return { containers: r.containers.map((c) => c.id), networks: r.networks.map((n) => n.name), rules };
}

/** Removes everything of this instance (afterAll safety net). */
export async function sweepInstance(instanceId: string, docker = new Docker()): Promise<void> {
  const fw = new Firewall({ instanceId, egressPort: 1, agentPort: 1, logger: silentLogger() });
  await sweepOrphans(docker, fw, instanceId, new Set(), silentLogger());
}

/**
 * Python run inside a sandbox: TCP connects to every target in parallel (1.5 s timeout each), prints
 * `{name: "connected" | "<Error>: <message>"}` as JSON. Targets: [name, host, port].
 */
export const TCP_PROBE = `
import json, socket, sys, threading
targets = json.load(sys.stdin)
res = {}
def probe(name, host, port):
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(1.5)
        if fam == socket.AF_INET6:
            s.connect(socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM)[0][4])
        else:
            s.connect((host, port))
        s.close()
        res[name] = "connected"
    except Exception as e:
        res[name] = "%s: %s" % (type(e).__name__, e)
ts = [threading.Thread(target=probe, args=tuple(t)) for t in targets]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res))
`;
