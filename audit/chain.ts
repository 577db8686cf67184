import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { canonical } from './canonical.js';

/**
 * The on-disk format of the audit log: one JSON record per line.
 *
 *   {"seq":0,"type":"header","prev":"000…","hash":"…","header":{…}}
 *   {"seq":1,"type":"event","prev":"<hash of seq 0>","hash":"…","event":{…OCSF…}}
 *   {"seq":9,"type":"checkpoint","prev":"…","hash":"…","checkpoint":{…,"jws":"…"}}
 *   {"seq":10,"type":"seal","prev":"…","hash":"…","seal":{…}}
 *
 * `hash = sha256hex(canonical({ seq, type, prev, [type]: body }))`, i.e. the canonical form of the
 * record without its own `hash`. `prev` is the previous record's hash; the header (seq 0) has 64
 * zeros and carries a random `log_id`, so two logs never share a chain. Lines are written exactly
 * as `serializeRecord` produces them; the verifier rejects any other byte layout of the same content.
 */

export const FORMAT = 'portcullis-audit/1';
export const GENESIS_PREV = '0'.repeat(64);
export const MERKLE_ALG = 'rfc9162-sha256';

export const RECORD_TYPES = ['header', 'event', 'checkpoint', 'seal'] as const;
export type RecordType = (typeof RECORD_TYPES)[number];

export interface HeaderBody {
  format: typeof FORMAT;
  log_id: string;
  created: number;
  hash_alg: 'sha256';
  merkle: typeof MERKLE_ALG;
  ocsf_version: string;
}

/** What a checkpoint signs: the Merkle root (RFC 9162) over the record hashes first_seq..last_seq. */
export interface CheckpointStatement {
  log_id: string;
  first_seq: number;
  last_seq: number;
  count: number;
  last_hash: string;
  root: string;
  time: number;
}

export interface CheckpointBody extends CheckpointStatement {
  kid: string;
  /** compact JWS (EdDSA) whose payload is canonical(statement) */
  jws: string;
}

export interface SealBody {
  reason: 'torn_tail';
  time: number;
  /** byte offset the log was truncated to */
  truncated_at: number;
  torn_bytes: number;
  torn_sha256: string;
  /** file name (same directory) holding a copy of the removed bytes */
  torn_file: string;
  /** what was wrong with the first removed line */
  detail: string;
}

export interface LogRecord {
  seq: number;
  type: RecordType;
  prev: string;
  hash: string;
  body: Record<string, unknown>;
}

const HEX64 = /^[0-9a-f]{64}$/;

export function sha256hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The canonical text that is hashed, built around an already canonical body. */
export function hashInput(seq: number, type: RecordType, prev: string, bodyCanonical: string): string {
  const parts: [string, string][] = [
    [type, bodyCanonical],
    ['prev', JSON.stringify(prev)],
    ['seq', String(seq)],
    ['type', JSON.stringify(type)],
  ];
  parts.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return `{${parts.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}

export function recordHash(seq: number, type: RecordType, prev: string, bodyCanonical: string): string {
  return sha256hex(hashInput(seq, type, prev, bodyCanonical));
}

/** The exact line (without the newline) for a record. */
export function serializeRecord(seq: number, type: RecordType, prev: string, hash: string, bodyCanonical: string): string {
  return `{"seq":${seq},"type":"${type}","prev":"${prev}","hash":"${hash}",${JSON.stringify(type)}:${bodyCanonical}}`;
}

export interface BuiltRecord {
  seq: number;
  hash: string;
  /** serialized line including the trailing newline */
  line: string;
}

export function buildRecord(seq: number, type: RecordType, prev: string, bodyCanonical: string): BuiltRecord {
  const hash = recordHash(seq, type, prev, bodyCanonical);
  return { seq, hash, line: `${serializeRecord(seq, type, prev, hash, bodyCanonical)}\n` };
}

export type ParseResult =
  | { ok: true; record: LogRecord }
  | { ok: false; reason: 'bad_json' | 'bad_record'; message: string; seq: number | null };

/** Parse one line and check the record envelope (not the chain). */
export function parseRecord(text: string): ParseResult {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { ok: false, reason: 'bad_json', message: `not JSON: ${(e as Error).message}`, seq: null };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    return { ok: false, reason: 'bad_record', message: 'record is not a JSON object', seq: null };
  }
  const o = v as Record<string, unknown>;
  const seq = Number.isSafeInteger(o.seq) && (o.seq as number) >= 0 ? (o.seq as number) : null;
  const bad = (message: string): ParseResult => ({ ok: false, reason: 'bad_record', message, seq });
  if (seq === null) return bad('seq is not a non-negative integer');
  if (typeof o.type !== 'string' || !(RECORD_TYPES as readonly string[]).includes(o.type)) return bad('unknown record type');
  const type = o.type as RecordType;
  if (typeof o.prev !== 'string' || !HEX64.test(o.prev)) return bad('prev is not a sha-256 hex digest');
  if (typeof o.hash !== 'string' || !HEX64.test(o.hash)) return bad('hash is not a sha-256 hex digest');
  const body = o[type];
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return bad(`missing "${type}" object`);
  const keys = Object.keys(o);
  if (keys.length !== 5) return bad(`unexpected fields: ${keys.filter((k) => !['seq', 'type', 'prev', 'hash', type].includes(k)).join(', ')}`);
  return { ok: true, record: { seq, type, prev: o.prev, hash: o.hash, body: body as Record<string, unknown> } };
}

// ---------------------------------------------------------------------------------------------
// Merkle tree hash, RFC 9162 §2.1.1, over the 32-byte record hashes as leaf data.

const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);

export function merkleRoot(leaves: readonly Buffer[]): string {
  return mth(leaves, 0, leaves.length).toString('hex');
}

function mth(leaves: readonly Buffer[], lo: number, hi: number): Buffer {
  const n = hi - lo;
  if (n === 0) return createHash('sha256').digest();
  if (n === 1) return createHash('sha256').update(LEAF).update(leaves[lo]!).digest();
  let k = 1;
  while (k * 2 < n) k *= 2;
  return createHash('sha256').update(NODE).update(mth(leaves, lo, lo + k)).update(mth(leaves, lo + k, hi)).digest();
}

// ---------------------------------------------------------------------------------------------
// Body checks shared by the writer's open scan and the verifier.

export function checkHeaderBody(b: Record<string, unknown>): string | null {
  if (b.format !== FORMAT) return `unknown format ${JSON.stringify(b.format)}`;
  if (typeof b.log_id !== 'string' || !/^[0-9a-f]{32}$/.test(b.log_id)) return 'bad log_id';
  if (b.hash_alg !== 'sha256' || b.merkle !== MERKLE_ALG) return 'unsupported hash or merkle algorithm';
  if (!Number.isSafeInteger(b.created) || typeof b.ocsf_version !== 'string') return 'bad header fields';
  if (Object.keys(b).length !== 6) return 'unexpected header fields';
  return null;
}

export function checkpointStatementOf(b: Record<string, unknown>): CheckpointStatement | string {
  const ints = ['first_seq', 'last_seq', 'count', 'time'] as const;
  for (const k of ints) if (!Number.isSafeInteger(b[k]) || (b[k] as number) < 0) return `checkpoint ${k} is not a non-negative integer`;
  for (const k of ['last_hash', 'root'] as const) if (typeof b[k] !== 'string' || !HEX64.test(b[k] as string)) return `checkpoint ${k} is not a sha-256 hex digest`;
  if (typeof b.log_id !== 'string' || typeof b.kid !== 'string' || typeof b.jws !== 'string') return 'checkpoint log_id, kid or jws missing';
  if (Object.keys(b).length !== 9) return 'unexpected checkpoint fields';
  return {
    log_id: b.log_id,
    first_seq: b.first_seq as number,
    last_seq: b.last_seq as number,
    count: b.count as number,
    last_hash: b.last_hash as string,
    root: b.root as string,
    time: b.time as number,
  };
}

export interface Failure {
  reason: VerifyReason;
  /** seq of the offending record when known (the one it should have had, for gaps and truncation) */
  seq: number | null;
  /** 1-based line number */
  line: number;
  message: string;
}

export const VERIFY_REASONS = [
  'bad_json',
  'bad_record',
  'bad_header',
  'hash_mismatch',
  'prev_mismatch',
  'seq_gap',
  'bad_checkpoint_signature',
  'checkpoint_root_mismatch',
  'truncated_after_checkpoint',
  'head_mismatch',
  'torn_tail',
  'io_error',
] as const;
export type VerifyReason = (typeof VERIFY_REASONS)[number];

export interface Window {
  first: number;
  last: number;
  lastHash: string;
  root: string;
  count: number;
}

/**
 * Walks records in order and checks the chain: envelope, hash, seq continuity, prev link, header,
 * and (for checkpoints) that the statement matches the records since the previous checkpoint. The
 * checkpoint signature is the caller's business (it needs keys and is async).
 */
export class ChainChecker {
  nextSeq = 0;
  lastHash = GENESIS_PREV;
  logId: string | null = null;
  records = 0;
  checkpoints = 0;
  seals = 0;
  lastCheckpointSeq: number | null = null;
  /** record hashes since the last checkpoint (the next checkpoint's leaves) */
  leaves: Buffer[] = [];
  windowStart = 0;

  /**
   * Check one line against the current state without advancing it. For a checkpoint, `window` is
   * what the records since the previous checkpoint amount to and `statement` what the checkpoint
   * claims; comparing them (and checking the signature) is left to the caller, then `accept`.
   */
  check(text: string, lineNo: number): Checked | { ok: false; failure: Failure } {
    const expected = this.nextSeq;
    const p = parseRecord(text);
    if (!p.ok) return fail(p.reason, p.seq ?? expected, lineNo, p.message);
    const r = p.record;
    const bodyC = canonical(r.body);
    const hash = recordHash(r.seq, r.type, r.prev, bodyC);
    if (hash !== r.hash) return fail('hash_mismatch', r.seq, lineNo, `stored hash ${short(r.hash)} but the record hashes to ${short(hash)}`);
    if (serializeRecord(r.seq, r.type, r.prev, r.hash, bodyC) !== text) {
      return fail('bad_record', r.seq, lineNo, 'line is not in canonical form (bytes changed without changing content)');
    }
    if (r.seq !== expected) return fail('seq_gap', r.seq, lineNo, `expected seq ${expected}, found ${r.seq}`);
    if (r.prev !== this.lastHash) return fail('prev_mismatch', r.seq, lineNo, `prev ${short(r.prev)} does not link to the previous record ${short(this.lastHash)}`);
    if (expected === 0) {
      if (r.type !== 'header') return fail('bad_header', 0, lineNo, 'the first record is not a header');
      const why = checkHeaderBody(r.body);
      if (why !== null) return fail('bad_header', 0, lineNo, why);
    } else if (r.type === 'header') {
      return fail('bad_record', r.seq, lineNo, 'a second header record');
    }
    if (r.type === 'checkpoint') {
      const statement = checkpointStatementOf(r.body);
      if (typeof statement === 'string') return fail('bad_record', r.seq, lineNo, statement);
      const window: Window = { first: this.windowStart, last: r.seq - 1, lastHash: r.prev, root: merkleRoot(this.leaves), count: this.leaves.length };
      return { ok: true, record: r, checkpoint: { statement, window, kid: r.body.kid as string, jws: r.body.jws as string } };
    }
    return { ok: true, record: r };
  }

  /** Advance past a record that `check` (and the caller) accepted. */
  accept(c: Checked): void {
    const r = c.record;
    this.records++;
    this.nextSeq = r.seq + 1;
    this.lastHash = r.hash;
    if (r.type === 'header') this.logId = r.body.log_id as string;
    if (r.type === 'checkpoint') {
      this.checkpoints++;
      this.lastCheckpointSeq = r.seq;
      this.leaves = [];
      this.windowStart = r.seq + 1;
    } else {
      if (r.type === 'seal') this.seals++;
      this.leaves.push(Buffer.from(r.hash, 'hex'));
    }
  }
}

export interface Checked {
  ok: true;
  record: LogRecord;
  checkpoint?: { statement: CheckpointStatement; window: Window; kid: string; jws: string };
}

export function compareWindow(st: CheckpointStatement, w: Window, logId: string | null): string | null {
  if (st.log_id !== logId) return `checkpoint names log ${st.log_id}, not ${logId}`;
  if (st.first_seq !== w.first || st.last_seq !== w.last || st.count !== w.count) {
    return `checkpoint covers seq ${st.first_seq}..${st.last_seq} (${st.count}) but the records since the previous checkpoint are ${w.first}..${w.last} (${w.count})`;
  }
  if (st.last_hash !== w.lastHash) return `checkpoint last_hash ${short(st.last_hash)} differs from the chain ${short(w.lastHash)} (records ${w.first}..${w.last} changed)`;
  if (st.root !== w.root) return `Merkle root of records ${w.first}..${w.last} is ${short(w.root)}, checkpoint says ${short(st.root)}`;
  return null;
}

function fail(reason: VerifyReason, seq: number | null, line: number, message: string): { ok: false; failure: Failure } {
  return { ok: false, failure: { reason, seq, line, message } };
}

export function short(h: string): string {
  return h.length > 16 ? `${h.slice(0, 12)}…` : h;
}

// ---------------------------------------------------------------------------------------------
// Reading a log line by line with byte offsets.

export interface RawLine {
  /** 1-based */
  lineNo: number;
  text: string;
  /** byte offset of the first byte of the line */
  start: number;
  /** byte offset just past the line's newline (or past its last byte if unterminated) */
  end: number;
  terminated: boolean;
}

export async function* readLines(path: string, chunkSize = 1 << 20): AsyncGenerator<RawLine> {
  const fh = await open(path, 'r');
  try {
    let carry: Buffer = Buffer.alloc(0);
    let carryStart = 0;
    let pos = 0;
    let lineNo = 0;
    const buf = Buffer.allocUnsafe(chunkSize);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, chunkSize, pos);
      if (bytesRead === 0) break;
      const chunk = carry.length > 0 ? Buffer.concat([carry, buf.subarray(0, bytesRead)]) : buf.subarray(0, bytesRead);
      const chunkStart = carry.length > 0 ? carryStart : pos;
      pos += bytesRead;
      let i = 0;
      for (;;) {
        const nl = chunk.indexOf(10, i);
        if (nl < 0) break;
        lineNo++;
        yield { lineNo, text: chunk.toString('utf8', i, nl), start: chunkStart + i, end: chunkStart + nl + 1, terminated: true };
        i = nl + 1;
      }
      carry = Buffer.from(chunk.subarray(i));
      carryStart = chunkStart + i;
    }
    if (carry.length > 0) {
      lineNo++;
      yield { lineNo, text: carry.toString('utf8'), start: carryStart, end: carryStart + carry.length, terminated: false };
    }
  } finally {
    await fh.close();
  }
}
