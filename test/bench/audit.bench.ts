/**
 * Audit writer benchmark: append throughput and latency with group commit (one write + one
 * fdatasync per batch, every append resolved only after its fdatasync), for 1, 16 and 256
 * concurrent appenders. Run: `npx tsx test/bench/audit.bench.ts`. Writes test/bench/results/audit.json.
 *
 * Each appender loops `await writer.append(event)`; latency is measured per append from the call
 * to the resolution of its promise. Events are pre-built (~800 bytes of canonical JSON each) so
 * the numbers are the writer's: validation, canonical JSON, hashing, the chain, checkpoints
 * (every 1000 records, Ed25519-signed), the write and the fdatasync.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../common/logger.js';
import { canonical } from '../../audit/canonical.js';
import { apiActivity, type OcsfEvent } from '../../audit/ocsf.js';
import { verify } from '../../audit/verify.js';
import { AuditWriter } from '../../audit/writer.js';
import { readJwks } from '../../audit/keys.js';
import { percentile, writeResult } from './machine.js';

const GOAL_EVENTS_PER_SEC = 20_000;
const RUNS: { concurrency: number; events: number }[] = [
  { concurrency: 1, events: Number(process.env.AUDIT_BENCH_SERIAL_EVENTS ?? 3000) },
  { concurrency: 16, events: Number(process.env.AUDIT_BENCH_EVENTS ?? 60_000) },
  { concurrency: 256, events: Number(process.env.AUDIT_BENCH_EVENTS ?? 60_000) },
];

function events(n: number): OcsfEvent[] {
  return Array.from({ length: n }, (_, i) =>
    apiActivity({
      time: 1_700_000_000_000 + i,
      actor: { id: `operator:user-${i % 17}`, type: 'admin' },
      outcome: i % 5 === 0 ? 'failure' : 'success',
      activity: 'update',
      operation: 'tool.call',
      service: 'mcp-gateway',
      requestId: `req-${i}`,
      resource: { type: 'tool', id: `fs.write#${i}`, name: 'fs.write' },
      traceId: `4bf92f3577b34da6a3ce929d0e0e${String(i).padStart(4, '0')}`,
      sessionId: `session-${i % 64}`,
      statusDetail: i % 5 === 0 ? 'argument_denied' : undefined,
      unmapped: { tool_args_sha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', policy_digest: 'sha256:9f86d081884c7d65', rung: 2 },
    }),
  );
}

async function run(concurrency: number, total: number, pool: OcsfEvent[]) {
  const dir = await mkdtemp(join(os.tmpdir(), 'audit-bench-'));
  const w = await AuditWriter.open({ dataDir: dir, logger: silentLogger(), checkpointEvery: 1000, checkpointIntervalMs: 0 });
  const lat = new Float64Array(total);
  let next = 0;
  const start = process.hrtime.bigint();
  async function appender(): Promise<void> {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      const t0 = process.hrtime.bigint();
      await w.append(pool[i % pool.length]!);
      lat[i] = Number(process.hrtime.bigint() - t0) / 1e6;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, appender));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const stats = w.stats;
  await w.close();
  const check = await verify(w.path, { jwks: await readJwks(w.jwksPath) });
  await rm(dir, { recursive: true, force: true });
  lat.sort();
  return {
    concurrency,
    events: total,
    seconds: round(seconds, 3),
    eventsPerSec: Math.round(total / seconds),
    p50Ms: round(percentile(lat, 50), 3),
    p99Ms: round(percentile(lat, 99), 3),
    maxMs: round(lat[lat.length - 1]!, 3),
    commits: stats.commits,
    avgEventsPerCommit: round(total / Math.max(1, stats.commits), 1),
    checkpoints: stats.checkpoints,
    verified: check.ok,
  };
}

function round(n: number, d: number): number {
  const f = 10 ** d;
  return Math.round(n * f) / f;
}

async function main(): Promise<void> {
  const pool = events(2000);
  const eventBytes = Math.round(pool.reduce((s, e) => s + canonical(e).length, 0) / pool.length);
  // warm-up (JIT, key generation, first file creation)
  await run(16, 2000, pool);
  const results = [];
  for (const r of RUNS) {
    const res = await run(r.concurrency, r.events, pool);
    results.push(res);
    console.log(
      `concurrency ${String(res.concurrency).padStart(3)}: ${String(res.eventsPerSec).padStart(7)} events/s  p50 ${res.p50Ms} ms  p99 ${res.p99Ms} ms  ` +
        `(${res.events} events, ${res.commits} commits, ${res.avgEventsPerCommit} events/commit, verified ${res.verified})`,
    );
  }
  const file = writeResult('audit', {
    benchmark: 'audit-writer-append',
    config: { checkpointEvery: 1000, fsync: 'fdatasync per group commit', eventBytes, tmpdir: os.tmpdir() },
    goalEventsPerSec: GOAL_EVENTS_PER_SEC,
    goalMet: results.some((r) => r.concurrency >= 16 && r.eventsPerSec >= GOAL_EVENTS_PER_SEC),
    results,
  });
  console.log(`wrote ${file}`);
}

await main();
