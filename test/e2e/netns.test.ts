import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { cleanupStaleTestNets, createTestNet, TESTNET_ROOT_IP, type TestNet } from '../harness/netns.js';

const gate = e2eGate(['root', 'netns'], 'netns');

function netnsList(): string {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
}
function rootLinks(): string {
  return execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
}

/** A TCP server that greets each client with the address it saw, then closes. */
const GREETER = `
  const net = require('node:net');
  const [port, host] = process.argv.slice(1);
  const srv = net.createServer((s) => s.end('hello ' + s.remoteAddress + '\\n'));
  srv.listen(Number(port), host, () => console.log('ready'));
  process.stdin.on('end', () => process.exit(0)); process.stdin.resume();
`;
const CLIENT = `
  const net = require('node:net');
  const [port, host] = process.argv.slice(1);
  const s = net.connect(Number(port), host);
  let out = '';
  s.setEncoding('utf8').on('data', (d) => (out += d)).on('end', () => { process.stdout.write(out); });
  s.on('error', (e) => { process.stdout.write('error ' + e.code); process.exitCode = 3; });
`;

function readGreeting(port: number, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, host);
    let out = '';
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
    s.setEncoding('utf8').on('data', (d: string) => (out += d));
    s.on('end', () => resolve(out.trim()));
    s.on('error', reject);
  });
}

describe.skipIf(!gate.ok)('test network namespaces (test/harness/netns.ts)', () => {
  let tn: TestNet;

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['srv', 'cli'], ipv6: true });
  });
  afterAll(async () => {
    await tn?.destroy();
  });

  it('names are unique and short, and hosts get their addresses and no default route', async () => {
    expect(tn.id).toMatch(/^pct[0-9a-f]{4}$/);
    expect(tn.rootIf.length).toBeLessThanOrEqual(15);
    expect(tn.host('srv')).toMatchObject({ netns: `${tn.id}-srv`, ip: '198.51.100.10', ip6: '2001:db8:5100::a' });
    expect(tn.host('cli')).toMatchObject({ netns: `${tn.id}-cli`, ip: '198.51.100.11' });
    expect(netnsList()).toContain(`${tn.id}-srv`);
    const rootAddr = execFileSync('ip', ['-o', 'addr', 'show', 'dev', tn.rootIf], { encoding: 'utf8' });
    expect(rootAddr).toContain(`inet ${TESTNET_ROOT_IP}/24`);
    const addr = await tn.runIn('srv', 'ip', ['-o', 'addr', 'show', 'dev', 'eth0']);
    expect(addr.stdout).toContain('inet 198.51.100.10/24');
    const routes = await tn.runIn('cli', 'ip', ['route', 'show']);
    expect(routes.stdout).toContain('198.51.100.0/24 dev eth0');
    expect(routes.stdout).not.toContain('default');
    expect(() => tn.host('nope')).toThrow(/no host 'nope'/);
  });

  it('a TCP server in one namespace is reachable from the root namespace and from another namespace', async () => {
    const srv = tn.spawnIn('srv', process.execPath, ['-e', GREETER, '7001', '::'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        srv.stdout?.setEncoding('utf8').on('data', (d: string) => d.includes('ready') && resolve());
        srv.on('exit', (c) => reject(new Error(`server exited ${c}`)));
      });
      // root → srv, over IPv4 and IPv6; the server sees the root's test-net address.
      expect(await readGreeting(7001, '198.51.100.10')).toBe('hello ::ffff:198.51.100.1');
      expect(await readGreeting(7001, '2001:db8:5100::a')).toBe('hello 2001:db8:5100::1');
      // cli → srv, across the hub bridge.
      const fromCli = await tn.runIn('cli', process.execPath, ['-e', CLIENT, '7001', '198.51.100.10'], { timeoutMs: 10_000 });
      expect(fromCli.stdout.trim()).toBe('hello ::ffff:198.51.100.11');
      // The server lives in its own namespace: nothing listens on the root namespace's loopback.
      await expect(readGreeting(7001, '127.0.0.1')).rejects.toThrow(/ECONNREFUSED/);
    } finally {
      srv.kill('SIGKILL');
    }
  });

  it('test hosts reach the root address, and nothing else (no route out)', async () => {
    const server = net.createServer((s) => s.end(`hello ${s.remoteAddress}\n`));
    await new Promise<void>((r) => server.listen(0, TESTNET_ROOT_IP, r));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const r = await tn.runIn('cli', process.execPath, ['-e', CLIENT, String(port), TESTNET_ROOT_IP], { timeoutMs: 10_000 });
      expect(r.stdout.trim()).toBe('hello 198.51.100.11');
      // No default route: a dial to an address outside the test net fails locally, before any packet.
      const out = await tn.runIn('cli', process.execPath, ['-e', CLIENT, '80', '192.0.2.1'], { timeoutMs: 10_000, check: false });
      expect(out.stdout).toContain('error ENETUNREACH');
      expect(out.code).toBe(3);
    } finally {
      server.close();
    }
  });

  it('runIn rejects on a non-zero exit unless check is false', async () => {
    await expect(tn.runIn('cli', 'sh', ['-c', 'echo oops >&2; exit 4'])).rejects.toThrow(/exit 4[\s\S]*oops/);
    const r = await tn.runIn('cli', 'sh', ['-c', 'exit 4'], { check: false });
    expect(r.code).toBe(4);
  });

  it('destroy removes every namespace, interface, process and lock; a second destroy is a no-op', async () => {
    const sleeper = tn.spawnIn('srv', 'sleep', ['300'], { stdio: 'ignore' });
    const exited = new Promise<string | null>((r) => sleeper.on('exit', (_c, sig) => r(sig)));
    const id = tn.id;
    expect(netnsList()).toContain(`${id}-hub`);
    await tn.destroy();
    expect(await exited).toBe('SIGKILL');
    expect(netnsList()).not.toContain(id);
    expect(rootLinks()).not.toContain(id);
    expect(execFileSync('ip', ['-o', 'addr', 'show'], { encoding: 'utf8' })).not.toContain('198.51.100.');
    expect(fs.existsSync(`/run/portcullis-testnet/${id}.json`)).toBe(false);
    await tn.destroy();
    // The lock is free again: a new net can be made at once.
    const again = await createTestNet({ hosts: ['x'], lockTimeoutMs: 1000 });
    expect(again.id).not.toBe(id);
    await again.destroy();
  });

  it('leftovers of a crashed run are removed by name prefix on the next cleanup', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-netns-crash-'));
    const script = path.join(dir, 'crash.mjs');
    const mod = pathToFileURL(path.resolve(import.meta.dirname, '../harness/netns.ts')).href;
    fs.writeFileSync(
      script,
      `import { createTestNet } from ${JSON.stringify(mod)};\n` +
        `const n = await createTestNet({ hosts: ['a', 'b'] });\nconsole.log(n.id);\nsetInterval(() => {}, 1000);\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const id = await new Promise<string>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (d: string) => resolve(d.trim()));
        child.on('exit', (c) => reject(new Error(`child exited ${c}`)));
      });
      expect(id).toMatch(/^pct[0-9a-f]{4}$/);
      child.kill('SIGKILL'); // no exit hook runs
      await new Promise((r) => child.once('exit', r));
      expect(netnsList()).toContain(`${id}-a`);
      expect(rootLinks()).toContain(`${id}-r`);
      expect(cleanupStaleTestNets()).toContain(id);
      expect(netnsList()).not.toContain(id);
      expect(rootLinks()).not.toContain(id);
      // And the subnet is usable again.
      const n = await createTestNet({ hosts: ['x'], lockTimeoutMs: 1000 });
      await n.destroy();
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
