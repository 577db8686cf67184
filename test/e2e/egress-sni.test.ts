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
import { compileText } from '../../policy/compile.js';
import type { Ir } from '../../policy/ir.js';
import type { ControlPlane } from '../../xds-server/control-plane.js';
import { stopAllEnvoys, type EnvoyProcess } from '../../envoy/process.js';
import { rejectedUpdates } from '../../envoy/admin.js';
import { SNI_VERDICT_WAIT_MS, type NetworkEvent } from '../../xds-server/als.js';
import { startEgressStack } from '../harness/egress-stack.js';
import { SNI } from '../../xds-server/translate/sni.js';

/**
 * The transparent rung's SNI check through a real Envoy: a TLS tunnel's ClientHello must name the
 * CONNECT authority's host. Clients (curl, openssl s_client) in their own network namespace use
 * Envoy as an explicit proxy; the upstream is a TLS echo server in a namespace whose certificate
 * covers every name used here, so a refusal can only come from the proxy. For each refused case:
 * the client gets no TLS session, the upstream sees no TCP connection, and the control plane's
 * access-log receiver emits `network.denied` with reason `sni_mismatch`.
 */
const gate = e2eGate(['envoy', 'root', 'netns'], 'egress (transparent rung, SNI check)');

const PORT = 8443;
const POLICY = `
apiVersion: portcullis/v1
kind: Policy
deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }
egress:
  rung: transparent
  allow:
    - { host: api.allowed.test, ports: [${PORT}] }
    - { host: other.allowed.test, ports: [${PORT}] }
    - { host: "*.x.test", ports: [${PORT}] }
    - { host: private.allowed.test, ports: [${PORT}] }
    - { host: 198.51.100.10, ports: [${PORT}] }
`;

describe.skipIf(!gate.ok)('egress, transparent rung: the ClientHello SNI must be the CONNECT authority', () => {
  let tn: TestNet;
  let up: Upstream;
  let dns: DnsServerProcess;
  let cp: ControlPlane;
  let envoy: EnvoyProcess;
  let ir: Ir;
  let egressPort: number;
  const netEvents: NetworkEvent[] = [];
  let caFile: string;
  let clientScript: string;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pc-egress-sni-'));

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up', 'dns', 'cli'] });
    const upIp = tn.host('up').ip;
    const ca = createTestCa();
    caFile = path.join(tmp, 'ca.pem');
    fs.writeFileSync(caFile, ca.certPem);
    clientScript = path.join(tmp, 'tls-client.mjs');
    fs.writeFileSync(clientScript, TLS_CLIENT);
    // the upstream would happily serve every name: only the proxy can refuse
    const cert = ca.issueServerCert({ dnsNames: ['api.allowed.test', 'other.allowed.test', '*.x.test', '*.a.x.test', 'evil.test'], ips: [upIp] });
    up = await startUpstream({ netns: tn.host('up').netns, port: PORT, host: '0.0.0.0', tls: { certPem: cert.certPem, keyPem: cert.keyPem } });
    dns = await startDnsServerIn({
      netns: tn.host('dns').netns,
      zone: {
        'api.allowed.test': { A: [upIp] },
        'other.allowed.test': { A: [upIp] },
        '*.x.test': { A: [upIp] },
        'evil.test': { A: [upIp] },
        'private.allowed.test': { A: ['10.1.2.3'] },
      },
    });
    ir = compileText(POLICY, { file: 'egress-sni-test.yaml', baseDir: tmp });
    egressPort = await freePort();
    ({ cp, envoy } = await startEgressStack({
      nodeKey: 'egress-sni-e2e',
      ir,
      translate: {
        egress: { listen: { address: tn.rootIp, port: egressPort }, dnsResolvers: [`${tn.host('dns').ip}:53`], dnsRefreshSeconds: 5, accessLogCluster: 'portcullis_xds' },
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
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const proxy = () => `http://${tn.rootIp}:${egressPort}`;

  /**
   * curl through the proxy: CONNECT `authority`, then TLS with SNI (and Host) `sni` — curl's
   * `--connect-to` sends the CONNECT for the target while the URL names the TLS server.
   */
  async function tunnel(authority: string, sni: string, extra: string[] = []): Promise<{ connectStatus: number; body: string; exit: number; stderr: string }> {
    const i = authority.lastIndexOf(':');
    const r = await tn.runIn(
      'cli',
      'curl',
      ['-sS', '-v', '--max-time', '10', '--proxy', proxy(), '--proxytunnel', '--cacert', caFile, '--connect-to', `::${authority.slice(0, i)}:${authority.slice(i + 1)}`, ...extra, `https://${sni}:${PORT}/probe`],
      { check: false, timeoutMs: 20_000 },
    );
    const m = /< HTTP\/1\.1 (\d{3})/.exec(r.stderr);
    return { connectStatus: m ? Number(m[1]) : 0, body: r.stdout, exit: r.code, stderr: r.stderr };
  }

  /**
   * A TLS client with exact control of the SNI bytes (case, none at all), as a Node script in the
   * client namespace: CONNECT over HTTP/1.1, then a TLS handshake with `servername` ('' = no SNI).
   */
  async function handshake(authority: string, servername: string): Promise<{ ok: boolean; out: string }> {
    const r = await tn.runIn('cli', process.execPath, [clientScript, tn.rootIp, String(egressPort), authority, servername, caFile], { check: false, timeoutMs: 20_000 });
    return { ok: /"url":\s*"\/probe"/.test(r.stdout), out: r.stdout + r.stderr };
  }

  async function expectRefused(authority: string, run: () => Promise<unknown>, sni?: string | null) {
    const seen = up.connections().length;
    const before = netEvents.length;
    await run();
    // no TCP connection reached the upstream, and the refusal is audited with its reason
    const ev = await eventually(
      () => netEvents.slice(before).find((x) => x.lane === SNI.logName && x.reason === 'sni_mismatch' && x.authority.toLowerCase() === authority.toLowerCase()),
      10_000,
      `the sni_mismatch event for ${authority}`,
    );
    expect(ev.status).toBe(403);
    if (sni !== undefined) expect(ev.sni ?? null).toBe(sni);
    expect(up.connections().length, 'the upstream must see no connection').toBe(seen);
  }

  it('Envoy accepted the configuration (no rejected updates)', async () => {
    expect(rejectedUpdates(await envoy.admin.stats())).toEqual({});
  });

  it('the fields newer than the bundled protos (envoy/api/overlay.ts) are live in Envoy as sent', async () => {
    const dump = JSON.parse(await envoy.admin.get('/config_dump?resource=dynamic_listeners')) as { configs: Array<{ active_state?: { listener?: Record<string, any> } }> }; // eslint-disable-line @typescript-eslint/no-explicit-any
    const listener = (name: string) => dump.configs.map((c) => c.active_state?.listener).find((l) => l?.name === name)!;
    const b = listener(SNI.listener);
    const filters = b.filter_chains[0].filters as Array<{ name: string; typed_config: Record<string, any> }>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const tcp = filters.find((f) => f.name === 'envoy.filters.network.tcp_proxy')!.typed_config;
    expect(tcp.upstream_connect_mode).toBe('ON_DOWNSTREAM_DATA');
    expect(tcp.max_early_data_bytes).toBe(65536);
    const rbac = filters.find((f) => f.name === 'envoy.filters.network.rbac')!.typed_config;
    expect(rbac.rules.policies[SNI.policy].cel_config).toEqual({ enable_string_conversion: true, enable_string_concat: true, enable_string_functions: true });
    const a = listener('egress');
    const hop = (a.filter_chains[0].filters[0].typed_config.http_filters as Array<{ name: string; typed_config: Record<string, unknown> }>).find((f) => f.name === 'portcullis.sni_hop')!;
    expect(hop.typed_config.clear_route_cache).toBe(true);
    const routes = JSON.parse(await envoy.admin.get('/config_dump?resource=dynamic_route_configs')) as { configs: Array<{ route_config: { virtual_hosts: Array<{ routes: Array<{ name?: string; match: Record<string, unknown> }> }> } }> };
    const tunnelRoute = routes.configs.flatMap((c) => c.route_config.virtual_hosts).flatMap((v) => v.routes).find((r) => r.name === 'sni-tunnel')!;
    expect(tunnelRoute.match.filter_state).toEqual([{ key: SNI.authorityKey, string_match: { safe_regex: { regex: '.+' } } }]);
  });

  it('CONNECT api.allowed.test with SNI api.allowed.test: tunnelled, the upstream serves it', async () => {
    const seen = up.connections().length;
    const r = await tunnel(`api.allowed.test:${PORT}`, 'api.allowed.test');
    expect(r.connectStatus).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ url: '/probe', sni: 'api.allowed.test' });
    expect(up.connections().length).toBe(seen + 1);
  });

  it('CONNECT api.allowed.test with SNI of a name not allowed (evil.test): refused before the upstream', async () => {
    await expectRefused(`api.allowed.test:${PORT}`, async () => {
      const r = await tunnel(`api.allowed.test:${PORT}`, 'evil.test');
      expect(r.exit).not.toBe(0);
      expect(r.body).not.toMatch(/"url"/);
    }, 'evil.test');
  });

  it('CONNECT api.allowed.test with SNI of another allowed name (domain fronting): refused', async () => {
    await expectRefused(`api.allowed.test:${PORT}`, async () => {
      const r = await tunnel(`api.allowed.test:${PORT}`, 'other.allowed.test');
      expect(r.exit).not.toBe(0);
      expect(r.body).not.toMatch(/"url"/);
    }, 'other.allowed.test');
  });

  it('wildcard *.x.test: CONNECT a.x.test with SNI b.x.test is refused, with SNI a.x.test it works', async () => {
    await expectRefused(`a.x.test:${PORT}`, async () => {
      const r = await tunnel(`a.x.test:${PORT}`, 'b.x.test');
      expect(r.exit).not.toBe(0);
    });
    const ok = await tunnel(`a.x.test:${PORT}`, 'a.x.test');
    expect(ok.connectStatus).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ url: '/probe', sni: 'a.x.test' });
  });

  it('case and a trailing dot in the authority, case in the SNI: no false refusal', async () => {
    for (const authority of [`A.X.Test:${PORT}`, `API.Allowed.TEST:${PORT}`, `api.allowed.test.:${PORT}`, `deep.a.x.test.:${PORT}`]) {
      const host = authority.slice(0, authority.lastIndexOf(':')).replace(/\.$/, '').toLowerCase();
      const r = await tunnel(authority, host);
      expect(r.connectStatus, authority).toBe(200);
      expect(JSON.parse(r.body), authority).toMatchObject({ url: '/probe', sni: host });
    }
    // the SNI bytes exactly as sent, upper case
    const seen = up.connections().length;
    const h = await handshake(`a.x.test:${PORT}`, 'A.X.Test');
    expect(h.ok, h.out).toBe(true);
    expect(up.connections().length).toBe(seen + 1);
  });

  it('a ClientHello without SNI to a name is refused (sni_mismatch)', async () => {
    await expectRefused(`api.allowed.test:${PORT}`, async () => {
      const h = await handshake(`api.allowed.test:${PORT}`, '');
      expect(h.out).toMatch(/connect 200/);
      expect(h.ok, h.out).toBe(false);
    }, null);
  });

  it('plain HTTP inside a CONNECT tunnel to a name is refused (sni_mismatch); absolute-form http:// is not a tunnel', async () => {
    await expectRefused(`api.allowed.test:${PORT}`, async () => {
      const r = await tn.runIn('cli', 'curl', ['-sS', '-v', '--max-time', '10', '--proxy', proxy(), '--proxytunnel', `http://api.allowed.test:${PORT}/plain`], { check: false, timeoutMs: 20_000 });
      expect(r.stdout).not.toMatch(/"url"/);
    });
  });

  it('a tunnel to a name that sends nothing (server speaks first) is closed after the listener timeout and audited', async () => {
    await expectRefused(`api.allowed.test:${PORT}`, async () => {
      const h = await handshake(`api.allowed.test:${PORT}`, '-silent');
      expect(h.out).toMatch(/connect 200/);
      const ms = Number(/closed after (\d+) ms/.exec(h.out)?.[1]);
      expect(ms).toBeGreaterThanOrEqual(9_000);
      expect(ms).toBeLessThan(15_000);
    });
  });

  it('a refused tunnel is one network.denied event, linked to the tunnel; the CONNECT\'s own final 200 entry is not recorded as egress', async () => {
    const refusals = netEvents.filter((x) => x.lane === SNI.logName && x.reason === 'sni_mismatch' && x.tunnelStreamId);
    expect(refusals.length).toBeGreaterThanOrEqual(4);
    // every egress entry of those tunnels has had time to arrive (ALS flush + the verdict wait)
    await new Promise((r) => setTimeout(r, SNI_VERDICT_WAIT_MS + 1500));
    const ids = new Set(refusals.map((x) => x.tunnelStreamId));
    // the tunnel's final entry on the egress listener is not recorded (its intermediate entries, if
    // the tunnel stayed open long enough for one, are: they come before the verdict)
    const linked = netEvents.filter((x) => x.lane === 'egress' && ids.has(x.streamId));
    expect(linked.filter((x) => !x.intermediate)).toEqual([]);
    expect(linked.every((x) => x.method === 'CONNECT' && x.intermediate)).toBe(true);
    expect(cp.metrics.total('als_refused_tunnel_entries_total')).toBeGreaterThanOrEqual(refusals.length);
    // a tunnel that passed the check is recorded as egress, as before
    expect(netEvents.some((x) => x.lane === 'egress' && x.method === 'CONNECT' && x.status === 200 && /api\.allowed\.test/i.test(x.authority))).toBe(true);
  });

  it('an IP-literal authority keeps the direct path: no SNI needed', async () => {
    const seen = up.connections().length;
    const r = await tunnel(`198.51.100.10:${PORT}`, '198.51.100.10');
    expect(r.connectStatus).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ url: '/probe', sni: null });
    expect(up.connections().length).toBe(seen + 1);
  });

  it('a name resolving only into the deny-set is still answered 403 resolved_ip_denied at CONNECT', async () => {
    const r = await tunnel(`private.allowed.test:${PORT}`, 'private.allowed.test');
    expect(r.connectStatus).toBe(403);
    expect(r.stderr).toMatch(/< x-deny-reason: resolved_ip_denied/i);
  });

  it('Envoy counted the refusals in its own RBAC stats', async () => {
    const stats = await envoy.admin.stats();
    expect(stats[`${SNI.listener}.rbac.denied`] ?? 0).toBeGreaterThanOrEqual(5);
    expect(stats[`${SNI.listener}.rbac.allowed`] ?? 0).toBeGreaterThanOrEqual(5);
  });

  it('added latency of the check: name (SNI-checked, internal listener hop) vs IP literal (direct), same upstream', async () => {
    // one client process, tunnels back to back: proxy connect → CONNECT → TLS → request → response
    const run = async (authority: string, sni: string, n: number) => {
      const r = await tn.runIn('cli', process.execPath, [clientScript, tn.rootIp, String(egressPort), authority, sni, caFile, String(n)], { check: true, timeoutMs: 90_000 });
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as number[];
    };
    const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;
    await run(`api.allowed.test:${PORT}`, 'api.allowed.test', 10); // warm DNS cache, pools, JIT
    await run(`198.51.100.10:${PORT}`, '', 10);
    const direct: number[] = [];
    const checked: number[] = [];
    for (let round = 0; round < 4; round++) {
      direct.push(...(await run(`198.51.100.10:${PORT}`, '', 50)));
      checked.push(...(await run(`api.allowed.test:${PORT}`, 'api.allowed.test', 50)));
    }
    const ratio = pct(checked, 0.5) / pct(direct, 0.5);
    console.log(
      `[egress-sni latency] N=${direct.length} each, interleaved: direct (IP literal, no check) p50 ${pct(direct, 0.5).toFixed(2)} ms p90 ${pct(direct, 0.9).toFixed(2)} ms; ` +
        `SNI-checked (name) p50 ${pct(checked, 0.5).toFixed(2)} ms p90 ${pct(checked, 0.9).toFixed(2)} ms; ratio p50 ${ratio.toFixed(2)}, added p50 ${(pct(checked, 0.5) - pct(direct, 0.5)).toFixed(2)} ms`,
    );
    expect(ratio).toBeLessThan(3);
  });
});

/**
 * argv: proxyHost proxyPort authority servername caFile [count]. One run prints `connect <status>`,
 * then the body; with a count it runs that many tunnels back to back and prints their timings (ms,
 * proxy TCP connect → response complete) as JSON.
 */
const TLS_CLIENT = `
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
const [host, port, authority, servername, caFile, count] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);
function once(log) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let body = '';
    const done = (code) => { sock.destroy(); resolve({ code, ms: performance.now() - t0, body }); };
    const sock = net.connect(Number(port), host, () => sock.write('CONNECT ' + authority + ' HTTP/1.1\\r\\nHost: ' + authority + '\\r\\n\\r\\n'));
    let head = '';
    const onData = (d) => {
      head += d.toString('latin1');
      const i = head.indexOf('\\r\\n\\r\\n');
      if (i < 0) return;
      sock.off('data', onData);
      const status = Number(head.split(' ')[1]);
      if (log) console.log('connect ' + status);
      if (status !== 200) return done(2);
      if (servername === '-silent') {
        // a server-speaks-first protocol: send nothing, wait for the proxy to give up
        sock.on('close', () => { console.log('closed after ' + Math.round(performance.now() - t0) + ' ms'); done(0); });
        return;
      }
      const t = tls.connect({ socket: sock, servername, ca, checkServerIdentity: () => undefined }, () => {
        t.write('GET /probe HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
      });
      t.on('data', (b) => { body += b.toString('utf8'); if (log) process.stdout.write(b); });
      t.on('error', (e) => { if (log) console.log('tls error ' + e.message); done(3); });
      t.on('end', () => done(0));
    };
    sock.on('data', onData);
    sock.on('error', (e) => { if (log) console.log('socket error ' + e.message); done(4); });
  });
}
setTimeout(() => { console.log('timeout'); process.exit(5); }, 60000).unref();
if (!count) {
  const r = await once(true);
  process.exit(r.code);
} else {
  const ms = [];
  for (let i = 0; i < Number(count); i++) {
    const r = await once(false);
    if (r.code !== 0 || !r.body.includes('/probe')) { console.log('failed ' + r.code); process.exit(6); }
    ms.push(r.ms);
  }
  console.log(JSON.stringify(ms));
}
`;
