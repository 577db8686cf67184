import { appendFile, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { EventBus } from '../common/events.js';
import { silentLogger } from '../common/logger.js';
import { parseRecord } from './chain.js';
import { generateSigningKey, SIGNING_KEY_FILE } from './keys.js';
import { requireAudit } from './require-audit.js';
import { errno, FaultyIo, jwksOf, readJsonl, sampleEvent, tempDir } from './testutil.js';
import { verify } from './verify.js';
import { AuditWriter, type AuditWriterOptions } from './writer.js';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function openTemp(extra: Partial<AuditWriterOptions> = {}): Promise<{ w: AuditWriter; dir: string }> {
  const t = tempDir();
  const w = await AuditWriter.open({ dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0, ...extra });
  cleanups.push(t.cleanup, () => w.close());
  return { w, dir: t.dir };
}

describe('AuditWriter', () => {
  it('appends in order, group-commits concurrent appends, and the log verifies', async () => {
    const { w, dir } = await openTemp({ checkpointEvery: 50 });
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => w.append(sampleEvent(i))));
    const seqs = results.map((r) => r.seq);
    expect(new Set(seqs).size).toBe(200);
    // concurrent appends share commits
    expect(w.stats.commits).toBeLessThan(200);
    expect(w.stats.appended).toBe(200);
    await w.close();
    const res = await verify(w.path, { jwks: await jwksOf(dir) });
    expect(res).toMatchObject({ ok: true, events: 200 });
    const lines = await readJsonl(w.path);
    for (const r of results) {
      const p = parseRecord(lines[r.seq]!);
      expect(p.ok && p.record.hash).toBe(r.hash);
    }
  });

  it('resolves an append only after the fdatasync of its batch', async () => {
    const io = new FaultyIo();
    const { w } = await openTemp({ io });
    io.holdSync = true;
    let done = false;
    const p = w.append(sampleEvent(1)).then((r) => {
      done = true;
      return r;
    });
    await vi.waitFor(() => expect(io.heldCount).toBe(1));
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    io.holdSync = false;
    io.release();
    await p;
    expect(done).toBe(true);
    expect(io.syncs).toBeGreaterThanOrEqual(1);
  });

  it('fails closed: a write error rejects with audit_write_failed and refuses later appends; requireAudit never runs the action', async () => {
    const io = new FaultyIo();
    const { w } = await openTemp({ io });
    await w.append(sampleEvent(0));
    io.failWrite = errno('ENOSPC', 'no space left on device');
    await expect(w.append(sampleEvent(1))).rejects.toMatchObject({ code: 'audit_write_failed' });
    io.failWrite = null; // even once the disk recovers, this writer stays closed
    await expect(w.append(sampleEvent(2))).rejects.toMatchObject({ code: 'audit_write_failed' });
    const action = vi.fn(() => 'done');
    await expect(requireAudit(w, sampleEvent(3), action)).rejects.toMatchObject({ code: 'audit_write_failed' });
    expect(action).not.toHaveBeenCalled();
    expect(w.failed).toBe(true);
  });

  it('fails closed on an fdatasync error (EIO) and on EACCES', async () => {
    for (const [where, code] of [
      ['sync', 'EIO'],
      ['write', 'EACCES'],
    ] as const) {
      const io = new FaultyIo();
      const { w } = await openTemp({ io });
      if (where === 'sync') io.failSync = errno(code);
      else io.failWrite = errno(code);
      const action = vi.fn();
      await expect(requireAudit(w, sampleEvent(1), action)).rejects.toMatchObject({ code: 'audit_write_failed', details: { errno: code } });
      expect(action).not.toHaveBeenCalled();
    }
  });

  it('refuses to open where the data dir cannot be created', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    await writeFile(join(t.dir, 'plain-file'), 'x');
    await expect(AuditWriter.open({ dataDir: join(t.dir, 'plain-file', 'sub'), logger: silentLogger() })).rejects.toMatchObject({ code: 'audit_write_failed' });
  });

  it('rejects events that are not OCSF audit events or not plain JSON', async () => {
    const { w } = await openTemp();
    await expect(w.append({ hello: 'world' } as never)).rejects.toMatchObject({ code: 'audit_event_invalid' });
    const ev = sampleEvent(1);
    await expect(w.append({ ...ev, when: new Date() })).rejects.toMatchObject({ code: 'audit_event_invalid' });
    await expect(w.append({ ...ev, n: Number.NaN })).rejects.toMatchObject({ code: 'audit_event_invalid' });
    // the writer is still healthy
    await expect(w.append(ev)).resolves.toMatchObject({ seq: 1 });
  });

  it('continues the chain across close and reopen, keeps the key, and writes a checkpoint on close', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const opts = { dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0, checkpointEvery: 1000 };
    const w1 = await AuditWriter.open(opts);
    await w1.append(sampleEvent(1));
    await w1.close();
    const lines1 = await readJsonl(w1.path);
    expect(lines1.at(-1)).toContain('"type":"checkpoint"');
    const w2 = await AuditWriter.open(opts);
    expect(w2.kid).toBe(w1.kid);
    expect(w2.logId).toBe(w1.logId);
    const r = await w2.append(sampleEvent(2));
    expect(r.seq).toBe(lines1.length);
    await w2.close();
    expect(await verify(w2.path, { jwks: await jwksOf(t.dir) })).toMatchObject({ ok: true, events: 2, checkpoints: 2 });
    expect((await stat(join(t.dir, SIGNING_KEY_FILE))).mode & 0o777).toBe(0o600);
    expect((await stat(w2.path)).mode & 0o777).toBe(0o600);
  });

  it('writes a checkpoint on the timer when records are waiting', async () => {
    const { w } = await openTemp({ checkpointIntervalMs: 20, checkpointEvery: 1_000_000 });
    await w.append(sampleEvent(1));
    await vi.waitFor(async () => expect(await readJsonl(w.path)).toHaveLength(3), { timeout: 10_000 });
    const last = parseRecord((await readJsonl(w.path))[2]!);
    expect(last.ok && last.record.type).toBe('checkpoint');
  });

  it('refuses a second writer on the same log, takes over a stale lock', async () => {
    const { w, dir } = await openTemp();
    await expect(AuditWriter.open({ dataDir: dir, logger: silentLogger() })).rejects.toMatchObject({ code: 'audit_write_failed' });
    await w.close();
    // a lock left by a dead process
    await writeFile(`${w.path}.lock`, '999999999\n');
    const w2 = await AuditWriter.open({ dataDir: dir, logger: silentLogger(), checkpointIntervalMs: 0 });
    await w2.close();
    // two opens racing in one process: exactly one wins
    const both = await Promise.allSettled([0, 1].map(() => AuditWriter.open({ dataDir: dir, logger: silentLogger(), checkpointIntervalMs: 0 })));
    expect(both.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of both) if (r.status === 'fulfilled') await r.value.close();
    // a lock held by a live process (this test's parent)
    await writeFile(`${w.path}.lock`, `${process.ppid}\n`);
    await expect(AuditWriter.open({ dataDir: dir, logger: silentLogger() })).rejects.toMatchObject({ code: 'audit_write_failed' });
  });

  it('cuts a torn tail off, keeps the bytes, seals it and continues', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const opts = { dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0 };
    const w1 = await AuditWriter.open(opts);
    const acked = await Promise.all([1, 2, 3].map((i) => w1.append(sampleEvent(i))));
    await w1.close();
    // a crash in the middle of the next write: half a record on disk
    const full = (await readJsonl(w1.path)).length;
    const torn = '{"seq":5,"type":"event","prev":"abc';
    await appendFile(w1.path, torn);
    await writeFile(join(t.dir, '.audit.jsonl.head.0123456789ab.tmp'), 'half a sidecar');
    const w2 = await AuditWriter.open(opts);
    expect(await readdir(t.dir)).not.toContain('.audit.jsonl.head.0123456789ab.tmp');
    cleanups.push(() => w2.close());
    expect(w2.recovery).toMatchObject({ tornBytes: torn.length, sealSeq: full });
    expect(await readFile(join(t.dir, w2.recovery!.tornFile), 'utf8')).toBe(torn);
    const lines = await readJsonl(w2.path);
    const seal = parseRecord(lines[full]!);
    expect(seal.ok && seal.record.type).toBe('seal');
    for (const a of acked) {
      const p = parseRecord(lines[a.seq]!);
      expect(p.ok && p.record.hash).toBe(a.hash);
    }
    await w2.append(sampleEvent(9));
    await w2.close();
    expect(await verify(w2.path, { jwks: await jwksOf(t.dir) })).toMatchObject({ ok: true, seals: 1 });
  });

  it('treats a complete but bad last line after the durable head as torn', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const opts = { dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0 };
    const w1 = await AuditWriter.open(opts);
    await w1.append(sampleEvent(1));
    await w1.close();
    // a power loss can leave a zero-filled block past the last acknowledged record
    await appendFile(w1.path, '\0\0\0\0\0\0\n');
    const w2 = await AuditWriter.open(opts);
    cleanups.push(() => w2.close());
    expect(w2.recovery?.detail).toMatch(/^bad_json at line 4/);
  });

  it('refuses to continue a log whose acknowledged records were altered or removed', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const opts = { dataDir: t.dir, logger: silentLogger(), checkpointIntervalMs: 0 };
    const w1 = await AuditWriter.open(opts);
    for (let i = 0; i < 5; i++) await w1.append(sampleEvent(i));
    await w1.close();
    const original = await readFile(w1.path, 'utf8');
    // altered in the middle
    await writeFile(w1.path, original.replace('sb-2', 'sb-X'));
    await expect(AuditWriter.open(opts)).rejects.toMatchObject({ code: 'audit_log_corrupt' });
    // cut short (acknowledged records missing per the head sidecar)
    await writeFile(w1.path, original);
    const lines = original.split('\n');
    await truncate(w1.path, Buffer.byteLength(lines.slice(0, 3).join('\n') + '\n'));
    await expect(AuditWriter.open(opts)).rejects.toMatchObject({ code: 'audit_log_corrupt' });
    // deleted while the sidecar remains
    await rm(w1.path);
    await expect(AuditWriter.open(opts)).rejects.toMatchObject({ code: 'audit_log_corrupt' });
    expect((await readdir(t.dir)).some((f) => f.endsWith('.lock'))).toBe(false);
  });

  it('records EventBus events and never throws into the emitter', async () => {
    const io = new FaultyIo();
    const { w } = await openTemp({ io });
    const bus = new EventBus();
    const off = w.attach(bus);
    bus.emit({ type: 'config.nack', severity: 'error', source: 'xds-server', data: { node: 'n1', typeUrl: 'type.googleapis.com/x', version: '3', errorDetail: 'bad' } });
    bus.emit({ type: 'something.new', severity: 'info', source: 'test', data: { a: 1 } });
    await vi.waitFor(() => expect(w.stats.appended).toBe(2));
    const lines = await readJsonl(w.path);
    expect(lines[1]).toContain('"operation":"config.nack"');
    expect(lines[2]).toContain('"portcullis_type":"something.new"');
    io.failWrite = errno('EIO');
    expect(() => bus.emit({ type: 'sandbox.created', severity: 'info', source: 'supervisor', data: { sandboxId: 'x' } })).not.toThrow();
    await vi.waitFor(() => expect(w.stats.busFailures).toBe(1));
    off();
  });

  it('signs checkpoints with the given key (kid in the JWS header)', async () => {
    const key = await generateSigningKey();
    const { w } = await openTemp({ signingKey: key, checkpointEvery: 2 });
    await w.append(sampleEvent(1));
    const lines = await readJsonl(w.path);
    const cp = parseRecord(lines[2]!);
    expect(cp.ok && cp.record.type).toBe('checkpoint');
    const jws = (cp.ok && (cp.record.body.jws as string)) || '';
    const header = JSON.parse(Buffer.from(jws.split('.')[0]!, 'base64url').toString()) as { kid: string; alg: string };
    expect(header).toMatchObject({ kid: key.kid, alg: 'EdDSA' });
  });
});
