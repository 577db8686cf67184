import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eventually } from '../harness/ports.js';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { freePort, pidAlive } from '../harness/ports.js';

const gate = e2eGate(['envoy', 'docker', 'runsc', 'root'], 'portcullis up');

function connectStatus(port: number, authority: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    let buf = '';
    c.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n\r\n')) {
        c.destroy();
        resolve(buf.split('\r\n\r\n')[0]!);
      }
    });
    c.on('error', reject);
    setTimeout(() => c.destroy(new Error('timeout')), 5000);
  });
}


describe.skipIf(!gate.ok)('portcullis up (control plane + real Envoy)', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('starts with the default policy, enforces it, prints endpoints, and stops cleanly on %s', async (sig) => {
    const [egressPort, mcpPort] = [await freePort(), await freePort()];
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-up-data-'));
    const child = spawn(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'up', '--json', '--egress', `127.0.0.1:${egressPort}`, '--mcp', `127.0.0.1:${mcpPort}`, '--data-dir', dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const ready = await new Promise<{ endpoints: Record<string, string> }>((resolve, reject) => {
      const t = setInterval(() => {
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line) {
          clearInterval(t);
          resolve(JSON.parse(line));
        }
      }, 50);
      void exited.then((code) => {
        clearInterval(t);
        reject(new Error(`up exited ${code}: ${err}`));
      });
    });
    // progress was shown step by step
    expect(err).toMatch(/loading policy .* ok/);
    expect(err).toMatch(/starting Envoy .* pid (\d+)/);
    const envoyPid = Number(/pid (\d+)/.exec(err)![1]);
    // Envoy is live and enforcing the default policy (deny everything not listed)
    const admin = ready.endpoints.envoyAdmin!;
    expect((await fetch(`${admin}/ready`)).status).toBe(200);
    expect(await connectStatus(egressPort, 'example.invalid:443')).toMatch(/403[\s\S]*x-deny-reason: destination_not_allowed/);
    expect(await connectStatus(egressPort, 'pypi.org:22')).toMatch(/x-deny-reason: port_not_allowed/);
    // the operator plane answers on its own unix socket (0600)
    const sock = ready.endpoints.operatorSocket!;
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
    const status = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'policy', 'status', '--socket', sock, '--json'], { encoding: 'utf8' });
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toContain(ready.endpoints.configVersion!);
    // the denials above are access-logged by Envoy, turned into events and written to the audit log
    await eventually(() => fs.readFileSync(ready.endpoints.auditLog!, 'utf8').includes('"authority":"example.invalid:443"'), 15_000, 'the denial in the audit log');
    child.kill(sig);
    expect(await exited).toBe(0);
    expect(err).toMatch(/stopping Envoy, the gateway, every sandbox, the control plane … ok/);
    expect(ready.endpoints.auditLog).toBe(path.join(dataDir, 'audit.jsonl'));
    // ... whose chain verifies after the stop
    expect(fs.readFileSync(ready.endpoints.auditLog!, 'utf8')).toContain('destination_not_allowed');
    const verify = spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'audit', 'verify', ready.endpoints.auditLog!], { encoding: 'utf8' });
    expect(verify.status, verify.stdout + verify.stderr).toBe(0);
    expect(pidAlive(envoyPid)).toBe(false);
    await expect(fetch(`${admin}/ready`)).rejects.toThrow();
  });

  it('hot-reloads a valid policy change and keeps the last good configuration on an invalid one', async () => {
    const egressPort = await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-up-'));
    const file = path.join(dir, 'policy.yaml');
    const base = [
      'apiVersion: portcullis/v1',
      'kind: Policy',
      'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
      'egress:',
      '  rung: transparent',
      '  allow:',
      '    - { host: pypi.org }',
      '',
    ].join('\n');
    const write = (text: string) => {
      // atomic replace, as editors and config managers do
      fs.writeFileSync(`${file}.tmp`, text);
      fs.renameSync(`${file}.tmp`, file);
    };
    write(base);
    const mcpPort = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'up', '--json', '--policy', file, '--egress', `127.0.0.1:${egressPort}`, '--mcp', `127.0.0.1:${mcpPort}`, '--data-dir', path.join(dir, 'data')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await eventually(() => out.includes('"ready":true'), 60_000, 'up to be ready');
      expect(await connectStatus(egressPort, 'newhost.example.net:443')).toMatch(/x-deny-reason: destination_not_allowed/);
      // a valid change: the host appears (at the deny-all rung, so its reason changes)
      write(`${base}    - { host: newhost.example.net, rung: deny-all }\n`);
      await eventually(async () => /rung_deny_all/.test(await connectStatus(egressPort, 'newhost.example.net:443')), 20_000, 'the change to reach Envoy');
      expect(err).toMatch(/policy changed: publishing v-/);
      // an invalid change: refused with its location, Envoy keeps the last good config
      write(`${fs.readFileSync(file, 'utf8')}\nbogusKey: 1\n`);
      await eventually(() => /policy change refused[\s\S]*policy\.yaml:\d+:\d+/.test(err), 20_000, 'the refusal');
      expect(await connectStatus(egressPort, 'newhost.example.net:443')).toMatch(/rung_deny_all/);
    } finally {
      child.kill('SIGTERM');
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a start failure names the missing piece and the exact fix and exits 1; a usage error exits 2', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-up-fail-'));
    const up = (env: NodeJS.ProcessEnv, extra: string[] = []) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'cli/portcullis.ts', 'up', '--data-dir', dataDir, ...extra], { env, encoding: 'utf8', timeout: 120_000 });
    try {
      // the sandbox image is missing
      const [egressPort, mcpPort] = [await freePort(), await freePort()];
      const ports = ['--egress', `127.0.0.1:${egressPort}`, '--mcp', `127.0.0.1:${mcpPort}`];
      const noImage = up({ ...process.env, PORTCULLIS_SANDBOX_IMAGE: 'portcullis-sandbox:does-not-exist' }, ports);
      expect(noImage.status).toBe(1);
      expect(noImage.stderr).toMatch(/starting the sandbox supervisor[^\n]*FAILED\n\s+sandbox image portcullis-sandbox:does-not-exist not found[^\n]*\n\s+fix: bash sandbox\/image\/build\.sh/);
      // the MCP port is taken
      const blocker = net.createServer();
      await new Promise<void>((r) => blocker.listen(mcpPort, '127.0.0.1', () => r()));
      try {
        const busy = up({ ...process.env }, ports);
        expect(busy.status).toBe(1);
        expect(busy.stderr).toMatch(new RegExp(`MCP ingress port 127\\.0\\.0\\.1:${mcpPort} is in use\\n\\s+fix: stop what listens there`));
      } finally {
        blocker.close();
      }
      // a usage error is exit 2
      expect(up({ ...process.env }, ['--egress', 'nonsense']).status).toBe(2);
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
