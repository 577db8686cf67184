import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import type { JSONWebKeySet } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { canonical } from './canonical.js';
import { buildRecord, parseRecord, type RecordType } from './chain.js';
import { generateSigningKey } from './keys.js';
import { readHeadSidecar } from './io.js';
import { sampleEvent, tempDir } from './testutil.js';
import { verify, type VerifyFail } from './verify.js';
import { AuditWriter } from './writer.js';

interface BaseLog {
  lines: string[];
  sidecar: string;
  jwks: JSONWebKeySet;
}

const work = tempDir('audit-verify-');
const bases: BaseLog[] = [];

/** Build a real log with the writer; snapshot its lines and head sidecar while records are still after the last checkpoint. */
async function makeBase(events: number, checkpointEvery: number, extras: Record<string, unknown>[]): Promise<BaseLog> {
  const dir = join(work.dir, `base-${bases.length}`);
  const w = await AuditWriter.open({ dataDir: dir, logger: silentLogger(), checkpointEvery, checkpointIntervalMs: 0 });
  for (let i = 0; i < events; i += 5) {
    await Promise.all(Array.from({ length: Math.min(5, events - i) }, (_, j) => w.append(sampleEvent(i + j, extras[(i + j) % extras.length] ?? {}))));
  }
  await vi.waitFor(async () => expect((await readHeadSidecar(w.headPath))?.seq).toBe(w.head.seq));
  const lines = (await readFile(w.path, 'utf8')).split('\n').slice(0, -1);
  const sidecar = await readFile(w.headPath, 'utf8');
  const jwks = JSON.parse(await readFile(w.jwksPath, 'utf8')) as JSONWebKeySet;
  await w.close();
  return { lines, sidecar, jwks };
}

let fileNo = 0;
async function verifyLines(base: BaseLog, lines: string[], opts: { raw?: string; head?: boolean; jwks?: JSONWebKeySet } = {}) {
  const file = join(work.dir, `t-${fileNo++}.jsonl`);
  await writeFile(file, opts.raw ?? lines.map((l) => `${l}\n`).join(''));
  if (opts.head !== false) await writeFile(`${file}.head`, base.sidecar);
  return verify(file, { jwks: opts.jwks ?? base.jwks, head: opts.head === false ? false : `${file}.head` });
}

function rec(line: string) {
  const p = parseRecord(line);
  if (!p.ok) throw new Error(`bad fixture line: ${p.message}`);
  return p.record;
}

/** Re-link the chain from `from` on (as an attacker who edits and recomputes hashes would). */
function relink(lines: string[], from: number, edit?: (body: Record<string, unknown>, type: RecordType) => void): string[] {
  const out = lines.slice(0, from);
  let prev = from === 0 ? '0'.repeat(64) : rec(lines[from - 1]!).hash;
  for (let i = from; i < lines.length; i++) {
    const r = rec(lines[i]!);
    if (i === from && edit) edit(r.body, r.type);
    const b = buildRecord(r.seq, r.type, prev, canonical(r.body));
    out.push(b.line.slice(0, -1));
    prev = b.hash;
  }
  return out;
}

beforeAll(async () => {
  const extras = fc.sample(
    fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => k !== 'trace_id' && k !== 'session_id'), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }),
    { numRuns: 30, seed: 42 },
  ) as Record<string, unknown>[];
  // clean values as JSON would (e.g. -0 → 0) so the fixtures are what the writer accepts
  const clean = extras.map((e) => JSON.parse(JSON.stringify(e)) as Record<string, unknown>);
  bases.push(await makeBase(12, 4, clean));
  bases.push(await makeBase(25, 7, clean.slice(5)));
  bases.push(await makeBase(40, 1000, clean.slice(11)));
}, 60_000);

afterAll(() => work.cleanup());

type Mutation =
  | { kind: 'edit'; i: number }
  | { kind: 'editRehash'; i: number }
  | { kind: 'delete'; i: number }
  | { kind: 'swap'; i: number; j: number }
  | { kind: 'dup'; i: number; k: number }
  | { kind: 'forge'; k: number }
  | { kind: 'garbage'; k: number; text: string }
  | { kind: 'truncate'; m: number }
  | { kind: 'tear'; i: number; keep: number };

function mutationArb(n: number, lines: string[]): fc.Arbitrary<Mutation> {
  const idx = fc.integer({ min: 0, max: n - 1 });
  const events = lines.map((l, i) => (rec(l).type === 'event' && i < n - 1 ? i : -1)).filter((i) => i >= 0);
  return fc.oneof(
    idx.map((i) => ({ kind: 'edit' as const, i })),
    fc.constantFrom(...events).map((i) => ({ kind: 'editRehash' as const, i })),
    idx.map((i) => ({ kind: 'delete' as const, i })),
    fc
      .tuple(idx, idx)
      .filter(([a, b]) => a !== b)
      .map(([a, b]) => ({ kind: 'swap' as const, i: Math.min(a, b), j: Math.max(a, b) })),
    fc.tuple(idx, fc.integer({ min: 0, max: n })).map(([i, k]) => ({ kind: 'dup' as const, i, k })),
    fc.integer({ min: 1, max: n - 1 }).map((k) => ({ kind: 'forge' as const, k })),
    fc.tuple(fc.integer({ min: 0, max: n }), fc.constantFrom('not json {', '', '{}', '[1,2]', '{"seq":1}')).map(([k, text]) => ({ kind: 'garbage' as const, k, text })),
    fc.integer({ min: 1, max: n - 1 }).map((m) => ({ kind: 'truncate' as const, m })),
    fc.tuple(idx, fc.double({ min: 0.05, max: 0.95, noNaN: true })).map(([i, f]) => ({ kind: 'tear' as const, i, keep: f })),
  );
}

/** Apply a mutation; return the new lines (or raw bytes) and where/why verify must fail. */
function apply(lines: string[], m: Mutation): { lines: string[]; raw?: string; line: number; reasons: VerifyFail['reason'][] } {
  const n = lines.length;
  const out = lines.slice();
  switch (m.kind) {
    case 'edit': {
      const o = JSON.parse(out[m.i]!) as Record<string, Record<string, unknown>>;
      const r = rec(out[m.i]!);
      const body = o[r.type]!;
      if (r.type === 'event') (body.unmapped as Record<string, unknown>).trace_id = 'tampered';
      else if (r.type === 'header') body.created = (body.created as number) + 1;
      else body.time = (body.time as number) + 1;
      out[m.i] = JSON.stringify(o);
      return { lines: out, line: m.i + 1, reasons: ['hash_mismatch'] };
    }
    case 'editRehash': {
      const r = rec(out[m.i]!);
      const body = structuredClone(r.body);
      (body.unmapped as Record<string, unknown>).trace_id = 'tampered';
      out[m.i] = buildRecord(r.seq, r.type, r.prev, canonical(body)).line.slice(0, -1);
      return { lines: out, line: m.i + 2, reasons: ['prev_mismatch'] };
    }
    case 'delete':
      out.splice(m.i, 1);
      return { lines: out, line: m.i + 1, reasons: [m.i === n - 1 ? 'truncated_after_checkpoint' : 'seq_gap'] };
    case 'swap':
      out[m.i] = lines[m.j]!;
      out[m.j] = lines[m.i]!;
      return { lines: out, line: m.i + 1, reasons: ['seq_gap'] };
    case 'dup':
      out.splice(m.k, 0, lines[m.i]!);
      return { lines: out, line: m.k === m.i ? m.k + 2 : m.k + 1, reasons: ['seq_gap'] };
    case 'forge': {
      const prev = rec(lines[m.k - 1]!).hash;
      out.splice(m.k, 0, buildRecord(m.k, 'event', prev, canonical(sampleEvent(999))).line.slice(0, -1));
      return { lines: out, line: m.k + 2, reasons: ['seq_gap'] };
    }
    case 'garbage':
      out.splice(m.k, 0, m.text);
      return { lines: out, line: m.k + 1, reasons: m.text === 'not json {' || m.text === '' ? ['bad_json'] : ['bad_record'] };
    case 'truncate':
      return { lines: out.slice(0, m.m), line: m.m + 1, reasons: ['truncated_after_checkpoint'] };
    case 'tear': {
      const l = lines[m.i]!;
      const keep = Math.max(1, Math.min(l.length - 1, Math.floor(l.length * m.keep)));
      const raw = lines.slice(0, m.i).map((x) => `${x}\n`).join('') + l.slice(0, keep);
      return { lines: [], raw, line: m.i + 1, reasons: ['torn_tail'] };
    }
  }
}

describe('verify', () => {
  it('accepts the untouched logs', async () => {
    for (const b of bases) {
      const r = await verifyLines(b, b.lines);
      expect(r).toMatchObject({ ok: true, records: b.lines.length, headChecked: true });
    }
  });

  it('detects every random edit, deletion, reordering, insertion and truncation at the right first record', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: bases.length - 1 }).chain((b) => fc.tuple(fc.constant(b), mutationArb(bases[b]!.lines.length, bases[b]!.lines))),
        async ([b, m]) => {
          const base = bases[b]!;
          const mutated = apply(base.lines, m);
          const r = await verifyLines(base, mutated.lines, mutated.raw === undefined ? {} : { raw: mutated.raw });
          expect(r.ok, JSON.stringify(m)).toBe(false);
          const f = r as VerifyFail;
          expect({ line: f.line, reason: f.reason }, `${JSON.stringify(m)} → ${f.message}`).toEqual({ line: mutated.line, reason: expect.toBeOneOf(mutated.reasons) });
          // a record's line is its seq + 1 in a good log, so the reported seq names the same record
          if (f.reason !== 'bad_json' && f.reason !== 'torn_tail' && f.reason !== 'bad_record') expect(f.seq).not.toBeNull();
        },
      ),
      { numRuns: 300 },
    );
  });

  it('checks checkpoint signatures against the JWKS', async () => {
    const b = bases[0]!;
    const other = await generateSigningKey();
    const r = (await verifyLines(b, b.lines, { jwks: { keys: [other.publicJwk] } })) as VerifyFail;
    const firstCp = b.lines.findIndex((l) => rec(l).type === 'checkpoint');
    expect(r).toMatchObject({ ok: false, reason: 'bad_checkpoint_signature', line: firstCp + 1, seq: firstCp });
  });

  it('fails a modified checkpoint even when its hash was recomputed', async () => {
    const b = bases[0]!;
    const cp = b.lines.findIndex((l) => rec(l).type === 'checkpoint');
    for (const field of ['root', 'last_seq', 'time', 'kid'] as const) {
      const mutated = relink(b.lines, cp, (body) => {
        if (field === 'root') body.root = 'f'.repeat(64);
        else if (field === 'kid') body.kid = 'someone-else';
        else body[field] = (body[field] as number) + 1;
      });
      const r = (await verifyLines(b, mutated, { head: false })) as VerifyFail;
      expect(r, field).toMatchObject({ ok: false, reason: 'bad_checkpoint_signature', line: cp + 1 });
    }
  });

  it('fails with checkpoint_root_mismatch when a checkpointed record is changed and the chain recomputed', async () => {
    const b = bases[1]!;
    const cps = b.lines.map((l, i) => (rec(l).type === 'checkpoint' ? i : -1)).filter((i) => i >= 0);
    const target = cps[1]! - 2; // an event inside the second checkpoint's window
    expect(rec(b.lines[target]!).type).toBe('event');
    const mutated = relink(b.lines, target, (body) => {
      (body.unmapped as Record<string, unknown>).trace_id = 'rewritten';
    });
    const r = (await verifyLines(b, mutated, { head: false })) as VerifyFail;
    expect(r).toMatchObject({ ok: false, reason: 'checkpoint_root_mismatch', line: cps[1]! + 1, seq: cps[1]! });
  });

  it('catches a recomputed tail after the last checkpoint only through the head sidecar', async () => {
    const b = bases[2]!; // no checkpoint before the end
    const target = b.lines.length - 3;
    const mutated = relink(b.lines, target, (body) => {
      (body.unmapped as Record<string, unknown>).trace_id = 'rewritten';
    });
    expect(await verifyLines(b, mutated)).toMatchObject({ ok: false, reason: 'head_mismatch', seq: b.lines.length - 1 });
    // without the sidecar this is undetectable (documented limitation)
    expect(await verifyLines(b, mutated, { head: false })).toMatchObject({ ok: true });
    // and so is a plain truncation
    expect(await verifyLines(b, b.lines.slice(0, 5), { head: false })).toMatchObject({ ok: true });
  });

  it('rejects a byte-level change that keeps the content (non-canonical line)', async () => {
    const b = bases[0]!;
    const mutated = b.lines.slice();
    mutated[3] = mutated[3]!.replace('{"seq":3,', '{"seq": 3,');
    expect(await verifyLines(b, mutated)).toMatchObject({ ok: false, reason: 'bad_record', line: 4 });
  });

  it('reports a missing or foreign head sidecar', async () => {
    const b = bases[0]!;
    const r = await verifyLines(b, b.lines, { head: false });
    expect(r).toMatchObject({ ok: true, headChecked: false });
    const foreign = bases[1]!;
    const file = join(work.dir, 'foreign.jsonl');
    await writeFile(file, b.lines.map((l) => `${l}\n`).join(''));
    await writeFile(`${file}.head`, foreign.sidecar);
    expect(await verify(file, { jwks: b.jwks })).toMatchObject({ ok: false, reason: 'head_mismatch' });
    const missing = join(work.dir, 'no-head.jsonl');
    await writeFile(missing, b.lines.map((l) => `${l}\n`).join(''));
    const r2 = await verify(missing, { jwks: b.jwks });
    expect(r2.ok && r2.warnings[0]).toMatch(/no head sidecar/);
  });
});
