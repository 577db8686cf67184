import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SignJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { Denylist } from './denylist.js';
import { KillSwitch } from './kill.js';
import { ReplayCache, SOAR_ADMIN_AUDIENCE, SoarAdmin } from './soar-in.js';
import { FakeSupervisor, MemoryAudit, recordingRevoker, tempDir } from './testkit.js';
import { loadSoarAdminKeys } from './soar-keys.js';
import { compileText } from '../policy/compile.js';

type Key = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

const NOW = 1_750_000_000_000;

describe('SOAR admin API (inbound)', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  let soarKey: Key;
  let otherKey: Key;
  let soarJwk: JWK;

  async function keys() {
    if (soarKey) return;
    const a = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const b = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    soarKey = a.privateKey;
    otherKey = b.privateKey;
    soarJwk = { ...(await exportJWK(a.publicKey)), kid: 'soar-1', alg: 'EdDSA' };
  }

  async function setup(dataDir?: string) {
    await keys();
    let now = NOW;
    const log: string[] = [];
    const edge = recordingRevoker(log);
    const sup = new FakeSupervisor(log);
    sup.add('s1');
    sup.add('s2');
    const audit = new MemoryAudit();
    const denylist = await Denylist.open({ enforcers: [edge], logger: silentLogger() });
    const kill = new KillSwitch({ denylist, sandbox: sup, audit, events: new EventBus(), metrics: new Metrics(), logger: silentLogger(), clock: () => now });
    const replay = await ReplayCache.open(dataDir, () => now);
    cleanups.push(() => replay.close());
    // the trusted keys come from the policy: soar.admin.keys[].jwksFile, relative to the policy file
    const pdir = tempDir('soar-policy-');
    cleanups.push(pdir.cleanup);
    fs.writeFileSync(path.join(pdir.dir, 'xsoar.jwks.json'), JSON.stringify({ keys: [soarJwk] }));
    const ir = compileText(
      'apiVersion: portcullis/v1\nkind: Policy\ndeployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }\nsoar:\n  admin:\n    keys: [{ name: xsoar, jwksFile: xsoar.jwks.json }]\n',
      { file: 'p.yaml', baseDir: pdir.dir },
    );
    const trust = (await loadSoarAdminKeys(ir))!;
    const admin = new SoarAdmin({
      keys: () => trust.jwks,
      audience: () => trust.audience,
      keyName: (kid) => trust.keyNames.get(kid),
      replay,
      kill,
      audit,
      logger: silentLogger(),
      metrics: new Metrics(),
      now: () => now,
    });
    return { admin, audit, log, sup, denylist, replay, setNow: (t: number) => (now = t) };
  }

  function req(claims: Record<string, unknown>, o: { key?: Key; kid?: string; iat?: number; exp?: number; aud?: string; jti?: string | null } = {}) {
    const iat = o.iat ?? Math.floor(NOW / 1000);
    const j = new SignJWT(claims)
      .setProtectedHeader({ alg: 'EdDSA', kid: o.kid ?? 'soar-1' })
      .setIssuer('xsoar')
      .setAudience(o.aud ?? SOAR_ADMIN_AUDIENCE)
      .setIssuedAt(iat)
      .setExpirationTime(o.exp ?? iat + 120);
    if (o.jti !== null) j.setJti(o.jti ?? `jti-${Math.random().toString(36).slice(2)}`);
    return j.sign(o.key ?? soarKey);
  }

  it('a valid kill request kills the session, audited as the SOAR client', async () => {
    const { admin, audit, log } = await setup();
    const r = await admin.handle(await req({ act: 'kill', sid: 's1', why: 'playbook 7' }));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ ok: true, action: 'kill', sessionId: 's1', result: { sandbox: 'destroyed' } });
    expect(log).toEqual(['revoke s1 session_revoked', 'destroy s1 operator_kill']);
    expect(audit.events.map((e) => [(e.actor as { user: { uid: string } }).user.uid, e.status])).toEqual([
      ['soar:xsoar', 'Attempt'],
      ['soar:xsoar', 'Success'],
    ]);
  });

  it('quarantine keeps the sandbox, revoke only denylists', async () => {
    const { admin, log, sup, denylist } = await setup();
    expect((await admin.handle(await req({ act: 'quarantine', sid: 's1' }))).status).toBe(200);
    expect(sup.getSession('s1')!.state).toBe('quarantined');
    expect((await admin.handle(await req({ act: 'revoke', sid: 's2' }))).status).toBe(200);
    expect(sup.getSession('s2')!.state).toBe('ready');
    expect(denylist.get('s2')).toMatchObject({ kind: 'revoke', actor: 'soar:xsoar' });
    expect(log.filter((l) => l.startsWith('destroy'))).toEqual([]);
  });

  const refusals: [string, () => Promise<string>, string, number][] = [
    ['tampered payload', async () => {
      const t = await req({ act: 'revoke', sid: 's1' });
      const [h, p, s] = t.split('.');
      const body = JSON.parse(Buffer.from(p!, 'base64url').toString()) as Record<string, unknown>;
      return `${h}.${Buffer.from(JSON.stringify({ ...body, act: 'kill', sid: 's2' })).toString('base64url')}.${s}`;
    }, 'signature_invalid', 401],
    ['signed by another key under the SOAR kid', () => req({ act: 'kill', sid: 's1' }, { key: otherKey }), 'signature_invalid', 401],
    ['unknown kid', () => req({ act: 'kill', sid: 's1' }, { key: otherKey, kid: 'nobody' }), 'unknown_key', 401],
    ['expired', () => req({ act: 'kill', sid: 's1' }, { iat: NOW / 1000 - 200, exp: NOW / 1000 - 10 }), 'expired', 401],
    ['lifetime over 5 min', () => req({ act: 'kill', sid: 's1' }, { exp: NOW / 1000 + 301 }), 'lifetime_too_long', 401],
    ['issued in the future', () => req({ act: 'kill', sid: 's1' }, { iat: NOW / 1000 + 60, exp: NOW / 1000 + 120 }), 'issued_in_future', 401],
    ['wrong audience', () => req({ act: 'kill', sid: 's1' }, { aud: 'someone-else' }), 'audience_invalid', 401],
    ['no jti', () => req({ act: 'kill', sid: 's1' }, { jti: null }), 'claims_missing', 400],
    ['unknown action', () => req({ act: 'delete-everything', sid: 's1' }), 'request_invalid', 400],
    ['not a JWS', async () => 'hello', 'malformed', 400],
  ];

  it.each(refusals)('%s → refused (%s), audited, nothing done', async (_name, make, reason, status) => {
    const { admin, audit, log } = await setup();
    const r = await admin.handle(await make());
    expect(r.status).toBe(status);
    expect(r.body).toMatchObject({ ok: false, error: { code: reason } });
    expect(log).toEqual([]);
    expect(audit.events).toHaveLength(1);
    expect(audit.events[0]).toMatchObject({ status: 'Failure', status_detail: reason, api: { operation: 'soar.admin' } });
    expect((audit.events[0]!.actor as { user: { uid: string } }).user.uid).toBe('soar:unverified');
  });

  it('a replayed request is refused and audited, also after a restart (the replay cache is persisted)', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const a = await setup(t.dir);
    const token = await req({ act: 'revoke', sid: 's1' }, { jti: 'once' });
    expect((await a.admin.handle(token)).status).toBe(200);
    const again = await a.admin.handle(token);
    expect(again).toMatchObject({ status: 409, body: { error: { code: 'replayed' } } });
    expect(a.audit.events.at(-1)).toMatchObject({ status: 'Failure', status_detail: 'replayed', unmapped: { jti: 'once' } });
    await a.replay.close();

    const b = await setup(t.dir);
    expect(b.replay.size).toBe(1);
    expect(await b.admin.handle(token)).toMatchObject({ status: 409, body: { error: { code: 'replayed' } } });
    expect(b.log).toEqual([]);
  });

  it('the replay window closes with the token: an expired jti is forgotten, and its token is refused as expired', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const a = await setup(t.dir);
    const token = await req({ act: 'revoke', sid: 's1' }, { jti: 'short' });
    expect((await a.admin.handle(token)).status).toBe(200);
    a.setNow(NOW + 130_000);
    expect(await a.admin.handle(token)).toMatchObject({ status: 401, body: { error: { code: 'expired' } } });
    await a.replay.close();
    const c = await ReplayCache.open(t.dir, () => NOW + 130_000);
    expect(c.size).toBe(0);
    await c.close();
  });

  it('when the action cannot be audited it does not happen (503), and the jti is spent', async () => {
    const { admin, audit, log } = await setup();
    audit.fail = true;
    const token = await req({ act: 'kill', sid: 's1' });
    expect(await admin.handle(token)).toMatchObject({ status: 503, body: { error: { code: 'audit_write_failed' } } });
    expect(log).toEqual([]);
    audit.fail = false;
    expect(await admin.handle(token)).toMatchObject({ status: 409 });
  });

  it('concurrent copies of one request: exactly one is accepted', async () => {
    const { admin, log } = await setup();
    const token = await req({ act: 'revoke', sid: 's1' });
    const rs = await Promise.all([admin.handle(token), admin.handle(token), admin.handle(token)]);
    expect(rs.map((r) => r.status).sort()).toEqual([200, 409, 409]);
    expect(log).toEqual(['revoke s1 session_revoked']);
  });
});
