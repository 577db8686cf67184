import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn, type DnsServerProcess } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { eventually, freePort } from '../harness/ports.js';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { compileText } from '../../policy/compile.js';
import { Supervisor } from '../../sandbox/supervisor.js';
import { sweepInstance, testConfig } from '../../sandbox/testkit.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { JwtSessions } from '../../xds-server/sessions.js';
import { Minter } from '../../sds-minter/index.js';
import { BUNDLE_FILE } from '../../sds-minter/ca.js';
import { EnvoyProcess } from '../../envoy/process.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { XDS_CLUSTER_NAME } from '../../envoy/bootstrap.js';
import { XDS } from '../../envoy/api/type-urls.js';

/*
 * The egress rungs with the client where it really is: a process in a gVisor sandbox, whose only
 * network is the Envoy egress listener, presenting the session credential the supervisor gave it
 * (through the proxy variables; the test passes nothing). The sandbox trusts the deployment CA from
 * its own trust store (the supervisor installs it), so a bumped TLS connection verifies with no flag.
 */

const gate = e2eGate(['envoy', 'docker', 'runsc', 'root', 'netns'], 'egress rungs from a gVisor sandbox');
const INSTANCE = 'e2e-egress-sbx';
const PORT = 8443;

describe.skipIf(!gate.ok)('egress from inside a gVisor sandbox, through a real Envoy', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-egress-sbx-'));
  let tn: TestNet;
  let up: Upstream;
  let dns: DnsServerProcess;
  let sup: Supervisor;
  let cp: ControlPlane;
  let envoy: EnvoyProcess;
  let sessionId: string;

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up', 'dns'] });
    const ca = createTestCa();
    const upCa = path.join(tmp, 'up-ca.pem');
    fs.writeFileSync(upCa, ca.certPem);
    const cert = ca.issueServerCert({ dnsNames: ['plain.sbx.test', 'api.sbx.test', '*.wild.sbx.test', '*.deep.wild.sbx.test'] });
    up = await startUpstream({ netns: tn.host('up').netns, port: PORT, tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    const upIp = tn.host('up').ip;
    dns = await startDnsServerIn({
      netns: tn.host('dns').netns,
      zone: {
        'plain.sbx.test': { A: [upIp] },
        'api.sbx.test': { A: [upIp] },
        'a.wild.sbx.test': { A: [upIp] },
        'b.deep.wild.sbx.test': { A: [upIp] },
        'inside.sbx.test': { A: ['10.1.2.3'] },
      },
    });
    const keyFile = path.join(tmp, 'api.token');
    fs.writeFileSync(keyFile, 'sandbox-never-sees-this\n', { mode: 0o600 });
    const ir = compileText(
      [
        'apiVersion: portcullis/v1',
        'kind: Policy',
        'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
        'egress:',
        '  rung: transparent',
        `  upstreamTrust: { caFile: ${upCa} }`,
        '  allow:',
        `    - { host: plain.sbx.test, ports: [${PORT}] }`,
        `    - { host: inside.sbx.test, ports: [${PORT}] }`,
        `    - { host: api.sbx.test, ports: [${PORT}], rung: bump, credential: api }`,
        `    - { host: "*.wild.sbx.test", ports: [${PORT}], rung: bump, credential: api }`,
        '  credentials:',
        `    - { name: api, header: authorization, format: "Bearer {secret}", source: { file: ${keyFile} } }`,
        '',
      ].join('\n'),
      { file: 'egress-sandbox.yaml', baseDir: tmp },
    );
    const minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'egress-sbx', policy: [], logger: silentLogger() });
    const egressPort = await freePort();
    await sweepInstance(INSTANCE);
    sup = new Supervisor({
      config: testConfig(INSTANCE, { egress: { port: egressPort }, caCertPemPath: path.join(tmp, 'minter', 'ca', BUNDLE_FILE), stateDir: path.join(tmp, 'sbx') }),
      logger: silentLogger(),
      events: new EventBus(),
    });
    await sup.start();
    const supervisor = sup;
    cp = new ControlPlane({
      logger: silentLogger(),
      nodeKey: 'egress-sbx',
      translate: {
        egress: {
          // as `portcullis up` serves it: every address, the sandbox pool only, a session on every tunnel
          listen: { address: '0.0.0.0', port: egressPort },
          sourcePrefixRanges: ['198.18.0.0/15'],
          dnsResolvers: [`${tn.host('dns').ip}:53`],
          accessLogCluster: XDS_CLUSTER_NAME,
          bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
          sessionsRequired: true,
        },
      },
      bump: { sessions: new JwtSessions({ jwks: () => supervisor.jwks() }), minter },
    });
    await cp.listen();
    const snap = cp.apply(ir, { immediate: true });
    envoy = await EnvoyProcess.start({ bootstrap: { nodeId: 'egress-sbx', xds: { port: cp.server.port } }, logger: silentLogger() });
    await envoy.waitConnected();
    await envoy.waitForVersion(XDS.listener, snap.version, 20_000);
    expect(rejectedUpdates(await envoy.admin.stats())).toEqual({});
    sessionId = (await sup.createSession('alice')).sessionId;
  });

  afterAll(async () => {
    await envoy?.stop();
    await sup?.stop().catch(() => undefined);
    await sweepInstance(INSTANCE).catch(() => undefined);
    await cp?.close();
    await up?.stop();
    await dns?.stop();
    await tn?.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const curl = async (url: string, extra: string[] = []) => {
    const r = await sup.exec(sessionId, { command: ['curl', '-sS', '-v', '--max-time', '20', ...extra, url], timeoutMs: 40_000 });
    return { ...r, reasons: [...r.stderr.matchAll(/< x-deny-reason: (\S+)/gi)].map((m) => m[1]) };
  };

  it('transparent: the upstream\'s own certificate (test CA), nothing terminated, nothing injected', async () => {
    await sup.writeFile(sessionId, '/workspace/up-ca.pem', fs.readFileSync(path.join(tmp, 'up-ca.pem'), 'utf8'));
    const before = up.requests().length;
    const r = await curl(`https://plain.sbx.test:${PORT}/t`, ['--cacert', '/workspace/up-ca.pem', '-H', 'Authorization: Bearer guest']);
    expect(r.exitCode, r.stderr).toBe(0);
    // (the upstream reports on its stdout, which can arrive after curl has its answer)
    await eventually(() => up.requests().length >= before + 1, 5000, 'the upstream\'s request event');
    const seen = up.requests().slice(before);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.headers.authorization).toBe('Bearer guest');
  });

  it('bump: the sandbox verifies the minted leaf with its own trust store; the credential is injected over the guest\'s', async () => {
    const before = up.requests().length;
    for (const host of ['api.sbx.test', 'a.wild.sbx.test', 'b.deep.wild.sbx.test']) {
      const r = await curl(`https://${host}:${PORT}/b`, ['-H', 'Authorization: Bearer guest-supplied']);
      expect(r.exitCode, `${host}: ${r.stderr}`).toBe(0);
      expect(r.stderr).toMatch(/issuer: .*Portcullis deployment CA/);
    }
    await eventually(() => up.requests().length >= before + 3, 5000, 'the upstream\'s request events');
    const seen = up.requests().slice(before);
    expect(seen.map((s) => s.sni)).toEqual(['api.sbx.test', 'a.wild.sbx.test', 'b.deep.wild.sbx.test']);
    expect(seen.every((s) => s.headers.authorization === 'Bearer sandbox-never-sees-this')).toBe(true);
    // and the value is nowhere the sandbox can read it
    const env = await sup.exec(sessionId, { command: ['sh', '-c', 'env; cat /proc/self/environ 2>/dev/null | tr "\\0" "\\n"; ls -R /workspace /tmp 2>/dev/null'] });
    expect(env.stdout).not.toContain('sandbox-never-sees-this');
  });

  it('refused with the reason visible to the guest: a host not allowed, a port not allowed, a name resolving into the deny-set', async () => {
    const before = up.requests().length;
    expect((await curl('https://other.sbx.test/')).reasons).toEqual(['destination_not_allowed']);
    expect((await curl(`https://plain.sbx.test:22/`)).reasons).toEqual(['port_not_allowed']);
    expect((await curl(`https://inside.sbx.test:${PORT}/`)).reasons).toEqual(['resolved_ip_denied']);
    expect(up.requests().length).toBe(before);
  });

  it('a process in the sandbox that drops the proxy credential gets nothing (session required on every tunnel)', async () => {
    const r = await curl(`https://plain.sbx.test:${PORT}/`, ['--proxy', `http://${sup.describe(sessionId)!.gateway}:${(await envoyEgressPort())}`, '--cacert', '/workspace/up-ca.pem']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/< HTTP\/1\.1 407/);
    expect(r.reasons).toEqual(['session_credential_missing']);
  });

  async function envoyEgressPort(): Promise<number> {
    const listeners = (await (await fetch(`${envoy.adminUrl}/listeners?format=json`)).json()) as { listener_statuses: Array<{ name: string; local_address: { socket_address: { port_value: number } } }> };
    return listeners.listener_statuses.find((l) => l.name === 'egress')!.local_address.socket_address.port_value;
  }
});
