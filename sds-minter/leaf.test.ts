import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { inspect } from 'node:util';
import { silentLogger } from '../common/logger.js';
import { CaStore, constraintsForHosts } from './ca.js';
import { CaUnavailableError } from './errors.js';
import { DEFAULT_LEAF_TTL_MS, issueLeaf, type Leaf } from './leaf.js';
import { parseName, type ParsedName } from './names.js';
import { FakeClock, openssl, tempDir, verifyWithOpenssl, x509Text } from './testutil.js';

const name = (n: string): ParsedName => {
  const p = parseName(n);
  if (p === null) throw new Error(`bad test name ${n}`);
  return p;
};

const sec = (ms: number) => Math.floor(ms / 1000) * 1000;

describe('issueLeaf', () => {
  const tmp = tempDir();
  const clock = new FakeClock(Date.now());
  let store: CaStore;

  beforeAll(async () => {
    store = await CaStore.open({ dir: join(tmp.dir, 'ca'), deploymentId: 'dep1', logger: silentLogger(), clock: clock.fn });
  });
  afterAll(() => tmp.cleanup());

  const mint = (n: string, ttlMs = DEFAULT_LEAF_TTL_MS): Leaf => issueLeaf(store.current, name(n), { now: clock.now, ttlMs });

  it('issues a host leaf that openssl verifies against the CA, with the leaf profile', () => {
    const leaf = mint('api.example.com');
    const v = verifyWithOpenssl(tmp.dir, leaf.certPem, store.bundlePem(), clock.now);
    expect(v).toMatchObject({ ok: true });
    expect(openssl(['version']).ok).toBe(true);
    const text = x509Text(tmp.dir, leaf.certPem);
    expect(text).toMatch(/Version: 3 \(0x2\)/);
    expect(text).toMatch(/Subject: CN = api.example.com\n/);
    expect(text).toMatch(/Subject Alternative Name: \n\s+DNS:api.example.com\n/);
    expect(text).toMatch(/Extended Key Usage: \n\s+TLS Web Server Authentication\n/);
    expect(text).toMatch(/Basic Constraints: critical\n\s+CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\n\s+Digital Signature, Key Encipherment\n/);
    expect(text).toMatch(/Signature Algorithm: sha256WithRSAEncryption/);
    const aki = /Authority Key Identifier: \n\s+(?:keyid:)?([0-9A-F:]+)/.exec(text)?.[1];
    expect(aki?.replace(/:/g, '').toLowerCase()).toBe(store.current.keyId);
    expect(text).toMatch(/Subject Key Identifier/);

    const x = new X509Certificate(leaf.certPem);
    expect(new Date(x.validFrom).getTime()).toBe(sec(clock.now - 5 * 60_000));
    expect(new Date(x.validTo).getTime()).toBe(sec(clock.now + 12 * 3600_000));
    expect(leaf.notAfter.getTime()).toBe(new Date(x.validTo).getTime());
    expect(leaf.notBefore.getTime()).toBe(new Date(x.validFrom).getTime());
    expect(x.checkIssued(new X509Certificate(store.current.certPem))).toBe(true);
    expect(leaf.chainPem).toBe(leaf.certPem + store.current.certPem);
  });

  it('uses random positive 128-bit serials and one key pair per CA generation', () => {
    const leaves = Array.from({ length: 20 }, (_, i) => mint(`h${i}.example.com`));
    const serials = leaves.map((l) => new X509Certificate(l.certPem).serialNumber);
    expect(new Set(serials).size).toBe(20);
    for (const s of serials) {
      expect(s).toMatch(/^[0-9A-F]{32}$/);
      expect(parseInt(s.slice(0, 2), 16)).toBeLessThan(0x80);
      expect(parseInt(s.slice(0, 2), 16)).toBeGreaterThan(0);
    }
    const spki = leaves.map((l) =>
      new X509Certificate(l.certPem).publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),
    );
    expect(new Set(spki).size).toBe(1);
  });

  it('issues wildcard leaves that match exactly one label', () => {
    const leaf = mint('*.example.org');
    const text = x509Text(tmp.dir, leaf.certPem);
    expect(text).toMatch(/DNS:\*\.example\.org\n/);
    expect(text).toMatch(/Subject: CN = \*\.example\.org\n/);
    const bundle = store.bundlePem();
    const at = (host: string) =>
      openssl(['verify', '-no-CApath', '-no-CAstore', '-attime', String(Math.floor(clock.now / 1000)), '-CAfile', write(bundle), '-verify_hostname', host, write(leaf.certPem)]);
    expect(at('a.example.org')).toMatchObject({ ok: true });
    expect(at('a.b.example.org').ok).toBe(false);
    expect(at('example.org').ok).toBe(false);
  });

  it('issues IP leaves with an iPAddress SAN', () => {
    const leaf = mint('198.51.100.7');
    const text = x509Text(tmp.dir, leaf.certPem);
    expect(text).toMatch(/Subject Alternative Name: \n\s+IP Address:198.51.100.7\n/);
    const r = openssl(['verify', '-no-CApath', '-no-CAstore', '-attime', String(Math.floor(clock.now / 1000)), '-CAfile', write(store.bundlePem()), '-verify_ip', '198.51.100.7', write(leaf.certPem)]);
    expect(r).toMatchObject({ ok: true });
    const v6 = mint('2001:db8::1');
    expect(x509Text(tmp.dir, v6.certPem)).toMatch(/IP Address:2001:DB8:0:0:0:0:0:1/);
  });

  it('caps the lifetime at the CA notAfter and refuses when the CA is about to expire', async () => {
    const t = tempDir();
    try {
      const c = new FakeClock(clock.now);
      const short = await CaStore.open({ dir: join(t.dir, 'ca'), deploymentId: 'dep1', logger: silentLogger(), clock: c.fn, validityMs: 2 * 3600_000 });
      const leaf = issueLeaf(short.current, name('api.example.com'), { now: c.now, ttlMs: 12 * 3600_000 });
      expect(leaf.notAfter.getTime()).toBe(short.current.notAfter.getTime());
      expect(verifyWithOpenssl(t.dir, leaf.certPem, short.bundlePem(), c.now)).toMatchObject({ ok: true });
      const late = c.now + 2 * 3600_000 - 60_000;
      expect(() => issueLeaf(short.current, name('api.example.com'), { now: late, ttlMs: 12 * 3600_000 })).toThrow(CaUnavailableError);
    } finally {
      t.cleanup();
    }
  });

  it('completes a TLS handshake for the SNI with a client that trusts only the CA, and fails for another name', async () => {
    const exact = mint('api.example.com');
    const wild = mint('*.example.org');
    const ip = mint('127.0.0.1');
    const ca = store.bundlePem();
    expect(await handshake(exact, ca, 'api.example.com')).toEqual({ ok: true });
    expect(await handshake(exact, ca, 'other.example.com')).toEqual({ ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    expect(await handshake(wild, ca, 'files.example.org')).toEqual({ ok: true });
    expect(await handshake(wild, ca, 'a.files.example.org')).toEqual({ ok: false, code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    expect(await handshake(ip, ca, undefined)).toEqual({ ok: true });
    // a client that trusts some other CA refuses the leaf
    const t = tempDir();
    try {
      const other = await CaStore.open({ dir: join(t.dir, 'ca'), deploymentId: 'other', logger: silentLogger() });
      const r = await handshake(exact, other.bundlePem(), 'api.example.com');
      expect(r.ok).toBe(false);
    } finally {
      t.cleanup();
    }
  });

  it('keeps the leaf key out of JSON and inspect output', () => {
    const leaf = mint('api.example.com');
    const body = leaf.privateKeyPem().split('\n')[2]!;
    expect(leaf.privateKeyPem()).toContain('BEGIN PRIVATE KEY');
    for (const out of [JSON.stringify(leaf), inspect(leaf, { showHidden: true, depth: 10 }), String(leaf)]) {
      expect(out).not.toContain('PRIVATE KEY');
      expect(out).not.toContain(body);
    }
    expect(JSON.stringify(leaf)).toContain(leaf.serialNumber);
  });

  let n = 0;
  function write(content: string): string {
    const f = join(tmp.dir, `w${n++}.pem`);
    writeFileSync(f, content);
    return f;
  }
});

describe('issueLeaf under CA name constraints', () => {
  const tmp = tempDir();
  const clock = new FakeClock(Date.now());
  let store: CaStore;

  beforeAll(async () => {
    const nc = constraintsForHosts(['api.example.com', '*.example.org', '198.51.100.7']);
    store = await CaStore.open({
      dir: join(tmp.dir, 'ca'),
      deploymentId: 'dep1',
      logger: silentLogger(),
      clock: clock.fn,
      nameConstraints: () => nc,
    });
  });
  afterAll(() => tmp.cleanup());

  it('leaves inside the constraints verify, leaves outside do not', () => {
    const mint = (n: string) => issueLeaf(store.current, name(n), { now: clock.now, ttlMs: DEFAULT_LEAF_TTL_MS });
    for (const ok of ['api.example.com', '*.example.org', '*.a.example.org', '198.51.100.7']) {
      expect(verifyWithOpenssl(tmp.dir, mint(ok).certPem, store.bundlePem(), clock.now), ok).toMatchObject({ ok: true });
    }
    for (const bad of ['www.example.com', '*.example.com', '198.51.100.8']) {
      const r = verifyWithOpenssl(tmp.dir, mint(bad).certPem, store.bundlePem(), clock.now);
      expect(r.ok, bad).toBe(false);
      expect(r.out, bad).toMatch(/subtree violation|name constraints/i);
    }
    // an IP leaf carries no CN under DNS constraints (OpenSSL would check a dotted CN as a host name)
    const ipText = x509Text(tmp.dir, mint('198.51.100.7').certPem);
    expect(ipText).toMatch(/Subject: \n/);
    expect(ipText).toMatch(/Subject Alternative Name: critical/);
  });
});

async function handshake(
  leaf: Leaf,
  caPem: string,
  servername: string | undefined,
): Promise<{ ok: true } | { ok: false; code: string }> {
  const server = tls.createServer({ key: leaf.privateKeyPem(), cert: leaf.chainPem }, (s) => s.end());
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise((resolve) => {
      const opts: tls.ConnectionOptions = { host: '127.0.0.1', port, ca: caPem };
      if (servername !== undefined) opts.servername = servername;
      const sock = tls.connect(opts, () => {
        resolve(sock.authorized ? { ok: true } : { ok: false, code: String(sock.authorizationError) });
        sock.destroy();
      });
      sock.on('error', (e: NodeJS.ErrnoException) => resolve({ ok: false, code: e.code ?? e.message }));
    });
  } finally {
    server.close();
  }
}
