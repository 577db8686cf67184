import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JWK } from 'jose';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn, type DnsServerProcess } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { eventually, freePort } from '../harness/ports.js';
import { PolicyWatcher } from '../../policy/watch.js';
import { explain } from '../../policy/explain.js';
import type { Ir } from '../../policy/ir.js';
import { ControlPlane } from '../../xds-server/control-plane.js';
import { XdsServer } from '../../xds-server/server.js';
import { buildSnapshot } from '../../xds-server/snapshot.js';
import { JwtSessions } from '../../xds-server/sessions.js';
import { testSessionKey, type TestSessionKey } from '../harness/session-keys.js';
import { Minter } from '../../sds-minter/index.js';
import { EnvoyProcess, stopAllEnvoys } from '../../envoy/process.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { XDS_CLUSTER_NAME } from '../../envoy/bootstrap.js';
import { XDS } from '../../envoy/api/type-urls.js';
import { silentLogger } from '../../common/logger.js';

/**
 * The bump rung through a real Envoy: TLS terminated with a per-SNI leaf minted by sds-minter and
 * served over SDS, Host pinned to SNI, upstream TLS re-originated with strict validation, the
 * credential injected (overwriting the guest's) only into requests of a tunnel with a valid,
 * unrevoked session.
 */
const gate = e2eGate(['envoy', 'root', 'netns'], 'egress (bump rung)');
const PORT = 8443;
const HTTP_PORT = 8080;

describe.skipIf(!gate.ok)('egress, bump rung, through a real Envoy', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-bump-'));
  let tn: TestNet;
  let up: Upstream;
  let bad: Upstream;
  let self: Upstream;
  let plainHttp: Upstream;
  let dns: DnsServerProcess;
  let cp: ControlPlane;
  let envoy: EnvoyProcess;
  let watcher: PolicyWatcher;
  let minter: Minter;
  let sessions: JwtSessions;
  /** the session signer's public keys as the edge is given them, and who is told when they change */
  let signerKeys: JWK[] = [];
  const keyWatchers = new Set<() => void>();
  let customerSds: XdsServer;
  let ir: Ir;
  let egressPort: number;
  let deploymentCaFile: string;
  let jwk: JWK;
  const keyFile = path.join(tmp, 'upstream.key');

  let token: TestSessionKey['token'];

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up', 'bad', 'self', 'dns', 'cli'] });
    const ca = createTestCa();
    const upCaFile = path.join(tmp, 'upstream-ca.pem');
    fs.writeFileSync(upCaFile, ca.certPem);
    const good = ca.issueServerCert({ dnsNames: ['api.bump.test', 'other.bump.test', 'plain.bump.test', 'vendor.bump.test', '*.wild.bump.test', '*.y.wild.bump.test'] });
    const expired = ca.issueServerCert({ dnsNames: ['expired.bump.test'], expired: true });
    const selfSigned = ca.issueServerCert({ dnsNames: ['selfsigned.bump.test'], selfSigned: true });
    up = await startUpstream({ netns: tn.host('up').netns, port: PORT, tls: { certPem: good.certPem, keyPem: good.keyPem } });
    bad = await startUpstream({ netns: tn.host('bad').netns, port: PORT, tls: { certPem: expired.certPem, keyPem: expired.keyPem } });
    self = await startUpstream({ netns: tn.host('self').netns, port: PORT, tls: { certPem: selfSigned.certPem, keyPem: selfSigned.keyPem } });
    // plain HTTP on the same host, for absolute-form requests (`http://…` through the proxy)
    plainHttp = await startUpstream({ netns: tn.host('up').netns, port: HTTP_PORT, name: 'plain-http' });
    dns = await startDnsServerIn({
      netns: tn.host('dns').netns,
      zone: {
        'api.bump.test': { A: [tn.host('up').ip] },
        'other.bump.test': { A: [tn.host('up').ip] },
        'expired.bump.test': { A: [tn.host('bad').ip] },
        'selfsigned.bump.test': { A: [tn.host('self').ip] },
        'plain.bump.test': { A: [tn.host('up').ip] },
        'vendor.bump.test': { A: [tn.host('up').ip] },
        'loop.bump.test': { A: ['127.0.0.1'] },
        'a.wild.bump.test': { A: [tn.host('up').ip] },
        'x.y.wild.bump.test': { A: [tn.host('up').ip] },
      },
    });
    fs.writeFileSync(keyFile, 's3cret-v1\n', { mode: 0o600 });
    // The customer's own SDS server (standing in: a separate SDS server the policy names, on the
    // test net); Portcullis's control plane never holds this credential.
    customerSds = new XdsServer({ logger: silentLogger(), allowNonLoopback: true });
    await customerSds.listen(`${tn.rootIp}:0`);
    customerSds.cache.setNow('bump-e2e', buildSnapshot({ [XDS.secret]: [{ name: 'vendor/api-key', generic_secret: { secret: { inline_string: 'vendor-secret-1' } } }] }));
    const policyFile = path.join(tmp, 'policy.yaml');
    fs.writeFileSync(
      policyFile,
      [
        'apiVersion: portcullis/v1',
        'kind: Policy',
        'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
        'egress:',
        '  rung: transparent',
        `  upstreamTrust: { caFile: ${upCaFile} }`,
        '  allow:',
        `    - { host: api.bump.test, ports: [${PORT}], rung: bump, credential: upstream-key }`,
        `    - { host: other.bump.test, ports: [${PORT}], rung: bump }`,
        `    - { host: expired.bump.test, ports: [${PORT}], rung: bump }`,
        `    - { host: selfsigned.bump.test, ports: [${PORT}], rung: bump }`,
        `    - { host: plain.bump.test, ports: [${PORT}, ${HTTP_PORT}] }`,
        `    - { host: loop.bump.test, ports: [${PORT}], rung: bump }`,
        `    - { host: "*.wild.bump.test", ports: [${PORT}], rung: bump, credential: upstream-key }`,
        `    - { host: vendor.bump.test, ports: [${PORT}], rung: external-sds, credential: vendor-key }`,
        '  credentials:',
        `    - { name: upstream-key, header: authorization, format: "Bearer {secret}", source: { file: ${keyFile} } }`,
        `    - { name: vendor-key, header: x-api-key, format: "key {secret}", source: { sds: { server: customer, name: vendor/api-key } } }`,
        '  sdsServers:',
        `    - { name: customer, address: "${tn.rootIp}:${customerSds.port}" }`,
        '',
      ].join('\n'),
    );

    const key = await testSessionKey();
    token = key.token;
    jwk = key.jwk;
    signerKeys = [jwk];
    sessions = new JwtSessions({
      jwks: () => ({ keys: signerKeys }),
      onKeysChange: (l) => {
        keyWatchers.add(l);
        return () => keyWatchers.delete(l);
      },
    });
    minter = await Minter.open({ dataDir: path.join(tmp, 'minter'), deploymentId: 'bump-e2e', policy: [], logger: silentLogger() });
    deploymentCaFile = path.join(tmp, 'deployment-ca.pem');
    fs.writeFileSync(deploymentCaFile, minter.bundlePem());

    egressPort = await freePort();
    cp = new ControlPlane({
      logger: silentLogger(),
      nodeKey: 'bump-e2e',
      translate: {
        egress: {
          listen: { address: tn.rootIp, port: egressPort },
          dnsResolvers: [`${tn.host('dns').ip}:53`],
          accessLogCluster: XDS_CLUSTER_NAME,
          bump: { controlPlaneCluster: XDS_CLUSTER_NAME },
          sessionsRequired: true,
        },
      },
      bump: { sessions, minter },
    });
    await cp.listen();
    watcher = new PolicyWatcher({ file: policyFile, logger: silentLogger() });
    ir = await watcher.start();
    // credential file rotated → re-publish (what `portcullis up` does on the same event)
    watcher.on('credentials', () => cp.apply(watcher.current()!));
    const snap = cp.apply(ir, { immediate: true });
    envoy = await EnvoyProcess.start({ bootstrap: { nodeId: 'bump-e2e', xds: { port: cp.server.port } }, logger: silentLogger() });
    await envoy.waitConnected();
    await envoy.waitForVersion(XDS.listener, snap.version, 20_000);
  });

  afterAll(async () => {
    watcher?.stop();
    await stopAllEnvoys();
    await cp?.close();
    await customerSds?.close(200);
    for (const u of [up, bad, self, plainHttp]) await u?.stop();
    await dns?.stop();
    await tn?.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  async function curl(url: string, opts: { token?: string; headers?: string[]; proxyHeaders?: string[]; connectTo?: string; cacert?: string } = {}) {
    const proxy = opts.token ? `http://session:${opts.token}@${tn.rootIp}:${egressPort}` : `http://${tn.rootIp}:${egressPort}`;
    const args = ['-sS', '-v', '--max-time', '10', '--proxy', proxy, '--cacert', opts.cacert ?? deploymentCaFile];
    for (const h of opts.headers ?? []) args.push('-H', h);
    for (const h of opts.proxyHeaders ?? []) args.push('--proxy-header', h);
    if (opts.connectTo) args.push('--connect-to', opts.connectTo);
    args.push(url);
    const r = await tn.runIn('cli', 'curl', args, { check: false, timeoutMs: 20_000 });
    const statuses = [...r.stderr.matchAll(/< HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    const reasons = [...r.stderr.matchAll(/< x-deny-reason: (\S+)/gi)].map((m) => m[1]);
    return { ...r, statuses, reasons };
  }

  it('Envoy accepted the bump configuration, and serves a minted leaf for each bump host', async () => {
    expect(rejectedUpdates(await envoy.admin.stats()), JSON.stringify(cp.status().lastNack)).toEqual({});
    const certs = JSON.stringify(await envoy.admin.certs());
    expect(certs).toContain('api.bump.test');
    expect(explain(ir, `api.bump.test:${PORT}`)).toMatchObject({ decision: 'allow', rung: 'bump', credential: 'upstream-key' });
  });

  it('with a valid session: 200, TLS by the deployment CA, the credential injected over the guest\'s', async () => {
    const before = up.requests().length;
    const r = await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-ok'), headers: ['Authorization: Bearer guest-supplied'] });
    expect(r.code, r.stderr).toBe(0);
    expect(r.statuses).toEqual([200, 200]);
    // the guest verified the leaf with the deployment CA only
    expect(r.stderr).toMatch(/issuer: .*Portcullis deployment CA/);
    const seen = up.requests().slice(before);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.headers.authorization).toBe('Bearer s3cret-v1');
    expect(seen[0]!.sni).toBe('api.bump.test');
    expect(JSON.stringify(seen[0]!.headers)).not.toContain('x-portcullis');
    expect(JSON.stringify(seen[0]!.headers)).not.toContain('guest-supplied');
  });

  it('a wildcard rule: a leaf per SNI at any depth, minted when Envoy asks for it during the handshake', async () => {
    // nothing is minted ahead of time for the wildcard
    expect(JSON.stringify(await envoy.admin.certs())).not.toContain('wild.bump.test');
    expect([...cp.snapshot!.resources.get(XDS.secret)!.keys()].some((n) => n.includes('wild'))).toBe(false);
    const before = up.requests().length;
    const wildLog: Record<string, string> = {};
    for (const host of ['a.wild.bump.test', 'x.y.wild.bump.test', 'A.Wild.Bump.Test']) {
      const r = await curl(`https://${host}:${PORT}/wild`, { token: await token('s-wild') });
      wildLog[host] = r.stderr;
      expect(r.code, `${host}: ${r.stderr}`).toBe(0);
      expect(r.statuses).toEqual([200, 200]);
      expect(r.stderr).toMatch(/issuer: .*Portcullis deployment CA/);
    }
    const seen = up.requests().slice(before);
    expect(seen.map((s) => s.sni?.toLowerCase())).toEqual(['a.wild.bump.test', 'x.y.wild.bump.test', 'a.wild.bump.test']);
    expect(seen.every((s) => s.headers.authorization === 'Bearer s3cret-v1')).toBe(true);
    // each handshake got a leaf covering exactly the name's parent domain (never wider than the rule)
    expect(wildLog['x.y.wild.bump.test']).toMatch(/subjectAltName: host "x\.y\.wild\.bump\.test" matched cert's "\*\.y\.wild\.bump\.test"/);
    expect(wildLog['a.wild.bump.test']).toMatch(/subjectAltName: host "a\.wild\.bump\.test" matched cert's "\*\.wild\.bump\.test"/);
    // served per SNI, as Envoy asked for them
    const secrets = [...cp.snapshot!.resources.get(XDS.secret)!.keys()];
    expect(secrets).toEqual(expect.arrayContaining(['a.wild.bump.test', 'x.y.wild.bump.test']));
    // the control plane served them on demand
    expect(cp.metrics.total('sds_on_demand_leaves_total')).toBeGreaterThanOrEqual(2);
  });

  it('a guest cannot pass itself off as another session: its own session header is dropped before anything reads it', async () => {
    const victim = 'victim-session-id';
    const denied = await curl(`https://nothere.bump.test:${PORT}/`, { token: await token('s-attacker'), proxyHeaders: [`x-portcullis-session: ${victim}`] });
    expect(denied.reasons).toEqual(['destination_not_allowed']);
    const allowed = await curl(`https://plain.bump.test:${PORT}/`, { token: await token('s-attacker'), proxyHeaders: [`x-portcullis-session: ${victim}`, 'x-portcullis-authority: api.bump.test:8443'] });
    expect(allowed.statuses[0]).toBe(200);
    await eventually(
      () => cp.events.history().some((e) => JSON.stringify(e.data).includes('nothere.bump.test')) && cp.events.history().some((e) => e.sessionId === 's-attacker' && JSON.stringify(e.data).includes('plain.bump.test')),
      10_000,
      'both tunnels access-logged',
    );
    // no event anywhere names the victim; the allowed tunnel is the attacker's own
    expect(cp.events.history().filter((e) => e.sessionId === victim || JSON.stringify(e.data).includes(victim))).toEqual([]);
  });

  it('without a session: the tunnel is refused (407 session_credential_missing); the upstream sees nothing', async () => {
    const before = up.connections().length;
    const r = await curl(`https://api.bump.test:${PORT}/probe`);
    expect(r.statuses[0]).toBe(407);
    expect(r.reasons[0]).toBe('session_credential_missing');
    const forged = await curl(`https://api.bump.test:${PORT}/probe`, { token: 'not-a-jwt' });
    expect(forged.statuses[0]).toBe(407);
    const expired = await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-old', -60) });
    expect(expired.statuses[0]).toBe(403);
    expect(expired.reasons[0]).toBe('session_expired');
    // a destination the policy refuses anyway says so, session or not (its virtual host asks for none)
    const elsewhere = await curl(`https://nothere.bump.test:${PORT}/probe`);
    expect(elsewhere.statuses[0]).toBe(403);
    expect(elsewhere.reasons[0]).toBe('destination_not_allowed');
    expect(up.connections().length).toBe(before);
  });

  it('the token as a Bearer proxy credential works too, checked by Envoy alone; no proxy credential goes further than Envoy', async () => {
    const stats = async () => await envoy.admin.stats('jwt_authn');
    const s0 = await stats();
    const tok = await token('s-bearer');
    const before = up.requests().length;
    const r = await curl(`https://api.bump.test:${PORT}/probe`, { proxyHeaders: [`Proxy-Authorization: Bearer ${tok}`], headers: [`Proxy-Authorization: Basic ${Buffer.from(`session:${tok}`).toString('base64')}`] });
    expect(r.statuses, r.stderr).toEqual([200, 200]);
    const seen = up.requests().slice(before);
    expect(seen).toHaveLength(1);
    expect(JSON.stringify(seen[0]!.headers)).not.toContain(tok.slice(-20));
    expect(seen[0]!.headers['proxy-authorization']).toBeUndefined();
    // Envoy's own session check counted the tunnel; the egress listener has no ext_authz at all
    const s1 = await stats();
    expect((s1['http.egress.jwt_authn.allowed'] ?? 0) - (s0['http.egress.jwt_authn.allowed'] ?? 0)).toBe(1);
    // the listener names the check's filter config, which Envoy holds from ECDS
    const listeners = JSON.stringify(await envoy.admin.configDump('dynamic_listeners'));
    expect(listeners).toContain('"portcullis.session_jwt"');
    expect(listeners).toContain('config_discovery');
    const ecds = JSON.stringify(await envoy.admin.configDump());
    expect(ecds).toMatch(/EcdsConfigDump/);
    expect(ecds).toContain('jwt_authn.v3.JwtAuthentication');
    // (its version is that of the last publication that changed it, not necessarily the newest)
    const ecdsVersions = await envoy.versions(XDS.extensionConfig);
    expect(ecdsVersions.resources).toEqual([{ name: 'portcullis.session_jwt', version: expect.stringMatching(/^(v-)?[0-9a-f]{12,16}/), state: 'active' }]);
    expect(ecdsVersions.errors).toEqual([]);
    expect((await envoy.admin.stats('ext_authz'))['http.egress.ext_authz.ok']).toBeUndefined();
  });

  it('an absolute-form http:// request: the session is checked and recorded, and nothing of ours or the guest\'s proxy credential reaches the upstream', async () => {
    const tok = await token('s-absolute');
    const before = plainHttp.requests().length;
    const r = await curl(`http://plain.bump.test:${HTTP_PORT}/absolute`, { token: tok });
    expect(r.statuses, r.stderr).toEqual([200]);
    await plainHttp.waitFor((e) => e.event === 'request' && e.url === '/absolute', 5000);
    const seen = plainHttp.requests().slice(before);
    expect(seen).toHaveLength(1);
    const headers = JSON.stringify(seen[0]!.headers);
    expect(headers).not.toContain('x-portcullis');
    expect(headers).not.toContain('proxy-authorization');
    expect(headers).not.toContain(tok.slice(-20));
    // the access log still names the session (the tripwire counts its bytes)
    await eventually(() => cp.events.history().some((e) => e.sessionId === 's-absolute' && JSON.stringify(e.data).includes(`plain.bump.test:${HTTP_PORT}`)), 5000, 'the request access-logged with its session');
    const none = await curl(`http://plain.bump.test:${HTTP_PORT}/absolute-none`);
    expect(none.statuses[0]).toBe(407);
    expect(none.reasons[0]).toBe('session_credential_missing');
  });

  it('Host ≠ SNI inside a bumped tunnel → refused (sni_mismatch); so is a CONNECT to one name carrying the SNI of another', async () => {
    const before = up.requests().length;
    const hostSwap = await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-host'), headers: ['Host: other.bump.test'] });
    expect(hostSwap.statuses).toEqual([200, 403]);
    expect(hostSwap.reasons).toEqual(['sni_mismatch']);
    // CONNECT api.bump.test, then TLS with SNI other.bump.test
    const sniSwap = await curl(`https://other.bump.test:${PORT}/probe`, { token: await token('s-sni'), connectTo: `other.bump.test:${PORT}:api.bump.test:${PORT}` });
    expect(sniSwap.stderr).toMatch(/CONNECT api\.bump\.test:8443/);
    expect(sniSwap.statuses).toEqual([200, 403]);
    expect(sniSwap.reasons).toEqual(['sni_mismatch']);
    // an SNI that is no bump host gets no handshake at all
    const unknown = await curl(`https://evil.test:${PORT}/probe`, { token: await token('s-evil'), connectTo: `evil.test:${PORT}:api.bump.test:${PORT}` });
    expect(unknown.code).not.toBe(0);
    expect(up.requests().length).toBe(before);
  });

  it('an upstream with an expired or self-signed certificate → 503, fail-closed', async () => {
    for (const host of ['expired.bump.test', 'selfsigned.bump.test']) {
      const r = await curl(`https://${host}:${PORT}/probe`, { token: await token(`s-${host}`) });
      expect(r.statuses, host).toEqual([200, 503]);
    }
    expect(bad.requests()).toHaveLength(0);
    expect(self.requests()).toHaveLength(0);
  });

  /** A CONNECT tunnel held open by test/harness/scripts/tunnel-client.py; `send` returns its next answer. */
  function openTunnel(tok: string) {
    const child = tn.spawnIn('cli', 'python3', ['test/harness/scripts/tunnel-client.py', tn.rootIp, String(egressPort), `api.bump.test:${PORT}`, tok, deploymentCaFile, 'api.bump.test'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines = readline.createInterface({ input: child.stdout! });
    const next = () => new Promise<Record<string, unknown>>((resolve) => lines.once('line', (l) => resolve(JSON.parse(l))));
    const send = (line: string) => {
      const r = next();
      child.stdin!.write(`${line}\n`);
      return r;
    };
    return { child, next, send };
  }

  it('a revoked session is cut inside an already-open tunnel at its next request, by Envoy alone, and gets no credential', async () => {
    const t = openTunnel(await token('s-revoke'));
    try {
      expect(String((await t.next()).connect)).toMatch(/ 200 /);
      expect(await t.send(`GET api.bump.test:${PORT} /one Bearer guest`)).toMatchObject({ status: 200 });
      // a Host on another port than the tunnel's is refused too (Envoy's RBAC condition, no call out)
      expect(await t.send(`GET api.bump.test /default-port`)).toMatchObject({ status: 403, reason: 'sni_mismatch' });
      const before = up.requests().length;
      const t0 = Date.now();
      sessions.revoke('s-revoke');
      // the control plane publishes the session's deny route at once; Envoy holds it within ms
      await eventually(async () => cp.snapshot!.resources.get(XDS.route)!.get('bump:api.bump.test')!.body && JSON.stringify(cp.snapshot!.resources.get(XDS.route)!.get('bump:api.bump.test')!.body).includes('s-revoke'), 2000, 'the deny route published');
      await envoy.waitForVersion(XDS.route, cp.snapshot!.version, 5000);
      const enforcedMs = Date.now() - t0;
      expect(enforcedMs).toBeLessThan(5000);
      expect(await t.send(`GET api.bump.test:${PORT} /two Bearer guest`)).toMatchObject({ status: 403, reason: 'session_revoked' });
      expect(up.requests().length).toBe(before);
      // and its next tunnel is refused by the egress route table's RBAC, with the same reason
      const again = await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-revoke') });
      expect(again.statuses[0]).toBe(403);
      expect(again.reasons[0]).toBe('session_revoked');
      expect(up.requests().length).toBe(before);
      // the refusal is an audit event from Envoy's access log, attributed to the session
      await eventually(
        () => cp.events.history().some((e) => e.type === 'network.denied' && e.sessionId === 's-revoke' && (e.data as { reason?: string }).reason === 'session_revoked'),
        5000,
        'the in-tunnel refusal access-logged',
      );
    } finally {
      t.child.kill();
    }
  });

  it('a session whose credential expires is refused inside its open tunnel (session_expired), by Envoy\'s clock alone', async () => {
    // valid for 2 s (plus Envoy's 5 s clock skew)
    const expiresAt = Date.now() + 2_000;
    const t = openTunnel(await token('s-expiring', 2));
    try {
      expect(String((await t.next()).connect)).toMatch(/ 200 /);
      expect(await t.send(`GET api.bump.test:${PORT} /before`)).toMatchObject({ status: 200 });
      const version = cp.snapshot!.version;
      await new Promise((r) => setTimeout(r, Math.max(0, expiresAt + 1_000 + 5_000 - Date.now())));
      const before = up.requests().length;
      expect(await t.send(`GET api.bump.test:${PORT} /after`)).toMatchObject({ status: 403, reason: 'session_expired' });
      expect(up.requests().length).toBe(before);
      // nothing was published for it: the tunnel carries its token's expiry, and Envoy checks it
      expect(cp.snapshot!.version).toBe(version);
    } finally {
      t.child.kill();
    }
  });

  it('new signer keys reach Envoy without draining the egress listener: an open tunnel carries on, the new key\'s tokens pass, a dropped key\'s do not', async () => {
    const next = await testSessionKey('k2');
    const listenerStats = async () => await envoy.admin.stats('listener_manager');
    const t = openTunnel(await token('s-keys'));
    try {
      expect(String((await t.next()).connect)).toMatch(/ 200 /);
      expect(await t.send(`GET api.bump.test:${PORT} /keys-1`)).toMatchObject({ status: 200 });
      const before = await listenerStats();
      // a token of a key Envoy was never given is refused
      const early = await curl(`https://api.bump.test:${PORT}/probe`, { token: await next.token('s-new') });
      expect(early.reasons[0]).toBe('session_credential_missing');

      signerKeys = [jwk, next.jwk];
      for (const w of keyWatchers) w();
      await eventually(async () => (await curl(`https://api.bump.test:${PORT}/probe`, { token: await next.token('s-new') })).statuses[0] === 200, 5000, 'the new key in Envoy');
      signerKeys = [next.jwk];
      for (const w of keyWatchers) w();
      await eventually(async () => (await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-old-key') })).reasons[0] === 'session_credential_missing', 5000, 'the old key gone from Envoy');

      // the listener was never modified (so never drained): the tunnel opened before carries on
      const after = await listenerStats();
      expect(after['listener_manager.listener_modified']).toBe(before['listener_manager.listener_modified']);
      expect(after['listener_manager.total_listeners_draining'] ?? 0).toBe(0);
      expect(await t.send(`GET api.bump.test:${PORT} /keys-2`)).toMatchObject({ status: 200 });
    } finally {
      t.child.kill();
      // the first key back for the tests that follow
      signerKeys = [jwk, next.jwk];
      for (const w of keyWatchers) w();
      await eventually(async () => (await curl(`https://api.bump.test:${PORT}/probe`, { token: await token('s-back') })).statuses[0] === 200, 5000, 'the first key back');
    }
  });

  it('a rotated credential file is injected within seconds, and the old value never after', async () => {
    fs.writeFileSync(`${keyFile}.new`, 's3cret-v2\n', { mode: 0o600 });
    fs.renameSync(`${keyFile}.new`, keyFile);
    const t0 = Date.now();
    const tok = await token('s-rotate');
    await eventually(async () => {
      const before = up.requests().length;
      await curl(`https://api.bump.test:${PORT}/probe`, { token: tok });
      return up.requests().slice(before)[0]?.headers.authorization === 'Bearer s3cret-v2';
    }, 10_000, 'the new credential upstream');
    expect(Date.now() - t0).toBeLessThan(5000 + 3000);
    const before = up.requests().length;
    for (let i = 0; i < 3; i++) await curl(`https://api.bump.test:${PORT}/probe`, { token: tok });
    expect(up.requests().slice(before).map((q) => q.headers.authorization)).toEqual(['Bearer s3cret-v2', 'Bearer s3cret-v2', 'Bearer s3cret-v2']);
  });

  it('transparent destinations need a valid session too when sessions are required; a revoked one is refused at its next tunnel', async () => {
    const r0 = await curl(`https://plain.bump.test:${PORT}/probe`);
    expect(r0.statuses[0]).toBe(407);
    expect(r0.reasons[0]).toBe('session_credential_missing');
    const tok = await token('s-plain');
    const r1 = await curl(`https://plain.bump.test:${PORT}/probe`, { token: tok, cacert: path.join(tmp, 'upstream-ca.pem') });
    expect(r1.statuses).toEqual([200, 200]);
    // not bumped: the client sees the upstream's own certificate (signed by the upstream test CA)
    expect(r1.stderr).not.toMatch(/Portcullis deployment CA/);
    sessions.revoke('s-plain');
    expect(await cp.sessionDenialsEnforced()).toBe(true);
    const r2 = await curl(`https://plain.bump.test:${PORT}/probe`, { token: tok, cacert: path.join(tmp, 'upstream-ca.pem') });
    expect(r2.statuses[0]).toBe(403);
    expect(r2.reasons[0]).toBe('session_revoked');
  });

  it('external-sds: the credential comes from the customer\'s SDS server, and Portcullis never holds it', async () => {
    const before = up.requests().length;
    const r = await curl(`https://vendor.bump.test:${PORT}/probe`, { token: await token('s-vendor'), headers: ['x-api-key: guest'] });
    expect(r.statuses, r.stderr).toEqual([200, 200]);
    expect(up.requests().slice(before)[0]!.headers['x-api-key']).toBe('key vendor-secret-1');
    const ours = cp.snapshot!.resources.get(XDS.secret)!;
    expect([...ours.keys()]).not.toContain('vendor/api-key');
    expect(JSON.stringify([...ours.values()].map((x) => x.body))).not.toContain('vendor-secret-1');
  });

  it('a bump host that resolves into the deny-set is refused (resolved_ip_denied)', async () => {
    const r = await curl(`https://loop.bump.test:${PORT}/probe`, { token: await token('s-loop') });
    expect(r.statuses).toEqual([200, 403]);
    expect(r.reasons).toEqual(['resolved_ip_denied']);
  });

  it('the minted leaf verifies with openssl against the deployment CA, with the right SAN', async () => {
    const leaf = minter.leaf('api.bump.test');
    const leafFile = path.join(tmp, 'leaf.pem');
    fs.writeFileSync(leafFile, leaf.certPem);
    expect(execFileSync('openssl', ['verify', '-CAfile', deploymentCaFile, leafFile], { encoding: 'utf8' })).toMatch(/OK/);
    expect(execFileSync('openssl', ['x509', '-in', leafFile, '-noout', '-ext', 'subjectAltName'], { encoding: 'utf8' })).toMatch(/DNS:api\.bump\.test/);
  });
});
