import type { JSONWebKeySet } from 'jose';
import { ChainChecker, compareWindow, readLines, short, type VerifyReason } from './chain.js';
import { headSidecarPath, readHeadSidecar, type HeadSidecar } from './io.js';
import { checkCheckpointSignature, createLocalJWKSet } from './keys.js';

/**
 * Verify an audit log end to end: every line parses, is in canonical form and hashes to its
 * `hash`; seqs are consecutive from 0; each `prev` links to the previous hash; the header is
 * first; every checkpoint is signed by a key in `jwks` over exactly its statement, and the
 * statement matches the records since the previous checkpoint (Merkle root, range, last hash).
 * The first failure is reported with the record's seq, its 1-based line and a reason code.
 *
 * Limits, stated plainly:
 *  - The chain is unkeyed. Someone who can write the file can rewrite the records after the last
 *    checkpoint and recompute their hashes; that is only caught through the head sidecar
 *    (`<file>.head`, reason `head_mismatch` / `truncated_after_checkpoint`), which the same person
 *    can rewrite too. Records covered by a checkpoint are protected by its signature.
 *  - Cutting records off the end (with or without checkpoints among them) leaves a valid shorter
 *    chain; it is detected only against the sidecar (or a checkpoint/head kept elsewhere).
 *  - The JWKS must come from somewhere the attacker cannot write; the copy next to the log is a
 *    convenience.
 */

export interface VerifyOptions {
  jwks: JSONWebKeySet;
  /** head sidecar to check the tail against; default `<file>.head`; false to skip */
  head?: string | false;
}

export interface VerifyOk {
  ok: true;
  file: string;
  logId: string;
  records: number;
  events: number;
  checkpoints: number;
  seals: number;
  head: { seq: number; hash: string };
  lastCheckpointSeq: number | null;
  /** records after the last checkpoint (protected only by the chain and the sidecar) */
  uncheckpointed: number;
  headChecked: boolean;
  warnings: string[];
}

export interface VerifyFail {
  ok: false;
  file: string;
  reason: VerifyReason;
  /** seq of the first bad record (for gaps and truncation: the seq that should be there) */
  seq: number | null;
  /** 1-based line number in the file */
  line: number;
  message: string;
  /** records that verified before the failure */
  recordsOk: number;
  logId: string | null;
}

export type VerifyResult = VerifyOk | VerifyFail;

export async function verify(file: string, opts: VerifyOptions): Promise<VerifyResult> {
  const keyset = createLocalJWKSet(opts.jwks);
  const checker = new ChainChecker();
  const warnings: string[] = [];
  const fail = (reason: VerifyReason, seq: number | null, line: number, message: string): VerifyFail => ({
    ok: false,
    file,
    reason,
    seq,
    line,
    message,
    recordsOk: checker.records,
    logId: checker.logId,
  });

  let sidecar: HeadSidecar | null = null;
  const headPath = opts.head === false ? null : (opts.head ?? headSidecarPath(file));
  if (headPath !== null) {
    try {
      sidecar = await readHeadSidecar(headPath);
    } catch (e) {
      return fail('head_mismatch', null, 0, `head sidecar ${headPath}: ${(e as Error).message}`);
    }
    if (sidecar === null) warnings.push(`no head sidecar at ${headPath}: records cut off the end of the log cannot be detected`);
  }

  let events = 0;
  let hashAtSidecar: string | null = null;
  let lines = 0;
  try {
    for await (const l of readLines(file)) {
      lines = l.lineNo;
      if (!l.terminated) return fail('torn_tail', checker.nextSeq, l.lineNo, 'last line is incomplete (no newline): a torn write that was never repaired, or a cut');
      const c = checker.check(l.text, l.lineNo);
      if (!c.ok) return { ...fail(c.failure.reason, c.failure.seq, c.failure.line, c.failure.message) };
      if (c.checkpoint !== undefined) {
        const cp = c.checkpoint;
        const bad = await checkCheckpointSignature(cp.jws, cp.kid, cp.statement, keyset);
        if (bad !== null) return fail('bad_checkpoint_signature', c.record.seq, l.lineNo, bad);
        const mismatch = compareWindow(cp.statement, cp.window, checker.logId);
        if (mismatch !== null) return fail('checkpoint_root_mismatch', c.record.seq, l.lineNo, mismatch);
      }
      checker.accept(c);
      if (c.record.type === 'event') events++;
      if (sidecar !== null && c.record.seq === sidecar.seq) hashAtSidecar = c.record.hash;
    }
  } catch (e) {
    return fail('io_error', null, lines + 1, `cannot read ${file}: ${(e as Error).message}`);
  }
  if (checker.records === 0) return fail('bad_header', 0, 1, 'empty log (no header)');

  const lastSeq = checker.nextSeq - 1;
  if (sidecar !== null) {
    if (sidecar.log_id !== checker.logId) {
      return fail('head_mismatch', null, 0, `head sidecar belongs to log ${sidecar.log_id}, this log is ${checker.logId}`);
    }
    if (sidecar.seq > lastSeq) {
      const after = checker.lastCheckpointSeq === null ? '' : ` (last checkpoint in the file: seq ${checker.lastCheckpointSeq})`;
      return fail(
        'truncated_after_checkpoint',
        lastSeq + 1,
        lastSeq + 2,
        `log ends at seq ${lastSeq} but the head sidecar records seq ${sidecar.seq}: ${sidecar.seq - lastSeq} record(s) were cut off the end${after}`,
      );
    }
    if (hashAtSidecar !== sidecar.hash) {
      return fail('head_mismatch', sidecar.seq, sidecar.seq + 1, `record seq ${sidecar.seq} hashes to ${short(hashAtSidecar ?? '')} but the head sidecar records ${short(sidecar.hash)}: the tail was rewritten`);
    }
  }
  return {
    ok: true,
    file,
    logId: checker.logId!,
    records: checker.records,
    events,
    checkpoints: checker.checkpoints,
    seals: checker.seals,
    head: { seq: lastSeq, hash: checker.lastHash },
    lastCheckpointSeq: checker.lastCheckpointSeq,
    uncheckpointed: checker.leaves.length,
    headChecked: sidecar !== null,
    warnings,
  };
}
