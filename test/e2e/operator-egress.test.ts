import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import { e2eGate } from '../harness/e2e-gate.js';
import { eventually } from '../harness/ports.js';
import { floodConnect, floodOperator, PORT, startOperatorStack, type OperatorStack } from '../harness/operator-stack.js';
import { summarize } from '../bench/machine.js';
import { verify } from '../../audit/verify.js';
import { readJwks } from '../../audit/keys.js';
import { SOAR_JWKS_FILE } from '../../operator/soar-keys.js';
import type { OutboxEvent } from '../../operator/soar-out.js';
import type { KillResult } from '../../operator/kill.js';

/**
 * The operator plane against a real Envoy with sessions required at every rung:
 *  - the exfil tripwire at the transparent rung (an upload past the budget to an allowed sink)
 *    trips within the window from real access logs, the SOAR receiver gets a verifiable
 *    `exfil.tripped`, onTrip kill denylists the session, its next connection is refused with
 *    `exfil_budget_exceeded`, and its open tunnel is cut by the tunnel bound;
 *  - kill one and kill all while the agent path and the operator socket are flooded: the latency
 *    distribution is recorded; afterwards the sandbox is gone, the open bump tunnel refuses the
 *    next request (no credential injected), new tunnels are refused;
 *  - a sandbox has no route to the operator listener.
 */
const gate = e2eGate(['envoy', 'root', 'netns'], 'operator plane');
const TUNNEL_BOUND_S = 10;
const BUDGET = 1024 * 1024;

describe.skipIf(!gate.ok)('operator plane through a real Envoy', () => {
  let s: OperatorStack;
  const samples: Record<string, number[]> = { kill: [], killAll: [] };

  beforeAll(async () => {
    s = await startOperatorStack({
      tripwire: { bytesPerSession: '1Mi', distinctDestinations: 20, window: '60s', onTrip: 'kill' },
      maxTunnelSeconds: TUNNEL_BOUND_S,
      operatorTcp: true,
    });
  });

  afterAll(async () => {
    if (samples.kill!.length) process.stderr.write(`[operator e2e] kill latency ms (call → next tunnel request refused): ${JSON.stringify(summarize(samples.kill!))}\n`);
    await s?.close();
  });

  it('tripwire, transparent rung: an upload past the budget trips within the window, the SOAR receiver gets exfil.tripped, the session is killed, its next connection refused', async () => {
    const { id, token } = await s.newSession();
    const file = path.join(s.tmp, 'upload.bin');
    fs.writeFileSync(file, Buffer.alloc(16 * 1024 * 1024, 0x61));
    fs.chmodSync(s.tmp, 0o755);
    fs.chmodSync(file, 0o644);
    const t0 = Date.now();
    // 1 MiB/s for 16 s: past the 1 MiB budget after about a second, and longer than the tunnel bound
    const up = s.spawnCurl(`https://sink.test:${PORT}/upload`, { token, args: ['-X', 'POST', '--data-binary', `@${file}`, '--limit-rate', '1M'] });
    const exited = new Promise<{ code: number | null; at: number }>((r) => up.once('exit', (code) => r({ code, at: Date.now() })));
    const crossedAt = t0 + 1000;

    const tripped = await eventually(() => s.cp.events.history('exfil.tripped').find((e) => e.sessionId === id), 30_000, 'exfil.tripped');
    const detectedAt = Date.parse(tripped.time);
    process.stderr.write(`[operator e2e] tripwire detection ≈ ${detectedAt - crossedAt} ms after the budget was crossed (ALS flush interval bounds it)\n`);
    expect(detectedAt - t0).toBeLessThan(60_000); // within the window
    expect(tripped.data).toMatchObject({ trigger: 'bytes', lane: 'egress', authority: `sink.test:${PORT}`, onTrip: 'kill' });
    expect(tripped.data.bytes as number).toBeGreaterThan(BUDGET);

    // onTrip kill: denylisted with the exfil reason, sandbox torn down
    await eventually(() => s.plane.denylist.get(id), 5000, 'denylist entry');
    expect(s.plane.denylist.get(id)).toMatchObject({ kind: 'exfil', reason: 'exfil_budget_exceeded', actor: 'tripwire' });
    await eventually(() => s.sandbox.getSession(id)?.state === 'destroyed', 5000, 'sandbox destroyed');

    // the SOAR receiver got a webhook it can verify with the published JWKS
    const jwks = JSON.parse(fs.readFileSync(path.join(s.dataDir, SOAR_JWKS_FILE), 'utf8')) as JSONWebKeySet;
    const hook = await eventually(async () => {
      for (const m of s.receiver.received) {
        const { payload } = await jwtVerify(m.body, createLocalJWKSet(jwks), { audience: s.receiver.url, issuer: 'portcullis' });
        const ev = payload.event as OutboxEvent;
        if (ev.type === 'exfil.tripped' && ev.sessionId === id) return ev;
      }
      return undefined;
    }, 15_000, 'exfil.tripped webhook');
    expect(hook.data).toMatchObject({ reason: 'exfil_budget_exceeded' });

    // the upload's open tunnel is cut by the tunnel bound, before the upload could finish
    const end = await exited;
    expect(end.code).not.toBe(0);
    expect(end.at - t0).toBeLessThan((TUNNEL_BOUND_S + 4) * 1000);

    // its next connection is refused with the exfil reason
    const next = await s.curl(`https://sink.test:${PORT}/again`, { token });
    expect(next.statuses[0]).toBe(403);
    expect(next.reasons[0]).toBe('exfil_budget_exceeded');
    const bump = await s.curl(`https://api.bump.test:${PORT}/again`, { token, cacert: s.deploymentCaFile });
    expect(bump.reasons[0]).toBe('exfil_budget_exceeded');
  });

  it('kill one session at a time while the agent path and the operator socket are flooded', async () => {
    const loadSession = await s.newSession('load');
    const floods = [floodConnect(s.tn.rootIp, s.egressPort, loadSession.token, `sink.test:${PORT}`, 16), floodOperator(s.plane.api.socketPath!, 8)];
    try {
      for (let i = 0; i < 8; i++) {
        const { id, token } = await s.newSession();
        const tunnel = await s.tunnel(token);
        try {
          expect(tunnel.connect).toMatch(/ 200 /);
          const ok = await tunnel.get(`/before-${i}`, 'Bearer guest');
          expect(ok.status).toBe(200);
          // (the upstream reports on its stdout, which can arrive after the response under the flood)
          await s.up.waitFor((e) => e.event === 'request' && e.url === `/before-${i}`, 5_000);
          const injected = s.up.requests().filter((r) => r.url === `/before-${i}`);
          expect(injected.map((r) => r.headers.authorization)).toEqual(['Bearer s3cret-v1']);
          const seen = s.up.requests().length;

          const t0 = performance.now();
          const r = await s.client.request<{ result: KillResult }>('POST', `/v1/sessions/${id}/kill`, { note: `e2e ${i}` });
          const refused = await tunnel.get(`/after-${i}`, 'Bearer guest');
          samples.kill!.push(performance.now() - t0);
          expect(r.status).toBe(200);
          expect(r.body.result).toMatchObject({ sessionId: id, sandbox: 'destroyed', newlyDenied: true });
          expect(refused).toMatchObject({ status: 403, reason: 'session_revoked' });
          // no request of the killed session reached the upstream: nothing injected
          expect(s.up.requests().slice(seen).filter((q) => q.url === `/after-${i}`)).toEqual([]);
          expect(s.sandbox.getSession(id)!.state).toBe('destroyed');
          const fresh = await s.curl(`https://api.bump.test:${PORT}/new`, { token, cacert: s.deploymentCaFile });
          expect(fresh.statuses[0]).toBe(403);
          expect(fresh.reasons[0]).toBe('session_revoked');
        } finally {
          tunnel.close();
        }
      }
    } finally {
      const done = await Promise.all(floods.map((f) => f.stop()));
      process.stderr.write(`[operator e2e] under load: ${done[0]} CONNECTs and ${done[1]} operator reads during the kills\n`);
      expect(done[0]).toBeGreaterThan(0);
      expect(done[1]).toBeGreaterThan(0);
    }
    const st = summarize(samples.kill!);
    expect(st.max).toBeLessThan(30_000); // the requirement; the 2 s goal is measured by the benchmark
  });

  it('kill-all under load: every sandbox gone, every open tunnel refuses its next request, no new tunnel', async () => {
    const loadSession = await s.newSession('load2');
    const floods = [floodConnect(s.tn.rootIp, s.egressPort, loadSession.token, `sink.test:${PORT}`, 16), floodOperator(s.plane.api.socketPath!, 8)];
    const victims = await Promise.all(Array.from({ length: 4 }, () => s.newSession()));
    const tunnels = await Promise.all(victims.map((v) => s.tunnel(v.token)));
    try {
      for (const [i, t] of tunnels.entries()) expect((await t.get(`/all-before-${i}`)).status).toBe(200);
      const seen = s.up.requests().length;
      const t0 = performance.now();
      const r = await s.client.request<{ result: { sessions: KillResult[]; revokeAllMs: number } }>('POST', '/v1/kill-all', {});
      samples.killAll!.push(performance.now() - t0);
      expect(r.status).toBe(200);
      for (const v of victims) expect(s.sandbox.getSession(v.id)!.state).toBe('destroyed');
      for (const [i, t] of tunnels.entries()) expect(await t.get(`/all-after-${i}`)).toMatchObject({ status: 403, reason: 'session_revoked' });
      expect(s.up.requests().slice(seen).filter((q) => q.url.startsWith('/all-after'))).toEqual([]);
      const fresh = await s.curl(`https://sink.test:${PORT}/new`, { token: victims[0]!.token });
      expect(fresh.reasons[0]).toBe('session_revoked');
      process.stderr.write(`[operator e2e] kill-all of ${r.body.result.sessions.length} sessions: ${Math.round(samples.killAll![0]!)} ms, all revoked after ${r.body.result.revokeAllMs.toFixed(2)} ms\n`);
    } finally {
      for (const t of tunnels) t.close();
      await Promise.all(floods.map((f) => f.stop()));
    }
  });

  it('a sandbox has no route to the operator listener (socket or loopback TCP)', async () => {
    const port = s.plane.api.tcpAddress!.port;
    const tcpRequests = () => Object.entries(s.cp.metrics.snapshot()).filter(([k]) => k.startsWith('operator_api_requests_total{') && k.includes('transport="tcp"')).reduce((a, [, v]) => a + v, 0);
    const before = tcpRequests();
    const { token } = await s.newSession();
    for (const authority of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, `${s.tn.rootIp}:${port}`]) {
      const r = await s.curl(`https://${authority}/v1/sessions`, { token, args: ['--proxytunnel'] });
      expect(r.statuses[0], authority).toBe(403);
      expect(r.reasons[0], authority).toBe('destination_not_allowed');
    }
    // absolute-form through the proxy, too
    const plain = await s.curl(`http://127.0.0.1:${port}/v1/kill-all`, { token, args: ['-X', 'POST'] });
    expect(plain.statuses[0]).toBe(403);
    // and directly from the sandbox's namespace: its loopback is its own, the host's test-net address has nothing there
    for (const host of ['127.0.0.1', s.tn.rootIp]) {
      const d = await s.tn.runIn('cli', 'curl', ['-sS', '--max-time', '3', `http://${host}:${port}/v1/sessions`], { check: false });
      expect(d.code, host).not.toBe(0);
    }
    expect(tcpRequests()).toBe(before);
    expect(s.cp.metrics.get('operator_api_unauthorized_total')).toBe(0);
  });

  it('everything above is in the audit log, which verifies', async () => {
    await s.audit.checkpoint();
    const r = await verify(s.audit.path, { jwks: await readJwks(path.join(s.dataDir, 'audit-jwks.json')) });
    expect(r.ok).toBe(true);
    const text = fs.readFileSync(s.audit.path, 'utf8');
    for (const op of ['"session.kill"', '"session.kill_all"', 'exfil.tripped']) expect(text).toContain(op);
  });
});
