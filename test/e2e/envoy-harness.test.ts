import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import forge from 'node-forge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvoyHarnessError } from '../../common/errors.js';
import { rejectedUpdates, statName } from '../../envoy/admin.js';
import { CONFIG_DUMP, EXT, XDS } from '../../envoy/api/type-urls.js';
import { findEnvoy, PINNED_ENVOY_VERSION } from '../../envoy/binary.js';
import { buildBootstrap } from '../../envoy/bootstrap.js';
import { EnvoyProcess, runningEnvoys, stopAllEnvoys, uniqueNodeId } from '../../envoy/process.js';
import { e2eGate } from '../harness/e2e-gate.js';

const gate = e2eGate(['envoy'], 'envoy-harness');

/**
 * Where the xDS cluster points when no control plane should answer: port 1 on 127.0.0.1, privileged
 * and outside the ephemeral range, so no test binds it (a bound-then-released ephemeral port can be
 * taken by another suite's server in the meantime). deadPort() checks that nothing listens there.
 */
const NOTHING_LISTENS = 1;

async function deadPort(): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(NOTHING_LISTENS, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      reject(new Error(`something listens on 127.0.0.1:${NOTHING_LISTENS}; these tests need it closed`));
    });
    s.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNREFUSED' ? resolve() : reject(e)));
  });
  return NOTHING_LISTENS;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Listening TCP sockets of a process, from /proc: `addr:port` strings (IPv4 as dotted quad). */
function listeningSockets(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // fd closed meanwhile
    }
  }
  const out: string[] = [];
  for (const file of ['tcp', 'tcp6']) {
    const lines = fs.readFileSync(`/proc/${pid}/net/${file}`, 'utf8').trim().split('\n').slice(1);
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      const [local, state, inode] = [f[1]!, f[3]!, f[9]!];
      if (state !== '0A' || !inodes.has(inode)) continue; // 0A = LISTEN
      const [hex, portHex] = local.split(':') as [string, string];
      const addr =
        hex.length === 8
          ? [3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join('.')
          : `[${hex}]`;
      out.push(`${addr}:${parseInt(portHex, 16)}`);
    }
  }
  return out.sort();
}

/** GET over a new connection (no keep-alive reuse). */
function freshGet(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

function shmEntries(): string[] {
  try {
    return fs.readdirSync('/dev/shm').filter((f) => f.startsWith('envoy'));
  } catch {
    return [];
  }
}

describe.skipIf(!gate.ok)('Envoy harness against the real Envoy', () => {
  afterAll(stopAllEnvoys);

  it('finds the pinned Envoy', async () => {
    const bin = await findEnvoy();
    expect(bin.version).toBe(PINNED_ENVOY_VERSION);
    expect(path.isAbsolute(bin.path)).toBe(true);
  });

  describe('with no control plane listening', () => {
    let envoy: EnvoyProcess;
    beforeAll(async () => {
      envoy = await EnvoyProcess.start({ bootstrap: { nodeId: uniqueNodeId('harness'), xds: { port: await deadPort() } } });
    });

    it('starts: the admin answers, but Envoy is not ready before CDS and LDS arrive', async () => {
      expect(await envoy.admin.ready()).toEqual({ ready: false, state: 'PRE_INITIALIZING' });
      const info = await envoy.admin.serverInfo();
      expect(info.state).toBe('PRE_INITIALIZING');
      expect(info.node.id).toBe(envoy.nodeId);
      expect(info.version).toContain(`/${PINNED_ENVOY_VERSION}/`);
      expect(info.hot_restart_version).toBe('disabled');
    });

    it('is not connected to a control plane and has rejected nothing', async () => {
      expect(await envoy.admin.stat('control_plane.connected_state')).toBe(0);
      const stats = await envoy.admin.stats();
      expect(stats['control_plane.connected_state']).toBe(0);
      expect(rejectedUpdates(stats)).toEqual({});
      expect(await envoy.admin.stat('no.such.stat')).toBeUndefined();
    });

    it('binds the admin to 127.0.0.1 only, and nothing else', async () => {
      expect(envoy.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const dump = await envoy.admin.configDump();
      const boot = dump.configs.find((c) => c['@type'] === CONFIG_DUMP.bootstrap) as {
        bootstrap: { admin: { address: { socket_address: { address: string } } } };
      };
      expect(boot.bootstrap.admin.address.socket_address.address).toBe('127.0.0.1');
      expect(listeningSockets(envoy.pid)).toEqual([`127.0.0.1:${envoy.adminPort}`]);
      expect((await envoy.admin.listeners()).listener_statuses ?? []).toEqual([]);
    });

    it('waitConnected gives up with envoy_timeout and the log tail', async () => {
      const err = await envoy.waitConnected(300).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EnvoyHarnessError);
      expect((err as EnvoyHarnessError).code).toBe('envoy_timeout');
      expect((err as Error).message).toContain('control_plane.connected_state');
    });

    it('stops cleanly: exit 0, no process, no directory, idempotent', async () => {
      const pid = envoy.pid;
      expect(alive(pid)).toBe(true);
      const exit = await envoy.stop();
      expect(exit).toEqual({ code: 0, signal: null });
      expect(alive(pid)).toBe(false);
      expect(fs.existsSync(envoy.dir)).toBe(false);
      expect(await envoy.stop()).toEqual(exit);
      expect(runningEnvoys()).not.toContain(envoy);
    });
  });

  it('becomes LIVE without a control plane once both initial fetches time out', async () => {
    const envoy = await EnvoyProcess.start({
      bootstrap: { nodeId: uniqueNodeId('harness'), xds: { port: await deadPort() }, initialFetchTimeoutMs: 200 },
    });
    try {
      await envoy.waitReady(20_000);
      expect(await envoy.admin.ready()).toEqual({ ready: true, state: 'LIVE' });
      expect((await envoy.admin.serverInfo()).state).toBe('LIVE');
      const stats = await envoy.admin.stats();
      expect(stats['control_plane.connected_state']).toBe(0);
      expect(stats['cluster_manager.cds.init_fetch_timeout']).toBe(1);
      expect(stats['listener_manager.lds.init_fetch_timeout']).toBe(1);
    } finally {
      await envoy.stop();
    }
  });

  it('rejects a bad bootstrap with envoy_start_failed, Envoy’s own error and no process left', async () => {
    const bootstrap = buildBootstrap({ nodeId: uniqueNodeId('bad'), xds: { port: await deadPort() } });
    (bootstrap.static_resources.clusters[0] as Record<string, unknown>).not_a_field = true;
    const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-harness-bad-'));
    try {
      const err = await EnvoyProcess.start({ bootstrap, tmpRoot }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EnvoyHarnessError);
      expect((err as EnvoyHarnessError).code).toBe('envoy_start_failed');
      const msg = (err as Error).message;
      expect(msg).toMatch(/exited \(exit code 1\) before its admin endpoint answered/);
      expect(msg).toContain('--- Envoy log');
      expect(msg).toContain('not_a_field');
      expect(fs.readdirSync(tmpRoot)).toEqual([]); // working directory removed
      expect(runningEnvoys()).toEqual([]);
    } finally {
      fs.rmSync(tmpRoot, { recursive: true, force: true });
    }
  });

  it('runs two Envoys at once without clashing, and leaves nothing in /dev/shm', async () => {
    const shmBefore = shmEntries();
    const port = await deadPort();
    const [a, b] = await Promise.all([
      EnvoyProcess.start({ bootstrap: { nodeId: uniqueNodeId('a'), xds: { port } } }),
      EnvoyProcess.start({ bootstrap: { nodeId: uniqueNodeId('b'), xds: { port } } }),
    ]);
    expect(a.adminPort).not.toBe(b.adminPort);
    expect((await a.admin.serverInfo()).node.id).toBe(a.nodeId);
    expect((await b.admin.serverInfo()).node.id).toBe(b.nodeId);
    expect(shmEntries()).toEqual(shmBefore);
    // b survives a's crash
    await a.kill();
    expect((await b.admin.ready()).state).toBe('PRE_INITIALIZING');
    await Promise.all([a.stop(), b.stop()]);
    expect(shmEntries()).toEqual(shmBefore);
  });

  it('kill() is a SIGKILL; the directory stays until stop()', async () => {
    const envoy = await EnvoyProcess.start({ bootstrap: { nodeId: uniqueNodeId('kill'), xds: { port: await deadPort() } } });
    const exit = await envoy.kill();
    expect(exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(alive(envoy.pid)).toBe(false);
    expect(fs.existsSync(envoy.logPath)).toBe(true);
    await envoy.stop();
    expect(fs.existsSync(envoy.dir)).toBe(false);
  });

  it('a wait fails at once, with the log tail, when Envoy dies under it', async () => {
    const envoy = await EnvoyProcess.start({
      bootstrap: { nodeId: uniqueNodeId('die'), xds: { port: await deadPort() } },
      logLevel: 'info',
    });
    try {
      const waiting = envoy.waitReady(60_000).catch((e: unknown) => e);
      process.kill(envoy.pid, 'SIGKILL');
      const err = await waiting;
      expect((err as EnvoyHarnessError).code).toBe('envoy_start_failed');
      expect((err as Error).message).toContain('exited (signal SIGKILL)');
      expect((err as Error).message).toContain('starting main dispatch loop');
    } finally {
      await envoy.stop();
    }
  });

  it('enforces the global downstream connection limit, and the admin stays reachable', async () => {
    const bootstrap = buildBootstrap({
      nodeId: uniqueNodeId('limit'),
      xds: { port: await deadPort() },
      maxDownstreamConnections: 1,
      initialFetchTimeoutMs: 200,
    });
    bootstrap.static_resources.listeners = [
      {
        name: 'held',
        address: { socket_address: { address: '127.0.0.1', port_value: 0 } },
        filter_chains: [
          {
            filters: [
              {
                name: 'envoy.filters.network.http_connection_manager',
                typed_config: {
                  '@type': EXT.hcm,
                  stat_prefix: 'held',
                  route_config: {
                    virtual_hosts: [{ name: 'all', domains: ['*'], routes: [{ match: { prefix: '/' }, direct_response: { status: 204 } }] }],
                  },
                  http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } }],
                },
              },
            ],
          },
        ],
      },
    ];
    const envoy = await EnvoyProcess.start({ bootstrap });
    const sockets: net.Socket[] = [];
    try {
      // Listeners accept only once the workers run, i.e. once Envoy is LIVE.
      await envoy.waitReady(20_000);
      const port = (await envoy.admin.listeners()).listener_statuses?.[0]?.local_address?.socket_address?.port_value ?? 0;
      expect(port).toBeGreaterThan(0);
      const connect = (): Promise<net.Socket> =>
        new Promise((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1');
          sockets.push(s);
          s.once('error', reject);
          s.once('connect', () => resolve(s));
        });
      // Stats of a listener configured on port 0 are named after the configured address.
      const stat = (name: string) => () => envoy.admin.stat(`listener.127.0.0.1_0.${name}`);
      const first = await connect();
      await expect.poll(stat('downstream_cx_active'), { timeout: 10_000 }).toBe(1);
      const second = await connect();
      await expect.poll(stat('downstream_global_cx_overflow'), { timeout: 10_000 }).toBe(1);
      await expect.poll(() => second.closed, { timeout: 10_000 }).toBe(true);
      expect(first.closed).toBe(false);
      // The admin is outside the limit: a fresh connection to it still gets an answer.
      expect(await freshGet(envoy.adminPort, '/ready')).toEqual({ status: 200, body: 'LIVE\n' });
    } finally {
      for (const s of sockets) s.destroy();
      await envoy.stop();
    }
  });

  describe('waitForVersion reads real config dumps (xDS from files: no control plane needed)', () => {
    let envoy: EnvoyProcess;
    let xdsDir: string;
    const edsCluster = 'up:stream';
    const write = (name: string, version: string, typeUrl: string, resources: Record<string, unknown>[]): void => {
      const file = path.join(xdsDir, `${name}.json`);
      fs.writeFileSync(`${file}.tmp`, JSON.stringify({ version_info: version, resources: resources.map((r) => ({ '@type': typeUrl, ...r })) }));
      fs.renameSync(`${file}.tmp`, file); // Envoy watches for the move
    };
    const pathSource = (name: string) => ({ path_config_source: { path: path.join(xdsDir, `${name}.json`) }, resource_api_version: 'V3' });
    const cluster = (name: string) => ({
      name,
      type: 'EDS',
      connect_timeout: '1s',
      eds_cluster_config: { eds_config: pathSource('eds') },
    });
    const listener = (secret: string, sdsConfig: Record<string, unknown>) => ({
      name: 'l',
      address: { socket_address: { address: '127.0.0.1', port_value: 0 } },
      filter_chains: [
        {
          filters: [
            {
              name: 'envoy.filters.network.http_connection_manager',
              typed_config: {
                '@type': EXT.hcm,
                stat_prefix: 'harness',
                rds: { route_config_name: 'rc', config_source: pathSource('rds') },
                http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': EXT.router } }],
              },
            },
          ],
          transport_socket: {
            name: 'envoy.transport_sockets.tls',
            typed_config: {
              '@type': EXT.downstreamTls,
              common_tls_context: { tls_certificate_sds_secret_configs: [{ name: secret, sds_config: sdsConfig }] },
            },
          },
        },
      ],
    });
    let serial = '';

    beforeAll(async () => {
      xdsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-harness-xds-'));
      const leaf = selfSigned('harness.test');
      serial = leaf.serial;
      write('eds', 'e1', XDS.endpoint, [
        { cluster_name: edsCluster, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 9 } } } }] }] },
      ]);
      write('rds', 'r1', XDS.route, [
        { name: 'rc', virtual_hosts: [{ name: 'vh', domains: ['*'], routes: [{ match: { prefix: '/' }, direct_response: { status: 204 } }] }] },
      ]);
      write('sds', 's1', XDS.secret, [
        { name: 'leaf', tls_certificate: { certificate_chain: { inline_string: leaf.cert }, private_key: { inline_string: leaf.key } } },
      ]);
      write('cds', 'c1', XDS.cluster, [cluster(edsCluster)]);
      write('lds', 'l1', XDS.listener, [listener('leaf', pathSource('sds'))]);
      const bootstrap = buildBootstrap({ nodeId: uniqueNodeId('files'), xds: { port: await deadPort() } });
      bootstrap.dynamic_resources.cds_config = pathSource('cds');
      bootstrap.dynamic_resources.lds_config = pathSource('lds');
      envoy = await EnvoyProcess.start({ bootstrap });
    });
    afterAll(async () => {
      await envoy?.stop();
      fs.rmSync(xdsDir, { recursive: true, force: true });
    });

    it('sees every type at its first version, with nothing rejected', async () => {
      await envoy.waitForVersion(XDS.cluster, 'c1', 10_000);
      await envoy.waitForVersion(XDS.listener, 'l1', 10_000);
      await envoy.waitForVersion(XDS.route, 'r1', 10_000, { names: ['rc'] });
      await envoy.waitForVersion(XDS.secret, 's1', 10_000, { names: ['leaf'] });
      await envoy.waitForVersion(XDS.endpoint, 'e1', 10_000, { names: [edsCluster] });
      await envoy.waitReady(10_000);
      expect(rejectedUpdates(await envoy.admin.stats())).toEqual({});
    });

    it('reads EDS versions from text readouts under the stat name of the cluster', async () => {
      const readouts = await envoy.admin.textReadouts();
      expect(readouts[`cluster.${statName(edsCluster)}.version_text`]).toBe('e1');
      expect(readouts['listener_manager.lds.version_text']).toBe('l1');
    });

    it('exposes certs, clusters and listeners', async () => {
      const certs = JSON.stringify(await envoy.admin.certs());
      expect(certs).toContain(serial);
      const clusters = await envoy.admin.clusters();
      expect(clusters.cluster_statuses?.map((c) => c.name)).toContain(edsCluster);
      const ls = await envoy.admin.listeners();
      expect(ls.listener_statuses?.map((l) => [l.name, l.local_address?.socket_address?.address])).toEqual([['l', '127.0.0.1']]);
    });

    it('does not count a listener that is still warming, unless asked to', async () => {
      // Its new secret comes over ADS, which is not connected: the new listener warms indefinitely.
      write('lds', 'l2', XDS.listener, [listener('pending', { ads: {}, resource_api_version: 'V3', initial_fetch_timeout: '0s' })]);
      const tv = await envoy.waitForVersion(XDS.listener, 'l2', 10_000, { allowWarming: true });
      expect(tv.typeVersion).toBe('l2');
      expect(tv.resources.map((r) => [r.name, r.state])).toEqual([
        ['l', 'active'],
        ['l', 'warming'],
      ]);
      const err = await envoy.waitForVersion(XDS.listener, 'l2', 300).catch((e: unknown) => e);
      expect((err as EnvoyHarnessError).code).toBe('envoy_timeout');
      expect((err as Error).message).toMatch(/l@\S+ \(warming\)/);
    });

    it('waits for a later version and reports a rejected update', async () => {
      write('rds', 'r2', XDS.route, [
        { name: 'rc', virtual_hosts: [{ name: 'vh', domains: ['*'], routes: [{ match: { prefix: '/' }, direct_response: { status: 200 } }] }] },
      ]);
      await envoy.waitForVersion(XDS.route, 'r2', 10_000);
      // A cluster Envoy refuses (EDS without a source) next to an unchanged one: the CDS update is
      // rejected and c1 stays the type's version.
      write('cds', 'c2', XDS.cluster, [cluster(edsCluster), { name: 'broken', type: 'EDS', connect_timeout: '1s' }]);
      await expect.poll(async () => rejectedUpdates(await envoy.admin.stats()), { timeout: 10_000 }).toEqual({
        'cluster_manager.cds.update_rejected': 1,
      });
      const err = await envoy.waitForVersion(XDS.cluster, 'c2', 300).catch((e: unknown) => e);
      expect((err as Error).message).toContain('type version "c1"');
    });
  });
});

/** A self-signed certificate for the SDS secret (Node generates the key, node-forge builds the certificate). */
function selfSigned(cn: string): { cert: string; key: string; serial: string } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const key = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: 'spki', format: 'pem' }).toString());
  const serial = crypto.randomBytes(8).toString('hex').replace(/^[89a-f]/, '1');
  cert.serialNumber = serial;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 86_400_000);
  cert.setSubject([{ name: 'commonName', value: cn }]);
  cert.setIssuer([{ name: 'commonName', value: cn }]);
  cert.setExtensions([{ name: 'subjectAltName', altNames: [{ type: 2, value: cn }] }]);
  cert.sign(forge.pki.privateKeyFromPem(key), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key, serial };
}
