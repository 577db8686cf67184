import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import { createLogger, silentLogger } from '../common/logger.js';
import { MintRefusedError } from './errors.js';
import { Minter, type MinterOptions } from './minter.js';
import type { MintPolicy } from './names.js';
import { CA_BUNDLE_SECRET_NAME, SECRET_TYPE_URL, type TlsCertificateSecret, type ValidationContextSecret } from './secrets.js';
import { FakeClock, RecordingSink, tempDir, verifyWithOpenssl } from './testutil.js';

const H = 3600_000;
const POLICY = ['api.example.com', '*.example.org', '198.51.100.7'];

describe('Minter', () => {
  let tmp: ReturnType<typeof tempDir>;
  let clock: FakeClock;
  let events: RecordingSink;

  beforeEach(() => {
    tmp = tempDir();
    clock = new FakeClock(Date.now());
    events = new RecordingSink();
  });
  afterEach(() => tmp.cleanup());

  const open = (over: Partial<MinterOptions> = {}) =>
    Minter.open({
      dataDir: tmp.dir,
      deploymentId: 'dep1',
      policy: POLICY,
      logger: silentLogger(),
      events,
      clock: clock.fn,
      ...over,
    });

  const verify = (certPem: string, caPem: string) => verifyWithOpenssl(tmp.dir, certPem, caPem, clock.now);

  it('mints the exact bump hosts ahead of time and reports them without keys', async () => {
    const m = await open();
    expect(m.cachedNames().sort()).toEqual(['198.51.100.7', 'api.example.com']);
    const minted = events.ofType('leaf.minted');
    expect(minted.map((e) => e.data.name).sort()).toEqual(['198.51.100.7', 'api.example.com']);
    const api = m.leaf('api.example.com');
    expect(minted.find((e) => e.data.name === 'api.example.com')!.data).toEqual({
      name: 'api.example.com',
      serialNumber: api.serialNumber,
      notAfter: api.notAfter.toISOString(),
      generation: 1,
    });
    expect(JSON.stringify(events.events)).not.toContain('PRIVATE KEY');
    expect(events.ofType('leaf.minted')).toHaveLength(2); // served from the cache
    expect(verify(api.certPem, m.bundlePem())).toMatchObject({ ok: true });
  });

  it('refuses names the policy does not allow: error, event, no certificate', async () => {
    const m = await open();
    const before = events.ofType('leaf.minted').length;
    let err: unknown;
    try {
      m.leaf('evil.example.net');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MintRefusedError);
    expect(err).toMatchObject({ code: 'mint_refused', reason: 'not_allowed' });
    expect(events.ofType('mint.refused').at(-1)!.data).toEqual({ name: 'evil.example.net', reason: 'not_allowed' });
    expect(events.ofType('leaf.minted').length).toBe(before);
    expect(m.cachedNames()).not.toContain('evil.example.net');
    expect(() => m.leaf('example.org')).toThrow(MintRefusedError);
    expect(() => m.leaf('bad name\n')).toThrow(expect.objectContaining({ reason: 'invalid_name' }));
    expect(events.ofType('mint.refused').at(-1)!.data).toEqual({ name: 'bad?name?', reason: 'invalid_name' });
    expect(() => m.secret('leaf:evil.example.net')).toThrow(MintRefusedError);
    expect(() => m.secret('something-else')).toThrow(MintRefusedError);
    expect(events.ofType('leaf.minted').length).toBe(before);
  });

  it('does not let a policy answer hand out a certificate for another name', async () => {
    const lying: MintPolicy = {
      isAllowed: (n) =>
        n === 'a.example.com' ? { allowed: true, san: 'evil.example.net' } : n === 'boom.example.com' ? (() => { throw new Error('x'); })() : { allowed: true, san: n === 'ok.example.com' ? n : '*.example.com' },
    };
    const m = await open({ policy: lying });
    expect(() => m.leaf('a.example.com')).toThrow(expect.objectContaining({ reason: 'san_mismatch' }));
    expect(() => m.leaf('x.y.example.com')).toThrow(expect.objectContaining({ reason: 'san_mismatch' }));
    expect(() => m.leaf('boom.example.com')).toThrow(expect.objectContaining({ reason: 'not_allowed' }));
    expect(m.leaf('ok.example.com').name).toBe('ok.example.com');
    expect(m.leaf('b.example.com').name).toBe('*.example.com');
    expect(m.cachedNames().sort()).toEqual(['*.example.com', 'ok.example.com']);
  });

  it('serves wildcard leaves and SDS secrets in proto3 JSON form', async () => {
    const m = await open();
    const a = m.leaf('files.example.org');
    expect(a.name).toBe('*.example.org');
    expect(m.leaf('other.example.org')).toBe(a);
    expect(m.leaf('a.b.example.org').name).toBe('*.b.example.org');

    const s = m.secret('leaf:files.example.org') as TlsCertificateSecret;
    expect(s.name).toBe('leaf:files.example.org');
    expect(s.tls_certificate.certificate_chain.inline_string).toBe(a.certPem + m.caCertPem());
    expect(s.tls_certificate.private_key.inline_string).toBe(a.privateKeyPem());
    expect(Object.keys(s)).toEqual(['name', 'tls_certificate']);
    expect(JSON.parse(JSON.stringify(s)).tls_certificate.private_key.inline_string).toContain('PRIVATE KEY');
    expect(inspect(s, { depth: 10 })).not.toContain('PRIVATE KEY');
    expect((m.secret('leaf:*.example.org') as TlsCertificateSecret).name).toBe('leaf:*.example.org');

    const b = m.secret(CA_BUNDLE_SECRET_NAME) as ValidationContextSecret;
    expect(b).toEqual({ name: CA_BUNDLE_SECRET_NAME, validation_context: { trusted_ca: { inline_string: m.bundlePem() } } });
    expect(SECRET_TYPE_URL).toBe('type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret');
  });

  it('re-mints leaves in their refresh window and tells listeners which secrets changed', async () => {
    const m = await open();
    const first = m.leaf('api.example.com');
    m.leaf('files.example.org');
    const changed: string[][] = [];
    m.on('changed', (n) => changed.push(n));

    clock.advance(8 * H - 1000);
    await m.tick();
    expect(changed).toEqual([]);
    expect(m.leaf('api.example.com')).toBe(first);

    clock.advance(1000);
    await m.tick();
    expect(changed).toHaveLength(1);
    expect(changed[0]!.sort()).toEqual(['leaf:*.example.org', 'leaf:198.51.100.7', 'leaf:api.example.com', 'leaf:files.example.org']);
    const second = m.leaf('api.example.com');
    expect(second).not.toBe(first);
    expect(second.serialNumber).not.toBe(first.serialNumber);
    expect(second.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
    expect(verify(second.certPem, m.bundlePem())).toMatchObject({ ok: true });
  });

  it('re-mints on request a leaf that is in its refresh window, even without a tick', async () => {
    const m = await open();
    const first = m.leaf('api.example.com');
    clock.advance(8 * H - 1000);
    expect(m.leaf('api.example.com')).toBe(first);
    clock.advance(1000);
    const next = m.leaf('api.example.com');
    expect(next).not.toBe(first);
    expect(next.issuedAt.getTime()).toBe(clock.now);
  });

  it('never serves an expired leaf, even without a tick', async () => {
    const m = await open();
    const first = m.leaf('api.example.com');
    clock.now = first.notAfter.getTime() + 1;
    const next = m.leaf('api.example.com');
    expect(next).not.toBe(first);
    expect(next.notAfter.getTime()).toBeGreaterThan(clock.now);
    expect(verify(next.certPem, m.bundlePem())).toMatchObject({ ok: true });
    expect(verify(first.certPem, m.bundlePem()).ok).toBe(false);
  });

  it('rotates the CA with an overlap, then retires the old one and re-mints its leaves', async () => {
    // the overlap ends well before the leaves' refresh window: retirement alone must re-mint them
    const m = await open({ rotationOverlapMs: 2 * H });
    const caDir = join(tmp.dir, 'ca');
    const oldCa = m.caCertPem();
    const oldLeaf = m.leaf('api.example.com');
    const changed: string[][] = [];
    m.on('changed', (n) => changed.push(n));

    const info = await m.rotate();
    expect(info.generation).toBe(2);
    expect(changed).toContainEqual([CA_BUNDLE_SECRET_NAME]);
    const newCa = m.caCertPem();
    expect(m.bundlePem()).toBe(newCa + oldCa);
    expect(events.ofType('ca.rotated')).toHaveLength(1);

    // during the overlap: the old leaf is still served and still verifies against the bundle
    expect(m.leaf('api.example.com')).toBe(oldLeaf);
    expect(verify(oldLeaf.certPem, m.bundlePem())).toMatchObject({ ok: true });
    // new leaves come from the new CA
    const fresh = m.leaf('files.example.org');
    expect(fresh.generation).toBe(2);
    expect(verify(fresh.certPem, newCa)).toMatchObject({ ok: true });
    expect(verify(fresh.certPem, oldCa).ok).toBe(false);
    expect(verify(fresh.certPem, m.bundlePem())).toMatchObject({ ok: true });

    // the overlap ends
    clock.advance(2 * H - 1000);
    await m.tick();
    expect(events.ofType('ca.retired')).toHaveLength(0);
    clock.advance(1000);
    changed.length = 0;
    await m.tick();
    expect(events.ofType('ca.retired')).toHaveLength(1);
    expect(existsSync(join(caDir, 'ca-1.key.pem'))).toBe(false);
    expect(m.bundlePem()).toBe(newCa);
    expect(readFileSync(join(caDir, 'bundle.pem'), 'utf8')).toBe(newCa);
    expect((newCa.match(/BEGIN CERTIFICATE/g) ?? []).length).toBe(1);
    expect(changed.flat()).toContain(CA_BUNDLE_SECRET_NAME);
    expect(changed.flat()).toContain('leaf:api.example.com');

    const reminted = m.leaf('api.example.com');
    expect(reminted).not.toBe(oldLeaf);
    expect(reminted.generation).toBe(2);
    expect(verify(reminted.certPem, m.bundlePem())).toMatchObject({ ok: true });
    expect(verify(reminted.certPem, oldCa).ok).toBe(false);
    expect(verify(oldLeaf.certPem, m.bundlePem()).ok).toBe(false);
    for (const l of m.cachedNames().map((n) => m.leaf(n))) expect(l.generation).toBe(2);
  });

  it('rotates automatically when the CA gets close to expiry, and reloads the same CA on restart', async () => {
    const m = await open({ caValidityMs: 40 * 24 * H, caRenewBeforeMs: 30 * 24 * H });
    const fp = m.status().current.fingerprint256;
    const again = await open({ caValidityMs: 40 * 24 * H, caRenewBeforeMs: 30 * 24 * H });
    expect(again.status().current.fingerprint256).toBe(fp);
    clock.advance(10 * 24 * H - 60_000);
    await m.tick();
    expect(m.status().current.generation).toBe(1);
    clock.advance(60_000);
    await m.tick();
    expect(m.status().current.generation).toBe(2);
    expect(m.status().retiring?.generation).toBe(1);
    expect(events.ofType('ca.rotated')[0]!.data).toMatchObject({ from: 1, to: 2, reason: 'CA close to expiry' });

    // restarted after the overlap ended: the old generation is retired before anything is served
    clock.advance(48 * H);
    const restarted = await open({ caValidityMs: 40 * 24 * H, caRenewBeforeMs: 30 * 24 * H });
    expect(restarted.status().current.generation).toBe(2);
    expect(restarted.status().retiring).toBeNull();
    expect(existsSync(join(tmp.dir, 'ca', 'ca-1.key.pem'))).toBe(false);
    expect(restarted.bundlePem()).toBe(restarted.caCertPem());
  });

  it('drops cached leaves a new policy no longer allows', async () => {
    const m = await open();
    m.leaf('files.example.org');
    const changed: string[][] = [];
    m.on('changed', (n) => changed.push(n));
    m.setPolicy(['*.example.org', 'new.example.com']);
    expect(changed.flat()).toContain('leaf:api.example.com');
    expect(m.cachedNames().sort()).toEqual(['*.example.org', 'new.example.com']);
    expect(() => m.leaf('api.example.com')).toThrow(MintRefusedError);
    expect(m.leaf('files.example.org').name).toBe('*.example.org');
    m.setPolicy([]);
    expect(m.cachedNames()).toEqual([]);
    expect(() => m.leaf('files.example.org')).toThrow(MintRefusedError);
  });

  it('refuses names outside the CA name constraints until the CA is rotated', async () => {
    const m = await open({ nameConstraints: true });
    expect(m.status().current.nameConstraints).toEqual({ dns: ['api.example.com', 'example.org'], ips: ['198.51.100.7'] });
    expect(verify(m.leaf('files.example.org').certPem, m.bundlePem())).toMatchObject({ ok: true });
    m.setPolicy([...POLICY, 'new.example.com']);
    expect(() => m.leaf('new.example.com')).toThrow(expect.objectContaining({ reason: 'outside_ca_name_constraints' }));
    await m.rotate('policy changed');
    const leaf = m.leaf('new.example.com');
    expect(verify(leaf.certPem, m.bundlePem())).toMatchObject({ ok: true });
  });

  it('keeps keys out of logs, JSON and inspect output', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    });
    const logger = createLogger({ level: 'trace', destination: sink });
    const m = await open({ logger });
    const leaf = m.leaf('api.example.com');
    m.leaf('files.example.org');
    expect(() => m.leaf('evil.example.net')).toThrow();
    await m.rotate();
    await m.retire();
    m.secret('leaf:api.example.com');
    const logs = lines.join('');
    expect(logs).toContain('leaf minted');
    expect(logs).toContain('deployment CA rotated');
    expect(logs).toContain('leaf mint refused');

    const caKey = readFileSync(join(tmp.dir, 'ca', 'ca-2.key.pem'), 'utf8');
    const bodies = [leaf.privateKeyPem(), m.leaf('api.example.com').privateKeyPem(), caKey].map((k) => k.split('\n')[2]!);
    for (const out of [
      logs,
      JSON.stringify(m),
      inspect(m, { depth: 10, showHidden: true }),
      JSON.stringify(events.events),
      inspect(m.leaf('api.example.com'), { depth: 10 }),
    ]) {
      expect(out).not.toContain('PRIVATE KEY');
      for (const b of bodies) expect(out).not.toContain(b);
    }
  });

  it('puts the serial and validity of each leaf in leaf.minted events', async () => {
    await open();
    for (const e of events.ofType('leaf.minted')) {
      expect(e.source).toBe('sds-minter');
      expect(Object.keys(e.data).sort()).toEqual(['generation', 'name', 'notAfter', 'serialNumber']);
      expect(new Date(e.data.notAfter as string).getTime()).toBe(Math.floor((clock.now + 12 * H) / 1000) * 1000);
    }
    expect(new X509Certificate(readFileSync(join(tmp.dir, 'ca', 'bundle.pem'))).ca).toBe(true);
  });
});
