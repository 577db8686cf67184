import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { Metrics } from '../common/metrics.js';
import { compileText } from '../policy/compile.js';
import { runOperatorCli } from '../cli/operator.js';
import { main } from '../cli/portcullis.js';
import { OperatorApi } from './api.js';
import { OperatorClient } from './client.js';
import { startOperatorPlane, type OperatorPlane } from './index.js';
import { SOAR_ADMIN_AUDIENCE } from './soar-in.js';
import { FakeSupervisor, MemoryAudit, recordingRevoker, startReceiver, tempDir, until } from './testkit.js';

const TOKEN = 'x'.repeat(40);

function cliIo() {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  return { io: { stdout, stderr }, out: () => out, err: () => err };
}

describe('operator API and CLI', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function plane(extra: { webhookUrl?: string; tcpPort?: number; onTrip?: 'alert' | 'kill'; noAdmin?: boolean } = {}) {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const keyFile = path.join(t.dir, 'keys', 'hook.jwk');
    // the SOAR platform's public key, named by the policy (relative to the policy file)
    const soar = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const soarJwk = { ...(await exportJWK(soar.publicKey)), kid: 'soar-1', alg: 'EdDSA' };
    fs.writeFileSync(path.join(t.dir, 'soar-admin.jwks.json'), JSON.stringify({ keys: [soarJwk] }));
    const policyText = (admin: string[]) =>
      [
        'apiVersion: portcullis/v1',
        'kind: Policy',
        'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }',
        'egress:',
        `  tripwire: { bytesPerSession: 1Ki, distinctDestinations: 5, window: 1m, onTrip: ${extra.onTrip ?? 'alert'} }`,
        'soar:',
        ...admin,
        ...(extra.webhookUrl ? ['  webhooks:', `    - { url: "${extra.webhookUrl}", signingKey: { file: ${keyFile} } }`] : ['  webhooks: []']),
        '',
      ].join('\n');
    const compile = (admin: string[]) => compileText(policyText(admin), { file: 'p.yaml', baseDir: t.dir });
    const ir = compile(extra.noAdmin ? [] : ['  admin: { keys: [{ name: xsoar, jwksFile: soar-admin.jwks.json }] }']);
    const log: string[] = [];
    const edge = recordingRevoker(log);
    const sup = new FakeSupervisor(log);
    sup.add('s1');
    sup.add('s2');
    const audit = new MemoryAudit();
    const events = new EventBus();
    const metrics = new Metrics();
    const p: OperatorPlane = await startOperatorPlane({
      dataDir: path.join(t.dir, 'data'),
      logger: silentLogger(),
      events,
      metrics,
      audit,
      ir,
      revokers: [edge],
      supervisor: sup,
      controlPlane: { status: () => ({ liveVersion: 'v-123', lastNack: null, lastRefused: null, xdsAddress: '127.0.0.1:1' }) },
      minter: { rotate: async () => ({ generation: 2 }) },
      ...(extra.tcpPort !== undefined ? { tcp: { port: extra.tcpPort, token: TOKEN } } : {}),
      outbox: { backoff: { baseMs: 20, maxMs: 100 } },
      tripwire: { sweepEveryMs: 0 },
    });
    cleanups.push(() => p.close());
    const client = new OperatorClient({ socketPath: p.api.socketPath! });
    cleanups.push(() => client.close());
    const cli = async (...args: string[]) => {
      const c = cliIo();
      const code = await runOperatorCli([...args, '--socket', p.api.socketPath!], c.io, {});
      return { code, out: c.out(), err: c.err() };
    };
    return { p, client, log, sup, audit, events, metrics, cli, dir: t.dir, soarKey: soar.privateKey, edge, compile };
  }

  it('listens on a unix socket created 0600, refuses a second instance, and removes the socket on close', async () => {
    const { p } = await plane();
    const sock = p.api.socketPath!;
    expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
    expect(fs.statSync(sock).isSocket()).toBe(true);
    const second = OperatorApi.start({ kill: p.kill, denylist: p.denylist, audit: new MemoryAudit(), logger: silentLogger(), metrics: new Metrics(), socketPath: sock });
    await expect(second).rejects.toMatchObject({ code: 'usage', message: expect.stringMatching(/another operator API/) });
    await p.close();
    expect(fs.existsSync(sock)).toBe(false);
  });

  it('TCP only on loopback, only with the bearer credential (constant-time compare); the JWKS is public', async () => {
    const port = await new Promise<number>((r) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const a = (s.address() as net.AddressInfo).port;
        s.close(() => r(a));
      });
    });
    const { p } = await plane({ tcpPort: port });
    const url = `http://127.0.0.1:${p.api.tcpAddress!.port}`;
    const anon = new OperatorClient({ url });
    const wrong = new OperatorClient({ url, token: 'y'.repeat(40) });
    const good = new OperatorClient({ url, token: TOKEN });
    cleanups.push(() => anon.close(), () => wrong.close(), () => good.close());
    expect((await anon.request('GET', '/v1/sessions')).status).toBe(401);
    expect((await wrong.request('POST', '/v1/kill-all', {})).status).toBe(401);
    expect((await good.request('GET', '/v1/sessions')).status).toBe(200);
    expect((await anon.request('GET', '/v1/soar/jwks.json')).status).toBe(200);
    await expect(
      OperatorApi.start({ tcp: { host: '0.0.0.0', port: 0, token: TOKEN } } as never),
    ).rejects.toMatchObject({ code: 'usage' });
    await expect(OperatorApi.start({ tcp: { host: '127.0.0.1', port: 0, token: 'short' } } as never)).rejects.toMatchObject({ code: 'usage' });
  });

  it('sessions list / show / kill through the CLI, human and --json, with exit codes', async () => {
    const { cli, log, sup } = await plane();
    const list = await cli('sessions', 'list');
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/SESSION\s+STATE/);
    expect(list.out).toMatch(/s1\s+ready\s+alice/);
    const json = await cli('sessions', 'list', '--json');
    expect(JSON.parse(json.out).sessions.map((s: { sessionId: string }) => s.sessionId)).toEqual(['s1', 's2']);

    const kill = await cli('sessions', 'kill', 's1', '--note', 'incident 9');
    expect(kill.code).toBe(0);
    expect(kill.out).toMatch(/^killed s1: revoked at the edge in .*, sandbox destroyed/);
    expect(log).toEqual(['revoke s1 session_revoked', 'destroy s1 operator_kill']);
    expect(sup.getSession('s1')!.state).toBe('destroyed');

    const show = await cli('sessions', 'show', 's1', '--json');
    expect(JSON.parse(show.out).session).toMatchObject({ sessionId: 's1', state: 'destroyed', denied: { kind: 'kill', note: 'incident 9', actor: 'operator:local' } });
    const missing = await cli('sessions', 'show', 'nope');
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/session_not_found/);
    expect((await cli('sessions', 'frobnicate')).code).toBe(2);
    expect((await cli('sessions', 'kill')).code).toBe(2);
    expect((await cli('kill-all')).code).toBe(2); // needs --yes
  });

  it('kill-all, denylist, policy status, tripwire, CA rotate, deliveries', async () => {
    const receiver = await startReceiver();
    cleanups.push(() => receiver.stop());
    const { cli, log, events, p } = await plane({ webhookUrl: receiver.url });
    const all = await cli('kill-all', '--yes', '--json');
    expect(all.code).toBe(0);
    expect(JSON.parse(all.out).result.sessions).toHaveLength(2);
    expect(log.filter((l) => l.startsWith('revoke')).sort()).toEqual(['revoke s1 session_revoked', 'revoke s2 session_revoked']);

    expect((await cli('denylist', 'add', 'edge-only', '--note', 'seen in SIEM')).out).toMatch(/edge-only denied/);
    const dl = await cli('denylist');
    expect(dl.out).toMatch(/edge-only\s+revoke\s+session_revoked\s+operator:local/);

    events.emit({ type: 'config.reload_refused', severity: 'error', source: 'policy-watcher', data: { code: 'policy_invalid', message: 'line 3: bad' } });
    const st = await cli('policy', 'status');
    expect(st.out).toMatch(/live version\s+v-123/);
    expect(st.out).toMatch(/last refused reload\s+.*policy_invalid line 3: bad/);

    const ca = await cli('ca', 'rotate', '--json');
    expect(JSON.parse(ca.out)).toEqual({ result: { generation: 2 } });

    await p.outbox.idle();
    const d = await cli('soar', 'deliveries', '--json');
    const body = JSON.parse(d.out) as { targets: { url: string; delivered: number }[]; items: { type: string; state: string }[] };
    expect(body.targets[0]).toMatchObject({ url: receiver.url, delivered: 1 });
    expect(body.items.map((i) => [i.type, i.state])).toEqual([['config.reload_refused', 'delivered']]);
    expect((await cli('soar', 'deliveries')).out).toMatch(/WEBHOOK\s+PENDING\s+DELIVERED/);
    const jwks = JSON.parse((await cli('soar', 'jwks')).out) as { keys: { kid: string; d?: string }[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]!.d).toBeUndefined();
    expect((await cli('tripwire')).out).toMatch(/budget\s+1\.0 KiB and 5 destinations per session per 60 s; on trip: alert/);
  });

  it('portcullis dispatches the operator commands (policy status included; other policy commands stay)', async () => {
    const { p } = await plane();
    const c = cliIo();
    const prev = process.env.PORTCULLIS_OPERATOR_SOCKET;
    process.env.PORTCULLIS_OPERATOR_SOCKET = p.api.socketPath!;
    try {
      expect(await main(['policy', 'status', '--json'], c.io)).toBe(0);
      expect(JSON.parse(c.out())).toMatchObject({ liveVersion: 'v-123' });
      expect(await main(['sessions', '--help'], cliIo().io)).toBe(0);
    } finally {
      if (prev === undefined) delete process.env.PORTCULLIS_OPERATOR_SOCKET;
      else process.env.PORTCULLIS_OPERATOR_SOCKET = prev;
    }
  });

  it('privileged actions fail closed: audit down → 503, nothing revoked or torn down', async () => {
    const { cli, audit, log, sup } = await plane();
    audit.fail = true;
    const r = await cli('sessions', 'kill', 's1');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/audit_write_failed/);
    expect((await cli('kill-all', '--yes')).code).toBe(1);
    expect((await cli('denylist', 'add', 's2')).code).toBe(1);
    expect((await cli('ca', 'rotate')).code).toBe(1);
    expect(log).toEqual([]);
    expect(sup.getSession('s1')!.state).toBe('ready');
  });

  it('a SOAR admin request through the API: accepted once, replay refused', async () => {
    const { client, soarKey, log } = await plane();
    const jws = await new SignJWT({ act: 'kill', sid: 's2' })
      .setProtectedHeader({ alg: 'EdDSA', kid: 'soar-1' })
      .setIssuer('xsoar')
      .setAudience(SOAR_ADMIN_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('2m')
      .setJti('abc')
      .sign(soarKey);
    const r = await client.request('POST', '/v1/soar/admin', jws, { 'content-type': 'application/jwt' });
    expect(r.status).toBe(200);
    expect(log).toEqual(['revoke s2 session_revoked', 'destroy s2 operator_kill']);
    const again = await client.request('POST', '/v1/soar/admin', { jws });
    expect(again).toMatchObject({ status: 409, body: { error: { code: 'replayed' } } });
  });

  it('SOAR admin trust comes from the policy: swapped live by updatePolicy, a bad JWKS file keeps the last good keys, no soar.admin → 404', async () => {
    const { p, client, soarKey, dir, compile, audit, log } = await plane();
    const sign = (key: Parameters<SignJWT['sign']>[0], kid: string, jti: string, aud = SOAR_ADMIN_AUDIENCE) =>
      new SignJWT({ act: 'revoke', sid: 's1' }).setProtectedHeader({ alg: 'EdDSA', kid }).setIssuer('xsoar').setAudience(aud).setIssuedAt().setExpirationTime('2m').setJti(jti).sign(key);
    expect(p.soarAdminTrust()).toMatchObject({ audience: SOAR_ADMIN_AUDIENCE, jwks: { keys: [{ kid: 'soar-1' }] } });
    // accepted with the policy's key; the actor carries the policy's key name
    expect((await client.request('POST', '/v1/soar/admin', await sign(soarKey, 'soar-1', 'j1'))).status).toBe(200);
    expect(audit.events.find((e) => (e.api as { operation?: string }).operation === 'session.revoke')).toMatchObject({ actor: { user: { uid: 'soar:xsoar', name: 'xsoar' } } });

    // rotate: a new key in a new file, a new audience
    const next = await generateKeyPair('ES256');
    fs.writeFileSync(path.join(dir, 'rotated.jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(next.publicKey)), kid: 'soar-2' }] }));
    await p.updatePolicy(compile(['  admin: { audience: soar-admin-v2, keys: [{ name: rotated, jwksFile: rotated.jwks.json }] }']));
    const es = (kid: string, jti: string, aud: string) =>
      new SignJWT({ act: 'revoke', sid: 's2' }).setProtectedHeader({ alg: 'ES256', kid }).setIssuer('xsoar').setAudience(aud).setIssuedAt().setExpirationTime('2m').setJti(jti).sign(next.privateKey);
    expect((await client.request('POST', '/v1/soar/admin', await sign(soarKey, 'soar-1', 'j2', 'soar-admin-v2'))).body).toMatchObject({ error: { code: 'unknown_key' } });
    expect((await client.request('POST', '/v1/soar/admin', await es('soar-2', 'j3', SOAR_ADMIN_AUDIENCE))).body).toMatchObject({ error: { code: 'audience_invalid' } });
    expect((await client.request('POST', '/v1/soar/admin', await es('soar-2', 'j4', 'soar-admin-v2'))).status).toBe(200);

    // a policy whose admin JWKS is unreadable or invalid is refused with a stable code; the last good keys stay
    for (const [file, content, code] of [
      ['missing.jwks.json', null, 'soar_admin_jwks_unreadable'],
      ['garbage.jwks.json', 'not json', 'soar_admin_jwks_invalid'],
      ['empty.jwks.json', '{"keys":[]}', 'soar_admin_jwks_invalid'],
      ['private.jwks.json', JSON.stringify({ keys: [{ kty: 'OKP', crv: 'Ed25519', x: 'AAAA', d: 'BBBB', kid: 'p' }] }), 'soar_admin_jwks_private'],
      ['rsa.jwks.json', JSON.stringify({ keys: [{ kty: 'RSA', n: 'AQAB', e: 'AQAB', kid: 'r' }] }), 'soar_admin_jwks_invalid'],
      ['nokid.jwks.json', JSON.stringify({ keys: [{ ...(await exportJWK(next.publicKey)) }] }), 'soar_admin_jwks_invalid'],
    ] as const) {
      if (content !== null) fs.writeFileSync(path.join(dir, file), content);
      const bad = compile([`  admin: { keys: [{ name: bad, jwksFile: ${file} }] }`]);
      const e = await p.updatePolicy(bad).then(
        () => undefined,
        (x: unknown) => x as { code: string; issues: { code: string; path: string; line: number; file: string }[] },
      );
      expect(e, file).toMatchObject({ code: 'policy_invalid', issues: [{ code, path: 'soar.admin.keys[0].jwksFile', file: 'p.yaml' }] });
      expect(e!.issues[0]!.line).toBeGreaterThan(0);
      expect(p.soarAdminTrust()!.audience, file).toBe('soar-admin-v2');
    }
    expect((await client.request('POST', '/v1/soar/admin', await es('soar-2', 'j5', 'soar-admin-v2'))).status).toBe(200);

    // the same kid in two files is ambiguous
    fs.writeFileSync(path.join(dir, 'dup.jwks.json'), fs.readFileSync(path.join(dir, 'rotated.jwks.json')));
    await expect(p.updatePolicy(compile(['  admin: { keys: [{ name: a, jwksFile: rotated.jwks.json }, { name: b, jwksFile: dup.jwks.json }] }']))).rejects.toMatchObject({
      issues: [{ code: 'soar_admin_kid_duplicate', path: 'soar.admin.keys[1].jwksFile' }],
    });

    // soar.admin removed: the admin API is off
    await p.updatePolicy(compile([]));
    expect(p.soarAdminTrust()).toBeNull();
    expect((await client.request('POST', '/v1/soar/admin', await es('soar-2', 'j6', 'soar-admin-v2'))).status).toBe(404);
    expect(log.filter((l) => l.startsWith('revoke'))).toEqual(['revoke s1 session_revoked', 'revoke s2 session_revoked']);
  });

  it('a plane whose policy names an unreadable SOAR admin JWKS does not start', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const ir = compileText(
      ['apiVersion: portcullis/v1', 'kind: Policy', 'deployment: { workloadTrustProfile: trusted_operator, runtime: gvisor }', 'soar:', '  admin:', '    keys: [{ name: x, jwksFile: nope.json }]', ''].join('\n'),
      { file: 'q.yaml', baseDir: t.dir },
    );
    await expect(
      startOperatorPlane({ dataDir: path.join(t.dir, 'data'), logger: silentLogger(), events: new EventBus(), metrics: new Metrics(), audit: new MemoryAudit(), ir, tripwire: { sweepEveryMs: 0 } }),
    ).rejects.toMatchObject({ code: 'policy_invalid', issues: [{ code: 'soar_admin_jwks_unreadable', file: 'q.yaml', line: 6, path: 'soar.admin.keys[0].jwksFile' }] });
  });

  it('the tripwire with onTrip kill: a session past its budget is killed with exfil_budget_exceeded (even with the audit log down) and reported', async () => {
    const receiver = await startReceiver();
    cleanups.push(() => receiver.stop());
    const { events, log, p, cli, edge, audit } = await plane({ webhookUrl: receiver.url, onTrip: 'kill' });
    // protective: the tripwire's kill does not wait for the audit log
    audit.fail = true;
    const entry = (bytesOut: number) =>
      events.emit({
        type: 'network.egress',
        severity: 'info',
        source: 'envoy',
        sessionId: 's1',
        data: { lane: 'egress', node: 'n', streamId: 'x', intermediate: true, method: 'CONNECT', authority: 'sink.test:443', status: 200, reason: null, session: 's1', upstream: null, downstream: null, bytesOut, bytesIn: 0, durationMs: null },
      });
    entry(1000);
    expect(log).toEqual([]);
    entry(100);
    await until(() => log.length >= 2);
    expect(log).toEqual(['revoke s1 exfil_budget_exceeded', 'destroy s1 exfil_budget_exceeded']);
    expect(edge.revoked.get('s1')).toBe('exfil_budget_exceeded');
    await p.outbox.idle();
    expect(receiver.received).toHaveLength(1);
    audit.fail = false;
    const show = JSON.parse((await cli('sessions', 'show', 's1', '--json')).out);
    expect(show.session).toMatchObject({ denied: { kind: 'exfil', reason: 'exfil_budget_exceeded', actor: 'tripwire' }, egress: { bytes: 1100, tripped: true } });
  });
});
