import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate } from '../harness/e2e-gate.js';
import { createTestNet, type TestNet } from '../harness/netns.js';
import { createTestCa, type TestCa } from '../harness/test-ca.js';
import { startUpstream, type Upstream } from '../harness/upstream.js';

interface Reply {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
}

function request(opts: https.RequestOptions & { body?: string; tls?: boolean }): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const mod = opts.tls === false ? http : https;
    const req = mod.request({ timeout: 5000, ...opts }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

function errCode(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'ok',
    (e: NodeJS.ErrnoException) => String(e.code ?? e.message),
  );
}

describe('test CA (test/harness/test-ca.ts)', () => {
  it('issues leaves chained to the CA, with the SANs, validity and usage asked for', () => {
    const ca = createTestCa();
    const caCert = new X509Certificate(ca.certPem);
    expect(caCert.ca).toBe(true);
    const leaf = ca.issueServerCert({ dnsNames: ['api.example.test', '*.w.example.test'], ips: ['198.51.100.10', '2001:db8::1'] });
    const x = new X509Certificate(leaf.certPem);
    expect(x.ca).toBe(false);
    expect(x.checkIssued(caCert)).toBe(true);
    expect(x.verify(caCert.publicKey)).toBe(true);
    expect(x.subjectAltName).toBe('DNS:api.example.test, DNS:*.w.example.test, IP Address:198.51.100.10, IP Address:2001:DB8:0:0:0:0:0:1');
    expect(x.checkPrivateKey(createPrivateKey(leaf.keyPem))).toBe(true);
    expect(leaf.chainPem).toBe(leaf.certPem + ca.certPem);
    expect(new Date(x.validTo).getTime()).toBeGreaterThan(Date.now());

    const expired = new X509Certificate(ca.issueServerCert({ dnsNames: ['a.test'], expired: true, reuseKey: true }).certPem);
    expect(new Date(expired.validTo).getTime()).toBeLessThan(Date.now());
    const self = ca.issueServerCert({ dnsNames: ['a.test'], selfSigned: true, reuseKey: true });
    const sx = new X509Certificate(self.certPem);
    expect(sx.verify(caCert.publicKey)).toBe(false);
    expect(sx.verify(sx.publicKey)).toBe(true);
    expect(sx.issuer).toBe(sx.subject);
    expect(() => ca.issueServerCert({})).toThrow(/at least one/);
  });
});

const gate = e2eGate(['root', 'netns'], 'upstream');

describe.skipIf(!gate.ok)('echo upstream inside a test namespace', () => {
  let tn: TestNet;
  let ca: TestCa;
  const ups: Upstream[] = [];
  let tlsUp: Upstream;
  let plainUp: Upstream;

  beforeAll(async () => {
    tn = await createTestNet({ hosts: ['up1'] });
    ca = createTestCa();
    const ns = tn.host('up1').netns;
    [tlsUp, plainUp] = await Promise.all([
      startUpstream({ netns: ns, port: 443, name: 'good', h2: true, tls: ca.issueServerCert({ dnsNames: ['api.example.test'], ips: ['198.51.100.10'] }) }),
      startUpstream({ netns: ns, port: 80, name: 'plain' }),
    ]);
    ups.push(tlsUp, plainUp);
  });
  afterAll(async () => {
    await Promise.all(ups.map((u) => u.stop()));
    await tn?.destroy();
  });

  it('answers HTTPS with what it saw (SNI, TLS version, headers, body) and logs the connection', async () => {
    const r = await request({
      host: '198.51.100.10', port: 443, servername: 'api.example.test', ca: ca.certPem,
      method: 'POST', path: '/v1/thing?x=1', headers: { 'x-probe': 'one', authorization: 'Bearer guest' }, body: 'hello body',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as Record<string, unknown>;
    expect(seen).toMatchObject({
      name: 'good', method: 'POST', url: '/v1/thing?x=1', sni: 'api.example.test', tlsVersion: 'TLSv1.3',
      alpn: null, body: 'hello body', bodyBytes: 10, remoteAddress: '198.51.100.1',
    });
    expect((seen.headers as Record<string, string>)['x-probe']).toBe('one');
    const ev = await tlsUp.waitFor((e) => e.event === 'request' && e.url === '/v1/thing?x=1');
    expect(ev).toMatchObject({ sni: 'api.example.test', headers: { authorization: 'Bearer guest' } });
    const conn = tlsUp.connections().find((c) => c.conn === ev.conn);
    expect(conn).toMatchObject({ remoteAddress: '198.51.100.1', localPort: 443 });
    expect(await tlsUp.waitFor((e) => e.event === 'tls' && e.conn === ev.conn)).toMatchObject({ sni: 'api.example.test' });
  });

  it('speaks h2 when offered by ALPN', async () => {
    const session = http2.connect('https://198.51.100.10:443', { servername: 'api.example.test', ca: ca.certPem });
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const s = session.request({ ':path': '/h2', 'x-probe': 'two' });
        let b = '';
        s.setEncoding('utf8').on('data', (d: string) => (b += d));
        s.on('end', () => resolve(b));
        s.on('error', reject);
        s.end();
      });
      expect(JSON.parse(body)).toMatchObject({ url: '/h2', alpn: 'h2', httpVersion: '2.0', sni: 'api.example.test' });
    } finally {
      session.close();
    }
  });

  it('a client that does not trust the CA, or asks for another name, is refused', async () => {
    expect(await errCode(request({ host: '198.51.100.10', port: 443, servername: 'api.example.test' }))).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(await errCode(request({ host: '198.51.100.10', port: 443, servername: 'other.example.test', ca: ca.certPem }))).toBe(
      'ERR_TLS_CERT_ALTNAME_INVALID',
    );
  });

  it('serves expired and self-signed certificates that clients reject', async () => {
    const ns = tn.host('up1').netns;
    const [expired, selfSigned] = await Promise.all([
      startUpstream({ netns: ns, port: 8443, name: 'expired', tls: ca.issueServerCert({ dnsNames: ['api.example.test'], expired: true, reuseKey: true }) }),
      startUpstream({ netns: ns, port: 9443, name: 'self', tls: ca.issueServerCert({ dnsNames: ['api.example.test'], selfSigned: true, reuseKey: true }) }),
    ]);
    ups.push(expired, selfSigned);
    const o = { host: '198.51.100.10', servername: 'api.example.test', ca: ca.certPem };
    expect(await errCode(request({ ...o, port: 8443 }))).toBe('CERT_HAS_EXPIRED');
    expect(await errCode(request({ ...o, port: 9443 }))).toBe('DEPTH_ZERO_SELF_SIGNED_CERT');
    // The upstream saw the handshake fail on its side too.
    expect(await expired.waitFor((e) => e.event === 'tlsError')).toBeDefined();
  });

  it('plain HTTP: echo, status override and /bytes/N', async () => {
    const r = await request({ tls: false, host: '198.51.100.10', port: 80, path: '/a?status=418', headers: { host: 'plain.example.test' } });
    expect(r.status).toBe(418);
    expect(JSON.parse(r.body)).toMatchObject({ name: 'plain', url: '/a?status=418', sni: null, tlsVersion: null, headers: { host: 'plain.example.test' } });
    const big = await request({ tls: false, host: '198.51.100.10', port: 80, path: '/bytes/200000' });
    expect(big.body.length).toBe(200000);
    expect(big.headers['content-length']).toBe('200000');
  });
});
