import { execFile } from 'node:child_process';
import fs from 'node:fs';
import type Docker from 'dockerode';
import type { Logger } from '../common/logger.js';

/**
 * Session networks and the host firewall.
 *
 * Each sandbox gets its own internal Docker bridge network (no route out, inter-container traffic off)
 * with a bridge named `pcx<sandbox id>`. Traffic from a sandbox to the host (its gateway address)
 * crosses the host's INPUT chain, which Docker leaves open, so the supervisor owns two chains:
 *
 *   INPUT   → PORTCULLIS-IN   per sandbox: ACCEPT tcp to <gateway>:<egress port>
 *                                         ACCEPT tcp from the agent port, ESTABLISHED (replies on the
 *                                                channel the host opened)
 *                             then, for every pcx+ bridge: DROP   (installed once, always last)
 *   FORWARD → PORTCULLIS-FWD  DROP in or out of any pcx+ bridge (Docker's isolation does this too)
 *
 * and the same jumps and catch-all DROPs in ip6tables; IPv6 is also switched off on each bridge.
 * The catch-all makes the default fail-closed: a bridge whose per-sandbox rules never got installed
 * reaches nothing. Per-sandbox rules carry the comment `portcullis:<instance>:<sandbox>:<role>`, which
 * is how teardown and orphan cleanup find them.
 */

export const BRIDGE_PREFIX = 'pcx';
export const CHAIN_IN = 'PORTCULLIS-IN';
export const CHAIN_FWD = 'PORTCULLIS-FWD';
const BASE_TAG = 'portcullis:base';

export interface SessionNetwork {
  id: string;
  name: string;
  bridge: string;
  subnet: string;
  gateway: string;
}

export function networkName(instanceId: string, sandboxId: string): string {
  return `portcullis-${instanceId}-${sandboxId}`;
}

export function bridgeName(sandboxId: string): string {
  const name = `${BRIDGE_PREFIX}${sandboxId}`;
  if (name.length > 15) throw new RangeError(`bridge name '${name}' is longer than 15 characters`);
  return name;
}

export async function createSessionNetwork(
  docker: Docker,
  o: { instanceId: string; sandboxId: string; labels: Record<string, string> },
): Promise<SessionNetwork> {
  const name = networkName(o.instanceId, o.sandboxId);
  const bridge = bridgeName(o.sandboxId);
  const net = await docker.createNetwork({
    Name: name,
    Driver: 'bridge',
    Internal: true,
    Attachable: false,
    EnableIPv6: false,
    CheckDuplicate: true,
    Options: {
      'com.docker.network.bridge.name': bridge,
      'com.docker.network.bridge.enable_icc': 'false',
      'com.docker.network.bridge.enable_ip_masquerade': 'false',
    },
    Labels: o.labels,
  });
  const info = (await net.inspect()) as { Id: string; IPAM?: { Config?: { Subnet?: string; Gateway?: string }[] } };
  const cfg = info.IPAM?.Config?.[0];
  if (!cfg?.Subnet || !cfg.Gateway) {
    await net.remove().catch(() => undefined);
    throw new Error(`network ${name} has no IPv4 subnet/gateway`);
  }
  disableIpv6(bridge);
  return { id: info.Id, name, bridge, subnet: cfg.Subnet, gateway: cfg.Gateway };
}

/** Best effort: IPv6 off on the host side of the bridge (no link-local address for a sandbox to reach). */
export function disableIpv6(bridge: string): void {
  const f = `/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`;
  try {
    if (fs.existsSync(f)) fs.writeFileSync(f, '1');
  } catch {
    // no IPv6 on this host, or no permission: the ip6tables catch-all still drops
  }
}

// ---------------------------------------------------------------------------------------------
// firewall

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}
export type CommandRunner = (cmd: string, args: readonly string[], input?: string) => Promise<RunResult>;

export const runCommand: CommandRunner = (cmd, args, input) =>
  new Promise((resolve) => {
    const child = execFile(cmd, [...args], { encoding: 'utf8', timeout: 30_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });

export interface SandboxRuleTarget {
  sandboxId: string;
  bridge: string;
  gateway: string;
}

export function ruleTag(instanceId: string, sandboxId: string, role: string): string {
  return `portcullis:${instanceId}:${sandboxId}:${role}`;
}

/** The per-sandbox ACCEPT rules (iptables-restore lines, inserted at the head of PORTCULLIS-IN). */
export function renderSandboxRules(instanceId: string, t: SandboxRuleTarget, egressPort: number, agentPort: number): string[] {
  return [
    `-I ${CHAIN_IN} 1 -i ${t.bridge} -d ${t.gateway}/32 -p tcp -m tcp --dport ${egressPort} -m comment --comment ${ruleTag(instanceId, t.sandboxId, 'egress')} -j ACCEPT`,
    `-I ${CHAIN_IN} 1 -i ${t.bridge} -d ${t.gateway}/32 -p tcp -m tcp --sport ${agentPort} -m conntrack --ctstate ESTABLISHED -m comment --comment ${ruleTag(instanceId, t.sandboxId, 'agent')} -j ACCEPT`,
  ];
}

export interface TaggedRule {
  family: 4 | 6;
  chain: string;
  /** the rule as `-S` prints it, starting with `-A <chain>` */
  spec: string;
  instanceId: string;
  sandboxId: string;
  role: string;
}

const TAG_RE = /--comment "?portcullis:([a-z0-9-]+):([0-9a-z]+):([a-z]+)"?/;

export function parseTaggedRules(family: 4 | 6, listing: string): TaggedRule[] {
  const out: TaggedRule[] = [];
  for (const line of listing.split('\n')) {
    const m = /^-A (\S+) /.exec(line);
    if (!m) continue;
    const t = TAG_RE.exec(line);
    if (!t) continue;
    out.push({ family, chain: m[1]!, spec: line.trim(), instanceId: t[1]!, sandboxId: t[2]!, role: t[3]! });
  }
  return out;
}

export class Firewall {
  private queue: Promise<unknown> = Promise.resolve();
  private ipv6 = true;

  constructor(
    private readonly o: { instanceId: string; egressPort: number; agentPort: number; logger: Logger; run?: CommandRunner },
  ) {}

  private get run(): CommandRunner {
    return this.o.run ?? runCommand;
  }

  /** Serializes firewall changes made by this process (other processes: the xtables lock, `-w`). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private async tool(family: 4 | 6, args: readonly string[]): Promise<RunResult> {
    return this.run(family === 4 ? 'iptables' : 'ip6tables', ['-w', '5', ...args]);
  }

  private async must(family: 4 | 6, args: readonly string[]): Promise<void> {
    const r = await this.tool(family, args);
    if (r.code !== 0) throw new Error(`${family === 4 ? 'iptables' : 'ip6tables'} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
  }

  private async restore(family: 4 | 6, lines: readonly string[]): Promise<void> {
    if (lines.length === 0) return;
    const input = `*filter\n${lines.join('\n')}\nCOMMIT\n`;
    const r = await this.run(family === 4 ? 'iptables-restore' : 'ip6tables-restore', ['-w', '5', '--noflush'], input);
    if (r.code !== 0) throw new Error(`${family === 4 ? 'iptables' : 'ip6tables'}-restore: ${r.stderr.trim() || `exit ${r.code}`}`);
  }

  /** The chains, the jumps to them and the catch-all DROPs. Idempotent; shared by every instance. */
  ensureBase(): Promise<void> {
    return this.exclusive(async () => {
      for (const family of [4, 6] as const) {
        const probe = await this.tool(family, ['-S', 'INPUT']);
        if (probe.code !== 0) {
          if (family === 6) {
            this.ipv6 = false;
            this.o.logger.warn({ err: probe.stderr.trim() }, 'ip6tables unavailable; relying on IPv6 being off for sandbox bridges');
            continue;
          }
          throw new Error(`iptables unavailable: ${probe.stderr.trim()}`);
        }
        for (const chain of [CHAIN_IN, CHAIN_FWD]) {
          const exists = await this.tool(family, ['-S', chain]);
          if (exists.code !== 0) await this.must(family, ['-N', chain]);
        }
        const ensure = async (check: string[], add: string[]): Promise<void> => {
          if ((await this.tool(family, ['-C', ...check])).code !== 0) await this.must(family, add);
        };
        const tag = ['-m', 'comment', '--comment', BASE_TAG];
        await ensure([CHAIN_IN, '-i', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP'], ['-A', CHAIN_IN, '-i', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP']);
        await ensure([CHAIN_FWD, '-i', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP'], ['-A', CHAIN_FWD, '-i', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP']);
        await ensure([CHAIN_FWD, '-o', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP'], ['-A', CHAIN_FWD, '-o', `${BRIDGE_PREFIX}+`, ...tag, '-j', 'DROP']);
        await ensure(['INPUT', '-j', CHAIN_IN], ['-I', 'INPUT', '1', '-j', CHAIN_IN]);
        await ensure(['FORWARD', '-j', CHAIN_FWD], ['-I', 'FORWARD', '1', '-j', CHAIN_FWD]);
      }
    });
  }

  /**
   * Removes the shared base (jumps, catch-all DROPs, chains) when nothing uses it any more: no
   * instance has a tagged rule and no sandbox bridge exists. Returns whether it was removed. Used by
   * `portcullis up` on the way out so a stopped deployment leaves no firewall rule behind; while any
   * sandbox bridge exists the DROPs stay (fail closed).
   */
  releaseBaseIfUnused(): Promise<boolean> {
    return this.exclusive(async () => {
      const links = await this.run('ip', ['-o', 'link', 'show']);
      if (links.code !== 0) return false;
      if (links.stdout.split('\n').some((l) => new RegExp(`^\\d+: ${BRIDGE_PREFIX}`).test(l))) return false;
      if ((await this.listTagged()).length > 0) return false;
      for (const family of this.ipv6 ? ([4, 6] as const) : ([4] as const)) {
        for (const [parent, chain] of [['INPUT', CHAIN_IN], ['FORWARD', CHAIN_FWD]] as const) {
          while ((await this.tool(family, ['-C', parent, '-j', chain])).code === 0) await this.must(family, ['-D', parent, '-j', chain]);
          if ((await this.tool(family, ['-S', chain])).code === 0) {
            await this.must(family, ['-F', chain]);
            await this.must(family, ['-X', chain]);
          }
        }
      }
      return true;
    });
  }

  /** The sandbox may reach the egress listener; the agent channel's replies come back. */
  allowSandbox(t: SandboxRuleTarget): Promise<void> {
    return this.exclusive(() => this.restore(4, renderSandboxRules(this.o.instanceId, t, this.o.egressPort, this.o.agentPort)));
  }

  /** Removes the egress ACCEPT: from now on every packet from the sandbox to the listener is dropped. */
  dropEgress(sandboxId: string): Promise<number> {
    return this.removeWhere((r) => r.instanceId === this.o.instanceId && r.sandboxId === sandboxId && r.role === 'egress');
  }

  removeSandbox(sandboxId: string): Promise<number> {
    return this.removeWhere((r) => r.instanceId === this.o.instanceId && r.sandboxId === sandboxId);
  }

  /** Every rule of this instance whose sandbox is not in `keep`. */
  removeOrphans(keep: ReadonlySet<string>): Promise<number> {
    return this.removeWhere((r) => r.instanceId === this.o.instanceId && !keep.has(r.sandboxId));
  }

  async listTagged(): Promise<TaggedRule[]> {
    const out: TaggedRule[] = [];
    for (const family of this.ipv6 ? ([4, 6] as const) : ([4] as const)) {
      for (const chain of [CHAIN_IN, CHAIN_FWD]) {
        const r = await this.tool(family, ['-S', chain]);
        if (r.code === 0) out.push(...parseTaggedRules(family, r.stdout));
      }
    }
    return out;
  }

  private removeWhere(pred: (r: TaggedRule) => boolean): Promise<number> {
    return this.exclusive(async () => {
      const rules = (await this.listTagged()).filter(pred);
      for (const family of [4, 6] as const) {
        const lines = rules.filter((r) => r.family === family).map((r) => r.spec.replace(/^-A /, '-D '));
        await this.restore(family, lines);
      }
      return rules.length;
    });
  }
}
