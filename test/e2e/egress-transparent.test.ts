import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';
import { startDnsServerIn, type DnsServerProcess } from '../harness/dns-server.js';
import { createTestCa } from '../harness/test-ca.js';
import { freePort } from '../harness/ports.js';
import { compileText } from '../../policy/compile.js';
import { explain } from '../../policy/explain.js';
import type { Ir } from '../../policy/ir.js';
import type { ControlPlane } from '../../xds-server/control-plane.js';
import { stopAllEnvoys, type EnvoyProcess } from '../../envoy/process.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import type { NetworkEvent } from '../../xds-server/als.js';
import { startEgressStack } from '../harness/egress-stack.js';
import { eventually } from '../harness/ports.js';

/**
 * The transparent rung through a real Envoy: clients in their own network namespace use Envoy as an
 * explicit proxy; upstreams are TLS servers in namespaces on 198.51.100.0/24; names resolve through
 * the test's own DNS server. For every case, the client's outcome, what the upstream saw, and what
 * `portcullis policy explain` says must agree.
 */
const gate = e2eGate(['envoy', 'root', 'netns'], 'egress (transparent rung)');

const PORT = 8443;
const POLICY = `
apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress:
  rung: transparent
  allow:
    - { host: api.allowed.test, ports: [${PORT}] }
    - { host: "*.wild.test", ports: [${PORT}] }
    - { host: "straße.test", ports: [${PORT}] }
    - { host: blocked.allowed.test, ports: [${PORT}], rung: deny-all }
    - { host: private.allowed.test, ports: [${PORT}] }
    - { host: loop.allowed.test, ports: [${PORT}] }
    - { host: meta.allowed.test, ports: [${PORT}] }
    - { host: mapped.allowed.test, ports: [${PORT}] }
    - { host: ec2v6.allowed.test, ports: [${PORT}] }
    - { host: rebind.allowed.test, ports: [${PORT}] }
    - { host: 198.51.100.10, ports: [${PORT}] }
    - { host: "2001:db8:5100::a", ports: [${PORT}] }
storage:
  backends:
    - { host: store.test, ports: [${PORT}] }
`;

interface Case {
  /** what the client asks the proxy for (CONNECT authority) */
  authority: string;
  /** the name explain is asked about (defaults to authority) */
  dest?: string;
  allow: boolean;
  reason?: string;
  /** denied only once resolved: explain allows the name, Envoy refuses the address */
  resolvedDeny?: boolean;
  /** explain's reason when it is finer than Envoy's (same decision) */
  explainReason?: string;
  sni?: string;
}

const CASES: Case[] = [
  { authority: `api.allowed.test:${PORT}`, allow: true, sni: 'api.allowed.test' },
  { authority: `API.Allowed.TEST:${PORT}`, allow: true, sni: 'api.allowed.test' },
  { authority: `api.allowed.test.:${PORT}`, allow: true, sni: 'api.allowed.test' },
  { authority: `deep.a.b.wild.test:${PORT}`, allow: true, sni: 'deep.a.b.wild.test' },
  { authority: `xn--strae-oqa.test:${PORT}`, allow: true, sni: 'xn--strae-oqa.test' },
  { authority: `198.51.100.10:${PORT}`, allow: true },
  { authority: `[2001:db8:5100::a]:${PORT}`, dest: `[2001:db8:5100::a]:${PORT}`, allow: true },
  { authority: `wild.test:${PORT}`, allow: false, reason: 'destination_not_allowed' },
  { authority: `badwild.test:${PORT}`, allow: false, reason: 'destination_not_allowed' },
  { authority: `evil.test:${PORT}`, allow: false, reason: 'destination_not_allowed' },
  { authority: `api.allowed.test:443`, allow: false, reason: 'port_not_allowed' },
  { authority: `deep.wild.test:22`, allow: false, reason: 'port_not_allowed' },
  { authority: `blocked.allowed.test:${PORT}`, allow: false, reason: 'rung_deny_all' },
  { authority: `198.51.100.12:${PORT}`, allow: false, reason: 'destination_not_allowed' },
  // IP literals are allowed only when listed, and a listed one can never be inside the deny-set (a
  // policy error). Envoy refuses an unlisted literal as not allowed; explain, which can parse every
  // textual form of an address, names the deny-set as the reason. Same decision, finer reason.
  { authority: `127.0.0.1:${PORT}`, allow: false, reason: 'destination_not_allowed', explainReason: 'resolved_ip_denied' },
  { authority: `169.254.169.254:${PORT}`, allow: false, reason: 'destination_not_allowed', explainReason: 'resolved_ip_denied' },
  { authority: `[::ffff:127.0.0.1]:${PORT}`, allow: false, reason: 'destination_not_allowed', explainReason: 'resolved_ip_denied' },
  { authority: `private.allowed.test:${PORT}`, allow: false, reason: 'resolved_ip_denied', resolvedDeny: true },
  { authority: `loop.allowed.test:${PORT}`, allow: false, reason: 'resolved_ip_denied', resolvedDeny: true },
  { authority: `meta.allowed.test:${PORT}`, allow: false, reason: 'resolved_ip_denied', resolvedDeny: true },
  { authority: `mapped.allowed.test:${PORT}`, allow: false, reason: 'resolved_ip_denied', resolvedDeny: true },
  { authority: `ec2v6.allowed.test:${PORT}`, allow: false, reason: 'resolved_ip_denied', resolvedDeny: true },
];

describe.skipIf(!gate.ok)('egress, transparent rung, through a real Envoy', () => {
  let tn: TestNet;
  let up: Upstream;
  let dns: DnsServerProcess;
  let cp: ControlPlane;
  let envoy: EnvoyProcess;
  let ir: Ir;
  let egressPort: number;
  let storagePort: number;
  const netEvents: NetworkEvent[] = [];
  let caFile: string;
  let sentinel: net.Server;
  const sentinelHits: string[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-egress-'));

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up', 'dns', 'cli'], ipv6: true });
    const upIp = tn.host('up').ip;
    const ca = createTestCa();
    caFile = path.join(tmp, 'ca.pem');
    fs.writeFileSync(caFile, ca.certPem);
    const cert = ca.issueServerCert({
      dnsNames: ['api.allowed.test', '*.wild.test', '*.a.b.wild.test', 'xn--strae-oqa.test', 'rebind.allowed.test', 'store.test'],
      ips: [upIp, tn.host('up').ip6!],
    });
    up = await startUpstream({ netns: tn.host('up').netns, port: PORT, host: '::', tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    dns = await startDnsServerIn({
      netns: tn.host('dns').netns,
      zone: {
        'api.allowed.test': { A: [upIp] },
        'store.test': { A: [upIp] },
        '*.wild.test': { A: [upIp] },
        'xn--strae-oqa.test': { A: [upIp] },
        'blocked.allowed.test': { A: [upIp] },
        'private.allowed.test': { A: ['10.1.2.3'] },
        'loop.allowed.test': { A: ['127.0.0.1'] },
        'meta.allowed.test': { A: ['169.254.169.254'] },
        'mapped.allowed.test': { AAAA: ['::ffff:127.0.0.1'] },
        'ec2v6.allowed.test': { AAAA: ['fd00:ec2::254'] },
        // answers flip between a public and a loopback address on every query
        'rebind.allowed.test': { sequence: { A: [[upIp], ['127.0.0.1']], cycle: true } },
      },
    });
    // A sentinel on loopback: nothing the proxy is asked for may ever reach it.
    sentinel = net.createServer((s) => {
      sentinelHits.push(String(s.remoteAddress));
      s.destroy();
    });
    await new Promise<void>((r) => sentinel.listen(PORT, '127.0.0.1', r));

    ir = compileText(POLICY, { file: 'egress-test.yaml', baseDir: tmp });
    egressPort = await freePort();
    storagePort = await freePort();
    const resolvers = [`${tn.host('dns').ip}:53`];
    ({ cp, envoy } = await startEgressStack({
      nodeKey: 'egress-e2e',
      ir,
      translate: {
        egress: { listen: { address: tn.rootIp, port: egressPort }, dnsResolvers: resolvers, dnsRefreshSeconds: 1, accessLogCluster: 'portcullis_xds' },
        storage: { listen: { address: '127.0.0.1', port: storagePort }, dnsResolvers: resolvers, accessLogCluster: 'portcullis_xds' },
      },
      onNetworkEvent: (e) => netEvents.push(e),
    }));
  });

  afterAll(async () => {
    await stopAllEnvoys();
    await cp?.close();
    await up?.stop();
    await dns?.stop();
    await tn?.destroy();
    sentinel?.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** curl in the client namespace through the proxy; returns the proxy's CONNECT answer and the body. */
  async function viaProxy(authority: string): Promise<{ connectStatus: number; denyReason?: string; body: string; exit: number }> {
    const [host, port] = splitAuthority(authority);
    const r = await tn.runIn(
      'cli',
      'curl',
      ['-sS', '-v', '--max-time', '10', '--proxy', `http://${tn.rootIp}:${egressPort}`, '--proxytunnel', '--cacert', caFile,
        '--connect-to', `::${host}:${port}`, `https://${host.replace(/^\[|\]$/g, '').includes(':') ? host : host}:${port}/probe`],
      { check: false, timeoutMs: 20_000 },
    );
    const m = /< HTTP\/1\.1 (\d{3})/.exec(r.stderr);
    const deny = /< x-deny-reason: (\S+)/i.exec(r.stderr);
    return { connectStatus: m ? Number(m[1]) : 0, denyReason: deny?.[1], body: r.stdout, exit: r.code };
  }

  it('Envoy accepted the configuration (no rejected updates)', async () => {
    expect(rejectedUpdates(await envoy.admin.stats()), JSON.stringify(cp.status().lastNack)).toEqual({});
  });

  it.each(CASES)('$authority → $allow $reason', async (c) => {
    const seenBefore = up.connections().length;
    const r = await viaProxy(c.authority);
    const e = explain(ir, c.dest ?? c.authority);
    if (c.allow) {
      expect(r.connectStatus, `proxy answer for ${c.authority}`).toBe(200);
      const req = JSON.parse(r.body) as { url: string; sni: string | null };
      expect(req.url).toBe('/probe');
      if (c.sni) expect(req.sni).toBe(c.sni);
      expect(e.decision).toBe('allow');
      expect(e.rung).toBe('transparent');
    } else {
      expect(r.connectStatus, `proxy answer for ${c.authority}`).toBe(403);
      expect(r.denyReason).toBe(c.reason);
      expect(up.connections().length, 'the upstream must see no connection').toBe(seenBefore);
      if (c.resolvedDeny) {
        // explain reasons over names; the deny-set applies to what the name resolves to
        expect(e.decision).toBe('allow');
      } else {
        expect(e.decision).toBe('deny');
        expect(e.reason).toBe(c.explainReason ?? c.reason);
      }
    }
    expect(sentinelHits).toEqual([]);
    // every request is access-logged to the control plane with its outcome and reason
    const host = c.authority.toLowerCase().replace(/\.:/, ':');
    const ev = await eventually(
      () => netEvents.find((x) => x.lane === 'egress' && x.authority.toLowerCase().replace(/\.:/, ':') === host && (c.allow ? x.status === 200 : x.status === 403)),
      10_000,
      `the access log entry for ${c.authority}`,
    );
    expect(ev.reason).toBe(c.allow ? null : c.reason);
    if (c.allow) expect(ev.bytesOut + ev.bytesIn).toBeGreaterThan(0);
  });

  it('storage lane: a listed backend is reached end to end (the client verifies the backend\'s own certificate); others are refused; every connection is logged', async () => {
    const curl = async (url: string, extra: string[] = []) => {
      const { execFile } = await import('node:child_process');
      return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile('curl', ['-sS', '-v', '--max-time', '10', '--proxy', `http://127.0.0.1:${storagePort}`, '--cacert', caFile, ...extra, url], (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
    };
    const ok = await curl(`https://store.test:${PORT}/object`, ['--proxytunnel']);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ url: '/object', sni: 'store.test' });
    expect(ok.stderr).toMatch(/issuer: .*Portcullis test CA|issuer:/i);
    const other = await curl(`https://api.allowed.test:${PORT}/`, ['--proxytunnel']);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toMatch(/x-deny-reason: destination_not_allowed/i);
    // the storage lane is CONNECT only: a plain absolute-form request is refused
    const plain = await curl(`http://store.test:${PORT}/`);
    expect(plain.stderr).toMatch(/< HTTP\/1\.1 403/);
    expect(plain.stderr).toMatch(/< x-deny-reason: destination_not_allowed/i);
    expect(plain.stdout).not.toMatch(/"url"/);
    await eventually(() => netEvents.some((x) => x.lane === 'storage' && x.authority === `store.test:${PORT}` && x.status === 200), 10_000, 'storage log entry');
    await eventually(() => netEvents.some((x) => x.lane === 'storage' && x.status === 403 && x.reason === 'destination_not_allowed'), 10_000, 'storage denial log entry');
  });

  it('a name whose answer flips to loopback (rebinding) never reaches loopback', async () => {
    const outcomes: number[] = [];
    for (let i = 0; i < 6; i++) {
      outcomes.push((await viaProxy(`rebind.allowed.test:${PORT}`)).connectStatus);
      await new Promise((r) => setTimeout(r, 700)); // past the DNS cache refresh
    }
    expect(sentinelHits).toEqual([]);
    // every attempt either reached the real upstream or was refused; none went anywhere else
    for (const s of outcomes) expect([200, 403]).toContain(s);
    const stats = await envoy.admin.stats();
    expect(stats['dns_cache.egress_dns.dns_address_filter_out'] ?? 0).toBeGreaterThan(0);
  });
});

function splitAuthority(a: string): [string, string] {
  const i = a.lastIndexOf(':');
  return [a.slice(0, i), a.slice(i + 1)];
}
