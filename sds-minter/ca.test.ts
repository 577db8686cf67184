import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync, copyFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { silentLogger } from '../common/logger.js';
import { CaStore, constraintsForHosts } from './ca.js';
import { CaUnavailableError } from './errors.js';
import { FakeClock, RecordingSink, openssl, tempDir, verifyWithOpenssl, x509Text } from './testutil.js';

const YEAR = 365 * 24 * 3600_000;

function keyBody(pem: string): string {
  // a slice of the base64 body: if any of it shows up somewhere, the key leaked
  return pem.split('\n')[3] ?? '';
}

describe('CaStore', () => {
  let tmp: ReturnType<typeof tempDir>;
  let caDir: string;
  let clock: FakeClock;
  let events: RecordingSink;

  beforeEach(() => {
    tmp = tempDir();
    caDir = join(tmp.dir, 'data', 'ca');
    clock = new FakeClock(Date.now());
    events = new RecordingSink();
  });
  afterEach(() => tmp.cleanup());

  const open = (over: Partial<Parameters<typeof CaStore.open>[0]> = {}) =>
    CaStore.open({ dir: caDir, deploymentId: 'dep1', logger: silentLogger(), events, clock: clock.fn, ...over });

  it('creates the CA on first start: 0700 dir, 0600 key, cert, bundle and state', async () => {
    const store = await open();
    expect(statSync(caDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(caDir, 'ca-1.key.pem')).mode & 0o777).toBe(0o600);
    const certPem = readFileSync(join(caDir, 'ca-1.cert.pem'), 'utf8');
    expect(certPem).toBe(store.current.certPem);
    expect(readFileSync(join(caDir, 'bundle.pem'), 'utf8')).toBe(certPem);
    expect(JSON.parse(readFileSync(join(caDir, 'state.json'), 'utf8'))).toEqual({
      version: 1,
      deploymentId: 'dep1',
      current: 1,
      retiring: null,
    });
    expect(readdirSync(caDir).sort()).toEqual(['bundle.pem', 'ca-1.cert.pem', 'ca-1.key.pem', 'state.json']);
    expect(readFileSync(join(caDir, 'ca-1.key.pem'), 'utf8')).toContain('BEGIN PRIVATE KEY');
    const created = events.ofType('ca.created');
    expect(created).toHaveLength(1);
    expect(created[0]!.data).toMatchObject({ generation: 1, fingerprint256: store.current.fingerprint256 });
  });

  it('issues a CA certificate with the CA profile', async () => {
    const store = await open();
    const text = x509Text(tmp.dir, store.current.certPem);
    expect(text).toMatch(/Subject: O = Portcullis, OU = generation 1, CN = Portcullis deployment CA dep1/);
    expect(text).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(text).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(text).toMatch(/Subject Key Identifier/);
    expect(text).toMatch(/Signature Algorithm: sha256WithRSAEncryption/);
    expect(text).toMatch(/Public-Key: \(2048 bit\)/);
    expect(text).not.toMatch(/Name Constraints/);
    const v = store.current;
    expect(v.notAfter.getTime() - v.notBefore.getTime()).toBe(Math.floor((clock.now + YEAR) / 1000) * 1000 - Math.floor((clock.now - 300_000) / 1000) * 1000);
    expect(verifyWithOpenssl(tmp.dir, v.certPem, v.certPem, clock.now, null)).toMatchObject({ ok: true });
  });

  it('loads the same CA on restart without regenerating it', async () => {
    const first = await open();
    const keyBefore = readFileSync(join(caDir, 'ca-1.key.pem'), 'utf8');
    const again = await open();
    expect(again.current.fingerprint256).toBe(first.current.fingerprint256);
    expect(again.current.generation).toBe(1);
    expect(readFileSync(join(caDir, 'ca-1.key.pem'), 'utf8')).toBe(keyBefore);
    expect(events.ofType('ca.created')).toHaveLength(1);
  });

  it('refuses a CA key file with a mode wider than 0600, without printing the key', async () => {
    await open();
    const keyPem = readFileSync(join(caDir, 'ca-1.key.pem'), 'utf8');
    chmodSync(join(caDir, 'ca-1.key.pem'), 0o640);
    const err = await open().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaUnavailableError);
    expect((err as CaUnavailableError).code).toBe('ca_unavailable');
    expect((err as Error).message).toMatch(/mode 0640/);
    expect(inspect(err)).not.toContain(keyBody(keyPem));
    expect(inspect(err)).not.toContain('PRIVATE KEY');
    chmodSync(join(caDir, 'ca-1.key.pem'), 0o600);
    await expect(open()).resolves.toBeInstanceOf(CaStore);
  });

  it('refuses a CA directory other users can enter', async () => {
    await open();
    chmodSync(caDir, 0o755);
    await expect(open()).rejects.toMatchObject({ code: 'ca_unavailable', message: expect.stringMatching(/mode 0755/) });
  });

  it('refuses a symlinked key file', async () => {
    await open();
    copyFileSync(join(caDir, 'ca-1.key.pem'), join(tmp.dir, 'elsewhere.pem'));
    chmodSync(join(tmp.dir, 'elsewhere.pem'), 0o600);
    unlinkSync(join(caDir, 'ca-1.key.pem'));
    const { symlinkSync } = await import('node:fs');
    symlinkSync(join(tmp.dir, 'elsewhere.pem'), join(caDir, 'ca-1.key.pem'));
    await expect(open()).rejects.toMatchObject({ code: 'ca_unavailable', message: expect.stringMatching(/symbolic link/) });
  });

  it('refuses CA files without a state file, another deployment, and a key that does not match', async () => {
    await open();
    const state = readFileSync(join(caDir, 'state.json'), 'utf8');
    unlinkSync(join(caDir, 'state.json'));
    await expect(open()).rejects.toMatchObject({ code: 'ca_unavailable', message: expect.stringMatching(/no state.json/) });
    writeFileSync(join(caDir, 'state.json'), state);
    await expect(open({ deploymentId: 'other' })).rejects.toMatchObject({
      code: 'ca_unavailable',
      message: expect.stringMatching(/belongs to deployment "dep1"/),
    });
    // a key from another CA
    const other = tempDir();
    try {
      await CaStore.open({ dir: join(other.dir, 'ca'), deploymentId: 'dep1', logger: silentLogger() });
      copyFileSync(join(other.dir, 'ca', 'ca-1.key.pem'), join(caDir, 'ca-1.key.pem'));
    } finally {
      other.cleanup();
    }
    await expect(open()).rejects.toMatchObject({ code: 'ca_unavailable', message: expect.stringMatching(/does not match/) });
  });

  it('rotates with an overlap, then retires the old generation and deletes its key', async () => {
    const store = await open();
    const old = store.current;
    const next = await store.rotate(3600_000);
    expect(next.generation).toBe(2);
    expect(store.current).toBe(next);
    expect(store.retiring?.ca).toBe(old);
    expect(old.canSign).toBe(false);
    const bundle = readFileSync(join(caDir, 'bundle.pem'), 'utf8');
    expect(bundle).toBe(next.certPem + old.certPem);
    expect(store.bundlePem()).toBe(bundle);
    expect(statSync(join(caDir, 'ca-2.key.pem')).mode & 0o777).toBe(0o600);
    expect(existsSync(join(caDir, 'ca-1.key.pem'))).toBe(true);
    expect(JSON.parse(readFileSync(join(caDir, 'state.json'), 'utf8'))).toMatchObject({
      current: 2,
      retiring: { generation: 1, overlapEndsAt: new Date(clock.now + 3600_000).toISOString() },
    });
    expect(events.ofType('ca.rotated')[0]!.data).toMatchObject({ from: 1, to: 2 });

    // a restart during the overlap keeps both in the bundle
    const reopened = await open();
    expect(reopened.current.fingerprint256).toBe(next.fingerprint256);
    expect(reopened.retiring?.ca.fingerprint256).toBe(old.fingerprint256);
    expect(reopened.bundlePem()).toBe(bundle);

    await reopened.retire();
    expect(existsSync(join(caDir, 'ca-1.key.pem'))).toBe(false);
    expect(existsSync(join(caDir, 'ca-1.cert.pem'))).toBe(false);
    expect(readFileSync(join(caDir, 'bundle.pem'), 'utf8')).toBe(next.certPem);
    expect(reopened.retiring).toBeNull();
    expect(events.ofType('ca.retired')[0]!.data).toMatchObject({ generation: 1 });
    expect(readdirSync(caDir).sort()).toEqual(['bundle.pem', 'ca-2.cert.pem', 'ca-2.key.pem', 'state.json']);
  });

  it('removes key files of generations left behind by an interrupted retirement', async () => {
    const store = await open();
    await store.rotate(1000);
    const oldKey = readFileSync(join(caDir, 'ca-1.key.pem'), 'utf8');
    await store.retire();
    writeFileSync(join(caDir, 'ca-1.key.pem'), oldKey, { mode: 0o600 });
    await open();
    expect(existsSync(join(caDir, 'ca-1.key.pem'))).toBe(false);
  });

  it('never shows key material in JSON or inspect output', async () => {
    const store = await open();
    await store.rotate(1000);
    const keys = ['ca-1.key.pem', 'ca-2.key.pem'].map((f) => readFileSync(join(caDir, f), 'utf8'));
    for (const out of [
      JSON.stringify(store),
      inspect(store, { depth: 10, showHidden: true }),
      JSON.stringify(store.current),
      inspect(store.current, { depth: 10, showHidden: true }),
      inspect(store.retiring, { depth: 10, showHidden: true }),
    ]) {
      expect(out).not.toContain('PRIVATE KEY');
      for (const k of keys) expect(out).not.toContain(keyBody(k));
    }
    expect(JSON.stringify(store)).toContain(store.current.fingerprint256);
  });

  it('puts name constraints in the CA when asked and checks names against them', async () => {
    const nc = constraintsForHosts(['api.example.com', '*.example.org', 'x.example.org', '198.51.100.7']);
    expect(nc).toEqual({ dns: ['api.example.com', 'example.org'], ips: ['198.51.100.7'] });
    const store = await open({ nameConstraints: () => nc });
    const text = x509Text(tmp.dir, store.current.certPem);
    expect(text).toMatch(/Name Constraints: critical\s+Permitted:\s+DNS:api.example.com\s+DNS:example.org\s+IP:198.51.100.7\/255.255.255.255/);
    expect(store.current.nameConstraints).toEqual(nc);
    expect(store.current.permits('api.example.com')).toBe(true);
    expect(store.current.permits('*.example.org')).toBe(true);
    expect(store.current.permits('*.a.example.org')).toBe(true);
    expect(store.current.permits('www.example.com')).toBe(false);
    expect(store.current.permits('198.51.100.8')).toBe(false);
    // constraints survive a restart (read back from the certificate)
    expect((await open({ nameConstraints: undefined })).current.nameConstraints).toEqual(nc);
    expect(openssl(['version']).ok).toBe(true);
  });
});
