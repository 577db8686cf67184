import { execFileSync } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDnsServer, ipv6Bytes, type DnsServer, type DnsServerProcess, startDnsServerIn } from '../harness/dns-server.js';
import { e2eGate, REQUIRE_E2E } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';

const ZONE = {
  'api.example.test': { A: ['198.51.100.10', '198.51.100.11'], AAAA: ['2001:db8:5100::a'], ttl: 30 },
  '*.w.example.test': { A: ['198.51.100.12'] },
  'v4only.example.test': { A: ['198.51.100.13'] },
  'mapped.example.test': { AAAA: ['::ffff:127.0.0.1', '64:ff9b::a9fe:a9fe'] },
  'rebind.example.test': { sequence: { A: [['198.51.100.10'], ['127.0.0.1']] } },
};

function errCode(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'resolved',
    (e: NodeJS.ErrnoException) => String(e.code),
  );
}

describe('dns-server in process (loopback)', () => {
  let dns: DnsServer;
  let r: Resolver;
  beforeAll(async () => {
    dns = await createDnsServer({ zone: ZONE, port: 0, host: '127.0.0.1' });
    r = new Resolver({ timeout: 2000, tries: 1 });
    r.setServers([`127.0.0.1:${dns.port}`]);
  });
  afterAll(async () => {
    await dns?.close();
  });

  it('encodes IPv6 addresses, including embedded IPv4 forms', () => {
    expect(ipv6Bytes('2001:db8:5100::a').toString('hex')).toBe('20010db8' + '5100' + '0000'.repeat(4) + '000a');
    expect(ipv6Bytes('::1').toString('hex')).toBe('0'.repeat(31) + '1');
    expect(ipv6Bytes('::').toString('hex')).toBe('0'.repeat(32));
    expect(ipv6Bytes('::ffff:127.0.0.1').toString('hex')).toBe('00000000000000000000ffff7f000001');
    expect(ipv6Bytes('64:ff9b::10.0.0.1').toString('hex')).toBe('0064ff9b0000000000000000' + '0a000001');
    expect(ipv6Bytes('1:2:3:4:5:6:7:8').toString('hex')).toBe('00010002000300040005000600070008');
    expect(() => ipv6Bytes('198.51.100.1')).toThrow();
  });

  it('answers A and AAAA from the zone, case-insensitively, with the TTL', async () => {
    expect((await r.resolve4('API.example.test')).sort()).toEqual(['198.51.100.10', '198.51.100.11']);
    expect(await r.resolve6('api.example.test')).toEqual(['2001:db8:5100::a']);
    expect(await r.resolve4('api.example.test', { ttl: true })).toContainEqual({ address: '198.51.100.10', ttl: 30 });
    expect(await r.resolve6('mapped.example.test')).toEqual(['::ffff:127.0.0.1', '64:ff9b::a9fe:a9fe']);
  });

  it('wildcards match one or more labels below, not the name itself', async () => {
    expect(await r.resolve4('x.w.example.test')).toEqual(['198.51.100.12']);
    expect(await r.resolve4('a.b.w.example.test')).toEqual(['198.51.100.12']);
    expect(await errCode(r.resolve4('w.example.test'))).toBe('ENOTFOUND');
  });

  it('NXDOMAIN for unknown names, NODATA for a known name without that type', async () => {
    expect(await errCode(r.resolve4('nope.example.test'))).toBe('ENOTFOUND');
    expect(await errCode(r.resolve6('v4only.example.test'))).toBe('ENODATA');
    expect(dns.queries.at(-1)).toMatchObject({ name: 'v4only.example.test', type: 'AAAA', rcode: 'NOERROR', answers: [] });
  });

  it('flips answers per query for rebinding, and set() changes answers at once', async () => {
    expect(await r.resolve4('rebind.example.test')).toEqual(['198.51.100.10']);
    expect(await r.resolve4('rebind.example.test')).toEqual(['127.0.0.1']);
    expect(await r.resolve4('rebind.example.test')).toEqual(['127.0.0.1']);
    dns.set('rebind.example.test', { sequence: { A: [['198.51.100.10'], ['10.0.0.1']], cycle: true } });
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push((await r.resolve4('rebind.example.test'))[0]);
    expect(seen).toEqual(['198.51.100.10', '10.0.0.1', '198.51.100.10', '10.0.0.1']);
    dns.delete('rebind.example.test');
    expect(await errCode(r.resolve4('rebind.example.test'))).toBe('ENOTFOUND');
    expect(() => dns.set('bad.example.test', { A: ['not-an-ip'] })).toThrow(/not an IPv4/);
  });
});

const gate = e2eGate(['root', 'netns'], 'dns-server in a namespace');
let digPath: string | undefined;
try {
  digPath = execFileSync('sh', ['-c', 'command -v dig'], { encoding: 'utf8' }).trim() || undefined;
} catch {
  digPath = undefined;
}
if (gate.ok && !digPath) {
  const line = '[portcullis] dns e2e: SKIPPING — missing: dig (apt-get install bind9-dnsutils; scripts/prereqs.sh)';
  if (REQUIRE_E2E) throw new Error(line);
  process.stderr.write(`\n${line}\n`);
}

describe.skipIf(!gate.ok || !digPath)('dns-server in a test namespace, queried with dig', () => {
  let tn: TestNet;
  let dns: DnsServerProcess;
  const dig = async (args: string[], from?: string): Promise<string> => {
    const argv = [`@${tn.host('dns').ip}`, '+time=2', '+tries=1', ...args];
    if (from) return (await tn.runIn(from, 'dig', argv, { timeoutMs: 10_000 })).stdout;
    return execFileSync('dig', argv, { encoding: 'utf8', timeout: 10_000 });
  };
  const short = async (name: string, type: string, from?: string): Promise<string[]> =>
    (await dig(['+short', name, type], from)).split('\n').filter((l) => l !== '').sort();

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['dns', 'cli'] });
    dns = await startDnsServerIn({ netns: tn.host('dns').netns, zone: ZONE });
  });
  afterAll(async () => {
    await dns?.stop();
    await tn?.destroy();
  });

  it('answers dig from the root namespace and from another test host', async () => {
    expect(dns.port).toBe(53);
    expect(await short('api.example.test', 'A')).toEqual(['198.51.100.10', '198.51.100.11']);
    expect(await short('api.example.test', 'AAAA')).toEqual(['2001:db8:5100::a']);
    expect(await short('api.example.test', 'A', 'cli')).toEqual(['198.51.100.10', '198.51.100.11']);
    const full = await dig(['nope.example.test', 'A']);
    expect(full).toMatch(/status: NXDOMAIN/);
    expect(full).toMatch(/flags: qr aa/);
    // The server's log lines arrive over a pipe, possibly after dig has returned.
    await dns.waitFor((e) => e.event === 'query' && e.name === 'nope.example.test', 5000);
    const queries = dns.queries();
    expect(queries.some((q) => q.name === 'api.example.test' && q.from.startsWith('198.51.100.11:'))).toBe(true);
    expect(queries.some((q) => q.name === 'api.example.test' && q.from.startsWith('198.51.100.1:'))).toBe(true);
    expect(queries.find((q) => q.name === 'nope.example.test')).toMatchObject({ rcode: 'NXDOMAIN', answers: [] });
  });

  it('flips answers per query, and takes zone changes over stdin', async () => {
    expect(await short('rebind.example.test', 'A')).toEqual(['198.51.100.10']);
    expect(await short('rebind.example.test', 'A')).toEqual(['127.0.0.1']);
    await dns.set('late.example.test', { A: ['198.51.100.14'] });
    expect(await short('late.example.test', 'A')).toEqual(['198.51.100.14']);
    await dns.delete('late.example.test');
    expect(await dig(['late.example.test', 'A'])).toMatch(/status: NXDOMAIN/);
    await expect(dns.set('bad.example.test', { AAAA: ['198.51.100.1'] })).rejects.toThrow(/not an IPv6/);
  });
});
