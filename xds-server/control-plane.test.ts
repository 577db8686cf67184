import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ControlPlane } from './control-plane.js';
import { compileFile } from '../policy/compile.js';
import { silentLogger } from '../common/logger.js';

const EXAMPLES = path.join(import.meta.dirname, '..', 'policy', 'examples');

describe('ControlPlane.apply', () => {
  it('publishes a good policy and refuses a bad translation, keeping the last good snapshot live', async () => {
    const { ir } = await compileFile(path.join(EXAMPLES, 'solo-default.yaml'));
    const listen = { address: '127.0.0.1', port: 15001 };
    const cp = new ControlPlane({ logger: silentLogger(), nodeKey: 'n1', translate: { egress: { listen } } });
    const snap = cp.apply(ir, { immediate: true });
    expect(cp.server.cache.get('n1')?.version).toBe(snap.version);
    expect(cp.status()).toMatchObject({ liveVersion: snap.version, lastRefused: null });

    const refused: Array<Record<string, unknown>> = [];
    cp.events.on((e) => e.type === 'config.reload_refused' && refused.push(e.data));
    listen.address = ''; // the listener now fails pre-push validation
    expect(() => cp.apply(ir, { immediate: true })).toThrow(/socket_address\.address/);
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ code: 'resource_invalid' });
    expect(cp.status().lastRefused?.code).toBe('resource_invalid');
    // nothing was published: the last good snapshot is still what Envoy gets
    expect(cp.server.cache.get('n1')?.version).toBe(snap.version);
    expect(cp.status().liveVersion).toBe(snap.version);
    await cp.close();
  });
});

describe('ControlPlane: session denials reach Envoy as routes', () => {
  async function setup() {
    const { default: fs } = await import('node:fs');
    const { default: os } = await import('node:os');
    const { compileText } = await import('../policy/compile.js');
    const { JwtSessions } = await import('./sessions.js');
    const { Minter } = await import('../sds-minter/index.js');
    const { XDS } = await import('../envoy/api/type-urls.js');
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-cp-'));
    const keyFile = path.join(tmp, 'key');
    fs.writeFileSync(keyFile, 's3cret\n', { mode: 0o600 });
    const ir = compileText(
      [
        'apiVersion: portcullis/v1', 'kind: Policy', 'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }', 'egress:', '  rung: transparent', '  allow:',
        '    - { host: api.test, ports: [443], rung: bump, credential: k }', '  credentials:', `    - { name: k, header: authorization, format: "Bearer {secret}", source: { file: ${keyFile} } }`, '',
      ].join('\n'),
      { file: 'p.yaml', baseDir: tmp },
    );
    const sessions = new JwtSessions({ jwks: () => ({ keys: [] }) });
    const minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'cp-test', policy: [], logger: silentLogger() });
    const cp = new ControlPlane({
      logger: silentLogger(),
      nodeKey: 'n1',
      translate: { egress: { listen: { address: '127.0.0.1', port: 15001 }, bump: { controlPlaneCluster: 'portcullis_xds' }, accessLogCluster: 'portcullis_xds' } },
      bump: { sessions, minter },
    });
    const routes = () => JSON.stringify(cp.snapshot!.resources.get(XDS.route)!.get('bump:api.test')!.body);
    const tick = () => new Promise((r) => setImmediate(r));
    return { fs, tmp, keyFile, ir, sessions, cp, routes, tick, XDS };
  }

  it('revocations become deny routes in one publication per burst, without reading the credential file again', async () => {
    const { fs, tmp, keyFile, ir, sessions, cp, routes, tick } = await setup();
    try {
      cp.apply(ir, { immediate: true });
      expect(routes()).not.toContain('"exact":"s1"');
      // the credential file goes away: a policy apply is refused now, a revocation must still go out
      fs.rmSync(keyFile);
      expect(() => cp.apply(ir, { immediate: true })).toThrow(/credential/);
      for (const id of ['s1', 's2', 's3']) sessions.revoke(id);
      await tick();
      expect(cp.metrics.total('session_denials_published_total')).toBe(1);
      for (const id of ['s1', 's2', 's3']) expect(routes()).toContain(`"exact":"${id}"`);
      expect(cp.server.cache.get('n1')?.version).toBe(cp.snapshot!.version);
    } finally {
      await cp.close();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('sessionDenialsEnforced: true only once every Envoy acknowledged routes that carry the denials', async () => {
    const { fs, tmp, ir, sessions, cp, tick, routes, XDS } = await setup();
    try {
      const before = cp.apply(ir, { immediate: true });
      cp.server.cache.recordAck('n1', 'envoy-a', XDS.route, before.version);
      cp.server.cache.recordAck('n1', 'envoy-b', XDS.route, before.version);
      sessions.revoke('s1');
      // nothing acknowledged the new routes yet: not confirmed
      expect(await cp.sessionDenialsEnforced(50)).toBe(false);
      const after = cp.snapshot!.version;
      expect(after).not.toBe(before.version);
      const pending = cp.sessionDenialsEnforced(2000);
      cp.server.cache.recordAck('n1', 'envoy-a', XDS.route, after);
      await tick();
      cp.server.cache.recordAck('n1', 'envoy-b', XDS.route, before.version); // a stale ACK changes nothing
      cp.server.cache.recordAck('n1', 'envoy-b', XDS.route, after);
      expect(await pending).toBe(true);
      // the edge as the operator's revoker: revoke, then confirm once both Envoys hold the routes
      const edge = cp.edgeRevoker();
      edge.revoke('s2');
      const confirmed = edge.enforced();
      await tick();
      expect(routes()).toContain('"exact":"s2"');
      for (const n of ['envoy-a', 'envoy-b']) cp.server.cache.recordAck('n1', n, XDS.route, cp.snapshot!.version);
      expect(await confirmed).toBe(true);
    } finally {
      await cp.close();
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
