/**
 * Operator plane benchmarks (run as root with Envoy: `npx tsx test/bench/operator.bench.ts`;
 * results in test/bench/results/operator.json).
 *
 * 1. Kill latency, revoke-to-refusal at the edge through a real Envoy bump tunnel: a guest holds an
 *    open CONNECT tunnel (TLS terminated by Envoy, credential injected); the operator kills the
 *    session over the operator socket; the clock stops when the guest's next request in that tunnel
 *    comes back refused (403 session_revoked). Measured idle, then while the agent path (authorized
 *    CONNECT flood) and the operator socket (read flood) are flooded. Also the kill call alone and
 *    the revocation inside it, and the kill call without Envoy (until the session is in the denials).
 * 2. Tripwire detection delay: a guest opens a transparent CONNECT tunnel, idles 0–4.4 s (so the
 *    crossing falls at every phase of Envoy's periodic flush), then uploads at a fixed rate; it notes
 *    the wall-clock time the byte that crosses the budget left it; the delay is from there to the
 *    `exfil.tripped` event. Bounded by Envoy's access-log flush interval for long
 *    streams (HCM access_log_flush_interval, 1 s in the translator) plus the ALS buffer (0.5 s).
 * 3. Kill latency with the REAL supervisor (needs docker + runsc; results in
 *    test/bench/results/operator-kill-real.json; `OPERATOR_BENCH_ONLY=real` runs only this part):
 *    gVisor sandboxes made through the MCP gateway, each killed over the operator socket while an
 *    MCP session runs tools and 4 CONNECT workers use its egress token (a modest load for 2 cores).
 *    The kill call includes the real ordered teardown (revoke → network → scrub → kill → remove);
 *    the edge number stops when the next request in the victim's open bump tunnel is refused.
 */
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { EventBus } from '../../common/events.js';
import { silentLogger } from '../../common/logger.js';
import { Metrics } from '../../common/metrics.js';
import { JwtSessions } from '../../xds-server/sessions.js';
import { Denylist } from '../../operator/denylist.js';
import { KillSwitch, type KillResult } from '../../operator/kill.js';
import { MemoryAudit } from '../../operator/testkit.js';
import { checkPrereqs } from '../harness/e2e-gate.js';
import { floodConnect, floodOperator, PORT, startOperatorStack, type OperatorStack } from '../harness/operator-stack.js';
import { summarize, writeResult } from './machine.js';

const log = (s: string) => process.stderr.write(`${s}\n`);
const KILLS = Number(process.env.OPERATOR_BENCH_KILLS ?? 40);
const TRIPS = Number(process.env.OPERATOR_BENCH_TRIPS ?? 8);
const BUDGET = 1024 * 1024;
const RATE = 512 * 1024;
const GOAL_KILL_P99_MS = 2000;
const FLOOD_CONNECT = Number(process.env.OPERATOR_BENCH_FLOOD_CONNECT ?? 16);
const FLOOD_OPERATOR = Number(process.env.OPERATOR_BENCH_FLOOD_OPERATOR ?? 8);
const GOAL_DETECT_MS = 5000;

const UPLOADER = `
import json, socket, ssl, sys, time, base64
host, port, authority, token, cafile, sni, budget, rate, seconds, idle = sys.argv[1:11]
budget, rate, seconds, idle = int(budget), int(rate), float(seconds), float(idle)
s = socket.create_connection((host, int(port)), timeout=10)
auth = base64.b64encode(("session:" + token).encode()).decode()
s.sendall(("CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\nProxy-Authorization: Basic %s\\r\\n\\r\\n" % (authority, authority, auth)).encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    c = s.recv(4096)
    if not c: break
    head += c
tls = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=sni)
tls.sendall(("POST /upload HTTP/1.1\\r\\nHost: %s\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n" % sni).encode())
time.sleep(idle)
sent, start, crossed = 0, time.time(), None
chunk = b"a" * 16384
try:
    while time.time() - start < seconds:
        frame = b"%x\\r\\n" % len(chunk) + chunk + b"\\r\\n"
        tls.sendall(frame)
        sent += len(frame)
        if crossed is None and sent > budget:
            crossed = time.time()
            print(json.dumps({"crossed_at": int(crossed * 1000), "sent": sent}), flush=True)
        ahead = sent / rate - (time.time() - start)
        if ahead > 0: time.sleep(ahead)
except Exception as e:
    print(json.dumps({"error": str(e)}), flush=True)
print(json.dumps({"end": int(time.time() * 1000), "sent": sent}), flush=True)
`;

interface KillRound {
  edge: number[];
  call: number[];
  revoke: number[];
  /** tunnels or requests refused before the kill for another reason (under load), retried */
  setupRetries: number;
  /** requests after the kill refused without the session reason (under load), re-sent */
  reasonlessRefusals: number;
}

async function killRound(s: OperatorStack, n: number, label: string): Promise<KillRound> {
  const out: KillRound = { edge: [], call: [], revoke: [], setupRetries: 0, reasonlessRefusals: 0 };
  for (let i = 0; i < n; i++) {
    const { id, token } = await s.newSession();
    let tunnel: Awaited<ReturnType<OperatorStack['tunnel']>> | undefined;
    for (let attempt = 0; ; attempt++) {
      tunnel = await s.tunnel(token);
      const ok = / 200 /.test(tunnel.connect) ? await tunnel.get(`/${label}-before-${i}`) : { status: 0 };
      if (ok.status === 200) break;
      tunnel.close();
      out.setupRetries++;
      if (attempt >= 10) throw new Error(`cannot open a working tunnel: ${tunnel.connect} ${JSON.stringify(ok)}`);
    }
    try {
      const t0 = performance.now();
      const r = await s.client.request<{ result: KillResult }>('POST', `/v1/sessions/${id}/kill`, {});
      const t1 = performance.now();
      let refused = await tunnel.get(`/${label}-after-${i}`);
      for (let k = 0; k < 10 && refused.status === 403 && !refused.reason; k++) {
        out.reasonlessRefusals++;
        refused = await tunnel.get(`/${label}-after-${i}-${k}`);
      }
      const t2 = performance.now();
      if (r.status !== 200 || refused.status !== 403 || refused.reason !== 'session_revoked') throw new Error(`kill not effective: ${r.status} ${JSON.stringify(refused)}`);
      out.edge.push(t2 - t0);
      out.call.push(t1 - t0);
      out.revoke.push(r.body.result.revokeMs);
    } finally {
      tunnel.close();
    }
  }
  return out;
}

/** The kill call without Envoy: from the call until the session is in the denials the edge is given. */
async function decisionLevel(n: number): Promise<ReturnType<typeof summarize>> {
  const sessions = new JwtSessions({ jwks: () => ({ keys: [] }) });
  const denylist = await Denylist.open({ enforcers: [sessions], logger: silentLogger() });
  const kill = new KillSwitch({ denylist, audit: new MemoryAudit(), events: new EventBus(), metrics: new Metrics(), logger: silentLogger() });
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const sid = `bench-${i}`;
    const t0 = performance.now();
    await kill.kill(sid, { actor: { id: 'bench', type: 'admin' } });
    const denied = sessions.denials().some((d) => d.sessionId === sid && d.reason === 'session_revoked');
    samples.push(performance.now() - t0);
    if (!denied) throw new Error('not in the denials after the kill');
  }
  return summarize(samples);
}

async function tripRound(s: OperatorStack, n: number): Promise<{ delays: number[]; detail: unknown[] }> {
  const script = path.join(s.tmp, 'uploader.py');
  fs.writeFileSync(script, UPLOADER);
  fs.chmodSync(s.tmp, 0o755);
  const delays: number[] = [];
  const detail: unknown[] = [];
  for (let i = 0; i < n; i++) {
    const { id, token } = await s.newSession();
    // the tunnel idles first, so the crossing falls at every phase of Envoy's periodic flush
    const idleBefore = ((i % 8) * 5) / 8;
    const r = await s.tn.runIn('cli', 'python3', [script, s.tn.rootIp, String(s.egressPort), `sink.test:${PORT}`, token, s.upstreamCaFile, 'sink.test', String(BUDGET), String(RATE), '9', String(idleBefore)], {
      check: false,
      timeoutMs: 40_000,
    });
    const lines = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { crossed_at?: number; sent?: number; error?: string; end?: number });
    const crossed = lines.find((l) => l.crossed_at)?.crossed_at;
    const deadline = Date.now() + 10_000;
    let ev = s.cp.events.history('exfil.tripped').find((e) => e.sessionId === id);
    while (!ev && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 50));
      ev = s.cp.events.history('exfil.tripped').find((e) => e.sessionId === id);
    }
    if (!crossed || !ev) {
      detail.push({ i, crossed: crossed ?? null, tripped: !!ev, out: lines });
      continue;
    }
    delays.push(Date.parse(ev.time) - crossed);
    detail.push({ i, idleBeforeSeconds: idleBefore, delayMs: Date.parse(ev.time) - crossed, bytesAtTrip: ev.data.bytes });
  }
  return { delays, detail };
}

const REAL_KILLS = Number(process.env.OPERATOR_BENCH_REAL_KILLS ?? 12);

async function realSupervisorKills(): Promise<void> {
  const gate = checkPrereqs(['envoy', 'docker', 'runsc', 'root', 'netns']);
  if (!gate.ok) {
    log(`real supervisor kills skipped, missing: ${gate.missing.join('; ')}`);
    return;
  }
  const s = await startOperatorStack({
    tripwire: { bytesPerSession: '256Mi', distinctDestinations: 1000, window: '10m', onTrip: 'alert' },
    maxTunnelSeconds: 30,
    realSupervisor: { instanceId: 'operator-bench-real' },
  });
  const proxyToken = async (caller: string) => {
    const mcp = await s.mcp(caller);
    const r = (await mcp.client.callTool({ name: 'exec', arguments: { command: ['sh', '-c', 'printf %s "$HTTPS_PROXY"'], timeoutMs: 60_000 } })).structuredContent as { stdout?: string };
    if (!r?.stdout) throw new Error(`no sandbox for ${caller}: ${JSON.stringify(r)}`);
    const id = s.sandbox.listSessions().find((x) => x.owner === caller && x.state === 'ready')!.sessionId;
    return { mcp, id, token: decodeURIComponent(new URL(r.stdout).password) };
  };
  const call: number[] = [];
  const edge: number[] = [];
  const revoke: number[] = [];
  const create: number[] = [];
  try {
    const load = await proxyToken('bench-load');
    let stop = false;
    let tools = 0;
    const loop = (async () => {
      while (!stop) {
        await load.mcp.client.callTool({ name: 'exec', arguments: { command: ['true'] } }).then(
          () => tools++,
          () => undefined,
        );
      }
    })();
    const flood = floodConnect(s.tn.rootIp, s.egressPort, load.token, `sink.test:${PORT}`, 4);
    const t0 = Date.now();
    for (let i = 0; i < REAL_KILLS; i++) {
      const c0 = performance.now();
      const v = await proxyToken(`bench-victim-${i}`);
      create.push(performance.now() - c0);
      const tunnel = await s.tunnel(v.token);
      try {
        if ((await tunnel.get(`/rb-${i}`, 'Bearer guest')).status !== 200) throw new Error('tunnel setup failed');
        const k0 = performance.now();
        const r = await s.client.request<{ result: KillResult }>('POST', `/v1/sessions/${v.id}/kill`, {});
        call.push(performance.now() - k0);
        const refused = await tunnel.get(`/ra-${i}`, 'Bearer guest');
        edge.push(performance.now() - k0);
        if (r.status !== 200 || r.body.result.sandbox !== 'destroyed' || refused.status !== 403) throw new Error(`kill ${i}: ${r.status} ${JSON.stringify(refused)}`);
        revoke.push(r.body.result.revokeMs);
      } finally {
        tunnel.close();
        await v.mcp.close();
      }
    }
    const secs = (Date.now() - t0) / 1000;
    stop = true;
    await loop;
    const connects = await flood.stop();
    await load.mcp.close();
    log(`real supervisor: kill call ${JSON.stringify(summarize(call))}; edge ${JSON.stringify(summarize(edge))}; revoke ${JSON.stringify(summarize(revoke))}`);
    const file = writeResult('operator-kill-real', {
      method:
        'gVisor sandbox made through the MCP gateway; operator socket POST /v1/sessions/:id/kill (revoke at every enforcer, then the supervisor\'s ordered teardown); edge = until the next request in the victim\'s open bump tunnel is refused',
      kills: REAL_KILLS,
      killCallMs: summarize(call),
      edgeMs: summarize(edge),
      revokeInsideMs: summarize(revoke),
      sandboxCreateViaMcpMs: summarize(create),
      load: { mcpToolCallsPerSec: Math.round(tools / secs), connectsPerSec: Math.round(connects / secs), connectConcurrency: 4 },
    });
    log(`wrote ${file}`);
  } finally {
    await s.close();
  }
}

async function main(): Promise<void> {
  if (process.env.OPERATOR_BENCH_ONLY === 'real') return realSupervisorKills();
  const gate = checkPrereqs(['envoy', 'root', 'netns']);
  const decision = await decisionLevel(2000);
  log(`kill → session in the edge's denials (no Envoy): ${JSON.stringify(decision)}`);
  if (!gate.ok) {
    log(`missing: ${gate.missing.join('; ')} — only the decision-level number`);
    writeResult('operator', { decisionLevelKillMs: decision, skipped: gate.missing });
    return;
  }
  const s = await startOperatorStack({
    // alert: the flooding session must keep flooding (with kill it would trip and be refused cheaply)
    tripwire: { bytesPerSession: '1Mi', distinctDestinations: 1000, window: '60s', onTrip: 'alert' },
    maxTunnelSeconds: 30,
  });
  try {
    log(`kill latency, idle (${KILLS})…`);
    const idle = await killRound(s, KILLS, 'idle');
    log(`  edge ${JSON.stringify(summarize(idle.edge))}`);
    log(`kill latency, agent path and operator socket flooded (${KILLS})…`);
    const load = await s.newSession('load');
    const before = await s.envoy.admin.stats('jwt_authn');
    const floods = [floodConnect(s.tn.rootIp, s.egressPort, load.token, `sink.test:${PORT}`, FLOOD_CONNECT), floodOperator(s.plane.api.socketPath!, FLOOD_OPERATOR)];
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    const loaded = await killRound(s, KILLS, 'load');
    const secs = (Date.now() - t0) / 1000;
    const [connects, reads] = await Promise.all(floods.map((f) => f.stop()));
    const after = await s.envoy.admin.stats('jwt_authn');
    const authzOk = (after['http.egress.jwt_authn.allowed'] ?? 0) - (before['http.egress.jwt_authn.allowed'] ?? 0);
    const authzDenied = (after['http.egress.jwt_authn.denied'] ?? 0) - (before['http.egress.jwt_authn.denied'] ?? 0);
    log(`  edge ${JSON.stringify(summarize(loaded.edge))}; flood ${Math.round(connects! / secs)} CONNECT/s, ${Math.round(reads! / secs)} operator reads/s; egress session checks during the flood: ${authzOk} allowed, ${authzDenied} denied; setup retries ${loaded.setupRetries}`);

    log(`tripwire detection delay (${TRIPS} uploads at ${RATE / 1024} KiB/s past a ${BUDGET / 1024} KiB budget)…`);
    const trips = await tripRound(s, TRIPS);
    log(`  ${JSON.stringify(summarize(trips.delays))}`);

    const loadedEdge = summarize(loaded.edge);
    const detect = summarize(trips.delays);
    const file = writeResult('operator', {
      config: { tunnelBoundSeconds: 30, alsFlushIntervalSeconds: 1, alsBufferFlushSeconds: 0.5, budgetBytes: BUDGET, uploadBytesPerSecond: RATE },
      kill: {
        method: 'operator socket POST /v1/sessions/:id/kill → next request in an open bump tunnel refused (403 session_revoked)',
        idle: { edgeMs: summarize(idle.edge), callMs: summarize(idle.call), revokeInsideMs: summarize(idle.revoke) },
        flooded: {
          edgeMs: loadedEdge,
          callMs: summarize(loaded.call),
          revokeInsideMs: summarize(loaded.revoke),
          floodConnectsPerSec: Math.round(connects! / secs),
          floodOperatorReadsPerSec: Math.round(reads! / secs),
          floodConcurrency: { connect: FLOOD_CONNECT, operator: FLOOD_OPERATOR },
          setupRetries: loaded.setupRetries,
          reasonlessRefusals: loaded.reasonlessRefusals,
          egressSessionChecksDuringFlood: { allowed: authzOk, denied: authzDenied },
        },
        decisionLevelMs: decision,
        goalP99Ms: GOAL_KILL_P99_MS,
        goalMet: loadedEdge.p99 <= GOAL_KILL_P99_MS && summarize(idle.edge).p99 <= GOAL_KILL_P99_MS,
      },
      tripwire: {
        method: 'guest-side time of the byte that crossed the budget → exfil.tripped event (same host clock)',
        detectionDelayMs: detect,
        missed: TRIPS - trips.delays.length,
        goalMs: GOAL_DETECT_MS,
        goalMet: trips.delays.length === TRIPS && detect.max <= GOAL_DETECT_MS,
        runs: trips.detail,
      },
      lostAccessLogEntries: s.plane.tripwire.status().lost,
    });
    log(`wrote ${file}`);
  } finally {
    await s.close();
  }
  await realSupervisorKills();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    log(`operator bench failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
