import { randomUUID } from 'node:crypto';
import { isPortcullisError } from '../common/errors.js';
import { AuditWriteError } from './errors.js';
import type { OcsfEvent } from './ocsf.js';
import type { AppendResult } from './writer.js';

export interface AuditAppender {
  append(event: OcsfEvent): Promise<AppendResult>;
}

export interface RequireAuditOptions {
  clock?: () => number;
}

/**
 * Run a privileged action only after its audit record is durably written (NFR-SEC-45, fail
 * closed), then record the outcome.
 *
 *  1. `event` is appended as an attempt (`status_id` 99, `status` "Attempt"). If that append
 *     rejects, the error is thrown and `action` is never called.
 *  2. `action` runs.
 *  3. The outcome is appended: the same event with `status_id` 1 Success / 2 Failure, the
 *     current time, a fresh `metadata.uid` and `unmapped.attempt_seq`/`attempt_hash` pointing at
 *     the attempt record. A failed action's error is rethrown after that (its code, not its
 *     message, goes into `status_detail`). If the action succeeded but the outcome cannot be
 *     recorded, an `audit_write_failed` error with `details.actionCompleted = true` is thrown:
 *     the action did happen and the caller must say so.
 *
 * The status fields of `event` are overwritten; build it with any outcome.
 */
export async function requireAudit<T>(writer: AuditAppender, event: OcsfEvent, action: () => T | Promise<T>, opts: RequireAuditOptions = {}): Promise<T> {
  const clock = opts.clock ?? Date.now;
  const { status_detail: _drop, status_code: _drop2, ...rest } = event;
  const attemptEvent: OcsfEvent = { ...rest, status_id: 99, status: 'Attempt' };
  const attempt = await writer.append(attemptEvent);

  const outcome = (ok: boolean, detail?: string): OcsfEvent => ({
    ...rest,
    time: clock(),
    status_id: ok ? 1 : 2,
    status: ok ? 'Success' : 'Failure',
    ...(detail === undefined ? {} : { status_detail: detail }),
    metadata: { ...event.metadata, uid: randomUUID() },
    unmapped: { ...event.unmapped, attempt_seq: attempt.seq, attempt_hash: attempt.hash },
  });

  let result: T;
  try {
    result = await action();
  } catch (err) {
    const detail = isPortcullisError(err) ? err.code : err instanceof Error ? err.name : 'error';
    await writer.append(outcome(false, detail)).catch(() => undefined);
    throw err;
  }
  try {
    await writer.append(outcome(true));
  } catch (e) {
    throw new AuditWriteError('the action completed but its outcome could not be recorded in the audit log', {
      cause: e,
      details: { actionCompleted: true, attemptSeq: attempt.seq },
    });
  }
  return result;
}
